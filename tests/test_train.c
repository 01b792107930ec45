/* test_train.c — the training loop (SPEC §6, §10): learning-rate schedules and AdamW against
 * hand-computed numbers, global-norm clipping, gradient accumulation, activation recomputation
 * (same gradients, less memory), checkpoint + exact resume for LoRA, full fine-tuning, AdaLoRA
 * with dropout, LoRA-GA and PiSSA, refused mismatched resumes, a non-finite run keeping its last
 * good checkpoint, and the same through `loraga train` on the real stories260K. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "adapters/lora.h"
#include "adapters/lora_io.h"
#include "core/util.h"
#include "loraga/loraga.h"
#include "model/model.h"
#include "train/checkpoint.h"
#include "train/train.h"

/* ---- fixtures ------------------------------------------------------------------------------ */

/* A pool of token rows served as the data pipeline does: batch `index` of size B is rows
 * index*B .. index*B+B-1 (mod the pool), so B x 2 micro-batches and one 2B batch read the same
 * rows. Validation (split 1) reads the pool from a different offset. Rows consumed are logged. */
#define POOL 40
#define ROW_T 8
typedef struct {
    int ids[POOL][ROW_T + 1];
    int log[256], nlog;
} rows_src;

static void rows_init(rows_src *s, int V, uint64_t seed) {
    lg_rng r;
    lg_rng_seed(&r, seed);
    for (int i = 0; i < POOL; i++)
        for (int t = 0; t <= ROW_T; t++) {
            float u = lg_rng_uniform(&r); /* skewed, so that there is something to learn */
            s->ids[i][t] = (int)(u * u * (float)V) % V;
        }
    s->nlog = 0;
}

static int rows_batch(void *ud, int split, long index, lg_batch *b) {
    rows_src *s = ud;
    for (int i = 0; i < b->B; i++) {
        long row = (index * b->B + i + (split == 1 ? 17 : 0)) % POOL;
        if (split == 0 && s->nlog < 256) s->log[s->nlog++] = (int)row;
        for (int t = 0; t < b->T; t++) {
            b->inputs[i * b->T + t] = s->ids[row][t % ROW_T];
            b->targets[i * b->T + t] = s->ids[row][t % ROW_T + 1];
            b->weight[i * b->T + t] = 1.0f;
        }
    }
    return 0;
}

static int want_none(const lg_param *p, void *ud) {
    (void)p, (void)ud;
    return 0;
}

static void alloc_batch(lg_batch *b, int B, int T) {
    b->B = B;
    b->T = T;
    b->inputs = calloc((size_t)B * T, sizeof(int));
    b->targets = calloc((size_t)B * T, sizeof(int));
    b->weight = calloc((size_t)B * T, sizeof(float));
}

static void free_batch(lg_batch *b) {
    free(b->inputs);
    free(b->targets);
    free(b->weight);
}

static char *path2(const char *dir, const char *name) { return lg_path_join(dir, name); }

/* ---- schedules, AdamW, clipping ------------------------------------------------------------ */

static void test_schedule_values(void **state) {
    (void)state;
    /* constant with 4 warmup updates: (step+1)/4 of the peak, then the peak */
    const float cw[] = {0.25f, 0.5f, 0.75f, 1.0f, 1.0f, 1.0f};
    for (int s = 0; s < 6; s++) assert_float_equal(lg_lr_at(LG_SCHED_CONSTANT, 1.0f, s, 4, 100), cw[s], 1e-7);
    assert_float_equal(lg_lr_at(LG_SCHED_CONSTANT, 3e-4f, 0, 0, 10), 3e-4f, 1e-12);
    /* linear, peak 2, warmup 2, total 10: 1, 2 during warmup, then 2 (1 - (s - 2) / 8) */
    const float lin[] = {1.0f, 2.0f, 2.0f, 1.75f, 1.5f, 1.25f, 1.0f, 0.75f, 0.5f, 0.25f};
    for (int s = 0; s < 10; s++) assert_float_equal(lg_lr_at(LG_SCHED_LINEAR, 2.0f, s, 2, 10), lin[s], 1e-6);
    /* cosine, peak 1, no warmup, total 5: 0.5 (1 + cos(pi s / 5)) */
    const double cosv[] = {1.0, 0.9045084971874737, 0.6545084971874737, 0.3454915028125263, 0.0954915028125263};
    for (int s = 0; s < 5; s++) assert_float_equal(lg_lr_at(LG_SCHED_COSINE, 1.0f, s, 0, 5), cosv[s], 1e-6);
    /* cosine with warmup 2 of total 6: 0.5, 1, then 0.5 (1 + cos(pi (s - 2) / 4)) */
    const double cw2[] = {0.5, 1.0, 1.0, 0.8535533905932737, 0.5, 0.1464466094067262};
    for (int s = 0; s < 6; s++) assert_float_equal(lg_lr_at(LG_SCHED_COSINE, 1.0f, s, 2, 6), cw2[s], 1e-6);
    lg_sched_kind k;
    assert_int_equal(lg_sched_parse("cosine", &k), 0);
    assert_int_equal(k, LG_SCHED_COSINE);
    assert_int_equal(lg_sched_parse("exp", &k), -1);
}

