/* test_lora.c — the LoRA family: gradients against finite differences (layer level against a
 * double-precision reference, and through the whole decoder), the base model's loss at step 0
 * for every method, frozen base weights, LoRA+ learning rates, dropout, AdaLoRA's budget and
 * orthogonality regulariser, and the PEFT export (keys, shapes, config, PiSSA/AdaLoRA conversion). */
#include "testutil.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/lora.h"
#include "adapters/lora_io.h"
#include "core/util.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "model/model_internal.h" /* logit_block_floats, the backend: force several row blocks */
#include "ops/ops_cpu.h"
#include "train/train.h"

/* ------------------------------------------------------------------------------------------ */
/* fixtures                                                                                   */

static void spread_weights(lg_model *m, uint64_t seed) {
    lg_rng r;
    lg_rng_seed(&r, seed);
    for (int i = 0; i < lg_model_n_params(m); i++) {
        lg_param *p = lg_model_param(m, i);
        for (int64_t e = 0; e < p->numel; e++)
            p->data[e] = p->ndim == 1 ? 1.0f + 0.2f * lg_rng_normal(&r) : 0.3f * lg_rng_normal(&r);
    }
}

static int want_none(const lg_param *p, void *ud) {
    (void)p, (void)ud;
    return 0;
}
static int want_wte(const lg_param *p, void *ud) {
    (void)ud;
    return strstr(p->name, "wte") || strstr(p->name, "embed_tokens");
}

/* A frozen model with spread weights, planned for training on 2 x 6. */
static lg_model *frozen_model_cfg(lg_config c, uint64_t seed) {
    lg_model *m;
    assert_int_equal(lg_model_create(&c, NULL, seed, NULL, &m), 0);
    spread_weights(m, seed + 100);
    assert_int_equal(lg_model_set_trainable(m, want_none, NULL), 0);
    assert_int_equal(lg_model_plan(m, 2, 6, 1), 0);
    return m;
}

static lg_model *frozen_model(lg_arch arch, uint64_t seed) { return frozen_model_cfg(lg_test_tiny_config(arch, 23, 2), seed); }

static lg_lora_opts opts_for(const char *targets, int r) {
    lg_lora_opts o;
    lg_lora_opts_default(&o);
    o.targets = targets;
    o.r = r;
    o.alpha = 8.0f;
    return o;
}

static void fill(float *p, int64_t n, float sd, lg_rng *r) {
    for (int64_t i = 0; i < n; i++) p[i] = sd * lg_rng_normal(r);
}

/* Give every adapter non-trivial parameters (B != 0, E != 0) so that every path carries gradient. */
static void randomise_sd(lg_adapters *ad, uint64_t seed, float sd) {
    lg_rng r;
    lg_rng_seed(&r, seed);
    for (int i = 0; i < lg_adapters_count(ad); i++) {
        lg_lora *l = lg_adapters_get(ad, i);
        fill(l->A, (int64_t)l->r * l->in, sd, &r);
        fill(l->B, (int64_t)l->out * l->r, sd, &r);
        if (l->mag)
            for (int o = 0; o < l->out; o++) l->mag[o] *= 1.0f + 0.3f * lg_rng_normal(&r);
        if (l->E) fill(l->E, l->r, 1.0f, &r);
    }
}
static void randomise(lg_adapters *ad, uint64_t seed) { randomise_sd(ad, seed, 0.4f); }

static double loss_of(lg_model *m, const lg_batch *b) {
    double w;
    return lg_model_forward(m, b, &w);
}

/* ------------------------------------------------------------------------------------------ */
/* layer level: analytic gradients vs a double-precision reference                            */

/* y = b + msc (x) (x W^T + s (x A^T diag(E)) B^T), msc = mag / wn0 (DoRA, norm frozen) or 1.
 * Returns L = sum(c (x) y). Every argument may be perturbed by the caller. */
typedef struct {
    int N, in, out, r;
    float s;
    const float *W, *b, *wn0;
    double *x, *A, *B, *mag, *E; /* mag, E may be NULL */
    const double *c;
} ref_layer;

static double ref_loss(const ref_layer *q, double *y_out) {
    double L = 0;
    for (int t = 0; t < q->N; t++) {
        double h[64];
        for (int k = 0; k < q->r; k++) {
            double acc = 0;
            for (int j = 0; j < q->in; j++) acc += q->x[t * q->in + j] * q->A[k * q->in + j];
            h[k] = acc * (q->E ? q->E[k] : 1.0);
        }
        for (int o = 0; o < q->out; o++) {
            double base = 0, lo = 0;
            for (int j = 0; j < q->in; j++) base += q->x[t * q->in + j] * q->W[o * q->in + j];
            for (int k = 0; k < q->r; k++) lo += h[k] * q->B[o * q->r + k];
            double msc = q->mag ? q->mag[o] / q->wn0[o] : 1.0;
            double y = (q->b ? q->b[o] : 0.0) + msc * (base + q->s * lo);
            if (y_out) y_out[t * q->out + o] = y;
            L += q->c[t * q->out + o] * y;
        }
    }
    return L;
}

/* Central difference of ref_loss in one double entry (L is linear in each argument, so exact). */
static double ref_fd(ref_layer *q, double *p, double h) {
    double save = *p;
    *p = save + h;
    double lp = ref_loss(q, NULL);
    *p = save - h;
    double lm = ref_loss(q, NULL);
    *p = save;
    return (lp - lm) / (2 * h);
}

static double *to_double(const float *f, int64_t n) {
    double *d = malloc((size_t)n * sizeof(double));
    for (int64_t i = 0; i < n; i++) d[i] = f[i];
    return d;
}

static double rel_err(double a, double n) { return fabs(a - n) / (fabs(a) + fabs(n) + 1e-4); }

/* One adapted linear layer of a tiny model, driven directly through its hook. Checks the forward
 * against the reference and dA, dB, dmag, dE and dx against central differences. */
