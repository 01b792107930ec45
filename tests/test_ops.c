/* test_ops.c — the CPU kernels of ops.h: every backward against central finite differences,
 * forwards against naive double-precision references, plus the properties the model relies
 * on (causality, RoPE layouts, accumulation, NULL gradients, huge logits). */
#include "testutil.h"

#include "ops/ops.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

static const lg_ops *OPS;

/* Finite-difference check: step h = FD_H * max(1, |x|), central difference of the float
 * kernel evaluated at x +- h with the loss summed in double; per element
 * |a - n| / (|a| + |n| + FD_FLOOR) must stay below FD_TOL. */
#define FD_H 1e-2f
#define FD_FLOOR 1e-3
#define FD_TOL 2e-2

/* ---- helpers -------------------------------------------------------------------------- */

static float *randn(lg_rng *r, long n, float scale) {
    float *p = lg_malloc((size_t)n * sizeof(float));
    for (long i = 0; i < n; i++) p[i] = scale * lg_rng_normal(r);
    return p;
}
static float *zeros(long n) { return lg_calloc((size_t)n, sizeof(float)); }
static float *dup_f(const float *a, long n) {
    float *p = lg_malloc((size_t)n * sizeof(float));
    memcpy(p, a, (size_t)n * sizeof(float));
    return p;
}
static double dot_d(const float *a, const float *b, long n) {
    double s = 0.0;
    for (long i = 0; i < n; i++) s += (double)a[i] * (double)b[i];
    return s;
}
static double max_abs_diff(const float *a, const float *b, long n) {
    double m = 0.0;
    for (long i = 0; i < n; i++) m = fmax(m, fabs((double)a[i] - (double)b[i]));
    return m;
}
static int all_finite(const float *a, long n) {
    for (long i = 0; i < n; i++)
        if (!isfinite(a[i])) return 0;
    return 1;
}

typedef double (*loss_fn)(void *ctx);

/* Compare grad (analytic dL/dparam) with central differences of loss() over param[0..n),
 * checking at most maxn evenly spread elements. */
static void fd_check(const char *what, float *param, long n, const float *grad, loss_fn loss,
                     void *ctx, long maxn) {
    long step = n > maxn ? (n + maxn - 1) / maxn : 1;
    double worst = 0.0, biggest = 0.0;
    long worst_i = -1;
    for (long i = (step > 1 ? step / 3 : 0); i < n; i += step) {
        float x0 = param[i], h = FD_H * fmaxf(1.0f, fabsf(x0));
        float xp = x0 + h, xm = x0 - h;
        param[i] = xp;
        double lp = loss(ctx);
        param[i] = xm;
        double lm = loss(ctx);
        param[i] = x0;
        double num = (lp - lm) / ((double)xp - (double)xm);
        double a = grad[i];
        double err = fabs(a - num) / (fabs(a) + fabs(num) + FD_FLOOR);
        biggest = fmax(biggest, fabs(num));
        if (err > worst) {
            worst = err;
            worst_i = i;
        }
    }
    if (worst >= FD_TOL || getenv("LG_FD_VERBOSE"))
        print_message("%s: worst rel err %.3g at %ld (analytic %g)\n", what, worst, worst_i,
                      worst_i >= 0 ? grad[worst_i] : 0.0);
    assert_true(biggest > 1e-3); /* the check must see a real gradient */
    assert_true(worst < FD_TOL);
}

/* ---- gemm / linear ----------------------------------------------------------------------- */

static void test_gemm_vs_naive(void **state) {
    (void)state;
    lg_rng r;
    lg_rng_seed(&r, 1);
    int M = 7, N = 9, K = 5, pad = 3;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            int arows = ta ? K : M, acols = ta ? M : K, brows = tb ? N : K, bcols = tb ? K : N;
            int lda = acols + pad, ldb = bcols + pad, ldc = N + pad;
            float *A = randn(&r, (long)arows * lda, 1.0f), *B = randn(&r, (long)brows * ldb, 1.0f);
            float *C = randn(&r, (long)M * ldc, 1.0f), *C0 = dup_f(C, (long)M * ldc);
            OPS->gemm(OPS, ta, tb, M, N, K, 0.5f, A, lda, B, ldb, 2.0f, C, ldc);
            for (int i = 0; i < M; i++) {
                for (int j = 0; j < N; j++) {
                    double s = 0.0;
                    for (int p = 0; p < K; p++) {
                        double a = ta ? A[p * lda + i] : A[i * lda + p];
                        double b = tb ? B[j * ldb + p] : B[p * ldb + j];
                        s += a * b;
                    }
                    double want = 0.5 * s + 2.0 * C0[i * ldc + j];
                    assert_true(fabs(C[i * ldc + j] - want) < 1e-4 * (1.0 + fabs(want)));
                }
                for (int j = N; j < ldc; j++) assert_true(C[i * ldc + j] == C0[i * ldc + j]);
            }
            free(A), free(B), free(C), free(C0);
        }
}

static void test_linear_forward_vs_naive(void **state) {
    (void)state;
    lg_rng r;
    lg_rng_seed(&r, 2);
    int N = 13, in = 17, out = 11;
    float *x = randn(&r, (long)N * in, 1.0f), *W = randn(&r, (long)out * in, 1.0f);
    float *b = randn(&r, out, 1.0f), *y = zeros((long)N * out);
    for (int withb = 0; withb < 2; withb++) {
        OPS->linear_forward(OPS, y, x, lg_weight_f32(W), withb ? b : NULL, N, in, out);
        for (int i = 0; i < N; i++)
            for (int o = 0; o < out; o++) {
                double s = withb ? b[o] : 0.0;
                for (int j = 0; j < in; j++) s += (double)x[i * in + j] * W[o * in + j];
                assert_true(fabs(y[i * out + o] - s) < 1e-4 * (1.0 + fabs(s)));
            }
    }
    free(x), free(W), free(b), free(y);
}

typedef struct {
    float *x, *W, *b, *g, *y;
    int N, in, out;
} lin_ctx;
static double lin_loss(void *p) {
    lin_ctx *c = p;
    OPS->linear_forward(OPS, c->y, c->x, lg_weight_f32(c->W), c->b, c->N, c->in, c->out);
    return dot_d(c->g, c->y, (long)c->N * c->out);
}

static void run_linear_grad(int N, int in, int out, long maxn) {
    lg_rng r;
    lg_rng_seed(&r, 3);
    lin_ctx c = {randn(&r, (long)N * in, 1.0f), randn(&r, (long)out * in, 1.0f),
                 randn(&r, out, 1.0f), randn(&r, (long)N * out, 1.0f), zeros((long)N * out),
                 N, in, out};
    float *dx = zeros((long)N * in), *dW = zeros((long)out * in), *db = zeros(out);
    OPS->linear_backward(OPS, dx, dW, db, c.g, c.x, lg_weight_f32(c.W), N, in, out, 1.0f);
    fd_check("linear dx", c.x, (long)N * in, dx, lin_loss, &c, maxn);
    fd_check("linear dW", c.W, (long)out * in, dW, lin_loss, &c, maxn);
    fd_check("linear db", c.b, out, db, lin_loss, &c, maxn);
    free(c.x), free(c.W), free(c.b), free(c.g), free(c.y), free(dx), free(dW), free(db);
}
static void test_linear_grad(void **state) {
    (void)state;
    run_linear_grad(6, 5, 4, 1000);
    run_linear_grad(400, 20, 100, 120); /* db: threaded column blocks, a partial last block */
}

/* Backward accumulates, and each NULL output is skipped without changing the others. */
static void test_linear_backward_accum_null(void **state) {
    (void)state;
    lg_rng r;
    lg_rng_seed(&r, 4);
    int N = 9, in = 7, out = 5;
    float *x = randn(&r, N * in, 1.0f), *W = randn(&r, out * in, 1.0f);
    float *dy = randn(&r, N * out, 1.0f);
    float *dx = zeros(N * in), *dW = zeros(out * in), *db = zeros(out);
    OPS->linear_backward(OPS, dx, dW, db, dy, x, lg_weight_f32(W), N, in, out, 1.0f);
    float *bx = randn(&r, N * in, 1.0f), *bW = randn(&r, out * in, 1.0f);
    float *bb = randn(&r, out, 1.0f);
    float *ax = dup_f(bx, N * in), *aW = dup_f(bW, out * in), *ab = dup_f(bb, out);
    OPS->linear_backward(OPS, ax, NULL, NULL, dy, x, lg_weight_f32(W), N, in, out, 1.0f);
    OPS->linear_backward(OPS, NULL, aW, NULL, dy, x, lg_weight_f32(W), N, in, out, 1.0f);
    OPS->linear_backward(OPS, NULL, NULL, ab, dy, x, lg_weight_f32(W), N, in, out, 1.0f);
    OPS->linear_backward(OPS, NULL, NULL, NULL, dy, x, lg_weight_f32(W), N, in, out, 1.0f);
    for (int i = 0; i < N * in; i++) assert_true(fabsf(ax[i] - (bx[i] + dx[i])) < 1e-5f);
    for (int i = 0; i < out * in; i++) assert_true(fabsf(aW[i] - (bW[i] + dW[i])) < 1e-5f);
    for (int i = 0; i < out; i++) assert_true(fabsf(ab[i] - (bb[i] + db[i])) < 1e-5f);
    free(x), free(W), free(dy), free(dx), free(dW), free(db);
    free(bx), free(bW), free(bb), free(ax), free(aW), free(ab);
}

/* ---- embeddings ------------------------------------------------------------------------- */