static void test_adamw_hand_computed(void **state) {
    (void)state;
    float w[2] = {1.0f, -0.5f}, g[2] = {0.5f, -2.0f}, w2[1] = {3.0f}, g2[1] = {0.0f};
    lg_opt_tensor t[2] = {{"a", w, g, NULL, NULL, 2, 1.0f, 0.01f}, {"b", w2, g2, NULL, NULL, 1, 2.0f, 0.0f}};
    lg_adamw o;
    lg_adamw_init(&o, t, 2, 0.9f, 0.999f, 1e-8f);
    lg_adamw_step(&o, 0.1f);
    /* step 1: m = 0.1 g, v = 0.001 g^2, bias-corrected m^ = g, v^ = g^2:
     * w' = w (1 - lr wd) - lr g / (|g| + eps) */
    assert_float_equal(w[0], 0.999 - 0.1 * 0.5 / (0.5 + 1e-8), 1e-7);   /* 0.899000002 */
    assert_float_equal(w[1], -0.4995 + 0.1 * 2.0 / (2.0 + 1e-8), 1e-7); /* -0.2995 */
    assert_float_equal(w2[0], 3.0f, 0);                                  /* zero gradient, no decay */
    /* the moments hold (1 - beta) g with beta the float 0.9f, 0.999f (1 - 0.999f = 0.00099998713) */
    const double B1 = 0.9f, B2 = 0.999f;
    assert_float_equal(t[0].m[0], (1 - B1) * 0.5, 1e-9);
    assert_float_equal(t[0].v[1], (1 - B2) * 4.0, 1e-9);
    /* step 2 with a new gradient and the bias corrections 1 - beta^2 */
    g[0] = 0.1f, g[1] = 1.0f, g2[0] = 1.0f;
    const double w0 = w[0], w1 = w[1], c1 = 1 - B1 * B1, c2 = 1 - B2 * B2;
    lg_adamw_step(&o, 0.1f);
    double m0 = B1 * (1 - B1) * 0.5 + (1 - B1) * 0.1, v0 = B2 * (1 - B2) * 0.25 + (1 - B2) * 0.01;
    assert_float_equal(w[0], w0 * 0.999 - 0.1 * (m0 / c1) / (sqrt(v0 / c2) + 1e-8), 2e-7); /* 0.8177966 */
    double m1 = B1 * (1 - B1) * -2.0 + (1 - B1) * 1.0, v1 = B2 * (1 - B2) * 4.0 + (1 - B2) * 1.0;
    assert_float_equal(w[1], w1 * 0.999 - 0.1 * (m1 / c1) / (sqrt(v1 / c2) + 1e-8), 2e-7);
    /* lr_mult 2: the second tensor moves with lr 0.2 from its first non-zero gradient */
    double m2 = (1 - B1) * 1.0, v2 = (1 - B2) * 1.0;
    assert_float_equal(w2[0], 3.0 - 0.2 * (m2 / c1) / (sqrt(v2 / c2) + 1e-8), 2e-7);
    assert_int_equal(o.step, 2);
    lg_adamw_free(&o);
}

static void test_grad_clip_values(void **state) {
    (void)state;
    float ga[2] = {3, 4}, gb[1] = {12}, d[3] = {0};
    lg_opt_tensor t[2] = {{"a", d, ga, NULL, NULL, 2, 1, 0}, {"b", d, gb, NULL, NULL, 1, 1, 0}};
    assert_float_equal(lg_grad_norm(t, 2), 13.0, 1e-12);
    assert_float_equal(lg_grad_clip(t, 2, 100.0f), 13.0, 1e-12); /* under the limit: untouched */
    assert_float_equal(ga[0], 3.0f, 0);
    assert_float_equal(lg_grad_clip(t, 2, 0.0f), 13.0, 1e-12); /* 0 = off */
    assert_float_equal(gb[0], 12.0f, 0);
    assert_float_equal(lg_grad_clip(t, 2, 1.0f), 13.0, 1e-12);
    assert_float_equal(ga[0], 3.0 / 13.000001, 1e-7);
    assert_float_equal(ga[1], 4.0 / 13.000001, 1e-7);
    assert_float_equal(gb[0], 12.0 / 13.000001, 1e-7);
    assert_float_equal(lg_grad_norm(t, 2), 1.0, 1e-6);
}

/* The loop clips before AdamW: with eps = 1 Adam's first step depends on the gradient's scale,
 * lr g_c / (|g_c| + 1), so the clipped (3, 4) / 5 gives other numbers than the raw (3, 4). */
static float fake_w[2], fake_g[2];
static int set_fake_grad(long step, void *ud) {
    (void)step, (void)ud;
    fake_g[0] = 3.0f, fake_g[1] = 4.0f;
    return 0;
}
static float seen_gnorm;
static void on_prog(const lg_progress *p, void *ud) {
    (void)ud;
    seen_gnorm = p->grad_norm;
}

static void test_grad_clip_in_loop(void **state) {
    (void)state;
    lg_config c = lg_test_tiny_config(LG_ARCH_LLAMA, 29, 3);
    lg_model *m;
    assert_int_equal(lg_model_create(&c, NULL, 1, NULL, &m), 0);
    lg_model_set_trainable(m, want_none, NULL);
    rows_src src;
    rows_init(&src, c.vocab_size, 5);
    for (int clip = 0; clip < 2; clip++) {
        fake_w[0] = fake_w[1] = 0;
        lg_opt_tensor t = {"fake", fake_w, fake_g, NULL, NULL, 2, 1, 0};
        lg_train_opts o;
        lg_train_opts_default(&o);
        o.steps = 1, o.batch_size = 2, o.seq_len = 8, o.lr = 0.1f, o.eps = 1.0f, o.clip = clip ? 1.0f : 0.0f;
        o.after_backward = set_fake_grad;
        o.on_progress = on_prog;
        lg_train_result res;
        assert_int_equal(lg_train(m, &t, 1, &o, rows_batch, &src, &res), 0);
        assert_float_equal(seen_gnorm, 5.0f, 1e-6); /* reported before clipping */
        double g0 = clip ? 3.0 / 5.000001 : 3.0, g1 = clip ? 4.0 / 5.000001 : 4.0;
        assert_float_equal(fake_w[0], -0.1 * g0 / (g0 + 1.0), 1e-7); /* -0.0375 clipped, -0.075 not */
        assert_float_equal(fake_w[1], -0.1 * g1 / (g1 + 1.0), 1e-7);
    }
    lg_model_free(m);
}

/* ---- gradient accumulation ----------------------------------------------------------------- */

static float *grab_buf;
static lg_opt_tensor *grab_t;
static int grab_n;
static int grab_grads(long step, void *ud) {
    (void)ud;
    if (step != 0) return 0;
    size_t off = 0;
    for (int i = 0; i < grab_n; i++) {
        memcpy(grab_buf + off, grab_t[i].grad, (size_t)grab_t[i].n * sizeof(float));
        off += (size_t)grab_t[i].n;
    }
    return 0;
}
static float first_loss_seen;
static void on_first(const lg_progress *p, void *ud) {
    (void)ud;
    if (p->step == 1) first_loss_seen = p->loss;
}