static double layer_check_cfg(lg_lora_opts o, lg_config cfg, int layer_index) {
    lg_model *m = frozen_model_cfg(cfg, 5);
    lg_adapters *ad;
    assert_int_equal(lg_adapters_attach(m, &o, &ad), 0);
    randomise(ad, 77);
    lg_lora *a = lg_adapters_get(ad, layer_index);
    assert_non_null(a);
    const lg_linear *lin = a->lin;
    const int N = 7, in = a->in, out = a->out, r = a->r;
    lg_rng rng;
    lg_rng_seed(&rng, 9);
    float *x = malloc((size_t)N * in * sizeof(float)), *y = malloc((size_t)N * out * sizeof(float));
    float *c = malloc((size_t)N * out * sizeof(float)), *dx = calloc((size_t)N * in, sizeof(float));
    fill(x, (int64_t)N * in, 1.0f, &rng);
    fill(c, (int64_t)N * out, 1.0f, &rng);
    const float *W = lin->w->data, *bias = lin->b ? lin->b->data : NULL;
    for (int t = 0; t < N; t++)
        for (int i = 0; i < out; i++) {
            double acc = bias ? bias[i] : 0.0;
            for (int j = 0; j < in; j++) acc += (double)x[t * in + j] * W[i * in + j];
            y[t * out + i] = (float)acc;
        }
    lg_adapters_zero_grads(ad);
    a->hdr.vt->forward(&a->hdr, lin, y, x, N, 1);
    const float *dyb = a->hdr.vt->backward(&a->hdr, lin, dx, c, x, N);
    /* the base path's dx, as linear_bwd adds it after the hook */
    for (int t = 0; t < N; t++)
        for (int j = 0; j < in; j++) {
            double acc = 0;
            for (int i = 0; i < out; i++) acc += (double)dyb[t * out + i] * W[i * in + j];
            dx[t * in + j] += (float)acc;
        }

    ref_layer q = {.N = N, .in = in, .out = out, .r = r, .s = a->scale, .W = W, .b = bias, .wn0 = a->wnorm};
    q.x = to_double(x, (int64_t)N * in);
    q.A = to_double(a->A, (int64_t)r * in);
    q.B = to_double(a->B, (int64_t)out * r);
    q.mag = a->mag ? to_double(a->mag, out) : NULL;
    q.E = a->E ? to_double(a->E, r) : NULL;
    double *cd = to_double(c, (int64_t)N * out), *yref = malloc((size_t)N * out * sizeof(double));
    q.c = cd;
    ref_loss(&q, yref);
    double worst = 0;
    for (int i = 0; i < N * out; i++) {
        double e = fabs(y[i] - yref[i]) / (fabs(yref[i]) + 1e-2);
        if (e > 1e-4) print_message("  forward y[%d]: %.7g vs reference %.7g\n", i, y[i], yref[i]);
        worst = fmax(worst, e);
    }
#define CHECK(arr, grad, count)                                                                    \
    for (int e = 0; e < (count); e++) {                                                            \
        double num = ref_fd(&q, &q.arr[e], 1e-3), ana = (grad)[e];                                 \
        double err = rel_err(ana, num);                                                            \
        if (err > 1e-3) print_message("  %s d" #arr "[%d]: analytic %.7g numeric %.7g\n", a->hdr.vt->kind, e, ana, num); \
        worst = fmax(worst, err);                                                                  \
    }
    CHECK(A, a->dA, r * in);
    CHECK(B, a->dB, out * r);
    CHECK(x, dx, N * in);
    if (a->mag) CHECK(mag, a->dmag, out);
    if (a->E) CHECK(E, a->dE, r);
#undef CHECK
    free(q.x), free(q.A), free(q.B), free(q.mag), free(q.E), free(cd), free(yref);
    free(x), free(y), free(c), free(dx);
    lg_adapters_free(ad);
    lg_model_free(m);
    return worst;
}

static double layer_check(lg_lora_opts o, lg_arch arch, int layer_index) {
    return layer_check_cfg(o, lg_test_tiny_config(arch, 23, 2), layer_index);
}

static void test_layer_grad_lora(void **state) {
    (void)state;
    lg_lora_opts o = opts_for("all-linear", 3);
    double w = layer_check(o, LG_ARCH_LLAMA, 1);
    o.use_rslora = 1;
    w = fmax(w, layer_check(o, LG_ARCH_GPT2, 0)); /* c_attn: biased, 48 x 16 */
    print_message("LoRA/rsLoRA layer: worst relative error %.2e (tolerance 1e-3)\n", w);
    assert_true(w < 1e-3);
}

static void test_layer_grad_dora(void **state) {
    (void)state;
    lg_lora_opts o = opts_for("all-linear", 3);
    o.use_dora = 1;
    double w = layer_check(o, LG_ARCH_LLAMA, 5); /* up_proj 24 x 16 */
    w = fmax(w, layer_check(o, LG_ARCH_GPT2, 0));
    lg_config wide = lg_test_tiny_config(LG_ARCH_LLAMA, 23, 2);
    wide.hidden_dim = 150; /* more output rows than one column block of dmag */
    w = fmax(w, layer_check_cfg(o, wide, 5));
    print_message("DoRA layer (norm detached): worst relative error %.2e\n", w);
    assert_true(w < 1e-3);
}

static void test_layer_grad_adalora(void **state) {
    (void)state;
    lg_lora_opts o = opts_for("all-linear", 4);
    o.adalora = 1;
    o.init = LG_INIT_ADALORA;
    o.total_steps = 10;
    o.target_r = 2;
    double w = layer_check(o, LG_ARCH_LLAMA, 6);
    w = fmax(w, layer_check(o, LG_ARCH_GPT2, 3));
    print_message("AdaLoRA layer (A, E, B, x): worst relative error %.2e\n", w);
    assert_true(w < 1e-3);
}

/* ------------------------------------------------------------------------------------------ */
/* through the whole decoder                                                                  */

/* Central differences (float32, h = 1e-2) on a sample of every adapter tensor (and of the
 * embedding when it is trainable: its gradient reaches it only through every adapter's dx). */
static double model_check(lg_model *m, lg_adapters *ad, int check_ab, int *checked) {
    lg_batch b;
    lg_test_random_batch(&b, 2, 6, lg_model_config(m)->vocab_size, 3);
    double w;
    float l0 = lg_model_forward(m, &b, &w);
    assert_true(isfinite(l0));
    lg_adapters_zero_grads(ad);
    lg_model_zero_grads(m);
    lg_model_backward(m, &b, (float)(1.0 / w));
    double worst = 0;
    lg_rng r;
    lg_rng_seed(&r, 11);
    *checked = 0;
    for (int i = 0; i < lg_adapters_count(ad); i++) {
        lg_lora *l = lg_adapters_get(ad, i);
        struct {
            float *p, *g;
            int64_t n;
            const char *what;
        } t[4] = {{check_ab ? l->A : NULL, l->dA, (int64_t)l->r * l->in, "A"},
                  {check_ab ? l->B : NULL, l->dB, (int64_t)l->out * l->r, "B"},
                  {l->mag, l->dmag, l->out, "mag"},
                  {l->E, l->dE, l->r, "E"}};
        for (int k = 0; k < 4; k++) {
            if (!t[k].p) continue;
            for (int s = 0; s < 3; s++) {
                int64_t e = (int64_t)(lg_rng_u64(&r) % (uint64_t)t[k].n);
                float save = t[k].p[e];
                t[k].p[e] = save + 1e-2f;
                double lp = loss_of(m, &b);
                t[k].p[e] = save - 1e-2f;
                double lm = loss_of(m, &b);
                t[k].p[e] = save;
                double num = (lp - lm) / 2e-2, ana = t[k].g[e];
                double err = fabs(num - ana) / (fabs(num) + fabs(ana) + 1e-3);
                if (err > 3e-2)
                    print_message("  %s.%s[%lld]: analytic %.6g numeric %.6g\n", l->lin->name, t[k].what,
                                  (long long)e, ana, num);
                worst = fmax(worst, err);
                (*checked)++;
            }
        }
    }
    for (int i = 0; i < lg_model_n_params(m); i++) {
        lg_param *p = lg_model_param(m, i);
        if (!p->grad) continue;
        for (int s = 0; s < 6; s++) {
            int64_t e = (int64_t)(lg_rng_u64(&r) % (uint64_t)p->numel);
            float save = p->data[e];
            p->data[e] = save + 1e-2f;
            double lp = loss_of(m, &b);
            p->data[e] = save - 1e-2f;
            double lm = loss_of(m, &b);
            p->data[e] = save;
            double num = (lp - lm) / 2e-2, ana = p->grad[e];
            double err = fabs(num - ana) / (fabs(num) + fabs(ana) + 1e-3);
            if (err > 3e-2) print_message("  %s[%lld]: analytic %.6g numeric %.6g\n", p->name, (long long)e, ana, num);
            worst = fmax(worst, err);
            (*checked)++;
        }
    }
    lg_test_free_batch(&b);
    return worst;
}

static void test_model_grad_lora(void **state) {
    (void)state;
    lg_arch archs[2] = {LG_ARCH_LLAMA, LG_ARCH_GPT2};
    for (int k = 0; k < 2; k++) {
        lg_model *m = frozen_model(archs[k], 21);
        lg_lora_opts o = opts_for("all-linear", 3);
        lg_adapters *ad;
        assert_int_equal(lg_adapters_attach(m, &o, &ad), 0);
        randomise_sd(ad, 3, 0.2f);
        int n;
        double w = model_check(m, ad, 1, &n);
        print_message("LoRA through the %s decoder: %d entries, worst %.2e (tolerance 3e-2)\n",
                      k ? "gpt2" : "llama", n, w);
        assert_true(w < 3e-2);
        /* dx through every adapter: the embedding's gradient, everything else frozen */
        assert_int_equal(lg_model_set_trainable(m, want_wte, NULL), 0);
        w = model_check(m, ad, 0, &n);
        print_message("  embedding gradient through all adapters' dx: %d entries, worst %.2e\n", n, w);
        assert_true(w < 3e-2);
        lg_adapters_free(ad);
        lg_model_free(m);
    }
}

static void test_model_grad_adalora_dora(void **state) {
    (void)state;
    lg_model *m = frozen_model(LG_ARCH_LLAMA, 22);
    lg_lora_opts o = opts_for("q_proj,v_proj,down_proj", 3);
    o.adalora = 1;
    o.total_steps = 10;
    o.target_r = 1;
    lg_adapters *ad;
    assert_int_equal(lg_adapters_attach(m, &o, &ad), 0);
    randomise_sd(ad, 4, 0.2f);
    int n;
    double w = model_check(m, ad, 1, &n);
    print_message("AdaLoRA through the decoder (A, E, B): %d entries, worst %.2e\n", n, w);
    assert_true(w < 3e-2);
    lg_adapters_free(ad);

    /* DoRA: the loss' true derivative in A, B includes the norm, which PEFT detaches; mag is exact */
    o = opts_for("all-linear", 3);
    o.use_dora = 1;
    assert_int_equal(lg_adapters_attach(m, &o, &ad), 0);
    randomise_sd(ad, 5, 0.2f);
    w = model_check(m, ad, 0, &n);
    print_message("DoRA magnitude through the decoder: %d entries, worst %.2e\n", n, w);
    assert_true(w < 3e-2);
    lg_adapters_free(ad);
    lg_model_free(m);
}

/* ------------------------------------------------------------------------------------------ */
/* step 0: the base model's loss                                                              */

static void step0(lg_arch arch, lg_lora_opts o, const char *what) {
    lg_model *m = frozen_model(arch, 31);
    lg_batch b;
    lg_test_random_batch(&b, 2, 6, lg_model_config(m)->vocab_size, 8);
    double base = loss_of(m, &b);
    int np = lg_model_n_params(m);
    float **orig = calloc((size_t)np, sizeof(float *));
    for (int i = 0; i < np; i++) {
        lg_param *p = lg_model_param(m, i);
        orig[i] = malloc((size_t)p->numel * sizeof(float));
        memcpy(orig[i], p->data, (size_t)p->numel * sizeof(float));
    }
    lg_adapters *ad;
    assert_int_equal(lg_adapters_attach(m, &o, &ad), 0);
    double with = loss_of(m, &b);
    if (o.init == LG_INIT_PISSA) {
        /* W_res + s B A reconstructs W to float32 rounding */
        double worst = 0;
        for (int i = 0; i < lg_adapters_count(ad); i++) {
            lg_lora *l = lg_adapters_get(ad, i);
            int pi = -1;
            for (int j = 0; j < np; j++)
                if (lg_model_param(m, j) == l->lin->w) pi = j;
            assert_true(pi >= 0);
            double wmax = 0, emax = 0, dmax = 0;
            for (int row = 0; row < l->out; row++)
                for (int c = 0; c < l->in; c++) {
                    double ba = 0;
                    for (int k = 0; k < l->r; k++) ba += (double)l->B[row * l->r + k] * l->A[k * l->in + c];
                    double wo = orig[pi][row * l->in + c], wr = l->lin->w->data[row * l->in + c];
                    wmax = fmax(wmax, fabs(wo));
                    emax = fmax(emax, fabs(wr + l->scale * ba - wo));
                    dmax = fmax(dmax, fabs(wr - wo));
                }
            assert_true(dmax > 1e-2 * wmax); /* the residual really differs from W */
            worst = fmax(worst, emax / wmax);
        }
        print_message("%s: max |W_res + sBA - W| / max|W| = %.2e; loss %.9g vs base %.9g\n", what, worst, with, base);
        assert_true(worst < 2e-6);
        assert_true(fabs(with - base) < 1e-5);
    } else {
        print_message("%s: loss %.9g vs base %.9g\n", what, with, base);
        assert_true(with == base);
        for (int i = 0; i < np; i++) {
            lg_param *p = lg_model_param(m, i);
            assert_memory_equal(orig[i], p->data, (size_t)p->numel * sizeof(float));
        }
    }
    for (int i = 0; i < np; i++) free(orig[i]);
    free(orig);
    lg_adapters_free(ad);
    lg_test_free_batch(&b);
    lg_model_free(m);
}

static void test_step0_every_method(void **state) {
    (void)state;
    for (int k = 0; k < 2; k++) {
        lg_arch arch = k ? LG_ARCH_GPT2 : LG_ARCH_LLAMA;
        lg_lora_opts o = opts_for("all-linear", 4);
        step0(arch, o, "lora");
        o.use_rslora = 1;
        step0(arch, o, "rslora");
        o = opts_for("all-linear", 4);
        o.init = LG_INIT_GAUSSIAN;
        step0(arch, o, "lora gaussian");
        o = opts_for("all-linear", 4);
        o.use_dora = 1;
        step0(arch, o, "dora");
        o = opts_for("all-linear", 4);
        o.init = LG_INIT_PISSA;
        step0(arch, o, "pissa");
        o.use_rslora = 1;
        o.use_dora = 1;
        step0(arch, o, "pissa + rslora + dora");
        o = opts_for("all-linear", 4);
        o.adalora = 1;
        o.init = LG_INIT_ADALORA;
        o.total_steps = 10;
        o.target_r = 2;
        step0(arch, o, "adalora");
    }
}

/* Init distributions: kaiming-uniform bound 1/sqrt(in), gaussian std 1/r, B = 0. */
static void test_init_distributions(void **state) {
    (void)state;
    lg_model *m = frozen_model(LG_ARCH_LLAMA, 41);
    lg_lora_opts o = opts_for("up_proj", 4);
    lg_adapters *ad;
    assert_int_equal(lg_adapters_attach(m, &o, &ad), 0);
    double mx = 0, ss = 0;
    int64_t cnt = 0;
    for (int i = 0; i < lg_adapters_count(ad); i++) {
        lg_lora *l = lg_adapters_get(ad, i);
        assert_float_equal(l->scale, 8.0f / 4, 0);
        for (int64_t e = 0; e < (int64_t)l->r * l->in; e++) mx = fmax(mx, fabs(l->A[e])), ss += l->A[e] * l->A[e], cnt++;
        for (int64_t e = 0; e < (int64_t)l->out * l->r; e++) assert_true(l->B[e] == 0.0f);
    }
    double bound = 1.0 / sqrt(16.0);
    assert_true(mx <= bound && mx > 0.8 * bound);
    assert_true(fabs(sqrt(ss / cnt) - bound / sqrt(3.0)) < 0.25 * bound / sqrt(3.0));
    lg_adapters_free(ad);

    o.init = LG_INIT_GAUSSIAN;
    o.use_rslora = 1;
    assert_int_equal(lg_adapters_attach(m, &o, &ad), 0);
    ss = 0, cnt = 0;
    for (int i = 0; i < lg_adapters_count(ad); i++) {
        lg_lora *l = lg_adapters_get(ad, i);
        assert_float_equal(l->scale, 8.0f / 2.0f, 1e-6);
        for (int64_t e = 0; e < (int64_t)l->r * l->in; e++) ss += l->A[e] * l->A[e], cnt++;
    }
    assert_true(fabs(sqrt(ss / cnt) - 0.25) < 0.05);
    lg_adapters_free(ad);
    lg_model_free(m);
}

/* ------------------------------------------------------------------------------------------ */
/* frozen base, parameter count, LoRA+                                                        */

static void train_steps(lg_model *m, lg_adapters *ad, lg_opt_tensor *t, int nt, int steps, float lr,
                        float *first, float *last) {
    lg_adamw opt;
    lg_adamw_init(&opt, t, nt, 0.9f, 0.999f, 1e-8f);
    lg_batch b;
    lg_test_random_batch(&b, 2, 6, lg_model_config(m)->vocab_size, 12);
    for (int s = 0; s < steps; s++) {
        double w;
        float l = lg_model_forward(m, &b, &w);
        if (s == 0 && first) *first = l;
        if (last) *last = l;
        lg_adapters_zero_grads(ad);
        lg_model_backward(m, &b, (float)(1.0 / w));
        lg_adamw_step(&opt, lr);
    }
    lg_adamw_free(&opt);
    lg_test_free_batch(&b);
}

static void frozen_case(lg_lora_opts o) {
    lg_model *m = frozen_model(LG_ARCH_LLAMA, 51);
    int np = lg_model_n_params(m);
    float **orig = calloc((size_t)np, sizeof(float *));
    lg_adapters *ad;
    assert_int_equal(lg_adapters_attach(m, &o, &ad), 0);
    for (int i = 0; i < np; i++) { /* after attach: PiSSA's residual is the new frozen base */
        lg_param *p = lg_model_param(m, i);
        assert_null(p->grad);
        orig[i] = malloc((size_t)p->numel * sizeof(float));
        memcpy(orig[i], p->data, (size_t)p->numel * sizeof(float));
    }
    int64_t expect = 0;
    for (int i = 0; i < lg_adapters_count(ad); i++) {
        lg_lora *l = lg_adapters_get(ad, i);
        expect += (int64_t)l->r * (l->in + l->out) + (o.use_dora ? l->out : 0);
    }
    assert_int_equal(lg_adapters_count(ad), 2 * 7);
    assert_int_equal(lg_adapters_numel(ad), expect);
    lg_opt_tensor *t;
    int nt;
    assert_int_equal(lg_adapters_opt_tensors(ad, 1.0f, &t, &nt), 0);
    int64_t tot = 0;
    for (int i = 0; i < nt; i++) tot += t[i].n;
    assert_int_equal(tot, expect);
    float first = 0, last = 0;
    train_steps(m, ad, t, nt, 6, 1e-2f, &first, &last);
    print_message("%s%s: %lld trainable, loss %.5f -> %.5f over 6 AdamW steps\n", o.use_dora ? "dora" : "lora",
                  o.init == LG_INIT_PISSA ? "/pissa" : "", (long long)expect, first, last);
    assert_true(last < first);
    for (int i = 0; i < np; i++) {
        lg_param *p = lg_model_param(m, i);
        assert_null(p->grad);
        assert_memory_equal(orig[i], p->data, (size_t)p->numel * sizeof(float));
        free(orig[i]);
    }
    free(orig);
    free(t);
    lg_adapters_free(ad);
    lg_model_free(m);
}

static void test_frozen_base_and_counts(void **state) {
    (void)state;
    lg_lora_opts o = opts_for("all-linear", 4);
    frozen_case(o);
    o.use_dora = 1;
    frozen_case(o);
    o.use_dora = 0;
    o.init = LG_INIT_PISSA;
    frozen_case(o);
}

/* BF16 storage of the frozen base: a model whose weights already hold bf16 values computes the same
 * loss, adapter gradients and logits after lg_model_store_frozen_bf16 (up to summation order: the
 * backward GEMM is split into row blocks, forced small here), keeps norms and biases in float32,
 * reads back the exact bf16 values, saves them, and refuses to make a bf16 weight trainable. */
static void test_bf16_frozen_base(void **state) {
    (void)state;
    const lg_arch archs[3] = {LG_ARCH_LLAMA, LG_ARCH_GPT2, LG_ARCH_LLAMA};
    for (int k = 0; k < 3; k++) {
        const int dora = k == 2;
        lg_model *m[2];
        lg_adapters *ad[2];
        for (int j = 0; j < 2; j++) {
            m[j] = frozen_model(archs[k], 31);
            for (int i = 0; i < lg_model_n_params(m[j]); i++) { /* round the base to bf16 values */
                lg_param *p = lg_model_param(m[j], i);
                if (p->ndim == 2)
                    for (int64_t e = 0; e < p->numel; e++) p->data[e] = lg_bf16_to_f32(lg_f32_to_bf16(p->data[e]));
            }
            lg_lora_opts o = opts_for("all-linear", 3);
            o.use_dora = dora;
            assert_int_equal(lg_adapters_attach(m[j], &o, &ad[j]), 0);
            randomise_sd(ad[j], 5, 0.2f);
        }
        const lg_config *c = lg_model_config(m[1]);
        int64_t f32_bytes = 0;
        for (int i = 0; i < lg_model_n_params(m[1]); i++)
            if (lg_model_param(m[1], i)->ndim == 2 && !strstr(lg_model_param(m[1], i)->name, "wpe"))
                f32_bytes += lg_model_param(m[1], i)->numel * 4;
        int64_t saved = lg_model_store_frozen_bf16(m[1]);
        assert_int_equal(saved >= f32_bytes / 2, 1); /* bf16 arena (aligned views) holds every matrix */
        lg_ops_cpu_set_wblock(m[1]->ops, 2 * c->dim + 3); /* several blocks, the last one partial */
        for (int i = 0; i < lg_model_n_params(m[1]); i++) {
            lg_param *p = lg_model_param(m[1], i), *q = lg_model_param(m[0], i);
            const int want16 = p->ndim == 2 && !strstr(p->name, "wpe");
            assert_int_equal(p->bf16 != NULL, want16);
            assert_int_equal(p->data == NULL, want16);
            float *back = lg_malloc((size_t)p->numel * sizeof(float));
            lg_param_read_f32(p, back);
            assert_memory_equal(back, q->data, (size_t)p->numel * sizeof(float));
            free(back);
        }
        assert_int_equal(lg_model_store_frozen_bf16(m[1]), 0); /* idempotent */
        lg_batch b;
        lg_test_random_batch(&b, 2, 6, c->vocab_size, 9);
        double w[2];
        float loss[2];
        for (int j = 0; j < 2; j++) {
            loss[j] = lg_model_forward(m[j], &b, &w[j]);
            lg_adapters_zero_grads(ad[j]);
            lg_model_backward(m[j], &b, (float)(1.0 / w[j]));
        }
        assert_true(isfinite(loss[0]));
        assert_true(fabs(loss[0] - loss[1]) <= 1e-5 * fabs(loss[0]));
        double worst = 0, gmax = 0;
        for (int i = 0; i < lg_adapters_count(ad[0]); i++) {
            lg_lora *a = lg_adapters_get(ad[0], i), *z = lg_adapters_get(ad[1], i);
            for (int64_t e = 0; e < (int64_t)a->r * a->in; e++) {
                worst = fmax(worst, fabs(a->dA[e] - z->dA[e]));
                gmax = fmax(gmax, fabs(a->dA[e]));
            }
            for (int64_t e = 0; e < (int64_t)a->out * a->r; e++) {
                worst = fmax(worst, fabs(a->dB[e] - z->dB[e]));
                gmax = fmax(gmax, fabs(a->dB[e]));
            }
            if (dora)
                for (int e = 0; e < a->out; e++) worst = fmax(worst, fabs(a->dmag[e] - z->dmag[e]));
        }
        print_message("bf16 base, %s%s: loss %.7f vs %.7f, adapter gradients differ by %.2e (max |g| %.2e)\n",
                      archs[k] == LG_ARCH_GPT2 ? "gpt2" : "llama", dora ? " + DoRA" : "", loss[0], loss[1], worst, gmax);
        assert_true(gmax > 0 && worst <= 1e-4 * gmax);
        /* inference plan: logits readable and equal */
        for (int j = 0; j < 2; j++) {
            assert_int_equal(lg_model_plan(m[j], 2, 6, 0), 0);
            lg_model_forward(m[j], &b, &w[j]);
        }
        const float *l0 = lg_model_logits(m[0]), *l1 = lg_model_logits(m[1]);
        double dl = 0;
        for (int64_t e = 0; e < 12L * c->vocab_size; e++) dl = fmax(dl, fabs(l0[e] - l1[e]));
        assert_true(dl <= 1e-4);
        /* a bf16 weight cannot become trainable; norms can */
        assert_int_equal(lg_model_set_trainable(m[1], NULL, NULL), -1);
        assert_non_null(strstr(lg_last_error(), "bf16"));
        if (k == 0) { /* save: the bf16 model writes the same file as the float32 one holding its values */
            char *dir = lg_test_tmpdir();
            char *d0 = lg_path_join(dir, "f32"), *d1 = lg_path_join(dir, "bf16");
            assert_int_equal(lg_model_save_hf(m[0], d0, "float32"), 0);
            assert_int_equal(lg_model_save_hf(m[1], d1, "float32"), 0);
            lg_model *r[2];
            assert_int_equal(lg_model_load(d0, NULL, &r[0]), 0);
            assert_int_equal(lg_model_load(d1, NULL, &r[1]), 0);
            for (int i = 0; i < lg_model_n_params(r[0]); i++)
                assert_memory_equal(lg_model_param(r[0], i)->data, lg_model_param(r[1], i)->data,
                                    (size_t)lg_model_param(r[0], i)->numel * sizeof(float));
            lg_model_free(r[0]);
            lg_model_free(r[1]);
            free(d0), free(d1), free(dir);
        }
        lg_test_free_batch(&b);
        for (int j = 0; j < 2; j++) {
            lg_adapters_free(ad[j]);
            lg_model_free(m[j]);
        }
    }
}

/* Shapes big enough that the adapter GEMMs split their output between threads (skinny_gemm):
 * loss and every adapter gradient agree between one and two threads, with and without dropout. */
static void test_adapter_threads_agree(void **state) {
    (void)state;
    lg_config c = lg_test_tiny_config(LG_ARCH_LLAMA, 64, 1);
    c.dim = 128, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 32, c.hidden_dim = 160, c.max_seq = 64;
    const int saved = omp_get_max_threads();
    for (int drop = 0; drop < 2; drop++) {
        float loss[2];
        float *grads[2] = {NULL, NULL};
        int64_t ng = 0;
        for (int k = 0; k < 2; k++) {
            omp_set_num_threads(k + 1);
            lg_model *m;
            assert_int_equal(lg_model_create(&c, NULL, 5, NULL, &m), 0);
            assert_int_equal(lg_model_set_trainable(m, want_none, NULL), 0);
            assert_int_equal(lg_model_plan(m, 4, 64, 1), 0);
            lg_lora_opts o = opts_for("all-linear", 8);
            o.dropout = drop ? 0.25f : 0.0f;
            lg_adapters *ad;
            assert_int_equal(lg_adapters_attach(m, &o, &ad), 0);
            randomise_sd(ad, 7, 0.1f);
            lg_batch b;
            lg_test_random_batch(&b, 4, 64, c.vocab_size, 13);
            double w;
            loss[k] = lg_model_forward(m, &b, &w);
            lg_adapters_zero_grads(ad);
            lg_model_backward(m, &b, (float)(1.0 / w));
            ng = 0;
            for (int i = 0; i < lg_adapters_count(ad); i++) {
                lg_lora *l = lg_adapters_get(ad, i);
                ng += (int64_t)l->r * (l->in + l->out);
            }
            grads[k] = lg_malloc((size_t)ng * sizeof(float));
            int64_t off = 0;
            for (int i = 0; i < lg_adapters_count(ad); i++) {
                lg_lora *l = lg_adapters_get(ad, i);
                memcpy(grads[k] + off, l->dA, (size_t)l->r * l->in * sizeof(float));
                off += (int64_t)l->r * l->in;
                memcpy(grads[k] + off, l->dB, (size_t)l->r * l->out * sizeof(float));
                off += (int64_t)l->r * l->out;
            }
            lg_test_free_batch(&b);
            lg_adapters_free(ad);
            lg_model_free(m);
        }
        double worst = 0, gmax = 0;
        for (int64_t e = 0; e < ng; e++) {
            worst = fmax(worst, fabs(grads[0][e] - grads[1][e]));
            gmax = fmax(gmax, fabs(grads[0][e]));
        }
        print_message("adapter GEMMs, 1 vs 2 threads%s: loss %.7f vs %.7f, gradients differ by %.2e (max %.2e)\n",
                      drop ? ", dropout 0.25" : "", loss[0], loss[1], worst, gmax);
        assert_true(fabs(loss[0] - loss[1]) <= 1e-5 * fabs(loss[0]));
        assert_true(gmax > 0 && worst <= 1e-5 * gmax);
        free(grads[0]), free(grads[1]);
    }
    omp_set_num_threads(saved);
}

/* Training with a frozen LM head forms the logits a block of rows at a time (loss, gradient and
 * the product back through the head per block). Forced to several blocks and a partial one, it
 * gives the loss and gradients of the whole-batch path — LLaMA (untied head) also with the base
 * stored as bf16 (the head expanded a few rows at a time inside each block) against a float32 model
 * holding the same values. GPT-2 ties the head to the embedding, which trains here, so its plan
 * goes back to whole-batch logits; and an untied head made trainable does the same. */
static void test_blocked_logits(void **state) {
    (void)state;
    const lg_arch archs[2] = {LG_ARCH_LLAMA, LG_ARCH_GPT2};
    for (int k = 0; k < 2; k++) {
        const int llama = archs[k] == LG_ARCH_LLAMA;
        lg_model *m[2];
        lg_adapters *ad[2];
        lg_batch b;
        lg_test_random_batch(&b, 2, 10, 23, 17);
        float loss[2];
        for (int j = 0; j < 2; j++) {
            m[j] = frozen_model(archs[k], 41);
            if (llama) /* both hold bf16 values; m[1] will store them as bf16 */
                for (int i = 0; i < lg_model_n_params(m[j]); i++) {
                    lg_param *p = lg_model_param(m[j], i);
                    if (p->ndim == 2)
                        for (int64_t e = 0; e < p->numel; e++) p->data[e] = lg_bf16_to_f32(lg_f32_to_bf16(p->data[e]));
                }
            if (j == 1) m[j]->logit_block_floats = 23 * 7; /* 16 rows a block (the floor): 16 + 4 */
            assert_int_equal(lg_model_plan(m[j], 2, 10, 1), 0);
            assert_int_equal(m[j]->logit_rows, j ? 16 : 20);
            lg_lora_opts o = opts_for("all-linear", 2);
            assert_int_equal(lg_adapters_attach(m[j], &o, &ad[j]), 0);
            randomise_sd(ad[j], 3, 0.3f);
            if (!llama) assert_int_equal(lg_model_set_trainable(m[j], want_wte, NULL), 0); /* dx reaches wte */
            if (llama && j == 1) {
                assert_true(lg_model_store_frozen_bf16(m[j]) > 0);
                assert_non_null(m[j]->lm_head->bf16);
                lg_ops_cpu_set_wblock(m[j]->ops, 5 * 16 + 3); /* several weight blocks inside each logit block */
            }
            double w;
            loss[j] = lg_model_forward(m[j], &b, &w);
            assert_int_equal(m[j]->logit_rows, j && llama ? 16 : 20);
            lg_adapters_zero_grads(ad[j]);
            lg_model_zero_grads(m[j]);
            lg_model_backward(m[j], &b, 0.5f / (float)w);
        }
        assert_true(fabs(loss[0] - loss[1]) <= 1e-6 * fabs(loss[0]));
        double worst = 0, gmax = 0;
        for (int i = 0; i < lg_adapters_count(ad[0]); i++) {
            lg_lora *a = lg_adapters_get(ad[0], i), *z = lg_adapters_get(ad[1], i);
            for (int64_t e = 0; e < (int64_t)a->out * a->r; e++) {
                worst = fmax(worst, fabs(a->dB[e] - z->dB[e]));
                gmax = fmax(gmax, fabs(a->dB[e]));
            }
            for (int64_t e = 0; e < (int64_t)a->r * a->in; e++) worst = fmax(worst, fabs(a->dA[e] - z->dA[e]));
        }
        if (!llama) {
            lg_param *e0 = lg_model_find_param(m[0], "transformer.wte.weight"), *e1 = lg_model_find_param(m[1], e0->name);
            for (int64_t e = 0; e < e0->numel; e++) worst = fmax(worst, fabs(e0->grad[e] - e1->grad[e]));
        }
        print_message("blocked logits (%s): loss %.7f vs %.7f, gradients differ by %.2e (max |dB| %.2e)\n",
                      llama ? "llama, bf16 base" : "gpt2, tied head trains: whole batch", loss[0], loss[1], worst, gmax);
        /* 2e-5: the row-block products may run on the other GEMM library than the whole ones
         * (oneDNN / OpenBLAS, chosen per shape), so the summation order differs */
        assert_true(gmax > 0 && worst <= 2e-5 * gmax);
        if (llama) { /* the untied head of the float32 model, blocked, becomes trainable: whole batch again */
            m[0]->logit_block_floats = 23 * 7;
            assert_int_equal(lg_model_plan(m[0], 2, 10, 1), 0);
            assert_int_equal(m[0]->logit_rows, 16);
            assert_int_equal(lg_model_set_trainable(m[0], NULL, NULL), 0);
            double w;
            lg_model_forward(m[0], &b, &w);
            assert_int_equal(m[0]->logit_rows, 20);
            lg_model_zero_grads(m[0]);
            lg_adapters_zero_grads(ad[0]);
            lg_model_backward(m[0], &b, 1.0f);
            double g2 = 0;
            for (int64_t e = 0; e < m[0]->lm_head->numel; e++) g2 += (double)m[0]->lm_head->grad[e] * m[0]->lm_head->grad[e];
            assert_true(g2 > 0);
        }
        lg_test_free_batch(&b);
        for (int j = 0; j < 2; j++) {
            lg_adapters_free(ad[j]);
            lg_model_free(m[j]);
        }
    }
}

static void test_loraplus_lr_mult(void **state) {
    (void)state;
    lg_model *m = frozen_model(LG_ARCH_GPT2, 61);
    lg_lora_opts o = opts_for("c_attn,mlp.c_proj", 2);
    o.use_dora = 1;
    lg_adapters *ad;
    assert_int_equal(lg_adapters_attach(m, &o, &ad), 0);
    assert_int_equal(lg_adapters_count(ad), 4);
    lg_opt_tensor *t;
    int nt;
    assert_int_equal(lg_adapters_opt_tensors(ad, 16.0f, &t, &nt), 0);
    assert_int_equal(nt, 4 * 3);
    int nb = 0;
    for (int i = 0; i < nt; i++) {
        size_t ln = strlen(t[i].name);
        int is_b = ln > 7 && !strcmp(t[i].name + ln - 7, ".lora_B");
        nb += is_b;
        assert_float_equal(t[i].lr_mult, is_b ? 16.0f : 1.0f, 0);
        assert_float_equal(t[i].weight_decay, 0.0f, 0);
        assert_non_null(t[i].grad);
        assert_true(!strncmp(t[i].name, "transformer.h.", 14));
    }
    assert_int_equal(nb, 4);
    free(t);
    /* ratio <= 0 means plain LoRA */
    assert_int_equal(lg_adapters_opt_tensors(ad, 0.0f, &t, &nt), 0);
    for (int i = 0; i < nt; i++) assert_float_equal(t[i].lr_mult, 1.0f, 0);
    free(t);
    lg_adapters_free(ad);
    lg_model_free(m);
}

/* ------------------------------------------------------------------------------------------ */
/* target matching                                                                            */

static void test_targets(void **state) {
    (void)state;
    lg_model *m = frozen_model(LG_ARCH_GPT2, 71);
    lg_adapters *ad;
    lg_lora_opts o = opts_for("c_proj", 2);
    assert_int_equal(lg_adapters_attach(m, &o, &ad), 0);
    assert_int_equal(lg_adapters_count(ad), 4); /* attn.c_proj and mlp.c_proj in 2 layers */
    lg_adapters_free(ad);
    o.targets = " attn.c_proj , c_fc ";
    assert_int_equal(lg_adapters_attach(m, &o, &ad), 0);
    assert_int_equal(lg_adapters_count(ad), 4);
    for (int i = 0; i < 4; i++) {
        const char *nm = lg_adapters_get(ad, i)->lin->name;
        assert_true(strstr(nm, "attn.c_proj") || strstr(nm, "mlp.c_fc"));
        assert_ptr_equal(lg_adapters_get(ad, i)->lin->adapter, &lg_adapters_get(ad, i)->hdr);
    }
    lg_adapters_free(ad);
    for (int i = 0; i < lg_model_n_linears(m); i++) assert_null(lg_model_linear(m, i)->adapter);
    o.targets = "all-linear";
    assert_int_equal(lg_adapters_attach(m, &o, &ad), 0);
    assert_int_equal(lg_adapters_count(ad), lg_model_n_linears(m));
    lg_adapters_free(ad);
    o.targets = "c_attn,q_proj";
    assert_int_equal(lg_adapters_attach(m, &o, &ad), -1);
    print_message("error: %s\n", lg_last_error());
    assert_non_null(strstr(lg_last_error(), "'q_proj'"));
    o.targets = "proj"; /* a suffix that is not a whole name component matches nothing */
    assert_int_equal(lg_adapters_attach(m, &o, &ad), -1);
    assert_non_null(strstr(lg_last_error(), "'proj'"));
    for (int i = 0; i < lg_model_n_linears(m); i++) assert_null(lg_model_linear(m, i)->adapter);
    lg_model_free(m);
}

/* ------------------------------------------------------------------------------------------ */
/* dropout                                                                                    */

static void test_dropout(void **state) {
    (void)state;
    lg_model *m = frozen_model(LG_ARCH_LLAMA, 81);
    lg_lora_opts o = opts_for("q_proj", 4);
    o.dropout = 0.25f;
    o.seed = 5;
    lg_adapters *ad;
    assert_int_equal(lg_adapters_attach(m, &o, &ad), 0);
    lg_lora *a = lg_adapters_get(ad, 0);
    const int N = 200, in = a->in, out = a->out, r = a->r;
    /* A = [I 0], B = [I; 0]: the adapter's output is s * xd[:, :r], which shows the mask */
    memset(a->A, 0, (size_t)r * in * sizeof(float));
    memset(a->B, 0, (size_t)out * r * sizeof(float));
    for (int k = 0; k < r; k++) a->A[k * in + k] = 1.0f, a->B[k * r + k] = 1.0f;
    lg_rng rng;
    lg_rng_seed(&rng, 3);
    float *x = malloc((size_t)N * in * sizeof(float));
    float *y = calloc((size_t)N * out, sizeof(float)), *y2 = calloc((size_t)N * out, sizeof(float));
    for (int i = 0; i < N * in; i++) x[i] = 1.0f + lg_rng_uniform(&rng);
    int dropped = 0;
    a->hdr.vt->forward(&a->hdr, a->lin, y, x, N, 1);
    for (int t = 0; t < N; t++)
        for (int k = 0; k < r; k++) {
            float v = y[t * out + k], keep = a->scale * x[t * in + k] / (1.0f - o.dropout);
            if (v == 0.0f) dropped++;
            else assert_true(fabsf(v - keep) <= 1e-5f * keep);
        }
    double frac = (double)dropped / (N * r);
    print_message("dropout 0.25: dropped fraction %.3f of %d\n", frac, N * r);
    assert_true(fabs(frac - 0.25) < 0.05);
    /* deterministic for (seed, call): replaying the same call count gives the same output */
    a->drop_calls--;
    a->hdr.vt->forward(&a->hdr, a->lin, y2, x, N, 1);
    assert_memory_equal(y, y2, (size_t)N * out * sizeof(float));
    memset(y2, 0, (size_t)N * out * sizeof(float));
    a->hdr.vt->forward(&a->hdr, a->lin, y2, x, N, 1); /* the next call: another mask */
    assert_true(memcmp(y, y2, (size_t)N * out * sizeof(float)) != 0);
    /* evaluation: no dropout */
    memset(y2, 0, (size_t)N * out * sizeof(float));
    a->hdr.vt->forward(&a->hdr, a->lin, y2, x, N, 0);
    for (int t = 0; t < N; t++)
        for (int k = 0; k < r; k++) assert_float_equal(y2[t * out + k], a->scale * x[t * in + k], 1e-6);

    /* backward rebuilds the forward's mask: dA, dx against finite differences at a fixed call */
    lg_rng_seed(&rng, 4);
    fill(a->A, (int64_t)r * in, 0.5f, &rng);
    fill(a->B, (int64_t)out * r, 0.5f, &rng);
    const int n2 = 5;
    float *c = malloc((size_t)n2 * out * sizeof(float)), *dx = calloc((size_t)n2 * in, sizeof(float));
    fill(c, (int64_t)n2 * out, 1.0f, &rng);
    const uint64_t call = 41;
#define LOSS(res)                                                                                  \
    do {                                                                                           \
        memset(y, 0, (size_t)n2 * out * sizeof(float));                                            \
        a->drop_calls = call;                                                                      \
        a->hdr.vt->forward(&a->hdr, a->lin, y, x, n2, 1);                                          \
        double s_ = 0;                                                                             \
        for (int i_ = 0; i_ < n2 * out; i_++) s_ += (double)c[i_] * y[i_];                         \
        res = s_;                                                                                  \
    } while (0)
    double l0;
    LOSS(l0);
    (void)l0;
    lg_adapters_zero_grads(ad);
    a->hdr.vt->backward(&a->hdr, a->lin, dx, c, x, n2); /* only the adapter's part of dx */
    double worst = 0;
    for (int e = 0; e < r * in; e++) {
        float save = a->A[e];
        double lp, lm;
        a->A[e] = save + 0.05f;
        LOSS(lp);
        a->A[e] = save - 0.05f;
        LOSS(lm);
        a->A[e] = save;
        worst = fmax(worst, rel_err(a->dA[e], (lp - lm) / 0.1));
    }
    /* the adapter's dx: the loss through the adapter alone is linear in x */
    int zero_dx = 0;
    for (int e = 0; e < n2 * in; e++) {
        float save = x[e];
        double lp, lm;
        x[e] = save + 0.05f;
        LOSS(lp);
        x[e] = save - 0.05f;
        LOSS(lm);
        x[e] = save;
        worst = fmax(worst, rel_err(dx[e], (lp - lm) / 0.1));
        zero_dx += dx[e] == 0.0f;
    }
#undef LOSS
    print_message("dropout backward vs finite differences: worst %.2e, %d of %d dx entries dropped\n", worst, zero_dx,
                  n2 * in);
    assert_true(worst < 2e-3);
    assert_true(zero_dx > 0);
    free(c), free(dx), free(x), free(y), free(y2);
    lg_adapters_free(ad);

    /* the whole model: training loss differs from evaluation loss, which equals dropout 0's */
    lg_batch b;
    lg_test_random_batch(&b, 2, 6, 23, 9);
    o = opts_for("all-linear", 4);
    assert_int_equal(lg_adapters_attach(m, &o, &ad), 0);
    randomise(ad, 8);
    double ref = loss_of(m, &b);
    lg_adapters_free(ad);
    o.dropout = 0.3f;
    assert_int_equal(lg_adapters_attach(m, &o, &ad), 0);
    randomise(ad, 8);
    double tr = loss_of(m, &b);
    assert_int_equal(lg_model_plan(m, 2, 6, 0), 0);
    double ev = loss_of(m, &b);
    print_message("model: no-dropout %.6f, eval %.6f, training %.6f\n", ref, ev, tr);
    assert_true(ev == ref);
    assert_true(tr != ref);
    lg_adapters_free(ad);
    lg_test_free_batch(&b);
    lg_model_free(m);
}

/* ------------------------------------------------------------------------------------------ */
/* AdaLoRA                                                                                    */

static double orth_term(const float *P, int rows, int cols, int trans, int64_t pe, double delta) {
    /* ||P P^T - I||_F (trans = 0, P rows x cols) or ||P^T P - I||_F (trans = 1, P cols x rows) */
    double f = 0;
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < rows; j++) {
            double acc = 0;
            for (int k = 0; k < cols; k++) {
                int64_t ei = trans ? (int64_t)k * rows + i : (int64_t)i * cols + k;
                int64_t ej = trans ? (int64_t)k * rows + j : (int64_t)j * cols + k;
                double vi = P[ei] + (ei == pe ? delta : 0), vj = P[ej] + (ej == pe ? delta : 0);
                acc += vi * vj;
            }
            acc -= i == j;
            f += acc * acc;
        }
    return sqrt(f);
}

