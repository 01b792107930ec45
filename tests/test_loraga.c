/* test_loraga.c — LoRA-GA's exact properties (SPEC §5): Eckart–Young for the unit-scale init,
 * the first SGD step equals -eta·s²·(B0B0^T G + G A0^T A0), the loss at step 0 is the base
 * loss, serial == all, the sketch recovers the same first-step objective, the hooks' gradient
 * equals the model's own dW, the cache, and the PEFT variant. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "adapters/lora.h"
#include "adapters/lora_io.h"
#include <cjson/cJSON.h>
#include "core/util.h"
#include "loraga/loraga.h"
#include "model/model.h"
#include "data/data.h"
#include "tokenizer/tokenizer.h"
#include "train/train.h"

/* ---- fixtures ------------------------------------------------------------------------------ */

static lg_config tiny_config(void) {
    lg_config c;
    memset(&c, 0, sizeof c);
    c.arch = LG_ARCH_LLAMA;
    snprintf(c.model_type, sizeof c.model_type, "llama");
    snprintf(c.torch_dtype, sizeof c.torch_dtype, "float32");
    c.vocab_size = 37;
    c.dim = 32;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.head_dim = 8;
    c.hidden_dim = 48;
    c.max_seq = 16;
    c.norm_eps = 1e-5f;
    c.rope_theta = 10000.0f;
    c.bos_id = c.eos_id = -1;
    return c;
}

/* A fixed list of random batches served through lg_batch_fn (split ignored: file order). */
typedef struct {
    int n, B, T;
    int *ids;
} batches;

static batches make_batches(int n, int B, int T, int V, uint64_t seed) {
    batches b = {n, B, T, malloc((size_t)n * B * (T + 1) * sizeof(int))};
    lg_rng r;
    lg_rng_seed(&r, seed);
    /* a skewed token distribution so that the gradient has structure */
    for (int i = 0; i < n * B * (T + 1); i++) {
        float u = lg_rng_uniform(&r);
        b.ids[i] = (int)(u * u * (float)V) % V;
    }
    return b;
}

static int next_batch(void *ud, int split, long index, lg_batch *out) {
    (void)split;
    batches *b = ud;
    int i = (int)(index % b->n);
    for (int s = 0; s < b->B; s++)
        for (int t = 0; t < b->T; t++) {
            const int *row = b->ids + ((size_t)i * b->B + s) * (b->T + 1);
            out->inputs[s * b->T + t] = row[t];
            out->targets[s * b->T + t] = row[t + 1];
            out->weight[s * b->T + t] = 1.0f;
        }
    return 0;
}

static int want_none(const lg_param *p, void *ud) {
    (void)p, (void)ud;
    return 0;
}

static double frob2(const float *x, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    return s;
}

static void copy_weights(lg_model *dst, lg_model *src) {
    for (int i = 0; i < lg_model_n_params(src); i++)
        memcpy(lg_model_param(dst, i)->data, lg_model_param(src, i)->data,
               (size_t)lg_model_param(src, i)->numel * sizeof(float));
}

static double batch_loss(lg_model *m, batches *bs, int idx) {
    lg_batch b = {bs->B, bs->T, calloc((size_t)bs->B * bs->T, sizeof(int)),
                  calloc((size_t)bs->B * bs->T, sizeof(int)), calloc((size_t)bs->B * bs->T, sizeof(float))};
    next_batch(bs, 2, idx, &b);
    double w;
    double l = lg_model_forward(m, &b, &w);
    free(b.inputs), free(b.targets), free(b.weight);
    return l;
}

/* G of one linear layer through the model's own dW path (mean of per-batch mean-loss gradients). */
static float *model_gradient(lg_model *m, const char *wname, batches *bs, int N) {
    lg_param *p = lg_model_find_param(m, wname);
    assert_non_null(p);
    lg_model_set_trainable(m, NULL, NULL); /* full fine-tuning's dW path */
    lg_model_zero_grads(m);
    lg_batch b = {bs->B, bs->T, calloc((size_t)bs->B * bs->T, sizeof(int)),
                  calloc((size_t)bs->B * bs->T, sizeof(int)), calloc((size_t)bs->B * bs->T, sizeof(float))};
    lg_model_plan(m, bs->B, bs->T, 1);
    for (int i = 0; i < N; i++) {
        next_batch(bs, 2, i, &b);
        double w;
        lg_model_forward(m, &b, &w);
        lg_model_backward(m, &b, (float)(1.0 / (w * N)));
    }
    float *G = malloc((size_t)p->numel * sizeof(float));
    memcpy(G, p->grad, (size_t)p->numel * sizeof(float));
    free(b.inputs), free(b.targets), free(b.weight);
    lg_model_set_trainable(m, want_none, NULL);
    return G;
}

static lg_lora_opts lora_opts(int r) {
    lg_lora_opts o;
    lg_lora_opts_default(&o);
    o.r = r;
    o.alpha = 16;
    o.init = LG_INIT_NONE;
    o.targets = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj";
    return o;
}

static lg_ga_opts ga_opts(lg_ga_mode mode, int N, int B, int T) {
    lg_ga_opts o;
    lg_ga_opts_default(&o);
    o.mode = mode;
    o.batches = N;
    o.batch_size = B;
    o.seq_len = T;
    o.seed = 3;
    return o;
}

/* ---- factorisation --------------------------------------------------------------------------- */

