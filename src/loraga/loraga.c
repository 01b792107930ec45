/* loraga.c — LoRA-GA, all of it: gradient estimation (all / serial / sketch), factorisation,
 * initialisation, the weight offset and the gradient cache. See loraga.h for the idea.
 *
 * Reading order: lg_loraga_init (the driver, at the bottom) -> estimate_pass (the N batches
 * with a backward hook per target) -> factorise_* (top-2r singular triplets) ->
 * lg_ga_init_factors (directions and scales, into A0, B0) -> apply_init (A, B and W <- W - s·B0·A0,
 * once every target is factorised, so that every pass sees the untouched base model).
 *
 * Shapes: target weight W and its gradient G are m x n (out x in); r is the LoRA rank;
 * N tokens per batch; k the sketch width, l = 4k + 1. All matrices row-major. Every product
 * and factorisation goes through the model's backend (ops.h). */
#include "loraga/loraga.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "dist/dist.h"
#include "io/safetensors.h"

void lg_ga_opts_default(lg_ga_opts *o) {
    memset(o, 0, sizeof *o);
    o->batches = 64;
    o->batch_size = 2;
    o->seq_len = 128;
    o->mode = LG_GA_ALL;
    o->direction = LG_GA_ARB2R;
    o->scale = LG_GA_STABLE;
    o->gamma = 16.0f;
    o->variant = LG_GA_PAPER;
    o->seed = 42;
}

#define PARSE(fn, type, ...)                                                                        \
    int fn(const char *s, type *out) {                                                             \
        static const char *names[] = {__VA_ARGS__};                                                \
        for (int i = 0; i < (int)(sizeof names / sizeof names[0]); i++)                             \
            if (!strcmp(s, names[i])) {                                                            \
                *out = (type)i;                                                                    \
                return 0;                                                                          \
            }                                                                                      \
        return lg_errorf("'%s' is not one of the accepted values (see --help)", s);                 \
    }
PARSE(lg_ga_parse_mode, lg_ga_mode, "all", "serial", "sketch")
PARSE(lg_ga_parse_direction, lg_ga_direction, "ArB2r", "A2rBr", "ArBr", "random")
PARSE(lg_ga_parse_scale, lg_ga_scale, "stable", "unit", "gd", "weight_svd")
PARSE(lg_ga_parse_variant, lg_ga_variant, "paper", "peft")
#undef PARSE

/* ------------------------------------------------------------------------------------------ */
/* dense linear algebra helpers (double precision: the matrices here are small)               */

/* Orthonormal basis of the columns of X (rows x cols, rows >= cols), in place: X <- Q. */
static int orthonormalise(const lg_ops *ops, double *X, int rows, int cols) {
    int rc = ops->orthonormalize(ops, rows, cols, X);
    return rc ? lg_errorf("LAPACK QR failed (info %d)", rc) : 0;
}

/* Thin SVD of X (rows x cols): U (rows x p), S (p), Vt (p x cols), p = min(rows, cols). X is destroyed. */
static int thin_svd(const lg_ops *ops, double *X, int rows, int cols, double *U, double *S, double *Vt) {
    int rc = ops->svd(ops, rows, cols, X, S, U, Vt);
    return rc ? lg_errorf("LAPACK SVD failed to converge (info %d)", rc) : 0;
}

static void fill_normal(double *x, long n, uint64_t seed) {
    lg_rng r;
    lg_rng_seed(&r, seed);
    for (long i = 0; i < n; i++) x[i] = lg_rng_normal(&r);
}

/* Write the top k triplets (in descending order) into float outputs. Uf is ld_u wide. */
static void store_triplets(const double *U, int ldu, const double *S, const double *Vt, int ldv_cols, int m, int n,
                           int k, float *Uo, float *So, float *Vo) {
    for (int i = 0; i < m; i++)
        for (int j = 0; j < k; j++) Uo[(size_t)i * k + j] = (float)U[(size_t)i * ldu + j];
    for (int j = 0; j < k; j++) So[j] = (float)S[j];
    for (int i = 0; i < n; i++)
        for (int j = 0; j < k; j++) Vo[(size_t)i * k + j] = (float)Vt[(size_t)j * ldv_cols + i];
}