static void test_adalora_orth_grad(void **state) {
    (void)state;
    lg_model *m = frozen_model(LG_ARCH_LLAMA, 91);
    lg_lora_opts o = opts_for("q_proj,down_proj", 3);
    o.adalora = 1;
    o.total_steps = 20;
    o.tinit = 5;
    o.target_r = 1;
    o.orth_reg = 0.7f;
    lg_adapters *ad;
    assert_int_equal(lg_adapters_attach(m, &o, &ad), 0);
    randomise(ad, 6);
    lg_adapters_zero_grads(ad);
    assert_int_equal(lg_adalora_step(ad, 0), 3 * 4); /* before tinit: nothing masked */
    const int n = lg_adapters_count(ad);
    const double c = 0.7 / (2.0 * n); /* PEFT: mean over all lora_A and lora_B matrices */
    double worst = 0;
    for (int i = 0; i < n; i++) {
        lg_lora *l = lg_adapters_get(ad, i);
        for (int e = 0; e < l->r * l->in; e += 5) {
            double num = c * (orth_term(l->A, l->r, l->in, 0, e, 1e-4) - orth_term(l->A, l->r, l->in, 0, e, -1e-4)) / 2e-4;
            worst = fmax(worst, rel_err(l->dA[e], num));
        }
        for (int e = 0; e < l->out * l->r; e += 5) {
            double num = c * (orth_term(l->B, l->r, l->out, 1, e, 1e-4) - orth_term(l->B, l->r, l->out, 1, e, -1e-4)) / 2e-4;
            worst = fmax(worst, rel_err(l->dB[e], num));
        }
        for (int k = 0; k < l->r; k++) assert_true(l->dE[k] == 0.0f);
    }
    print_message("orthogonality regulariser gradient vs finite differences: worst %.2e\n", worst);
    assert_true(worst < 1e-3);
    lg_adapters_free(ad);
    lg_model_free(m);
}