static void test_embedding(void **state) {
    (void)state;
    lg_rng r;
    lg_rng_seed(&r, 5);
    /* small, then large enough for the threaded path; ids repeat heavily in both */
    int shapes[2][3] = {{10, 6, 4}, {4096, 70, 8}}; /* N, C, V */
    for (int sh = 0; sh < 2; sh++) {
        int N = shapes[sh][0], C = shapes[sh][1], V = shapes[sh][2];
        int *ids = lg_malloc((size_t)N * sizeof(int));
        for (int i = 0; i < N; i++) ids[i] = (int)(lg_rng_u64(&r) % (uint64_t)V);
        float *table = randn(&r, (long)V * C, 1.0f), *out = zeros((long)N * C);
        OPS->embedding_forward(OPS, out, ids, lg_weight_f32(table), N, C);
        for (int i = 0; i < N; i++)
            assert_memory_equal(out + (long)i * C, table + (long)ids[i] * C, C * sizeof(float));
        float *dout = randn(&r, (long)N * C, 1.0f), *dt = randn(&r, (long)V * C, 1.0f);
        double *want = lg_malloc((size_t)V * C * sizeof(double));
        for (long i = 0; i < (long)V * C; i++) want[i] = dt[i];
        for (int i = 0; i < N; i++)
            for (int c = 0; c < C; c++) want[(long)ids[i] * C + c] += dout[(long)i * C + c];
        OPS->embedding_backward(OPS, dt, dout, ids, N, C);
        for (long i = 0; i < (long)V * C; i++) assert_true(fabs(dt[i] - want[i]) < 1e-3);
        free(ids), free(table), free(out), free(dout), free(dt), free(want);
    }
}

typedef struct {
    float *wpe, *base, *out, *g;
    int B, T, C, pos0;
} pos_ctx;
static double pos_loss(void *p) {
    pos_ctx *c = p;
    long n = (long)c->B * c->T * c->C;
    memcpy(c->out, c->base, (size_t)n * sizeof(float));
    OPS->posemb_forward(OPS, c->out, c->wpe, c->B, c->T, c->C, c->pos0);
    return dot_d(c->g, c->out, n);
}

static void test_posemb(void **state) {
    (void)state;
    lg_rng r;
    lg_rng_seed(&r, 6);
    int B = 3, T = 4, C = 5, pos0 = 2, P = 8;
    long n = (long)B * T * C;
    pos_ctx c = {randn(&r, (long)P * C, 1.0f), randn(&r, n, 1.0f), zeros(n), randn(&r, n, 1.0f),
                 B, T, C, pos0};
    pos_loss(&c);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int i = 0; i < C; i++) {
                long k = ((long)b * T + t) * C + i;
                assert_true(c.out[k] == c.base[k] + c.wpe[(pos0 + t) * C + i]);
            }
    float *dwpe = zeros((long)P * C);
    OPS->posemb_backward(OPS, dwpe, c.g, B, T, C, pos0);
    for (int p = 0; p < P; p++) /* rows outside [pos0, pos0+T) untouched */
        if (p < pos0 || p >= pos0 + T)
            for (int i = 0; i < C; i++) assert_true(dwpe[p * C + i] == 0.0f);
    fd_check("posemb dwpe", c.wpe, (long)P * C, dwpe, pos_loss, &c, 1000);
    free(c.wpe), free(c.base), free(c.out), free(c.g), free(dwpe);
}

/* ---- norms ------------------------------------------------------------------------------ */

typedef struct {
    float *x, *w, *b, *g, *out, *mean, *rstd;
    int N, C, layer;
} norm_ctx;
static double norm_loss(void *p) {
    norm_ctx *c = p;
    if (c->layer)
        OPS->layernorm_forward(OPS, c->out, c->mean, c->rstd, c->x, c->w, c->b, c->N, c->C, 1e-5f);
    else
        OPS->rmsnorm_forward(OPS, c->out, c->rstd, c->x, c->w, c->N, c->C, 1e-5f);
    return dot_d(c->g, c->out, (long)c->N * c->C);
}

static void run_norm(int layer, int N, int C, long maxn) {
    lg_rng r;
    lg_rng_seed(&r, 7 + (uint64_t)layer);
    long n = (long)N * C;
    norm_ctx c = {randn(&r, n, 1.5f), randn(&r, C, 1.0f), randn(&r, C, 1.0f), randn(&r, n, 1.0f),
                  zeros(n), zeros(N), zeros(N), N, C, layer};
    for (long i = 0; i < n; i++) c.x[i] += 0.5f; /* non-zero mean matters for LayerNorm */
    norm_loss(&c);
    /* forward against double precision */
    for (int i = 0; i < N; i++) {
        const float *xi = c.x + (long)i * C;
        double m = 0.0, v = 0.0;
        if (layer) {
            for (int k = 0; k < C; k++) m += xi[k];
            m /= C;
        }
        for (int k = 0; k < C; k++) v += (xi[k] - m) * (xi[k] - m);
        double rs = 1.0 / sqrt(v / C + 1e-5);
        assert_true(fabs(c.rstd[i] - rs) < 1e-4 * rs);
        if (layer) assert_true(fabs(c.mean[i] - m) < 1e-5 * (1 + fabs(m)));
        for (int k = 0; k < C; k++) {
            double want = (xi[k] - m) * rs * c.w[k] + (layer ? c.b[k] : 0.0);
            assert_true(fabs(c.out[(long)i * C + k] - want) < 1e-4 * (1 + fabs(want)));
        }
    }
    float *dx = zeros(n), *dw = zeros(C), *db = zeros(C);
    if (layer)
        OPS->layernorm_backward(OPS, dx, dw, db, c.g, c.x, c.w, c.mean, c.rstd, N, C);
    else
        OPS->rmsnorm_backward(OPS, dx, dw, c.g, c.x, c.w, c.rstd, N, C);
    fd_check(layer ? "layernorm dx" : "rmsnorm dx", c.x, n, dx, norm_loss, &c, maxn);
    fd_check(layer ? "layernorm dw" : "rmsnorm dw", c.w, C, dw, norm_loss, &c, maxn);
    if (layer) fd_check("layernorm db", c.b, C, db, norm_loss, &c, maxn);

    /* accumulation and NULL outputs */
    norm_loss(&c); /* restore saved stats */
    float *bx = randn(&r, n, 1.0f), *bw = randn(&r, C, 1.0f), *bb = randn(&r, C, 1.0f);
    float *ax = dup_f(bx, n), *aw = dup_f(bw, C), *ab = dup_f(bb, C);
    if (layer) {
        OPS->layernorm_backward(OPS, ax, NULL, NULL, c.g, c.x, c.w, c.mean, c.rstd, N, C);
        OPS->layernorm_backward(OPS, NULL, aw, NULL, c.g, c.x, c.w, c.mean, c.rstd, N, C);
        OPS->layernorm_backward(OPS, NULL, NULL, ab, c.g, c.x, c.w, c.mean, c.rstd, N, C);
    } else {
        OPS->rmsnorm_backward(OPS, ax, NULL, c.g, c.x, c.w, c.rstd, N, C);
        OPS->rmsnorm_backward(OPS, NULL, aw, c.g, c.x, c.w, c.rstd, N, C);
    }
    for (long i = 0; i < n; i++) assert_true(fabsf(ax[i] - (bx[i] + dx[i])) < 1e-4f);
    for (int i = 0; i < C; i++) assert_true(fabsf(aw[i] - (bw[i] + dw[i])) < 1e-4f);
    if (layer)
        for (int i = 0; i < C; i++) assert_true(fabsf(ab[i] - (bb[i] + db[i])) < 1e-4f);
    free(c.x), free(c.w), free(c.b), free(c.g), free(c.out), free(c.mean), free(c.rstd);
    free(dx), free(dw), free(db), free(bx), free(bw), free(bb), free(ax), free(aw), free(ab);
}
static void test_rmsnorm(void **state) {
    (void)state;
    run_norm(0, 5, 8, 1000);
    run_norm(0, 300, 130, 150); /* threaded rows and column blocks */
}
static void test_layernorm(void **state) {
    (void)state;
    run_norm(1, 5, 8, 1000);
    run_norm(1, 300, 130, 150);
}

/* ---- RoPE --------------------------------------------------------------------------------- */

typedef struct {
    float *x, *g, *out, *cos, *sin;
    int ld, B, T, H, hd, pos0;
    lg_rope_style style;
} rope_ctx;
static double rope_loss(void *p) {
    rope_ctx *c = p;
    OPS->rope_forward(OPS, c->out, c->x, c->ld, c->B, c->T, c->H, c->hd, c->pos0, c->cos, c->sin,
                      c->style);
    /* only the (B,T,H*hd) columns are outputs; padding of out is never written */
    double s = 0.0;
    for (int bt = 0; bt < c->B * c->T; bt++)
        s += dot_d(c->g + (long)bt * c->ld, c->out + (long)bt * c->ld, (long)c->H * c->hd);
    return s;
}

static void test_rope_tables(void **state) {
    (void)state;
    float *cs, *sn;
    int P = 50, hd = 8;
    lg_rope_tables(P, hd, 10000.0f, &cs, &sn);
    assert_true(fabs(cs[1 * 4 + 0] - cos(1.0)) < 1e-6); /* p=1, i=0: angle 1 */
    for (int p = 0; p < P; p++)
        for (int i = 0; i < hd / 2; i++) {
            double a = p * pow(10000.0, -2.0 * i / hd);
            assert_true(fabs(cs[p * 4 + i] - cos(a)) < 1e-6);
            assert_true(fabs(sn[p * 4 + i] - sin(a)) < 1e-6);
        }
    free(cs), free(sn);
}

static void test_rope_grad(void **state) {
    (void)state;
    lg_rng r;
    lg_rng_seed(&r, 9);
    int B = 2, T = 5, H = 3, hd = 8, ld = H * hd + 5, pos0 = 3;
    long n = (long)B * T * ld;
    float *cs, *sn;
    lg_rope_tables(pos0 + T, hd, 10000.0f, &cs, &sn);
    for (int st = 0; st < 2; st++) {
        rope_ctx c = {randn(&r, n, 1.0f), randn(&r, n, 1.0f), zeros(n), cs, sn, ld, B, T, H, hd,
                      pos0, (lg_rope_style)st};
        float *dx = zeros(n);
        OPS->rope_backward(OPS, dx, c.g, ld, B, T, H, hd, pos0, cs, sn, c.style);
        for (int bt = 0; bt < B * T; bt++) /* padding columns are not touched */
            for (int j = H * hd; j < ld; j++) assert_true(dx[(long)bt * ld + j] == 0.0f);
        fd_check(st ? "rope interleaved" : "rope half", c.x, n, dx, rope_loss, &c, 1000);
        /* accumulates */
        float *base = randn(&r, n, 1.0f), *acc = dup_f(base, n);
        OPS->rope_backward(OPS, acc, c.g, ld, B, T, H, hd, pos0, cs, sn, c.style);
        for (long i = 0; i < n; i++) assert_true(fabsf(acc[i] - (base[i] + dx[i])) < 1e-5f);
        free(c.x), free(c.g), free(c.out), free(dx), free(base), free(acc);
    }
    free(cs), free(sn);
}