/* 2 micro-batches of B == 1 batch of 2B when every micro-batch carries the same loss weight:
 * exactly the same rows are read, and the update's gradient and loss agree to float rounding
 * (not bit for bit: the 2B batch sums its rows in one GEMM, the micro-batches in two). */
static void test_grad_accum_equals_big_batch(void **state) {
    (void)state;
    lg_config c = lg_test_tiny_config(LG_ARCH_LLAMA, 29, 3);
    float *g[2];
    float loss[2];
    int rows[2][8];
    int64_t total = 0;
    for (int run = 0; run < 2; run++) {
        lg_model *m;
        assert_int_equal(lg_model_create(&c, NULL, 11, NULL, &m), 0);
        lg_model_set_trainable(m, NULL, NULL);
        int nt = lg_model_n_params(m);
        lg_opt_tensor *t = calloc((size_t)nt, sizeof *t);
        total = 0;
        for (int i = 0; i < nt; i++) {
            lg_param *p = lg_model_param(m, i);
            t[i] = (lg_opt_tensor){p->name, p->data, p->grad, NULL, NULL, p->numel, 1, 0};
            total += p->numel;
        }
        g[run] = calloc((size_t)total, sizeof(float));
        grab_buf = g[run], grab_t = t, grab_n = nt;
        rows_src src;
        rows_init(&src, c.vocab_size, 9);
        lg_train_opts o;
        lg_train_opts_default(&o);
        o.steps = 1, o.seq_len = 8, o.lr = 1e-3f;
        o.batch_size = run == 0 ? 4 : 2;
        o.grad_accum = run == 0 ? 1 : 2;
        o.after_backward = grab_grads;
        o.on_progress = on_first;
        lg_train_result res;
        assert_int_equal(lg_train(m, t, nt, &o, rows_batch, &src, &res), 0);
        loss[run] = first_loss_seen;
        assert_int_equal(src.nlog, 4);
        memcpy(rows[run], src.log, 4 * sizeof(int));
        free(t);
        lg_model_free(m);
    }
    assert_memory_equal(rows[0], rows[1], 4 * sizeof(int)); /* the same rows, in the same order */
    double d2 = 0, n2 = 0;
    for (int64_t i = 0; i < total; i++) {
        d2 += ((double)g[0][i] - g[1][i]) * ((double)g[0][i] - g[1][i]);
        n2 += (double)g[0][i] * g[0][i];
    }
    print_message("grad accumulation: relative gradient difference %.2e, losses %.9g vs %.9g\n", sqrt(d2 / n2),
                  loss[0], loss[1]);
    assert_true(n2 > 0);
    assert_true(sqrt(d2 / n2) < 1e-5);
    assert_float_equal(loss[0], loss[1], 1e-6 * fabs(loss[0]));
    free(g[0]), free(g[1]);
}

/* ---- activation recomputation -------------------------------------------------------------- */

typedef enum { RC_FULL, RC_LORA_DROPOUT, RC_DORA } rc_kind;

/* Two micro-batches of forward + backward; returns every gradient (model's and adapters') and
 * the planned activation bytes. */
static float *grads_with(lg_config c, rc_kind k, int recompute, int64_t *n_out, int64_t *act_bytes, float *loss) {
    lg_model *m;
    assert_int_equal(lg_model_create(&c, NULL, 21, NULL, &m), 0);
    lg_adapters *ad = NULL;
    if (k == RC_FULL) {
        lg_model_set_trainable(m, NULL, NULL);
    } else {
        lg_model_set_trainable(m, want_none, NULL);
        lg_lora_opts lo;
        lg_lora_opts_default(&lo);
        lo.r = 2, lo.alpha = 4, lo.targets = "all-linear", lo.seed = 5;
        lo.dropout = 0.25f;
        lo.use_dora = k == RC_DORA;
        assert_int_equal(lg_adapters_attach(m, &lo, &ad), 0);
        for (int i = 0; i < lg_adapters_count(ad); i++) { /* B = 0 would hide A's gradient */
            lg_lora *l = lg_adapters_get(ad, i);
            for (int64_t j = 0; j < (int64_t)l->out * l->r; j++) l->B[j] = 0.05f * (float)((j * 7 + i) % 5 - 2);
        }
        lg_adapters_zero_grads(ad);
    }
    lg_model_zero_grads(m);
    rows_src src;
    rows_init(&src, c.vocab_size, 4);
    lg_batch b;
    alloc_batch(&b, 3, 8);
    assert_int_equal(lg_model_plan(m, 3, 8, recompute ? LG_PLAN_RECOMPUTE : 1), 0);
    *act_bytes = lg_model_activation_bytes(m);
    *loss = 0;
    for (int mb = 0; mb < 2; mb++) {
        rows_batch(&src, 0, mb, &b);
        double w;
        *loss += lg_model_forward(m, &b, &w);
        lg_model_backward(m, &b, (float)(1.0 / w));
    }
    int64_t n = 0;
    for (int i = 0; i < lg_model_n_params(m); i++)
        if (lg_model_param(m, i)->grad) n += lg_model_param(m, i)->numel;
    lg_opt_tensor *t = NULL;
    int nt = 0;
    if (ad) {
        lg_adapters_opt_tensors(ad, 1, &t, &nt);
        for (int i = 0; i < nt; i++) n += t[i].n;
    }
    float *g = malloc((size_t)(n + 1) * sizeof(float));
    int64_t off = 0;
    for (int i = 0; i < lg_model_n_params(m); i++) {
        lg_param *p = lg_model_param(m, i);
        if (!p->grad) continue;
        memcpy(g + off, p->grad, (size_t)p->numel * sizeof(float));
        off += p->numel;
    }
    for (int i = 0; i < nt; i++) {
        memcpy(g + off, t[i].grad, (size_t)t[i].n * sizeof(float));
        off += t[i].n;
    }
    *n_out = n;
    free(t);
    free_batch(&b);
    lg_adapters_free(ad);
    lg_model_free(m);
    return g;
}