int lg_ga_svd(const lg_ops *ops, const float *G, int m, int n, int k, int q, int niter, uint64_t seed, float *Uo, float *So, float *Vo) {
    int p = LG_MIN(m, n);
    if (k > p) return lg_errorf("cannot take %d singular vectors of a %d x %d matrix", k, m, n);
    q = LG_MAX(LG_MIN(q, p), k);
    double *Gd = lg_malloc((size_t)m * n * sizeof(double));
    for (size_t i = 0; i < (size_t)m * n; i++) Gd[i] = G[i];
    int rc = 0;
    if (q >= p) { /* small: the exact SVD costs no more than the randomised one */
        double *U = lg_malloc((size_t)m * p * sizeof(double)), *S = lg_malloc((size_t)p * sizeof(double)),
               *Vt = lg_malloc((size_t)p * n * sizeof(double));
        rc = thin_svd(ops, Gd, m, n, U, S, Vt);
        if (!rc) store_triplets(U, p, S, Vt, n, m, n, k, Uo, So, Vo);
        free(U), free(S), free(Vt);
        free(Gd);
        return rc;
    }
    /* Randomised range finder with power iterations (Halko et al. 2011; torch.svd_lowrank):
     * Q = orth(G Omega); repeat niter: Q' = orth(G^T Q), Q = orth(G Q'). Then B = Q^T G. */
    double *Om = lg_malloc((size_t)n * q * sizeof(double)), *Q = lg_malloc((size_t)m * q * sizeof(double)),
           *Qn = lg_malloc((size_t)n * q * sizeof(double)), *B = lg_malloc((size_t)q * n * sizeof(double));
    fill_normal(Om, (long)n * q, seed);
    ops->dgemm(ops, 0, 0, m, q, n, 1.0, Gd, n, Om, q, 0.0, Q, q);
    rc = orthonormalise(ops, Q, m, q);
    for (int it = 0; !rc && it < niter; it++) {
        ops->dgemm(ops, 1, 0, n, q, m, 1.0, Gd, n, Q, q, 0.0, Qn, q);
        rc = orthonormalise(ops, Qn, n, q);
        if (rc) break;
        ops->dgemm(ops, 0, 0, m, q, n, 1.0, Gd, n, Qn, q, 0.0, Q, q);
        rc = orthonormalise(ops, Q, m, q);
    }
    if (!rc) {
        ops->dgemm(ops, 1, 0, q, n, m, 1.0, Q, q, Gd, n, 0.0, B, n);
        double *Ub = lg_malloc((size_t)q * q * sizeof(double)), *S = lg_malloc((size_t)q * sizeof(double)),
               *Vt = lg_malloc((size_t)q * n * sizeof(double)), *U = lg_malloc((size_t)m * q * sizeof(double));
        rc = thin_svd(ops, B, q, n, Ub, S, Vt);
        if (!rc) {
            ops->dgemm(ops, 0, 0, m, q, q, 1.0, Q, q, Ub, q, 0.0, U, q);
            store_triplets(U, q, S, Vt, n, m, n, k, Uo, So, Vo);
        }
        free(Ub), free(S), free(Vt), free(U);
    }
    free(Om), free(Q), free(Qn), free(B), free(Gd);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* directions and scales                                                                      */

void lg_ga_init_factors(const lg_ops *ops, const float *U, const float *S, const float *V, int m, int n, int r, float s,
                        const float *W, const lg_ga_opts *o, float *A0, float *B0) {
    /* Pick which of the 2r singular directions go to A (rows of V^T) and to B (columns of U). */
    int *ia = lg_malloc((size_t)r * sizeof(int)), *ib = lg_malloc((size_t)r * sizeof(int));
    int k2 = 2 * r;
    for (int j = 0; j < r; j++) {
        switch (o->direction) {
        case LG_GA_ARB2R: ia[j] = j, ib[j] = r + j; break;
        case LG_GA_A2RBR: ia[j] = r + j, ib[j] = j; break;
        case LG_GA_ARBR: ia[j] = 2 * j + 1, ib[j] = 2 * j; break;
        case LG_GA_RANDOM: break;
        }
    }
    if (o->direction == LG_GA_RANDOM) {
        int *perm = lg_malloc((size_t)k2 * sizeof(int));
        lg_rng rng;
        lg_rng_seed(&rng, o->seed ^ 0x5eedf00dull);
        for (int i = 0; i < k2; i++) perm[i] = i;
        for (int i = k2 - 1; i > 0; i--) {
            int j = (int)(lg_rng_u64(&rng) % (uint64_t)(i + 1)), t = perm[i];
            perm[i] = perm[j], perm[j] = t;
        }
        /* paper: disjoint halves; PEFT: the same r indices for A and B */
        for (int j = 0; j < r; j++) ia[j] = perm[j], ib[j] = o->variant == LG_GA_PEFT ? perm[j] : perm[r + j];
        free(perm);
    }
    for (int j = 0; j < r; j++) {
        for (int i = 0; i < n; i++) A0[(size_t)j * n + i] = V[(size_t)i * k2 + ia[j]];
        for (int i = 0; i < m; i++) B0[(size_t)i * r + j] = U[(size_t)i * k2 + ib[j]];
    }
    float ca = 1.0f, cb = 1.0f;
    if (o->variant == LG_GA_PEFT) {
        /* PEFT's lora_ga_init: B0 = U_B diag(S_B); stable scales B only; weight_svd uses
         * sigma_1(W) / S_B[0]. */
        for (int i = 0; i < m; i++)
            for (int j = 0; j < r; j++) B0[(size_t)i * r + j] *= S[ib[j]];
        if (o->scale == LG_GA_STABLE) cb = (float)(pow(m, 0.25) / sqrt(o->gamma));
        if (o->scale == LG_GA_GD) ca = cb = 1.0f / s;
        if (o->scale == LG_GA_WEIGHT_SVD && S[ib[0]] > 0) {
            float sw[1], *v = lg_malloc((size_t)n * sizeof(float)), *uu = lg_malloc((size_t)m * sizeof(float));
            if (lg_ga_svd(ops, W, m, n, 1, 4 * r, 4, o->seed, uu, sw, v) == 0) cb = sw[0] / S[ib[0]];
            free(v), free(uu);
        }
    } else {
        switch (o->scale) {
        case LG_GA_STABLE: ca = cb = (float)(pow(m, 0.25) / sqrt(o->gamma)); break;
        case LG_GA_UNIT: break;
        case LG_GA_GD: ca = cb = 1.0f / s; break;
        case LG_GA_WEIGHT_SVD: { /* mean over the top r of sqrt(sigma_i(W) / s) */
            float *uu = lg_malloc((size_t)m * r * sizeof(float)), *v = lg_malloc((size_t)n * r * sizeof(float)),
                  *sw = lg_malloc((size_t)r * sizeof(float));
            if (lg_ga_svd(ops, W, m, n, r, 4 * r, 4, o->seed, uu, sw, v) == 0) {
                double acc = 0;
                for (int j = 0; j < r; j++) acc += sqrt(fmax(sw[j], 0) / s);
                ca = cb = (float)(acc / r);
            }
            free(uu), free(v), free(sw);
            break;
        }
        }
    }
    for (size_t i = 0; i < (size_t)r * n; i++) A0[i] *= ca;
    for (size_t i = 0; i < (size_t)m * r; i++) B0[i] *= cb;
    free(ia);
    free(ib);
}

/* ------------------------------------------------------------------------------------------ */
/* estimation: one pass over the N batches with a backward hook on each target in a group     */

typedef struct {
    lg_lora *lo;
    const lg_ops *ops; /* the model's backend */
    int m, n;
    float *G;            /* all / serial: m x n running sum of dL/dW (already divided by N) */
    int k, l;            /* sketch: Y = G Omega (m x k), Z = Psi G (l x n); Omega (n x k) and
                          * Psi (l x m) are random signs regenerated from seed whenever needed,
                          * so only Y and Z are held: O((m + n) k) per target */
    uint64_t seed;
    float *Y, *Z;
    struct ga_scratch *sc;
} ga_target;

/* Scratch shared by all sketch hooks (they run one at a time), grown on demand. */
typedef struct ga_scratch {
    float *om, *psi, *t1, *t2; /* Omega, Psi, X Omega (N x k), Psi dY^T (l x N) */
    size_t cap_om, cap_psi, cap_t1, cap_t2;
} ga_scratch;

static float *grow(float **p, size_t *cap, size_t n) {
    if (n > *cap) {
        free(*p);
        *p = lg_malloc(n * sizeof(float));
        *cap = n;
    }
    return *p;
}

/* Rademacher (+-1) test matrix from a seed: Tropp et al. allow any sub-Gaussian test matrix,
 * and signs are cheap enough to regenerate every time instead of being stored. */
static void random_signs(float *out, size_t n, uint64_t seed) {
    lg_rng r;
    lg_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i += 64) {
        uint64_t bits = lg_rng_u64(&r);
        for (size_t j = i; j < n && j < i + 64; j++, bits >>= 1) out[j] = (bits & 1) ? 1.0f : -1.0f;
    }
}

