/* ops.h — the compute interface of the engine.
 *
 * Every kernel the engine runs — GEMMs, the linear layers' products in their precision, norms,
 * RoPE, attention (training and KV-cache decoding), activations, loss, and the dense linear
 * algebra of LoRA-GA/PiSSA (QR, SVD, least squares) — is a function of one backend object
 * (lg_ops), created with a model and passed as the first argument, so that a backend or a
 * precision is added in one place. Buffers that kernels read or write are allocated through it.
 * No file outside src/ops/ calls BLAS, LAPACK or oneDNN.
 *
 * Layout is row-major throughout; activations are (B, T, C) = N rows of C floats, N = B*T.
 * Linear weights are (out, in) like PyTorch.
 *
 * Conventions
 *  - forward kernels overwrite their output;
 *  - backward kernels ACCUMULATE (+=) into every gradient output; a NULL gradient pointer
 *    means "not needed" and that work is skipped (frozen weights get no dW GEMM);
 *  - out may alias in where a comment says so;
 *  - precision: `gemm` and everything but the linear layers compute in float32. The linear
 *    layers (linear_forward/linear_backward) compute in o->precision: FP32, or BF16 = both GEMM
 *    inputs rounded to bfloat16, products accumulated in float32 (PyTorch's autocast). On a CPU
 *    without native bf16 (no AVX512-BF16/AMX) BF16 is emulated with the same rounding and float32
 *    GEMMs: the same numbers up to summation order, not faster. */
#ifndef LG_OPS_H
#define LG_OPS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    LG_ROPE_HALF = 0,       /* Hugging Face rotate-half: pairs (i, i + hd/2) */
    LG_ROPE_INTERLEAVED = 1 /* llama2.c / Meta original: pairs (2i, 2i+1) */
} lg_rope_style;

typedef enum {
    LG_PREC_AUTO = 0, /* bf16 where the CPU computes it natively, else fp32 (lg_precision_resolve) */
    LG_PREC_FP32 = 1,
    LG_PREC_BF16 = 2
} lg_precision;

/* A weight matrix (rows x cols) as the linear layers read it: float32 or bfloat16 storage
 * (exactly one set), and a slot where the backend may keep its own prepacked copy for the
 * forward product (NULL: keep none; the owner frees it with o->release_packed). */
typedef struct {
    const float *f32;
    const uint16_t *bf16;
    void **packed;
} lg_weight;

static inline lg_weight lg_weight_f32(const float *w) { return (lg_weight){w, NULL, NULL}; }

/* Options of the attention_ex kernels. */
typedef struct lg_attn_params {
    float scale;   /* scores = scale q.k: 1/sqrt(hd) by default; Gemma: query_pre_attn_scalar^-1/2 */
    float softcap; /* > 0: scores -> softcap tanh(scores / softcap) before the mask (Gemma 2); 0: none */
    int window;    /* > 0: query t attends to keys t-window+1 .. t (sliding window); 0: all of 0 .. t */
} lg_attn_params;

static inline lg_attn_params lg_attn_default(int hd) {
    return (lg_attn_params){1.0f / sqrtf((float)hd), 0.0f, 0};
}

typedef struct lg_ops lg_ops;
struct lg_ops {
    const char *name;       /* "cpu" */
    lg_precision precision; /* of the linear layers: LG_PREC_FP32 or LG_PREC_BF16 (never AUTO) */
    int bf16_native;        /* BF16 runs on the CPU's bf16 units (else: emulated) */
    void *impl;             /* the backend's state: primitive cache, conversion scratch */

    /* ---- buffers ---------------------------------------------------------------------- */
    /* 64-byte aligned, zeroed; out of memory is fatal (as lg_aligned_alloc). */
    void *(*alloc)(const lg_ops *o, size_t bytes);
    void (*free)(const lg_ops *o, void *p);
    void (*release_packed)(const lg_ops *o, void *packed); /* a weight's prepacked copy */

