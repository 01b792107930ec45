/* ops_cpu.c — the CPU backend of lg_ops: OpenBLAS for every matrix product, OpenMP for the
 * rest. Shapes are in the comment above each kernel; see ops.h for the contract (forward
 * overwrites, backward accumulates, NULL gradient = skip). */
#include "ops/ops.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

/* Below this many scalar operations a parallel region costs more than it saves. */
#define PAR_MIN 32768L
/* Columns per task when a reduction over rows is split across threads by columns. */
#define COL_BLOCK 64
/* Query rows per attention block: scores are only computed for keys 0..r1 of a block,
 * so the causal mask wastes at most one block's worth of GEMM work. */
#define ATT_BLOCK 64

/* ---- GEMM / linear ------------------------------------------------------------ */

/* C (M x N) = alpha op(A) op(B) + beta C, row-major. */
static void cpu_gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A,
                     int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) { /* BLAS would read nothing from A/B; keep the beta semantics explicit */
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                float *c = C + (long)i * ldc + j;
                *c = beta == 0.0f ? 0.0f : beta * *c;
            }
        return;
    }
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans,
                transB ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* y (N x out) = x (N x in) W^T + b;  W (out x in), b (out) or NULL. */
static void cpu_linear_forward(float *y, const float *x, const float *W, const float *b, int N,
                               int in, int out) {
    cpu_gemm(0, 1, N, out, in, 1.0f, x, in, W, in, 0.0f, y, out);
    if (!b) return;
#pragma omp parallel for schedule(static) if ((long)N * out >= PAR_MIN)
    for (int i = 0; i < N; i++) {
        float *yi = y + (long)i * out;
        for (int o = 0; o < out; o++) yi[o] += b[o];
    }
}

/* dx (N x in) += dy (N x out) W (out x in);  dW (out x in) += dy^T x;  db (out) += colsum(dy). */
static void cpu_linear_backward(float *dx, float *dW, float *db, const float *dy, const float *x,
                                const float *W, int N, int in, int out) {
    if (dx) cpu_gemm(0, 0, N, in, out, 1.0f, dy, out, W, in, 1.0f, dx, in);
    if (dW) cpu_gemm(1, 0, out, in, N, 1.0f, dy, out, x, in, 1.0f, dW, in);
    if (!db) return;
    /* Threads own disjoint column blocks and walk all rows: no race, contiguous reads. */
    int nblk = (out + COL_BLOCK - 1) / COL_BLOCK;
#pragma omp parallel for schedule(static) if ((long)N * out >= PAR_MIN && nblk > 1)
    for (int blk = 0; blk < nblk; blk++) {
        int o0 = blk * COL_BLOCK, o1 = LG_MIN(out, o0 + COL_BLOCK);
        float acc[COL_BLOCK] = {0};
        for (int i = 0; i < N; i++) {
            const float *dyi = dy + (long)i * out;
            for (int o = o0; o < o1; o++) acc[o - o0] += dyi[o];
        }
        for (int o = o0; o < o1; o++) db[o] += acc[o - o0];
    }
}

/* ---- embeddings ------------------------------------------------------------------ */

/* out (N x C) = table[ids[i]] (table V x C). */
static void cpu_embedding_forward(float *out, const int *ids, const float *table, int N, int C) {
#pragma omp parallel for schedule(static) if ((long)N * C >= PAR_MIN)
    for (int i = 0; i < N; i++)
        memcpy(out + (long)i * C, table + (long)ids[i] * C, (size_t)C * sizeof(float));
}

/* dtable (V x C)[ids[i]] += dout (N x C)[i]. The same id may repeat, so threads split the
 * columns, never the rows. */