/* dL/dW of a linear layer y = x W^T is dy^T x: accumulate it (dy carries 1/(N·tokens)). */
static void hook_dense(lg_linear *l, const float *dy, const float *x, int N, void *ud) {
    ga_target *t = ud;
    t->ops->gemm(t->ops, 1, 0, l->out, l->in, N, 1.0f, dy, l->out, x, l->in, 1.0f, t->G, l->in);
}

/* Sketches without forming dy^T x: Y += dy^T (x Omega);  Z += (Psi dy^T) x. */
static void hook_sketch(lg_linear *l, const float *dy, const float *x, int N, void *ud) {
    ga_target *t = ud;
    ga_scratch *sc = t->sc;
    int m = l->out, n = l->in, k = t->k, ll = t->l;
    float *om = grow(&sc->om, &sc->cap_om, (size_t)n * k), *psi = grow(&sc->psi, &sc->cap_psi, (size_t)ll * m);
    float *t1 = grow(&sc->t1, &sc->cap_t1, (size_t)N * k), *t2 = grow(&sc->t2, &sc->cap_t2, (size_t)ll * N);
    random_signs(om, (size_t)n * k, t->seed);
    random_signs(psi, (size_t)ll * m, ~t->seed);
    const lg_ops *ops = t->ops;
    ops->gemm(ops, 0, 0, N, k, n, 1.0f, x, n, om, k, 0.0f, t1, k);
    ops->gemm(ops, 1, 0, m, k, N, 1.0f, dy, m, t1, k, 1.0f, t->Y, k);
    ops->gemm(ops, 0, 1, ll, N, m, 1.0f, psi, m, dy, m, 0.0f, t2, N);
    ops->gemm(ops, 0, 0, ll, n, N, 1.0f, t2, N, x, n, 1.0f, t->Z, n);
}

static void report(const lg_ga_opts *o, const char *phase, long done, long total) {
    if (o->progress) o->progress(phase, done, total, o->progress_ud);
}

/* Runs the N estimation batches on the base model (adapters detached) with hooks on
 * targets [lo, hi). Each batch contributes the gradient of its mean loss, divided by N. */