    /* ---- products ----------------------------------------------------------------------- */
    /* C (M x N) = alpha * op(A) * op(B) + beta * C in float32, op = transpose if trans* != 0.
     * lda/ldb/ldc are row strides of the stored matrices. Safe inside parallel regions. */
    void (*gemm)(const lg_ops *o, int transA, int transB, int M, int N, int K, float alpha, const float *A,
                 int lda, const float *B, int ldb, float beta, float *C, int ldc);
    /* The same in double (the factorisations of LoRA-GA and PiSSA). */
    void (*dgemm)(const lg_ops *o, int transA, int transB, int M, int N, int K, double alpha, const double *A,
                  int lda, const double *B, int ldb, double beta, double *C, int ldc);

    /* y (N x out) = x (N x in) W^T (+ b), in o->precision;  W (out x in), b (out) or NULL. */
    void (*linear_forward)(const lg_ops *o, float *y, const float *x, lg_weight W, const float *b, int N, int in,
                           int out);
    /* dx += scale dy W;  dW += scale dy^T x;  db += scale colsum(dy), in o->precision (db in fp32).
     * Any of dx, dW, db may be NULL; W is read only for dx. */
    void (*linear_backward)(const lg_ops *o, float *dx, float *dW, float *db, const float *dy, const float *x,
                            lg_weight W, int N, int in, int out, float scale);

    /* ---- dense linear algebra (double, in place; 0 = ok, else the LAPACK info) --------------- */
    /* X (rows x cols, rows >= cols) <- an orthonormal basis of its columns (Householder QR). */
    int (*orthonormalize)(const lg_ops *o, int rows, int cols, double *X);
    /* Thin SVD X = U diag(S) Vt, k = min(rows, cols): U (rows x k), S (k), Vt (k x cols); X destroyed. */
    int (*svd)(const lg_ops *o, int rows, int cols, double *X, double *S, double *U, double *Vt);
    /* Least squares min ||A Z - B|| for A (rows x cols, rows >= cols, full rank), B (rows x nrhs):
     * the solution overwrites B's first cols rows; A destroyed. */
    int (*lstsq)(const lg_ops *o, int rows, int cols, int nrhs, double *A, double *B);

    /* ---- embeddings ----------------------------------------------------------------------- */
    /* out (N x C) = table[ids[i]];  dtable[ids[i]] += dout[i]. ids already range-checked. */
    void (*embedding_forward)(const lg_ops *o, float *out, const int *ids, lg_weight table, int N, int C);
    void (*embedding_backward)(const lg_ops *o, float *dtable, const float *dout, const int *ids, int N, int C);
    /* GPT-2 learned positions: out[b,t,:] += wpe[pos0 + t, :];  dwpe[pos0+t] += sum_b dout[b,t]. */
    void (*posemb_forward)(const lg_ops *o, float *out, const float *wpe, int B, int T, int C, int pos0);
    void (*posemb_backward)(const lg_ops *o, float *dwpe, const float *dout, int B, int T, int C, int pos0);

    /* ---- norms ---------------------------------------------------------------------------- */
    /* RMSNorm: out = x * rstd * w, rstd[i] = 1/sqrt(mean(x_i^2) + eps) saved for backward. */
    void (*rmsnorm_forward)(const lg_ops *o, float *out, float *rstd, const float *x, const float *w, int N, int C,
                            float eps);
    void (*rmsnorm_backward)(const lg_ops *o, float *dx, float *dw, const float *dout, const float *x,
                             const float *w, const float *rstd, int N, int C);
    /* LayerNorm: out = (x - mean) * rstd * w + b; mean, rstd (N) saved. */
    void (*layernorm_forward)(const lg_ops *o, float *out, float *mean, float *rstd, const float *x,
                              const float *w, const float *b, int N, int C, float eps);
    void (*layernorm_backward)(const lg_ops *o, float *dx, float *dw, float *db, const float *dout,
                               const float *x, const float *w, const float *mean, const float *rstd, int N, int C);

