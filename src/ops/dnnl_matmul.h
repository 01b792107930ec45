/* dnnl_matmul.h — private to src/ops: oneDNN matmuls for the CPU backend.
 *
 * One primitive per distinct problem (shape, strides, data type, beta, weights layout), created
 * on first use and kept; the output scale (alpha) is a runtime argument so that a loss scale that
 * changes every step reuses the same primitive. Not thread-safe: the backend calls it only
 * outside OpenMP parallel regions (oneDNN threads the product itself). */
#ifndef LG_DNNL_MATMUL_H
#define LG_DNNL_MATMUL_H

#include <stddef.h>

typedef struct lg_dnnl lg_dnnl;

typedef enum { LG_MM_F32 = 0, LG_MM_BF16 = 1 } lg_mm_dt;

/* NULL when oneDNN has no CPU engine. */
lg_dnnl *lg_dnnl_create(void);
void lg_dnnl_free(lg_dnnl *d);

/* C (M x N, float32, row stride ldc) = alpha op(A) op(B) + beta C with A, B of type dt (row
 * strides lda, ldb; op = transpose when t* != 0). beta is 0 or any fixed value (it is part of the
 * primitive). 0 = done; -1 = oneDNN has no implementation for it here (nothing was written: the
 * caller computes it another way). */
int lg_dnnl_matmul(lg_dnnl *d, lg_mm_dt dt, int tA, int tB, int M, int N, int K, float alpha, const void *A, int lda,
                   const void *B, int ldb, float beta, float *C, int ldc);

/* Prepacked right operand B = W^T (K x N) for products with a dense left operand (M x K, row
 * stride K) of type dt: W is N x K row-major (a linear layer's weight, dt storage), reordered once
 * into the layout oneDNN's matmul prefers for m_hint rows. NULL when oneDNN has no implementation
 * or prefers the plain layout (nothing to gain). */
void *lg_dnnl_pack(lg_dnnl *d, lg_mm_dt dt, int K, int N, const void *W, int m_hint);
void lg_dnnl_packed_free(void *packed);
/* C (M x N) = alpha A B + beta C with B a packed operand (same dt and K, N as packed). -1: no
 * implementation for this M with that layout (nothing written). */
int lg_dnnl_matmul_packed(lg_dnnl *d, int M, float alpha, const void *A, int lda, const void *packed, float beta,
                          float *C, int ldc);

/* The implementation oneDNN picks for an M x N x K product of type dt with B = W^T, e.g.
 * "brg:avx512_core_amx_bf16", or NULL when there is none. */
const char *lg_dnnl_impl_name(lg_dnnl *d, lg_mm_dt dt, int M, int N, int K);

/* The effective ISA has bf16 matrix instructions (AVX512-BF16 or AMX). */
int lg_dnnl_bf16_native(void);

#endif
