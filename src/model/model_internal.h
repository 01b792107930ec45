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
} layer_acts;

struct lg_model {
    lg_config cfg;
    const lg_ops *ops;
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
    float *rope_cos, *rope_sin;
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
    int logits_hold_grad;           /* a training forward left dL/dlogits (unscaled) in logits */
    int logit_rows;                 /* rows of logits held: N, or a block (training, frozen head) */
    int64_t logit_block_floats;     /* the block's size in floats (tests lower it) */
    int dlogit_ready;               /* a blocked forward left the unscaled dL/dxnf in dlogit_x */
    /* bf16 storage of frozen weights (lg_model_store_frozen_bf16) */
    uint16_t *bf16_mem;
    float *wblock;                  /* float32 rows of one bf16 weight */
    int64_t wblock_floats;          /* rows converted at a time <= this / in (tests lower it) */
};

/* Base GEMMs of a weight in either storage (model.c; generate.c uses them too):
 * y (N x out) = x (N x in) W^T (+ b);   dx (N x in) = alpha dy (N x out) W + beta dx. */
void lg_w_forward(lg_model *m, float *y, const float *x, const lg_param *w, const float *b, int N, int in, int out);
void lg_w_backward_dx(lg_model *m, float *dx, const float *dy, const lg_param *w, int N, int in, int out, float alpha,
                      float beta);
void lg_w_embed(lg_model *m, float *out, const int *ids, const lg_param *table, int N, int C);

#endif