static void recompute_case_cfg(lg_config c, rc_kind k, const char *label) {
    int64_t n0, n1, a0, a1;
    float l0, l1;
    float *g0 = grads_with(c, k, 0, &n0, &a0, &l0), *g1 = grads_with(c, k, 1, &n1, &a1, &l1);
    assert_int_equal(n0, n1);
    double worst = 0, gmax = 0;
    for (int64_t i = 0; i < n0; i++) {
        worst = fmax(worst, fabs((double)g0[i] - g1[i]));
        gmax = fmax(gmax, fabs((double)g0[i]));
    }
    int identical = memcmp(g0, g1, (size_t)n0 * sizeof(float)) == 0;
    print_message("recompute %s: %lld gradients %s (max |diff| / max |g| = %.2e); activations %lld -> %lld bytes\n",
                  label, (long long)n0, identical ? "bit-identical" : "differ", worst / gmax, (long long)a0,
                  (long long)a1);
    assert_true(gmax > 0);
    assert_true(worst <= 1e-6 * gmax);
    assert_float_equal(l0, l1, 0);
    assert_true(a1 < a0);
    free(g0), free(g1);
}

static void recompute_case(lg_arch arch, rc_kind k, const char *label) {
    recompute_case_cfg(lg_test_tiny_config(arch, 29, 3), k, label);
}

/* Gemma's post norms need each layer's MLP output kept (the replay stops before the down
 * projection); Phi-3's fused projections replay their dropout masks like any other. */
static void test_recompute_architectures(void **state) {
    (void)state;
    recompute_case_cfg(lg_test_arch_config("gemma2", 29, 3), RC_FULL, "gemma2-like full FT");
    recompute_case_cfg(lg_test_arch_config("gemma3", 29, 3), RC_LORA_DROPOUT, "gemma3-like LoRA dropout 0.25");
    recompute_case_cfg(lg_test_arch_config("phi3", 29, 3), RC_LORA_DROPOUT, "phi3-like LoRA dropout 0.25");
    recompute_case_cfg(lg_test_arch_config("phi3", 29, 3), RC_DORA, "phi3-like DoRA dropout 0.25");
}

static void test_recompute_full_llama(void **state) {
    (void)state;
    recompute_case(LG_ARCH_LLAMA, RC_FULL, "llama full FT");
}
static void test_recompute_full_gpt2(void **state) {
    (void)state;
    recompute_case(LG_ARCH_GPT2, RC_FULL, "gpt2 full FT");
}
static void test_recompute_lora_dropout(void **state) {
    (void)state;
    recompute_case(LG_ARCH_LLAMA, RC_LORA_DROPOUT, "llama LoRA dropout 0.25");
}
static void test_recompute_dora_gpt2(void **state) {
    (void)state;
    recompute_case(LG_ARCH_GPT2, RC_DORA, "gpt2 DoRA dropout 0.25");
}

/* The planned activation memory: every layer's activations vs their inputs plus one layer. */
static void test_recompute_memory(void **state) {
    (void)state;
    lg_config c = lg_test_tiny_config(LG_ARCH_LLAMA, 29, 3);
    c.n_layers = 12;
    lg_model *m;
    assert_int_equal(lg_model_create(&c, NULL, 1, NULL, &m), 0);
    int64_t bytes[3];
    for (int mode = 0; mode < 3; mode++) {
        assert_int_equal(lg_model_plan(m, 4, 16, mode), 0);
        bytes[mode] = lg_model_activation_bytes(m);
    }
    print_message("12-layer tiny, 4 x 16: inference %lld, training %lld, recompute %lld activation bytes\n",
                  (long long)bytes[0], (long long)bytes[1], (long long)bytes[2]);
    assert_true(bytes[0] < bytes[2] && bytes[2] < bytes[1]);
    assert_true(bytes[2] * 2 < bytes[1]); /* with 12 layers the saving is most of it */
    lg_model_free(m);
}

/* ---- checkpoint + resume ------------------------------------------------------------------- */

typedef enum { M_LORA, M_FULL, M_ADALORA, M_LORAGA, M_PISSA } method;
static const char *const METHOD_NAMES[] = {"lora", "full", "adalora", "lora-ga", "pissa"};

#define STEPS 8
typedef struct {
    lg_model *m;
    lg_adapters *ad;
    lg_opt_tensor *ot;
    int nt;
    lg_ckpt_spec spec;
    char config[256];
    rows_src src;
} run;

/* A fresh model (the same random base every time) with the method's trainable tensors. resume:
 * skip the inits that a checkpoint restores (PiSSA's SVD, LoRA-GA's estimation). */
static void run_setup(run *r, method k, int resume) {
    memset(r, 0, sizeof *r);
    lg_config c = lg_test_tiny_config(LG_ARCH_LLAMA, 29, 3);
    assert_int_equal(lg_model_create(&c, NULL, 7, NULL, &r->m), 0);
    rows_init(&r->src, c.vocab_size, 3);
    snprintf(r->config, sizeof r->config, "{\"--method\": \"%s\", \"--rank\": 4}", METHOD_NAMES[k]);
    if (k == M_FULL) {
        lg_model_set_trainable(r->m, NULL, NULL);
        r->nt = lg_model_n_params(r->m);
        r->ot = calloc((size_t)r->nt, sizeof *r->ot);
        for (int i = 0; i < r->nt; i++) {
            lg_param *p = lg_model_param(r->m, i);
            r->ot[i] = (lg_opt_tensor){p->name, p->data, p->grad, NULL, NULL, p->numel, 1, p->ndim == 2 ? 0.01f : 0};
        }
        r->spec.config_json = r->config;
        return;
    }
    lg_model_set_trainable(r->m, want_none, NULL);
    lg_lora_opts lo;
    lg_lora_opts_default(&lo);
    lo.r = 4, lo.alpha = 8, lo.targets = "all-linear", lo.seed = 13;
    lo.dropout = k == M_LORA || k == M_ADALORA ? 0.1f : 0.0f;
    if (k == M_ADALORA) {
        lo.adalora = 1, lo.init = LG_INIT_ADALORA, lo.target_r = 2, lo.total_steps = STEPS;
        lo.tinit = 1, lo.tfinal = 3, lo.delta_t = 1;
    }
    if (k == M_LORAGA) lo.init = LG_INIT_NONE, lo.use_rslora = 1;
    if (k == M_PISSA) lo.init = resume ? LG_INIT_NONE : LG_INIT_PISSA;
    assert_int_equal(lg_adapters_attach(r->m, &lo, &r->ad), 0);
    if (k == M_LORAGA && !resume) {
        lg_ga_opts go;
        lg_ga_opts_default(&go);
        go.batches = 3, go.batch_size = 2, go.seq_len = ROW_T, go.seed = 2;
        lg_ga_report rep;
        assert_int_equal(lg_loraga_init(r->m, r->ad, &go, rows_batch, &r->src, &rep), 0);
    }
    assert_int_equal(lg_adapters_opt_tensors(r->ad, k == M_LORA ? 4.0f : 1.0f, &r->ot, &r->nt), 0);
    assert_int_equal(lg_ckpt_adapter_spec(r->ad, k == M_LORAGA || k == M_PISSA, &r->spec), 0);
    r->spec.config_json = r->config;
}