static int estimate_pass(lg_model *m, ga_target *t, int nt, int lo, int hi, int sketch, const lg_ga_opts *o,
                         lg_batch_fn next, void *ud, long *done, long total, double *loss_sum) {
    int B = o->batch_size, T = o->seq_len, rc = 0;
    lg_batch b = {B, T, lg_calloc((size_t)B * T, sizeof(int)), lg_calloc((size_t)B * T, sizeof(int)),
                  lg_calloc((size_t)B * T, sizeof(float))};
    for (int i = 0; i < nt; i++) t[i].lo->lin->adapter = NULL; /* the base model, no adapters */
    for (int i = lo; i < hi; i++) {
        t[i].lo->lin->grad_hook = sketch ? hook_sketch : hook_dense;
        t[i].lo->lin->grad_hook_ud = &t[i];
    }
    int rows; /* dist (docs/mpi.md): each rank takes its rows of every estimation batch */
    lg_dist_rows(B, NULL, &rows);
    if (rows < 1) rc = lg_errorf("LoRA-GA: --ga-batch-size %d is smaller than the %d ranks", B, lg_dist_size());
    if (!rc && lg_model_plan(m, rows, T, 1) != 0) rc = -1;
    *loss_sum = 0;
    for (int bi = 0; !rc && bi < o->batches; bi++) {
        if (next(ud, 2, bi, &b) != 0) {
            rc = -1;
            break;
        }
        lg_batch lb; /* dist: W is the whole batch's weight, so the ranks' parts sum to its mean */
        double W = lg_dist_shard(&b, &lb), w;
        float loss = lg_model_forward(m, &lb, &w);
        if (lg_dist_size() == 1) W = w;
        if (!(W > 0)) continue; /* nothing to predict in this batch: contributes zero */
        if (w > 0 && !isfinite(loss)) {
            rc = lg_errorf("LoRA-GA estimation batch %d: loss is not finite", bi + 1);
            break;
        }
        if (w > 0) *loss_sum += loss * (w / W);
        lg_model_backward(m, &lb, (float)(1.0 / (W * o->batches)));
        report(o, "estimate", ++*done, total);
    }
    /* dist: G and the sketches are linear in the data, so their sums over ranks are exact */
    for (int i = lo; i < hi && !rc; i++) {
        if (t[i].G) lg_dist_allreduce_sum(t[i].G, (size_t)t[i].m * t[i].n);
        if (t[i].Y) lg_dist_allreduce_sum(t[i].Y, (size_t)t[i].m * t[i].k);
        if (t[i].Z) lg_dist_allreduce_sum(t[i].Z, (size_t)t[i].l * t[i].n);
    }
    if (!rc) lg_dist_allreduce_sum_f64(loss_sum, 1);
    for (int i = 0; i < nt; i++) t[i].lo->lin->adapter = &t[i].lo->hdr;
    for (int i = lo; i < hi; i++) {
        t[i].lo->lin->grad_hook = NULL;
        t[i].lo->lin->grad_hook_ud = NULL;
    }
    free(b.inputs), free(b.targets), free(b.weight);
    return rc;
}

/* Top-2r triplets from the sketches (Tropp, Yurtsever, Udell & Cevher 2017, §4):
 * Q = orth(Y); C = argmin ||(Psi Q) C - Z|| (k x n); G ~ Q C; SVD of C gives U = Q U_C. */
static int factorise_sketch(const ga_target *t, int r2, float *Uo, float *So, float *Vo) {
    const lg_ops *ops = t->ops;
    int m = t->m, n = t->n, k = t->k, l = t->l, rc;
    double *Q = lg_malloc((size_t)m * k * sizeof(double)), *M = lg_malloc((size_t)l * k * sizeof(double)),
           *Z = lg_malloc((size_t)l * n * sizeof(double));
    for (size_t i = 0; i < (size_t)m * k; i++) Q[i] = t->Y[i];
    for (size_t i = 0; i < (size_t)l * n; i++) Z[i] = t->Z[i];
    rc = orthonormalise(ops, Q, m, k);
    if (!rc) {
        double *Psi = lg_malloc((size_t)l * m * sizeof(double));
        float *psi = lg_malloc((size_t)l * m * sizeof(float));
        random_signs(psi, (size_t)l * m, ~t->seed);
        for (size_t i = 0; i < (size_t)l * m; i++) Psi[i] = psi[i];
        free(psi);
        ops->dgemm(ops, 0, 0, l, k, m, 1.0, Psi, m, Q, k, 0.0, M, k);
        free(Psi);
        int info = ops->lstsq(ops, l, k, n, M, Z); /* Z[:k] <- C */
        if (info) rc = lg_errorf("LAPACK least squares failed (info %d)", info);
    }
    if (!rc) {
        double *Uc = lg_malloc((size_t)k * k * sizeof(double)), *S = lg_malloc((size_t)k * sizeof(double)),
               *Vt = lg_malloc((size_t)k * n * sizeof(double)), *U = lg_malloc((size_t)m * k * sizeof(double));
        rc = thin_svd(ops, Z, k, n, Uc, S, Vt); /* the first k rows of Z hold C */
        if (!rc) {
            ops->dgemm(ops, 0, 0, m, k, k, 1.0, Q, k, Uc, k, 0.0, U, k);
            store_triplets(U, k, S, Vt, n, m, n, r2, Uo, So, Vo);
        }
        free(Uc), free(S), free(Vt), free(U);
    }
    free(Q), free(M), free(Z);
    return rc;
}

/* A0, B0 from the triplets. Nothing in the model changes yet: every pass must see the base
 * model, so the offsets are applied once all targets are factorised (apply_init). */
static void set_factors(ga_target *t, const float *U, const float *S, const float *V, const lg_ga_opts *o) {
    lg_lora *lo = t->lo;
    int m = t->m, n = t->n, r = lo->r;
    if (!lo->A0) lo->A0 = lg_malloc((size_t)r * n * sizeof(float));
    if (!lo->B0) lo->B0 = lg_malloc((size_t)m * r * sizeof(float));
    lg_ga_init_factors(t->ops, U, S, V, m, n, r, lo->scale, lo->lin->w->data, o, lo->A0, lo->B0);
}

/* A = A0, B = B0 (A0, B0 stay for the export relative to the original W); W <- W - s·B0·A0. */
static void apply_init(const lg_ops *ops, lg_lora *lo) {
    int m = lo->out, n = lo->in, r = lo->r;
    memcpy(lo->A, lo->A0, (size_t)r * n * sizeof(float));
    memcpy(lo->B, lo->B0, (size_t)m * r * sizeof(float));
    ops->gemm(ops, 0, 0, m, n, r, -lo->scale, lo->B0, r, lo->A0, n, 1.0f, lo->lin->w->data, n);
}