static void test_adalora_budget(void **state) {
    (void)state;
    lg_model *m = frozen_model(LG_ARCH_LLAMA, 92);
    lg_lora_opts o = opts_for("all-linear", 4);
    o.adalora = 1;
    o.init = LG_INIT_ADALORA;
    o.target_r = 1;
    o.tinit = 2;
    o.tfinal = 4;
    o.total_steps = 14;
    o.delta_t = 2;
    lg_adapters *ad;
    assert_int_equal(lg_adapters_attach(m, &o, &ad), 0);
    const int n = lg_adapters_count(ad);
    const long init_bgt = 4L * n, target = 1L * n;
    lg_opt_tensor *t;
    int nt;
    assert_int_equal(lg_adapters_opt_tensors(ad, 1.0f, &t, &nt), 0);
    assert_int_equal(nt, 3 * n);
    lg_adamw opt;
    lg_adamw_init(&opt, t, nt, 0.9f, 0.999f, 1e-8f);
    lg_batch b;
    lg_test_random_batch(&b, 2, 6, 23, 13);
    for (long s = 0; s < o.total_steps; s++) {
        double w;
        float l = lg_model_forward(m, &b, &w);
        assert_true(isfinite(l));
        lg_adapters_zero_grads(ad);
        lg_model_backward(m, &b, (float)(1.0 / w));
        int kept = lg_adalora_step(ad, s);
        long budget = init_bgt;
        if (s > o.tinit && s <= o.total_steps - o.tfinal) {
            double cc = 1.0 - (double)(s - o.tinit) / (double)(o.total_steps - o.tfinal - o.tinit);
            budget = (long)((init_bgt - target) * cc * cc * cc + target);
        } else if (s > o.total_steps - o.tfinal) {
            budget = target;
        }
        print_message("step %2ld: kept %3d, budget %3ld\n", s, kept, budget);
        if (s <= o.tinit) assert_int_equal(kept, init_bgt);
        if (s > o.tinit && s % o.delta_t == 0) assert_true(kept <= budget);
        if (s >= o.total_steps - o.tfinal) assert_true(kept <= target);
        int count = 0;
        for (int i = 0; i < n; i++) {
            lg_lora *a = lg_adapters_get(ad, i);
            for (int k = 0; k < a->r; k++) {
                count += a->rank_mask[k];
                /* E is zeroed when masking (the optimizer may move it until the next mask) */
                if (!a->rank_mask[k] && ((s > o.tinit && s % o.delta_t == 0) || s >= o.total_steps - o.tfinal))
                    assert_true(a->E[k] == 0.0f);
            }
        }
        assert_int_equal(count, kept);
        lg_adamw_step(&opt, 5e-2f);
    }
    /* masked triplets do not take part in the forward, whatever E the optimizer left there */
    double l1 = loss_of(m, &b);
    lg_rng r;
    lg_rng_seed(&r, 1);
    for (int i = 0; i < n; i++) {
        lg_lora *a = lg_adapters_get(ad, i);
        for (int k = 0; k < a->r; k++)
            if (!a->rank_mask[k]) {
                a->E[k] = 1.0f;
                for (int j = 0; j < a->in; j++) a->A[k * a->in + j] = lg_rng_normal(&r);
            }
    }
    assert_true(loss_of(m, &b) == l1);
    lg_adamw_free(&opt);
    free(t);
    lg_test_free_batch(&b);
    lg_adapters_free(ad);
    lg_model_free(m);
}

