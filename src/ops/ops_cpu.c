/* ops_cpu.c — the CPU backend of lg_ops: oneDNN or OpenBLAS for the matrix products (whichever is
 * faster for the shape, measured: docs/performance.md), bf16 GEMMs on oneDNN where the CPU has
 * bf16 units, LAPACK for the factorisations, OpenMP for the rest. Shapes are in the comment above
 * each kernel; see ops.h for the contract (forward overwrites, backward accumulates, NULL
 * gradient = skip). */
#include "ops/ops.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "ops/dnnl_matmul.h"
#include "ops/ops_cpu.h"

/* Below this many scalar operations a parallel region costs more than it saves. */
#define PAR_MIN 32768L
/* Columns per task when a reduction over rows is split across threads by columns. */
#define COL_BLOCK 64
/* Query rows per attention block: scores are only computed for keys 0..r1 of a block,
 * so the causal mask wastes at most one block's worth of GEMM work. */
#define ATT_BLOCK 64
/* Floats of a bf16 weight expanded at a time for a float32 GEMM: big enough for the GEMM to run
 * at full speed (>= 256 rows of a 4096-wide matrix), small enough to stay in L2/L3. */
#define WBLOCK_FLOATS ((long)1 << 20)

/* Which library runs a float32 product (LORAGA_GEMM=openblas|onednn|auto). */
enum { GEMM_AUTO = 0, GEMM_OPENBLAS = 1, GEMM_ONEDNN = 2 };

/* The backend's state: the oneDNN primitive cache and the conversion scratch, grown to the
 * largest operand seen and reused (a training step allocates nothing after the first). */
typedef struct {
    lg_dnnl *dnnl; /* NULL: oneDNN unavailable */
    int gemm_lib;  /* GEMM_* */
    int pack;      /* keep prepacked weights: -1 never, 1 always (LORAGA_PACK), 0 when bf16 is native */
    uint16_t *h16[2];
    size_t h16_cap[2]; /* bf16 operands (native path) */
    float *r32[2];
    size_t r32_cap[2]; /* bf16-rounded float32 operands (emulated path) */
    float *wblk;       /* WBLOCK_FLOATS: weight rows as float32 */
    long wblock_floats; /* rows converted at a time <= this / cols (<= WBLOCK_FLOATS; tests lower it) */
    char desc[160];
} cpu_state;

static cpu_state *state(const lg_ops *o) { return o ? (cpu_state *)o->impl : NULL; }

static uint16_t *scratch16(cpu_state *s, int i, size_t n) {
    if (n > s->h16_cap[i]) {
        lg_aligned_free(s->h16[i]);
        s->h16[i] = lg_aligned_alloc(n * sizeof(uint16_t));
        s->h16_cap[i] = n;
    }
    return s->h16[i];
}

static float *scratch32(cpu_state *s, int i, size_t n) {
    if (n > s->r32_cap[i]) {
        lg_aligned_free(s->r32[i]);
        s->r32[i] = lg_aligned_alloc(n * sizeof(float));
        s->r32_cap[i] = n;
    }
    return s->r32[i];
}

/* ---- bfloat16 rounding ------------------------------------------------------------ */

/* Round to nearest even on the bits (NaN kept a quiet NaN): the vectoriser turns this into
 * a few integer instructions per lane. */
static inline uint32_t bf16_round_bits(uint32_t u) {
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u | 0x00400000u) & 0xffff0000u; /* NaN */
    return (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
}

void lg_round_bf16(uint16_t *dst, const float *src, long n) {
#pragma omp parallel for simd schedule(static) if (n >= 4 * PAR_MIN && !omp_in_parallel())
    for (long i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &src[i], sizeof u);
        dst[i] = (uint16_t)(bf16_round_bits(u) >> 16);
    }
}

void lg_round_bf16_f32(float *dst, const float *src, long n) {
#pragma omp parallel for simd schedule(static) if (n >= 4 * PAR_MIN && !omp_in_parallel())
    for (long i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &src[i], sizeof u);
        u = bf16_round_bits(u);
        memcpy(&dst[i], &u, sizeof u);
    }
}

static void bf16_expand(float *dst, const uint16_t *src, long n) {
#pragma omp parallel for simd schedule(static) if (n >= 4 * PAR_MIN && !omp_in_parallel())
    for (long i = 0; i < n; i++) {
        uint32_t u = (uint32_t)src[i] << 16;
        memcpy(&dst[i], &u, sizeof u);
    }
}

/* ---- GEMM ------------------------------------------------------------------------- */

/* OpenBLAS, C (M x N) = alpha op(A) op(B) + beta C, row-major. Inside a parallel region the
 * OpenMP build of OpenBLAS runs single-threaded, which is what the callers there want. */
static void blas_sgemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                       const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) { /* BLAS would read nothing from A/B; keep the beta semantics explicit */
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                float *c = C + (long)i * ldc + j;
                *c = beta == 0.0f ? 0.0f : beta * *c;
            }
        return;
    }
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans, M, N, K,
                alpha, A, lda, B, ldb, beta, C, ldc);
}

/* Skinny products (one side <= 32, the LoRA ranks): OpenBLAS's own threading of such shapes
 * costs more than it saves, so the threads split the output instead, each running a
 * single-threaded GEMM on its slice (no slice overlaps another: no reduction, and the result
 * does not depend on the thread count). */
static void blas_sgemm_split(int tA, int tB, int M, int N, int K, float alpha, const float *A, int lda,
                             const float *B, int ldb, float beta, float *C, int ldc) {
    const int by_cols = N >= M, span = by_cols ? N : M;
    const int nt = (long)M * N * K >= 262144 ? LG_MIN(omp_get_max_threads(), LG_MAX(1, span / 16)) : 1;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        const int t = omp_get_thread_num(), n = omp_get_num_threads();
        const int s0 = (int)((long)span * t / n), s1 = (int)((long)span * (t + 1) / n);
        if (s1 > s0) {
            if (by_cols)
                blas_sgemm(tA, tB, M, s1 - s0, K, alpha, A, lda, tB ? B + (long)s0 * ldb : B + s0, ldb, beta, C + s0,
                           ldc);
            else
                blas_sgemm(tA, tB, s1 - s0, N, K, alpha, tA ? A + s0 : A + (long)s0 * lda, lda, B, ldb, beta,
                           C + (long)s0 * ldc, ldc);
        }
    }
}

/* oneDNN's float32 GEMM (measured faster on every training shape here, most on the skinny ones);
 * OpenBLAS for a single row (decoding: oneDNN wakes its threads for a product that takes less
 * time than that), and inside parallel regions (the cache is not thread-safe). */
static int use_dnnl_f32(const cpu_state *s, int M, int N, int K) {
    if (!s || !s->dnnl || s->gemm_lib == GEMM_OPENBLAS || omp_in_parallel()) return 0;
    if (s->gemm_lib == GEMM_ONEDNN) return 1;
    return M > 1 && N > 1;
}