/* A matrix with a known, decaying spectrum: G = Q1 diag(sigma) Q2^T. */
static float *spectrum_matrix(int m, int n, const double *sig, int p, uint64_t seed) {
    float *G = calloc((size_t)m * n, sizeof(float));
    /* random orthonormal columns via Gram–Schmidt */
    double *Q1 = malloc((size_t)m * p * sizeof(double)), *Q2 = malloc((size_t)n * p * sizeof(double));
    lg_rng r;
    lg_rng_seed(&r, seed);
    double *Qs[2] = {Q1, Q2};
    int rows[2] = {m, n};
    for (int q = 0; q < 2; q++)
        for (int j = 0; j < p; j++) {
            double *Q = Qs[q];
            int R = rows[q];
            for (int i = 0; i < R; i++) Q[(size_t)i * p + j] = lg_rng_normal(&r);
            for (int pass = 0; pass < 2; pass++)
                for (int jj = 0; jj < j; jj++) {
                    double d = 0;
                    for (int i = 0; i < R; i++) d += Q[(size_t)i * p + j] * Q[(size_t)i * p + jj];
                    for (int i = 0; i < R; i++) Q[(size_t)i * p + j] -= d * Q[(size_t)i * p + jj];
                }
            double nn = 0;
            for (int i = 0; i < R; i++) nn += Q[(size_t)i * p + j] * Q[(size_t)i * p + j];
            for (int i = 0; i < R; i++) Q[(size_t)i * p + j] /= sqrt(nn);
        }
    for (int i = 0; i < m; i++)
        for (int k = 0; k < n; k++) {
            double s = 0;
            for (int j = 0; j < p; j++) s += Q1[(size_t)i * p + j] * sig[j] * Q2[(size_t)k * p + j];
            G[(size_t)i * n + k] = (float)s;
        }
    free(Q1), free(Q2);
    return G;
}

static void test_svd_randomised_matches_spectrum(void **state) {
    (void)state;
    int m = 120, n = 90, p = 60, k = 8;
    double sig[60];
    for (int i = 0; i < p; i++) sig[i] = pow(0.8, i) * 10;
    float *G = spectrum_matrix(m, n, sig, p, 1);
    float *U = malloc((size_t)m * k * 4), *S = malloc((size_t)k * 4), *V = malloc((size_t)n * k * 4);
    assert_int_equal(lg_ga_svd(lg_ops_cpu(), G, m, n, k, 16, 4, 9, U, S, V), 0); /* randomised: q = 16 < 90 */
    for (int i = 0; i < k; i++) assert_float_equal(S[i], sig[i], 1e-3 * sig[0]);
    /* U diag(S) V^T reproduces G's top-k part: ||G - U S V^T||_F^2 = sum_{i>=k} sigma_i^2 */
    double res = 0, tail = 0;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double a = G[(size_t)i * n + j];
            for (int t = 0; t < k; t++) a -= (double)U[(size_t)i * k + t] * S[t] * V[(size_t)j * k + t];
            res += a * a;
        }
    for (int i = k; i < p; i++) tail += sig[i] * sig[i];
    assert_float_equal(res, tail, 1e-3 * tail);
    /* deterministic for a seed */
    float *U2 = malloc((size_t)m * k * 4), *S2 = malloc((size_t)k * 4), *V2 = malloc((size_t)n * k * 4);
    assert_int_equal(lg_ga_svd(lg_ops_cpu(), G, m, n, k, 16, 4, 9, U2, S2, V2), 0);
    assert_memory_equal(U, U2, (size_t)m * k * 4);
    free(U2), free(S2), free(V2), free(U), free(S), free(V), free(G);
}

/* Eckart–Young: with unit scale, B0B0^T G + G A0^T A0 is the best rank-2r approximation of G,
 * for every direction rule (each picks the top 2r triplets, split between A and B). */
static void test_eckart_young_unit_scale(void **state) {
    (void)state;
    int m = 24, n = 18, p = 18, r = 3;
    double sig[18];
    for (int i = 0; i < p; i++) sig[i] = 5.0 / (1 + i);
    float *G = spectrum_matrix(m, n, sig, p, 2);
    float *U = malloc((size_t)m * 2 * r * 4), *S = malloc((size_t)2 * r * 4), *V = malloc((size_t)n * 2 * r * 4);
    assert_int_equal(lg_ga_svd(lg_ops_cpu(), G, m, n, 2 * r, 4 * r, 4, 1, U, S, V), 0); /* 4r >= 18: exact */
    double tail = 0;
    for (int i = 2 * r; i < p; i++) tail += sig[i] * sig[i];
    lg_ga_direction dirs[] = {LG_GA_ARB2R, LG_GA_A2RBR, LG_GA_ARBR, LG_GA_RANDOM};
    for (int d = 0; d < 4; d++) {
        lg_ga_opts o;
        lg_ga_opts_default(&o);
        o.scale = LG_GA_UNIT;
        o.direction = dirs[d];
        float *A0 = malloc((size_t)r * n * 4), *B0 = malloc((size_t)m * r * 4);
        lg_ga_init_factors(lg_ops_cpu(), U, S, V, m, n, r, 2.0f, NULL, &o, A0, B0);
        double res = 0;
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) {
                double a = G[(size_t)i * n + j], bb = 0, ga = 0;
                for (int t = 0; t < r; t++) {
                    double btg = 0, gat = 0; /* (B0^T G)[t, j] and (G A0^T)[i, t] */
                    for (int q = 0; q < m; q++) btg += (double)B0[(size_t)q * r + t] * G[(size_t)q * n + j];
                    for (int q = 0; q < n; q++) gat += (double)G[(size_t)i * n + q] * A0[(size_t)t * n + q];
                    bb += B0[(size_t)i * r + t] * btg;
                    ga += gat * A0[(size_t)t * n + j];
                }
                a -= bb + ga;
                res += a * a;
            }
        print_message("direction %d: ||G - P(G)||^2 = %.6g, sum_{i>2r} sigma^2 = %.6g\n", d, res, tail);
        assert_float_equal(res, tail, 1e-4 * tail);
        free(A0), free(B0);
    }
    free(U), free(S), free(V), free(G);
}