    /* ---- positions and attention ----------------------------------------------------------- */
    /* RoPE on x (B, T, H, hd) rows of stride ld floats (>= H*hd), position of token t = pos0 + t.
     * cos/sin tables are (max_pos, hd/2): angle(p, i) = p * theta^(-2i/hd).
     * Forward may run in place (out == in, same ld). Backward: din += R^T dout. */
    void (*rope_forward)(const lg_ops *o, float *out, const float *in, int ld, int B, int T, int H, int hd,
                         int pos0, const float *cos, const float *sin, lg_rope_style style);
    void (*rope_backward)(const lg_ops *o, float *din, const float *dout, int ld, int B, int T, int H, int hd,
                          int pos0, const float *cos, const float *sin, lg_rope_style style);

    /* Causal self-attention with grouped-query heads (H query heads, KV kv-heads, H % KV == 0,
     * query head h reads kv head h / (H/KV)). q: rows of stride ldq, (B, T, H*hd);
     * k, v: rows of stride ldk / ldv, (B, T, KV*hd); out (B, T, H*hd) dense.
     * probs (B, H, T, T) keeps the softmax for backward (upper triangle written as 0).
     * Scale 1/sqrt(hd). */
    void (*attention_forward)(const lg_ops *o, float *out, float *probs, const float *q, int ldq, const float *k,
                              int ldk, const float *v, int ldv, int B, int T, int H, int KV, int hd);
    /* dq/dk/dv use the same strides as q/k/v. Accumulates. */
    void (*attention_backward)(const lg_ops *o, float *dq, float *dk, float *dv, const float *dout,
                               const float *q, int ldq, const float *k, int ldk, const float *v, int ldv,
                               const float *probs, int B, int T, int H, int KV, int hd);
    /* Decoding with a key/value cache: n queries at positions pos0 .. pos0+n-1 (q rows of stride
     * ldq), each attending to cached keys/values 0 .. its own position (K, V rows of stride ldkv,
     * at least pos0 + n rows). out (n, H*hd) dense. No probabilities are kept, no scratch used. */
    void (*attention_decode)(const lg_ops *o, float *out, const float *q, int ldq, const float *K,
                             const float *V, int ldkv, int n, int pos0, int H, int KV, int hd);

    /* ---- activations and loss -------------------------------------------------------------- */
    /* SwiGLU: out = silu(gate) * up, elementwise over n. */
    void (*swiglu_forward)(const lg_ops *o, float *out, const float *gate, const float *up, long n);
    void (*swiglu_backward)(const lg_ops *o, float *dgate, float *dup, const float *dout, const float *gate,
                            const float *up, long n);
    /* GELU, tanh approximation (GPT-2's "gelu_new"). out may alias in. */
    void (*gelu_forward)(const lg_ops *o, float *out, const float *in, long n);
    void (*gelu_backward)(const lg_ops *o, float *din, const float *dout, const float *in, long n);

    /* Cross-entropy over rows of logits (N x V) with per-row weights (0 = not a predicted token).
     * Returns sum_i weight[i] * nll_i in double (nll = logsumexp - logit[target]).
     * If want_grad, overwrites logits with d(dscale * sum_i w_i nll_i)/dlogits
     * = dscale * w_i * (softmax_i - onehot(target_i)); rows with w == 0 become 0.
     * targets of rows with weight 0 are not read. */
    double (*cross_entropy)(const lg_ops *o, float *logits, const int *targets, const float *weight, int N, int V,
                            float dscale, int want_grad);

    /* y += a * x over n elements. */
    void (*axpy)(const lg_ops *o, long n, float a, const float *x, float *y);

    /* ---- architecture features beyond LLaMA / GPT-2 (Gemma 2/3, Mistral, Phi-3 windows) ------ */
    /* GeGLU: out = gelu_tanh(gate) * up, elementwise over n (Gemma's gelu_pytorch_tanh). */
    void (*geglu_forward)(const lg_ops *o, float *out, const float *gate, const float *up, long n);
    void (*geglu_backward)(const lg_ops *o, float *dgate, float *dup, const float *dout, const float *gate,
                           const float *up, long n);