static void cpu_gemm(const lg_ops *o, int tA, int tB, int M, int N, int K, float alpha, const float *A, int lda,
                     const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    cpu_state *s = state(o);
    if (K > 0 && use_dnnl_f32(s, M, N, K) &&
        lg_dnnl_matmul(s->dnnl, LG_MM_F32, tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc) == 0)
        return;
    if (K > 0 && LG_MIN(M, N) <= 32 && !omp_in_parallel())
        blas_sgemm_split(tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    else
        blas_sgemm(tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

static void cpu_dgemm(const lg_ops *o, int tA, int tB, int M, int N, int K, double alpha, const double *A, int lda,
                      const double *B, int ldb, double beta, double *C, int ldc) {
    if (M <= 0 || N <= 0 || K <= 0) return;
    cblas_dgemm(CblasRowMajor, tA ? CblasTrans : CblasNoTrans, tB ? CblasTrans : CblasNoTrans, M, N, K, alpha, A,
                lda, B, ldb, beta, C, ldc);
}

/* ---- linear layers ------------------------------------------------------------------ */

static void add_bias(float *y, const float *b, int N, int out) {
    if (!b) return;
#pragma omp parallel for schedule(static) if ((long)N * out >= PAR_MIN)
    for (int i = 0; i < N; i++) {
        float *yi = y + (long)i * out;
        for (int k = 0; k < out; k++) yi[k] += b[k];
    }
}

/* Rows [r0, r0 + nr) of W (cols wide) as float32 in the block scratch: expanded from bf16
 * storage, or (round) rounded to bf16 values from float32 storage. */
static const float *w_rows(cpu_state *s, lg_weight W, int r0, int nr, int cols, int round) {
    const long off = (long)r0 * cols, n = (long)nr * cols;
    if (W.bf16) bf16_expand(s->wblk, W.bf16 + off, n);
    else if (round) lg_round_bf16_f32(s->wblk, W.f32 + off, n);
    else return W.f32 + off;
    return s->wblk;
}

static int wblock_rows(const cpu_state *s, int cols) { return (int)LG_MAX(1, s->wblock_floats / cols); }

/* A weight whose products need its rows converted (bf16 storage, or bf16 precision emulated). */
static int w_converted(const cpu_state *s, lg_weight W, int round) { return s && (W.bf16 || round); }

/* bf16 products on oneDNN (native): both inputs as bf16, float32 out. -1: not possible here. */
static const uint16_t *w_as_bf16(cpu_state *s, lg_weight W, long n) {
    if (W.bf16) return W.bf16;
    uint16_t *w = scratch16(s, 1, (size_t)n); /* trainable weights change every step */
    lg_round_bf16(w, W.f32, n);
    return w;
}

static int native_bf16(const lg_ops *o) {
    const cpu_state *s = state(o);
    return o && o->precision == LG_PREC_BF16 && o->bf16_native && s && s->dnnl && !omp_in_parallel();
}

/* The prepacked forward operand of W, made on first use; NULL when there is none. */
static char g_nopack; /* a packed slot holding &g_nopack: tried, nothing to gain, do not try again */

static const void *w_packed(const lg_ops *o, lg_weight W, int N, int in, int out) {
    cpu_state *s = state(o);
    if (!W.packed || !s || !s->dnnl || s->pack < 0) return NULL;
    const int bf = o->precision == LG_PREC_BF16;
    if (!s->pack && !(bf && o->bf16_native && W.bf16)) return NULL;
    if (!*W.packed) {
        void *p = NULL;
        if (bf && o->bf16_native) p = lg_dnnl_pack(s->dnnl, LG_MM_BF16, in, out, w_as_bf16(s, W, (long)in * out), N);
        else if (!bf && W.f32) p = lg_dnnl_pack(s->dnnl, LG_MM_F32, in, out, W.f32, N);
        *W.packed = p ? p : (void *)&g_nopack;
    }
    return *W.packed == (void *)&g_nopack ? NULL : *W.packed;
}

static void cpu_release_packed(const lg_ops *o, void *packed) {
    (void)o;
    if (packed && packed != (void *)&g_nopack) lg_dnnl_packed_free(packed);
}

/* y (N x out) = x (N x in) W^T + b in o->precision;  W (out x in), b (out) or NULL. */
static void cpu_linear_forward(const lg_ops *o, float *y, const float *x, lg_weight W, const float *b, int N, int in,
                               int out) {
    if (N <= 0 || out <= 0) return;
    cpu_state *s = state(o);
    const int bf = o && o->precision == LG_PREC_BF16;
    const void *pk = w_packed(o, W, N, in, out);
    if (pk) {
        const void *xa = x;
        if (bf) {
            uint16_t *x16 = scratch16(s, 0, (size_t)N * in);
            lg_round_bf16(x16, x, (long)N * in);
            xa = x16;
        }
        if (lg_dnnl_matmul_packed(s->dnnl, N, 1.0f, xa, in, pk, 0.0f, y, out) == 0) {
            add_bias(y, b, N, out);
            return;
        }
    }
    if (native_bf16(o)) {
        uint16_t *x16 = scratch16(s, 0, (size_t)N * in);
        lg_round_bf16(x16, x, (long)N * in);
        if (lg_dnnl_matmul(s->dnnl, LG_MM_BF16, 0, 1, N, out, in, 1.0f, x16, in, w_as_bf16(s, W, (long)in * out), in,
                           0.0f, y, out) == 0) {
            add_bias(y, b, N, out);
            return;
        }
    }
    const float *xr = x;
    if (bf) { /* emulated bf16: the inputs' rounding, float32 products */
        float *t = scratch32(s, 0, (size_t)N * in);
        lg_round_bf16_f32(t, x, (long)N * in);
        xr = t;
    }
    if (!w_converted(s, W, bf)) {
        cpu_gemm(o, 0, 1, N, out, in, 1.0f, xr, in, W.f32, in, 0.0f, y, out);
    } else {
        const int step = wblock_rows(s, in);
        for (int r0 = 0; r0 < out; r0 += step) { /* y[:, r0:r0+nr] = x W[r0:r0+nr]^T */
            const int nr = LG_MIN(step, out - r0);
            cpu_gemm(o, 0, 1, N, nr, in, 1.0f, xr, in, w_rows(s, W, r0, nr, in, bf), in, 0.0f, y + r0, out);
        }
    }
    add_bias(y, b, N, out);
}

/* db (out) += scale colsum(dy): threads own disjoint column blocks and walk all rows (no race,
 * contiguous reads). */
static void col_sums(float *db, const float *dy, int N, int out, float scale) {
    int nblk = (out + COL_BLOCK - 1) / COL_BLOCK;
#pragma omp parallel for schedule(static) if ((long)N * out >= PAR_MIN && nblk > 1)
    for (int blk = 0; blk < nblk; blk++) {
        int o0 = blk * COL_BLOCK, o1 = LG_MIN(out, o0 + COL_BLOCK);
        float acc[COL_BLOCK] = {0};
        for (int i = 0; i < N; i++) {
            const float *dyi = dy + (long)i * out;
            for (int k = o0; k < o1; k++) acc[k - o0] += dyi[k];
        }
        for (int k = o0; k < o1; k++) db[k] += scale * acc[k - o0];
    }
}

/* dx (N x in) += scale dy (N x out) W (out x in);  dW (out x in) += scale dy^T x;
 * db (out) += scale colsum(dy). */
static void cpu_linear_backward(const lg_ops *o, float *dx, float *dW, float *db, const float *dy, const float *x,
                                lg_weight W, int N, int in, int out, float scale) {
    if (db) col_sums(db, dy, N, out, scale);
    if ((!dx && !dW) || N <= 0) return;
    cpu_state *s = state(o);
    const int bf = o && o->precision == LG_PREC_BF16;
    if (native_bf16(o)) {
        uint16_t *d16 = scratch16(s, 0, (size_t)N * out);
        lg_round_bf16(d16, dy, (long)N * out);
        int done_dx = !dx, done_dW = !dW;
        if (dx)
            done_dx = lg_dnnl_matmul(s->dnnl, LG_MM_BF16, 0, 0, N, in, out, scale, d16, out,
                                     w_as_bf16(s, W, (long)in * out), in, 1.0f, dx, in) == 0;
        if (dW) {
            uint16_t *x16 = scratch16(s, 1, (size_t)N * in);
            lg_round_bf16(x16, x, (long)N * in);
            done_dW = lg_dnnl_matmul(s->dnnl, LG_MM_BF16, 1, 0, out, in, N, scale, d16, out, x16, in, 1.0f, dW, in) == 0;
        }
        if (done_dx && done_dW) return;
        if (done_dx) dx = NULL; /* finish what oneDNN could not do below */
        if (done_dW) dW = NULL;
    }
    const float *dyr = dy, *xr = x;
    if (bf) {
        float *t = scratch32(s, 0, (size_t)N * out);
        lg_round_bf16_f32(t, dy, (long)N * out);
        dyr = t;
        if (dW) {
            float *u = scratch32(s, 1, (size_t)N * in);
            lg_round_bf16_f32(u, x, (long)N * in);
            xr = u;
        }
    }
    if (dx) {
        if (!w_converted(s, W, bf)) {
            cpu_gemm(o, 0, 0, N, in, out, scale, dyr, out, W.f32, in, 1.0f, dx, in);
        } else {
            const int step = wblock_rows(s, in);
            for (int r0 = 0; r0 < out; r0 += step) { /* dx += dy[:, r0:r0+nr] W[r0:r0+nr] */
                const int nr = LG_MIN(step, out - r0);
                cpu_gemm(o, 0, 0, N, in, nr, scale, dyr + r0, out, w_rows(s, W, r0, nr, in, bf), in, 1.0f, dx, in);
            }
        }
    }
    if (dW) cpu_gemm(o, 1, 0, out, in, N, scale, dyr, out, xr, in, 1.0f, dW, in);
}

/* ---- dense linear algebra ----------------------------------------------------------- */

static int cpu_orthonormalize(const lg_ops *o, int rows, int cols, double *X) {
    double *tau = lg_malloc((size_t)LG_MAX(1, cols) * sizeof(double));
    int rc = LAPACKE_dgeqrf(LAPACK_ROW_MAJOR, rows, cols, X, cols, tau);
    if (!rc) rc = LAPACKE_dorgqr(LAPACK_ROW_MAJOR, rows, cols, cols, X, cols, tau);
    free(tau);
    return rc;
}

static int cpu_svd(const lg_ops *o, int rows, int cols, double *X, double *S, double *U, double *Vt) {
    return LAPACKE_dgesdd(LAPACK_ROW_MAJOR, 'S', rows, cols, X, cols, S, U, LG_MIN(rows, cols), Vt, cols);
}

static int cpu_lstsq(const lg_ops *o, int rows, int cols, int nrhs, double *A, double *B) {
    return LAPACKE_dgels(LAPACK_ROW_MAJOR, 'N', rows, cols, nrhs, A, cols, B, nrhs);
}

/* ---- embeddings ------------------------------------------------------------------ */

/* out (N x C) = table[ids[i]] (table V x C). */
static void cpu_embedding_forward(const lg_ops *o, float *out, const int *ids, lg_weight table, int N, int C) {
#pragma omp parallel for schedule(static) if ((long)N * C >= PAR_MIN)
    for (int i = 0; i < N; i++) {
        if (table.bf16) bf16_expand(out + (long)i * C, table.bf16 + (long)ids[i] * C, C);
        else memcpy(out + (long)i * C, table.f32 + (long)ids[i] * C, (size_t)C * sizeof(float));
    }
}

/* dtable (V x C)[ids[i]] += dout (N x C)[i]. The same id may repeat, so threads split the
 * columns, never the rows. */
static void cpu_embedding_backward(const lg_ops *o, float *dtable, const float *dout, const int *ids, int N, int C) {
    int nblk = (C + COL_BLOCK - 1) / COL_BLOCK;
#pragma omp parallel for schedule(static) if ((long)N * C >= PAR_MIN && nblk > 1)
    for (int blk = 0; blk < nblk; blk++) {
        int c0 = blk * COL_BLOCK, c1 = LG_MIN(C, c0 + COL_BLOCK);
        for (int i = 0; i < N; i++) {
            float *dst = dtable + (long)ids[i] * C;
            const float *src = dout + (long)i * C;
            for (int c = c0; c < c1; c++) dst[c] += src[c];
        }
    }
}

/* out (B, T, C) += wpe[pos0 + t] (wpe max_pos x C). */
static void cpu_posemb_forward(const lg_ops *o, float *out, const float *wpe, int B, int T, int C, int pos0) {
#pragma omp parallel for schedule(static) if ((long)B * T * C >= PAR_MIN)
    for (int bt = 0; bt < B * T; bt++) {
        float *ob = out + (long)bt * C;
        const float *p = wpe + (long)(pos0 + bt % T) * C;
        for (int c = 0; c < C; c++) ob[c] += p[c];
    }
}

/* dwpe[pos0 + t] += sum_b dout[b, t]; each thread owns some positions t. */
static void cpu_posemb_backward(const lg_ops *o, float *dwpe, const float *dout, int B, int T, int C, int pos0) {
#pragma omp parallel for schedule(static) if ((long)B * T * C >= PAR_MIN)
    for (int t = 0; t < T; t++) {
        float *d = dwpe + (long)(pos0 + t) * C;
        for (int b = 0; b < B; b++) {
            const float *g = dout + ((long)b * T + t) * C;
            for (int c = 0; c < C; c++) d[c] += g[c];
        }
    }
}

/* ---- norms ----------------------------------------------------------------------- */

/* out (N x C) = x * rstd * w;  rstd (N) = 1/sqrt(mean(x^2) + eps). */
static void cpu_rmsnorm_forward(const lg_ops *o, float *out, float *rstd, const float *x, const float *w, int N,
                                int C, float eps) {
#pragma omp parallel for schedule(static) if ((long)N * C >= PAR_MIN)
    for (int i = 0; i < N; i++) {
        const float *xi = x + (long)i * C;
        float *oi = out + (long)i * C;
        float ss = 0.0f;
        for (int c = 0; c < C; c++) ss += xi[c] * xi[c];
        float r = 1.0f / sqrtf(ss / (float)C + eps);
        for (int c = 0; c < C; c++) oi[c] = xi[c] * r * w[c];
        rstd[i] = r;
    }
}

/* dx += r (g w - x r^2 mean(g w x));  dw += sum_rows g x r.  (g = dout, all N x C.) */
static void cpu_rmsnorm_backward(const lg_ops *o, float *dx, float *dw, const float *dout, const float *x,
                                 const float *w, const float *rstd, int N, int C) {
    if (dx) {
#pragma omp parallel for schedule(static) if ((long)N * C >= PAR_MIN)
        for (int i = 0; i < N; i++) {
            const float *xi = x + (long)i * C, *gi = dout + (long)i * C;
            float *dxi = dx + (long)i * C;
            float r = rstd[i], dot = 0.0f;
            for (int c = 0; c < C; c++) dot += gi[c] * w[c] * xi[c];
            float k = r * r * dot / (float)C;
            for (int c = 0; c < C; c++) dxi[c] += r * (gi[c] * w[c] - xi[c] * k);
        }
    }
    if (dw) { /* reduction over rows: split by columns */
        int nblk = (C + COL_BLOCK - 1) / COL_BLOCK;
#pragma omp parallel for schedule(static) if ((long)N * C >= PAR_MIN && nblk > 1)
        for (int blk = 0; blk < nblk; blk++) {
            int c0 = blk * COL_BLOCK, c1 = LG_MIN(C, c0 + COL_BLOCK);
            float acc[COL_BLOCK] = {0};
            for (int i = 0; i < N; i++) {
                const float *xi = x + (long)i * C, *gi = dout + (long)i * C;
                float r = rstd[i];
                for (int c = c0; c < c1; c++) acc[c - c0] += gi[c] * xi[c] * r;
            }
            for (int c = c0; c < c1; c++) dw[c] += acc[c - c0];
        }
    }
}

/* out (N x C) = (x - mean) * rstd * w + b;  biased variance, like PyTorch. b may be NULL. */
static void cpu_layernorm_forward(const lg_ops *o, float *out, float *mean, float *rstd, const float *x,
                                  const float *w, const float *b, int N, int C, float eps) {
#pragma omp parallel for schedule(static) if ((long)N * C >= PAR_MIN)
    for (int i = 0; i < N; i++) {
        const float *xi = x + (long)i * C;
        float *oi = out + (long)i * C;
        float m = 0.0f;
        for (int c = 0; c < C; c++) m += xi[c];
        m /= (float)C;
        float v = 0.0f; /* two passes: no cancellation from E[x^2] - E[x]^2 */
        for (int c = 0; c < C; c++) v += (xi[c] - m) * (xi[c] - m);
        v /= (float)C;
        float r = 1.0f / sqrtf(v + eps);
        for (int c = 0; c < C; c++) oi[c] = (xi[c] - m) * r * w[c] + (b ? b[c] : 0.0f);
        mean[i] = m;
        rstd[i] = r;
    }
}

/* With n = (x - mean) rstd and d = g w:  dx += rstd (d - mean(d) - n mean(d n));
 * dw += sum_rows g n;  db += sum_rows g. */
static void cpu_layernorm_backward(const lg_ops *o, float *dx, float *dw, float *db, const float *dout,
                                   const float *x, const float *w, const float *mean,
                                   const float *rstd, int N, int C) {
    if (dx) {
#pragma omp parallel for schedule(static) if ((long)N * C >= PAR_MIN)
        for (int i = 0; i < N; i++) {
            const float *xi = x + (long)i * C, *gi = dout + (long)i * C;
            float *dxi = dx + (long)i * C;
            float m = mean[i], r = rstd[i];
            float dmean = 0.0f, dnmean = 0.0f;
            for (int c = 0; c < C; c++) {
                float d = gi[c] * w[c];
                dmean += d;
                dnmean += d * (xi[c] - m) * r;
            }
            dmean /= (float)C;
            dnmean /= (float)C;
            for (int c = 0; c < C; c++) {
                float n = (xi[c] - m) * r;
                dxi[c] += r * (gi[c] * w[c] - dmean - n * dnmean);
            }
        }
    }
    if (dw || db) {
        int nblk = (C + COL_BLOCK - 1) / COL_BLOCK;
#pragma omp parallel for schedule(static) if ((long)N * C >= PAR_MIN && nblk > 1)
        for (int blk = 0; blk < nblk; blk++) {
            int c0 = blk * COL_BLOCK, c1 = LG_MIN(C, c0 + COL_BLOCK);
            float aw[COL_BLOCK] = {0}, ab[COL_BLOCK] = {0};
            for (int i = 0; i < N; i++) {
                const float *xi = x + (long)i * C, *gi = dout + (long)i * C;
                float m = mean[i], r = rstd[i];
                for (int c = c0; c < c1; c++) {
                    aw[c - c0] += gi[c] * (xi[c] - m) * r;
                    ab[c - c0] += gi[c];
                }
            }
            for (int c = c0; c < c1; c++) {
                if (dw) dw[c] += aw[c - c0];
                if (db) db[c] += ab[c - c0];
            }
        }
    }
}

/* ---- RoPE ------------------------------------------------------------------------- */

void lg_rope_tables(int max_pos, int hd, float theta, float **cos_out, float **sin_out) {
    int half = hd / 2;
    float *c = lg_malloc((size_t)max_pos * (size_t)half * sizeof(float));
    float *s = lg_malloc((size_t)max_pos * (size_t)half * sizeof(float));
    for (int i = 0; i < half; i++) {
        /* double: at p ~ 1e4 a float angle would already be off by ~1e-3 rad */
        double freq = pow((double)theta, -2.0 * i / (double)hd);
        for (int p = 0; p < max_pos; p++) {
            double a = (double)p * freq;
            c[(long)p * half + i] = (float)cos(a);
            s[(long)p * half + i] = (float)sin(a);
        }
    }
    *cos_out = c;
    *sin_out = s;
}

void lg_rope_tables_freq(int max_pos, int half, const double *inv_freq, double mscale, float **cos_out,
                         float **sin_out) {
    float *c = lg_malloc((size_t)max_pos * (size_t)half * sizeof(float));
    float *s = lg_malloc((size_t)max_pos * (size_t)half * sizeof(float));
    for (int i = 0; i < half; i++)
        for (int p = 0; p < max_pos; p++) {
            double a = (double)p * inv_freq[i];
            c[(long)p * half + i] = (float)(cos(a) * mscale);
            s[(long)p * half + i] = (float)(sin(a) * mscale);
        }
    *cos_out = c;
    *sin_out = s;
}

/* Index of the second element of pair i: HALF pairs (i, i + hd/2), INTERLEAVED (2i, 2i+1). */
#define ROPE_IDX(style, i, half) ((style) == LG_ROPE_HALF ? (i) : 2 * (i))
#define ROPE_STEP(style, half) ((style) == LG_ROPE_HALF ? (half) : 1)

/* out, in: (B, T, H, hd) rows of stride ld; (a, b) -> (a cos - b sin, a sin + b cos).
 * Each pair is read before it is written, so out == in works. */
static void cpu_rope_forward(const lg_ops *o, float *out, const float *in, int ld, int B, int T, int H, int hd,
                             int pos0, const float *cos, const float *sin, lg_rope_style style) {
    int half = hd / 2, step = ROPE_STEP(style, half);
#pragma omp parallel for schedule(static) if ((long)B * T * H * hd >= PAR_MIN)
    for (int bt = 0; bt < B * T; bt++) {
        const float *c = cos + (long)(pos0 + bt % T) * half;
        const float *s = sin + (long)(pos0 + bt % T) * half;
        for (int h = 0; h < H; h++) {
            const float *x = in + (long)bt * ld + (long)h * hd;
            float *y = out + (long)bt * ld + (long)h * hd;
            for (int i = 0; i < half; i++) {
                int j = ROPE_IDX(style, i, half);
                float a = x[j], b = x[j + step];
                y[j] = a * c[i] - b * s[i];
                y[j + step] = a * s[i] + b * c[i];
            }
        }
    }
}

/* din += R^T dout: the rotation by -angle. */
static void cpu_rope_backward(const lg_ops *o, float *din, const float *dout, int ld, int B, int T, int H, int hd,
                              int pos0, const float *cos, const float *sin, lg_rope_style style) {
    int half = hd / 2, step = ROPE_STEP(style, half);
#pragma omp parallel for schedule(static) if ((long)B * T * H * hd >= PAR_MIN)
    for (int bt = 0; bt < B * T; bt++) {
        const float *c = cos + (long)(pos0 + bt % T) * half;
        const float *s = sin + (long)(pos0 + bt % T) * half;
        for (int h = 0; h < H; h++) {
            const float *g = dout + (long)bt * ld + (long)h * hd;
            float *d = din + (long)bt * ld + (long)h * hd;
            for (int i = 0; i < half; i++) {
                int j = ROPE_IDX(style, i, half);
                float ga = g[j], gb = g[j + step];
                d[j] += ga * c[i] + gb * s[i];
                d[j + step] += -ga * s[i] + gb * c[i];
            }
        }
    }
}

/* ---- attention ---------------------------------------------------------------------- */

/* e^x written so that the compiler vectorises it: x = n ln2 + r with |r| <= ln2/2, e^r by its
 * degree-6 Taylor polynomial (relative error < 2e-7), 2^n built in the exponent bits. x is clamped
 * to [-87, 88]: e^-87 (~1e-38) stands for 0 and e^88 (~1.6e38) for overflow, which no caller's
 * result distinguishes from the true value after the division it feeds (softmax, sigmoid).
 * NaN in gives NaN out, so a poisoned activation reaches the loss instead of vanishing. */
static inline float exp_vec(float x) {
    float xc = x > -87.0f ? x : -87.0f; /* NaN -> -87 here (never converted to int), restored below */
    xc = xc < 88.0f ? xc : 88.0f;
    /* n = round(xc / ln2) by the 1.5 * 2^23 trick: no libm call, so the loop vectorises (floorf
     * would stay a scalar call without -fno-trapping-math) */
    float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = xc - n * 0.693145751953125f - n * 1.42860682030941723e-6f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720))))));
    uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n); /* a bit cast the vectoriser understands */
    return x == x ? p * two_n : x;
}