static void test_scales_and_peft_variant(void **state) {
    (void)state;
    int m = 16, n = 12, r = 2;
    double sig[12];
    for (int i = 0; i < 12; i++) sig[i] = 4.0 - 0.3 * i;
    float *G = spectrum_matrix(m, n, sig, 12, 5);
    float *U = malloc((size_t)m * 2 * r * 4), *S = malloc((size_t)2 * r * 4), *V = malloc((size_t)n * 2 * r * 4);
    assert_int_equal(lg_ga_svd(lg_ops_cpu(), G, m, n, 2 * r, 4 * r, 4, 1, U, S, V), 0);
    float *A0 = malloc((size_t)r * n * 4), *B0 = malloc((size_t)m * r * 4);
    lg_ga_opts o;
    lg_ga_opts_default(&o); /* paper: ArB2r, stable, gamma 16 */
    lg_ga_init_factors(lg_ops_cpu(), U, S, V, m, n, r, 2.0f, NULL, &o, A0, B0);
    float c = (float)(pow(m, 0.25) / 4.0);
    assert_float_equal(A0[1 * n + 3], c * V[3 * 2 * r + 1], 1e-6);
    assert_float_equal(B0[5 * r + 1], c * U[5 * 2 * r + r + 1], 1e-6);
    o.variant = LG_GA_PEFT; /* B0 = U[:, r:2r] diag(S[r:2r]) m^(1/4)/sqrt(gamma); A0 unscaled */
    lg_ga_init_factors(lg_ops_cpu(), U, S, V, m, n, r, 2.0f, NULL, &o, A0, B0);
    assert_float_equal(A0[1 * n + 3], V[3 * 2 * r + 1], 1e-6);
    assert_float_equal(B0[5 * r + 1], c * S[r + 1] * U[5 * 2 * r + r + 1], 1e-5);
    o.variant = LG_GA_PAPER;
    o.scale = LG_GA_GD; /* both divided by s */
    lg_ga_init_factors(lg_ops_cpu(), U, S, V, m, n, r, 2.0f, NULL, &o, A0, B0);
    assert_float_equal(A0[0], V[0] / 2.0f, 1e-6);
    free(A0), free(B0), free(U), free(S), free(V), free(G);
}

/* ---- the whole algorithm on a model ------------------------------------------------------------- */

typedef struct {
    lg_model *m;
    lg_adapters *a;
    lg_ga_report rep;
} ga_run;

static ga_run run_loraga_prec(lg_model *base, lg_ga_opts *go, int r, batches *bs, lg_precision p) {
    ga_run g;
    lg_config c = tiny_config();
    const lg_model_opts mo = {p};
    assert_int_equal(lg_model_create(&c, NULL, 0, &mo, &g.m), 0);
    copy_weights(g.m, base);
    lg_lora_opts lo = lora_opts(r);
    assert_int_equal(lg_adapters_attach(g.m, &lo, &g.a), 0);
    lg_model_set_trainable(g.m, want_none, NULL);
    if (lg_loraga_init(g.m, g.a, go, next_batch, bs, &g.rep) != 0) fail_msg("lg_loraga_init: %s", lg_last_error());
    return g;
}

static ga_run run_loraga(lg_model *base, lg_ga_opts *go, int r, batches *bs) {
    return run_loraga_prec(base, go, r, bs, LG_PREC_FP32);
}

static void free_run(ga_run *g) {
    lg_adapters_free(g->a);
    lg_model_free(g->m);
}

static lg_model *base_model(void) {
    lg_config c = tiny_config();
    lg_model *m;
    assert_int_equal(lg_model_create(&c, NULL, 11, NULL, &m), 0);
    /* spread the weights so gradients are not tiny */
    lg_rng r;
    lg_rng_seed(&r, 4);
    for (int i = 0; i < lg_model_n_params(m); i++) {
        lg_param *p = lg_model_param(m, i);
        if (p->ndim == 2)
            for (int64_t e = 0; e < p->numel; e++) p->data[e] = 0.15f * lg_rng_normal(&r);
    }
    return m;
}

static void test_step0_loss_and_serial_equals_all(void **state) {
    (void)state;
    lg_model *base = base_model();
    batches bs = make_batches(4, 2, 12, 37, 7);
    double l0 = batch_loss(base, &bs, 1);
    lg_ga_opts go = ga_opts(LG_GA_ALL, 4, 2, 12);
    ga_run all = run_loraga(base, &go, 4, &bs);
    double l1 = batch_loss(all.m, &bs, 1);
    print_message("base loss %.7f, after LoRA-GA init %.7f\n", l0, l1);
    assert_float_equal(l0, l1, 2e-5 * fabs(l0));
    assert_int_equal(all.rep.passes, 1);

    go.mode = LG_GA_SERIAL; /* budget of about two targets -> many groups, same numbers */
    go.mem_budget = (size_t)2 * 48 * 32 * sizeof(float);
    ga_run ser = run_loraga(base, &go, 4, &bs);
    print_message("serial: %d groups, %zu bytes held at most (all: %zu)\n", ser.rep.groups, ser.rep.extra_bytes,
                  all.rep.extra_bytes);
    assert_true(ser.rep.groups > 3);
    assert_true(ser.rep.extra_bytes <= go.mem_budget);
    assert_int_equal(lg_adapters_count(all.a), lg_adapters_count(ser.a));
    for (int i = 0; i < lg_adapters_count(all.a); i++) {
        lg_lora *x = lg_adapters_get(all.a, i), *y = lg_adapters_get(ser.a, i);
        assert_memory_equal(x->A, y->A, (size_t)x->r * x->in * 4);
        assert_memory_equal(x->B, y->B, (size_t)x->out * x->r * 4);
        assert_memory_equal(x->lin->w->data, y->lin->w->data, (size_t)x->out * x->in * 4);
    }
    free_run(&all);
    free_run(&ser);
    free(bs.ids);
    lg_model_free(base);
}

/* The hooks' estimate equals the model's own dW, and the init is its top-2r factorisation. */
static void test_estimate_equals_model_gradient(void **state) {
    (void)state;
    lg_model *base = base_model();
    batches bs = make_batches(3, 2, 10, 37, 8);
    float *G = model_gradient(base, "model.layers.1.mlp.down_proj.weight", &bs, 3);
    lg_ga_opts go = ga_opts(LG_GA_ALL, 3, 2, 10);
    go.scale = LG_GA_UNIT;
    ga_run g = run_loraga(base, &go, 8, &bs); /* 4r >= min(m, n): exact SVD on both sides */
    lg_lora *lo = NULL;
    for (int i = 0; i < lg_adapters_count(g.a); i++)
        if (!strcmp(lg_adapters_get(g.a, i)->lin->name, "model.layers.1.mlp.down_proj")) lo = lg_adapters_get(g.a, i);
    assert_non_null(lo);
    int m = lo->out, n = lo->in, r = lo->r;
    float *U = malloc((size_t)m * 2 * r * 4), *S = malloc((size_t)2 * r * 4), *V = malloc((size_t)n * 2 * r * 4);
    assert_int_equal(lg_ga_svd(lg_ops_cpu(), G, m, n, 2 * r, 4 * r, 4, 0, U, S, V), 0);
    /* B0 = U[:, r:2r] up to the sign of each singular pair: compare |B0^T u_i| = 1 */
    for (int j = 0; j < r; j++) {
        double d = 0, da = 0;
        for (int i = 0; i < m; i++) d += (double)lo->B0[(size_t)i * r + j] * U[(size_t)i * 2 * r + r + j];
        for (int i = 0; i < n; i++) da += (double)lo->A0[(size_t)j * n + i] * V[(size_t)i * 2 * r + j];
        print_message("pair %d: |<B0_j, u_{r+j}>| = %.6f, |<A0_j, v_j>| = %.6f\n", j, fabs(d), fabs(da));
        assert_float_equal(fabs(d), 1.0, 1e-3);
        assert_float_equal(fabs(da), 1.0, 1e-3);
    }
    free(U), free(S), free(V), free(G);
    free_run(&g);
    free(bs.ids);
    lg_model_free(base);
}

