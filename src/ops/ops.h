/* ops.h — the compute interface of the engine.
 *
 * Every kernel the decoder needs is a plain function over raw float pointers and shapes,
 * reached through one table (lg_ops) so that a CUDA backend can replace the CPU one
 * without touching the model code. Layout is row-major throughout; activations are
 * (B, T, C) = N rows of C floats, N = B*T. Linear weights are (out, in) like PyTorch.
 *
 * Conventions
 *  - forward kernels overwrite their output;
 *  - backward kernels ACCUMULATE (+=) into every gradient output; a NULL gradient pointer
 *    means "not needed" and that work is skipped (frozen weights get no dW GEMM);
 *  - out may alias in where a comment says so. */
#ifndef LG_OPS_H
#define LG_OPS_H

#include <stdint.h>

typedef enum {
    LG_ROPE_HALF = 0,       /* Hugging Face rotate-half: pairs (i, i + hd/2) */
    LG_ROPE_INTERLEAVED = 1 /* llama2.c / Meta original: pairs (2i, 2i+1) */
} lg_rope_style;

typedef struct lg_ops {
    const char *name;

    /* C (M x N) = alpha * op(A) * op(B) + beta * C, row-major, op = transpose if trans* != 0.
     * lda/ldb/ldc are row strides of the stored matrices. */
    void (*gemm)(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                 const float *B, int ldb, float beta, float *C, int ldc);

    /* y (N x out) = x (N x in) W^T (+ b);  W (out x in), b (out) or NULL. */
    void (*linear_forward)(float *y, const float *x, const float *W, const float *b, int N, int in,
                           int out);
    /* dx += dy W;  dW += dy^T x;  db += colsum(dy).  Any of dx, dW, db may be NULL. */
    void (*linear_backward)(float *dx, float *dW, float *db, const float *dy, const float *x,
                            const float *W, int N, int in, int out);

    /* out (N x C) = table[ids[i]];  dtable[ids[i]] += dout[i]. ids already range-checked. */
    void (*embedding_forward)(float *out, const int *ids, const float *table, int N, int C);
    void (*embedding_backward)(float *dtable, const float *dout, const int *ids, int N, int C);
    /* GPT-2 learned positions: out[b,t,:] += wpe[pos0 + t, :];  dwpe[pos0+t] += sum_b dout[b,t]. */
    void (*posemb_forward)(float *out, const float *wpe, int B, int T, int C, int pos0);
    void (*posemb_backward)(float *dwpe, const float *dout, int B, int T, int C, int pos0);

    /* RMSNorm: out = x * rstd * w, rstd[i] = 1/sqrt(mean(x_i^2) + eps) saved for backward. */
    void (*rmsnorm_forward)(float *out, float *rstd, const float *x, const float *w, int N, int C,
                            float eps);
    void (*rmsnorm_backward)(float *dx, float *dw, const float *dout, const float *x,
                             const float *w, const float *rstd, int N, int C);
    /* LayerNorm: out = (x - mean) * rstd * w + b; mean, rstd (N) saved. */
    void (*layernorm_forward)(float *out, float *mean, float *rstd, const float *x, const float *w,
                              const float *b, int N, int C, float eps);
    void (*layernorm_backward)(float *dx, float *dw, float *db, const float *dout, const float *x,
                               const float *w, const float *mean, const float *rstd, int N, int C);

    /* RoPE on x (B, T, H, hd) rows of stride ld floats (>= H*hd), position of token t = pos0 + t.
     * cos/sin tables are (max_pos, hd/2): angle(p, i) = p * theta^(-2i/hd).
     * Forward may run in place (out == in, same ld). Backward: din += R^T dout. */
    void (*rope_forward)(float *out, const float *in, int ld, int B, int T, int H, int hd, int pos0,
                         const float *cos, const float *sin, lg_rope_style style);
    void (*rope_backward)(float *din, const float *dout, int ld, int B, int T, int H, int hd,
                          int pos0, const float *cos, const float *sin, lg_rope_style style);

    /* Causal self-attention with grouped-query heads (H query heads, KV kv-heads, H % KV == 0,
     * query head h reads kv head h / (H/KV)). q: rows of stride ldq, (B, T, H*hd);
     * k, v: rows of stride ldk / ldv, (B, T, KV*hd); out (B, T, H*hd) dense.
     * probs (B, H, T, T) keeps the softmax for backward (upper triangle written as 0).
     * Scale 1/sqrt(hd). */
    void (*attention_forward)(float *out, float *probs, const float *q, int ldq, const float *k,
                              int ldk, const float *v, int ldv, int B, int T, int H, int KV, int hd);
    /* dq/dk/dv use the same strides as q/k/v. Accumulates. */
    void (*attention_backward)(float *dq, float *dk, float *dv, const float *dout, const float *q,
                               int ldq, const float *k, int ldk, const float *v, int ldv,
                               const float *probs, int B, int T, int H, int KV, int hd);

    /* SwiGLU: out = silu(gate) * up, elementwise over n. */
    void (*swiglu_forward)(float *out, const float *gate, const float *up, long n);
    void (*swiglu_backward)(float *dgate, float *dup, const float *dout, const float *gate,
                            const float *up, long n);
    /* GELU, tanh approximation (GPT-2's "gelu_new"). out may alias in. */
    void (*gelu_forward)(float *out, const float *in, long n);
    void (*gelu_backward)(float *din, const float *dout, const float *in, long n);

    /* Cross-entropy over rows of logits (N x V) with per-row weights (0 = not a predicted token).
     * Returns sum_i weight[i] * nll_i in double (nll = logsumexp - logit[target]).
     * If want_grad, overwrites logits with d(dscale * sum_i w_i nll_i)/dlogits
     * = dscale * w_i * (softmax_i - onehot(target_i)); rows with w == 0 become 0.
     * targets of rows with weight 0 are not read. */
    double (*cross_entropy)(float *logits, const int *targets, const float *weight, int N, int V,
                            float dscale, int want_grad);

    /* y += a * x over n elements. */
    void (*axpy)(long n, float a, const float *x, float *y);
} lg_ops;

/* The OpenBLAS + OpenMP backend. */
const lg_ops *lg_ops_cpu(void);

/* Build RoPE tables (max_pos x hd/2) for base theta; caller frees with free(). */
void lg_rope_tables(int max_pos, int hd, float theta, float **cos, float **sin);

#endif