static void test_adalora_bad_schedule(void **state) {
    (void)state;
    lg_model *m = frozen_model(LG_ARCH_LLAMA, 93);
    lg_lora_opts o = opts_for("q_proj", 4);
    o.adalora = 1;
    o.target_r = 2;
    lg_adapters *ad;
    assert_int_equal(lg_adapters_attach(m, &o, &ad), -1); /* total_steps missing */
    o.target_r = 8;
    o.total_steps = 10;
    assert_int_equal(lg_adapters_attach(m, &o, &ad), -1); /* target_r > init_r */
    print_message("error: %s\n", lg_last_error());
    o.target_r = 2;
    o.tinit = 6;
    o.tfinal = 4;
    assert_int_equal(lg_adapters_attach(m, &o, &ad), -1);
    print_message("error: %s\n", lg_last_error());
    o.tinit = 2;
    o.use_dora = 1;
    assert_int_equal(lg_adapters_attach(m, &o, &ad), -1);
    lg_model_free(m);
}

/* ------------------------------------------------------------------------------------------ */
/* PEFT export                                                                                */

static cJSON *read_config(const char *dir) {
    char *p = lg_path_join(dir, "adapter_config.json"), *txt;
    size_t len;
    assert_int_equal(lg_read_file(p, &txt, &len), 0);
    cJSON *j = cJSON_Parse(txt);
    assert_non_null(j);
    free(txt);
    free(p);
    return j;
}