/* Position 0 is the identity, rotations preserve each head's norm, in place == out of place,
 * and pos0 shifts positions exactly. */
static void test_rope_properties(void **state) {
    (void)state;
    lg_rng r;
    lg_rng_seed(&r, 10);
    int B = 2, T = 6, H = 2, hd = 16, ld = H * hd;
    long n = (long)B * T * ld;
    float *cs, *sn;
    lg_rope_tables(64, hd, 500000.0f, &cs, &sn);
    for (int st = 0; st < 2; st++) {
        lg_rope_style style = (lg_rope_style)st;
        float *x = randn(&r, n, 1.0f), *y = zeros(n), *z = dup_f(x, n);
        OPS->rope_forward(OPS, y, x, ld, B, 1, H, hd, 0, cs, sn, style); /* B rows at position 0 */
        assert_memory_equal(y, x, (size_t)B * ld * sizeof(float));
        OPS->rope_forward(OPS, y, x, ld, B, T, H, hd, 40, cs, sn, style);
        for (int bt = 0; bt < B * T; bt++)
            for (int h = 0; h < H; h++) {
                const float *a = x + (long)bt * ld + h * hd, *b = y + (long)bt * ld + h * hd;
                double na = sqrt(dot_d(a, a, hd)), nb = sqrt(dot_d(b, b, hd));
                assert_true(fabs(na - nb) < 1e-5 * na);
                assert_true(max_abs_diff(a, b, hd) > 1e-3); /* it did rotate something */
            }
        OPS->rope_forward(OPS, z, z, ld, B, T, H, hd, 40, cs, sn, style);
        assert_memory_equal(z, y, (size_t)n * sizeof(float));
        /* token t of a sequence at pos0 = 40 == a one-token sequence at pos0 = 40 + t */
        for (int t = 0; t < T; t++) {
            float one[32];
            OPS->rope_forward(OPS, one, x + (long)t * ld, ld, 1, 1, H, hd, 40 + t, cs, sn, style);
            assert_memory_equal(one, y + (long)t * ld, (size_t)ld * sizeof(float));
        }
        free(x), free(y), free(z);
    }
    free(cs), free(sn);
}

/* llama2.c (interleaved) vs Hugging Face (half) rope: with P mapping interleaved dims to half
 * order (half[j] = inter[2j], half[j + hd/2] = inter[2j+1]), HALF(P x) == P INTERLEAVED(x).
 * This is why converting llama2.c q/k weights permutes their rows by P. */
static void test_rope_half_vs_interleaved(void **state) {
    (void)state;
    lg_rng r;
    lg_rng_seed(&r, 11);
    int B = 1, T = 7, H = 3, hd = 8, ld = H * hd, half = hd / 2;
    long n = (long)B * T * ld;
    float *cs, *sn;
    lg_rope_tables(T, hd, 10000.0f, &cs, &sn);
    float *x = randn(&r, n, 1.0f), *px = zeros(n), *yi = zeros(n), *yh = zeros(n);
    for (int bt = 0; bt < B * T; bt++)
        for (int h = 0; h < H; h++) {
            const float *src = x + (long)bt * ld + h * hd;
            float *dst = px + (long)bt * ld + h * hd;
            for (int j = 0; j < half; j++) {
                dst[j] = src[2 * j];
                dst[j + half] = src[2 * j + 1];
            }
        }
    OPS->rope_forward(OPS, yi, x, ld, B, T, H, hd, 0, cs, sn, LG_ROPE_INTERLEAVED);
    OPS->rope_forward(OPS, yh, px, ld, B, T, H, hd, 0, cs, sn, LG_ROPE_HALF);
    for (int bt = 0; bt < B * T; bt++)
        for (int h = 0; h < H; h++) {
            const float *a = yi + (long)bt * ld + h * hd, *b = yh + (long)bt * ld + h * hd;
            for (int j = 0; j < half; j++) {
                assert_true(a[2 * j] == b[j]);
                assert_true(a[2 * j + 1] == b[j + half]);
            }
        }
    assert_true(max_abs_diff(yi, yh, n) > 1e-2); /* the two styles really differ */
    free(x), free(px), free(yi), free(yh), free(cs), free(sn);
}

/* ---- attention --------------------------------------------------------------------------- */

/* q, k, v either separate buffers with padded rows, or column slices of one fused
 * (N x ld) buffer like GPT-2's c_attn output. Gradients use the same layout. */
typedef struct {
    int B, T, H, KV, hd, fused, pad;
    int ldq, ldk, ldv;
    long nq, nk, nv; /* float counts of each (possibly shared) buffer */
    float *qbuf, *kbuf, *vbuf, *q, *k, *v;
    float *g, *out, *probs;
    const lg_attn_params *ex; /* non-NULL: the attention_ex kernels with these options */
} att_ctx;

static void att_setup(att_ctx *c, lg_rng *r, int B, int T, int H, int KV, int hd, int fused,
                      int pad) {
    memset(c, 0, sizeof *c);
    c->B = B, c->T = T, c->H = H, c->KV = KV, c->hd = hd, c->fused = fused, c->pad = pad;
    long N = (long)B * T;
    if (fused) {
        int ld = (H + 2 * KV) * hd + pad;
        c->ldq = c->ldk = c->ldv = ld;
        c->nq = N * ld;
        c->qbuf = randn(r, c->nq, 1.0f);
        c->q = c->qbuf, c->k = c->qbuf + H * hd, c->v = c->qbuf + (H + KV) * hd;
    } else {
        c->ldq = H * hd + pad, c->ldk = KV * hd + pad, c->ldv = KV * hd + pad;
        c->nq = N * c->ldq, c->nk = N * c->ldk, c->nv = N * c->ldv;
        c->q = c->qbuf = randn(r, c->nq, 1.0f);
        c->k = c->kbuf = randn(r, c->nk, 1.0f);
        c->v = c->vbuf = randn(r, c->nv, 1.0f);
    }
    c->g = randn(r, N * H * hd, 1.0f);
    c->out = zeros(N * H * hd);
    c->probs = zeros((long)B * H * T * T);
}
static void att_free(att_ctx *c) {
    free(c->qbuf), free(c->kbuf), free(c->vbuf), free(c->g), free(c->out), free(c->probs);
}
static void att_forward(att_ctx *c) {
    if (c->ex) {
        OPS->attention_ex_forward(OPS, c->out, c->probs, c->q, c->ldq, c->k, c->ldk, c->v, c->ldv, c->B, c->T, c->H,
                                  c->KV, c->hd, c->ex);
        return;
    }
    OPS->attention_forward(OPS, c->out, c->probs, c->q, c->ldq, c->k, c->ldk, c->v, c->ldv, c->B,
                           c->T, c->H, c->KV, c->hd);
}
static double att_loss(void *p) {
    att_ctx *c = p;
    att_forward(c);
    return dot_d(c->g, c->out, (long)c->B * c->T * c->H * c->hd);
}
/* Gradient buffers shaped like qbuf/kbuf/vbuf; dq/dk/dv point into them. */
static void att_grads(att_ctx *c, float **gq, float **gk, float **gv, float **dq, float **dk,
                      float **dv) {
    *gq = zeros(c->nq);
    *gk = c->fused ? NULL : zeros(c->nk);
    *gv = c->fused ? NULL : zeros(c->nv);
    *dq = *gq;
    *dk = c->fused ? *gq + c->H * c->hd : *gk;
    *dv = c->fused ? *gq + (c->H + c->KV) * c->hd : *gv;
}

/* Double-precision causal attention. */
static void ref_attention(const att_ctx *c, double *out, double *probs) {
    int B = c->B, T = c->T, H = c->H, hd = c->hd, group = c->H / c->KV;
    double scale = 1.0 / sqrt((double)hd), *sc = lg_malloc((size_t)T * sizeof(double));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < T; t++) {
                const float *qr = c->q + ((long)b * T + t) * c->ldq + h * hd;
                double mx = -INFINITY, sum = 0.0;
                for (int s = 0; s <= t; s++) {
                    const float *kr = c->k + ((long)b * T + s) * c->ldk + (h / group) * hd;
                    double d = 0.0;
                    for (int i = 0; i < hd; i++) d += (double)qr[i] * kr[i];
                    sc[s] = d * scale;
                    mx = fmax(mx, sc[s]);
                }
                for (int s = 0; s <= t; s++) sum += (sc[s] = exp(sc[s] - mx));
                double *pr = probs + (((long)b * H + h) * T + t) * T;
                for (int s = 0; s < T; s++) pr[s] = s <= t ? sc[s] / sum : 0.0;
                double *o = out + ((long)b * T + t) * H * hd + h * hd;
                for (int i = 0; i < hd; i++) {
                    o[i] = 0.0;
                    for (int s = 0; s <= t; s++)
                        o[i] += pr[s] * c->v[((long)b * T + s) * c->ldv + (h / group) * hd + i];
                }
            }
    free(sc);
}

