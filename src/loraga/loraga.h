/* loraga.h — LoRA-GA: LoRA adapters initialised from the SVD of the full fine-tuning gradient
 * (Wang, Chen & Zhu, "LoRA-GA: Low-Rank Adaptation with Gradient Approximation", 2024).
 *
 * For every adapted linear layer (W: m x n = out x in):
 *   1. estimate G = mean over N batches of dL/dW on the base model (no adapters), in float32;
 *   2. take its top-2r singular triplets G ~ U S V^T;
 *   3. A0 = c·V[:, :r]^T, B0 = c·U[:, r:2r]   (direction ArB2r, scale "stable": c = m^(1/4)/sqrt(gamma));
 *   4. W <- W - s·B0·A0, so the model's outputs at step 0 are unchanged.
 * After one SGD step of size eta the effective weight then moves by -eta·s²·(B0B0^T G + G A0^T A0),
 * the best rank-2r step available to LoRA, i.e. LoRA's first step follows full fine-tuning.
 * The whole algorithm is in loraga.c. */
#ifndef LG_LORAGA_H
#define LG_LORAGA_H

#include <stddef.h>
#include <stdint.h>

#include "adapters/lora.h"
#include "model/model.h"
#include "train/train.h"

typedef enum {
    LG_GA_ALL = 0,    /* every G held at once: extra memory = the targets' size in fp32 */
    LG_GA_SERIAL = 1, /* groups of targets that fit mem_budget, one pass over the batches per group */
    LG_GA_SKETCH = 2  /* one pass keeping randomised sketches Y = G·Omega (m x k), Z = Psi·G ((4k+1) x n)
                       * (Tropp et al. 2017); Omega, Psi are random signs regenerated from the seed */
} lg_ga_mode;

typedef enum { LG_GA_ARB2R = 0, LG_GA_A2RBR = 1, LG_GA_ARBR = 2, LG_GA_RANDOM = 3 } lg_ga_direction;
typedef enum { LG_GA_STABLE = 0, LG_GA_UNIT = 1, LG_GA_GD = 2, LG_GA_WEIGHT_SVD = 3 } lg_ga_scale;
typedef enum {
    LG_GA_PAPER = 0, /* the paper's recipe and reference code (default) */
    LG_GA_PEFT = 1   /* PEFT's lora_ga_init: B0 scaled by the singular values, stable scale on B only */
} lg_ga_variant;

typedef struct {
    int batches;            /* N, default 64 */
    int batch_size;         /* sequences per estimation batch, default 2 */
    int seq_len;            /* tokens per sequence */
    lg_ga_mode mode;
    size_t mem_budget;      /* serial: bytes of gradient held at once */
    int sketch_k;           /* sketch width k (default 8r); the co-range sketch has 4k+1 rows */
    lg_ga_direction direction;
    lg_ga_scale scale;
    float gamma;            /* stable scale, default 16 */
    lg_ga_variant variant;
    const char *cache_path; /* NULL: no cache */
    uint64_t seed;          /* randomised SVD / sketches / "random" direction */
    const char *diag_path;  /* per-target diagnostics as JSON lines (NULL: none) */
    /* progress: phase "estimate" or "factorise", done of total */
    void (*progress)(const char *phase, long done, long total, void *ud);
    void *progress_ud;
} lg_ga_opts;

void lg_ga_opts_default(lg_ga_opts *o);
int lg_ga_parse_mode(const char *s, lg_ga_mode *m);
int lg_ga_parse_direction(const char *s, lg_ga_direction *d);
int lg_ga_parse_scale(const char *s, lg_ga_scale *sc);
int lg_ga_parse_variant(const char *s, lg_ga_variant *v);

typedef struct {
    double estimate_seconds, factorise_seconds;
    int passes;             /* passes over the N batches (serial: one per group) */
    int groups;
    size_t extra_bytes;     /* peak bytes held for gradients / sketches */
    int from_cache;
    double mean_loss;       /* mean estimation-batch loss */
    /* Diagnostics over the targets: captured = sum_{i<2r} sigma_i^2 / ||G||_F^2, the share of the
     * gradient the top 2r directions hold; align_err = ||G - (P_B G + G P_A)||_F / ||G||_F with
     * P_B, P_A the projections onto B0's columns and A0's rows, i.e. how far LoRA's first step is
     * from full fine-tuning's (sqrt(1 - captured) when the factorisation is exact). In sketch
     * mode G is never formed: ||G||_F^2 is estimated as ||Psi G||_F^2 / l and align_err as
     * sqrt(1 - captured) -- estimates, which can read better than the exact optimum (estimated = 1).
     * A target whose gradient is exactly zero (no example reached it) has no alignment: it is
     * counted in zero_gradient, warned about, written with "align_err": null and left out of the
     * means (all zero: the means are NaN). */
    double captured_mean, captured_min, align_err_mean, align_err_max;
    int estimated;
    int zero_gradient;
} lg_ga_report;

/* Run LoRA-GA on every adapter of `a` (attached with LG_INIT_NONE): estimate, factorise,
 * initialise A, B (also kept as A0, B0 for the export) and offset W. `next` is called with split
 * 2 (train split in file order) and batch indices 0..N-1. */
int lg_loraga_init(lg_model *m, lg_adapters *a, const lg_ga_opts *o, lg_batch_fn next, void *ud,
                   lg_ga_report *rep);

/* ---- building blocks, exposed for the tests ---------------------------------------------- */

/* Top-k singular triplets of G (m x n, row-major): G ~ U diag(S) V^T with U (m x k), V (n x k),
 * S descending. Randomised (q = min(4r... ) columns, niter power iterations, QR between them, as
 * torch.svd_lowrank) when q < min(m, n); exact (LAPACK gesdd) otherwise. Deterministic in seed. */
int lg_ga_svd(const lg_ops *ops, const float *G, int m, int n, int k, int q, int niter, uint64_t seed, float *U, float *S, float *V);

/* A0 (r x n) and B0 (m x r) from the top-2r triplets per direction, scale and variant.
 * W (m x n) is read only by the weight_svd scale. s is the adapter scaling. */
void lg_ga_init_factors(const lg_ops *ops, const float *U, const float *S, const float *V, int m, int n, int r, float s,
                        const float *W, const lg_ga_opts *o, float *A0, float *B0);

#endif
