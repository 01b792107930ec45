/* model.h — one decoder for the LLaMA family (Llama, Mistral, Qwen2/3, Gemma 2/3, Phi-3) and GPT-2,
 * forward and backward on the CPU.
 *
 * All parameters live in one float32 arena with named views (llm.c style). Each parameter
 * has a gradient buffer only if it is trainable: a frozen weight is never differentiated,
 * so LoRA pays no weight-gradient GEMM for it and LoRA-GA estimation can switch dW on for
 * exactly the target weights. Activations are planned once for (B, T) and reused every step. */
#ifndef LG_MODEL_H
#define LG_MODEL_H

#include <stdint.h>

#include "data/batch.h"
#include "model/config.h"
#include "ops/ops.h"

typedef struct {
    char name[112]; /* Hugging Face tensor name, e.g. model.layers.0.self_attn.q_proj.weight */
    int ndim;
    int64_t shape[2];  /* as the model uses it: linear weights (out, in) */
    int64_t numel;
    float *data;       /* NULL when stored as bf16 (below) */
    float *grad;       /* NULL: frozen */
    uint16_t *bf16;    /* non-NULL: a frozen weight stored as bfloat16 (lg_model_store_frozen_bf16) */
    void *packed;      /* the backend's prepacked copy for inference (NULL: none yet; lg_model_unpack) */
    int conv1d;        /* GPT-2 Conv1D: stored (in, out) in files, transposed on load/save */
} lg_param;

struct lg_adapter;

/* A linear layer y = x W^T (+ b), the one place where adapters and weight gradients differ. */
typedef struct lg_linear {
    char name[96]; /* module path, e.g. model.layers.3.self_attn.q_proj (PEFT target name) */
    int in, out;
    lg_param *w, *b; /* b NULL when the layer has no bias */
    struct lg_adapter *adapter; /* LoRA family; NULL when none */
    /* Optional observer of the backward pass: called with the gradient at the base GEMM's
     * output (dy, N x out) and its input (x, N x in). LoRA-GA accumulates its estimate of
     * dL/dW = dy^T x (or sketches of it) here, so the model itself allocates no dW. */
    void (*grad_hook)(struct lg_linear *l, const float *dy, const float *x, int N, void *ud);
    void *grad_hook_ud;
} lg_linear;

typedef struct {
    lg_param *norm1_w, *norm1_b, *norm2_w, *norm2_b; /* *_b only for LayerNorm (GPT-2) */
    lg_linear q, k, v, o;     /* LLaMA attention; GPT-2 uses qkv (c_attn) and o (c_proj) */
    lg_linear qkv;            /* GPT-2 c_attn; Phi-3 qkv_proj (rows q | k | v) */
    lg_linear gate, up, down; /* LLaMA SwiGLU; GPT-2 uses up (c_fc) and down (c_proj) */
    lg_linear gate_up;        /* Phi-3 gate_up_proj (rows gate | up), in place of gate and up */
    lg_param *q_norm_w, *k_norm_w;    /* (head_dim) per-head q/k RMSNorm (Qwen3, Gemma 3); else NULL */
    lg_param *post_attn_w, *post_ffn_w; /* (C) Gemma 2/3 norms of the attention / MLP outputs; else NULL */
} lg_layer;

typedef struct lg_model lg_model;

/* Where weights come from: a reader that copies tensor `name` as float32 with an exact shape. */
typedef struct {
    void *ctx;
    int (*read)(void *ctx, const char *name, float *dst, int ndim, const int64_t *shape);
    int (*has)(void *ctx, const char *name);
} lg_weight_src;

/* How a model computes; zero-initialised = the defaults. */
typedef struct lg_model_opts {
    lg_precision precision; /* of the linear layers (ops.h); AUTO resolves as lg_precision_resolve */
} lg_model_opts;

/* Load a model: a Hugging Face directory (config.json + safetensors), a GGUF file (.gguf,
 * dequantised to float32) or a llama2.c .bin. opts NULL: float32. */