/* One plain SGD step of size eta from the init moves the effective weight by
 * -eta·s²·(B0B0^T G + G A0^T A0) + O(eta²). */
static void test_first_sgd_step_matches_projection(void **state) {
    (void)state;
    lg_model *base = base_model();
    batches bs = make_batches(1, 2, 12, 37, 9);
    const char *wn = "model.layers.0.self_attn.o_proj.weight";
    float *G = model_gradient(base, wn, &bs, 1);
    lg_ga_opts go = ga_opts(LG_GA_ALL, 1, 2, 12);
    ga_run g = run_loraga(base, &go, 2, &bs);
    lg_lora *lo = NULL;
    for (int i = 0; i < lg_adapters_count(g.a); i++)
        if (!strcmp(lg_adapters_get(g.a, i)->lin->name, "model.layers.0.self_attn.o_proj")) lo = lg_adapters_get(g.a, i);
    assert_non_null(lo);
    int m = lo->out, n = lo->in, r = lo->r;
    float s = lo->scale;
    /* gradients of the adapters at the init (the same batch) */
    lg_adapters_zero_grads(g.a);
    lg_batch b = {2, 12, calloc(24, sizeof(int)), calloc(24, sizeof(int)), calloc(24, sizeof(float))};
    next_batch(&bs, 2, 0, &b);
    double w;
    lg_model_plan(g.m, 2, 12, 1);
    lg_model_forward(g.m, &b, &w);
    lg_model_backward(g.m, &b, (float)(1.0 / w));
    const float eta = 1e-3f;
    float *A1 = malloc((size_t)r * n * 4), *B1 = malloc((size_t)m * r * 4);
    for (int i = 0; i < r * n; i++) A1[i] = lo->A[i] - eta * lo->dA[i];
    for (int i = 0; i < m * r; i++) B1[i] = lo->B[i] - eta * lo->dB[i];
    double err = 0, ref = 0;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double dW = 0, pg = 0;
            for (int t = 0; t < r; t++) dW += (double)B1[i * r + t] * A1[t * n + j] - (double)lo->B0[i * r + t] * lo->A0[t * n + j];
            dW *= s;
            for (int t = 0; t < r; t++) {
                double btg = 0, gat = 0;
                for (int q = 0; q < m; q++) btg += (double)lo->B0[q * r + t] * G[(size_t)q * n + j];
                for (int q = 0; q < n; q++) gat += (double)G[(size_t)i * n + q] * lo->A0[t * n + q];
                pg += lo->B0[i * r + t] * btg + gat * lo->A0[t * n + j];
            }
            double want = -eta * s * s * pg;
            err += (dW - want) * (dW - want);
            ref += want * want;
        }
    print_message("||dW - (-eta s^2 P(G))|| / ||eta s^2 P(G)|| = %.3e (eta %.0e)\n", sqrt(err / ref), eta);
    assert_true(ref > 0);
    assert_true(sqrt(err / ref) < 1e-2);
    free(A1), free(B1), free(G);
    free(b.inputs), free(b.targets), free(b.weight);
    free_run(&g);
    free(bs.ids);
    lg_model_free(base);
}

/* LoRA-GA with bf16 mixed precision, against the float32 reference: the gradient that the bf16
 * model estimates is the float32 one to within bf16 rounding (relative Frobenius error < 3e-2: the
 * activations and gradients reaching each GEMM carry 8 significant bits), the init still leaves the
 * step-0 loss unchanged to bf16 accuracy (< 2e-3 relative, where fp32 holds 2e-5), and its first
 * SGD step is still the projection -eta s^2 (B0 B0^T G + G A0^T A0) of the float32 G (< 5e-2,
 * where fp32 holds 1e-2). */
