/* lora.c — the LoRA family (LoRA, rsLoRA, LoRA+, DoRA, PiSSA, AdaLoRA) on the decoder's linear layers.
 *
 * Conventions follow Hugging Face PEFT (facts, not code): kaiming-uniform(a=sqrt 5) or N(0, 1/r)
 * for A with B = 0; PiSSA from the SVD of W with W <- W - sBA; DoRA's row norm detached in
 * backward; AdaLoRA's P diag(E) Q with sensitivity EMA, cubic budget schedule and orthogonality
 * regulariser averaged over all adapter matrices.
 *
 * Memory: per adapter we keep only what backward needs and cannot cheaply rebuild: H = xd A^T
 * (N x r) and, for DoRA, base + lora (N x out). The dropped-out input xd is NOT stored: its mask
 * is a counter-based hash of (drop_seed, drop_calls, element index) and is regenerated in
 * backward, so the N x in scratch is shared by all adapters (owned by lg_adapters). The fields
 * xd, dH and dys of lg_lora therefore stay NULL; the shared buffers live in the owner. */
#include "adapters/lora.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "io/safetensors.h"
#include "adapters/lora_io.h"

#define NAME_CAP 144

/* lg_lora plus what only this file needs; pub must come first (the hook casts back). */
typedef struct {
    lg_lora pub;
    lg_adapters *owner;
    int index;
    int dropped; /* the last forward applied dropout (training): backward must rebuild its mask */
    char name_A[NAME_CAP], name_B[NAME_CAP], name_mag[NAME_CAP], name_E[NAME_CAP];
    /* AdaLoRA sensitivity state per element of A (r x in), E (r), B (out x r) */
    float *ea_ipt, *ea_unc;
} lora_impl;

struct lg_adapters {
    lg_model *m;
    const lg_ops *ops; /* the model's backend: every product and buffer goes through it */
    lg_lora_opts o;
    char *targets;     /* owned copy behind o.targets */
    int n;
    lora_impl **ad;
    float *params, *grads; /* arenas */
    int64_t numel;
    int max_in, max_out, max_r;
    /* shared scratch (valid only inside one hook call; DoRA's returned dy' until the next call) */
    long cap_N;
    float *xs;    /* N x max_in: dropped-out input, then dH A before masking */
    float *gs;    /* N x max_r:  H diag(E) (AdaLoRA) */
    float *dgs;   /* N x max_r:  dL/dG */
    float *dys;   /* N x max_out: DoRA dy (x) mag/||W + sBA|| */
    float *wfull; /* max out*in over DoRA adapters: W + sBA */
    /* AdaLoRA */
    int adalora;
    long init_bgt, target_bgt;
    int final_done;
    double *scores, *sorted; /* init_bgt */
    float *orth;             /* max_r x max_r */
    /* target patterns as written to adapter_config.json */
    int npat;
    char **pat;
};

/* ------------------------------------------------------------------------------------------ */
/* small helpers                                                                              */