int lg_model_load(const char *path, const lg_model_opts *opts, lg_model **out);
/* Build from a config and a weight source (used by the loaders); src NULL = random init
 * (normal std 0.02, norms 1) from seed, for tests. The compute backend is created here. */
int lg_model_create(const lg_config *c, const lg_weight_src *src, uint64_t seed, const lg_model_opts *opts,
                    lg_model **out);
void lg_model_free(lg_model *m);

/* The backend the model computes with (its precision included). */
const lg_ops *lg_model_ops(const lg_model *m);
/* Drop the backend's prepacked copies of the weights: call after changing a weight's values in
 * place (LoRA-GA/PiSSA offsets, merges). */
void lg_model_unpack(lg_model *m);

const lg_config *lg_model_config(const lg_model *m);
int lg_model_n_params(const lg_model *m);
lg_param *lg_model_param(lg_model *m, int i);
lg_param *lg_model_find_param(lg_model *m, const char *name);
int lg_model_n_linears(const lg_model *m);
lg_linear *lg_model_linear(lg_model *m, int i); /* every linear layer (not the lm_head) */
int64_t lg_model_numel(const lg_model *m);

/* Gradients: give every parameter selected by want() a gradient buffer (one block), the others
 * none. want NULL = all parameters (full fine-tuning). Replaces any earlier selection. */
int lg_model_set_trainable(lg_model *m, int (*want)(const lg_param *p, void *ud), void *ud);
void lg_model_zero_grads(lg_model *m);

/* Store every frozen matrix (linear weights, token embeddings, lm_head; not GPT-2's small
 * position table) as bfloat16, rounded to nearest even. The backend reads it as it is (bf16
 * precision) or expands a block of rows at a time into float32 (fp32 precision). Halves the memory
 * of a frozen base. Call once the base is final (after adapter initialisation, which may offset W)
 * and before anything keeps a pointer to a parameter's data: every parameter's data moves (the
 * float32 ones into a smaller arena). DoRA reads W through lg_param_read_f32, which handles both.
 * Returns the bytes saved (0 when nothing is frozen). */
int64_t lg_model_store_frozen_bf16(lg_model *m);
/* Copy a parameter as float32 (whatever its storage) into dst (numel floats). */
void lg_param_read_f32(const lg_param *p, float *dst);

/* Plan activation buffers for batches of B x T (T <= max_seq). training = keep what backward
 * needs. Called once; again only when the shape grows. */
int lg_model_plan(lg_model *m, int B, int T, int training);

/* Forward over a batch; returns the mean loss sum(w*nll)/sum(w) (NaN if sum(w) == 0) and the
 * weight sum in *wsum. Logits of the last forward stay available until backward. */
float lg_model_forward(lg_model *m, const lg_batch *b, double *wsum);
/* Backward of (loss_scale * sum(w*nll)): accumulates into the gradients of trainable params.
 * Call after lg_model_forward on the same batch; destroys the logits. */
void lg_model_backward(lg_model *m, const lg_batch *b, float loss_scale);
/* Logits (B*T x V) of the last forward with an inference plan (training = 0). A training
 * forward computes the loss gradient in place of the logits, to spare a second pass over them. */
const float *lg_model_logits(const lg_model *m);

/* Write a Hugging Face directory: model.safetensors (dtype: "float32"/"bfloat16"/"float16" or
 * NULL = the config's torch_dtype) + config.json. llama2.c-ordered q/k weights are permuted to
 * HF's rotate-half layout. Tokenizer files are the caller's business. Atomic per file. */
int lg_model_save_hf(lg_model *m, const char *dir, const char *dtype);

/* Readers of other formats (src/io). */
int lg_llama2c_open(const char *path, lg_config *c, lg_weight_src *src); /* src->ctx owned */
void lg_llama2c_close(lg_weight_src *src);

#endif