static void check_att_forward(int B, int T, int H, int KV, int hd, int fused, int pad) {
    lg_rng r;
    lg_rng_seed(&r, 12);
    att_ctx c;
    att_setup(&c, &r, B, T, H, KV, hd, fused, pad);
    long no = (long)B * T * H * hd, np = (long)B * H * T * T;
    double *ro = lg_malloc((size_t)no * sizeof(double));
    double *rp = lg_malloc((size_t)np * sizeof(double));
    att_forward(&c);
    ref_attention(&c, ro, rp);
    for (long i = 0; i < no; i++) assert_true(fabs(c.out[i] - ro[i]) < 1e-5 * (1 + fabs(ro[i])));
    for (long i = 0; i < np; i++) assert_true(fabs(c.probs[i] - rp[i]) < 1e-5);
    for (int bh = 0; bh < B * H; bh++) /* rows sum to 1, upper triangle exactly 0 */
        for (int t = 0; t < T; t++) {
            const float *p = c.probs + ((long)bh * T + t) * T;
            double s = 0.0;
            for (int u = 0; u < T; u++) {
                if (u > t) assert_true(p[u] == 0.0f);
                s += p[u];
            }
            assert_true(fabs(s - 1.0) < 1e-5);
        }
    free(ro), free(rp);
    att_free(&c);
}
static void test_attention_forward_vs_ref(void **state) {
    (void)state;
    check_att_forward(2, 5, 4, 4, 8, 0, 0); /* MHA, dense */
    check_att_forward(2, 5, 4, 2, 8, 0, 3); /* GQA, padded rows */
    check_att_forward(2, 5, 4, 4, 8, 1, 0); /* GPT-2 fused qkv */
    check_att_forward(2, 5, 4, 2, 8, 1, 5); /* fused GQA + padding */
    check_att_forward(2, 70, 4, 2, 8, 1, 2); /* several row blocks, threaded */
    check_att_forward(1, 1, 2, 1, 4, 0, 0); /* a single token */
}

/* Changing a later token's k/v (or q) must not change earlier outputs. */
static void test_attention_causal(void **state) {
    (void)state;
    lg_rng r;
    lg_rng_seed(&r, 13);
    int B = 2, T = 70, H = 4, KV = 2, hd = 8;
    att_ctx c;
    att_setup(&c, &r, B, T, H, KV, hd, 0, 0);
    long no = (long)B * T * H * hd;
    att_forward(&c);
    float *before = dup_f(c.out, no);
    int tc = 40; /* change tokens tc..T-1 in every batch */
    for (int b = 0; b < B; b++)
        for (int t = tc; t < T; t++) {
            for (int i = 0; i < c.ldk; i++) c.k[((long)b * T + t) * c.ldk + i] += 3.0f;
            for (int i = 0; i < c.ldv; i++) c.v[((long)b * T + t) * c.ldv + i] -= 2.0f;
            for (int i = 0; i < c.ldq; i++) c.q[((long)b * T + t) * c.ldq + i] *= -1.5f;
        }
    att_forward(&c);
    for (int b = 0; b < B; b++) {
        long row = (long)H * hd;
        float *o0 = before + (long)b * T * row, *o1 = c.out + (long)b * T * row;
        assert_true(max_abs_diff(o0, o1, tc * row) < 1e-6);
        assert_true(max_abs_diff(o0 + tc * row, o1 + tc * row, (T - tc) * row) > 1e-2);
    }
    free(before);
    att_free(&c);
}

static void check_att_grad(int B, int T, int H, int KV, int hd, int fused, int pad, long maxn) {
    lg_rng r;
    lg_rng_seed(&r, 14);
    att_ctx c;
    att_setup(&c, &r, B, T, H, KV, hd, fused, pad);
    float *gq, *gk, *gv, *dq, *dk, *dv;
    att_grads(&c, &gq, &gk, &gv, &dq, &dk, &dv);
    att_forward(&c);
    OPS->attention_backward(OPS, dq, dk, dv, c.g, c.q, c.ldq, c.k, c.ldk, c.v, c.ldv, c.probs, B, T,
                            H, KV, hd);
    if (fused) {
        fd_check("attention dqkv (fused)", c.qbuf, c.nq, gq, att_loss, &c, maxn);
    } else {
        fd_check("attention dq", c.qbuf, c.nq, gq, att_loss, &c, maxn);
        fd_check("attention dk", c.kbuf, c.nk, gk, att_loss, &c, maxn);
        fd_check("attention dv", c.vbuf, c.nv, gv, att_loss, &c, maxn);
    }
    /* padding columns of the gradients are never written */
    for (long row = 0; row < (long)B * T; row++)
        for (int j = c.ldq - pad; j < c.ldq; j++) assert_true(gq[row * c.ldq + j] == 0.0f);
    free(gq), free(gk), free(gv);
    att_free(&c);
}
static void test_attention_grad_mha(void **state) {
    (void)state;
    check_att_grad(2, 5, 4, 4, 8, 0, 0, 1000);
}
static void test_attention_grad_gqa(void **state) {
    (void)state;
    check_att_grad(2, 5, 4, 2, 8, 0, 3, 1000);
    check_att_grad(1, 4, 6, 1, 4, 0, 0, 1000); /* multi-query: one kv head */
}
static void test_attention_grad_fused(void **state) {
    (void)state;
    check_att_grad(2, 5, 4, 4, 8, 1, 0, 2000); /* GPT-2: ld = 3C */
    check_att_grad(2, 5, 4, 2, 8, 1, 3, 2000); /* GQA slices of a padded buffer */
}
static void test_attention_grad_large(void **state) {
    (void)state;
    check_att_grad(2, 70, 4, 2, 8, 0, 0, 150); /* crosses a row block, threaded */
    check_att_grad(2, 70, 4, 4, 8, 1, 0, 200);
}

/* Each gradient accumulates, and any subset may be requested. */
static void test_attention_backward_accum_null(void **state) {
    (void)state;
    for (int KV = 2; KV <= 4; KV += 2) {
        lg_rng r;
        lg_rng_seed(&r, 15);
        int B = 2, T = 6, H = 4, hd = 8;
        att_ctx c;
        att_setup(&c, &r, B, T, H, KV, hd, 0, 1);
        att_forward(&c);
        float *gq, *gk, *gv, *dq, *dk, *dv;
        att_grads(&c, &gq, &gk, &gv, &dq, &dk, &dv);
        OPS->attention_backward(OPS, dq, dk, dv, c.g, c.q, c.ldq, c.k, c.ldk, c.v, c.ldv, c.probs, B,
                                T, H, KV, hd);
        float *bq = randn(&r, c.nq, 1.0f), *bk = randn(&r, c.nk, 1.0f);
        float *bv = randn(&r, c.nv, 1.0f);
        float *aq = dup_f(bq, c.nq), *ak = dup_f(bk, c.nk), *av = dup_f(bv, c.nv);
#define ATT_BWD(a, b, d)                                                                       \
    OPS->attention_backward(OPS, a, b, d, c.g, c.q, c.ldq, c.k, c.ldk, c.v, c.ldv, c.probs, B, T, H,  \
                            KV, hd)
        ATT_BWD(aq, NULL, NULL);
        ATT_BWD(NULL, ak, NULL);
        ATT_BWD(NULL, NULL, av);
        ATT_BWD(NULL, NULL, NULL);
#undef ATT_BWD
        for (long i = 0; i < c.nq; i++) assert_true(fabsf(aq[i] - (bq[i] + gq[i])) < 1e-5f);
        for (long i = 0; i < c.nk; i++) assert_true(fabsf(ak[i] - (bk[i] + gk[i])) < 1e-5f);
        for (long i = 0; i < c.nv; i++) assert_true(fabsf(av[i] - (bv[i] + gv[i])) < 1e-5f);
        free(gq), free(gk), free(gv), free(bq), free(bk), free(bv), free(aq), free(ak), free(av);
        att_free(&c);
    }
}

/* ---- activations ------------------------------------------------------------------------- */

typedef struct {
    float *a, *b, *g, *out;
    long n;
    int gelu;
} act_ctx;
static double act_loss(void *p) {
    act_ctx *c = p;
    if (c->gelu)
        OPS->gelu_forward(OPS, c->out, c->a, c->n);
    else
        OPS->swiglu_forward(OPS, c->out, c->a, c->b, c->n);
    return dot_d(c->g, c->out, c->n);
}

static void run_act(int gelu, long n, long maxn) {
    lg_rng r;
    lg_rng_seed(&r, 16);
    act_ctx c = {randn(&r, n, 2.5f), randn(&r, n, 1.0f), randn(&r, n, 1.0f), zeros(n), n, gelu};
    act_loss(&c);
    for (long i = 0; i < n; i++) {
        double x = c.a[i], want;
        if (gelu)
            want = 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
        else
            want = x / (1 + exp(-x)) * c.b[i];
        assert_true(fabs(c.out[i] - want) < 1e-5 * (1 + fabs(want)));
    }
    float *da = zeros(n), *db = zeros(n);
    if (gelu) {
        OPS->gelu_backward(OPS, da, c.g, c.a, n);
        fd_check("gelu", c.a, n, da, act_loss, &c, maxn);
    } else {
        OPS->swiglu_backward(OPS, da, db, c.g, c.a, c.b, n);
        fd_check("swiglu dgate", c.a, n, da, act_loss, &c, maxn);
        fd_check("swiglu dup", c.b, n, db, act_loss, &c, maxn);
    }
    /* accumulation (and NULL outputs for swiglu) */
    float *ba = randn(&r, n, 1.0f), *bb = randn(&r, n, 1.0f);
    float *aa = dup_f(ba, n), *ab = dup_f(bb, n);
    if (gelu) {
        OPS->gelu_backward(OPS, aa, c.g, c.a, n);
    } else {
        OPS->swiglu_backward(OPS, aa, NULL, c.g, c.a, c.b, n);
        OPS->swiglu_backward(OPS, NULL, ab, c.g, c.a, c.b, n);
        for (long i = 0; i < n; i++) assert_true(fabsf(ab[i] - (bb[i] + db[i])) < 1e-5f);
    }
    for (long i = 0; i < n; i++) assert_true(fabsf(aa[i] - (ba[i] + da[i])) < 1e-5f);
    free(c.a), free(c.b), free(c.g), free(c.out), free(da), free(db);
    free(ba), free(bb), free(aa), free(ab);
}
static void test_swiglu(void **state) {
    (void)state;
    run_act(0, 50, 1000);
    run_act(0, 40000, 200); /* threaded */
    float g[4] = {-200.0f, -90.0f, 90.0f, 0.0f}, u[4] = {1, 1, 1, 1}, o[4];
    OPS->swiglu_forward(OPS, o, g, u, 4); /* saturated sigmoid stays finite */
    assert_true(all_finite(o, 4) && fabsf(o[0]) < 1e-30f && o[2] == 90.0f && o[3] == 0.0f);
}
static void test_gelu(void **state) {
    (void)state;
    run_act(1, 50, 1000);
    run_act(1, 40000, 200);
    float x[5] = {0.0f, 10.0f, -10.0f, 1.0f, 1e4f}, y[5];
    memcpy(y, x, sizeof x);
    OPS->gelu_forward(OPS, y, y, 5); /* in place */
    assert_true(y[0] == 0.0f && fabsf(y[1] - 10.0f) < 1e-5f && fabsf(y[2]) < 1e-5f);
    assert_true(fabsf(y[3] - 0.8411920f) < 1e-6f && y[4] == 1e4f);
}