static void test_bf16_estimate_against_fp32(void **state) {
    (void)state;
    lg_model *base = base_model();
    lg_config c = tiny_config();
    lg_model *m16;
    const lg_model_opts bf = {LG_PREC_BF16};
    assert_int_equal(lg_model_create(&c, NULL, 0, &bf, &m16), 0);
    copy_weights(m16, base);
    batches bs = make_batches(3, 2, 12, 37, 7);
    const char *wn = "model.layers.0.self_attn.o_proj.weight";
    float *G32 = model_gradient(base, wn, &bs, 3), *G16 = model_gradient(m16, wn, &bs, 3);
    const lg_param *p = lg_model_find_param(base, wn);
    double d2 = 0;
    for (int64_t e = 0; e < p->numel; e++) d2 += (double)(G16[e] - G32[e]) * (G16[e] - G32[e]);
    const double rel = sqrt(d2 / frob2(G32, (size_t)p->numel));
    print_message("bf16 gradient vs fp32: relative error %.3e\n", rel);
    assert_true(rel > 0 && rel < 3e-2); /* > 0: the bf16 path really rounds */

    /* the LoRA-GA init on the bf16 model: step-0 loss, then the first step against the fp32 G */
    lg_ga_opts go = ga_opts(LG_GA_ALL, 3, 2, 12);
    ga_run g = run_loraga_prec(base, &go, 2, &bs, LG_PREC_BF16);
    const double l0 = batch_loss(m16, &bs, 1), l1 = batch_loss(g.m, &bs, 1);
    print_message("bf16: base loss %.6f, after LoRA-GA init %.6f\n", l0, l1);
    assert_true(fabs(l1 - l0) <= 2e-3 * fabs(l0));
    lg_lora *lo = NULL;
    for (int i = 0; i < lg_adapters_count(g.a); i++)
        if (!strcmp(lg_adapters_get(g.a, i)->lin->name, "model.layers.0.self_attn.o_proj")) lo = lg_adapters_get(g.a, i);
    assert_non_null(lo);
    const int m = lo->out, n = lo->in, r = lo->r;
    const float s = lo->scale, eta = 1e-3f;
    lg_adapters_zero_grads(g.a);
    lg_model_plan(g.m, 2, 12, 1);
    for (int i = 0; i < 3; i++) { /* the same mean gradient as G: all three batches */
        lg_batch b = {2, 12, calloc(24, sizeof(int)), calloc(24, sizeof(int)), calloc(24, sizeof(float))};
        next_batch(&bs, 2, i, &b);
        double w;
        lg_model_forward(g.m, &b, &w);
        lg_model_backward(g.m, &b, (float)(1.0 / (w * 3)));
        free(b.inputs), free(b.targets), free(b.weight);
    }
    double err = 0, ref = 0;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double dW = 0, pg = 0;
            for (int t = 0; t < r; t++) {
                const double a1 = lo->A[t * n + j] - eta * lo->dA[t * n + j], b1 = lo->B[i * r + t] - eta * lo->dB[i * r + t];
                dW += b1 * a1 - (double)lo->B0[i * r + t] * lo->A0[t * n + j];
                double btg = 0, gat = 0;
                for (int q = 0; q < m; q++) btg += (double)lo->B0[q * r + t] * G32[(size_t)q * n + j];
                for (int q = 0; q < n; q++) gat += (double)G32[(size_t)i * n + q] * lo->A0[t * n + q];
                pg += lo->B0[i * r + t] * btg + gat * lo->A0[t * n + j];
            }
            const double want = -eta * s * s * pg;
            err += (s * dW - want) * (s * dW - want);
            ref += want * want;
        }
    print_message("bf16 first step vs the fp32 projection: relative error %.3e\n", sqrt(err / ref));
    assert_true(ref > 0 && sqrt(err / ref) < 5e-2);
    free(G32), free(G16);
    free_run(&g);
    free(bs.ids);
    lg_model_free(m16);
    lg_model_free(base);
}

/* sketch reaches the same first-step objective ||B0B0^T G + G A0^T A0||_F (unit scale) within
 * 5 % of the exact factorisation, holding O((m+n)k) per target. */
static void test_sketch_first_step_objective(void **state) {
    (void)state;
    lg_model *base = base_model();
    batches bs = make_batches(4, 2, 12, 37, 10);
    const char *wn = "model.layers.1.mlp.up_proj.weight";
    float *G = model_gradient(base, wn, &bs, 4);
    double obj[2];
    size_t bytes[2];
    for (int k = 0; k < 2; k++) {
        lg_ga_opts go = ga_opts(k ? LG_GA_SKETCH : LG_GA_ALL, 4, 2, 12);
        go.scale = LG_GA_UNIT;
        ga_run g = run_loraga(base, &go, 2, &bs);
        bytes[k] = g.rep.extra_bytes;
        lg_lora *lo = NULL;
        for (int i = 0; i < lg_adapters_count(g.a); i++)
            if (!strcmp(lg_adapters_get(g.a, i)->lin->name, "model.layers.1.mlp.up_proj")) lo = lg_adapters_get(g.a, i);
        int m = lo->out, n = lo->in, r = lo->r;
        float *P = calloc((size_t)m * n, sizeof(float));
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
                for (int t = 0; t < r; t++) {
                    double btg = 0, gat = 0;
                    for (int q = 0; q < m; q++) btg += (double)lo->B0[q * r + t] * G[(size_t)q * n + j];
                    for (int q = 0; q < n; q++) gat += (double)G[(size_t)i * n + q] * lo->A0[t * n + q];
                    P[(size_t)i * n + j] += (float)(lo->B0[i * r + t] * btg + gat * lo->A0[t * n + j]);
                }
        obj[k] = sqrt(frob2(P, (size_t)m * n));
        free(P);
        free_run(&g);
    }
    print_message("first-step objective: exact %.6g, sketch %.6g (ratio %.4f); bytes all %zu, sketch %zu\n", obj[0],
                  obj[1], obj[1] / obj[0], bytes[0], bytes[1]);
    assert_true(obj[1] >= 0.95 * obj[0]);
    assert_true(obj[1] <= obj[0] * (1 + 1e-4)); /* cannot beat the optimum */
    free(G);
    free(bs.ids);
    lg_model_free(base);
}

static void test_cache_reuse_and_mismatch(void **state) {
    (void)state;
    lg_model *base = base_model();
    batches bs = make_batches(3, 2, 10, 37, 12);
    char *dir = lg_test_tmpdir();
    char *cache = lg_path_join(dir, "ga.safetensors");
    lg_ga_opts go = ga_opts(LG_GA_ALL, 3, 2, 10);
    go.cache_path = cache;
    ga_run g1 = run_loraga(base, &go, 2, &bs); /* writes the cache */
    assert_int_equal(g1.rep.from_cache, 0);
    assert_true(lg_file_exists(cache));
    /* another rank and scale: estimation skipped, same result as a fresh run */
    go.scale = LG_GA_UNIT;
    ga_run g2 = run_loraga(base, &go, 3, &bs);
    assert_int_equal(g2.rep.from_cache, 1);
    go.cache_path = NULL;
    ga_run g3 = run_loraga(base, &go, 3, &bs);
    for (int i = 0; i < lg_adapters_count(g2.a); i++) {
        lg_lora *x = lg_adapters_get(g2.a, i), *y = lg_adapters_get(g3.a, i);
        assert_memory_equal(x->A, y->A, (size_t)x->r * x->in * 4);
        assert_memory_equal(x->lin->w->data, y->lin->w->data, (size_t)x->out * x->in * 4);
    }
    /* different data: refused */
    batches other = make_batches(3, 2, 10, 37, 99);
    go.cache_path = cache;
    lg_config c = tiny_config();
    lg_model *m4;
    assert_int_equal(lg_model_create(&c, NULL, 0, NULL, &m4), 0);
    copy_weights(m4, base);
    lg_lora_opts lo = lora_opts(2);
    lg_adapters *a4;
    assert_int_equal(lg_adapters_attach(m4, &lo, &a4), 0);
    lg_ga_report rep;
    assert_int_equal(lg_loraga_init(m4, a4, &go, next_batch, &other, &rep), -1);
    print_message("mismatch: %s\n", lg_last_error());
    assert_non_null(strstr(lg_last_error(), "does not match"));
    lg_adapters_free(a4);
    lg_model_free(m4);
    free(other.ids);
    free_run(&g1), free_run(&g2), free_run(&g3);
    unlink(cache);
    rmdir(dir);
    free(cache), free(dir);
    free(bs.ids);
    lg_model_free(base);
}

