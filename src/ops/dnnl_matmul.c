/* dnnl_matmul.c — oneDNN matmuls with a per-problem primitive cache (dnnl_matmul.h).
 *
 * oneDNN has a global primitive cache of its own, but reaching it still means building a
 * descriptor and a primitive descriptor (dispatching over every implementation) on each call —
 * tens of microseconds, as much as a small product. Here a problem is looked up by its key and
 * executed with the caller's pointers swapped into memory objects made once. */
#include "ops/dnnl_matmul.h"

#include <dnnl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

typedef struct {
    /* key */
    lg_mm_dt dt;
    int tA, tB, M, N, K, lda, ldb, ldc;
    float beta;
    float alpha;             /* NAN: a runtime output scale (any alpha); else baked into the primitive */
    int packed;              /* weights in a packed layout (wmd) */
    dnnl_memory_desc_t wmd;  /* only when packed */
    /* value; prim NULL = no implementation (remembered, so a fallback costs one lookup) */
    dnnl_primitive_t prim;
    dnnl_memory_t mA, mB, mC, mS;
    float scale; /* the runtime output scale's storage */
    const char *impl;
} entry;

struct lg_dnnl {
    dnnl_engine_t eng;
    dnnl_stream_t st;
    entry *e;
    int n, cap;
    int last;  /* the entry hit last: consecutive calls usually repeat a problem */
    int baked; /* never runtime output scales (LORAGA_ONEDNN_SCALES=baked: tests the fallback) */
};

typedef struct {
    lg_mm_dt dt;
    int K, N;
    dnnl_memory_desc_t md;
    void *buf;
} packed_w;

static dnnl_data_type_t dnnl_dt(lg_mm_dt dt) { return dt == LG_MM_BF16 ? dnnl_bf16 : dnnl_f32; }

lg_dnnl *lg_dnnl_create(void) {
    lg_dnnl *d = lg_calloc(1, sizeof *d);
    if (dnnl_engine_create(&d->eng, dnnl_cpu, 0) != dnnl_success) {
        free(d);
        return NULL;
    }
    if (dnnl_stream_create(&d->st, d->eng, dnnl_stream_default_flags) != dnnl_success) {
        dnnl_engine_destroy(d->eng);
        free(d);
        return NULL;
    }
    const char *sc = getenv("LORAGA_ONEDNN_SCALES");
    d->baked = sc && !strcmp(sc, "baked");
    return d;
}

static void entry_free(entry *e) {
    if (e->prim) dnnl_primitive_destroy(e->prim);
    if (e->mA) dnnl_memory_destroy(e->mA);
    if (e->mB) dnnl_memory_destroy(e->mB);
    if (e->mC) dnnl_memory_destroy(e->mC);
    if (e->mS) dnnl_memory_destroy(e->mS);
}

void lg_dnnl_free(lg_dnnl *d) {
    if (!d) return;
    for (int i = 0; i < d->n; i++) entry_free(&d->e[i]);
    free(d->e);
    dnnl_stream_destroy(d->st);
    dnnl_engine_destroy(d->eng);
    free(d);
}

/* A logical rows x cols matrix stored row-major with row stride ld, or (trans) its transpose. */
static int md_strided(dnnl_memory_desc_t *md, int rows, int cols, dnnl_data_type_t dt, int trans, int ld) {
    dnnl_dims_t dims = {rows, cols};
    dnnl_dims_t strides = {trans ? 1 : ld, trans ? ld : 1};
    return dnnl_memory_desc_init_by_strides(md, 2, dims, dt, strides) == dnnl_success ? 0 : -1;
}

static int same_alpha(float a, float b) { return (isnan(a) && isnan(b)) || a == b; }

static int key_eq(const entry *e, lg_mm_dt dt, int tA, int tB, int M, int N, int K, int lda, int ldb, int ldc,
                  float beta, float alpha, const dnnl_memory_desc_t *wmd) {
    if (e->dt != dt || e->tA != tA || e->tB != tB || e->M != M || e->N != N || e->K != K || e->lda != lda ||
        e->ldb != ldb || e->ldc != ldc || e->beta != beta || !same_alpha(e->alpha, alpha) ||
        e->packed != (wmd != NULL))
        return 0;
    return !wmd || dnnl_memory_desc_equal(&e->wmd, wmd);
}

/* Builds the primitive for a problem; wmd: the weights' (packed) layout, or NULL for the strided
 * one. Leaves e->prim NULL when there is no implementation worth using. */