/* ------------------------------------------------------------------------------------------ */
/* cache: G (all / serial) or the sketches (sketch), guarded by a checksum of model, data, settings */

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++) h = (h ^ c[i]) * 0x100000001b3ull;
    return h;
}

static int cache_checksum(lg_model *m, ga_target *t, int nt, const lg_ga_opts *o, lg_batch_fn next, void *ud,
                          uint64_t *out) {
    uint64_t h = 0xcbf29ce484222325ull;
    const lg_config *c = lg_model_config(m);
    h = fnv(h, c, sizeof *c);
    for (int i = 0; i < lg_model_n_params(m); i++) { /* every weight: the gradient depends on all */
        lg_param *p = lg_model_param(m, i);
        h = fnv(h, p->name, strlen(p->name));
        h = fnv(h, p->data, (size_t)p->numel * sizeof(float));
    }
    for (int i = 0; i < nt; i++) h = fnv(h, t[i].lo->lin->name, strlen(t[i].lo->lin->name));
    int settings[4] = {o->batches, o->batch_size, o->seq_len, o->mode == LG_GA_SKETCH};
    h = fnv(h, settings, sizeof settings);
    if (o->mode == LG_GA_SKETCH) { /* the sketches depend on their random matrices */
        h = fnv(h, &o->seed, sizeof o->seed);
        h = fnv(h, &t[0].k, sizeof t[0].k);
    }
    int B = o->batch_size, T = o->seq_len;
    lg_batch b = {B, T, lg_calloc((size_t)B * T, sizeof(int)), lg_calloc((size_t)B * T, sizeof(int)),
                  lg_calloc((size_t)B * T, sizeof(float))};
    int rc = 0;
    for (int bi = 0; bi < o->batches && !rc; bi++) {
        if (next(ud, 2, bi, &b) != 0) rc = -1;
        h = fnv(h, b.inputs, (size_t)B * T * sizeof(int));
        h = fnv(h, b.targets, (size_t)B * T * sizeof(int));
        h = fnv(h, b.weight, (size_t)B * T * sizeof(float));
    }
    free(b.inputs), free(b.targets), free(b.weight);
    *out = h;
    return rc;
}

static void tensor_name(char *buf, size_t cap, const ga_target *t, const char *what) {
    snprintf(buf, cap, "%s.%s", t->lo->lin->name, what);
}

/* ------------------------------------------------------------------------------------------ */
/* the driver                                                                                 */

static int want_none(const lg_param *p, void *ud) {
    (void)p, (void)ud;
    return 0;
}

static uint64_t target_seed(uint64_t seed, int i) { return seed * 0x9e3779b97f4a7c15ull + (uint64_t)i * 7919u + 1; }

static void alloc_sketch(ga_target *t, uint64_t seed, ga_scratch *sc) {
    t->seed = seed;
    t->sc = sc;
    t->Y = lg_calloc((size_t)t->m * t->k, sizeof(float));
    t->Z = lg_calloc((size_t)t->l * t->n, sizeof(float));
}

static void free_target(ga_target *t) {
    t->ops->free(t->ops, t->G);
    free(t->Y), free(t->Z);
    t->G = t->Y = t->Z = NULL;
}

/* Factorise one target (dense G or sketches) into its A0, B0. */
/* Diagnostics of one target (see lg_ga_report): captured share and first-step alignment error. */
static void diagnose(const ga_target *t, const float *S, int r2, double *captured, double *align) {
    int m = t->m, n = t->n, r = t->lo->r;
    double g2 = 0, top = 0;
    for (int i = 0; i < r2; i++) top += (double)S[i] * S[i];
    if (!t->G) { /* sketch: E ||Psi g||^2 = l ||g||^2 for a random-sign Psi */
        for (size_t i = 0; i < (size_t)t->l * n; i++) g2 += (double)t->Z[i] * t->Z[i];
        g2 /= t->l;
        *captured = g2 > 0 ? fmin(1.0, top / g2) : 0;
        *align = g2 > 0 ? sqrt(fmax(0.0, 1.0 - *captured)) : NAN; /* no gradient: nothing to align with */
        return;
    }
    for (size_t i = 0; i < (size_t)m * n; i++) g2 += (double)t->G[i] * t->G[i];
    *captured = g2 > 0 ? fmin(1.0, top / g2) : 0;
    if (!(g2 > 0)) {
        *align = NAN;
        return;
    }
    /* unit directions: the columns of B0 and rows of A0, normalised (scales do not matter here) */
    float *Ub = lg_malloc((size_t)m * r * sizeof(float)), *Va = lg_malloc((size_t)r * n * sizeof(float));
    memcpy(Ub, t->lo->B0, (size_t)m * r * sizeof(float));
    memcpy(Va, t->lo->A0, (size_t)r * n * sizeof(float));
    for (int j = 0; j < r; j++) {
        double nb = 0, na = 0;
        for (int i = 0; i < m; i++) nb += (double)Ub[(size_t)i * r + j] * Ub[(size_t)i * r + j];
        for (int i = 0; i < n; i++) na += (double)Va[(size_t)j * n + i] * Va[(size_t)j * n + i];
        for (int i = 0; i < m; i++) Ub[(size_t)i * r + j] = nb > 0 ? (float)(Ub[(size_t)i * r + j] / sqrt(nb)) : 0;
        for (int i = 0; i < n; i++) Va[(size_t)j * n + i] = na > 0 ? (float)(Va[(size_t)j * n + i] / sqrt(na)) : 0;
    }
    /* R = G - Ub (Ub^T G) - (G Va^T) Va */
    float *R = lg_malloc((size_t)m * n * sizeof(float)), *BtG = lg_malloc((size_t)r * n * sizeof(float)),
          *GAt = lg_malloc((size_t)m * r * sizeof(float));
    memcpy(R, t->G, (size_t)m * n * sizeof(float));
    const lg_ops *ops = t->ops;
    ops->gemm(ops, 1, 0, r, n, m, 1.0f, Ub, r, t->G, n, 0.0f, BtG, n);
    ops->gemm(ops, 0, 1, m, r, n, 1.0f, t->G, n, Va, n, 0.0f, GAt, r);
    ops->gemm(ops, 0, 0, m, n, r, -1.0f, Ub, r, BtG, n, 1.0f, R, n);
    ops->gemm(ops, 0, 0, m, n, r, -1.0f, GAt, r, Va, n, 1.0f, R, n);
    double e2 = 0;
    for (size_t i = 0; i < (size_t)m * n; i++) e2 += (double)R[i] * R[i];
    *align = sqrt(e2 / g2);
    free(Ub), free(Va), free(R), free(BtG), free(GAt);
}