static void rm_dir(char *dir) {
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
    free(dir);
}

static void test_save_peft_gpt2(void **state) {
    (void)state;
    lg_model *m = frozen_model(LG_ARCH_GPT2, 101);
    lg_lora_opts o = opts_for("c_attn,c_proj", 4);
    o.alpha = 16;
    o.dropout = 0.05f;
    lg_adapters *ad;
    assert_int_equal(lg_adapters_attach(m, &o, &ad), 0);
    randomise(ad, 2);
    char *dir = lg_test_tmpdir();
    char sub[600];
    snprintf(sub, sizeof sub, "%s/adapter", dir); /* created */
    assert_int_equal(lg_adapters_save_peft(ad, sub, "openai-community/gpt2"), 0);
    char *stp = lg_path_join(sub, "adapter_model.safetensors");
    lg_safetensors *st;
    assert_int_equal(lg_st_open(stp, &st), 0);
    assert_int_equal(lg_st_count(st), 2 * 3 * 2);
    for (int i = 0; i < lg_adapters_count(ad); i++) {
        lg_lora *l = lg_adapters_get(ad, i);
        char key[256];
        snprintf(key, sizeof key, "base_model.model.%s.lora_A.weight", l->lin->name);
        const lg_st_tensor *ta = lg_st_find(st, key);
        assert_non_null(ta);
        assert_int_equal(ta->dtype, LG_DT_F32);
        assert_int_equal(ta->ndim, 2);
        assert_int_equal(ta->shape[0], 4);
        assert_int_equal(ta->shape[1], l->in); /* Conv1D: same (r, in) as Linear */
        assert_memory_equal(ta->data, l->A, (size_t)4 * l->in * sizeof(float));
        snprintf(key, sizeof key, "base_model.model.%s.lora_B.weight", l->lin->name);
        const lg_st_tensor *tb = lg_st_find(st, key);
        assert_non_null(tb);
        assert_int_equal(tb->shape[0], l->out);
        assert_int_equal(tb->shape[1], 4);
        assert_memory_equal(tb->data, l->B, (size_t)l->out * 4 * sizeof(float));
    }
    assert_non_null(lg_st_find(st, "base_model.model.transformer.h.1.mlp.c_proj.lora_B.weight"));
    lg_st_close(st);
    free(stp);
    cJSON *j = read_config(sub);
    assert_string_equal(cJSON_GetObjectItem(j, "peft_type")->valuestring, "LORA");
    assert_string_equal(cJSON_GetObjectItem(j, "task_type")->valuestring, "CAUSAL_LM");
    assert_string_equal(cJSON_GetObjectItem(j, "base_model_name_or_path")->valuestring, "openai-community/gpt2");
    assert_string_equal(cJSON_GetObjectItem(j, "bias")->valuestring, "none");
    assert_int_equal(cJSON_GetObjectItem(j, "r")->valueint, 4);
    assert_float_equal(cJSON_GetObjectItem(j, "lora_alpha")->valuedouble, 16.0, 0);
    assert_float_equal(cJSON_GetObjectItem(j, "lora_dropout")->valuedouble, 0.05, 1e-7);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(j, "fan_in_fan_out")));
    assert_true(cJSON_IsFalse(cJSON_GetObjectItem(j, "use_rslora")));
    assert_true(cJSON_IsFalse(cJSON_GetObjectItem(j, "use_dora")));
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(j, "inference_mode")));
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(j, "init_lora_weights")));
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(j, "modules_to_save")));
    assert_true(cJSON_IsObject(cJSON_GetObjectItem(j, "rank_pattern")));
    assert_true(cJSON_IsObject(cJSON_GetObjectItem(j, "alpha_pattern")));
    cJSON *tm = cJSON_GetObjectItem(j, "target_modules");
    assert_int_equal(cJSON_GetArraySize(tm), 2);
    assert_string_equal(cJSON_GetArrayItem(tm, 0)->valuestring, "c_attn");
    assert_string_equal(cJSON_GetArrayItem(tm, 1)->valuestring, "c_proj");
    cJSON_Delete(j);
    lg_adapters_free(ad);
    rm_dir(dir);
    lg_model_free(m);
}

static void test_save_peft_dora_all_linear(void **state) {
    (void)state;
    lg_model *m = frozen_model(LG_ARCH_LLAMA, 102);
    lg_lora_opts o = opts_for("all-linear", 2);
    o.use_dora = 1;
    o.use_rslora = 1;
    lg_adapters *ad;
    assert_int_equal(lg_adapters_attach(m, &o, &ad), 0);
    randomise(ad, 3);
    char *dir = lg_test_tmpdir();
    assert_int_equal(lg_adapters_save_peft(ad, dir, NULL), 0);
    char *stp = lg_path_join(dir, "adapter_model.safetensors");
    lg_safetensors *st;
    assert_int_equal(lg_st_open(stp, &st), 0);
    assert_int_equal(lg_st_count(st), 14 * 3);
    for (int i = 0; i < lg_adapters_count(ad); i++) {
        lg_lora *l = lg_adapters_get(ad, i);
        char key[256];
        snprintf(key, sizeof key, "base_model.model.%s.lora_magnitude_vector", l->lin->name);
        const lg_st_tensor *t = lg_st_find(st, key);
        assert_non_null(t);
        assert_int_equal(t->ndim, 1);
        assert_int_equal(t->shape[0], l->out);
        assert_memory_equal(t->data, l->mag, (size_t)l->out * sizeof(float));
    }
    lg_st_close(st);
    free(stp);
    cJSON *j = read_config(dir);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(j, "use_dora")));
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(j, "use_rslora")));
    assert_true(cJSON_IsFalse(cJSON_GetObjectItem(j, "fan_in_fan_out")));
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(j, "base_model_name_or_path")));
    cJSON *tm = cJSON_GetObjectItem(j, "target_modules");
    assert_int_equal(cJSON_GetArraySize(tm), 7); /* all-linear expanded to leaf names */
    const char *want[7] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
    for (int w = 0; w < 7; w++) {
        int found = 0;
        for (int i = 0; i < 7; i++) found |= !strcmp(cJSON_GetArrayItem(tm, i)->valuestring, want[w]);
        assert_true(found);
    }
    cJSON_Delete(j);
    lg_adapters_free(ad);
    rm_dir(dir);
    lg_model_free(m);
}

