/* config.h — the decoder's hyper-parameters, read from / written to Hugging Face config.json. */
#ifndef LG_CONFIG_H
#define LG_CONFIG_H

#include "ops/ops.h"

typedef enum { LG_ARCH_LLAMA = 0, LG_ARCH_GPT2 = 1 } lg_arch;

#define LG_MAX_LAYERS 1000   /* lg_config_validate's bound on n_layers */
#define LG_ROPE_MAX_HALF 256 /* head_dim / 2 of the largest head with per-frequency RoPE factors */

/* How RoPE frequencies are derived from rope_theta (transformers' rope_type). */
typedef enum {
    LG_ROPE_DEFAULT = 0,  /* inv_freq_i = theta^(-2i/hd) */
    LG_ROPE_LINEAR = 1,   /* inv_freq / factor */
    LG_ROPE_LLAMA3 = 2,   /* Llama 3.1+: low frequencies / factor, smooth blend in between */
    LG_ROPE_LONGROPE = 3, /* Phi-3: inv_freq / short_factor_i (sequences up to original_max), cos/sin x attn */
    LG_ROPE_FACTORS = 4   /* GGUF rope_freqs / rope_factors_short: inv_freq / factors_i */
} lg_rope_type;

typedef struct {
    lg_rope_type type;
    float factor;                            /* linear, llama3, longrope (0: max_seq / original_max) */
    float low_freq_factor, high_freq_factor; /* llama3 */
    int original_max;                        /* llama3, longrope: original_max_position_embeddings */
    float attn_factor;                       /* longrope: cos/sin multiplier (0: derived from factor) */
    float short_factor[LG_ROPE_MAX_HALF];    /* longrope short_factor; FACTORS: the GGUF factors */
    float long_factor[LG_ROPE_MAX_HALF];     /* longrope long_factor (kept to write config.json back) */
    int n_factors;                           /* entries of short/long_factor (head_dim / 2) */
} lg_rope_scaling;

typedef enum { LG_MLP_SWIGLU = 0, LG_MLP_GEGLU = 1 } lg_mlp_act;

typedef struct {
    lg_arch arch;
    char model_type[32];   /* "llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "gpt2" */
    int vocab_size;
    int dim;               /* hidden_size / n_embd */
    int n_layers;
    int n_heads;
    int n_kv_heads;
    int head_dim;          /* dim / n_heads unless config says otherwise */
    int hidden_dim;        /* intermediate_size / n_inner (GPT-2 default 4*dim) */
    int max_seq;           /* max_position_embeddings / n_positions */
    float norm_eps;
    float rope_theta;
    lg_rope_style rope_style; /* HALF for HF files, INTERLEAVED for llama2.c checkpoints */
    int qkv_bias;          /* Qwen2 (q/k/v), GPT-2 (all projections) */
    int o_bias, mlp_bias;
    int tied_embeddings;
    int bos_id, eos_id;    /* -1 when unknown */
    int pad_id;            /* pad_token_id, -1 when none or unknown (written back: Phi-3's default is 32000) */
    char torch_dtype[16];  /* "float32", "bfloat16", "float16": dtype to write back */

    /* ---- switches of the one decoder beyond LLaMA; zero = LLaMA's behaviour ---------------- */
    lg_rope_scaling rope_scaling; /* of the global (full-attention) layers */
    float rope_theta_local; /* > 0: RoPE base of the sliding-window layers, unscaled (Gemma 3) */
    int sliding_window;     /* > 0: the window of the layers marked in swa_layers (query t sees
                             * keys t-window+1 .. t); 0 = none */
    unsigned char swa_layers[LG_MAX_LAYERS]; /* 1: layer l attends within sliding_window */
    int qk_norm;            /* Qwen3, Gemma 3: RMSNorm over each q/k head (weights (head_dim)) before RoPE */
    int fused_qkv;          /* Phi-3: one qkv_proj (rows q | k | v) instead of q/k/v_proj */
    int fused_gate_up;      /* Phi-3: one gate_up_proj (rows gate | up) */
    lg_mlp_act mlp_act;     /* SwiGLU (silu) or GeGLU (gelu_pytorch_tanh: Gemma) */
    int gemma_norms;        /* Gemma: RMSNorm weights are offsets, scale = 1 + w */
    int post_norms;         /* Gemma 2/3: RMSNorm on the attention and MLP outputs before the residual
                             * adds (post_attention_layernorm, post_feedforward_layernorm) */
    float embed_scale;      /* > 0: embeddings multiplied by it (Gemma: sqrt(hidden_size)); 0 = 1 */
    float attn_scale;       /* > 0: attention score scale (Gemma: query_pre_attn_scalar^-1/2); 0 = 1/sqrt(hd) */
    float attn_softcap;     /* > 0: attention scores soft-capped (Gemma 2) */
    float final_softcap;    /* > 0: logits soft-capped (Gemma 2/3 final_logit_softcapping) */
} lg_config;

/* Parse config.json (path of the file, or a directory holding it). Unsupported
 * architectures or features (an unknown rope_scaling type, MoE, partial rotary...) are refused
 * with a message naming the field. */
int lg_config_load(const char *path, lg_config *c);
/* The RoPE inverse frequencies (head_dim / 2 of them) and the cos/sin multiplier of the global
 * layers (local = 0) or of the sliding-window layers (local = 1; differs only with rope_theta_local). */
void lg_config_rope_freqs(const lg_config *c, int local, double *inv_freq, double *mscale);
/* loraga's default LoRA targets: every attention and MLP projection, in this architecture's module
 * names ("q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"; Phi-3 "qkv_proj,o_proj,
 * gate_up_proj,down_proj"; GPT-2 "c_attn,c_proj,c_fc"). */
const char *lg_config_default_targets(const lg_config *c);
/* PEFT's default target_modules for the model_type (peft.utils.constants'
 * TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING), or NULL with a message where PEFT has none
 * (phi3: PEFT asks for target_modules). */
const char *lg_config_peft_targets(const lg_config *c);
/* Whether layer l uses the local RoPE tables (Gemma 3's sliding layers with their own base). */
int lg_config_local_rope(const lg_config *c, int l);
/* Check internal consistency (dims divisible, positive sizes, products bounded in 64-bit
 * arithmetic...); message names the field. */
int lg_config_validate(const lg_config *c);
/* The number of parameters (floats) the config's tensors hold, in 64-bit arithmetic; a loader
 * compares it with what the weight files hold before anything is allocated. */
int64_t lg_config_n_params(const lg_config *c);
/* Write config.json into dir (atomically). */
int lg_config_save(const lg_config *c, const char *dir);

#endif