static void cpu_embedding_backward(float *dtable, const float *dout, const int *ids, int N, int C) {
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
static void cpu_posemb_forward(float *out, const float *wpe, int B, int T, int C, int pos0) {
#pragma omp parallel for schedule(static) if ((long)B * T * C >= PAR_MIN)
    for (int bt = 0; bt < B * T; bt++) {
        float *o = out + (long)bt * C;
        const float *p = wpe + (long)(pos0 + bt % T) * C;
        for (int c = 0; c < C; c++) o[c] += p[c];
    }
}

/* dwpe[pos0 + t] += sum_b dout[b, t]; each thread owns some positions t. */
static void cpu_posemb_backward(float *dwpe, const float *dout, int B, int T, int C, int pos0) {
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
static void cpu_rmsnorm_forward(float *out, float *rstd, const float *x, const float *w, int N,
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
static void cpu_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x,
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
static void cpu_layernorm_forward(float *out, float *mean, float *rstd, const float *x,
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
static void cpu_layernorm_backward(float *dx, float *dw, float *db, const float *dout,
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

/* Index of the second element of pair i: HALF pairs (i, i + hd/2), INTERLEAVED (2i, 2i+1). */
#define ROPE_IDX(style, i, half) ((style) == LG_ROPE_HALF ? (i) : 2 * (i))
#define ROPE_STEP(style, half) ((style) == LG_ROPE_HALF ? (half) : 1)

/* out, in: (B, T, H, hd) rows of stride ld; (a, b) -> (a cos - b sin, a sin + b cos).
 * Each pair is read before it is written, so out == in works. */
static void cpu_rope_forward(float *out, const float *in, int ld, int B, int T, int H, int hd,
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
static void cpu_rope_backward(float *din, const float *dout, int ld, int B, int T, int H, int hd,
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
static void cpu_attention_forward(float *out, float *probs, const float *q, int ldq,
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
            cpu_gemm(0, 1, m, r1, hd, scale, qb + (long)r0 * ldq, ldq, kb, ldk, 0.0f,
                     P + (long)r0 * T, T);
            for (int t = r0; t < r1; t++) {
                float *p = P + (long)t * T;
                softmax_row(p, t + 1);
                /* zeros above the diagonal only as far as a block GEMM reads them (here and in
                 * backward); the rest of the row is never read */
                int z1 = LG_MIN(T, LG_MAX(r1, (t / brows + 1) * brows));
                if (z1 > t + 1) memset(p + t + 1, 0, (size_t)(z1 - t - 1) * sizeof(float));
            }
            cpu_gemm(0, 0, m, hd, r1, 1.0f, P + (long)r0 * T, T, vb, ldv, 0.0f,
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
static void cpu_attention_backward(float *dq, float *dk, float *dv, const float *dout,
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
                if (dvb) cpu_gemm(1, 0, r1, hd, m, 1.0f, Pb, T, gob + (long)r0 * ldo, ldo, 1.0f, dvb, ldv);
                if (!need_ds) continue;
                cpu_gemm(0, 1, m, r1, hd, 1.0f, gob + (long)r0 * ldo, ldo, vb, ldv, 0.0f, dS, r1);
                for (int t = r0; t < r1; t++) {
                    float *ds = dS + (long)(t - r0) * r1;
                    softmax_bwd_row(ds, P + (long)t * T, t + 1);
                    for (int s2 = t + 1; s2 < r1; s2++) ds[s2] = 0.0f;
                }
                if (dqb) cpu_gemm(0, 0, m, hd, r1, scale, dS, r1, kb, ldk, 1.0f, dqb + (long)r0 * ldq, ldq);
                if (dkb) cpu_gemm(1, 0, r1, hd, m, scale, dS, r1, qb + (long)r0 * ldq, ldq, 1.0f, dkb, ldk);
            }
        }
    }
}

/* ---- MLP activations ---------------------------------------------------------------- */

/* out (n) = silu(gate) * up, silu(g) = g sigmoid(g). */
static void cpu_swiglu_forward(float *out, const float *gate, const float *up, long n) {
#pragma omp parallel for simd schedule(static) if (n >= PAR_MIN)
    for (long i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + exp_vec(-g)) * up[i];
    }
}

/* dgate += dout up sig (1 + g (1 - sig));  dup += dout silu(g). */
static void cpu_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate,
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
static void cpu_gelu_forward(float *out, const float *in, long n) {
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (long i = 0; i < n; i++) {
        float x = in[i];
        out[i] = 0.5f * x * (1.0f + tanhf(GELU_K * (x + GELU_C * x * x * x)));
    }
}

static void cpu_gelu_backward(float *din, const float *dout, const float *in, long n) {
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

static double cpu_cross_entropy(float *logits, const int *targets, const float *weight, int N,
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
static void cpu_axpy(long n, float a, const float *x, float *y) {
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (long i = 0; i < n; i++) y[i] += a * x[i];
}

static const lg_ops g_cpu_ops = {
    .name = "cpu",
    .gemm = cpu_gemm,
    .linear_forward = cpu_linear_forward,
    .linear_backward = cpu_linear_backward,
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
    .swiglu_forward = cpu_swiglu_forward,
    .swiglu_backward = cpu_swiglu_backward,
    .gelu_forward = cpu_gelu_forward,
    .gelu_backward = cpu_gelu_backward,
    .cross_entropy = cpu_cross_entropy,
    .axpy = cpu_axpy,
};

const lg_ops *lg_ops_cpu(void) { return &g_cpu_ops; }