static void entry_build(lg_dnnl *d, entry *e, const dnnl_memory_desc_t *wmd) {
    const dnnl_data_type_t dt = dnnl_dt(e->dt);
    dnnl_memory_desc_t a, b, c, s;
    if (md_strided(&a, e->M, e->K, dt, e->tA, e->lda) || md_strided(&c, e->M, e->N, dnnl_f32, 0, e->ldc)) return;
    if (wmd) b = *wmd;
    else if (md_strided(&b, e->K, e->N, dt, e->tB, e->ldb)) return;
    dnnl_matmul_desc_t desc;
    if (dnnl_matmul_desc_init(&desc, &a, &b, NULL, &c) != dnnl_success) return;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t po = NULL;
    dnnl_primitive_desc_t pd = NULL;
    const float rt = isnan(e->alpha) ? DNNL_RUNTIME_F32_VAL : e->alpha;
    if (dnnl_primitive_attr_create(&attr) != dnnl_success) return;
    int ok = dnnl_primitive_attr_set_output_scales(attr, 1, 0, &rt) == dnnl_success;
    if (ok && e->beta != 0.0f)
        ok = dnnl_post_ops_create(&po) == dnnl_success && dnnl_post_ops_append_sum(po, e->beta) == dnnl_success &&
             dnnl_primitive_attr_set_post_ops(attr, po) == dnnl_success;
    if (ok) ok = dnnl_primitive_desc_create(&pd, &desc, attr, d->eng, NULL) == dnnl_success;
    const char *impl = NULL;
    if (ok) ok = dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) == dnnl_success && impl;
    /* the reference implementation is a scalar loop: slower than any fallback */
    if (ok && !strncmp(impl, "ref", 3)) ok = 0;
    if (ok) ok = dnnl_primitive_create(&e->prim, pd) == dnnl_success;
    if (ok) {
        dnnl_dims_t one = {1};
        ok = dnnl_memory_desc_init_by_tag(&s, 1, one, dnnl_f32, dnnl_a) == dnnl_success &&
             dnnl_memory_create(&e->mA, &a, d->eng, DNNL_MEMORY_NONE) == dnnl_success &&
             dnnl_memory_create(&e->mB, &b, d->eng, DNNL_MEMORY_NONE) == dnnl_success &&
             dnnl_memory_create(&e->mC, &c, d->eng, DNNL_MEMORY_NONE) == dnnl_success &&
             dnnl_memory_create(&e->mS, &s, d->eng, &e->scale) == dnnl_success;
    }
    if (ok) {
        /* the implementation name lives in pd, which is destroyed below: keep our own copy of the
         * few distinct names (interned; the set is tiny and lives as long as the process) */
        static char names[16][64];
        static int nnames;
        int i = 0;
        while (i < nnames && strcmp(names[i], impl)) i++;
        if (i == nnames && nnames < 16) snprintf(names[nnames++], sizeof names[0], "%s", impl);
        e->impl = i < 16 ? names[i] : "onednn";
    } else {
        entry_free(e);
        e->prim = NULL;
        e->mA = e->mB = e->mC = e->mS = NULL;
    }
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (po) dnnl_post_ops_destroy(po);
    dnnl_primitive_attr_destroy(attr);
}

static entry *lookup1(lg_dnnl *d, lg_mm_dt dt, int tA, int tB, int M, int N, int K, int lda, int ldb, int ldc,
                      float beta, float alpha, const dnnl_memory_desc_t *wmd) {
    if (d->last < d->n && key_eq(&d->e[d->last], dt, tA, tB, M, N, K, lda, ldb, ldc, beta, alpha, wmd))
        return &d->e[d->last];
    for (int i = 0; i < d->n; i++)
        if (key_eq(&d->e[i], dt, tA, tB, M, N, K, lda, ldb, ldc, beta, alpha, wmd)) return &d->e[d->last = i];
    if (d->n == d->cap) {
        /* a bounded cache: past 512 problems (shapes that never repeat), start over */
        if (d->cap >= 512) {
            for (int i = 0; i < d->n; i++) entry_free(&d->e[i]);
            d->n = 0;
        } else {
            d->cap = d->cap ? 2 * d->cap : 32;
            d->e = lg_realloc(d->e, (size_t)d->cap * sizeof *d->e);
        }
    }
    entry *e = &d->e[d->n];
    memset(e, 0, sizeof *e);
    e->dt = dt, e->tA = tA, e->tB = tB, e->M = M, e->N = N, e->K = K;
    e->lda = lda, e->ldb = ldb, e->ldc = ldc, e->beta = beta, e->alpha = alpha, e->packed = wmd != NULL;
    if (wmd) e->wmd = *wmd;
    entry_build(d, e, wmd);
    d->last = d->n++;
    return e;
}

/* The primitive for a problem: one with a runtime output scale (any alpha) where oneDNN has it,
 * else one with alpha baked in (a scale that changes every step then makes a primitive per step:
 * slower, still right). */
static entry *lookup(lg_dnnl *d, lg_mm_dt dt, int tA, int tB, int M, int N, int K, int lda, int ldb, int ldc, float beta,
                     float alpha, const dnnl_memory_desc_t *wmd) {
    entry *e = d->baked ? NULL : lookup1(d, dt, tA, tB, M, N, K, lda, ldb, ldc, beta, NAN, wmd);
    return e && e->prim ? e : lookup1(d, dt, tA, tB, M, N, K, lda, ldb, ldc, beta, alpha, wmd);
}