static int adalora_hook(long step, void *ud) {
    lg_adalora_step(ud, step);
    return 0;
}

static void run_free(run *r) {
    lg_ckpt_spec_free(&r->spec);
    free(r->ot);
    lg_adapters_free(r->ad);
    lg_model_free(r->m);
}

static void run_opts(run *r, method k, lg_train_opts *o) {
    lg_train_opts_default(o);
    o->steps = STEPS, o->batch_size = 2, o->seq_len = ROW_T, o->grad_accum = 2;
    o->lr = k == M_FULL ? 3e-3f : 2e-2f, o->sched = LG_SCHED_COSINE, o->warmup = 2, o->clip = 0.5f;
    o->val_batches = 1, o->eval_every = 3; /* evaluating must not disturb dropout or anything else */
    o->ckpt = &r->spec;
    if (k == M_ADALORA) o->after_backward = adalora_hook, o->after_backward_ud = r->ad;
}

/* All trainable tensors, concatenated. */
static float *snapshot(const run *r, int64_t *n) {
    int64_t total = 0;
    for (int i = 0; i < r->nt; i++) total += r->ot[i].n;
    float *s = malloc((size_t)(total + 1) * sizeof(float)), *p = s;
    for (int i = 0; i < r->nt; i++) {
        memcpy(p, r->ot[i].data, (size_t)r->ot[i].n * sizeof(float));
        p += r->ot[i].n;
    }
    *n = total;
    return s;
}

/* The "loss" and "grad_norm" fields of every metrics line, as text. */
static int metric_fields(const char *path, char out[][48], int cap) {
    char *text;
    assert_int_equal(lg_read_file(path, &text, NULL), 0);
    int n = 0;
    for (char *line = strtok(text, "\n"); line && n < cap; line = strtok(NULL, "\n")) {
        const char *l = strstr(line, "\"loss\": "), *g = strstr(line, "\"grad_norm\": ");
        assert_non_null(l);
        assert_non_null(g);
        char a[20] = {0}, b[20] = {0};
        sscanf(l + 8, "%19[^,]", a);
        sscanf(g + 13, "%19[^,]", b);
        snprintf(out[n++], 48, "%s/%s", a, b);
    }
    free(text);
    return n;
}

/* 2N steps straight (with checkpoints along the way, which must not perturb it) vs N steps, stop,
 * a fresh process-like setup that resumes, N more: the same loss/grad-norm text on every line,
 * bit-identical final tensors, fixed tensors (offset W, A0, B0) and adapter state. */
static void resume_case(method k) {
    char *dir = lg_test_tmpdir();
    char *ma = path2(dir, "a.jsonl"), *ca = path2(dir, "a_ck"), *mb1 = path2(dir, "b1.jsonl"),
         *mb2 = path2(dir, "b2.jsonl"), *cb = path2(dir, "b_ck");
    run a, b1, b2;
    lg_train_opts o;
    lg_train_result res;

    run_setup(&a, k, 0);
    run_opts(&a, k, &o);
    o.metrics_path = ma, o.ckpt_dir = ca, o.save_every = 3;
    assert_int_equal(lg_train(a.m, a.ot, a.nt, &o, rows_batch, &a.src, &res), 0);
    assert_int_equal(res.last_ckpt_step, STEPS);

    run_setup(&b1, k, 0);
    run_opts(&b1, k, &o);
    o.metrics_path = mb1, o.ckpt_dir = cb, o.stop_after = STEPS / 2;
    assert_int_equal(lg_train(b1.m, b1.ot, b1.nt, &o, rows_batch, &b1.src, &res), 0);
    assert_true(res.stopped);
    assert_int_equal(res.steps_done, STEPS / 2);
    run_free(&b1);

    run_setup(&b2, k, 1);
    run_opts(&b2, k, &o);
    o.metrics_path = mb2, o.ckpt_dir = cb, o.resume_dir = cb;
    assert_int_equal(lg_train(b2.m, b2.ot, b2.nt, &o, rows_batch, &b2.src, &res), 0);
    assert_int_equal(res.resumed_from, STEPS / 2);
    assert_int_equal(res.steps_done, STEPS);
    assert_false(res.stopped);

    char fa[STEPS + 2][48], fb[STEPS + 2][48];
    assert_int_equal(metric_fields(ma, fa, STEPS + 2), STEPS);
    assert_int_equal(metric_fields(mb2, fb, STEPS + 2), STEPS);
    for (int i = 0; i < STEPS; i++) assert_string_equal(fa[i], fb[i]);
    int64_t na, nb;
    float *sa = snapshot(&a, &na), *sb = snapshot(&b2, &nb);
    assert_int_equal(na, nb);
    assert_memory_equal(sa, sb, (size_t)na * sizeof(float));
    assert_int_equal(a.spec.n_fixed, b2.spec.n_fixed);
    for (int i = 0; i < a.spec.n_fixed; i++)
        assert_memory_equal(a.spec.fixed[i].data, b2.spec.fixed[i].data,
                            (size_t)a.spec.fixed[i].n * sizeof(float));
    if (a.ad) {
        size_t n1 = lg_adapters_state_bytes(a.ad), n2 = lg_adapters_state_bytes(b2.ad);
        assert_int_equal(n1, n2);
        char *s1 = malloc(n1), *s2 = malloc(n2);
        lg_adapters_state_save(a.ad, s1);
        lg_adapters_state_save(b2.ad, s2);
        assert_memory_equal(s1, s2, n1);
        free(s1), free(s2);
    }
    /* the final checkpoints agree too (same trainable bytes) */
    lg_ckpt *c1, *c2;
    assert_int_equal(lg_ckpt_open(ca, &c1), 0);
    assert_int_equal(lg_ckpt_open(cb, &c2), 0);
    assert_int_equal(lg_ckpt_step(c1), STEPS);
    assert_int_equal(lg_ckpt_step(c2), STEPS);
    assert_int_equal(lg_ckpt_micro_batches(c2), 2 * STEPS);
    lg_ckpt_close(c1), lg_ckpt_close(c2);
    print_message("resume %s: %d steps straight == %d + resume + %d (%lld trainable values, %d fixed tensors); "
                  "last loss/grad-norm %s\n",
                  METHOD_NAMES[k], STEPS, STEPS / 2, STEPS / 2, (long long)na, a.spec.n_fixed, fa[STEPS - 1]);
    free(sa), free(sb);
    run_free(&a), run_free(&b2);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
    free(ma), free(ca), free(mb1), free(mb2), free(cb), free(dir);
}