/* With plain SGD, LoRA-GA's first step lowers the loss more than LoRA's (same lr, same rank):
 * it follows the top singular directions of the full gradient. */
static void test_first_step_beats_lora(void **state) {
    (void)state;
    lg_model *base = base_model();
    batches bs = make_batches(2, 2, 12, 37, 13);
    double l0 = batch_loss(base, &bs, 0);
    double drop[2];
    for (int k = 0; k < 2; k++) {
        lg_config c = tiny_config();
        lg_model *m;
        assert_int_equal(lg_model_create(&c, NULL, 0, NULL, &m), 0);
        copy_weights(m, base);
        lg_lora_opts lo = lora_opts(2);
        lo.init = k ? LG_INIT_NONE : LG_INIT_KAIMING;
        lg_adapters *a;
        assert_int_equal(lg_adapters_attach(m, &lo, &a), 0);
        lg_model_set_trainable(m, want_none, NULL);
        if (k) {
            lg_ga_opts go = ga_opts(LG_GA_ALL, 2, 2, 12);
            lg_ga_report rep;
            assert_int_equal(lg_loraga_init(m, a, &go, next_batch, &bs, &rep), 0);
        }
        lg_adapters_zero_grads(a);
        lg_batch b = {2, 12, calloc(24, sizeof(int)), calloc(24, sizeof(int)), calloc(24, sizeof(float))};
        next_batch(&bs, 2, 0, &b);
        double w;
        lg_model_plan(m, 2, 12, 1);
        lg_model_forward(m, &b, &w);
        lg_model_backward(m, &b, (float)(1.0 / w));
        for (int i = 0; i < lg_adapters_count(a); i++) { /* one small SGD step: the first-order regime */
            lg_lora *x = lg_adapters_get(a, i);
            for (int e = 0; e < x->r * x->in; e++) x->A[e] -= 1e-3f * x->dA[e];
            for (int e = 0; e < x->out * x->r; e++) x->B[e] -= 1e-3f * x->dB[e];
        }
        drop[k] = l0 - batch_loss(m, &bs, 0);
        free(b.inputs), free(b.targets), free(b.weight);
        lg_adapters_free(a);
        lg_model_free(m);
    }
    print_message("loss drop after one SGD step: LoRA %.3e, LoRA-GA %.3e\n", drop[0], drop[1]);
    assert_true(drop[1] > 2 * drop[0]);
    free(bs.ids);
    lg_model_free(base);
}


/* With an exact factorisation the diagnostics obey Eckart–Young: align_err = sqrt(1 - captured). */
static void test_diagnostics_exact_relation(void **state) {
    (void)state;
    lg_model *base = base_model();
    batches bs = make_batches(3, 2, 10, 37, 21);
    char *dir = lg_test_tmpdir();
    char *diag = lg_path_join(dir, "diag.jsonl");
    lg_ga_opts go = ga_opts(LG_GA_ALL, 3, 2, 10);
    go.diag_path = diag;
    ga_run g = run_loraga(base, &go, 8, &bs); /* 4r >= min(m, n): exact SVD */
    char *text;
    assert_int_equal(lg_read_file(diag, &text, NULL), 0);
    int lines = 0;
    char *save = NULL;
    for (char *ln = strtok_r(text, "\n", &save); ln; ln = strtok_r(NULL, "\n", &save)) {
        cJSON *j = cJSON_Parse(ln);
        assert_non_null(j);
        double cap = cJSON_GetObjectItem(j, "captured")->valuedouble, al = cJSON_GetObjectItem(j, "align_err")->valuedouble;
        assert_true(cap > 0 && cap <= 1);
        assert_float_equal(al, sqrt(fmax(0, 1 - cap)), 2e-3);
        cJSON_Delete(j);
        lines++;
    }
    assert_int_equal(lines, lg_adapters_count(g.a));
    print_message("%d targets: captured mean %.3f min %.3f, align err mean %.3f max %.3f\n", lines,
                  g.rep.captured_mean, g.rep.captured_min, g.rep.align_err_mean, g.rep.align_err_max);
    free(text);
    free_run(&g);
    unlink(diag);
    rmdir(dir);
    free(diag), free(dir), free(bs.ids);
    lg_model_free(base);
}

/* Train a few AdamW steps after the init, export (rank 2r, relative to the original W), load the
 * export onto the untouched base: same loss as the trained model. Also with DoRA. */