static int run(lg_dnnl *d, entry *e, float alpha, const void *A, const void *B, float *C) {
    e->scale = alpha;
    dnnl_memory_set_data_handle(e->mS, &e->scale); /* the entry may have moved (the cache grows) */
    dnnl_memory_set_data_handle(e->mA, (void *)A);
    dnnl_memory_set_data_handle(e->mB, (void *)B);
    dnnl_memory_set_data_handle(e->mC, C);
    dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, e->mA},
                               {DNNL_ARG_WEIGHTS, e->mB},
                               {DNNL_ARG_DST, e->mC},
                               {DNNL_ARG_ATTR_OUTPUT_SCALES, e->mS}};
    /* a baked scale takes no argument */
    if (dnnl_primitive_execute(e->prim, d->st, isnan(e->alpha) ? 4 : 3, args) != dnnl_success) return -1;
    return dnnl_stream_wait(d->st) == dnnl_success ? 0 : -1;
}

int lg_dnnl_matmul(lg_dnnl *d, lg_mm_dt dt, int tA, int tB, int M, int N, int K, float alpha, const void *A, int lda,
                   const void *B, int ldb, float beta, float *C, int ldc) {
    entry *e = lookup(d, dt, tA, tB, M, N, K, lda, ldb, ldc, beta, alpha, NULL);
    if (!e->prim) return -1;
    return run(d, e, alpha, A, B, C);
}

void *lg_dnnl_pack(lg_dnnl *d, lg_mm_dt dt, int K, int N, const void *W, int m_hint) {
    const dnnl_data_type_t t = dnnl_dt(dt);
    dnnl_memory_desc_t a, b_any, c, plain;
    dnnl_dims_t bd = {K, N};
    if (md_strided(&a, m_hint, K, t, 0, K) || md_strided(&c, m_hint, N, dnnl_f32, 0, N) ||
        md_strided(&plain, K, N, t, 1, K) ||
        dnnl_memory_desc_init_by_tag(&b_any, 2, bd, t, dnnl_format_tag_any) != dnnl_success)
        return NULL;
    dnnl_matmul_desc_t desc;
    dnnl_primitive_desc_t pd = NULL;
    if (dnnl_matmul_desc_init(&desc, &a, &b_any, NULL, &c) != dnnl_success ||
        dnnl_primitive_desc_create(&pd, &desc, NULL, d->eng, NULL) != dnnl_success)
        return NULL;
    const char *impl = NULL;
    dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
    const dnnl_memory_desc_t *want = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    if (!want || !impl || !strncmp(impl, "ref", 3) || dnnl_memory_desc_equal(want, &plain)) {
        dnnl_primitive_desc_destroy(pd);
        return NULL;
    }
    packed_w *p = lg_calloc(1, sizeof *p);
    p->dt = dt, p->K = K, p->N = N, p->md = *want;
    dnnl_primitive_desc_destroy(pd);
    p->buf = lg_aligned_alloc(dnnl_memory_desc_get_size(&p->md));
    dnnl_primitive_desc_t rpd = NULL;
    dnnl_primitive_t r = NULL;
    dnnl_memory_t src = NULL, dst = NULL;
    int ok = dnnl_reorder_primitive_desc_create(&rpd, &plain, d->eng, &p->md, d->eng, NULL) == dnnl_success &&
             dnnl_primitive_create(&r, rpd) == dnnl_success &&
             dnnl_memory_create(&src, &plain, d->eng, (void *)W) == dnnl_success &&
             dnnl_memory_create(&dst, &p->md, d->eng, p->buf) == dnnl_success;
    if (ok) {
        dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, src}, {DNNL_ARG_TO, dst}};
        ok = dnnl_primitive_execute(r, d->st, 2, args) == dnnl_success && dnnl_stream_wait(d->st) == dnnl_success;
    }
    if (src) dnnl_memory_destroy(src);
    if (dst) dnnl_memory_destroy(dst);
    if (r) dnnl_primitive_destroy(r);
    if (rpd) dnnl_primitive_desc_destroy(rpd);
    if (!ok) {
        lg_dnnl_packed_free(p);
        return NULL;
    }
    return p;
}

void lg_dnnl_packed_free(void *packed) {
    packed_w *p = packed;
    if (!p) return;
    lg_aligned_free(p->buf);
    free(p);
}

int lg_dnnl_matmul_packed(lg_dnnl *d, int M, float alpha, const void *A, int lda, const void *packed, float beta,
                          float *C, int ldc) {
    const packed_w *p = packed;
    entry *e = lookup(d, p->dt, 0, 0, M, p->N, p->K, lda, 0, ldc, beta, alpha, &p->md);
    if (!e->prim) return -1;
    return run(d, e, alpha, A, p->buf, C);
}

const char *lg_dnnl_impl_name(lg_dnnl *d, lg_mm_dt dt, int M, int N, int K) {
    entry *e = lookup(d, dt, 0, 1, M, N, K, K, K, N, 0.0f, 1.0f, NULL);
    return e->prim ? e->impl : NULL;
}

int lg_dnnl_bf16_native(void) {
    const dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
    return (isa & dnnl_cpu_isa_avx512_core_bf16) == dnnl_cpu_isa_avx512_core_bf16;
}