/* In place: p[0..n) = softmax(p[0..n)), vectorised (its own function so the loops are plain). */
static void softmax_row(float *restrict p, int n) {
    float mx = p[0];
#pragma omp simd reduction(max : mx)
    for (int s = 1; s < n; s++) mx = p[s] > mx ? p[s] : mx;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int s = 0; s < n; s++) {
        float e = exp_vec(p[s] - mx);
        p[s] = e;
        sum += e;
    }
    float inv = 1.0f / sum;
#pragma omp simd
    for (int s = 0; s < n; s++) p[s] *= inv;
}

/* In place: ds[0..n) = p (ds - <p, ds>), the softmax backward of one row. */
static void softmax_bwd_row(float *restrict ds, const float *restrict p, int n) {
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int s = 0; s < n; s++) dot += p[s] * ds[s];
#pragma omp simd
    for (int s = 0; s < n; s++) ds[s] = p[s] * (ds[s] - dot);
}

/* Query rows per block in attention backward: dS (rows x T) lives on the stack, DS_MAX floats. */
#define DS_MAX 8192
static int att_bwd_rows(int T) { return LG_MAX(1, LG_MIN(ATT_BLOCK, DS_MAX / T)); }

/* Per (b, h), in row blocks [r0, r1) of queries:
 *   S = scale Q[r0:r1] K[0:r1]^T  -> causal softmax in place in probs -> O[r0:r1] = P V[0:r1].
 * q (B, T, *) stride ldq, k/v stride ldk/ldv, out (B, T, H*hd) dense, probs (B, H, T, T). */