/* What factorising one target produced, kept until the targets are finished in order. */
typedef struct {
    int rc;
    char err[512]; /* the worker thread's message (lg_last_error is per thread) */
    float *S;      /* 2r singular values */
    double captured, align;
} target_out;

/* The per-target work, safe to run for several targets at once (it touches only its target):
 * top-2r triplets of G (or of the sketches), A0 and B0, and the diagnostics. */
static void factorise_target(ga_target *t, int index, const lg_ga_opts *o, target_out *res) {
    int r = t->lo->r, r2 = 2 * r;
    res->S = lg_malloc((size_t)r2 * sizeof(float));
    if (r2 > LG_MIN(t->m, t->n)) {
        res->rc = lg_errorf("%s: rank %d needs 2r = %d singular vectors but the layer is %d x %d", t->lo->lin->name,
                            r, r2, t->m, t->n);
    } else if (!t->G && t->k < r2) {
        res->rc = lg_errorf("%s: sketch width %d is below 2r = %d", t->lo->lin->name, t->k, r2);
    } else {
        float *U = lg_malloc((size_t)t->m * r2 * sizeof(float)), *V = lg_malloc((size_t)t->n * r2 * sizeof(float));
        res->rc = t->G ? lg_ga_svd(t->ops, t->G, t->m, t->n, r2, 4 * r, 4, target_seed(o->seed, index), U, res->S, V)
                       : factorise_sketch(t, r2, U, res->S, V);
        if (res->rc) lg_errorf_prefix("%s", t->lo->lin->name);
        else set_factors(t, U, res->S, V, o);
        free(U), free(V);
    }
    if (res->rc) snprintf(res->err, sizeof res->err, "%s", lg_last_error());
    else diagnose(t, res->S, r2, &res->captured, &res->align);
}

/* Factorise targets [lo, hi): in parallel (each factorisation's BLAS then runs on one thread:
 * these are skinny GEMMs and small LAPACK calls, which gain little from threads of their own),
 * then, in target order, what must be sequential: the broadcast (the same order on every rank),
 * the report, the diagnostics file, freeing the gradients. */
static int factorise_range(ga_target *t, int lo, int hi, const lg_ga_opts *o, lg_ga_report *rep, FILE *diag,
                           int nt) {
    const int n = hi - lo;
    target_out *res = lg_calloc((size_t)(n > 0 ? n : 1), sizeof *res);
    double t0 = lg_now();
    int finished = 0;
#pragma omp parallel for schedule(dynamic, 1) if (n > 1)
    for (int j = 0; j < n; j++) {
        factorise_target(&t[lo + j], lo + j, o, &res[j]);
#pragma omp critical(loraga_progress)
        report(o, "factorise", lo + ++finished, nt); /* targets before lo are done */
    }
    rep->factorise_seconds += lg_now() - t0;
    int rc = 0;
    for (int j = 0; j < n; j++) {
        ga_target *tg = &t[lo + j];
        const int index = lo + j, r2 = 2 * tg->lo->r;
        if (!rc && res[j].rc) rc = lg_errorf("%s", res[j].err);
        if (!rc) { /* dist: every rank factorised the same G; rank 0's factors make the offsets identical */
            lg_dist_bcast(tg->lo->A0, (size_t)tg->lo->r * tg->n * sizeof(float), 0);
            lg_dist_bcast(tg->lo->B0, (size_t)tg->m * tg->lo->r * sizeof(float), 0);
            const int zero = isnan(res[j].align); /* a zero gradient: no alignment to speak of, not a perfect one */
            if (zero) {
                rep->zero_gradient++;
                if (lg_dist_rank() == 0)
                    fprintf(stderr, "LoRA-GA: warning: %s received an exactly zero gradient over the estimation "
                                    "batches (no example reaches it?): its initialisation is not gradient-aligned\n",
                            tg->lo->lin->name);
            } else { /* divided by the count at the end */
                const int first = index - rep->zero_gradient == 0;
                rep->captured_mean += res[j].captured;
                rep->align_err_mean += res[j].align;
                rep->captured_min = first ? res[j].captured : fmin(rep->captured_min, res[j].captured);
                rep->align_err_max = fmax(rep->align_err_max, res[j].align);
            }
            if (diag) {
                char al[32];
                if (zero) snprintf(al, sizeof al, "null, \"zero_gradient\": true");
                else snprintf(al, sizeof al, "%.6f", res[j].align);
                fprintf(diag, "{\"module\": \"%s\", \"m\": %d, \"n\": %d, \"captured\": %.6f, \"align_err\": %s, "
                              "%s\"sigma\": [", tg->lo->lin->name, tg->m, tg->n, res[j].captured, al,
                        tg->G ? "" : "\"estimated\": true, ");
                for (int i = 0; i < r2; i++) fprintf(diag, "%s%.6g", i ? ", " : "", res[j].S[i]);
                fprintf(diag, "]}\n");
            }
        }
        free(res[j].S);
        free_target(tg);
    }
    free(res);
    return rc;
}