/* ---- cross-entropy ----------------------------------------------------------------------- */

typedef struct {
    float *logits, *scratch, *w;
    int *tg;
    int N, V;
    float dscale;
} ce_ctx;
static double ce_loss(void *p) {
    ce_ctx *c = p;
    memcpy(c->scratch, c->logits, (size_t)c->N * c->V * sizeof(float));
    return c->dscale * OPS->cross_entropy(OPS, c->scratch, c->tg, c->w, c->N, c->V, c->dscale, 0);
}

static void run_ce(int N, int V, long maxn) {
    lg_rng r;
    lg_rng_seed(&r, 17);
    long n = (long)N * V;
    ce_ctx c = {randn(&r, n, 3.0f), zeros(n), zeros(N), lg_malloc((size_t)N * sizeof(int)), N, V,
                0.37f};
    for (int i = 0; i < N; i++) {
        c.w[i] = i % 3 == 1 ? 0.0f : 0.5f + (float)(i % 4); /* some rows not predicted */
        c.tg[i] = c.w[i] == 0.0f ? -12345 : (int)(lg_rng_u64(&r) % (uint64_t)V); /* not read */
    }
    /* value against a naive double implementation */
    double want = 0.0;
    for (int i = 0; i < N; i++) {
        if (c.w[i] == 0.0f) continue;
        double s = 0.0;
        for (int j = 0; j < V; j++) s += exp((double)c.logits[(long)i * V + j]);
        want += c.w[i] * (log(s) - c.logits[(long)i * V + c.tg[i]]);
    }
    memcpy(c.scratch, c.logits, (size_t)n * sizeof(float));
    double got = OPS->cross_entropy(OPS, c.scratch, c.tg, c.w, N, V, c.dscale, 0);
    assert_true(fabs(got - want) < 1e-5 * fabs(want));
    float *grad = dup_f(c.logits, n);
    double got2 = OPS->cross_entropy(OPS, grad, c.tg, c.w, N, V, c.dscale, 1);
    assert_true(got2 == got); /* want_grad does not change the value */
    /* the loss does not depend on the thread count (no OpenMP reduction order) */
    int nthr = omp_get_max_threads();
    for (int t = 1; t <= 5; t += 2) {
        omp_set_num_threads(t);
        memcpy(c.scratch, c.logits, (size_t)n * sizeof(float));
        assert_true(OPS->cross_entropy(OPS, c.scratch, c.tg, c.w, N, V, c.dscale, 0) == got);
    }
    omp_set_num_threads(nthr);
    for (int i = 0; i < N; i++)
        if (c.w[i] == 0.0f)
            for (int j = 0; j < V; j++) assert_true(grad[(long)i * V + j] == 0.0f);
    fd_check("cross_entropy", c.logits, n, grad, ce_loss, &c, maxn);
    free(c.logits), free(c.scratch), free(c.w), free(c.tg), free(grad);
}
static void test_cross_entropy(void **state) {
    (void)state;
    run_ce(7, 11, 1000);
    run_ce(64, 1000, 200); /* threaded rows */
}

/* Logits of +-1e4: finite loss and gradient, exact known values. */
static void test_cross_entropy_huge_logits(void **state) {
    (void)state;
    int N = 3, V = 4;
    float l[12] = {1e4f, -1e4f, -1e4f, -1e4f,  /* target 0: nll 0 */
                   1e4f, -1e4f, -1e4f, -1e4f,  /* target 1: nll 2e4 */
                   1e4f, 1e4f, -1e4f, -1e4f}; /* target 1: nll log 2 */
    int tg[3] = {0, 1, 1};
    float w[3] = {1, 1, 1};
    double loss = OPS->cross_entropy(OPS, l, tg, w, N, V, 1.0f, 1);
    assert_true(isfinite(loss));
    assert_true(fabs(loss - (2e4 + log(2.0))) < 1e-3);
    assert_true(all_finite(l, N * V));
    float want[12] = {0, 0, 0, 0, 1, -1, 0, 0, 0.5f, -0.5f, 0, 0};
    assert_true(max_abs_diff(l, want, N * V) < 1e-6);
}

static void test_axpy(void **state) {
    (void)state;
    lg_rng r;
    lg_rng_seed(&r, 18);
    long ns[2] = {5, 50000};
    for (int k = 0; k < 2; k++) {
        long n = ns[k];
        float *x = randn(&r, n, 1.0f), *y = randn(&r, n, 1.0f), *y0 = dup_f(y, n);
        OPS->axpy(OPS, n, -0.25f, x, y);
        for (long i = 0; i < n; i++) assert_true(fabsf(y[i] - (y0[i] - 0.25f * x[i])) < 1e-6f);
        free(x), free(y), free(y0);
    }
}

static void test_table(void **state) {
    (void)state;
    const lg_ops *o = lg_ops_cpu();
    assert_non_null(o->name);
    assert_true(o->gemm && o->linear_forward && o->linear_backward && o->embedding_forward &&
                o->embedding_backward && o->posemb_forward && o->posemb_backward &&
                o->rmsnorm_forward && o->rmsnorm_backward && o->layernorm_forward &&
                o->layernorm_backward && o->rope_forward && o->rope_backward &&
                o->attention_forward && o->attention_backward && o->swiglu_forward &&
                o->swiglu_backward && o->gelu_forward && o->gelu_backward && o->cross_entropy &&
                o->axpy && o->dgemm && o->orthonormalize && o->svd && o->lstsq && o->attention_decode &&
                o->alloc && o->free && o->release_packed && o->geglu_forward && o->geglu_backward &&
                o->attention_ex_forward && o->attention_ex_backward && o->attention_ex_decode &&
                o->softcap_forward && o->cross_entropy_softcap);
}

/* The vectorised exp clamps its argument, but a NaN must not be clamped into a number: a NaN
 * score, logit or gate reaches the output (and so the loss, where training stops on it). Also
 * softmax rows of extreme but finite scores stay finite and sum to one. */
static void test_nan_propagates(void **state) {
    (void)state;
    const lg_ops *ops = lg_ops_cpu();
    enum { B = 1, T = 40, H = 2, KV = 1, HD = 4 };
    float q[B * T * H * HD], k[B * T * KV * HD], v[B * T * KV * HD], out[B * T * H * HD], probs[B * H * T * T];
    lg_rng r;
    lg_rng_seed(&r, 3);
    for (int i = 0; i < B * T * H * HD; i++) q[i] = lg_rng_normal(&r);
    for (int i = 0; i < B * T * KV * HD; i++) k[i] = 30.0f * lg_rng_normal(&r), v[i] = lg_rng_normal(&r);
    ops->attention_forward(ops, out, probs, q, H * HD, k, KV * HD, v, KV * HD, B, T, H, KV, HD);
    for (int t = 0; t < T; t++) { /* large scores: finite, rows sum to 1 */
        double sum = 0;
        for (int s2 = 0; s2 <= t; s2++) sum += probs[t * T + s2];
        assert_true(fabs(sum - 1.0) < 1e-5);
    }
    q[(T - 1) * H * HD] = NAN; /* the last query row of head 0 */
    ops->attention_forward(ops, out, probs, q, H * HD, k, KV * HD, v, KV * HD, B, T, H, KV, HD);
    assert_true(isnan(out[(T - 1) * H * HD]));
    assert_false(isnan(out[(T - 2) * H * HD])); /* other rows untouched */
    float logits[2 * 8] = {0}, w[2] = {1, 1};
    int tg[2] = {1, 2};
    logits[3] = NAN;
    assert_true(isnan(ops->cross_entropy(ops, logits, tg, w, 2, 8, 1.0f, 0)));
    float gate[3] = {1.0f, NAN, -100.0f}, up[3] = {1, 1, 1}, o3[3];
    ops->swiglu_forward(ops, o3, gate, up, 3);
    assert_false(isnan(o3[0]));
    assert_true(isnan(o3[1]));
    assert_true(fabs(o3[2]) < 1e-30);
}


/* ---- architecture features: GeGLU, attention options, soft caps -------------------------------- */

static double geglu_loss(void *p) {
    act_ctx *c = p;
    OPS->geglu_forward(OPS, c->out, c->a, c->b, c->n);
    return dot_d(c->g, c->out, c->n);
}
static void run_geglu(long n, long maxn) {
    lg_rng r;
    lg_rng_seed(&r, 19);
    act_ctx c = {randn(&r, n, 2.5f), randn(&r, n, 1.0f), randn(&r, n, 1.0f), zeros(n), n, 1};
    geglu_loss(&c);
    for (long i = 0; i < n; i++) {
        double x = c.a[i], want = 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x))) * c.b[i];
        assert_true(fabs(c.out[i] - want) < 1e-5 * (1 + fabs(want)));
    }
    float *da = zeros(n), *db = zeros(n);
    OPS->geglu_backward(OPS, da, db, c.g, c.a, c.b, n);
    fd_check("geglu dgate", c.a, n, da, geglu_loss, &c, maxn);
    fd_check("geglu dup", c.b, n, db, geglu_loss, &c, maxn);
    float *ba = randn(&r, n, 1.0f), *bb = randn(&r, n, 1.0f), *aa = dup_f(ba, n), *ab = dup_f(bb, n);
    OPS->geglu_backward(OPS, aa, NULL, c.g, c.a, c.b, n); /* accumulates; NULL skips */
    OPS->geglu_backward(OPS, NULL, ab, c.g, c.a, c.b, n);
    for (long i = 0; i < n; i++) assert_true(fabsf(aa[i] - (ba[i] + da[i])) < 1e-5f && fabsf(ab[i] - (bb[i] + db[i])) < 1e-5f);
    free(c.a), free(c.b), free(c.g), free(c.out), free(da), free(db), free(ba), free(bb), free(aa), free(ab);
}
static void test_geglu(void **state) {
    (void)state;
    run_geglu(50, 1000);
    run_geglu(40000, 200); /* threaded */
}

