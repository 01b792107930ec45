/* config.h — the decoder's hyper-parameters, read from / written to Hugging Face config.json. */
#ifndef LG_CONFIG_H
#define LG_CONFIG_H

#include "ops/ops.h"

typedef enum { LG_ARCH_LLAMA = 0, LG_ARCH_GPT2 = 1 } lg_arch;

typedef struct {
    lg_arch arch;
    char model_type[32];   /* "llama", "mistral", "qwen2", "gpt2" ... (written back as is) */
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
    int sliding_window;    /* 0 = none; sequences longer than this are refused (not implemented) */
    int bos_id, eos_id;    /* -1 when unknown */
    char torch_dtype[16];  /* "float32", "bfloat16", "float16": dtype to write back */
} lg_config;

/* Parse config.json (path of the file, or a directory holding it). Unsupported
 * architectures or features (rope_scaling, sliding windows that matter, MoE) are refused
 * with a message naming the field. */
int lg_config_load(const char *path, lg_config *c);
/* Check internal consistency (dims divisible, positive sizes, products bounded in 64-bit
 * arithmetic...); message names the field. */
int lg_config_validate(const lg_config *c);
/* The number of parameters (floats) the config's tensors hold, in 64-bit arithmetic; a loader
 * compares it with what the weight files hold before anything is allocated. */
int64_t lg_config_n_params(const lg_config *c);
/* Write config.json into dir (atomically). */
int lg_config_save(const lg_config *c, const char *dir);

#endif