/* The exported adapter, applied as PEFT does (W + lora_alpha/r' B'A', or / sqrt r' under rsLoRA),
 * must give the effective weight the model trains with. `orig` holds the weights it applies to
 * (before attach), NULL for the model's current ones. */
static double export_error(lg_adapters *ad, float **orig, const char *dir, int *r_out, double *alpha_out) {
    cJSON *j = read_config(dir);
    int re = cJSON_GetObjectItem(j, "r")->valueint;
    double alpha = cJSON_GetObjectItem(j, "lora_alpha")->valuedouble;
    int rs = cJSON_IsTrue(cJSON_GetObjectItem(j, "use_rslora"));
    cJSON_Delete(j);
    double s2 = rs ? alpha / sqrt((double)re) : alpha / re;
    char *stp = lg_path_join(dir, "adapter_model.safetensors");
    lg_safetensors *st;
    assert_int_equal(lg_st_open(stp, &st), 0);
    double worst = 0;
    for (int i = 0; i < lg_adapters_count(ad); i++) {
        lg_lora *l = lg_adapters_get(ad, i);
        char key[256];
        snprintf(key, sizeof key, "base_model.model.%s.lora_A.weight", l->lin->name);
        const lg_st_tensor *ta = lg_st_find(st, key);
        snprintf(key, sizeof key, "base_model.model.%s.lora_B.weight", l->lin->name);
        const lg_st_tensor *tb = lg_st_find(st, key);
        assert_non_null(ta);
        assert_non_null(tb);
        assert_int_equal(ta->shape[0], re);
        assert_int_equal(tb->shape[1], re);
        const float *A2 = ta->data, *B2 = tb->data;
        for (int row = 0; row < l->out; row++)
            for (int c = 0; c < l->in; c++) {
                double eff = l->lin->w->data[row * l->in + c];
                double ex = orig ? orig[i][row * l->in + c] : l->lin->w->data[row * l->in + c];
                for (int k = 0; k < l->r; k++) {
                    double e = l->E ? (l->rank_mask[k] ? l->E[k] : 0.0) : 1.0;
                    eff += l->scale * (double)l->B[row * l->r + k] * e * l->A[k * l->in + c];
                }
                for (int k = 0; k < re; k++) ex += s2 * (double)B2[row * re + k] * A2[k * l->in + c];
                worst = fmax(worst, fabs(eff - ex));
            }
    }
    lg_st_close(st);
    free(stp);
    *r_out = re;
    *alpha_out = alpha;
    return worst;
}

static void export_case(lg_lora_opts o, int expect_r, double expect_alpha, const char *what) {
    lg_model *m = frozen_model(LG_ARCH_LLAMA, 111);
    lg_adapters *ad;
    /* the weights of the targets before attach (PiSSA rewrites them) */
    lg_lora_opts probe = o;
    probe.init = LG_INIT_NONE;
    probe.adalora = 0;
    assert_int_equal(lg_adapters_attach(m, &probe, &ad), 0);
    int n = lg_adapters_count(ad);
    float **orig = calloc((size_t)n, sizeof(float *));
    for (int i = 0; i < n; i++) {
        lg_lora *l = lg_adapters_get(ad, i);
        orig[i] = malloc((size_t)l->out * l->in * sizeof(float));
        memcpy(orig[i], l->lin->w->data, (size_t)l->out * l->in * sizeof(float));
    }
    lg_adapters_free(ad);
    assert_int_equal(lg_adapters_attach(m, &o, &ad), 0);
    lg_opt_tensor *t;
    int nt;
    assert_int_equal(lg_adapters_opt_tensors(ad, 4.0f, &t, &nt), 0);
    if (o.adalora) {
        /* give E a value and mask some ranks, then train a little */
        lg_rng r;
        lg_rng_seed(&r, 2);
        for (int i = 0; i < n; i++) {
            lg_lora *l = lg_adapters_get(ad, i);
            fill(l->E, l->r, 1.0f, &r);
            l->rank_mask[i % l->r] = 0;
        }
    }
    if (o.init == LG_INIT_PISSA) {
        /* --save-init: the initialised adapter as it is (rank r, alpha as given), on the residual */
        char *idir = lg_test_tmpdir();
        assert_int_equal(lg_adapters_save_peft_init(ad, idir, "tiny"), 0);
        int ri;
        double ai;
        double e0 = export_error(ad, NULL, idir, &ri, &ai);
        print_message("%s init export: r = %d, lora_alpha = %.9g, max |W_res + sBA - (W_res + s'B'A')| = %.2e\n", what,
                      ri, ai, e0);
        assert_int_equal(ri, o.r);
        assert_float_equal(ai, o.alpha, 0);
        assert_true(e0 < 1e-6);
        rm_dir(idir);
    }
    train_steps(m, ad, t, nt, 3, 2e-2f, NULL, NULL);
    char *dir = lg_test_tmpdir();
    assert_int_equal(lg_adapters_save_peft(ad, dir, "tiny"), 0);
    int re;
    double alpha;
    double err = export_error(ad, orig, dir, &re, &alpha);
    print_message("%s export: r' = %d, lora_alpha' = %.9g, max |W_orig + s'B'A' - (W + sBA)| = %.2e\n", what, re,
                  alpha, err);
    assert_int_equal(re, expect_r);
    assert_float_equal(alpha, expect_alpha, 1e-6 * expect_alpha);
    assert_true(err < 1e-5);
    for (int i = 0; i < n; i++) free(orig[i]);
    free(orig);
    free(t);
    lg_adapters_free(ad);
    rm_dir(dir);
    lg_model_free(m);
}

static void test_export_relative_and_adalora(void **state) {
    (void)state;
    lg_lora_opts o = opts_for("q_proj,up_proj,down_proj", 3);
    o.alpha = 6;
    export_case(o, 3, 6.0, "lora");
    o.init = LG_INIT_PISSA;
    export_case(o, 6, 12.0, "pissa");
    o.use_rslora = 1;
    export_case(o, 6, 6.0 * sqrt(2.0), "pissa + rslora");
    o = opts_for("q_proj,up_proj,down_proj", 4);
    o.adalora = 1;
    o.init = LG_INIT_ADALORA;
    o.total_steps = 10;
    o.target_r = 2;
    o.alpha = 8;
    export_case(o, 4, 8.0 * 4 / (4 + 1e-5), "adalora");
}

/* ------------------------------------------------------------------------------------------ */
/* load back, merge, llama2.c row order                                                      */

/* Train (so that B differs from B0), save, load onto a fresh ORIGINAL model: the same loss. */
static void load_case(lg_config c, lg_lora_opts o, const char *what) {
    lg_model *m = frozen_model_cfg(c, 121);
    lg_adapters *ad;
    assert_int_equal(lg_adapters_attach(m, &o, &ad), 0);
    if (!o.adalora && o.init != LG_INIT_PISSA) randomise_sd(ad, 5, 0.2f);
    if (o.adalora) {
        lg_rng r;
        lg_rng_seed(&r, 6);
        for (int i = 0; i < lg_adapters_count(ad); i++) {
            lg_lora *l = lg_adapters_get(ad, i);
            fill(l->E, l->r, 1.0f, &r);
            l->rank_mask[(i + 1) % l->r] = 0;
        }
    }
    lg_opt_tensor *t;
    int nt;
    assert_int_equal(lg_adapters_opt_tensors(ad, 1.0f, &t, &nt), 0);
    train_steps(m, ad, t, nt, 3, 1e-2f, NULL, NULL);
    free(t);
    lg_batch b;
    lg_test_random_batch(&b, 2, 6, c.vocab_size, 17);
    double l1 = loss_of(m, &b);
    char *dir = lg_test_tmpdir();
    assert_int_equal(lg_adapters_save_peft(ad, dir, "tiny"), 0);
    lg_model *m2 = frozen_model_cfg(c, 121);
    lg_adapters *ad2;
    assert_int_equal(lg_adapters_load_peft(m2, dir, &ad2), 0);
    assert_int_equal(lg_adapters_count(ad2), lg_adapters_count(ad));
    double l2 = loss_of(m2, &b);
    print_message("%s: trained loss %.8f, reloaded onto the original base %.8f\n", what, l1, l2);
    assert_true(fabs(l1 - l2) < 1e-5);
    if (!o.adalora && o.init != LG_INIT_PISSA) assert_true(l1 == l2);
    lg_adapters_free(ad2);
    lg_adapters_free(ad);
    lg_model_free(m2);
    lg_model_free(m);
    lg_test_free_batch(&b);
    rm_dir(dir);
}

static void test_load_peft_roundtrip(void **state) {
    (void)state;
    lg_lora_opts o = opts_for("all-linear", 3);
    load_case(lg_test_tiny_config(LG_ARCH_LLAMA, 23, 2), o, "lora llama");
    o = opts_for("c_attn,c_proj", 3);
    o.use_dora = 1;
    o.use_rslora = 1;
    load_case(lg_test_tiny_config(LG_ARCH_GPT2, 23, 2), o, "dora+rslora gpt2");
    o = opts_for("all-linear", 3);
    o.init = LG_INIT_PISSA;
    o.use_dora = 1;
    load_case(lg_test_tiny_config(LG_ARCH_LLAMA, 23, 2), o, "pissa+dora llama (rank-2r export)");
    o = opts_for("q_proj,v_proj,down_proj", 4);
    o.adalora = 1;
    o.total_steps = 10;
    o.target_r = 2;
    load_case(lg_test_tiny_config(LG_ARCH_LLAMA, 23, 2), o, "adalora llama (as plain LoRA)");
}