/* Double-precision attention with a scale, a soft cap and a window (the reference of the _ex kernels). */
static void ref_attention_ex(const att_ctx *c, const lg_attn_params *p, double *out, double *probs) {
    int B = c->B, T = c->T, H = c->H, hd = c->hd, group = c->H / c->KV;
    double *sc = lg_malloc((size_t)T * sizeof(double));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < T; t++) {
                const float *qr = c->q + ((long)b * T + t) * c->ldq + h * hd;
                const int lo = p->window > 0 ? (t - p->window + 1 > 0 ? t - p->window + 1 : 0) : 0;
                double mx = -INFINITY, sum = 0.0;
                for (int s = lo; s <= t; s++) {
                    const float *kr = c->k + ((long)b * T + s) * c->ldk + (h / group) * hd;
                    double d = 0.0;
                    for (int i = 0; i < hd; i++) d += (double)qr[i] * kr[i];
                    sc[s] = d * p->scale;
                    if (p->softcap > 0) sc[s] = p->softcap * tanh(sc[s] / p->softcap);
                    mx = fmax(mx, sc[s]);
                }
                for (int s = lo; s <= t; s++) sum += (sc[s] = exp(sc[s] - mx));
                double *pr = probs + (((long)b * H + h) * T + t) * T;
                for (int s = 0; s < T; s++) pr[s] = s >= lo && s <= t ? sc[s] / sum : 0.0;
                double *o = out + ((long)b * T + t) * H * hd + h * hd;
                for (int i = 0; i < hd; i++) {
                    o[i] = 0.0;
                    for (int s = lo; s <= t; s++)
                        o[i] += pr[s] * c->v[((long)b * T + s) * c->ldv + (h / group) * hd + i];
                }
            }
    free(sc);
}

static void check_att_ex(int B, int T, int H, int KV, int hd, int fused, int pad, lg_attn_params p, long maxn) {
    lg_rng r;
    lg_rng_seed(&r, 21);
    att_ctx c;
    att_setup(&c, &r, B, T, H, KV, hd, fused, pad);
    c.ex = &p;
    long no = (long)B * T * H * hd, np = (long)B * H * T * T;
    double *ro = lg_malloc((size_t)no * sizeof(double)), *rp = lg_malloc((size_t)np * sizeof(double));
    for (long i = 0; i < np; i++) c.probs[i] = 7.0f; /* every entry must be written */
    att_forward(&c);
    ref_attention_ex(&c, &p, ro, rp);
    for (long i = 0; i < no; i++) assert_true(fabs(c.out[i] - ro[i]) < 1e-5 * (1 + fabs(ro[i])));
    for (long i = 0; i < np; i++) assert_true(fabs(c.probs[i] - rp[i]) < 1e-5);
    float *gq, *gk, *gv, *dq, *dk, *dv;
    att_grads(&c, &gq, &gk, &gv, &dq, &dk, &dv);
    OPS->attention_ex_backward(OPS, dq, dk, dv, c.g, c.q, c.ldq, c.k, c.ldk, c.v, c.ldv, c.probs, B, T, H, KV, hd, &p);
    if (fused) {
        fd_check("attention_ex dqkv (fused)", c.qbuf, c.nq, gq, att_loss, &c, maxn);
    } else {
        fd_check("attention_ex dq", c.qbuf, c.nq, gq, att_loss, &c, maxn);
        fd_check("attention_ex dk", c.kbuf, c.nk, gk, att_loss, &c, maxn);
        fd_check("attention_ex dv", c.vbuf, c.nv, gv, att_loss, &c, maxn);
    }
    /* decoding over a cache in pieces sees what the training kernel shows each query */
    if (B == 1 && !fused && !pad) {
        att_forward(&c); /* fd_check left the last perturbed forward in out */
        float *got = zeros(no);
        const int cuts[4] = {0, 1, T / 2, T};
        for (int k = 0; k < 3; k++)
            OPS->attention_ex_decode(OPS, got + (long)cuts[k] * H * hd, c.q + (long)cuts[k] * c.ldq, c.ldq, c.k, c.v,
                                     c.ldk, cuts[k + 1] - cuts[k], cuts[k], H, KV, hd, &p);
        assert_true(max_abs_diff(got, c.out, no) < 1e-5);
        free(got);
    }
    free(gq), free(gk), free(gv), free(ro), free(rp);
    att_free(&c);
}

static void test_attention_ex(void **state) {
    (void)state;
    const lg_attn_params win = {1.0f / sqrtf(8.0f), 0.0f, 3}, cap = {0.3f, 3.0f, 0}, both = {0.25f, 1.5f, 4};
    check_att_ex(2, 7, 4, 2, 8, 0, 3, win, 1000);  /* a window of 3 keys, GQA, padded rows */
    check_att_ex(2, 7, 4, 4, 8, 1, 0, cap, 2000);  /* a scale and a soft cap, fused qkv */
    check_att_ex(1, 9, 4, 2, 8, 0, 0, both, 1000); /* both, and decoding in pieces */
    check_att_ex(1, 9, 2, 1, 8, 0, 0, cap, 1000);
    const lg_attn_params w70 = {0.3f, 0.0f, 17}, c70 = {0.3f, 3.0f, 29};
    check_att_ex(1, 70, 4, 2, 8, 0, 0, w70, 150); /* windows across row blocks, threaded */
    check_att_ex(2, 70, 4, 2, 8, 0, 0, c70, 150);
    /* the defaults (and a window as long as the sequence) are the plain kernels exactly */
    lg_rng r;
    lg_rng_seed(&r, 22);
    att_ctx c;
    att_setup(&c, &r, 2, 70, 4, 2, 8, 0, 0);
    long no = 2L * 70 * 4 * 8, np = 2L * 4 * 70 * 70;
    att_forward(&c);
    float *out0 = dup_f(c.out, no), *p0 = dup_f(c.probs, np);
    float *gq, *gk, *gv, *dq, *dk, *dv, *hq, *hk, *hv, *eq, *ek, *ev;
    att_grads(&c, &gq, &gk, &gv, &dq, &dk, &dv);
    OPS->attention_backward(OPS, dq, dk, dv, c.g, c.q, c.ldq, c.k, c.ldk, c.v, c.ldv, c.probs, 2, 70, 4, 2, 8);
    for (int wdw = 0; wdw <= 70; wdw += 70) {
        lg_attn_params d = lg_attn_default(8);
        d.window = wdw;
        c.ex = &d;
        att_forward(&c);
        assert_true(max_abs_diff(out0, c.out, no) < 1e-6 && max_abs_diff(p0, c.probs, np) < 1e-7);
        att_grads(&c, &hq, &hk, &hv, &eq, &ek, &ev);
        OPS->attention_ex_backward(OPS, eq, ek, ev, c.g, c.q, c.ldq, c.k, c.ldk, c.v, c.ldv, c.probs, 2, 70, 4, 2, 8,
                                   &d);
        assert_true(max_abs_diff(gq, hq, c.nq) < 1e-5 && max_abs_diff(gk, hk, c.nk) < 1e-5 &&
                    max_abs_diff(gv, hv, c.nv) < 1e-5);
        free(hq), free(hk), free(hv);
    }
    /* a window shorter than the sequence really changes the later rows only */
    lg_attn_params w5 = lg_attn_default(8);
    w5.window = 5;
    c.ex = &w5;
    att_forward(&c);
    assert_true(max_abs_diff(out0, c.out, 5L * 32) < 1e-6);                       /* rows 0..4 of batch 0 */
    assert_true(max_abs_diff(out0 + 5L * 32, c.out + 5L * 32, 65L * 32) > 1e-2); /* the rest differ */
    free(out0), free(p0), free(gq), free(gk), free(gv);
    att_free(&c);
}

typedef struct {
    float *x, *scratch, *w;
    int *tg;
    int N, V;
    float cap, dscale;
} cesc_ctx;
static double cesc_loss(void *p) {
    cesc_ctx *c = p;
    memcpy(c->scratch, c->x, (size_t)c->N * c->V * sizeof(float));
    return c->dscale * OPS->cross_entropy_softcap(OPS, c->scratch, c->tg, c->w, c->N, c->V, c->cap, 0, c->dscale, 0);
}

/* Soft-capped logits: the cap itself, the loss against a double reference, the gradient with respect
 * to the raw logits by finite differences, the same from already-capped logits. */
static void run_cesc(int N, int V, long maxn) {
    lg_rng r;
    lg_rng_seed(&r, 23);
    long n = (long)N * V;
    cesc_ctx c = {randn(&r, n, 6.0f), zeros(n), zeros(N), lg_malloc((size_t)N * sizeof(int)), N, V, 5.0f, 0.41f};
    for (int i = 0; i < N; i++) {
        c.w[i] = i % 3 == 1 ? 0.0f : 0.5f + (float)(i % 4);
        c.tg[i] = c.w[i] == 0.0f ? -777 : (int)(lg_rng_u64(&r) % (uint64_t)V);
    }
    float *y = zeros(n);
    OPS->softcap_forward(OPS, y, c.x, n, c.cap);
    for (long i = 0; i < n; i++) assert_true(fabs(y[i] - 5.0 * tanh(c.x[i] / 5.0)) < 1e-6);
    double want = 0.0;
    for (int i = 0; i < N; i++) {
        if (c.w[i] == 0.0f) continue;
        double s = 0.0;
        for (int j = 0; j < V; j++) s += exp(5.0 * tanh((double)c.x[(long)i * V + j] / 5.0));
        want += c.w[i] * (log(s) - 5.0 * tanh((double)c.x[(long)i * V + c.tg[i]] / 5.0));
    }
    memcpy(c.scratch, c.x, (size_t)n * sizeof(float));
    double got = OPS->cross_entropy_softcap(OPS, c.scratch, c.tg, c.w, N, V, c.cap, 0, 1.0f, 0);
    assert_true(fabs(got - want) < 1e-5 * fabs(want));
    assert_true(max_abs_diff(c.scratch, y, n) == 0.0); /* left holding the capped logits, every row */
    float *grad = dup_f(c.x, n), *grad2 = dup_f(y, n);
    assert_true(OPS->cross_entropy_softcap(OPS, grad, c.tg, c.w, N, V, c.cap, 0, c.dscale, 1) == got);
    assert_true(OPS->cross_entropy_softcap(OPS, grad2, c.tg, c.w, N, V, c.cap, 1, c.dscale, 1) == got);
    assert_true(max_abs_diff(grad, grad2, n) < 1e-7);
    for (int i = 0; i < N; i++)
        if (c.w[i] == 0.0f)
            for (int j = 0; j < V; j++) assert_true(grad[(long)i * V + j] == 0.0f);
    fd_check("cross_entropy_softcap", c.x, n, grad, cesc_loss, &c, maxn);
    free(c.x), free(c.scratch), free(c.w), free(c.tg), free(y), free(grad), free(grad2);
}
static void test_cross_entropy_softcap(void **state) {
    (void)state;
    run_cesc(7, 11, 1000);
    run_cesc(64, 1000, 200);
}