static void cpu_attention_forward(const lg_ops *o, float *out, float *probs, const float *q, int ldq,
                                  const float *k, int ldk, const float *v, int ldv, int B, int T,
                                  int H, int KV, int hd) {
    int group = H / KV, ldo = H * hd, brows = att_bwd_rows(T);
    float scale = 1.0f / sqrtf((float)hd);
    /* OpenBLAS (OpenMP build) runs single-threaded when called inside a parallel region. */
#pragma omp parallel for schedule(dynamic, 1) if ((long)B * H * T * T * hd >= PAR_MIN && B * H > 1)
    for (int bh = 0; bh < B * H; bh++) {
        int b = bh / H, h = bh % H, kvh = h / group;
        const float *qb = q + (long)b * T * ldq + (long)h * hd;
        const float *kb = k + (long)b * T * ldk + (long)kvh * hd;
        const float *vb = v + (long)b * T * ldv + (long)kvh * hd;
        float *ob = out + (long)b * T * ldo + (long)h * hd;
        float *P = probs + (long)bh * T * T;
        for (int r0 = 0; r0 < T; r0 += ATT_BLOCK) {
            int r1 = LG_MIN(T, r0 + ATT_BLOCK), m = r1 - r0;
            blas_sgemm(0, 1, m, r1, hd, scale, qb + (long)r0 * ldq, ldq, kb, ldk, 0.0f,
                     P + (long)r0 * T, T);
            for (int t = r0; t < r1; t++) {
                float *p = P + (long)t * T;
                softmax_row(p, t + 1);
                /* zeros above the diagonal only as far as a block GEMM reads them (here and in
                 * backward); the rest of the row is never read */
                int z1 = LG_MIN(T, LG_MAX(r1, (t / brows + 1) * brows));
                if (z1 > t + 1) memset(p + t + 1, 0, (size_t)(z1 - t - 1) * sizeof(float));
            }
            blas_sgemm(0, 0, m, hd, r1, 1.0f, P + (long)r0 * T, T, vb, ldv, 0.0f,
                     ob + (long)r0 * ldo, ldo);
        }
    }
}