int lg_loraga_init(lg_model *m, lg_adapters *a, const lg_ga_opts *o, lg_batch_fn next, void *ud,
                   lg_ga_report *rep) {
    memset(rep, 0, sizeof *rep);
    int nt = lg_adapters_count(a);
    if (nt == 0) return lg_errorf("LoRA-GA: no adapted layers");
    if (o->batches < 1 || o->batch_size < 1 || o->seq_len < 2)
        return lg_errorf("LoRA-GA: --ga-batches and --ga-batch-size must be >= 1");
    if (!(o->gamma > 0) || !isfinite(o->gamma)) /* the stable scale divides by sqrt(gamma) */
        return lg_errorf("LoRA-GA: --ga-gamma %g must be a positive number", (double)o->gamma);
    if (o->sketch_k < 0) return lg_errorf("LoRA-GA: --ga-sketch-k %d must be >= 0 (0: 8r)", o->sketch_k);
    for (int i = 0; i < nt && o->mode == LG_GA_SKETCH && o->sketch_k > 0; i++)
        if (o->sketch_k < 2 * lg_adapters_get(a, i)->r) /* the sketch must hold the 2r directions taken */
            return lg_errorf("LoRA-GA: --ga-sketch-k %d is below 2r = %d (r %d): the sketches must span the 2r "
                             "directions LoRA-GA takes; use at least %d (default 8r)",
                             o->sketch_k, 2 * lg_adapters_get(a, i)->r, lg_adapters_get(a, i)->r,
                             2 * lg_adapters_get(a, i)->r);
    ga_target *t = lg_calloc((size_t)nt, sizeof *t);
    for (int i = 0; i < nt; i++) {
        t[i].lo = lg_adapters_get(a, i);
        t[i].ops = lg_model_ops(m);
        t[i].m = t[i].lo->out;
        t[i].n = t[i].lo->in;
    }
    int sketch = o->mode == LG_GA_SKETCH, rc = 0;
    int k = o->sketch_k > 0 ? o->sketch_k : 8 * t[0].lo->r;
    lg_model_set_trainable(m, want_none, NULL); /* the hooks see dy and x: no dW buffers at all */
    ga_scratch scratch = {0};
    FILE *diag = NULL;
    if (o->diag_path && !(diag = fopen(o->diag_path, "w"))) {
        free(t);
        return lg_errorf("%s: cannot create the diagnostics file", o->diag_path);
    }
    double t0 = lg_now();
    uint64_t sum = 0;
    char csum[32] = "";
    lg_st_writer *cw = NULL;
    lg_safetensors *cache = NULL;
    if (sketch)
        /* l = 4k + 1 co-range rows: Tropp et al.'s error factor 1 + k/(l - k - 1) drops from 2 (l = 2k + 1)
         * to 1.33; on stories260K (r 4, k 8r) that takes the first-step alignment error from 6 % to 3 %
         * above the exact modes' (tests/test_loraga.c) */
        for (int i = 0; i < nt; i++) t[i].k = LG_MIN(k, LG_MIN(t[i].m, t[i].n)), t[i].l = 4 * t[i].k + 1;
    if (o->cache_path) {
        if (cache_checksum(m, t, nt, o, next, ud, &sum) != 0) goto fail;
        snprintf(csum, sizeof csum, "%016llx", (unsigned long long)sum);
        /* dist: ranks must agree (one reading the cache while another estimates would hang) */
        double present[2] = {lg_file_exists(o->cache_path), 1};
        lg_dist_allreduce_sum_f64(present, 2);
        if (present[0] != 0 && present[0] != present[1]) {
            lg_errorf("%s: the gradient cache exists on %.0f of %.0f ranks; give every rank the same file system "
                      "or remove it", o->cache_path, present[0], present[1]);
            goto fail;
        }
        if (present[0] > 0) {
            if (lg_st_open(o->cache_path, &cache) != 0) goto fail;
            const char *have = lg_st_metadata(cache, "loraga_ga_checksum");
            if (!have || strcmp(have, csum)) {
                lg_errorf("%s: gradient cache does not match this model, data and estimation settings "
                          "(checksum %s, expected %s); delete it or choose another --ga-cache",
                          o->cache_path, have ? have : "none", csum);
                goto fail;
            }
            rep->from_cache = 1;
        }
    }

    if (rep->from_cache) { /* load one target at a time, factorise, free */
        for (int i = 0; i < nt && !rc; i++) {
            char nm[160];
            if (sketch) {
                alloc_sketch(&t[i], target_seed(o->seed, i), &scratch);
                tensor_name(nm, sizeof nm, &t[i], "ga_Y");
                int64_t sy[2] = {t[i].m, t[i].k}, sz[2] = {t[i].l, t[i].n};
                rc = lg_st_read_f32(cache, nm, t[i].Y, 2, sy);
                tensor_name(nm, sizeof nm, &t[i], "ga_Z");
                if (!rc) rc = lg_st_read_f32(cache, nm, t[i].Z, 2, sz);
            } else {
                t[i].G = t[i].ops->alloc(t[i].ops, (size_t)t[i].m * t[i].n * sizeof(float));
                tensor_name(nm, sizeof nm, &t[i], "ga_G");
                int64_t sg[2] = {t[i].m, t[i].n};
                rc = lg_st_read_f32(cache, nm, t[i].G, 2, sg);
            }
            rep->estimate_seconds = lg_now() - t0;
            if (!rc) rc = factorise_range(t, i, i + 1, o, rep, diag, nt); /* one in memory at a time */
            free_target(&t[i]);
        }
        if (rc) goto fail;
        goto done;
    }

    /* Group the targets: everything at once (all, sketch) or what fits the budget (serial). */
    int *group_end = lg_malloc((size_t)(nt + 1) * sizeof(int));
    int ngroups = 0;
    if (o->mode == LG_GA_SERIAL) {
        size_t used = 0;
        for (int i = 0; i < nt; i++) {
            size_t need = (size_t)t[i].m * t[i].n * sizeof(float);
            if (need > o->mem_budget) {
                free(group_end);
                lg_errorf("--ga-mem %zu bytes is smaller than the gradient of %s (%zu bytes)", o->mem_budget,
                          t[i].lo->lin->name, need);
                goto fail;
            }
            if (used + need > o->mem_budget) group_end[ngroups++] = i, used = 0;
            used += need;
        }
    }
    group_end[ngroups++] = nt;
    rep->groups = ngroups;
    rep->passes = ngroups;

    if (o->cache_path && lg_dist_rank() == 0) { /* dist: rank 0 writes the (reduced) cache */
        int nitems = sketch ? 2 * nt : nt;
        lg_st_item *items = lg_calloc((size_t)nitems, sizeof *items);
        char (*names)[160] = lg_calloc((size_t)nitems, sizeof *names);
        for (int i = 0; i < nt; i++) {
            if (sketch) {
                tensor_name(names[2 * i], 160, &t[i], "ga_Y");
                tensor_name(names[2 * i + 1], 160, &t[i], "ga_Z");
                items[2 * i] = (lg_st_item){names[2 * i], LG_DT_F32, 2, {t[i].m, t[i].k, 0, 0}, NULL};
                items[2 * i + 1] = (lg_st_item){names[2 * i + 1], LG_DT_F32, 2, {t[i].l, t[i].n, 0, 0}, NULL};
            } else {
                tensor_name(names[i], 160, &t[i], "ga_G");
                items[i] = (lg_st_item){names[i], LG_DT_F32, 2, {t[i].m, t[i].n, 0, 0}, NULL};
            }
        }
        lg_st_meta meta[] = {{"loraga_ga_checksum", csum}, {"format", sketch ? "sketch" : "gradient"}};
        rc = lg_st_writer_begin(o->cache_path, items, nitems, meta, 2, &cw);
        free(items);
        free(names);
        if (rc) {
            free(group_end);
            goto fail;
        }
    }

    long done = 0, total = (long)o->batches * ngroups;
    double loss_sum = 0;
    for (int g = 0, lo = 0; g < ngroups && !rc; lo = group_end[g++]) {
        int hi = group_end[g];
        size_t bytes = 0;
        for (int i = lo; i < hi; i++) {
            if (sketch) {
                alloc_sketch(&t[i], target_seed(o->seed, i), &scratch);
                bytes += ((size_t)t[i].m * t[i].k + (size_t)t[i].l * t[i].n) * sizeof(float);
            } else {
                t[i].G = t[i].ops->alloc(t[i].ops, (size_t)t[i].m * t[i].n * sizeof(float));
                bytes += (size_t)t[i].m * t[i].n * sizeof(float);
            }
        }
        rep->extra_bytes = LG_MAX(rep->extra_bytes, bytes);
        double ts = lg_now();
        rc = estimate_pass(m, t, nt, lo, hi, sketch, o, next, ud, &done, total, &loss_sum);
        rep->estimate_seconds += lg_now() - ts;
        rep->mean_loss = loss_sum / o->batches;
        for (int i = lo; i < hi && !rc && cw; i++) { /* the cache, in target order */
            rc = sketch ? lg_st_writer_put(cw, t[i].Y) : lg_st_writer_put(cw, t[i].G);
            if (!rc && sketch) rc = lg_st_writer_put(cw, t[i].Z);
        }
        if (!rc) rc = factorise_range(t, lo, hi, o, rep, diag, nt);
    }
    free(group_end);
    if (rc) goto fail;
    if (cw) {
        rc = lg_st_writer_commit(cw);
        cw = NULL;
        if (rc) goto fail;
    }
done:
    for (int i = 0; i < nt; i++) apply_init(lg_model_ops(m), t[i].lo);
    lg_model_unpack(m); /* W changed */
    rep->estimated = sketch;
    if (rep->zero_gradient < nt) {
        rep->captured_mean /= nt - rep->zero_gradient;
        rep->align_err_mean /= nt - rep->zero_gradient;
    } else {
        rep->captured_mean = rep->align_err_mean = rep->captured_min = rep->align_err_max = NAN;
    }
    if (diag) {
        int bad = ferror(diag);
        bad |= fclose(diag) != 0;
        diag = NULL;
        if (bad) {
            lg_errorf("%s: write failed (disk full?)", o->diag_path);
            goto fail;
        }
    }
    free(scratch.om), free(scratch.psi), free(scratch.t1), free(scratch.t2);
    lg_st_close(cache);
    free(t);
    return 0;
fail:
    if (diag) fclose(diag);
    free(scratch.om), free(scratch.psi), free(scratch.t1), free(scratch.t2);
    if (cw) lg_st_writer_abort(cw);
    if (cache) lg_st_close(cache);
    for (int i = 0; i < nt; i++) free_target(&t[i]);
    free(t);
    return -1;
}