static void test_rope_tables_freq(void **state) {
    (void)state;
    const int P = 20, hd = 8, half = hd / 2;
    float *c0, *s0, *c1, *s1;
    lg_rope_tables(P, hd, 500.0f, &c0, &s0);
    double inv[4];
    for (int i = 0; i < half; i++) inv[i] = pow(500.0, -2.0 * i / hd);
    lg_rope_tables_freq(P, half, inv, 1.0, &c1, &s1);
    assert_true(max_abs_diff(c0, c1, P * half) == 0.0 && max_abs_diff(s0, s1, P * half) == 0.0);
    free(c1), free(s1);
    lg_rope_tables_freq(P, half, inv, 1.25, &c1, &s1);
    for (int i = 0; i < P * half; i++) assert_true(fabsf(c1[i] - 1.25f * c0[i]) < 1e-6f && fabsf(s1[i] - 1.25f * s0[i]) < 1e-6f);
    free(c0), free(s0), free(c1), free(s1);
}

/* ---- the backend: libraries, precisions, packing, decoding, dense algebra ------------------- */

/* C (M x N) = alpha op(A) op(B) + beta C in double, the reference for every GEMM path. */
static void gemm_ref(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                     float beta, const float *C0, float *C, int ldc) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0;
            for (int k = 0; k < K; k++)
                s += (double)(ta ? A[(long)k * lda + i] : A[(long)i * lda + k]) *
                     (tb ? B[(long)j * ldb + k] : B[(long)k * ldb + j]);
            C[(long)i * ldc + j] = (float)(alpha * s + beta * C0[(long)i * ldc + j]);
        }
}

/* A backend made with an environment setting (read when the backend is created). */
static lg_ops *ops_with(const char *var, const char *val, lg_precision p) {
    setenv(var, val, 1);
    lg_ops *o;
    assert_int_equal(lg_ops_create(p, &o), 0);
    unsetenv(var);
    return o;
}

/* Both float32 GEMM libraries (oneDNN with its primitive cache, OpenBLAS with its split for skinny
 * shapes) against double: every transpose, strided operands, alpha, beta 0/1/other, skinny and
 * single-row shapes, and the same problem again with other data (a cached primitive); oneDNN also
 * with alpha baked into the primitives (its fallback where runtime scales are not implemented). */
