/* lora.h — the LoRA family on a model's linear layers: LoRA, rsLoRA, LoRA+, DoRA, PiSSA, AdaLoRA,
 * and the adapter that LoRA-GA initialises.
 *
 * For a target linear layer with weight W (m x n = out x in):
 *     y = x W^T + b + s · (dropout(x) A^T) B^T          A: r x n,  B: m x r
 * s = alpha / r (rsLoRA: alpha / sqrt(r)). DoRA rescales each output row:
 *     y = b + (mag / ||W + s B A||_row) ⊙ (x W^T + s · (dropout(x) A^T) B^T)
 * with the norm treated as a constant in backward (as PEFT and the DoRA paper, §4.3).
 * AdaLoRA: delta = s / ranknum · Q diag(E) P, with P = A (r x n), E (r), Q = B (m x r).
 *
 * Base weights stay frozen (no weight-gradient GEMM for them); only A, B (and mag, E) train.
 * All adapter parameters live in one arena; their gradients in another. */
#ifndef LG_LORA_H
#define LG_LORA_H

#include <stdint.h>

#include "adapters/adapter.h"
#include "model/model.h"
#include "train/train.h"

typedef enum {
    LG_INIT_KAIMING = 0, /* A kaiming-uniform(a = sqrt(5)), B = 0  (PEFT default) */
    LG_INIT_GAUSSIAN = 1, /* A ~ N(0, 1/r), B = 0                   (PEFT "gaussian") */
    LG_INIT_PISSA = 2,    /* A, B from the top-r SVD of W; W <- W - s B A */
    LG_INIT_ADALORA = 3,  /* A, B ~ N(0, 0.02), E = 0                (PEFT AdaLoRA) */
    LG_INIT_NONE = 4      /* leave A = B = 0 for the caller (LoRA-GA, loading a saved adapter) */
} lg_lora_init;

typedef struct {
    int r;
    float alpha;
    float dropout;         /* on the adapter's input, training only */
    int use_rslora;        /* s = alpha / sqrt(r) */
    int use_dora;
    const char *targets;   /* "q_proj,k_proj,..." (PEFT suffix match) or "all-linear" */
    lg_lora_init init;
    uint64_t seed;
    /* AdaLoRA (init = LG_INIT_ADALORA): r is init_r */
    int adalora;
    int target_r;           /* average rank to keep after tfinal (PEFT target_r) */
    long tinit, tfinal, total_steps, delta_t;
    float ada_beta1, ada_beta2, orth_reg;
} lg_lora_opts;

void lg_lora_opts_default(lg_lora_opts *o); /* r 8, alpha 16, dropout 0, targets q,k,v,o,gate,up,down */

/* One adapted linear layer. */
typedef struct lg_lora {
    lg_adapter hdr;        /* vtable; must come first */
    lg_linear *lin;
    int r, in, out;
    float scale;           /* s */
    float dropout;
    float *A, *B;          /* r x in, out x r */
    float *dA, *dB;
    float *mag, *dmag;     /* DoRA magnitude (out); NULL otherwise */
    float *E, *dE;         /* AdaLoRA singular values (r); NULL otherwise */
    unsigned char *rank_mask; /* AdaLoRA: 1 = rank kept (r) */
    float *A0, *B0;        /* the initial A, B when the export must be relative to the original W
                            * (PiSSA, LoRA-GA): saved adapter = [B, -B0] [A; A0], rank 2r */
    /* scratch, sized on first use (grow only) */
    float *H, *dH, *xd, *base_out, *dys, *wnorm;
    long cap_N;
    uint64_t drop_seed, drop_calls;
} lg_lora;

typedef struct lg_adapters lg_adapters;

/* Attach adapters to every linear layer of m that matches o->targets, initialised per o->init.
 * Error (naming the pattern) if a pattern matches nothing. PiSSA modifies W in place. */
int lg_adapters_attach(lg_model *m, const lg_lora_opts *o, lg_adapters **out);
/* Detach from the model and free. Does not undo PiSSA/LoRA-GA weight offsets. */
void lg_adapters_free(lg_adapters *a);

int lg_adapters_count(const lg_adapters *a);
lg_lora *lg_adapters_get(lg_adapters *a, int i);
const lg_lora_opts *lg_adapters_opts(const lg_adapters *a);
int64_t lg_adapters_numel(const lg_adapters *a); /* trainable parameters */
lg_model *lg_adapters_model(const lg_adapters *a); /* the model they are attached to */

/* The trainable tensors for the optimizer (A, B, mag, E of every adapter). LoRA+: B's learning
 * rate is loraplus_ratio x the base (1 = plain). Caller frees *t (not the data). */
int lg_adapters_opt_tensors(lg_adapters *a, float loraplus_ratio, lg_opt_tensor **t, int *n);
void lg_adapters_zero_grads(lg_adapters *a);

/* AdaLoRA: add the orthogonality regulariser's gradient (weight o->orth_reg), then update
 * importance scores and, per the budget schedule, mask ranks. Call after backward, before the
 * optimizer step. Returns the total number of kept ranks. */
int lg_adalora_step(lg_adapters *a, long step);

/* Save as a PEFT adapter directory: adapter_model.safetensors (+ adapter_config.json).
 * Adapters with A0/B0 are exported relative to the original weights (rank 2r, alpha x2,
 * rsLoRA alpha x sqrt 2). base_model: written as base_model_name_or_path. */
int lg_adapters_save_peft(lg_adapters *a, const char *dir, const char *base_model);
/* The adapter exactly as it is now (A, B at rank r, never relative to A0/B0): for --save-init,
 * the initialised adapter that PEFT's weight conversion starts from. */
int lg_adapters_save_peft_init(lg_adapters *a, const char *dir, const char *base_model);

#endif