static void test_resume_lora(void **state) {
    (void)state;
    resume_case(M_LORA);
}
static void test_resume_full(void **state) {
    (void)state;
    resume_case(M_FULL);
}
static void test_resume_adalora_dropout(void **state) {
    (void)state;
    resume_case(M_ADALORA);
}
static void test_resume_loraga(void **state) {
    (void)state;
    resume_case(M_LORAGA);
}
static void test_resume_pissa(void **state) {
    (void)state;
    resume_case(M_PISSA);
}

/* Evaluating runs without dropout and advances no adapter counter: a run that validates every
 * step trains exactly as one that never does. */
static void test_eval_does_not_disturb_training(void **state) {
    (void)state;
    float *snap[2];
    int64_t n[2];
    for (int i = 0; i < 2; i++) {
        run r;
        lg_train_opts o;
        lg_train_result res;
        run_setup(&r, M_LORA, 0); /* dropout 0.1 */
        run_opts(&r, M_LORA, &o);
        o.eval_every = 1, o.val_batches = i ? 2 : 0;
        assert_int_equal(lg_train(r.m, r.ot, r.nt, &o, rows_batch, &r.src, &res), 0);
        assert_true(i ? isfinite(res.last_val_loss) : isnan(res.last_val_loss));
        snap[i] = snapshot(&r, &n[i]);
        run_free(&r);
    }
    assert_int_equal(n[0], n[1]);
    assert_memory_equal(snap[0], snap[1], (size_t)n[0] * sizeof(float));
    free(snap[0]), free(snap[1]);
}

/* Resuming with other options is refused, naming the option; so is a corrupted checkpoint. */
static void test_resume_mismatch_refused(void **state) {
    (void)state;
    char *dir = lg_test_tmpdir(), *ck = path2(dir, "checkpoint");
    run r;
    lg_train_opts o;
    lg_train_result res;
    run_setup(&r, M_LORA, 0);
    run_opts(&r, M_LORA, &o);
    o.sched = LG_SCHED_CONSTANT; /* so that --steps may grow on resume */
    o.ckpt_dir = ck, o.stop_after = 2;
    assert_int_equal(lg_train(r.m, r.ot, r.nt, &o, rows_batch, &r.src, &res), 0);
    run_free(&r);

    struct {
        const char *config, *expect;
        int batch, grad_accum;
        float lr;
    } cases[] = {
        {"{\"--method\": \"lora\", \"--rank\": 8}", "--rank", 2, 2, 2e-2f},
        {"{\"--method\": \"dora\", \"--rank\": 4}", "--method", 2, 2, 2e-2f},
        {"{\"--method\": \"lora\", \"--rank\": 4, \"data checksum\": \"x\"}", "data checksum", 2, 2, 2e-2f},
        {"{\"--method\": \"lora\", \"--rank\": 4}", "--batch-size", 3, 2, 2e-2f},
        {"{\"--method\": \"lora\", \"--rank\": 4}", "--grad-accum", 2, 1, 2e-2f},
        {"{\"--method\": \"lora\", \"--rank\": 4}", "--lr", 2, 2, 1e-2f},
        {"{\"--method\": \"lora\", \"--rank\": 4}", "--schedule", 2, 2, 2e-2f},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        run_setup(&r, M_LORA, 1);
        run_opts(&r, M_LORA, &o);
        r.spec.config_json = cases[i].config;
        o.batch_size = cases[i].batch, o.grad_accum = cases[i].grad_accum, o.lr = cases[i].lr;
        if (!strcmp(cases[i].expect, "--schedule")) o.sched = LG_SCHED_COSINE; /* the checkpoint's is constant */
        else o.sched = LG_SCHED_CONSTANT;
        o.resume_dir = ck;
        assert_int_equal(lg_train(r.m, r.ot, r.nt, &o, rows_batch, &r.src, &res), -1);
        print_message("refused: %s\n", lg_last_error());
        assert_non_null(strstr(lg_last_error(), cases[i].expect));
        run_free(&r);
    }
    /* --steps at the checkpoint's step: nothing left; a constant schedule may be extended */
    run_setup(&r, M_LORA, 1);
    run_opts(&r, M_LORA, &o);
    o.sched = LG_SCHED_CONSTANT, o.resume_dir = ck, o.steps = 2;
    assert_int_equal(lg_train(r.m, r.ot, r.nt, &o, rows_batch, &r.src, &res), -1);
    assert_non_null(strstr(lg_last_error(), "nothing to train"));
    run_free(&r);
    run_setup(&r, M_LORA, 1);
    run_opts(&r, M_LORA, &o);
    o.sched = LG_SCHED_CONSTANT, o.resume_dir = ck, o.steps = 12;
    assert_int_equal(lg_train(r.m, r.ot, r.nt, &o, rows_batch, &r.src, &res), 0);
    assert_int_equal(res.steps_done, 12);
    run_free(&r);
    /* a flipped byte in the optimizer state */
    char *opt = path2(ck, "optimizer.safetensors");
    FILE *f = fopen(opt, "r+b");
    assert_non_null(f);
    fseek(f, -3, SEEK_END);
    int ch = fgetc(f);
    fseek(f, -3, SEEK_END);
    fputc(ch ^ 0x20, f);
    fclose(f);
    lg_ckpt *c;
    assert_int_equal(lg_ckpt_open(ck, &c), -1);
    print_message("refused: %s\n", lg_last_error());
    assert_non_null(strstr(lg_last_error(), "optimizer.safetensors"));
    assert_non_null(strstr(lg_last_error(), "checksum"));
    free(opt);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
    free(ck), free(dir);
}