/* A llama2.c model keeps q/k rows interleaved; the adapter must follow lg_model_save_hf's permutation. */
static void test_interleaved_rows(void **state) {
    (void)state;
    lg_config c = lg_test_tiny_config(LG_ARCH_LLAMA, 23, 2);
    c.rope_style = LG_ROPE_INTERLEAVED;
    lg_model *m = frozen_model_cfg(c, 131);
    lg_lora_opts o = opts_for("q_proj,k_proj,v_proj", 3);
    o.use_dora = 1;
    lg_adapters *ad;
    assert_int_equal(lg_adapters_attach(m, &o, &ad), 0);
    randomise_sd(ad, 7, 0.3f);
    lg_batch b;
    lg_test_random_batch(&b, 2, 6, c.vocab_size, 18);
    double l1 = loss_of(m, &b);
    char *dir = lg_test_tmpdir(), *hf = lg_test_tmpdir();
    assert_int_equal(lg_adapters_save_peft(ad, dir, "tiny"), 0);
    assert_int_equal(lg_model_save_hf(m, hf, "float32"), 0); /* the base only: adapters are not in it */
    lg_model *h;
    assert_int_equal(lg_model_load(hf, NULL, &h), 0);
    assert_int_equal(lg_model_config(h)->rope_style, LG_ROPE_HALF);
    assert_int_equal(lg_model_set_trainable(h, want_none, NULL), 0);
    assert_int_equal(lg_model_plan(h, 2, 6, 1), 0);
    lg_adapters *ah;
    assert_int_equal(lg_adapters_load_peft(h, dir, &ah), 0);
    double l2 = loss_of(h, &b);
    /* and back onto the interleaved original */
    lg_model *m3 = frozen_model_cfg(c, 131);
    lg_adapters *a3;
    assert_int_equal(lg_adapters_load_peft(m3, dir, &a3), 0);
    double l3 = loss_of(m3, &b);
    print_message("interleaved: trained %.8f, on the HF conversion %.8f, on the llama2.c original %.8f\n", l1, l2, l3);
    assert_true(fabs(l1 - l2) < 1e-5);
    assert_true(l1 == l3);
    lg_adapters_free(a3);
    lg_adapters_free(ah);
    lg_adapters_free(ad);
    lg_model_free(m3);
    lg_model_free(h);
    lg_model_free(m);
    lg_test_free_batch(&b);
    rm_dir(dir);
    rm_dir(hf);
}

static void test_merge(void **state) {
    (void)state;
    for (int k = 0; k < 3; k++) {
        lg_model *m = frozen_model(k == 1 ? LG_ARCH_GPT2 : LG_ARCH_LLAMA, 141);
        lg_lora_opts o = opts_for("all-linear", 3);
        if (k == 1) o.use_dora = 1;
        if (k == 2) o.adalora = 1, o.total_steps = 10, o.target_r = 1;
        lg_adapters *ad;
        assert_int_equal(lg_adapters_attach(m, &o, &ad), 0);
        randomise_sd(ad, 8, 0.2f);
        if (k == 2) lg_adapters_get(ad, 3)->rank_mask[1] = 0;
        lg_batch b;
        lg_test_random_batch(&b, 2, 6, 23, 19);
        double l1 = loss_of(m, &b);
        lg_adapters_merge_and_free(ad);
        for (int i = 0; i < lg_model_n_linears(m); i++) assert_null(lg_model_linear(m, i)->adapter);
        double l2 = loss_of(m, &b);
        print_message("merge %s: %.8f with adapters, %.8f merged\n", k == 0 ? "lora" : k == 1 ? "dora" : "adalora", l1, l2);
        assert_true(fabs(l1 - l2) < 1e-5);
        lg_test_free_batch(&b);
        lg_model_free(m);
    }
}

static void test_load_errors(void **state) {
    (void)state;
    lg_model *m = frozen_model(LG_ARCH_LLAMA, 151);
    lg_adapters *ad;
    char *dir = lg_test_tmpdir();
    assert_int_equal(lg_adapters_load_peft(m, dir, &ad), -1); /* nothing there */
    print_message("error: %s\n", lg_last_error());
    /* a key for a module the model does not have */
    float z[16 * 2] = {0};
    lg_st_item it[2] = {{"base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight", LG_DT_F32, 2, {2, 16}, z},
                        {"base_model.model.model.layers.9.self_attn.q_proj.lora_B.weight", LG_DT_F32, 2, {16, 2}, z}};
    char *p = lg_path_join(dir, "adapter_model.safetensors");
    assert_int_equal(lg_st_write(p, it, 2, NULL, 0), 0);
    char *c = lg_path_join(dir, "adapter_config.json");
    const char *cfg = "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4}";
    assert_int_equal(lg_write_file_atomic(c, cfg, strlen(cfg)), 0);
    assert_int_equal(lg_adapters_load_peft(m, dir, &ad), -1);
    print_message("error: %s\n", lg_last_error());
    assert_non_null(strstr(lg_last_error(), "layers.9.self_attn.q_proj"));
    /* a shape that disagrees */
    it[0].name = "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight";
    it[1].name = "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight";
    it[0].shape[1] = 15;
    assert_int_equal(lg_st_write(p, it, 2, NULL, 0), 0);
    assert_int_equal(lg_adapters_load_peft(m, dir, &ad), -1);
    print_message("error: %s\n", lg_last_error());
    for (int i = 0; i < lg_model_n_linears(m); i++) assert_null(lg_model_linear(m, i)->adapter);
    const char *cfg2 = "{\"peft_type\": \"ADALORA\", \"r\": 2, \"lora_alpha\": 4}";
    assert_int_equal(lg_write_file_atomic(c, cfg2, strlen(cfg2)), 0);
    assert_int_equal(lg_adapters_load_peft(m, dir, &ad), -1);
    assert_non_null(strstr(lg_last_error(), "ADALORA"));
    free(p), free(c);
    rm_dir(dir);
    lg_model_free(m);
}

/* Resume: 10 steps straight == 5 steps, checkpoint (parameters, AdamW moments, adapter state),
 * fresh process-like rebuild, 5 more steps -- bit-identical losses (AdaLoRA with dropout). */
typedef struct {
    lg_model *m;
    lg_adapters *ad;
    lg_opt_tensor *t;
    int nt;
    lg_adamw opt;
} run_state;

static void run_open(run_state *s, const lg_lora_opts *o) {
    s->m = frozen_model(LG_ARCH_LLAMA, 161);
    assert_int_equal(lg_adapters_attach(s->m, o, &s->ad), 0);
    assert_int_equal(lg_adapters_opt_tensors(s->ad, 2.0f, &s->t, &s->nt), 0);
    lg_adamw_init(&s->opt, s->t, s->nt, 0.9f, 0.999f, 1e-8f);
}

static void run_close(run_state *s) {
    lg_adamw_free(&s->opt);
    free(s->t);
    lg_adapters_free(s->ad);
    lg_model_free(s->m);
}

static float run_step(run_state *s, long step) {
    lg_batch b;
    lg_test_random_batch(&b, 2, 6, 23, 500 + (uint64_t)step);
    double w;
    float l = lg_model_forward(s->m, &b, &w);
    lg_adapters_zero_grads(s->ad);
    lg_model_backward(s->m, &b, (float)(1.0 / w));
    lg_adalora_step(s->ad, step);
    lg_adamw_step(&s->opt, 2e-2f);
    lg_test_free_batch(&b);
    return l;
}

static void test_resume_state(void **state) {
    (void)state;
    lg_lora_opts o = opts_for("all-linear", 4);
    o.adalora = 1;
    o.total_steps = 10;
    o.tinit = 1;
    o.tfinal = 6; /* the final phase starts at step 4, before the checkpoint */
    o.target_r = 1;
    o.dropout = 0.2f;
    float straight[10], resumed[10];
    run_state s;
    run_open(&s, &o);
    for (long k = 0; k < 10; k++) straight[k] = run_step(&s, k);
    run_close(&s);

    run_open(&s, &o);
    for (long k = 0; k < 5; k++) resumed[k] = run_step(&s, k);
    /* checkpoint */
    int nt = s.nt;
    float **data = calloc((size_t)nt, sizeof(float *)), **mm = calloc((size_t)nt, sizeof(float *)),
          **vv = calloc((size_t)nt, sizeof(float *));
    for (int i = 0; i < nt; i++) {
        size_t bytes = (size_t)s.t[i].n * sizeof(float);
        data[i] = malloc(bytes), mm[i] = malloc(bytes), vv[i] = malloc(bytes);
        memcpy(data[i], s.t[i].data, bytes);
        memcpy(mm[i], s.t[i].m, bytes);
        memcpy(vv[i], s.t[i].v, bytes);
    }
    long opt_step = s.opt.step;
    size_t nb = lg_adapters_state_bytes(s.ad);
    void *blob = malloc(nb);
    lg_adapters_state_save(s.ad, blob);
    run_close(&s);
    /* restore into fresh objects */
    run_open(&s, &o);
    assert_int_equal(s.nt, nt);
    for (int i = 0; i < nt; i++) {
        size_t bytes = (size_t)s.t[i].n * sizeof(float);
        memcpy(s.t[i].data, data[i], bytes);
        memcpy(s.t[i].m, mm[i], bytes);
        memcpy(s.t[i].v, vv[i], bytes);
        free(data[i]), free(mm[i]), free(vv[i]);
    }
    free(data), free(mm), free(vv);
    s.opt.step = opt_step;
    assert_int_equal(lg_adapters_state_load(s.ad, blob, nb - 1), -1);
    assert_int_equal(lg_adapters_state_load(s.ad, blob, nb), 0);
    free(blob);
    for (long k = 5; k < 10; k++) resumed[k] = run_step(&s, k);
    run_close(&s);
    for (int k = 0; k < 10; k++) print_message("step %d: straight %.8f resumed %.8f\n", k, straight[k], resumed[k]);
    assert_memory_equal(straight, resumed, sizeof straight);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layer_grad_lora),
        cmocka_unit_test(test_layer_grad_dora),
        cmocka_unit_test(test_layer_grad_adalora),
        cmocka_unit_test(test_model_grad_lora),
        cmocka_unit_test(test_model_grad_adalora_dora),
        cmocka_unit_test(test_step0_every_method),
        cmocka_unit_test(test_init_distributions),
        cmocka_unit_test(test_frozen_base_and_counts),
        cmocka_unit_test(test_bf16_frozen_base),
        cmocka_unit_test(test_adapter_threads_agree),
        cmocka_unit_test(test_blocked_logits),
        cmocka_unit_test(test_loraplus_lr_mult),
        cmocka_unit_test(test_targets),
        cmocka_unit_test(test_dropout),
        cmocka_unit_test(test_adalora_orth_grad),
        cmocka_unit_test(test_adalora_budget),
        cmocka_unit_test(test_adalora_bad_schedule),
        cmocka_unit_test(test_save_peft_gpt2),
        cmocka_unit_test(test_save_peft_dora_all_linear),
        cmocka_unit_test(test_export_relative_and_adalora),
        cmocka_unit_test(test_load_peft_roundtrip),
        cmocka_unit_test(test_interleaved_rows),
        cmocka_unit_test(test_merge),
        cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_resume_state),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