/* Per (b, kv head), then per query head of its group, in row blocks [r0, r1):
 *   dV[0:r1] += P^T dO;  dS = dO V^T then dS = P (dS - rowsum(P dS));
 *   dQ[r0:r1] += scale dS K;  dK[0:r1] += scale dS^T Q.
 * A thread owns a (b, kv head) pair and walks its query heads in order, so dK/dV accumulate
 * straight into dk/dv without races or scratch, and the result does not depend on the thread
 * count. dS lives on the stack: the row block shrinks for long sequences to keep it at most
 * DS_MAX floats, so a training step allocates nothing here. */
static void cpu_attention_backward(const lg_ops *o, float *dq, float *dk, float *dv, const float *dout,
                                   const float *q, int ldq, const float *k, int ldk,
                                   const float *v, int ldv, const float *probs, int B, int T,
                                   int H, int KV, int hd) {
    if (!dq && !dk && !dv) return;
    int group = H / KV, ldo = H * hd;
    float scale = 1.0f / sqrtf((float)hd);
    int need_ds = dq || dk;
    int rows = att_bwd_rows(T); /* query rows per block */
    int par = (long)B * H * T * T * hd >= PAR_MIN && B * KV > 1;
#pragma omp parallel for schedule(dynamic, 1) if (par)
    for (int bk = 0; bk < B * KV; bk++) {
        float dS[DS_MAX < 1 ? 1 : DS_MAX];
        int b = bk / KV, kvh = bk % KV;
        const float *kb = k + (long)b * T * ldk + (long)kvh * hd;
        const float *vb = v + (long)b * T * ldv + (long)kvh * hd;
        float *dkb = dk ? dk + (long)b * T * ldk + (long)kvh * hd : NULL;
        float *dvb = dv ? dv + (long)b * T * ldv + (long)kvh * hd : NULL;
        for (int h = kvh * group; h < (kvh + 1) * group; h++) {
            const float *qb = q + (long)b * T * ldq + (long)h * hd;
            const float *gob = dout + (long)b * T * ldo + (long)h * hd;
            const float *P = probs + ((long)b * H + h) * T * T;
            float *dqb = dq ? dq + (long)b * T * ldq + (long)h * hd : NULL;
            for (int r0 = 0; r0 < T; r0 += rows) {
                int r1 = LG_MIN(T, r0 + rows), m = r1 - r0;
                const float *Pb = P + (long)r0 * T;
                /* P is stored with zeros above the diagonal, so the full [r0:r1, 0:r1] block
                 * can be used as is. */
                if (dvb) blas_sgemm(1, 0, r1, hd, m, 1.0f, Pb, T, gob + (long)r0 * ldo, ldo, 1.0f, dvb, ldv);
                if (!need_ds) continue;
                blas_sgemm(0, 1, m, r1, hd, 1.0f, gob + (long)r0 * ldo, ldo, vb, ldv, 0.0f, dS, r1);
                for (int t = r0; t < r1; t++) {
                    float *ds = dS + (long)(t - r0) * r1;
                    softmax_bwd_row(ds, P + (long)t * T, t + 1);
                    for (int s2 = t + 1; s2 < r1; s2++) ds[s2] = 0.0f;
                }
                if (dqb) blas_sgemm(0, 0, m, hd, r1, scale, dS, r1, kb, ldk, 1.0f, dqb + (long)r0 * ldq, ldq);
                if (dkb) blas_sgemm(1, 0, r1, hd, m, scale, dS, r1, qb + (long)r0 * ldq, ldq, 1.0f, dkb, ldk);
            }
        }
    }
}

/* ---- MLP activations ---------------------------------------------------------------- */

/* out (n) = silu(gate) * up, silu(g) = g sigmoid(g). */
static void cpu_swiglu_forward(const lg_ops *o, float *out, const float *gate, const float *up, long n) {
#pragma omp parallel for simd schedule(static) if (n >= PAR_MIN)
    for (long i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + exp_vec(-g)) * up[i];
    }
}

/* dgate += dout up sig (1 + g (1 - sig));  dup += dout silu(g). */
static void cpu_swiglu_backward(const lg_ops *o, float *dgate, float *dup, const float *dout, const float *gate,
                                const float *up, long n) {
    if (dgate && dup) { /* the usual case, as one vectorised loop */
#pragma omp parallel for simd schedule(static) if (n >= PAR_MIN)
        for (long i = 0; i < n; i++) {
            float g = gate[i], sig = 1.0f / (1.0f + exp_vec(-g));
            dgate[i] += dout[i] * up[i] * sig * (1.0f + g * (1.0f - sig));
            dup[i] += dout[i] * g * sig;
        }
        return;
    }
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (long i = 0; i < n; i++) {
        float g = gate[i], sig = 1.0f / (1.0f + exp_vec(-g));
        if (dgate) dgate[i] += dout[i] * up[i] * sig * (1.0f + g * (1.0f - sig));
        if (dup) dup[i] += dout[i] * g * sig;
    }
}

#define GELU_K 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_C 0.044715f

/* out (n) = 0.5 x (1 + tanh(k (x + c x^3))); out may alias in. */
static void cpu_gelu_forward(const lg_ops *o, float *out, const float *in, long n) {
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (long i = 0; i < n; i++) {
        float x = in[i];
        out[i] = 0.5f * x * (1.0f + tanhf(GELU_K * (x + GELU_C * x * x * x)));
    }
}

static void cpu_gelu_backward(const lg_ops *o, float *din, const float *dout, const float *in, long n) {
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (long i = 0; i < n; i++) {
        float x = in[i];
        float th = tanhf(GELU_K * (x + GELU_C * x * x * x));
        float du = GELU_K * (1.0f + 3.0f * GELU_C * x * x);
        din[i] += dout[i] * (0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du);
    }
}

/* ---- loss ----------------------------------------------------------------------------- */

/* logits (N x V), targets (N), weight (N; NULL = all 1). Returns sum_i w_i nll_i; with
 * want_grad the logits become dscale w_i (softmax_i - onehot(target_i)).
 * The sum is formed per fixed block of rows and the blocks added in order, so the loss is
 * bit-identical whatever the thread count (an OpenMP reduction is not). */
#define CE_ROWS 8
/* One row: returns w·nll; with want_grad overwrites the row with dscale·w·(softmax - onehot).
 * A function of its own so that the vectoriser sees plain loops (not an OpenMP body). */
static double ce_row(float *restrict l, int V, int tgt, float w, float dscale, int want_grad) {
    float mx = l[0];
#pragma omp simd reduction(max : mx)
    for (int j = 1; j < V; j++) mx = l[j] > mx ? l[j] : mx;
    float lt = l[tgt];
    /* float partial sums over chunks of 256 (vector lanes), added up in double */
    double sum = 0.0;
    for (int j0 = 0; j0 < V; j0 += 256) {
        int j1 = LG_MIN(V, j0 + 256);
        float part_sum = 0.0f;
        if (want_grad) { /* one pass: keep e^(l - max) for the gradient */
#pragma omp simd reduction(+ : part_sum)
            for (int j = j0; j < j1; j++) {
                float e = exp_vec(l[j] - mx);
                l[j] = e;
                part_sum += e;
            }
        } else {
#pragma omp simd reduction(+ : part_sum)
            for (int j = j0; j < j1; j++) part_sum += exp_vec(l[j] - mx);
        }
        sum += part_sum;
    }
    /* the max term contributes exp(0) = 1, so sum >= 1 and the log is finite */
    double lse = (double)mx + log(sum);
    if (want_grad) {
        float ws = dscale * w, sc = (float)(ws / sum);
        for (int j = 0; j < V; j++) l[j] *= sc;
        l[tgt] -= ws;
    }
    return (double)w * (lse - (double)lt);
}