/* A run that goes non-finite stops naming the step and keeps its last good checkpoint, which
 * still resumes into exactly the run that never failed. poison_at: the (0-based) update after
 * whose backward one adapter weight becomes NaN. */
static long poison_at;
static run *poison_run;
static int poison(long step, void *ud) {
    (void)ud;
    if (step == poison_at) poison_run->ot[0].data[0] = NAN;
    return 0;
}

static void nonfinite_case(long at, const char *expect) {
    char *dir = lg_test_tmpdir(), *ck = path2(dir, "checkpoint"), *mp = path2(dir, "m.jsonl"),
         *ma = path2(dir, "a.jsonl");
    run r, a;
    lg_train_opts o;
    lg_train_result res;
    run_setup(&r, M_LORA, 0);
    run_opts(&r, M_LORA, &o);
    o.ckpt_dir = ck, o.save_every = 2, o.metrics_path = mp;
    poison_at = at, poison_run = &r;
    o.after_backward = poison;
    assert_int_equal(lg_train(r.m, r.ot, r.nt, &o, rows_batch, &r.src, &res), -1);
    print_message("stopped: %s\n", lg_last_error());
    assert_non_null(strstr(lg_last_error(), expect));
    assert_non_null(strstr(lg_last_error(), "non-finite"));
    assert_non_null(strstr(lg_last_error(), "last good checkpoint (step 4)"));
    run_free(&r);
    lg_ckpt *c;
    assert_int_equal(lg_ckpt_open(ck, &c), 0);
    assert_int_equal(lg_ckpt_step(c), 4);
    lg_ckpt_close(c);
    char *tmpck = NULL;
    char buf[64];
    snprintf(buf, sizeof buf, "checkpoint.tmp.%d", (int)getpid());
    tmpck = path2(dir, buf);
    assert_false(lg_file_exists(tmpck)); /* no half-written leftovers */
    free(tmpck);
    /* the kept checkpoint resumes into the run that never failed */
    run_setup(&a, M_LORA, 0);
    run_opts(&a, M_LORA, &o);
    o.metrics_path = ma;
    assert_int_equal(lg_train(a.m, a.ot, a.nt, &o, rows_batch, &a.src, &res), 0);
    run_setup(&r, M_LORA, 1);
    run_opts(&r, M_LORA, &o);
    o.resume_dir = ck, o.metrics_path = mp;
    assert_int_equal(lg_train(r.m, r.ot, r.nt, &o, rows_batch, &r.src, &res), 0);
    int64_t n1, n2;
    float *s1 = snapshot(&a, &n1), *s2 = snapshot(&r, &n2);
    assert_memory_equal(s1, s2, (size_t)n1 * sizeof(float));
    char fa[STEPS + 2][48], fb[STEPS + 2][48];
    assert_int_equal(metric_fields(ma, fa, STEPS + 2), STEPS);
    assert_int_equal(metric_fields(mp, fb, STEPS + 2), STEPS);
    for (int i = 0; i < STEPS; i++) assert_string_equal(fa[i], fb[i]);
    free(s1), free(s2);
    run_free(&a), run_free(&r);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
    free(ck), free(mp), free(ma), free(dir);
}

/* NaN weights after update 5: update 6's loss is NaN, the run stops at step 6. */
static void test_nonfinite_loss_keeps_checkpoint(void **state) {
    (void)state;
    nonfinite_case(4, "step 6: loss is");
}
/* NaN weights after update 6, when a checkpoint is due: it is refused, the step-4 one stays. */
static void test_nonfinite_state_not_checkpointed(void **state) {
    (void)state;
    nonfinite_case(5, "step 6:");
}

/* ---- the command line on the real stories260K ---------------------------------------------- */

static int sh(const char *cmd, char *out, size_t cap) {
    char full[8400];
    snprintf(full, sizeof full, "OMP_NUM_THREADS=1 %s 2>&1", cmd);
    return lg_test_run(full, out, cap);
}

static int same_file(const char *a, const char *b) {
    char *x, *y;
    size_t nx, ny;
    if (lg_read_file(a, &x, &nx) != 0) return 0;
    if (lg_read_file(b, &y, &ny) != 0) {
        free(x);
        return 0;
    }
    int same = nx == ny && memcmp(x, y, nx) == 0;
    free(x), free(y);
    return same;
}