static void test_gemm_libraries(void **state) {
    (void)state;
    const char *libs[3] = {"openblas", "onednn", "onednn"};
    const int shapes[][3] = {{5, 7, 3}, {64, 48, 8}, {300, 2, 50}, {1, 17, 9}, {256, 172, 64}, {40, 8, 300}};
    lg_rng r;
    lg_rng_seed(&r, 77);
    for (int li = 0; li < 3; li++) {
        if (li == 2) setenv("LORAGA_ONEDNN_SCALES", "baked", 1);
        lg_ops *o = ops_with("LORAGA_GEMM", libs[li], LG_PREC_FP32);
        unsetenv("LORAGA_ONEDNN_SCALES");
        double worst = 0;
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
            for (int ta = 0; ta < 2; ta++)
                for (int tb = 0; tb < 2; tb++)
                    for (int bi = 0; bi < 3; bi++)
                        for (int again = 0; again < 2; again++) {
                            const int M = shapes[si][0], N = shapes[si][1], K = shapes[si][2];
                            const float alpha = again ? 0.75f : 1.0f, beta = bi == 0 ? 0.0f : bi == 1 ? 1.0f : -0.5f;
                            const int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 1, ldc = N + 2;
                            float *A = randn(&r, (long)(ta ? K : M) * lda, 1.0f), *B = randn(&r, (long)(tb ? N : K) * ldb, 1.0f);
                            float *C = randn(&r, (long)M * ldc, 1.0f), *C0 = dup_f(C, (long)M * ldc), *R = dup_f(C, (long)M * ldc);
                            o->gemm(o, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
                            gemm_ref(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C0, R, ldc);
                            for (int i = 0; i < M; i++) /* the padding between rows is not touched */
                                for (int j = 0; j < ldc; j++) {
                                    const long e = (long)i * ldc + j;
                                    if (j >= N) assert_true(C[e] == C0[e]);
                                    else worst = fmax(worst, fabs(C[e] - R[e]) / (1.0 + sqrt((double)K)));
                                }
                            free(A), free(B), free(C), free(C0), free(R);
                        }
        print_message("%s%s: worst |C - ref| / (1 + sqrt K) = %.2e\n", libs[li], li == 2 ? " (baked scales)" : "",
                      worst);
        assert_true(worst < 1e-5);
        lg_ops_free(o);
    }
}

/* bf16 rounding: the vectorised kernels equal the scalar reference (round to nearest even, ties
 * included, NaN kept NaN, infinities kept). */
static void test_bf16_rounding(void **state) {
    (void)state;
    enum { N = 4096 };
    float x[N], back[N];
    uint16_t h[N];
    lg_rng r;
    lg_rng_seed(&r, 5);
    for (int i = 0; i < N; i++) x[i] = lg_rng_normal(&r) * powf(2.0f, (float)(i % 60) - 30.0f);
    const uint32_t ties[4] = {0x3f808000u, 0x3f818000u, 0x7f7fffffu, 0x00018000u}; /* even/odd ties, max, subnormal */
    for (int i = 0; i < 4; i++) memcpy(&x[i], &ties[i], 4);
    x[4] = NAN, x[5] = INFINITY, x[6] = -INFINITY, x[7] = -0.0f;
    lg_round_bf16(h, x, N);
    lg_round_bf16_f32(back, x, N);
    for (int i = 0; i < N; i++) {
        if (isnan(x[i])) {
            assert_true(isnan(lg_bf16_to_f32(h[i])) && isnan(back[i]));
            continue;
        }
        assert_int_equal(h[i], lg_f32_to_bf16(x[i]));
        assert_true(back[i] == lg_bf16_to_f32(h[i]));
    }
}

/* The linear layers in bf16 precision (native where the CPU has bf16 units, emulated otherwise)
 * compute exactly the float32 products of the bf16-rounded inputs (up to summation order), for a
 * weight stored as float32 (full fine-tuning) or as bf16 (a frozen base), and are measurably not
 * the unrounded float32 result. */
static void test_linear_bf16(void **state) {
    (void)state;
    lg_ops *o;
    assert_int_equal(lg_ops_create(LG_PREC_BF16, &o), 0);
    assert_int_equal(o->precision, LG_PREC_BF16);
    print_message("bf16 backend: %s\n", lg_ops_describe(o));
    const int N = 70, in = 96, out = 80;
    lg_rng r;
    lg_rng_seed(&r, 12);
    float *x = randn(&r, (long)N * in, 1.0f), *W = randn(&r, (long)out * in, 0.2f), *b = randn(&r, out, 1.0f);
    float *dy = randn(&r, (long)N * out, 1.0f);
    float *xr = zeros((long)N * in), *Wr = zeros((long)out * in), *dyr = zeros((long)N * out);
    uint16_t *W16 = lg_malloc((size_t)out * in * 2);
    lg_round_bf16_f32(xr, x, (long)N * in);
    lg_round_bf16_f32(Wr, W, (long)out * in);
    lg_round_bf16_f32(dyr, dy, (long)N * out);
    lg_round_bf16(W16, W, (long)out * in);
    float *y = zeros((long)N * out), *yref = zeros((long)N * out), *yfp = zeros((long)N * out);
    float *dx = zeros((long)N * in), *dxref = zeros((long)N * in), *dW = zeros((long)out * in), *dWref = zeros((long)out * in);
    float *db = zeros(out), *dbref = zeros(out);
    for (int s = 0; s < 2; s++) { /* float32 storage, then bf16 storage */
        const lg_weight w = s ? (lg_weight){NULL, W16, NULL} : lg_weight_f32(W);
        o->linear_forward(o, y, x, w, b, N, in, out);
        gemm_ref(0, 1, N, out, in, 1.0f, xr, in, Wr, in, 0.0f, yref, yref, out);
        gemm_ref(0, 1, N, out, in, 1.0f, x, in, W, in, 0.0f, yfp, yfp, out);
        for (int i = 0; i < N; i++)
            for (int k = 0; k < out; k++) yref[i * out + k] += b[k], yfp[i * out + k] += b[k];
        const double err = max_abs_diff(y, yref, (long)N * out), off = max_abs_diff(y, yfp, (long)N * out);
        print_message("storage %s: |y - bf16 ref| %.2e, |y - fp32| %.2e\n", s ? "bf16" : "f32", err, off);
        assert_true(err < 2e-5 * sqrt((double)in));
        assert_true(off > 1e-3); /* the rounding really happened */
        /* backward, accumulating on top of a start value, scale 0.5 */
        for (long i = 0; i < (long)N * in; i++) dx[i] = dxref[i] = 1.0f;
        for (long i = 0; i < (long)out * in; i++) dW[i] = dWref[i] = -1.0f;
        for (int k = 0; k < out; k++) db[k] = dbref[k] = 2.0f;
        o->linear_backward(o, dx, s ? NULL : dW, db, dy, x, w, N, in, out, 0.5f);
        gemm_ref(0, 0, N, in, out, 0.5f, dyr, out, Wr, in, 1.0f, dxref, dxref, in);
        gemm_ref(1, 0, out, in, N, 0.5f, dyr, out, xr, in, 1.0f, dWref, dWref, in);
        for (int k = 0; k < out; k++) { /* the bias gradient is a float32 sum of the unrounded dy */
            double acc = 0;
            for (int i = 0; i < N; i++) acc += dy[i * out + k];
            dbref[k] = (float)(dbref[k] + 0.5 * acc);
        }
        assert_true(max_abs_diff(dx, dxref, (long)N * in) < 2e-5 * sqrt((double)out));
        if (!s) assert_true(max_abs_diff(dW, dWref, (long)out * in) < 2e-5 * sqrt((double)N));
        else
            for (long i = 0; i < (long)out * in; i++) assert_true(dW[i] == -1.0f); /* NULL: untouched */
        assert_true(max_abs_diff(db, dbref, out) < 1e-4);
    }
    free(x), free(W), free(b), free(dy), free(xr), free(Wr), free(dyr), free(W16), free(y), free(yref), free(yfp);
    free(dx), free(dxref), free(dW), free(dWref), free(db), free(dbref);
    lg_ops_free(o);
}

/* A prepacked weight (LORAGA_PACK=1 packs float32 weights too, so the path runs on any CPU) gives
 * the unpacked result, for the row count it was packed for and for others; a slot that could not
 * be packed is remembered and releases cleanly. */
static void test_packed_weights(void **state) {
    (void)state;
    lg_ops *o = ops_with("LORAGA_PACK", "1", LG_PREC_FP32);
    const int in = 64, out = 96;
    lg_rng r;
    lg_rng_seed(&r, 3);
    float *W = randn(&r, (long)out * in, 0.3f), *b = randn(&r, out, 1.0f);
    void *slot = NULL;
    const int rows[3] = {32, 1, 77};
    for (int k = 0; k < 3; k++) {
        const int N = rows[k];
        float *x = randn(&r, (long)N * in, 1.0f), *y = zeros((long)N * out), *y2 = zeros((long)N * out);
        o->linear_forward(o, y, x, (lg_weight){W, NULL, &slot}, b, N, in, out);
        o->linear_forward(o, y2, x, lg_weight_f32(W), b, N, in, out);
        assert_non_null(slot);
        assert_true(max_abs_diff(y, y2, (long)N * out) < 1e-5);
        free(x), free(y), free(y2);
    }
    o->release_packed(o, slot);
    free(W), free(b);
    lg_ops_free(o);
}

/* Decoding over a key/value cache: queries fed in pieces (pos0 > 0) see exactly the keys the
 * training kernel's causal block shows them. */
static void test_attention_decode(void **state) {
    (void)state;
    const int T = 37, H = 4, KV = 2, hd = 16, qd = H * hd, kvd = KV * hd;
    lg_rng r;
    lg_rng_seed(&r, 8);
    float *q = randn(&r, (long)T * qd, 1.0f), *k = randn(&r, (long)T * kvd, 1.0f), *v = randn(&r, (long)T * kvd, 1.0f);
    float *probs = zeros((long)H * T * T), *ref = zeros((long)T * qd), *got = zeros((long)T * qd);
    OPS->attention_forward(OPS, ref, probs, q, qd, k, kvd, v, kvd, 1, T, H, KV, hd);
    const int cuts[4] = {0, 1, 20, T}; /* pieces of 1, 19 and 17 positions */
    for (int c = 0; c < 3; c++) {
        const int p0 = cuts[c], n = cuts[c + 1] - cuts[c];
        OPS->attention_decode(OPS, got + (long)p0 * qd, q + (long)p0 * qd, qd, k, v, kvd, n, p0, H, KV, hd);
    }
    const double d = max_abs_diff(got, ref, (long)T * qd);
    print_message("decode vs training attention: max |diff| %.2e\n", d);
    assert_true(d < 1e-5);
    free(q), free(k), free(v), free(probs), free(ref), free(got);
}

/* QR, SVD and least squares through the interface: Q^T Q = I with X in span(Q), U S V^T = X, and
 * an overdetermined consistent system solved exactly. */
static void test_dense_algebra(void **state) {
    (void)state;
    const int m = 30, n = 7;
    lg_rng r;
    lg_rng_seed(&r, 21);
    double *X = lg_malloc((size_t)m * n * 8), *Q = lg_malloc((size_t)m * n * 8), *S = lg_malloc((size_t)n * 8);
    double *U = lg_malloc((size_t)m * n * 8), *Vt = lg_malloc((size_t)n * n * 8), *Y = lg_malloc((size_t)m * n * 8);
    for (int i = 0; i < m * n; i++) X[i] = Q[i] = Y[i] = lg_rng_normal(&r);
    assert_int_equal(OPS->orthonormalize(OPS, m, n, Q), 0);
    double *QtQ = lg_malloc((size_t)n * n * 8), *QtX = lg_malloc((size_t)n * n * 8), *R = lg_malloc((size_t)m * n * 8);
    OPS->dgemm(OPS, 1, 0, n, n, m, 1.0, Q, n, Q, n, 0.0, QtQ, n);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) assert_true(fabs(QtQ[i * n + j] - (i == j)) < 1e-12);
    OPS->dgemm(OPS, 1, 0, n, n, m, 1.0, Q, n, X, n, 0.0, QtX, n);
    OPS->dgemm(OPS, 0, 0, m, n, n, 1.0, Q, n, QtX, n, 0.0, R, n); /* Q Q^T X = X */
    for (int i = 0; i < m * n; i++) assert_true(fabs(R[i] - X[i]) < 1e-10);
    assert_int_equal(OPS->svd(OPS, m, n, Y, S, U, Vt), 0);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int t = 0; t < n; t++) s += U[i * n + t] * S[t] * Vt[t * n + j];
            assert_true(fabs(s - X[i * n + j]) < 1e-10);
        }
    for (int t = 1; t < n; t++) assert_true(S[t] <= S[t - 1]);
    /* A (m x n) Z = B with B = A Z0: least squares returns Z0 */
    double Z0[7 * 2], *A = lg_malloc((size_t)m * n * 8), *B = lg_malloc((size_t)m * 2 * 8);
    for (int i = 0; i < n * 2; i++) Z0[i] = lg_rng_normal(&r);
    memcpy(A, X, (size_t)m * n * 8);
    OPS->dgemm(OPS, 0, 0, m, 2, n, 1.0, X, n, Z0, 2, 0.0, B, 2);
    assert_int_equal(OPS->lstsq(OPS, m, n, 2, A, B), 0);
    for (int i = 0; i < n * 2; i++) assert_true(fabs(B[i] - Z0[i]) < 1e-10);
    free(X), free(Q), free(S), free(U), free(Vt), free(Y), free(QtQ), free(QtX), free(R), free(A), free(B);
}

/* Precision names and the AUTO rule ($LORAGA_PRECISION, else the CPU). */
static void test_precision_resolve(void **state) {
    (void)state;
    lg_precision p;
    assert_int_equal(lg_precision_parse("bfloat16", &p), 0);
    assert_int_equal(p, LG_PREC_BF16);
    assert_int_equal(lg_precision_parse("fp32", &p), 0);
    assert_int_equal(p, LG_PREC_FP32);
    assert_int_equal(lg_precision_parse("fp16", &p), -1);
    assert_non_null(strstr(lg_last_error(), "fp16"));
    setenv("LORAGA_PRECISION", "bf16", 1);
    assert_int_equal(lg_precision_resolve(LG_PREC_AUTO), LG_PREC_BF16);
    setenv("LORAGA_PRECISION", "fp32", 1);
    assert_int_equal(lg_precision_resolve(LG_PREC_AUTO), LG_PREC_FP32);
    unsetenv("LORAGA_PRECISION");
    assert_int_equal(lg_precision_resolve(LG_PREC_AUTO), lg_bf16_native() ? LG_PREC_BF16 : LG_PREC_FP32);
    assert_int_equal(lg_precision_resolve(LG_PREC_FP32), LG_PREC_FP32);
    print_message("this CPU: bf16 %s\n", lg_bf16_native() ? "native" : "emulated");
}

int main(void) {
    OPS = lg_ops_cpu();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_nan_propagates),
        cmocka_unit_test(test_gemm_vs_naive),
        cmocka_unit_test(test_linear_forward_vs_naive),
        cmocka_unit_test(test_linear_grad),
        cmocka_unit_test(test_linear_backward_accum_null),
        cmocka_unit_test(test_embedding),
        cmocka_unit_test(test_posemb),
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_layernorm),
        cmocka_unit_test(test_rope_tables),
        cmocka_unit_test(test_rope_grad),
        cmocka_unit_test(test_rope_properties),
        cmocka_unit_test(test_rope_half_vs_interleaved),
        cmocka_unit_test(test_attention_forward_vs_ref),
        cmocka_unit_test(test_attention_causal),
        cmocka_unit_test(test_attention_grad_mha),
        cmocka_unit_test(test_attention_grad_gqa),
        cmocka_unit_test(test_attention_grad_fused),
        cmocka_unit_test(test_attention_grad_large),
        cmocka_unit_test(test_attention_backward_accum_null),
        cmocka_unit_test(test_swiglu),
        cmocka_unit_test(test_gelu),
        cmocka_unit_test(test_cross_entropy),
        cmocka_unit_test(test_cross_entropy_huge_logits),
        cmocka_unit_test(test_axpy),
        cmocka_unit_test(test_gemm_libraries),
        cmocka_unit_test(test_bf16_rounding),
        cmocka_unit_test(test_linear_bf16),
        cmocka_unit_test(test_packed_weights),
        cmocka_unit_test(test_attention_decode),
        cmocka_unit_test(test_dense_algebra),
        cmocka_unit_test(test_precision_resolve),
        cmocka_unit_test(test_geglu),
        cmocka_unit_test(test_attention_ex),
        cmocka_unit_test(test_cross_entropy_softcap),
        cmocka_unit_test(test_rope_tables_freq),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