static double cpu_cross_entropy(const lg_ops *o, float *logits, const int *targets, const float *weight, int N,
                                int V, float dscale, int want_grad) {
    /* Per-block partial sums, added in block order: the same bits for any thread count. The
     * partials live on the stack (blocks grow for huge N), so a step allocates nothing here. */
    enum { MAX_BLK = 4096 };
    double part[MAX_BLK];
    int per = LG_MAX(CE_ROWS, (N + MAX_BLK - 1) / MAX_BLK);
    int nblk = (N + per - 1) / per;
#pragma omp parallel for schedule(static) if ((long)N * V >= PAR_MIN && nblk > 1)
    for (int blk = 0; blk < nblk; blk++) {
        double acc = 0.0;
        for (int i = blk * per; i < LG_MIN(N, (blk + 1) * per); i++) {
            float *l = logits + (long)i * V;
            float w = weight ? weight[i] : 1.0f;
            if (w == 0.0f) {
                if (want_grad) memset(l, 0, (size_t)V * sizeof(float));
                continue;
            }
            acc += ce_row(l, V, targets[i], w, dscale, want_grad);
        }
        part[blk] = acc;
    }
    double total = 0.0;
    for (int blk = 0; blk < nblk; blk++) total += part[blk];
    return total;
}

/* y (n) += a x. */
static void cpu_axpy(const lg_ops *o, long n, float a, const float *x, float *y) {
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (long i = 0; i < n; i++) y[i] += a * x[i];
}

/* ---- attention over a key/value cache ---------------------------------------------- */

/* Keys per block of the online softmax; the largest head width the stack accumulator holds. */
#define DEC_BLK 64
#define DEC_MAX_HD 512

/* Flash-style, per (query, head): keys in blocks with a running maximum and sum (online
 * softmax), so no score row is stored and nothing is allocated; out = sum_j p_j V_j / sum_j p_j. */
static void cpu_attention_decode(const lg_ops *o, float *out, const float *q, int ldq, const float *K,
                                 const float *V, int ldkv, int n, int pos0, int H, int KV, int hd) {
    const int group = H / KV, qd = H * hd;
    const float scale = 1.0f / sqrtf((float)hd);
    const long work = (long)n * H;
    /* threads only for real prefill work: waking a team costs more than a decode step's attention */
    const long flops = (long)H * n * (pos0 + n) * hd;
#pragma omp parallel for schedule(dynamic, 1) if (flops >= (1L << 22) && work > 1)
    for (long w = 0; w < work; w++) {
        const int i = (int)(w / H), h = (int)(w % H), kvh = h / group, nk = pos0 + i + 1;
        const float *qi = q + (long)i * ldq + (long)h * hd;
        float acc[DEC_MAX_HD], sc[DEC_BLK], mx = -INFINITY, sum = 0.0f;
        for (int d = 0; d < hd; d++) acc[d] = 0.0f;
        for (int j0 = 0; j0 < nk; j0 += DEC_BLK) {
            const int j1 = LG_MIN(nk, j0 + DEC_BLK);
            float bm = -INFINITY;
            for (int j = j0; j < j1; j++) {
                const float *kj = K + (long)j * ldkv + (long)kvh * hd;
                float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
                for (int d = 0; d < hd; d++) dot += qi[d] * kj[d];
                sc[j - j0] = scale * dot;
                bm = sc[j - j0] > bm ? sc[j - j0] : bm;
            }
            const float m2 = bm > mx ? bm : mx, corr = expf(mx - m2); /* exp(-inf) = 0 at the start */
            sum *= corr;
            for (int d = 0; d < hd; d++) acc[d] *= corr;
            for (int j = j0; j < j1; j++) {
                const float p = expf(sc[j - j0] - m2);
                const float *vj = V + (long)j * ldkv + (long)kvh * hd;
                sum += p;
#pragma omp simd
                for (int d = 0; d < hd; d++) acc[d] += p * vj[d];
            }
            mx = m2;
        }
        float *oi = out + (long)i * qd + (long)h * hd;
        const float inv = 1.0f / sum;
        for (int d = 0; d < hd; d++) oi[d] = acc[d] * inv;
    }
}

/* ---- architecture features: GeGLU, attention with scale / soft cap / window, soft caps ------ */

/* out (n) = gelu_tanh(gate) * up (Gemma's gelu_pytorch_tanh, the formula of gelu_forward). */
static void cpu_geglu_forward(const lg_ops *o, float *out, const float *gate, const float *up, long n) {
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (long i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = 0.5f * g * (1.0f + tanhf(GELU_K * (g + GELU_C * g * g * g))) * up[i];
    }
}

/* dgate += dout up gelu'(g);  dup += dout gelu(g). */
static void cpu_geglu_backward(const lg_ops *o, float *dgate, float *dup, const float *dout, const float *gate,
                               const float *up, long n) {
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (long i = 0; i < n; i++) {
        float g = gate[i], th = tanhf(GELU_K * (g + GELU_C * g * g * g));
        if (dgate) {
            float du = GELU_K * (1.0f + 3.0f * GELU_C * g * g);
            dgate[i] += dout[i] * up[i] * (0.5f * (1.0f + th) + 0.5f * g * (1.0f - th * th) * du);
        }
        if (dup) dup[i] += dout[i] * 0.5f * g * (1.0f + th);
    }
}

/* First key query t sees: t - window + 1 with a window, else 0. */
static inline int win_lo(int t, int window) { return window > 0 && t - window + 1 > 0 ? t - window + 1 : 0; }

/* Query rows per block of the _ex attention kernels, and the stack scratch of their backward. */
#define EXA_ROWS 64
#define EXA_DS_MAX 8192
static int exa_rows(int T) { return LG_MAX(1, LG_MIN(EXA_ROWS, EXA_DS_MAX / T)); }

/* Per (b, h), in row blocks [r0, r1) with keys [k0, r1), k0 = the first key of row r0's window:
 *   S = scale Q K^T -> soft cap -> softmax over each row's window (the rest of the row 0)
 *   -> O = P V.  Layouts as cpu_attention_forward. */
static void cpu_attention_ex_forward(const lg_ops *o, float *out, float *probs, const float *q, int ldq,
                                     const float *k, int ldk, const float *v, int ldv, int B, int T, int H,
                                     int KV, int hd, const lg_attn_params *p) {
    const int group = H / KV, ldo = H * hd, W = p->window, rows = exa_rows(T);
    const float scale = p->scale, cap = p->softcap;
#pragma omp parallel for schedule(dynamic, 1) if ((long)B * H * T * T * hd >= PAR_MIN && B * H > 1)
    for (int bh = 0; bh < B * H; bh++) {
        int b = bh / H, h = bh % H, kvh = h / group;
        const float *qb = q + (long)b * T * ldq + (long)h * hd;
        const float *kb = k + (long)b * T * ldk + (long)kvh * hd;
        const float *vb = v + (long)b * T * ldv + (long)kvh * hd;
        float *ob = out + (long)b * T * ldo + (long)h * hd;
        float *P = probs + (long)bh * T * T;
        for (int r0 = 0; r0 < T; r0 += rows) {
            const int r1 = LG_MIN(T, r0 + rows), m = r1 - r0, k0 = win_lo(r0, W), nk = r1 - k0;
            blas_sgemm(0, 1, m, nk, hd, scale, qb + (long)r0 * ldq, ldq, kb + (long)k0 * ldk, ldk, 0.0f,
                       P + (long)r0 * T + k0, T);
            for (int t = r0; t < r1; t++) {
                float *pr = P + (long)t * T;
                const int lo = win_lo(t, W);
                if (cap > 0)
                    for (int s = lo; s <= t; s++) pr[s] = cap * tanhf(pr[s] / cap);
                softmax_row(pr + lo, t - lo + 1);
                if (lo > 0) memset(pr, 0, (size_t)lo * sizeof(float));
                if (t + 1 < T) memset(pr + t + 1, 0, (size_t)(T - t - 1) * sizeof(float));
            }
            blas_sgemm(0, 0, m, hd, nk, 1.0f, P + (long)r0 * T + k0, T, vb + (long)k0 * ldv, ldv, 0.0f,
                       ob + (long)r0 * ldo, ldo);
        }
    }
}

