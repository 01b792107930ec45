/* model_internal.h — the decoder's private state, shared by the files of src/model/ only
 * (model.c: training forward/backward; generate.c and friends: inference paths). */
#ifndef LG_MODEL_INTERNAL_H
#define LG_MODEL_INTERNAL_H

#include "model/model.h"

/* lg_model_plan's `training` value for activation recomputation (also declared in train.h). */
#ifndef LG_PLAN_RECOMPUTE
#define LG_PLAN_RECOMPUTE 2
#endif

/* What one layer keeps for backward (pointers into the activation arena). */
typedef struct {
    float *x;       /* (N, C) block input (residual stream) */
    float *xn1;     /* (N, C) */
    float *mean1, *rstd1; /* (N) */
    float *q, *k, *v; /* LLaMA: (N, qd), (N, kvd), (N, kvd) after RoPE; GPT-2: slices of qkv */
    float *qkv;     /* GPT-2: (N, 3C) */
    float *probs;   /* (B, H, T, T) */
    float *att;     /* (N, qd) */
    float *xmid;    /* (N, C) */
    float *xn2;     /* (N, C) */
    float *mean2, *rstd2;
    float *gate, *up; /* LLaMA: (N, F) each; GPT-2: up = pre-GELU (N, F) */
    float *h;       /* (N, F) */
    float *tmp;     /* (N, C) an output projection before the residual add (shared by layers) */
    float *qraw, *kraw;     /* qk_norm: (N, qd), (N, kvd) q, k before the per-head norm */
    float *rstd_q, *rstd_k; /* qk_norm: (N*H), (N*KV) */
    float *ao, *rstd_pa;    /* post_norms: (N, C) attention output before its norm, (N) */
    float *mo, *rstd_pf;    /* post_norms: (N, C) MLP output before its norm, (N); kept per layer
                             * under recomputation (the replay stops before the down projection) */
    float *fused;           /* fused_qkv / fused_gate_up: (N, max(qd + 2 kvd, 2F)) a fused GEMM's
                             * output before the split (shared by layers) */
} layer_acts;

/* Where a block's attention finds keys and values: the batch itself (NULL: training and
 * whole-sequence inference, B x T causal), or a cache of earlier positions (generate): the
 * layer's K and V rows (keys after RoPE), positions 0 .. pos0-1 already filled; the block writes
 * its n new rows at pos0 and attends over 0 .. pos0 + i. */
typedef struct {
    float *K, *V; /* (cap, KV*hd) */
    int pos0;
} lg_kv_view;

struct lg_model {
    lg_config cfg;
    lg_ops *ops; /* owned: created with the model */
    int nparams;
    lg_param *params;
    float *param_mem;
    float *grad_mem;
    int64_t numel;
    /* named views */
    lg_param *wte, *wpe, *normf_w, *normf_b, *lm_head; /* lm_head == wte when tied */
    lg_layer *layers;
    int nlin;
    lg_linear **linears;
    float *rope_cos, *rope_sin;     /* (rope_len, hd/2) global layers' RoPE */
    float *rope_cos_l, *rope_sin_l; /* (rope_len, hd/2) sliding layers' RoPE (Gemma 3), else NULL */
    int rope_len;                   /* positions the tables cover (lg_model_rope_reserve) */
    float *norm_w1;                 /* (max(C, hd)) Gemma: 1 + w of the norm being applied */
    /* activation plan; training: 0 inference, 1 keep every layer's activations for backward,
     * LG_PLAN_RECOMPUTE keep only each layer's input and recompute the layer in backward */
    int B, T, training;
    int64_t act_floats; /* floats the current plan uses (<= act_cap) */
    uint64_t *drop_snap; /* recompute: adapter dropout counters before each layer's forward (nlin) */
    float *act_mem;
    int64_t act_cap; /* floats in act_mem */
    layer_acts *acts;
    float *x_final, *xnf, *meanf, *rstdf, *logits;
    float *tmp;                     /* (N, C) */
    float *dres, *dxn;              /* (N, C) */
    float *datt, *dq, *dk, *dv, *dq2, *dk2; /* (N, max(qd, 3C)) */
    float *dgate, *dup, *dh;        /* (N, F) */
    float *dlogit_x;                /* (N, C) gradient at the final norm output */
    float *dfused;                  /* (N, max(qd + 2 kvd, 2F)) gradient at a fused projection's output */
    float *dpost;                   /* (N, C) gradient at a post-norm's input (post_norms) */
    int logits_hold_grad;           /* a training forward left dL/dlogits (unscaled) in logits */
    int logit_rows;                 /* rows of logits held: N, or a block (training, frozen head) */
    int64_t logit_block_floats;     /* the block's size in floats (tests lower it) */
    int dlogit_ready;               /* a blocked forward left the unscaled dL/dxnf in dlogit_x */
    uint16_t *bf16_mem; /* bf16 storage of frozen weights (lg_model_store_frozen_bf16) */
};

/* A parameter as the kernels read it. pack: the backend may keep a prepacked copy (inference on
 * a frozen weight; lg_model_unpack drops them). */
static inline lg_weight lg_param_weight(lg_param *p, int pack) {
    return (lg_weight){p->data, p->bf16, pack && !p->grad ? &p->packed : NULL};
}

/* Block l of the decoder on a (rows of its input in a->x): training and whole-sequence inference
 * (kv NULL; B x T), or incremental over a key/value cache (kv; B = 1, T new positions). training:
 * adapters apply dropout. out (NULL: stop after the MLP's activation, for a replay in backward)
 * receives the block's output and may be a->x. Shared by model.c and generate.c. */
void lg_block_forward(lg_model *m, int l, layer_acts *a, int B, int T, const lg_kv_view *kv, int training,
                      float *out);
/* The final norm (N rows of x into xn) and the LM head, as the forward uses them. */
void lg_final_norm(lg_model *m, float *xn, float *mean, float *rstd, const float *x, int N);
/* The block input: token embeddings of ids (B x T at positions pos0..) into x (N, C), scaled
 * (Gemma) and with GPT-2's learned positions added. */
void lg_embed(lg_model *m, float *x, const int *ids, int B, int T, int pos0);
/* RoPE tables for positions up to npos (grown on demand, never shrunk). */
void lg_model_rope_reserve(lg_model *m, int npos);
/* Logits rows (N x V) from the final norm's output, soft-capped when the model says so
 * (inference: generate). */
void lg_model_head(lg_model *m, float *logits, const float *xn, int N);

#endif