    /* Attention as attention_forward/backward/decode (same layouts and strides), with the score
     * scale, a soft cap on the scores and a sliding window taken from p (lg_attn_params). With
     * p = lg_attn_default(hd) the results equal the plain kernels'. probs (B, H, T, T) holds zeros
     * outside each row's window. */
    void (*attention_ex_forward)(const lg_ops *o, float *out, float *probs, const float *q, int ldq, const float *k,
                                 int ldk, const float *v, int ldv, int B, int T, int H, int KV, int hd,
                                 const lg_attn_params *p);
    void (*attention_ex_backward)(const lg_ops *o, float *dq, float *dk, float *dv, const float *dout,
                                  const float *q, int ldq, const float *k, int ldk, const float *v, int ldv,
                                  const float *probs, int B, int T, int H, int KV, int hd,
                                  const lg_attn_params *p);
    void (*attention_ex_decode)(const lg_ops *o, float *out, const float *q, int ldq, const float *K,
                                const float *V, int ldkv, int n, int pos0, int H, int KV, int hd,
                                const lg_attn_params *p);

    /* Soft cap: out = cap * tanh(in / cap) over n (cap > 0). out may alias in. Inference logits
     * of Gemma 2; the training gradient through it is cross_entropy_softcap's. */
    void (*softcap_forward)(const lg_ops *o, float *out, const float *in, long n, float cap);
    /* cross_entropy on the soft-capped logits y = cap tanh(x / cap) of raw logits x (rows N x V):
     * returns sum_i weight[i] * nll_i(y). Without want_grad the logits are left holding y (what
     * transformers returns as logits); with want_grad they become d(dscale sum w nll)/dx, the
     * gradient with respect to the raw logits. capped != 0: the logits already hold y (a soft
     * cap applied earlier), the gradient is still the raw logits'. */
    double (*cross_entropy_softcap)(const lg_ops *o, float *logits, const int *targets, const float *weight, int N,
                                    int V, float cap, int capped, float dscale, int want_grad);
};


/* The CPU backend (OpenBLAS, oneDNN, LAPACK, OpenMP) computing the linear layers in precision p
 * (AUTO resolved by lg_precision_resolve). 0 = ok; -1 with a message (bf16 impossible here). */
int lg_ops_create(lg_precision p, lg_ops **out);
void lg_ops_free(lg_ops *o);
/* A shared float32 instance, for code that runs without a model (tests, tools). */
const lg_ops *lg_ops_cpu(void);

/* Whether this CPU multiplies bf16 natively (oneDNN reports AVX512-BF16 or AMX; ONEDNN_MAX_CPU_ISA
 * lowers it). */
int lg_bf16_native(void);
/* AUTO -> $LORAGA_PRECISION when set (fp32|bf16), else bf16 where native, else fp32. */
lg_precision lg_precision_resolve(lg_precision p);
const char *lg_precision_name(lg_precision p); /* "fp32", "bf16", "auto" */
/* "fp32"/"float32", "bf16"/"bfloat16", "auto" -> 0; anything else -1 with a message. */
int lg_precision_parse(const char *s, lg_precision *out);
/* One line describing what runs the linear layers, e.g. "bf16 (oneDNN brg:avx512_core_amx_bf16)". */
const char *lg_ops_describe(const lg_ops *o);

/* Threads of this process's kernels (OpenMP, and OpenBLAS/oneDNN with it). */
void lg_set_threads(int n);

/* Build RoPE tables (max_pos x hd/2) for base theta; caller frees with free(). */
void lg_rope_tables(int max_pos, int hd, float theta, float **cos, float **sin);
/* The same from explicit inverse frequencies (half = hd/2 of them: angle(p, i) = p * inv_freq[i]),
 * every entry multiplied by mscale (RoPE scalings that also scale attention: LongRoPE). */
void lg_rope_tables_freq(int max_pos, int half, const double *inv_freq, double mscale, float **cos, float **sin);

/* bfloat16 rounding of float32 (to nearest even), n values: into bf16 storage, or in place as
 * float32 with the low 16 bits cleared (the value a bf16 GEMM input has). */
void lg_round_bf16(uint16_t *dst, const float *src, long n);
void lg_round_bf16_f32(float *dst, const float *src, long n);

#endif