static void export_roundtrip(int dora) {
    lg_model *base = base_model();
    batches bs = make_batches(3, 2, 12, 37, 22);
    lg_config c = tiny_config();
    lg_model *m;
    assert_int_equal(lg_model_create(&c, NULL, 0, NULL, &m), 0);
    copy_weights(m, base);
    lg_lora_opts lo = lora_opts(2);
    lo.use_rslora = 1;
    lo.use_dora = dora;
    lg_adapters *a;
    assert_int_equal(lg_adapters_attach(m, &lo, &a), 0);
    lg_model_set_trainable(m, want_none, NULL);
    lg_ga_opts go = ga_opts(LG_GA_ALL, 3, 2, 12);
    lg_ga_report rep;
    double l_base = batch_loss(base, &bs, 2);
    assert_int_equal(lg_loraga_init(m, a, &go, next_batch, &bs, &rep), 0);
    double l_init = batch_loss(m, &bs, 2);
    assert_float_equal(l_init, l_base, 2e-5 * fabs(l_base)); /* step 0 = base, DoRA included */
    lg_opt_tensor *ot;
    int nt;
    assert_int_equal(lg_adapters_opt_tensors(a, 1.0f, &ot, &nt), 0);
    lg_train_opts to;
    lg_train_opts_default(&to);
    to.steps = 4;
    to.batch_size = 2;
    to.seq_len = 12;
    to.lr = 1e-2f;
    lg_train_result res;
    assert_int_equal(lg_train(m, ot, nt, &to, next_batch, &bs, &res), 0);
    double l_trained = batch_loss(m, &bs, 2);
    assert_true(fabs(l_trained - l_base) > 1e-3); /* training moved the model */
    char *dir = lg_test_tmpdir();
    assert_int_equal(lg_adapters_save_peft(a, dir, "tiny"), 0);
    lg_model *orig;
    assert_int_equal(lg_model_create(&c, NULL, 0, NULL, &orig), 0);
    copy_weights(orig, base);
    lg_adapters *loaded;
    if (lg_adapters_load_peft(orig, dir, &loaded) != 0) fail_msg("load: %s", lg_last_error());
    assert_int_equal(lg_adapters_get(loaded, 0)->r, 4); /* rank 2r */
    double l_export = batch_loss(orig, &bs, 2);
    print_message("%s: base %.6f, trained %.6f, export on the original base %.6f\n", dora ? "LoRA-GA+DoRA" : "LoRA-GA",
                  l_base, l_trained, l_export);
    /* DoRA too: W_orig + s'B'A' equals W_res + sBA, so the row norms and magnitudes agree */
    assert_float_equal(l_export, l_trained, 1e-5 * fabs(l_trained));
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
    free(dir);
    free(ot);
    lg_adapters_free(loaded);
    lg_model_free(orig);
    lg_adapters_free(a);
    lg_model_free(m);
    free(bs.ids);
    lg_model_free(base);
}

static void test_export_relative_to_original(void **state) {
    (void)state;
    export_roundtrip(0);
}

static void test_export_with_dora(void **state) {
    (void)state;
    export_roundtrip(1);
}

/* The first-step error is O(eta^2): halving eta halves the relative error. */
static void test_first_step_error_is_second_order(void **state) {
    (void)state;
    lg_model *base = base_model();
    batches bs = make_batches(1, 2, 12, 37, 23);
    float *G = model_gradient(base, "model.layers.1.self_attn.v_proj.weight", &bs, 1);
    lg_ga_opts go = ga_opts(LG_GA_ALL, 1, 2, 12);
    ga_run g = run_loraga(base, &go, 2, &bs);
    lg_lora *lo = NULL;
    for (int i = 0; i < lg_adapters_count(g.a); i++)
        if (!strcmp(lg_adapters_get(g.a, i)->lin->name, "model.layers.1.self_attn.v_proj")) lo = lg_adapters_get(g.a, i);
    lg_adapters_zero_grads(g.a);
    lg_batch b = {2, 12, calloc(24, sizeof(int)), calloc(24, sizeof(int)), calloc(24, sizeof(float))};
    next_batch(&bs, 2, 0, &b);
    double w;
    lg_model_plan(g.m, 2, 12, 1);
    lg_model_forward(g.m, &b, &w);
    lg_model_backward(g.m, &b, (float)(1.0 / w));
    int m = lo->out, n = lo->in, r = lo->r;
    double s = lo->scale, rel[2];
    for (int k = 0; k < 2; k++) {
        double eta = k ? 1e-2 : 2e-2, err = 0, ref = 0;
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) {
                double dW = 0, pg = 0;
                for (int t = 0; t < r; t++) {
                    double b1 = lo->B[i * r + t] - eta * lo->dB[i * r + t], a1 = lo->A[t * n + j] - eta * lo->dA[t * n + j];
                    dW += b1 * a1 - (double)lo->B0[i * r + t] * lo->A0[t * n + j];
                    double btg = 0, gat = 0;
                    for (int q = 0; q < m; q++) btg += (double)lo->B0[q * r + t] * G[(size_t)q * n + j];
                    for (int q = 0; q < n; q++) gat += (double)G[(size_t)i * n + q] * lo->A0[t * n + q];
                    pg += lo->B0[i * r + t] * btg + gat * lo->A0[t * n + j];
                }
                double want = -eta * s * s * pg;
                err += (s * dW - want) * (s * dW - want);
                ref += want * want;
            }
        rel[k] = sqrt(err / ref);
    }
    print_message("relative first-step error: eta 2e-2 -> %.3e, eta 1e-2 -> %.3e (ratio %.2f, expect 2)\n", rel[0],
                  rel[1], rel[0] / rel[1]);
    assert_true(rel[0] / rel[1] > 1.8 && rel[0] / rel[1] < 2.2);
    free(b.inputs), free(b.targets), free(b.weight), free(G);
    free_run(&g);
    free(bs.ids);
    lg_model_free(base);
}

/* ---- the real stories260K ------------------------------------------------------------------- */

typedef struct {
    lg_dataset *d;
    int B;
} real_src;

static int real_next(void *ud, int split, long index, lg_batch *b) {
    real_src *r = ud;
    return lg_dataset_fill_batch(r->d, split, index * r->B, b) < 0 ? -1 : 0;
}