/* Per (b, kv head), its query heads in order (no races on dK/dV), row blocks [r0, r1), keys [k0, r1):
 *   dV += P^T dO;  dS = P (dO V^T - rowsum);  soft cap: dS *= 1 - tanh^2(s / cap) with the raw
 *   scores s = scale Q K^T recomputed;  dQ += scale dS K;  dK += scale dS^T Q. */
static void cpu_attention_ex_backward(const lg_ops *o, float *dq, float *dk, float *dv, const float *dout,
                                      const float *q, int ldq, const float *k, int ldk, const float *v, int ldv,
                                      const float *probs, int B, int T, int H, int KV, int hd,
                                      const lg_attn_params *p) {
    if (!dq && !dk && !dv) return;
    const int group = H / KV, ldo = H * hd, W = p->window, rows = exa_rows(T), need_ds = dq || dk;
    const float scale = p->scale, cap = p->softcap;
#pragma omp parallel for schedule(dynamic, 1) if ((long)B * H * T * T * hd >= PAR_MIN && B * KV > 1)
    for (int bk = 0; bk < B * KV; bk++) {
        float dS[EXA_DS_MAX], Y[EXA_DS_MAX];
        int b = bk / KV, kvh = bk % KV;
        const float *kb = k + (long)b * T * ldk + (long)kvh * hd;
        const float *vb = v + (long)b * T * ldv + (long)kvh * hd;
        float *dkb = dk ? dk + (long)b * T * ldk + (long)kvh * hd : NULL;
        float *dvb = dv ? dv + (long)b * T * ldv + (long)kvh * hd : NULL;
        for (int h = kvh * group; h < (kvh + 1) * group; h++) {
            const float *qb = q + (long)b * T * ldq + (long)h * hd;
            const float *gob = dout + (long)b * T * ldo + (long)h * hd;
            const float *P = probs + ((long)b * H + h) * T * T;
            float *dqb = dq ? dq + (long)b * T * ldq + (long)h * hd : NULL;
            for (int r0 = 0; r0 < T; r0 += rows) {
                const int r1 = LG_MIN(T, r0 + rows), m = r1 - r0, k0 = win_lo(r0, W), nk = r1 - k0;
                const float *Pb = P + (long)r0 * T + k0; /* zero outside each row's window */
                if (dvb)
                    blas_sgemm(1, 0, nk, hd, m, 1.0f, Pb, T, gob + (long)r0 * ldo, ldo, 1.0f, dvb + (long)k0 * ldv,
                               ldv);
                if (!need_ds) continue;
                blas_sgemm(0, 1, m, nk, hd, 1.0f, gob + (long)r0 * ldo, ldo, vb + (long)k0 * ldv, ldv, 0.0f, dS, nk);
                if (cap > 0)
                    blas_sgemm(0, 1, m, nk, hd, scale, qb + (long)r0 * ldq, ldq, kb + (long)k0 * ldk, ldk, 0.0f, Y,
                               nk);
                for (int t = r0; t < r1; t++) {
                    float *ds = dS + (long)(t - r0) * nk;
                    const float *y = Y + (long)(t - r0) * nk;
                    const int lo = win_lo(t, W) - k0, hi = t - k0; /* the window in block columns */
                    softmax_bwd_row(ds + lo, P + (long)t * T + k0 + lo, hi - lo + 1);
                    if (cap > 0)
                        for (int s = lo; s <= hi; s++) {
                            float th = tanhf(y[s] / cap);
                            ds[s] *= 1.0f - th * th;
                        }
                    for (int s = 0; s < lo; s++) ds[s] = 0.0f;
                    for (int s = hi + 1; s < nk; s++) ds[s] = 0.0f;
                }
                if (dqb)
                    blas_sgemm(0, 0, m, hd, nk, scale, dS, nk, kb + (long)k0 * ldk, ldk, 1.0f, dqb + (long)r0 * ldq,
                               ldq);
                if (dkb)
                    blas_sgemm(1, 0, nk, hd, m, scale, dS, nk, qb + (long)r0 * ldq, ldq, 1.0f, dkb + (long)k0 * ldk,
                               ldk);
            }
        }
    }
}

/* As cpu_attention_decode (online softmax over the cached keys), the keys of query i limited to
 * its window, scores scaled by p->scale and soft-capped. */
static void cpu_attention_ex_decode(const lg_ops *o, float *out, const float *q, int ldq, const float *K,
                                    const float *V, int ldkv, int n, int pos0, int H, int KV, int hd,
                                    const lg_attn_params *p) {
    const int group = H / KV, qd = H * hd;
    const float scale = p->scale, cap = p->softcap;
    const long work = (long)n * H;
    const long flops = (long)H * n * (pos0 + n) * hd;
#pragma omp parallel for schedule(dynamic, 1) if (flops >= (1L << 22) && work > 1)
    for (long w = 0; w < work; w++) {
        const int i = (int)(w / H), h = (int)(w % H), kvh = h / group, nk = pos0 + i + 1;
        const float *qi = q + (long)i * ldq + (long)h * hd;
        float acc[DEC_MAX_HD], sc[DEC_BLK], mx = -INFINITY, sum = 0.0f;
        for (int d = 0; d < hd; d++) acc[d] = 0.0f;
        for (int j0 = win_lo(nk - 1, p->window); j0 < nk; j0 += DEC_BLK) {
            const int j1 = LG_MIN(nk, j0 + DEC_BLK);
            float bm = -INFINITY;
            for (int j = j0; j < j1; j++) {
                const float *kj = K + (long)j * ldkv + (long)kvh * hd;
                float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
                for (int d = 0; d < hd; d++) dot += qi[d] * kj[d];
                float s = scale * dot;
                if (cap > 0) s = cap * tanhf(s / cap);
                sc[j - j0] = s;
                bm = s > bm ? s : bm;
            }
            const float m2 = bm > mx ? bm : mx, corr = expf(mx - m2);
            sum *= corr;
            for (int d = 0; d < hd; d++) acc[d] *= corr;
            for (int j = j0; j < j1; j++) {
                const float pj = expf(sc[j - j0] - m2);
                const float *vj = V + (long)j * ldkv + (long)kvh * hd;
                sum += pj;
#pragma omp simd
                for (int d = 0; d < hd; d++) acc[d] += pj * vj[d];
            }
            mx = m2;
        }
        float *oi = out + (long)i * qd + (long)h * hd;
        const float inv = 1.0f / sum;
        for (int d = 0; d < hd; d++) oi[d] = acc[d] * inv;
    }
}

/* out (n) = cap tanh(in / cap). */
static void cpu_softcap_forward(const lg_ops *o, float *out, const float *in, long n, float cap) {
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (long i = 0; i < n; i++) out[i] = cap * tanhf(in[i] / cap);
}

/* One row of cross_entropy_softcap: caps in place (unless capped), returns w nll; with want_grad
 * the row becomes dscale w (softmax(y) - onehot) (1 - (y / cap)^2). */
static double ce_softcap_row(float *restrict l, int V, int tgt, float w, float cap, int capped, float dscale,
                             int want_grad) {
    if (!capped)
        for (int j = 0; j < V; j++) l[j] = cap * tanhf(l[j] / cap);
    float mx = l[0];
    for (int j = 1; j < V; j++) mx = l[j] > mx ? l[j] : mx;
    double sum = 0.0;
    for (int j0 = 0; j0 < V; j0 += 256) { /* float partial sums, added in double (as ce_row) */
        const int j1 = LG_MIN(V, j0 + 256);
        float part = 0.0f;
#pragma omp simd reduction(+ : part)
        for (int j = j0; j < j1; j++) part += exp_vec(l[j] - mx);
        sum += part;
    }
    const double lse = (double)mx + log(sum);
    const double nll = lse - (double)l[tgt];
    if (want_grad) {
        const float ws = dscale * w, lsef = (float)lse;
        for (int j = 0; j < V; j++) {
            const float y = l[j], t = y / cap;
            l[j] = ws * (exp_vec(y - lsef) - (j == tgt ? 1.0f : 0.0f)) * (1.0f - t * t);
        }
    }
    return (double)w * nll;
}