static void test_cli_resume_stories260k(void **state) {
    (void)state;
    LG_REQUIRE_SHARED(bin, "llama2c_stories260K/stories260K.bin");
    LG_REQUIRE_SHARED(tok, "llama2c_stories260K/tok512.bin");
    LG_REQUIRE_SHARED(txt, "tinystories_subset/validation_100.txt");
    if (access(lg_test_bin(), X_OK) != 0) {
        print_message("skipped: %s not built\n", lg_test_bin());
        free(bin), free(tok), free(txt);
        skip();
    }
    char *dir = lg_test_tmpdir(), cmd[8192], out[8192];
    snprintf(cmd, sizeof cmd, "%s convert --from llama2c --model %s --tokenizer %s --out %s/m", lg_test_bin(), bin,
             tok, dir);
    assert_int_equal(sh(cmd, out, sizeof out), 0);
    /* rows: one {"text"} per story */
    char *text, rows[600];
    assert_int_equal(lg_read_file(txt, &text, NULL), 0);
    snprintf(rows, sizeof rows, "%s/rows.jsonl", dir);
    FILE *f = fopen(rows, "w");
    assert_non_null(f);
    int nrows = 0;
    for (char *s = text; s && *s && nrows < 60;) {
        char *e = strstr(s, "<|endoftext|>");
        if (e) *e = 0;
        while (*s == '\n' || *s == ' ') s++;
        if (*s) {
            fputs("{\"text\": \"", f);
            for (char *p = s; *p; p++) {
                if (*p == '"' || *p == '\\') fputc('\\', f);
                if (*p == '\n') fputs("\\n", f);
                else if ((unsigned char)*p >= 0x20) fputc(*p, f);
            }
            fputs("\"}\n", f);
            nrows++;
        }
        s = e ? e + 13 : NULL;
    }
    fclose(f);
    free(text);
    assert_true(nrows > 10);

    struct {
        const char *method, *extra, *result;
    } runs[] = {
        {"lora-ga", "--ga-batches 4 --dropout 0.05 --lr 3e-3", "adapter_model.safetensors"},
        {"full", "--lr 1e-3 --schedule linear --warmup 2", "model.safetensors"},
    };
    for (int i = 0; i < 2; i++) {
        char common[2048];
        snprintf(common, sizeof common,
                 "%s train --model %s/m --data %s --method %s %s --steps 6 --batch-size 4 --seq-len 64 "
                 "--grad-accum 2 --val-frac 0.1 --eval-every 2",
                 lg_test_bin(), dir, rows, runs[i].method, runs[i].extra);
        snprintf(cmd, sizeof cmd, "%s --save-every 2 --out %s/straight%d", common, dir, i);
        assert_int_equal(sh(cmd, out, sizeof out), 0);
        snprintf(cmd, sizeof cmd, "%s --stop-after 3 --out %s/split%d", common, dir, i);
        assert_int_equal(sh(cmd, out, sizeof out), 0);
        assert_non_null(strstr(out, "stopped after step 3"));
        /* other options: refused, naming the option; the checkpoint is untouched */
        snprintf(cmd, sizeof cmd, "%s --seed 7 --resume %s/split%d", common, dir, i);
        assert_int_not_equal(sh(cmd, out, sizeof out), 0);
        print_message("%s", strstr(out, "error") ? strstr(out, "error") : out);
        assert_non_null(strstr(out, "option --seed differs"));
        snprintf(cmd, sizeof cmd, "%s --resume %s/split%d --recompute", common, dir, i);
        assert_int_equal(sh(cmd, out, sizeof out), 0);
        assert_non_null(strstr(out, "resumed from step 3"));
        char a[600], b[600];
        snprintf(a, sizeof a, "%s/straight%d/%s", dir, i, runs[i].result);
        snprintf(b, sizeof b, "%s/split%d/%s", dir, i, runs[i].result);
        assert_true(same_file(a, b));
        snprintf(a, sizeof a, "%s/straight%d/metrics.jsonl", dir, i);
        snprintf(b, sizeof b, "%s/split%d/metrics.jsonl", dir, i);
        char fa[12][48], fb[12][48];
        assert_int_equal(metric_fields(a, fa, 12), 6);
        assert_int_equal(metric_fields(b, fb, 12), 6);
        for (int s = 0; s < 6; s++) assert_string_equal(fa[s], fb[s]);
        print_message("cli %s: 6 steps straight == 3 + --resume + 3 (%s and metrics identical; last %s)\n",
                      runs[i].method, runs[i].result, fa[5]);
        snprintf(a, sizeof a, "%s/split%d/checkpoint/trainer_state.json", dir, i);
        assert_true(lg_file_exists(a)); /* the finished run keeps its last checkpoint */
    }
    /* lr 1e30: the second step's loss is not finite; the message names it, step 1's checkpoint stays */
    snprintf(cmd, sizeof cmd,
             "%s train --model %s/m --data %s --method lora --steps 5 --batch-size 4 --seq-len 64 --lr 1e30 "
             "--save-every 1 --out %s/nan",
             lg_test_bin(), dir, rows, dir);
    assert_int_not_equal(sh(cmd, out, sizeof out), 0);
    print_message("%s", strstr(out, "error") ? strstr(out, "error") : out);
    assert_non_null(strstr(out, "step 2: loss is"));
    assert_non_null(strstr(out, "last good checkpoint (step 1)"));
    char ck[600];
    snprintf(ck, sizeof ck, "%s/nan/checkpoint", dir);
    lg_ckpt *c;
    assert_int_equal(lg_ckpt_open(ck, &c), 0);
    assert_int_equal(lg_ckpt_step(c), 1);
    lg_ckpt_close(c);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
    free(dir), free(bin), free(tok), free(txt);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_schedule_values),
        cmocka_unit_test(test_adamw_hand_computed),
        cmocka_unit_test(test_grad_clip_values),
        cmocka_unit_test(test_grad_clip_in_loop),
        cmocka_unit_test(test_grad_accum_equals_big_batch),
        cmocka_unit_test(test_recompute_full_llama),
        cmocka_unit_test(test_recompute_full_gpt2),
        cmocka_unit_test(test_recompute_lora_dropout),
        cmocka_unit_test(test_recompute_dora_gpt2),
        cmocka_unit_test(test_recompute_architectures),
        cmocka_unit_test(test_recompute_memory),
        cmocka_unit_test(test_resume_lora),
        cmocka_unit_test(test_resume_full),
        cmocka_unit_test(test_resume_adalora_dropout),
        cmocka_unit_test(test_resume_loraga),
        cmocka_unit_test(test_resume_pissa),
        cmocka_unit_test(test_eval_does_not_disturb_training),
        cmocka_unit_test(test_resume_mismatch_refused),
        cmocka_unit_test(test_nonfinite_loss_keeps_checkpoint),
        cmocka_unit_test(test_nonfinite_state_not_checkpointed),
        cmocka_unit_test(test_cli_resume_stories260k),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