static inline uint64_t mix64(uint64_t z) { /* splitmix64 finaliser */
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* The dropout mask is a pure function of (seed, call, element): key = hash(seed, call), element i
 * is dropped when the top 24 bits of splitmix64(key + i) fall below p * 2^24. Backward rebuilds
 * it instead of storing it. */
static inline uint64_t drop_key(uint64_t seed, uint64_t calls) { return mix64(seed ^ mix64(calls)); }
static inline uint32_t drop_thr(float p) { return (uint32_t)((double)p * 16777216.0); }
static inline int dropped_at(uint64_t key, long i, uint32_t thr) {
    return (uint32_t)(mix64(key + (uint64_t)i * 0x9e3779b97f4a7c15ULL) >> 40) < thr;
}

/* Inverted dropout of src (count elements) into dst with the mask of call `calls`. */
static void dropout_apply(float *dst, const float *src, long count, uint64_t seed, uint64_t calls, float p) {
    const uint64_t key = drop_key(seed, calls);
    const uint32_t thr = drop_thr(p);
    const float keep_scale = 1.0f / (1.0f - p);
#pragma omp parallel for schedule(static) if (count > 65536)
    for (long i = 0; i < count; i++) dst[i] = dropped_at(key, i, thr) ? 0.0f : src[i] * keep_scale;
}

static void grow(const lg_ops *ops, float **p, size_t n) {
    ops->free(ops, *p);
    *p = ops->alloc(ops, n * sizeof(float));
}

/* Scratch for N rows: grows once to the largest N seen, so steady-state steps never allocate. */
static void ensure_scratch(lora_impl *im, int N) {
    lg_lora *a = &im->pub;
    lg_adapters *o = im->owner;
    if (N > a->cap_N) {
        grow(o->ops, &a->H, (size_t)N * a->r);
        if (a->mag) grow(o->ops, &a->base_out, (size_t)N * a->out);
        a->cap_N = N;
    }
    if (N > o->cap_N) {
        grow(o->ops, &o->xs, (size_t)N * o->max_in);
        grow(o->ops, &o->gs, (size_t)N * o->max_r);
        grow(o->ops, &o->dgs, (size_t)N * o->max_r);
        grow(o->ops, &o->dys, (size_t)N * o->max_out);
        o->cap_N = N;
    }
}

/* Effective singular value of rank k (AdaLoRA): masked ranks contribute nothing. */
static inline float e_eff(const lg_lora *a, int k) { return a->rank_mask[k] ? a->E[k] : 0.0f; }

/* wn[o] = ||W_o + s (B A)_o|| over the input dimension (DoRA; PEFT's get_weight_norm). */
static void dora_row_norms(const lg_ops *ops, const lg_lora *a, float *wfull, float *wn) {
    const int m = a->out, n = a->in;
    lg_param_read_f32(a->lin->w, wfull); /* either storage (bf16 frozen base) */
    ops->gemm(ops, 0, 0, m, n, a->r, a->scale, a->B, a->r, a->A, n, 1.0f, wfull, n);
#pragma omp parallel for schedule(static) if ((long)m * n > 65536)
    for (int i = 0; i < m; i++) {
        double s = 0;
        const float *row = wfull + (size_t)i * n;
        for (int j = 0; j < n; j++) s += (double)row[j] * row[j];
        wn[i] = (float)sqrt(s);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* the hook                                                                                   */

static void lora_forward(lg_adapter *h, const struct lg_linear *l, float *y, const float *x, int N, int training) {
    lora_impl *im = (lora_impl *)h;
    lg_lora *a = &im->pub;
    lg_adapters *o = im->owner;
    if (N <= 0) return;
    ensure_scratch(im, N);
    const int r = a->r, in = a->in, out = a->out;
    const float *xd = x;
    im->dropped = training && a->dropout > 0;
    if (im->dropped) {
        a->drop_calls++; /* a fresh mask per training forward; backward reuses this count */
        dropout_apply(o->xs, x, (long)N * in, a->drop_seed, a->drop_calls, a->dropout);
        xd = o->xs;
    }
    o->ops->gemm(o->ops, 0, 1, N, r, in, 1.0f, xd, in, a->A, in, 0.0f, a->H, r);
    const float *G = a->H;
    if (a->E) {
        float *g = o->gs;
        for (long t = 0; t < N; t++)
            for (int k = 0; k < r; k++) g[t * r + k] = a->H[t * r + k] * e_eff(a, k);
        G = g;
    }
    if (!a->mag) {
        o->ops->gemm(o->ops, 0, 1, N, out, r, a->scale, G, r, a->B, r, 1.0f, y, out);
        return;
    }
    /* DoRA: y = b + mns (x) (base + L), written as PEFT does, y + (mns - 1) base + mns L, so that
     * mns == 1 and L == 0 at initialisation leave y bit-identical. base_out keeps base + L. */
    dora_row_norms(o->ops, a, o->wfull, a->wnorm);
    float *bo = a->base_out;
    o->ops->gemm(o->ops, 0, 1, N, out, r, a->scale, G, r, a->B, r, 0.0f, bo, out);
    const float *bias = l->b ? l->b->data : NULL;
    const float *mag = a->mag, *wn = a->wnorm;
#pragma omp parallel for schedule(static) if ((long)N * out > 65536)
    for (long t = 0; t < N; t++) {
        float *yr = y + t * out, *br = bo + t * out;
        for (int i = 0; i < out; i++) {
            float wni = wn[i] > 0 ? wn[i] : 1.0f;
            float mns = mag[i] / wni;
            float base = yr[i] - (bias ? bias[i] : 0.0f);
            float lo = br[i];
            yr[i] = yr[i] + (mns - 1.0f) * base + mns * lo;
            br[i] = base + lo;
        }
    }
}

static const float *lora_backward(lg_adapter *h, const struct lg_linear *l, float *dx, const float *dy,
                                  const float *x, int N) {
    (void)l;
    lora_impl *im = (lora_impl *)h;
    lg_lora *a = &im->pub;
    lg_adapters *o = im->owner;
    if (N <= 0) return dy;
    ensure_scratch(im, N); /* no-op after forward */
    const int r = a->r, in = a->in, out = a->out;
    const float *dyp = dy;
    if (a->mag) {
        /* the norm is a constant here (DoRA paper §4.3, PEFT detaches it) */
        const float *bo = a->base_out, *wn = a->wnorm, *mag = a->mag;
        float *dmag = a->dmag, *dys = o->dys;
        /* dmag_i += sum_t dy_ti (base + L)_ti / wn_i, by column blocks so rows are read contiguously */
        const int CB = 128;
#pragma omp parallel for schedule(static) if ((long)N * out > 65536)
        for (int i0 = 0; i0 < out; i0 += CB) {
            const int i1 = LG_MIN(out, i0 + CB);
            double acc[128] = {0};
            for (long t = 0; t < N; t++) {
                const float *dr = dy + t * out, *br = bo + t * out;
                for (int i = i0; i < i1; i++) acc[i - i0] += (double)dr[i] * br[i];
            }
            for (int i = i0; i < i1; i++) {
                float wni = wn[i] > 0 ? wn[i] : 1.0f;
                dmag[i] += (float)(acc[i - i0] / wni);
            }
        }
#pragma omp parallel for schedule(static) if ((long)N * out > 65536)
        for (long t = 0; t < N; t++)
            for (int i = 0; i < out; i++) {
                float wni = wn[i] > 0 ? wn[i] : 1.0f;
                dys[t * out + i] = dy[t * out + i] * (mag[i] / wni);
            }
        dyp = dys;
    }
    const float *G = a->H;
    if (a->E) {
        float *g = o->gs;
        for (long t = 0; t < N; t++)
            for (int k = 0; k < r; k++) g[t * r + k] = a->H[t * r + k] * e_eff(a, k);
        G = g;
    }
    /* dB += s dy'^T G;  dG = s dy' B */
    o->ops->gemm(o->ops, 1, 0, out, r, N, a->scale, dyp, out, G, r, 1.0f, a->dB, r);
    float *dG = o->dgs;
    o->ops->gemm(o->ops, 0, 0, N, r, out, a->scale, dyp, out, a->B, r, 0.0f, dG, r);
    if (a->E) {
        /* dE is the gradient w.r.t. the effective value, also for masked ranks, so that a masked
         * triplet keeps a sensitivity and may win its rank back at the next reallocation (PEFT
         * zeroes E but keeps differentiating it). Then dH = dG diag(E_eff). */
        for (int k = 0; k < r; k++) {
            double acc = 0;
            for (long t = 0; t < N; t++) acc += (double)dG[t * r + k] * a->H[t * r + k];
            a->dE[k] += (float)acc;
        }
        for (long t = 0; t < N; t++)
            for (int k = 0; k < r; k++) dG[t * r + k] *= e_eff(a, k);
    }
    const int drop = im->dropped;
    const float *xd = x;
    if (drop) {
        dropout_apply(o->xs, x, (long)N * in, a->drop_seed, a->drop_calls, a->dropout);
        xd = o->xs;
    }
    o->ops->gemm(o->ops, 1, 0, r, in, N, 1.0f, dG, r, xd, in, 1.0f, a->dA, in);
    if (dx) {
        if (!drop) {
            o->ops->gemm(o->ops, 0, 0, N, in, r, 1.0f, dG, r, a->A, in, 1.0f, dx, in);
        } else {
            /* d xd = dG A, then back through the forward's mask (rebuilt from its call count) */
            float *t = o->xs;
            o->ops->gemm(o->ops, 0, 0, N, in, r, 1.0f, dG, r, a->A, in, 0.0f, t, in);
            const long cnt = (long)N * in;
            const uint64_t key = drop_key(a->drop_seed, a->drop_calls);
            const uint32_t thr = drop_thr(a->dropout);
            const float keep_scale = 1.0f / (1.0f - a->dropout);
#pragma omp parallel for schedule(static) if (cnt > 65536)
            for (long i = 0; i < cnt; i++)
                if (!dropped_at(key, i, thr)) dx[i] += t[i] * keep_scale;
        }
    }
    return dyp;
}

static const lg_adapter_vt VT_LORA = {"lora", lora_forward, lora_backward};
static const lg_adapter_vt VT_DORA = {"dora", lora_forward, lora_backward};
static const lg_adapter_vt VT_ADALORA = {"adalora", lora_forward, lora_backward};

/* ------------------------------------------------------------------------------------------ */
/* options and target matching                                                                */

void lg_lora_opts_default(lg_lora_opts *o) {
    memset(o, 0, sizeof *o);
    o->r = 8;
    o->alpha = 16.0f;
    o->dropout = 0.0f;
    o->targets = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj";
    o->init = LG_INIT_KAIMING;
    o->seed = 42;
    /* AdaLoRA: PEFT AdaLoraConfig defaults (total_steps must be given) */
    o->target_r = 8;
    o->tinit = 0;
    o->tfinal = 0;
    o->total_steps = 0;
    o->delta_t = 1;
    o->ada_beta1 = 0.85f;
    o->ada_beta2 = 0.85f;
    o->orth_reg = 0.5f;
}

/* PEFT's rule: the module name equals the pattern or ends with "." + pattern. */
static int name_matches(const char *name, const char *pat) {
    if (!strcmp(pat, "all-linear")) return 1;
    size_t ln = strlen(name), lp = strlen(pat);
    if (ln == lp) return !strcmp(name, pat);
    return ln > lp && name[ln - lp - 1] == '.' && !strcmp(name + ln - lp, pat);
}

static void free_patterns(char **p, int n) {
    for (int i = 0; i < n; i++) free(p[i]);
    free(p);
}

/* Split "a, b,c" into trimmed, non-empty, distinct patterns. */
static int parse_targets(const char *s, char ***out, int *n) {
    char **p = NULL;
    int k = 0;
    const char *c = s;
    while (*c) {
        const char *e = strchr(c, ',');
        if (!e) e = c + strlen(c);
        const char *b = c, *f = e;
        while (b < f && (*b == ' ' || *b == '\t')) b++;
        while (f > b && (f[-1] == ' ' || f[-1] == '\t')) f--;
        if (f > b) {
            char *t = lg_malloc((size_t)(f - b) + 1);
            memcpy(t, b, (size_t)(f - b));
            t[f - b] = 0;
            int dup = 0;
            for (int i = 0; i < k; i++) dup |= !strcmp(p[i], t);
            if (dup) {
                free(t);
            } else {
                p = lg_realloc(p, (size_t)(k + 1) * sizeof(char *));
                p[k++] = t;
            }
        }
        c = *e ? e + 1 : e;
    }
    if (!k) {
        free(p);
        return lg_errorf("no LoRA target modules given (targets \"%s\")", s);
    }
    *out = p;
    *n = k;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* initialisation                                                                             */

/* PiSSA: W = U S V^T (double precision), A = diag(sqrt(S_r/s)) V_r^T, B = U_r diag(sqrt(S_r/s)),
 * W <- W - s B A computed from the float A, B so that W_res + sBA == W up to one rounding. */
static int pissa_init(const lg_ops *ops, lg_lora *a) {
    const int m = a->out, n = a->in, k = LG_MIN(m, n), r = a->r;
    if (r > k) return lg_errorf("%s: PiSSA rank %d exceeds min(out, in) = %d", a->lin->name, r, k);
    float *W = a->lin->w->data;
    double *w = lg_malloc((size_t)m * n * sizeof(double));
    double *u = lg_malloc((size_t)m * k * sizeof(double));
    double *vt = lg_malloc((size_t)k * n * sizeof(double));
    double *sv = lg_malloc((size_t)k * sizeof(double));
    for (size_t i = 0; i < (size_t)m * n; i++) w[i] = W[i];
    int info = ops->svd(ops, m, n, w, sv, u, vt);
    if (info != 0) {
        free(w), free(u), free(vt), free(sv);
        return lg_errorf("%s: SVD for PiSSA failed (LAPACK dgesdd info %d)", a->lin->name, info);
    }
    for (int j = 0; j < r; j++) {
        double f = sqrt(sv[j] / a->scale);
        for (int c = 0; c < n; c++) a->A[(size_t)j * n + c] = (float)(f * vt[(size_t)j * n + c]);
        for (int i = 0; i < m; i++) a->B[(size_t)i * r + j] = (float)(u[(size_t)i * k + j] * f);
    }
#pragma omp parallel for schedule(static) if ((long)m * n > 65536)
    for (int i = 0; i < m; i++)
        for (int c = 0; c < n; c++) {
            double d = 0;
            for (int j = 0; j < r; j++) d += (double)a->B[(size_t)i * r + j] * a->A[(size_t)j * n + c];
            W[(size_t)i * n + c] = (float)((double)W[(size_t)i * n + c] - a->scale * d);
        }
    free(w), free(u), free(vt), free(sv);
    a->A0 = lg_malloc((size_t)r * n * sizeof(float));
    a->B0 = lg_malloc((size_t)m * r * sizeof(float));
    memcpy(a->A0, a->A, (size_t)r * n * sizeof(float));
    memcpy(a->B0, a->B, (size_t)m * r * sizeof(float));
    return 0;
}

static int init_adapter(lora_impl *im, const lg_lora_opts *o) {
    lg_lora *a = &im->pub;
    lg_rng rng;
    lg_rng_seed(&rng, mix64(o->seed ^ mix64(0x10a0u + (uint64_t)im->index)));
    const int r = a->r, in = a->in, out = a->out;
    const int64_t na = (int64_t)r * in, nb = (int64_t)out * r;
    if (im->owner->adalora) {
        if (o->init != LG_INIT_NONE) { /* PEFT AdaLoRA: A, B ~ N(0, 0.02), E = 0 */
            for (int64_t i = 0; i < na; i++) a->A[i] = 0.02f * lg_rng_normal(&rng);
            for (int64_t i = 0; i < nb; i++) a->B[i] = 0.02f * lg_rng_normal(&rng);
        }
        for (int k = 0; k < r; k++) a->rank_mask[k] = 1;
        return 0;
    }
    switch (o->init) {
    case LG_INIT_KAIMING: {
        /* torch kaiming_uniform_(a = sqrt 5): bound = sqrt(6 / ((1 + 5) fan_in)) = 1 / sqrt(fan_in) */
        const float bound = 1.0f / sqrtf((float)in);
        for (int64_t i = 0; i < na; i++) a->A[i] = bound * (2.0f * lg_rng_uniform(&rng) - 1.0f);
        break;
    }
    case LG_INIT_GAUSSIAN: /* PEFT "gaussian": std 1/r */
        for (int64_t i = 0; i < na; i++) a->A[i] = lg_rng_normal(&rng) / (float)r;
        break;
    case LG_INIT_PISSA:
        if (pissa_init(im->owner->ops, a) != 0) return -1;
        break;
    case LG_INIT_ADALORA: /* without opts.adalora: plain LoRA with AdaLoRA's N(0, 0.02) on A */
        for (int64_t i = 0; i < na; i++) a->A[i] = 0.02f * lg_rng_normal(&rng);
        break;
    case LG_INIT_NONE:
        break;
    default:
        return lg_errorf("unknown LoRA init %d", (int)o->init);
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* attach / free                                                                              */

static size_t pad16(int64_t n) { return (size_t)((n + 15) & ~(int64_t)15); }

void lg_adapters_free(lg_adapters *a) {
    if (!a) return;
    for (int i = 0; i < a->n; i++) {
        lora_impl *im = a->ad[i];
        lg_lora *l = &im->pub;
        if (l->lin && l->lin->adapter == &l->hdr) l->lin->adapter = NULL;
        a->ops->free(a->ops, l->H);
        a->ops->free(a->ops, l->base_out);
        free(l->wnorm);
        free(l->rank_mask);
        free(l->A0);
        free(l->B0);
        free(im->ea_ipt);
        free(im->ea_unc);
        free(im);
    }
    free(a->ad);
    a->ops->free(a->ops, a->params);
    a->ops->free(a->ops, a->grads);
    a->ops->free(a->ops, a->xs);
    a->ops->free(a->ops, a->gs);
    a->ops->free(a->ops, a->dgs);
    a->ops->free(a->ops, a->dys);
    a->ops->free(a->ops, a->wfull);
    free(a->scores);
    free(a->sorted);
    free(a->orth);
    free_patterns(a->pat, a->npat);
    free(a->targets);
    free(a);
}

static int check_opts(const lg_lora_opts *o, int adalora) {
    if (o->r < 1) return lg_errorf("LoRA rank must be >= 1 (got %d)", o->r);
    if (!(o->dropout >= 0.0f && o->dropout < 1.0f))
        return lg_errorf("LoRA dropout must be in [0, 1) (got %g)", (double)o->dropout);
    if (!isfinite(o->alpha)) return lg_errorf("LoRA alpha must be finite");
    if (!o->targets) return lg_errorf("no LoRA target modules given");
    if (adalora) {
        if (o->use_dora) return lg_errorf("AdaLoRA does not combine with DoRA (as in PEFT)");
        if (o->use_rslora) return lg_errorf("AdaLoRA does not combine with rsLoRA (its scale is alpha / r)");
        if (o->init == LG_INIT_PISSA || o->init == LG_INIT_GAUSSIAN)
            return lg_errorf("AdaLoRA has its own initialisation (A, B ~ N(0, 0.02), E = 0)");
        if (o->total_steps <= 0) return lg_errorf("AdaLoRA needs the total number of steps (total_steps > 0)");
        if (o->target_r < 0 || o->target_r > o->r)
            return lg_errorf("AdaLoRA target_r %d must be in [0, init_r = %d]", o->target_r, o->r);
        if (o->tinit < 0 || o->tfinal < 0 || o->tinit >= o->total_steps - o->tfinal)
            return lg_errorf("AdaLoRA schedule leaves no budget-reduction phase: tinit %ld, tfinal %ld, total %ld "
                             "(need tinit < total - tfinal)",
                             o->tinit, o->tfinal, o->total_steps);
        if (!(o->ada_beta1 > 0 && o->ada_beta1 < 1 && o->ada_beta2 > 0 && o->ada_beta2 < 1))
            return lg_errorf("AdaLoRA beta1/beta2 must be in (0, 1)");
        if (o->orth_reg < 0) return lg_errorf("AdaLoRA orth_reg must be >= 0");
    }
    return 0;
}

int lg_adapters_attach(lg_model *m, const lg_lora_opts *opts, lg_adapters **out) {
    *out = NULL;
    const int adalora = opts->adalora || opts->init == LG_INIT_ADALORA;
    if (check_opts(opts, adalora) != 0) return -1;
    char **pat = NULL;
    int npat = 0;
    if (parse_targets(opts->targets, &pat, &npat) != 0) return -1;

    const int nl = lg_model_n_linears(m);
    int *hit = lg_calloc((size_t)npat, sizeof(int));
    lg_linear **sel = lg_calloc((size_t)(nl > 0 ? nl : 1), sizeof(lg_linear *));
    int ns = 0;
    for (int i = 0; i < nl; i++) {
        lg_linear *l = lg_model_linear(m, i);
        int any = 0;
        for (int p = 0; p < npat; p++)
            if (name_matches(l->name, pat[p])) hit[p]++, any = 1;
        if (any) sel[ns++] = l;
    }
    for (int p = 0; p < npat; p++)
        if (!hit[p]) {
            lg_errorf("LoRA target '%s' matches no linear layer of the model (module names look like '%s')", pat[p],
                      nl > 0 ? lg_model_linear(m, 0)->name : "?");
            free(hit), free(sel), free_patterns(pat, npat);
            return -1;
        }
    free(hit);
    for (int i = 0; i < ns; i++)
        if (sel[i]->adapter) {
            lg_errorf("%s already has an adapter attached", sel[i]->name);
            free(sel), free_patterns(pat, npat);
            return -1;
        }

    lg_adapters *A = lg_calloc(1, sizeof *A);
    A->m = m;
    A->ops = lg_model_ops(m);
    A->o = *opts;
    A->targets = lg_strdup(opts->targets);
    A->o.targets = A->targets;
    A->adalora = adalora;
    A->pat = pat;
    A->npat = npat;
    A->n = ns;
    A->ad = lg_calloc((size_t)(ns > 0 ? ns : 1), sizeof(lora_impl *));

    const int r = opts->r, dora = opts->use_dora;
    size_t ptotal = 0;
    int64_t max_w = 0;
    for (int i = 0; i < ns; i++) {
        const lg_linear *l = sel[i];
        ptotal += pad16((int64_t)r * l->in) + pad16((int64_t)l->out * r);
        if (dora) ptotal += pad16(l->out), max_w = LG_MAX(max_w, (int64_t)l->out * l->in);
        if (adalora) ptotal += pad16(r);
        A->max_in = LG_MAX(A->max_in, l->in);
        A->max_out = LG_MAX(A->max_out, l->out);
    }
    A->max_r = r;
    A->params = A->ops->alloc(A->ops, (ptotal ? ptotal : 16) * sizeof(float));
    A->grads = A->ops->alloc(A->ops, (ptotal ? ptotal : 16) * sizeof(float));
    if (dora) A->wfull = A->ops->alloc(A->ops, (size_t)max_w * sizeof(float));

    /* PEFT: scaling = alpha / r (rsLoRA alpha / sqrt r); AdaLoRA: alpha (or r when alpha <= 0)
     * divided by ranknum + 1e-5 with ranknum = r. */
    float scale;
    if (adalora) scale = (float)((opts->alpha > 0 ? (double)opts->alpha : (double)r) / ((double)r + 1e-5));
    else if (opts->use_rslora) scale = (float)((double)opts->alpha / sqrt((double)r));
    else scale = (float)((double)opts->alpha / r);

    size_t off = 0;
    for (int i = 0; i < ns; i++) {
        lora_impl *im = lg_calloc(1, sizeof *im);
        A->ad[i] = im;
        im->owner = A;
        im->index = i;
        lg_lora *a = &im->pub;
        a->hdr.vt = adalora ? &VT_ADALORA : dora ? &VT_DORA : &VT_LORA;
        a->lin = sel[i];
        a->r = r;
        a->in = sel[i]->in;
        a->out = sel[i]->out;
        a->scale = scale;
        a->dropout = opts->dropout;
        a->drop_seed = mix64(opts->seed ^ mix64(0xd40u + (uint64_t)i));
#define TAKE(ptr, gptr, count)                                                                     \
    ptr = A->params + off;                                                                         \
    gptr = A->grads + off;                                                                         \
    off += pad16(count);
        TAKE(a->A, a->dA, (int64_t)r * a->in);
        TAKE(a->B, a->dB, (int64_t)a->out * r);
        if (dora) {
            TAKE(a->mag, a->dmag, a->out);
            a->wnorm = lg_malloc((size_t)a->out * sizeof(float));
        }
        if (adalora) {
            TAKE(a->E, a->dE, r);
            a->rank_mask = lg_malloc((size_t)r);
            size_t ne = (size_t)r * a->in + (size_t)r + (size_t)a->out * r;
            im->ea_ipt = lg_calloc(ne, sizeof(float));
            im->ea_unc = lg_calloc(ne, sizeof(float));
        }
#undef TAKE
        snprintf(im->name_A, NAME_CAP, "%s.lora_A", a->lin->name);
        snprintf(im->name_B, NAME_CAP, "%s.lora_B", a->lin->name);
        snprintf(im->name_mag, NAME_CAP, "%s.lora_magnitude_vector", a->lin->name);
        snprintf(im->name_E, NAME_CAP, "%s.lora_E", a->lin->name);
        if (init_adapter(im, opts) != 0) {
            /* undo PiSSA offsets already applied so a failed attach leaves the model as it was */
            for (int j = 0; j <= i; j++) {
                lg_lora *b = &A->ad[j]->pub;
                if (!b->A0) continue;
                float *W = b->lin->w->data;
                A->ops->gemm(A->ops, 0, 0, b->out, b->in, b->r, b->scale, b->B0, b->r, b->A0, b->in, 1.0f, W, b->in);
            }
            A->n = i + 1;
            free(sel);
            lg_adapters_free(A);
            return -1;
        }
        if (dora) dora_row_norms(A->ops, a, A->wfull, a->mag); /* row norms of W + sBA (PEFT dora_init) */
        A->numel += (int64_t)r * (a->in + a->out) + (dora ? a->out : 0) + (adalora ? r : 0);
    }
    free(sel);
    if (adalora) {
        A->init_bgt = (long)r * ns;
        A->target_bgt = (long)opts->target_r * ns;
        A->scores = lg_calloc((size_t)(A->init_bgt ? A->init_bgt : 1), sizeof(double));
        A->sorted = lg_calloc((size_t)(A->init_bgt ? A->init_bgt : 1), sizeof(double));
        A->orth = lg_malloc((size_t)r * r * sizeof(float));
    }
    for (int i = 0; i < ns; i++) A->ad[i]->pub.lin->adapter = &A->ad[i]->pub.hdr;
    lg_model_unpack(m); /* PiSSA changed W */
    *out = A;
    return 0;
}

int lg_adapters_count(const lg_adapters *a) { return a ? a->n : 0; }
lg_lora *lg_adapters_get(lg_adapters *a, int i) { return a && i >= 0 && i < a->n ? &a->ad[i]->pub : NULL; }
const lg_lora_opts *lg_adapters_opts(const lg_adapters *a) { return &a->o; }
int64_t lg_adapters_numel(const lg_adapters *a) { return a ? a->numel : 0; }
lg_model *lg_adapters_model(const lg_adapters *a) { return a->m; }

int lg_adapters_opt_tensors(lg_adapters *a, float loraplus_ratio, lg_opt_tensor **t, int *n) {
    const float bm = loraplus_ratio > 0 ? loraplus_ratio : 1.0f;
    int per = 2 + (a->o.use_dora ? 1 : 0) + (a->adalora ? 1 : 0);
    lg_opt_tensor *v = lg_calloc((size_t)(a->n * per > 0 ? a->n * per : 1), sizeof *v);
    int k = 0;
    for (int i = 0; i < a->n; i++) {
        lora_impl *im = a->ad[i];
        lg_lora *l = &im->pub;
        v[k++] = (lg_opt_tensor){.name = im->name_A, .data = l->A, .grad = l->dA, .n = (int64_t)l->r * l->in,
                                 .lr_mult = 1.0f, .weight_decay = 0.0f};
        v[k++] = (lg_opt_tensor){.name = im->name_B, .data = l->B, .grad = l->dB, .n = (int64_t)l->out * l->r,
                                 .lr_mult = bm, .weight_decay = 0.0f};
        if (l->mag)
            v[k++] = (lg_opt_tensor){.name = im->name_mag, .data = l->mag, .grad = l->dmag, .n = l->out,
                                     .lr_mult = 1.0f, .weight_decay = 0.0f};
        if (l->E)
            v[k++] = (lg_opt_tensor){.name = im->name_E, .data = l->E, .grad = l->dE, .n = l->r, .lr_mult = 1.0f,
                                     .weight_decay = 0.0f};
    }
    *t = v;
    *n = k;
    return 0;
}

void lg_adapters_zero_grads(lg_adapters *a) {
    for (int i = 0; i < a->n; i++) {
        lg_lora *l = &a->ad[i]->pub;
        memset(l->dA, 0, (size_t)l->r * l->in * sizeof(float));
        memset(l->dB, 0, (size_t)l->out * l->r * sizeof(float));
        if (l->dmag) memset(l->dmag, 0, (size_t)l->out * sizeof(float));
        if (l->dE) memset(l->dE, 0, (size_t)l->r * sizeof(float));
    }
}

/* ------------------------------------------------------------------------------------------ */
/* AdaLoRA                                                                                    */

/* Adds c * d/dP ||P P^T - I||_F (rows = r, cols = n) to dP; for B pass Q^T Q via trans = 1. */
static void orth_grad(const lg_ops *ops, const float *P, float *dP, int r, int n, int trans, float c, float *M) {
    if (!trans) ops->gemm(ops, 0, 1, r, r, n, 1.0f, P, n, P, n, 0.0f, M, r);
    else ops->gemm(ops, 1, 0, r, r, n, 1.0f, P, r, P, r, 0.0f, M, r);
    double f = 0;
    for (int i = 0; i < r; i++) M[i * r + i] -= 1.0f;
    for (int i = 0; i < r * r; i++) f += (double)M[i] * M[i];
    f = sqrt(f);
    if (!(f > 0)) return; /* the Frobenius norm is not differentiable at 0; its subgradient 0 */
    const float g = (float)(2.0 * c / f);
    /* d||PP^T - I|| / dP = 2 (PP^T - I) P / f;  d||Q^TQ - I|| / dQ = 2 Q (Q^TQ - I) / f */
    if (!trans) ops->gemm(ops, 0, 0, r, n, r, g, M, r, P, n, 1.0f, dP, n);
    else ops->gemm(ops, 0, 0, n, r, r, g, P, r, M, r, 1.0f, dP, r);
}

static void ema_update(const float *p, const float *g, float *ea, float *eu, int64_t n, float b1, float b2) {
    for (int64_t i = 0; i < n; i++) {
        float ipt = fabsf(p[i] * g[i]);
        ea[i] = b1 * ea[i] + (1 - b1) * ipt;
        eu[i] = b2 * eu[i] + (1 - b2) * fabsf(ipt - ea[i]);
    }
}

static int cmp_double(const void *x, const void *y) {
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

/* Triplet score = S(E_k) + mean_j S(A_kj) + mean_i S(B_ik), S = ema_ipt * ema_unc; mask the
 * (init_bgt - budget) lowest (ties included, so kept <= budget), zero their E. */
static void mask_to_budget(lg_adapters *a, long budget) {
    long q = 0;
    for (int i = 0; i < a->n; i++) {
        lora_impl *im = a->ad[i];
        const lg_lora *l = &im->pub;
        const int r = l->r, in = l->in, out = l->out;
        const float *iA = im->ea_ipt, *uA = im->ea_unc;
        const float *iE = iA + (size_t)r * in, *uE = uA + (size_t)r * in;
        const float *iB = iE + r, *uB = uE + r;
        for (int k = 0; k < r; k++) {
            double sa = 0, sb = 0;
            for (int j = 0; j < in; j++) sa += (double)iA[(size_t)k * in + j] * uA[(size_t)k * in + j];
            for (int o = 0; o < out; o++) sb += (double)iB[(size_t)o * r + k] * uB[(size_t)o * r + k];
            a->scores[q++] = (double)iE[k] * uE[k] + sa / in + sb / out;
        }
    }
    long kth = a->init_bgt - budget;
    double thr = -INFINITY;
    if (kth > 0) {
        memcpy(a->sorted, a->scores, (size_t)a->init_bgt * sizeof(double));
        qsort(a->sorted, (size_t)a->init_bgt, sizeof(double), cmp_double);
        thr = a->sorted[LG_MIN(kth, a->init_bgt) - 1];
    }
    q = 0;
    for (int i = 0; i < a->n; i++) {
        lg_lora *l = &a->ad[i]->pub;
        for (int k = 0; k < l->r; k++, q++) {
            int keep = kth <= 0 || a->scores[q] > thr;
            l->rank_mask[k] = (unsigned char)keep;
            if (!keep) l->E[k] = 0.0f;
        }
    }
}

int lg_adalora_step(lg_adapters *a, long step) {
    int kept = 0;
    if (!a->adalora) {
        for (int i = 0; i < a->n; i++) kept += a->ad[i]->pub.r;
        return kept;
    }
    const lg_lora_opts *o = &a->o;
    /* orthogonality regulariser: orth_reg * mean over all 2n matrices of ||PP^T - I||_F, ||Q^TQ - I||_F */
    if (o->orth_reg > 0 && a->n > 0) {
        const float c = o->orth_reg / (float)(2 * a->n);
        for (int i = 0; i < a->n; i++) {
            lg_lora *l = &a->ad[i]->pub;
            orth_grad(a->ops, l->A, l->dA, l->r, l->in, 0, c, a->orth);
            orth_grad(a->ops, l->B, l->dB, l->r, l->out, 1, c, a->orth);
        }
    }
    const long T = o->total_steps, tf = o->tfinal, ti = o->tinit, dt = o->delta_t > 0 ? o->delta_t : 1;
    if (step < T - tf) {
        for (int i = 0; i < a->n; i++) {
            lora_impl *im = a->ad[i];
            lg_lora *l = &im->pub;
            const int64_t na = (int64_t)l->r * l->in;
            ema_update(l->A, l->dA, im->ea_ipt, im->ea_unc, na, o->ada_beta1, o->ada_beta2);
            ema_update(l->E, l->dE, im->ea_ipt + na, im->ea_unc + na, l->r, o->ada_beta1, o->ada_beta2);
            ema_update(l->B, l->dB, im->ea_ipt + na + l->r, im->ea_unc + na + l->r, (int64_t)l->out * l->r,
                       o->ada_beta1, o->ada_beta2);
        }
        if (step > ti && step % dt == 0) {
            /* cubic decrease from the full budget to the target between tinit and total - tfinal */
            double c = 1.0 - (double)(step - ti) / (double)(T - tf - ti);
            long budget = (long)((double)(a->init_bgt - a->target_bgt) * c * c * c + (double)a->target_bgt);
            mask_to_budget(a, budget);
        }
    } else if (!a->final_done) {
        /* the final phase starts: allocate the target budget once and freeze the pattern */
        mask_to_budget(a, a->target_bgt);
        a->final_done = 1;
        for (int i = 0; i < a->n; i++) {
            lora_impl *im = a->ad[i];
            size_t ne = (size_t)im->pub.r * im->pub.in + im->pub.r + (size_t)im->pub.out * im->pub.r;
            memset(im->ea_ipt, 0, ne * sizeof(float));
            memset(im->ea_unc, 0, ne * sizeof(float));
        }
    } else {
        for (int i = 0; i < a->n; i++) {
            lg_lora *l = &a->ad[i]->pub;
            for (int k = 0; k < l->r; k++)
                if (!l->rank_mask[k]) l->E[k] = 0.0f;
        }
    }
    for (int i = 0; i < a->n; i++) {
        const lg_lora *l = &a->ad[i]->pub;
        for (int k = 0; k < l->r; k++) kept += l->rank_mask[k];
    }
    return kept;
}

/* ------------------------------------------------------------------------------------------ */
/* PEFT export                                                                                */

/* HF rotate-half row r of a q/k projection is llama2.c's row head*hd + 2i + s (r = head*hd +
 * s*hd/2 + i), the permutation lg_model_save_hf applies to the weights. */
int lg_lora_half_row(int row, int hd) {
    int head = row / hd, j = row % hd, s = j / (hd / 2), i = j % (hd / 2);
    return head * hd + 2 * i + s;
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

int lg_lora_rows_interleaved(const lg_model *m, const lg_lora *l) {
    return lg_model_config(m)->rope_style == LG_ROPE_INTERLEAVED &&
           (ends_with(l->lin->name, "self_attn.q_proj") || ends_with(l->lin->name, "self_attn.k_proj"));
}

static int rowperm_needed(const lg_adapters *a, const lg_lora *l) { return lg_lora_rows_interleaved(a->m, l); }

/* relative_ok: export adapters holding A0/B0 relative to the original weights (else as they are). */
static int save_peft(lg_adapters *a, const char *dir, const char *base_model, int relative_ok) {
    if (lg_mkdir_p(dir) != 0) return lg_errorf_prefix("saving the adapter to %s", dir);
    const lg_lora_opts *o = &a->o;
    int rel = 0, conv1d = 0;
    for (int i = 0; i < a->n; i++) {
        rel |= relative_ok && a->ad[i]->pub.A0 != NULL;
        conv1d |= a->ad[i]->pub.lin->w->conv1d;
    }
    const int r = o->r, re = rel ? 2 * r : r; /* exported rank */
    const int per = o->use_dora ? 3 : 2;
    lg_st_item *items = lg_calloc((size_t)(a->n * per > 0 ? a->n * per : 1), sizeof *items);
    char **names = lg_calloc((size_t)(a->n * per > 0 ? a->n * per : 1), sizeof(char *));
    float **bufs = lg_calloc((size_t)(a->n * 3 > 0 ? a->n * 3 : 1), sizeof(float *));
    int k = 0, nb = 0;
    for (int i = 0; i < a->n; i++) {
        const lg_lora *l = &a->ad[i]->pub;
        const char *mod = l->lin->name;
        const int in = l->in, out = l->out;
        const float *Ae = l->A, *Be = l->B;
        if (rel) {
            /* s' B' A' = s (B A - B0 A0) with A' = [A; A0], B' = [B, -B0] (zeros without A0) */
            float *Ax = lg_calloc((size_t)re * in, sizeof(float)), *Bx = lg_calloc((size_t)out * re, sizeof(float));
            memcpy(Ax, l->A, (size_t)r * in * sizeof(float));
            if (l->A0) memcpy(Ax + (size_t)r * in, l->A0, (size_t)r * in * sizeof(float));
            for (int row = 0; row < out; row++)
                for (int j = 0; j < r; j++) {
                    Bx[(size_t)row * re + j] = l->B[(size_t)row * r + j];
                    if (l->B0) Bx[(size_t)row * re + r + j] = -l->B0[(size_t)row * r + j];
                }
            Ae = bufs[nb++] = Ax;
            Be = bufs[nb++] = Bx;
        } else if (l->E) {
            /* AdaLoRA as plain LoRA: A' = diag(E (x) mask) A, B' = B */
            float *Ax = lg_malloc((size_t)r * in * sizeof(float));
            for (int j = 0; j < r; j++)
                for (int c = 0; c < in; c++) Ax[(size_t)j * in + c] = e_eff(l, j) * l->A[(size_t)j * in + c];
            Ae = bufs[nb++] = Ax;
        }
        const float *Me = l->mag;
        if (rowperm_needed(a, l)) {
            /* llama2.c q/k rows are interleaved; the HF base we export against is rotate-half */
            const int hd = lg_model_config(a->m)->head_dim;
            float *Bp = lg_malloc((size_t)out * re * sizeof(float));
            for (int row = 0; row < out; row++)
                memcpy(Bp + (size_t)row * re, Be + (size_t)lg_lora_half_row(row, hd) * re, (size_t)re * sizeof(float));
            Be = bufs[nb++] = Bp;
            if (l->mag) {
                float *Mp = lg_malloc((size_t)out * sizeof(float));
                for (int row = 0; row < out; row++) Mp[row] = l->mag[lg_lora_half_row(row, hd)];
                Me = bufs[nb++] = Mp;
            }
        }
        size_t cap = strlen(mod) + 64;
        names[k] = lg_malloc(cap);
        snprintf(names[k], cap, "base_model.model.%s.lora_A.weight", mod);
        items[k] = (lg_st_item){.name = names[k], .dtype = LG_DT_F32, .ndim = 2, .shape = {re, in}, .data = Ae};
        k++;
        names[k] = lg_malloc(cap);
        snprintf(names[k], cap, "base_model.model.%s.lora_B.weight", mod);
        items[k] = (lg_st_item){.name = names[k], .dtype = LG_DT_F32, .ndim = 2, .shape = {out, re}, .data = Be};
        k++;
        if (l->mag) {
            names[k] = lg_malloc(cap);
            snprintf(names[k], cap, "base_model.model.%s.lora_magnitude_vector", mod);
            items[k] = (lg_st_item){.name = names[k], .dtype = LG_DT_F32, .ndim = 1, .shape = {out}, .data = Me};
            k++;
        }
    }
    char *st_path = lg_path_join(dir, "adapter_model.safetensors");
    lg_st_meta meta[] = {{"format", "pt"}};
    int rc = lg_st_write(st_path, items, k, meta, 1);
    free(st_path);
    for (int i = 0; i < k; i++) free(names[i]);
    for (int i = 0; i < nb; i++) free(bufs[i]);
    free(names), free(bufs), free(items);
    if (rc != 0) return -1;

    /* lora_alpha so that PEFT's lora_alpha / r (or / sqrt r) gives back our scale */
    double alpha_e;
    int rslora = o->use_rslora;
    if (a->adalora) { /* PEFT AdaLoRA scale alpha / (r + 1e-5) == lora_alpha / r for this lora_alpha */
        double al = o->alpha > 0 ? (double)o->alpha : (double)r;
        alpha_e = al * re / ((double)r + 1e-5);
        rslora = 0;
    } else if (rel) {
        alpha_e = (double)o->alpha * (rslora ? sqrt(2.0) : 2.0);
    } else {
        alpha_e = o->alpha;
    }

    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "peft_type", "LORA");
    cJSON_AddStringToObject(j, "task_type", "CAUSAL_LM");
    if (base_model) cJSON_AddStringToObject(j, "base_model_name_or_path", base_model);
    else cJSON_AddNullToObject(j, "base_model_name_or_path");
    cJSON_AddNumberToObject(j, "r", re);
    cJSON_AddNumberToObject(j, "lora_alpha", alpha_e);
    cJSON *tm = cJSON_AddArrayToObject(j, "target_modules");
    int all = 0;
    for (int p = 0; p < a->npat; p++) all |= !strcmp(a->pat[p], "all-linear");
    if (all) {
        /* PEFT expands all-linear to the distinct leaf names of the adapted layers */
        for (int i = 0; i < a->n; i++) {
            const char *nm = a->ad[i]->pub.lin->name, *leaf = strrchr(nm, '.');
            leaf = leaf ? leaf + 1 : nm;
            int dup = 0;
            for (int q = 0; q < i; q++) {
                const char *n2 = a->ad[q]->pub.lin->name, *l2 = strrchr(n2, '.');
                dup |= !strcmp(l2 ? l2 + 1 : n2, leaf);
            }
            if (!dup) cJSON_AddItemToArray(tm, cJSON_CreateString(leaf));
        }
    } else {
        for (int p = 0; p < a->npat; p++) cJSON_AddItemToArray(tm, cJSON_CreateString(a->pat[p]));
    }
    cJSON_AddBoolToObject(j, "use_rslora", rslora);
    cJSON_AddBoolToObject(j, "use_dora", o->use_dora != 0);
    cJSON_AddNumberToObject(j, "lora_dropout", o->dropout);
    cJSON_AddStringToObject(j, "bias", "none");
    cJSON_AddBoolToObject(j, "fan_in_fan_out", conv1d);
    cJSON_AddBoolToObject(j, "init_lora_weights", 1);
    cJSON_AddBoolToObject(j, "inference_mode", 1);
    cJSON_AddNullToObject(j, "modules_to_save");
    cJSON_AddObjectToObject(j, "rank_pattern");
    cJSON_AddObjectToObject(j, "alpha_pattern");
    cJSON_AddNullToObject(j, "layers_to_transform");
    cJSON_AddNullToObject(j, "layers_pattern");
    char *txt = cJSON_Print(j);
    cJSON_Delete(j);
    char *cfg_path = lg_path_join(dir, "adapter_config.json");
    rc = lg_write_file_atomic(cfg_path, txt, strlen(txt));
    free(cfg_path);
    free(txt);
    return rc;
}

int lg_adapters_save_peft(lg_adapters *a, const char *dir, const char *base_model) {
    return save_peft(a, dir, base_model, 1);
}

int lg_adapters_save_peft_init(lg_adapters *a, const char *dir, const char *base_model) {
    return save_peft(a, dir, base_model, 0);
}

/* ------------------------------------------------------------------------------------------ */
/* resume state                                                                               */

#define STATE_MAGIC 0x5341474cu /* "LGAS" */

static size_t ada_elems(const lg_lora *l) { return (size_t)l->r * l->in + (size_t)l->r + (size_t)l->out * l->r; }

size_t lg_adapters_state_bytes(const lg_adapters *a) {
    size_t b = 5 * sizeof(uint32_t);
    for (int i = 0; i < a->n; i++) {
        const lg_lora *l = &a->ad[i]->pub;
        b += sizeof(uint64_t);
        if (a->adalora) b += (size_t)l->r + 2 * ada_elems(l) * sizeof(float);
    }
    return b;
}

void lg_adapters_state_save(const lg_adapters *a, void *dst) {
    unsigned char *p = dst;
    uint32_t h[5] = {STATE_MAGIC, 1u, (uint32_t)a->n, (uint32_t)a->adalora, (uint32_t)a->final_done};
    memcpy(p, h, sizeof h);
    p += sizeof h;
    for (int i = 0; i < a->n; i++) {
        const lora_impl *im = a->ad[i];
        const lg_lora *l = &im->pub;
        memcpy(p, &l->drop_calls, sizeof(uint64_t));
        p += sizeof(uint64_t);
        if (!a->adalora) continue;
        memcpy(p, l->rank_mask, (size_t)l->r);
        p += l->r;
        memcpy(p, im->ea_ipt, ada_elems(l) * sizeof(float));
        p += ada_elems(l) * sizeof(float);
        memcpy(p, im->ea_unc, ada_elems(l) * sizeof(float));
        p += ada_elems(l) * sizeof(float);
    }
}

int lg_adapters_state_load(lg_adapters *a, const void *src, size_t n) {
    const unsigned char *p = src;
    uint32_t h[5];
    if (n < sizeof h) return lg_errorf("adapter state: %zu bytes is too short", n);
    memcpy(h, p, sizeof h);
    if (h[0] != STATE_MAGIC || h[1] != 1u) return lg_errorf("adapter state: unknown format");
    if (h[2] != (uint32_t)a->n || h[3] != (uint32_t)a->adalora || n != lg_adapters_state_bytes(a))
        return lg_errorf("adapter state does not match these adapters (%u adapters%s in the state, %d%s here)", h[2],
                         h[3] ? " AdaLoRA" : "", a->n, a->adalora ? " AdaLoRA" : "");
    p += sizeof h;
    for (int i = 0; i < a->n; i++) { /* validate the masks before changing anything */
        const lg_lora *l = &a->ad[i]->pub;
        p += sizeof(uint64_t);
        if (!a->adalora) continue;
        for (int k = 0; k < l->r; k++)
            if (p[k] > 1) return lg_errorf("adapter state: bad rank mask");
        p += l->r + 2 * ada_elems(l) * sizeof(float);
    }
    p = (const unsigned char *)src + sizeof h;
    a->final_done = (int)h[4];
    for (int i = 0; i < a->n; i++) {
        lora_impl *im = a->ad[i];
        lg_lora *l = &im->pub;
        memcpy(&l->drop_calls, p, sizeof(uint64_t));
        p += sizeof(uint64_t);
        if (!a->adalora) continue;
        memcpy(l->rank_mask, p, (size_t)l->r);
        p += l->r;
        memcpy(im->ea_ipt, p, ada_elems(l) * sizeof(float));
        p += ada_elems(l) * sizeof(float);
        memcpy(im->ea_unc, p, ada_elems(l) * sizeof(float));
        p += ada_elems(l) * sizeof(float);
    }
    return 0;
}