/* Blocks of rows summed in order, as cpu_cross_entropy: the same bits for any thread count. */
static double cpu_cross_entropy_softcap(const lg_ops *o, float *logits, const int *targets, const float *weight,
                                        int N, int V, float cap, int capped, float dscale, int want_grad) {
    enum { MAX_BLK = 4096 };
    double part[MAX_BLK];
    int per = LG_MAX(CE_ROWS, (N + MAX_BLK - 1) / MAX_BLK);
    int nblk = (N + per - 1) / per;
#pragma omp parallel for schedule(static) if ((long)N * V >= PAR_MIN && nblk > 1)
    for (int blk = 0; blk < nblk; blk++) {
        double acc = 0.0;
        for (int i = blk * per; i < LG_MIN(N, (blk + 1) * per); i++) {
            float *l = logits + (long)i * V;
            float w = weight ? weight[i] : 1.0f;
            if (w == 0.0f) {
                if (want_grad) memset(l, 0, (size_t)V * sizeof(float));
                else if (!capped)
                    for (int j = 0; j < V; j++) l[j] = cap * tanhf(l[j] / cap);
                continue;
            }
            acc += ce_softcap_row(l, V, targets[i], w, cap, capped, dscale, want_grad);
        }
        part[blk] = acc;
    }
    double total = 0.0;
    for (int blk = 0; blk < nblk; blk++) total += part[blk];
    return total;
}

/* ---- the backend ---------------------------------------------------------------------- */

static void *cpu_alloc(const lg_ops *o, size_t bytes) { return lg_aligned_alloc(bytes); }
static void cpu_free(const lg_ops *o, void *p) { lg_aligned_free(p); }

static const lg_ops g_cpu_vt = {
    .name = "cpu",
    .precision = LG_PREC_FP32,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .release_packed = cpu_release_packed,
    .gemm = cpu_gemm,
    .dgemm = cpu_dgemm,
    .linear_forward = cpu_linear_forward,
    .linear_backward = cpu_linear_backward,
    .orthonormalize = cpu_orthonormalize,
    .svd = cpu_svd,
    .lstsq = cpu_lstsq,
    .embedding_forward = cpu_embedding_forward,
    .embedding_backward = cpu_embedding_backward,
    .posemb_forward = cpu_posemb_forward,
    .posemb_backward = cpu_posemb_backward,
    .rmsnorm_forward = cpu_rmsnorm_forward,
    .rmsnorm_backward = cpu_rmsnorm_backward,
    .layernorm_forward = cpu_layernorm_forward,
    .layernorm_backward = cpu_layernorm_backward,
    .rope_forward = cpu_rope_forward,
    .rope_backward = cpu_rope_backward,
    .attention_forward = cpu_attention_forward,
    .attention_backward = cpu_attention_backward,
    .attention_decode = cpu_attention_decode,
    .swiglu_forward = cpu_swiglu_forward,
    .swiglu_backward = cpu_swiglu_backward,
    .gelu_forward = cpu_gelu_forward,
    .gelu_backward = cpu_gelu_backward,
    .cross_entropy = cpu_cross_entropy,
    .axpy = cpu_axpy,
    .geglu_forward = cpu_geglu_forward,
    .geglu_backward = cpu_geglu_backward,
    .attention_ex_forward = cpu_attention_ex_forward,
    .attention_ex_backward = cpu_attention_ex_backward,
    .attention_ex_decode = cpu_attention_ex_decode,
    .softcap_forward = cpu_softcap_forward,
    .cross_entropy_softcap = cpu_cross_entropy_softcap,
};

int lg_bf16_native(void) {
    static int known = -1;
    int v;
#pragma omp atomic read
    v = known;
    if (v >= 0) return v;
    v = 0;
    if (lg_dnnl_bf16_native()) { /* and oneDNN really has a bf16 matmul for it */
        lg_dnnl *d = lg_dnnl_create();
        v = d && lg_dnnl_impl_name(d, LG_MM_BF16, 64, 64, 64) != NULL;
        lg_dnnl_free(d);
    }
#pragma omp atomic write
    known = v;
    return v;
}

lg_precision lg_precision_resolve(lg_precision p) {
    if (p != LG_PREC_AUTO) return p;
    const char *e = getenv("LORAGA_PRECISION");
    lg_precision q;
    if (e && *e && lg_precision_parse(e, &q) == 0 && q != LG_PREC_AUTO) return q;
    return lg_bf16_native() ? LG_PREC_BF16 : LG_PREC_FP32;
}

const char *lg_precision_name(lg_precision p) {
    return p == LG_PREC_FP32 ? "fp32" : p == LG_PREC_BF16 ? "bf16" : "auto";
}

int lg_precision_parse(const char *s, lg_precision *out) {
    if (!strcmp(s, "fp32") || !strcmp(s, "float32")) *out = LG_PREC_FP32;
    else if (!strcmp(s, "bf16") || !strcmp(s, "bfloat16")) *out = LG_PREC_BF16;
    else if (!strcmp(s, "auto")) *out = LG_PREC_AUTO;
    else return lg_errorf("precision '%s': expected fp32, bf16 or auto", s);
    return 0;
}

static int env_choice(const char *name, const char *const *words, int n, int dflt) {
    const char *e = getenv(name);
    for (int i = 0; e && i < n; i++)
        if (!strcmp(e, words[i])) return i;
    return dflt;
}

int lg_ops_create(lg_precision p, lg_ops **out) {
    *out = NULL;
    lg_ops *o = lg_malloc(sizeof *o);
    *o = g_cpu_vt;
    o->precision = lg_precision_resolve(p);
    cpu_state *s = lg_calloc(1, sizeof *s);
    s->dnnl = lg_dnnl_create();
    static const char *const libs[] = {"auto", "openblas", "onednn"}, *const packs[] = {"auto", "1", "0"};
    s->gemm_lib = env_choice("LORAGA_GEMM", libs, 3, GEMM_AUTO);
    const int pk = env_choice("LORAGA_PACK", packs, 3, 0);
    s->pack = pk == 1 ? 1 : pk == 2 ? -1 : 0;
    s->wblk = lg_aligned_alloc((size_t)WBLOCK_FLOATS * sizeof(float));
    s->wblock_floats = WBLOCK_FLOATS;
    o->impl = s;
    o->bf16_native = o->precision == LG_PREC_BF16 && s->dnnl && lg_bf16_native();
    const char *impl = s->dnnl ? lg_dnnl_impl_name(s->dnnl, o->bf16_native ? LG_MM_BF16 : LG_MM_F32, 256, 256, 256)
                               : NULL;
    if (o->precision == LG_PREC_FP32)
        snprintf(s->desc, sizeof s->desc, "fp32 (%s)",
                 s->gemm_lib == GEMM_OPENBLAS || !impl ? "OpenBLAS" : "oneDNN, OpenBLAS for single rows");
    else if (o->bf16_native)
        snprintf(s->desc, sizeof s->desc, "bf16 (oneDNN %s; fp32 accumulation, norms, softmax, loss)", impl);
    else
        snprintf(s->desc, sizeof s->desc,
                 "bf16 emulated (this CPU has no bf16 units: inputs rounded to bf16, fp32 GEMMs; not faster)");
    *out = o;
    return 0;
}

void lg_ops_free(lg_ops *o) {
    if (!o) return;
    cpu_state *s = o->impl;
    if (s) {
        lg_dnnl_free(s->dnnl);
        for (int i = 0; i < 2; i++) {
            lg_aligned_free(s->h16[i]);
            lg_aligned_free(s->r32[i]);
        }
        lg_aligned_free(s->wblk);
        free(s);
    }
    free(o);
}

void lg_ops_cpu_set_wblock(lg_ops *o, long floats) {
    cpu_state *s = state(o);
    if (s) s->wblock_floats = LG_MAX(1, LG_MIN(floats, WBLOCK_FLOATS));
}

const char *lg_ops_describe(const lg_ops *o) {
    const cpu_state *s = state(o);
    return s ? s->desc : o->name;
}

void lg_set_threads(int n) {
    if (n <= 0) return;
    omp_set_num_threads(n);
    openblas_set_num_threads(n);
}

const lg_ops *lg_ops_cpu(void) {
    static lg_ops *shared; /* lives as long as the process */
#pragma omp critical(lg_ops_shared)
    if (!shared) lg_ops_create(LG_PREC_FP32, &shared);
    return shared;
}