/* True first-step alignment error of an adapter's A0/B0 against G. */
static double true_align(const lg_lora *lo, const float *G) {
    int m = lo->out, n = lo->in, r = lo->r;
    double e2 = 0, g2 = 0;
    double *ub = malloc((size_t)m * r * sizeof(double)), *va = malloc((size_t)r * n * sizeof(double));
    for (int j = 0; j < r; j++) {
        double nb = 0, na = 0;
        for (int i = 0; i < m; i++) nb += (double)lo->B0[i * r + j] * lo->B0[i * r + j];
        for (int i = 0; i < n; i++) na += (double)lo->A0[j * n + i] * lo->A0[j * n + i];
        for (int i = 0; i < m; i++) ub[i * r + j] = lo->B0[i * r + j] / sqrt(nb);
        for (int i = 0; i < n; i++) va[j * n + i] = lo->A0[j * n + i] / sqrt(na);
    }
    double *btg = calloc((size_t)r * n, sizeof(double)), *gat = calloc((size_t)m * r, sizeof(double));
    for (int t = 0; t < r; t++)
        for (int q = 0; q < m; q++)
            for (int j = 0; j < n; j++) btg[t * n + j] += ub[q * r + t] * G[(size_t)q * n + j];
    for (int i = 0; i < m; i++)
        for (int t = 0; t < r; t++)
            for (int q = 0; q < n; q++) gat[i * r + t] += G[(size_t)i * n + q] * va[t * n + q];
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double v = G[(size_t)i * n + j];
            g2 += v * v;
            for (int t = 0; t < r; t++) v -= ub[i * r + t] * btg[t * n + j] + gat[i * r + t] * va[t * n + j];
            e2 += v * v;
        }
    free(ub), free(va), free(btg), free(gat);
    return sqrt(e2 / g2);
}

static void test_real_stories260k_three_modes(void **state) {
    (void)state;
    LG_REQUIRE_SHARED(mpath, "llama2c_stories260K/stories260K.bin");
    LG_REQUIRE_SHARED(tpath, "llama2c_stories260K/tok512.bin");
    LG_REQUIRE_SHARED(dpath, "tinystories_subset/validation_100.txt");
    lg_tokenizer *tok;
    assert_int_equal(lg_tokenizer_load(tpath, &tok), 0);
    lg_data_opts dop = {0};
    dop.max_len = 64;
    dop.add_bos = 1;
    lg_dataset *d;
    assert_int_equal(lg_dataset_load(dpath, tok, &dop, &d), 0);
    real_src src = {d, 2};
    const int N = 8, r = 4;
    /* reference G of every target through the model's own dW path */
    lg_model *ref;
    assert_int_equal(lg_model_load(mpath, NULL, &ref), 0);
    lg_model_set_trainable(ref, NULL, NULL);
    lg_model_zero_grads(ref);
    lg_model_plan(ref, 2, 64, 1);
    lg_batch b = {2, 64, calloc(128, sizeof(int)), calloc(128, sizeof(int)), calloc(128, sizeof(float))};
    for (int i = 0; i < N; i++) {
        real_next(&src, LG_SPLIT_TRAIN_FILE, i, &b);
        double w;
        lg_model_forward(ref, &b, &w);
        lg_model_backward(ref, &b, (float)(1.0 / (w * N)));
    }
    lg_model *mm[3];
    lg_adapters *aa[3];
    lg_ga_report rep[3];
    lg_ga_mode modes[3] = {LG_GA_ALL, LG_GA_SERIAL, LG_GA_SKETCH};
    for (int k = 0; k < 3; k++) {
        assert_int_equal(lg_model_load(mpath, NULL, &mm[k]), 0);
        lg_lora_opts lo = lora_opts(r);
        lo.use_rslora = 1;
        assert_int_equal(lg_adapters_attach(mm[k], &lo, &aa[k]), 0);
        lg_model_set_trainable(mm[k], want_none, NULL);
        lg_ga_opts go = ga_opts(modes[k], N, 2, 64);
        go.mem_budget = 3 * 64 * 172 * 4;
        if (lg_loraga_init(mm[k], aa[k], &go, real_next, &src, &rep[k]) != 0) fail_msg("%s", lg_last_error());
    }
    double al[3] = {0, 0, 0};
    int nt = lg_adapters_count(aa[0]);
    for (int i = 0; i < nt; i++) {
        lg_lora *x = lg_adapters_get(aa[0], i), *y = lg_adapters_get(aa[1], i);
        assert_memory_equal(x->A0, y->A0, (size_t)r * x->in * 4); /* serial == all */
        assert_memory_equal(x->B0, y->B0, (size_t)x->out * r * 4);
        char wname[160];
        snprintf(wname, sizeof wname, "%s.weight", x->lin->name);
        const float *G = lg_model_find_param(ref, wname)->grad;
        for (int k = 0; k < 3; k++) al[k] += true_align(lg_adapters_get(aa[k], i), G) / nt;
    }
    print_message("stories260K, %d targets, r %d: mean first-step alignment error all %.4f, serial %.4f, sketch "
                  "(k = 8r) %.4f; passes %d/%d/%d; bytes held %zu/%zu/%zu\n",
                  nt, r, al[0], al[1], al[2], rep[0].passes, rep[1].passes, rep[2].passes, rep[0].extra_bytes,
                  rep[1].extra_bytes, rep[2].extra_bytes);
    assert_float_equal(al[0], rep[0].align_err_mean, 1e-3); /* the diagnostics report the truth */
    assert_true(rep[1].passes > 1);
    assert_true(al[2] <= al[0] * 1.05); /* sketch within 5 % of the exact modes */
    for (int k = 0; k < 3; k++) {
        lg_adapters_free(aa[k]);
        lg_model_free(mm[k]);
    }
    free(b.inputs), free(b.targets), free(b.weight);
    lg_model_free(ref);
    lg_dataset_free(d);
    lg_tokenizer_free(tok);
    free(mpath), free(tpath), free(dpath);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_svd_randomised_matches_spectrum),
        cmocka_unit_test(test_eckart_young_unit_scale),
        cmocka_unit_test(test_scales_and_peft_variant),
        cmocka_unit_test(test_step0_loss_and_serial_equals_all),
        cmocka_unit_test(test_estimate_equals_model_gradient),
        cmocka_unit_test(test_first_sgd_step_matches_projection),
        cmocka_unit_test(test_bf16_estimate_against_fp32),
        cmocka_unit_test(test_sketch_first_step_objective),
        cmocka_unit_test(test_cache_reuse_and_mismatch),
        cmocka_unit_test(test_first_step_beats_lora),
        cmocka_unit_test(test_diagnostics_exact_relation),
        cmocka_unit_test(test_export_relative_to_original),
        cmocka_unit_test(test_export_with_dora),
        cmocka_unit_test(test_first_step_error_is_second_order),
        cmocka_unit_test(test_real_stories260k_three_modes),
    };
    return cmocka_run_group_tests_name("loraga", tests, NULL, NULL);
}
