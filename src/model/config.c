/* config.c — Hugging Face config.json <-> lg_config. */
#include "model/config.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "core/util.h"

static int get_int(const cJSON *j, const char *key, int def, int *out, const char *path) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    if (!v || cJSON_IsNull(v)) {
        if (def == INT32_MIN) return lg_errorf("%s: missing required field \"%s\"", path, key);
        *out = def;
        return 0;
    }
    if (cJSON_IsArray(v) && cJSON_GetArraySize(v) > 0) v = cJSON_GetArrayItem(v, 0); /* eos lists */
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || fabs(v->valuedouble) > 1e9)
        return lg_errorf("%s: field \"%s\" must be an integer", path, key);
    *out = (int)v->valuedouble;
    return 0;
}

static int get_float(const cJSON *j, const char *key, float def, float *out, const char *path) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    if (!v || cJSON_IsNull(v)) {
        if (isnan(def)) return lg_errorf("%s: missing required field \"%s\"", path, key);
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v)) return lg_errorf("%s: field \"%s\" must be a number", path, key);
    *out = (float)v->valuedouble;
    return 0;
}

static int get_bool(const cJSON *j, const char *key, int def) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
    return def;
}

static const char *get_str(const cJSON *j, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

int lg_config_validate(const lg_config *c) {
#define POS(f, n)                                                                             \
    if (c->f <= 0) return lg_errorf("config: %s must be positive (got %d)", n, c->f);
    POS(vocab_size, "vocab_size");
    POS(dim, "hidden_size");
    POS(n_layers, "num_hidden_layers");
    POS(n_heads, "num_attention_heads");
    POS(n_kv_heads, "num_key_value_heads");
    POS(head_dim, "head_dim");
    POS(hidden_dim, "intermediate_size");
    POS(max_seq, "max_position_embeddings");
#undef POS
    /* 64-bit products of what a file says, before any of them sizes an int or an allocation:
     * 1e9 heads or a head_dim of 1e9 must be an error here, not an overflow in the model */
    if (c->n_heads > 65536 || c->n_kv_heads > 65536 || c->head_dim > 65536 ||
        (int64_t)c->n_heads * c->head_dim > (1 << 20) || (int64_t)c->n_kv_heads * c->head_dim > (1 << 20))
        return lg_errorf("config: implausible attention sizes (%d heads, %d key/value heads, head_dim %d)", c->n_heads,
                         c->n_kv_heads, c->head_dim);
    if ((int64_t)c->max_seq * c->head_dim > ((int64_t)1 << 27)) /* the RoPE tables: 4 bytes x max_seq x head_dim */
        return lg_errorf("config: max_position_embeddings %d x head_dim %d is implausibly large", c->max_seq,
                         c->head_dim);
    if (c->n_heads % c->n_kv_heads)
        return lg_errorf("config: num_attention_heads (%d) is not a multiple of num_key_value_heads (%d)",
                         c->n_heads, c->n_kv_heads);
    if (c->head_dim % 2) return lg_errorf("config: head_dim (%d) must be even for RoPE", c->head_dim);
    if (c->arch == LG_ARCH_GPT2 && c->head_dim * c->n_heads != c->dim)
        return lg_errorf("config: n_embd (%d) is not divisible by n_head (%d)", c->dim, c->n_heads);
    if (!(c->norm_eps > 0) || !isfinite(c->norm_eps)) return lg_errorf("config: norm eps must be positive");
    if (c->arch == LG_ARCH_LLAMA && !(c->rope_theta > 0 && isfinite(c->rope_theta)))
        return lg_errorf("config: rope_theta must be a positive finite number");
    if (c->vocab_size > 10000000 || c->dim > 65536 || c->n_layers > LG_MAX_LAYERS || c->hidden_dim > 1 << 20 ||
        c->max_seq > 1 << 20)
        return lg_errorf("config: implausibly large sizes (vocab %d, dim %d, layers %d)", c->vocab_size,
                         c->dim, c->n_layers);
    if (c->sliding_window < 0) return lg_errorf("config: sliding_window must not be negative");
    if (c->rope_theta_local < 0 || !isfinite(c->rope_theta_local))
        return lg_errorf("config: the local RoPE base must be positive");
    if (c->attn_scale < 0 || c->attn_softcap < 0 || c->final_softcap < 0 || c->embed_scale < 0)
        return lg_errorf("config: attention scale, soft caps and embedding scale must be positive");
    const lg_rope_scaling *rs = &c->rope_scaling;
    if ((rs->type == LG_ROPE_LONGROPE || rs->type == LG_ROPE_FACTORS) && rs->n_factors != c->head_dim / 2)
        return lg_errorf("config: %d RoPE frequency factors for head_dim %d (expected %d)", rs->n_factors, c->head_dim,
                         c->head_dim / 2);
    if ((rs->type == LG_ROPE_LINEAR || rs->type == LG_ROPE_LLAMA3) && !(rs->factor >= 1.0f))
        return lg_errorf("config: rope scaling factor %g must be >= 1", rs->factor);
    if (c->arch == LG_ARCH_GPT2 && (c->qk_norm || c->fused_qkv || c->fused_gate_up || c->post_norms || c->gemma_norms ||
                                    c->mlp_act != LG_MLP_SWIGLU || c->sliding_window || rs->type != LG_ROPE_DEFAULT))
        return lg_errorf("config: GPT-2 takes none of the LLaMA-family switches");
    return 0;
}

void lg_config_rope_freqs(const lg_config *c, int local, double *inv, double *mscale) {
    const int half = c->head_dim / 2;
    const double theta = local && c->rope_theta_local > 0 ? c->rope_theta_local : c->rope_theta;
    for (int i = 0; i < half; i++) inv[i] = pow(theta, -2.0 * i / (double)c->head_dim);
    *mscale = 1.0;
    const lg_rope_scaling *rs = &c->rope_scaling;
    if (local && c->rope_theta_local > 0) return; /* Gemma 3's sliding layers: plain RoPE */
    switch (rs->type) {
    case LG_ROPE_DEFAULT:
        break;
    case LG_ROPE_LINEAR:
        for (int i = 0; i < half; i++) inv[i] /= rs->factor;
        break;
    case LG_ROPE_LLAMA3: { /* transformers' _compute_llama3_parameters */
        const double lo_wl = rs->original_max / (double)rs->low_freq_factor;
        const double hi_wl = rs->original_max / (double)rs->high_freq_factor;
        for (int i = 0; i < half; i++) {
            const double wl = 2.0 * M_PI / inv[i];
            if (wl > lo_wl) {
                inv[i] /= rs->factor;
            } else if (wl >= hi_wl) { /* medium: interpolate */
                const double sm = (rs->original_max / wl - rs->low_freq_factor) /
                                  (rs->high_freq_factor - rs->low_freq_factor);
                inv[i] = (1.0 - sm) * inv[i] / rs->factor + sm * inv[i];
            }
        }
        break;
    }
    case LG_ROPE_LONGROPE: { /* short factors: sequences up to original_max (lg_model_plan refuses longer) */
        for (int i = 0; i < half; i++) inv[i] /= rs->short_factor[i];
        double f = rs->factor > 0 ? rs->factor : (double)c->max_seq / rs->original_max;
        *mscale = rs->attn_factor > 0 ? rs->attn_factor
                  : f <= 1.0         ? 1.0
                                     : sqrt(1.0 + log(f) / log((double)rs->original_max));
        break;
    }
    case LG_ROPE_FACTORS:
        for (int i = 0; i < half; i++) inv[i] /= rs->short_factor[i];
        if (rs->attn_factor > 0) *mscale = rs->attn_factor;
        break;
    }
}

int lg_config_local_rope(const lg_config *c, int l) { return c->rope_theta_local > 0 && c->swa_layers[l]; }

const char *lg_config_default_targets(const lg_config *c) {
    if (c->arch == LG_ARCH_GPT2) return "c_attn,c_proj,c_fc";
    if (c->fused_qkv && c->fused_gate_up) return "qkv_proj,o_proj,gate_up_proj,down_proj";
    return "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj";
}

const char *lg_config_peft_targets(const lg_config *c) {
    static const char *const map[][2] = { /* PEFT 0.21 */
        {"llama", "q_proj,v_proj"},  {"mistral", "q_proj,v_proj"},     {"qwen2", "q_proj,v_proj"},
        {"qwen3", "q_proj,v_proj"},  {"gemma2", "q_proj,v_proj"},      {"gemma3_text", "q_proj,v_proj"},
        {"gpt2", "c_attn"},
    };
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (!strcmp(c->model_type, map[i][0])) return map[i][1];
    lg_errorf("PEFT has no default target modules for model_type \"%s\" (it asks for target_modules); name them "
              "with --targets, e.g. %s or all-linear", c->model_type, lg_config_default_targets(c));
    return NULL;
}


/* ---- the LLaMA family: llama, mistral, qwen2, qwen3, gemma2, gemma3_text, phi3 ------------------- */

static int llama_family(const char *mt) {
    static const char *const known[] = {"llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3"};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (!strcmp(mt, known[i])) return 1;
    return 0;
}

/* A float array of exactly n numbers into dst. */
static int get_factors(const cJSON *rp, const char *key, int n, float *dst, const char *path, const char *where) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(rp, key);
    if (!cJSON_IsArray(a)) return lg_errorf("%s: %s.%s must be a list of numbers", path, where, key);
    if (cJSON_GetArraySize(a) != n)
        return lg_errorf("%s: %s.%s has %d entries, expected head_dim / 2 = %d", path, where, key,
                         cJSON_GetArraySize(a), n);
    for (int i = 0; i < n; i++) {
        const cJSON *v = cJSON_GetArrayItem(a, i);
        if (!cJSON_IsNumber(v) || !(v->valuedouble > 0))
            return lg_errorf("%s: %s.%s[%d] must be a positive number", path, where, key, i);
        dst[i] = (float)v->valuedouble;
    }
    return 0;
}

/* One RoPE description (transformers >= 5 "rope_parameters" or a legacy "rope_scaling" object) into
 * c->rope_scaling (global) or, for a local one, only checked to be plain. theta_out receives its
 * rope_theta when present. where names the object in messages. */
static int parse_rope_obj(const cJSON *j, const cJSON *rp, const char *where, lg_config *c, int local,
                          float *theta_out, const char *path) {
    if (!cJSON_IsObject(rp)) return lg_errorf("%s: \"%s\" must be an object", path, where);
    const char *rt = get_str(rp, "rope_type");
    if (!rt) rt = get_str(rp, "type");
    if (!rt) return lg_errorf("%s: %s has no rope_type", path, where);
    if (theta_out && get_float(rp, "rope_theta", *theta_out, theta_out, path)) return -1;
    float prf = 1.0f;
    if (get_float(rp, "partial_rotary_factor", 1.0f, &prf, path)) return -1;
    if (prf != 1.0f)
        return lg_errorf("%s: %s.partial_rotary_factor %g is not supported (RoPE over the whole head only)", path, where,
                         prf);
    lg_rope_scaling *rs = &c->rope_scaling;
    if (!strcmp(rt, "default")) {
        if (!local) rs->type = LG_ROPE_DEFAULT;
        return 0;
    }
    if (local) return lg_errorf("%s: %s.rope_type \"%s\" is not supported for the sliding-window layers", path, where, rt);
    if (!strcmp(rt, "linear")) {
        rs->type = LG_ROPE_LINEAR;
        if (get_float(rp, "factor", NAN, &rs->factor, path)) return -1;
        if (!(rs->factor >= 1.0f)) return lg_errorf("%s: %s.factor %g must be >= 1", path, where, rs->factor);
        return 0;
    }
    if (!strcmp(rt, "llama3")) {
        rs->type = LG_ROPE_LLAMA3;
        if (get_float(rp, "factor", NAN, &rs->factor, path) ||
            get_float(rp, "low_freq_factor", NAN, &rs->low_freq_factor, path) ||
            get_float(rp, "high_freq_factor", NAN, &rs->high_freq_factor, path) ||
            get_int(rp, "original_max_position_embeddings", INT32_MIN, &rs->original_max, path))
            return -1;
        if (!(rs->factor >= 1.0f) || !(rs->low_freq_factor > 0) || !(rs->high_freq_factor > rs->low_freq_factor) ||
            rs->original_max <= 0)
            return lg_errorf("%s: %s: llama3 parameters out of range (factor %g, low_freq_factor %g, high_freq_factor "
                             "%g, original_max_position_embeddings %d)", path, where, rs->factor, rs->low_freq_factor,
                             rs->high_freq_factor, rs->original_max);
        return 0;
    }
    if (!strcmp(rt, "longrope") || !strcmp(rt, "su")) {
        rs->type = LG_ROPE_LONGROPE;
        const int half = c->head_dim / 2;
        if (half > LG_ROPE_MAX_HALF) return lg_errorf("%s: head_dim %d too large for longrope", path, c->head_dim);
        rs->n_factors = half;
        if (get_factors(rp, "short_factor", half, rs->short_factor, path, where) ||
            get_factors(rp, "long_factor", half, rs->long_factor, path, where))
            return -1;
        /* Phi-3 keeps original_max_position_embeddings at the top level */
        int top = 0;
        if (get_int(j, "original_max_position_embeddings", 0, &top, path) ||
            get_int(rp, "original_max_position_embeddings", top, &rs->original_max, path))
            return -1;
        if (rs->original_max <= 0)
            return lg_errorf("%s: %s: longrope needs original_max_position_embeddings", path, where);
        if (get_float(rp, "factor", 0.0f, &rs->factor, path) || get_float(rp, "attention_factor", 0.0f, &rs->attn_factor, path))
            return -1;
        return 0;
    }
    return lg_errorf("%s: %s.rope_type \"%s\" is not supported (default, linear, llama3, longrope)", path, where, rt);
}

/* A soft cap: absent -> the model type's default, null -> none (0). */
static int get_cap(const cJSON *j, const char *key, float def, float *out, const char *path) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    if (v && cJSON_IsNull(v)) {
        *out = 0.0f;
        return 0;
    }
    return get_float(j, key, def, out, path);
}

/* layer_types ["sliding_attention" | "full_attention", ...] into swa_layers; 1 if present. */
static int get_layer_types(const cJSON *j, lg_config *c, const char *path) {
    const cJSON *lt = cJSON_GetObjectItemCaseSensitive(j, "layer_types");
    if (!lt || cJSON_IsNull(lt)) return 0;
    if (!cJSON_IsArray(lt) || cJSON_GetArraySize(lt) != c->n_layers)
        return lg_errorf("%s: layer_types must list one type for each of the %d layers", path, c->n_layers);
    for (int l = 0; l < c->n_layers; l++) {
        const cJSON *v = cJSON_GetArrayItem(lt, l);
        const char *t = cJSON_IsString(v) ? v->valuestring : "";
        if (!strcmp(t, "sliding_attention")) c->swa_layers[l] = 1;
        else if (!strcmp(t, "full_attention")) c->swa_layers[l] = 0;
        else return lg_errorf("%s: layer_types[%d] \"%s\" is not supported (sliding_attention, full_attention)", path, l, t);
    }
    return 1;
}

static int parse_llama_family(const cJSON *j, const char *mt, const char *path, lg_config *c) {
    const int REQ = INT32_MIN;
    const int qwen2 = !strcmp(mt, "qwen2"), qwen3 = !strcmp(mt, "qwen3"), phi3 = !strcmp(mt, "phi3");
    const int gemma2 = !strcmp(mt, "gemma2"), gemma3 = !strcmp(mt, "gemma3_text"), gemma = gemma2 || gemma3;
    const int mistral = !strcmp(mt, "mistral");
    /* transformers' defaults where the file says nothing */
    const int def_max = gemma2 ? 8192 : gemma3 ? 131072 : qwen3 ? 32768 : phi3 ? 4096 : 2048;
    const float def_eps = phi3 ? 1e-5f : 1e-6f, def_theta = gemma3 ? 1e6f : 10000.0f;
    if (get_int(j, "vocab_size", REQ, &c->vocab_size, path) || get_int(j, "hidden_size", REQ, &c->dim, path) ||
        get_int(j, "num_hidden_layers", REQ, &c->n_layers, path) ||
        get_int(j, "num_attention_heads", REQ, &c->n_heads, path) ||
        get_int(j, "num_key_value_heads", c->n_heads, &c->n_kv_heads, path) ||
        get_int(j, "intermediate_size", REQ, &c->hidden_dim, path) ||
        get_int(j, "max_position_embeddings", def_max, &c->max_seq, path) ||
        get_float(j, "rms_norm_eps", def_eps, &c->norm_eps, path) ||
        get_float(j, "rope_theta", def_theta, &c->rope_theta, path) ||
        get_int(j, "bos_token_id", -1, &c->bos_id, path) || get_int(j, "eos_token_id", -1, &c->eos_id, path) ||
        get_int(j, "pad_token_id", -1, &c->pad_id, path))
        return -1;
    const int def_hd = gemma ? 256 : qwen3 ? 128 : c->n_heads > 0 ? c->dim / c->n_heads : 0;
    if (get_int(j, "head_dim", def_hd, &c->head_dim, path)) return -1;
    if (c->n_layers > LG_MAX_LAYERS || c->n_layers <= 0)
        return lg_errorf("%s: num_hidden_layers %d out of range (1..%d)", path, c->n_layers, LG_MAX_LAYERS);
    c->rope_style = LG_ROPE_HALF;
    const int ab = get_bool(j, "attention_bias", 0);
    c->qkv_bias = qwen2 ? 1 : ab;
    c->o_bias = qwen2 ? 0 : ab;
    c->mlp_bias = get_bool(j, "mlp_bias", 0);
    c->tied_embeddings = get_bool(j, "tie_word_embeddings", gemma);
    if (phi3 && (ab || c->mlp_bias)) return lg_errorf("%s: phi3 with biases is not supported", path);

    /* the MLP's activation */
    const char *act = get_str(j, gemma ? "hidden_activation" : "hidden_act");
    if (gemma && !act) act = get_str(j, "hidden_act");
    if (gemma) {
        if (act && strcmp(act, "gelu_pytorch_tanh") && strcmp(act, "gelu_new"))
            return lg_errorf("%s: hidden_activation \"%s\" not supported (gelu_pytorch_tanh)", path, act);
        c->mlp_act = LG_MLP_GEGLU;
    } else if (act && strcmp(act, "silu")) {
        return lg_errorf("%s: hidden_act \"%s\" not supported (silu only)", path, act);
    }

    /* architecture switches */
    c->qk_norm = qwen3 || gemma3;
    c->fused_qkv = c->fused_gate_up = phi3;
    if (gemma) {
        c->gemma_norms = c->post_norms = 1;
        c->embed_scale = (float)sqrt((double)c->dim); /* hidden_size**0.5, a float32 buffer */
        float qpas = 256.0f;
        if (get_float(j, "query_pre_attn_scalar", 256.0f, &qpas, path)) return -1;
        if (!(qpas > 0)) return lg_errorf("%s: query_pre_attn_scalar must be positive", path);
        c->attn_scale = (float)(1.0 / sqrt((double)qpas));
        /* Gemma 2 defaults to caps 50 / 30; Gemma 3 to none, and transformers does not apply an
         * attention cap to Gemma 3 even when one is given (nor do we) */
        if (get_cap(j, "final_logit_softcapping", gemma2 ? 30.0f : 0.0f, &c->final_softcap, path)) return -1;
        if (gemma2 && get_cap(j, "attn_logit_softcapping", 50.0f, &c->attn_softcap, path)) return -1;
        if (c->final_softcap < 0 || c->attn_softcap < 0) return lg_errorf("%s: soft-capping values must be positive", path);
        if (get_bool(j, "use_bidirectional_attention", 0))
            return lg_errorf("%s: use_bidirectional_attention is not supported (causal language models only)", path);
    }

    /* RoPE: transformers >= 5 writes rope_parameters (per layer type for Gemma 3), older files
     * rope_theta and rope_scaling (Gemma 3 also rope_local_base_freq) */
    float prf = 1.0f;
    if (get_float(j, "partial_rotary_factor", 1.0f, &prf, path)) return -1;
    if (prf != 1.0f)
        return lg_errorf("%s: partial_rotary_factor %g is not supported (RoPE over the whole head only)", path, prf);
    const int theta_given = cJSON_GetObjectItemCaseSensitive(j, "rope_theta") != NULL;
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(j, "rope_parameters");
    const cJSON *rsc = cJSON_GetObjectItemCaseSensitive(j, "rope_scaling");
    if (gemma3) {
        c->rope_theta_local = 10000.0f;
        if (get_float(j, "rope_local_base_freq", 10000.0f, &c->rope_theta_local, path)) return -1;
    }
    if (rp && !cJSON_IsNull(rp)) {
        const cJSON *full = gemma3 ? cJSON_GetObjectItemCaseSensitive(rp, "full_attention") : NULL;
        const cJSON *slide = gemma3 ? cJSON_GetObjectItemCaseSensitive(rp, "sliding_attention") : NULL;
        if (full || slide) {
            if (full && parse_rope_obj(j, full, "rope_parameters.full_attention", c, 0, &c->rope_theta, path)) return -1;
            if (slide && parse_rope_obj(j, slide, "rope_parameters.sliding_attention", c, 1, &c->rope_theta_local, path))
                return -1;
        } else if (parse_rope_obj(j, rp, "rope_parameters", c, 0, theta_given ? NULL : &c->rope_theta, path)) {
            return -1;
        }
    }
    if (rsc && !cJSON_IsNull(rsc) && parse_rope_obj(j, rsc, "rope_scaling", c, 0, NULL, path)) return -1;
    if (c->rope_scaling.type == LG_ROPE_LONGROPE && c->rope_scaling.factor == 0 && c->rope_scaling.original_max > 0)
        c->rope_scaling.factor = (float)c->max_seq / (float)c->rope_scaling.original_max;

    /* sliding windows: which layers, and how wide */
    const cJSON *sw = cJSON_GetObjectItemCaseSensitive(j, "sliding_window");
    int window = cJSON_IsNumber(sw) && sw->valuedouble > 0 ? (int)sw->valuedouble : 0;
    if (gemma && !sw) window = 4096;
    if ((qwen2 || qwen3) && !get_bool(j, "use_sliding_window", 0)) window = 0;
    int lt = get_layer_types(j, c, path);
    if (lt < 0) return -1;
    if (!lt) {
        int mwl = 28, pattern = 6;
        if (get_int(j, "max_window_layers", 28, &mwl, path) || get_int(j, "sliding_window_pattern", 6, &pattern, path))
            return -1;
        if (pattern <= 0) return lg_errorf("%s: sliding_window_pattern must be positive", path);
        for (int l = 0; l < c->n_layers; l++)
            c->swa_layers[l] = gemma2 ? (l + 1) % 2 != 0
                             : gemma3 ? (l + 1) % pattern != 0
                             : (qwen2 || qwen3) ? window > 0 && l >= mwl
                             : (mistral || phi3) ? window > 0
                             : 0;
    }
    if (!strcmp(mt, "llama")) memset(c->swa_layers, 0, sizeof c->swa_layers), window = 0;
    c->sliding_window = window;
    return 0;
}

int64_t lg_config_n_params(const lg_config *c) {
    const int64_t C = c->dim, F = c->hidden_dim, V = c->vocab_size, L = c->n_layers, S = c->max_seq;
    const int64_t qd = (int64_t)c->n_heads * c->head_dim, kvd = (int64_t)c->n_kv_heads * c->head_dim;
    if (c->arch == LG_ARCH_GPT2) /* wte, wpe; per layer ln_1, c_attn, attn c_proj, ln_2, c_fc, mlp c_proj; ln_f */
        return V * C + S * C + L * (2 * C + (3 * C * C + 3 * C) + (C * C + C) + 2 * C + (F * C + F) + (C * F + C)) +
               2 * C;
    int64_t layer = 2 * C /* norms */ + qd * C + 2 * kvd * C + C * qd + 3 * F * C;
    if (c->qkv_bias) layer += qd + 2 * kvd;
    if (c->o_bias) layer += C;
    if (c->mlp_bias) layer += 2 * F + C;
    return V * C + L * layer + C + (c->tied_embeddings ? 0 : V * C);
}

int lg_config_load(const char *path_in, lg_config *c) {
    char *path = lg_is_dir(path_in) ? lg_path_join(path_in, "config.json") : lg_strdup(path_in);
    char *text = NULL;
    int rc = -1;
    cJSON *j = NULL;
    memset(c, 0, sizeof *c);
    size_t len;
    if (lg_read_file(path, &text, &len) != 0) goto done;
    if (!(j = lg_json_parse(text, len, "byte"))) {
        lg_errorf_prefix("%s", path);
        goto done;
    }
    if (!cJSON_IsObject(j)) {
        lg_errorf("%s: not a valid JSON object", path);
        goto done;
    }
    const char *mt = get_str(j, "model_type");
    if (!mt) {
        lg_errorf("%s: missing \"model_type\"", path);
        goto done;
    }
    snprintf(c->model_type, sizeof c->model_type, "%s", mt);
    const char *dt = get_str(j, "torch_dtype");
    if (!dt) dt = get_str(j, "dtype");
    snprintf(c->torch_dtype, sizeof c->torch_dtype, "%s", dt ? dt : "float32");
    c->bos_id = c->eos_id = c->pad_id = -1;
    const int REQ = INT32_MIN;
    if (!strcmp(mt, "gpt2")) {
        c->arch = LG_ARCH_GPT2;
        if (get_int(j, "vocab_size", REQ, &c->vocab_size, path) || get_int(j, "n_embd", REQ, &c->dim, path) ||
            get_int(j, "n_layer", REQ, &c->n_layers, path) || get_int(j, "n_head", REQ, &c->n_heads, path) ||
            get_int(j, "n_positions", 1024, &c->max_seq, path) ||
            get_int(j, "n_inner", 0, &c->hidden_dim, path) ||
            get_float(j, "layer_norm_epsilon", 1e-5f, &c->norm_eps, path) ||
            get_int(j, "bos_token_id", -1, &c->bos_id, path) || get_int(j, "eos_token_id", -1, &c->eos_id, path))
            goto done;
        if (c->hidden_dim <= 0) c->hidden_dim = 4 * c->dim;
        c->n_kv_heads = c->n_heads;
        c->head_dim = c->n_heads > 0 ? c->dim / c->n_heads : 0;
        c->qkv_bias = c->o_bias = c->mlp_bias = 1;
        c->tied_embeddings = 1;
        if (get_bool(j, "scale_attn_by_inverse_layer_idx", 0)) {
            lg_errorf("%s: scale_attn_by_inverse_layer_idx is not supported", path);
            goto done;
        }
        const char *act = get_str(j, "activation_function");
        if (act && strcmp(act, "gelu_new") && strcmp(act, "gelu_pytorch_tanh")) {
            lg_errorf("%s: activation_function \"%s\" not supported (gelu_new only)", path, act);
            goto done;
        }
    } else if (!strcmp(mt, "gemma3")) { /* Gemma3ForConditionalGeneration: vision tower + text model */
        lg_errorf("%s: model_type \"gemma3\" (multimodal Gemma 3) not supported: its text-only models "
                  "(model_type gemma3_text, e.g. gemma-3-270m, gemma-3-1b) are, and its GGUF language model", path);
        goto done;
    } else if (llama_family(mt)) {
        c->arch = LG_ARCH_LLAMA;
        if (parse_llama_family(j, mt, path, c) != 0) goto done;
    } else {
        lg_errorf("%s: model_type \"%s\" not supported (llama, mistral, qwen2, qwen3, gemma2, gemma3_text, phi3, gpt2)",
                  path, mt);
        goto done;
    }
    if (lg_config_validate(c) != 0) {
        lg_errorf_prefix("%s", path);
        goto done;
    }
    rc = 0;
done:
    cJSON_Delete(j);
    free(text);
    free(path);
    return rc;
}


/* A float field as JSON that reads back as a float: transformers' strict config classes refuse
 * an integer literal (5) where they declare a float (final_logit_softcapping: float | None). */
static void add_float(cJSON *o, const char *key, double v) {
    char b[64];
    snprintf(b, sizeof b, "%.9g", v);
    if (!strpbrk(b, ".eni")) strcat(b, ".0");
    cJSON_AddRawToObject(o, key, b);
}
static cJSON *float_item(double v) {
    char b[64];
    snprintf(b, sizeof b, "%.9g", v);
    if (!strpbrk(b, ".eni")) strcat(b, ".0");
    return cJSON_CreateRaw(b);
}

/* RoPE of the global layers as a legacy rope_scaling object (what transformers 4 and 5 both read);
 * NULL for plain RoPE. */
static cJSON *rope_scaling_json(const lg_config *c) {
    const lg_rope_scaling *rs = &c->rope_scaling;
    if (rs->type == LG_ROPE_DEFAULT) return NULL;
    cJSON *o = cJSON_CreateObject();
    switch (rs->type) {
    case LG_ROPE_LINEAR:
        cJSON_AddStringToObject(o, "rope_type", "linear");
        add_float(o, "factor", rs->factor);
        break;
    case LG_ROPE_LLAMA3:
        cJSON_AddStringToObject(o, "rope_type", "llama3");
        add_float(o, "factor", rs->factor);
        add_float(o, "low_freq_factor", rs->low_freq_factor);
        add_float(o, "high_freq_factor", rs->high_freq_factor);
        cJSON_AddNumberToObject(o, "original_max_position_embeddings", rs->original_max);
        break;
    default: { /* LONGROPE (FACTORS are converted before saving, lg_model_save_hf) */
        cJSON_AddStringToObject(o, "rope_type", "longrope");
        cJSON *sf = cJSON_AddArrayToObject(o, "short_factor"), *lf = cJSON_AddArrayToObject(o, "long_factor");
        for (int i = 0; i < rs->n_factors; i++) {
            cJSON_AddItemToArray(sf, float_item(rs->short_factor[i]));
            cJSON_AddItemToArray(lf, float_item(rs->long_factor[i]));
        }
        if (rs->factor > 0) add_float(o, "factor", rs->factor);
        if (rs->attn_factor > 0) add_float(o, "attention_factor", rs->attn_factor);
        cJSON_AddNumberToObject(o, "original_max_position_embeddings", rs->original_max);
        break;
    }
    }
    return o;
}

static void save_llama_family(const lg_config *c, cJSON *j) {
    const char *mt = c->model_type[0] ? c->model_type : "llama";
    static const char *const arch[][2] = {
        {"qwen2", "Qwen2ForCausalLM"},     {"qwen3", "Qwen3ForCausalLM"},        {"mistral", "MistralForCausalLM"},
        {"gemma2", "Gemma2ForCausalLM"},   {"gemma3_text", "Gemma3ForCausalLM"}, {"phi3", "Phi3ForCausalLM"},
    };
    const char *an = "LlamaForCausalLM";
    for (size_t i = 0; i < sizeof arch / sizeof arch[0]; i++)
        if (!strcmp(mt, arch[i][0])) an = arch[i][1];
    const int qwen2 = !strcmp(mt, "qwen2"), qwen = qwen2 || !strcmp(mt, "qwen3");
    const int gemma = !strcmp(mt, "gemma2") || !strcmp(mt, "gemma3_text"), phi3 = !strcmp(mt, "phi3");
    cJSON_AddItemToArray(cJSON_AddArrayToObject(j, "architectures"), cJSON_CreateString(an));
    cJSON_AddStringToObject(j, "model_type", mt);
    cJSON_AddNumberToObject(j, "vocab_size", c->vocab_size);
    cJSON_AddNumberToObject(j, "hidden_size", c->dim);
    cJSON_AddNumberToObject(j, "intermediate_size", c->hidden_dim);
    cJSON_AddNumberToObject(j, "num_hidden_layers", c->n_layers);
    cJSON_AddNumberToObject(j, "num_attention_heads", c->n_heads);
    cJSON_AddNumberToObject(j, "num_key_value_heads", c->n_kv_heads);
    cJSON_AddNumberToObject(j, "head_dim", c->head_dim);
    cJSON_AddNumberToObject(j, "max_position_embeddings", c->max_seq);
    add_float(j, "rms_norm_eps", c->norm_eps);
    add_float(j, "rope_theta", c->rope_theta);
    cJSON *rs = rope_scaling_json(c);
    if (rs) cJSON_AddItemToObject(j, "rope_scaling", rs);
    else cJSON_AddNullToObject(j, "rope_scaling");
    if (phi3 && c->rope_scaling.type == LG_ROPE_LONGROPE)
        cJSON_AddNumberToObject(j, "original_max_position_embeddings", c->rope_scaling.original_max);
    cJSON_AddStringToObject(j, gemma ? "hidden_activation" : "hidden_act",
                            c->mlp_act == LG_MLP_GEGLU ? "gelu_pytorch_tanh" : "silu");
    if (!qwen2) cJSON_AddBoolToObject(j, "attention_bias", c->qkv_bias);
    if (!qwen && !gemma && !phi3) cJSON_AddBoolToObject(j, "mlp_bias", c->mlp_bias);
    cJSON_AddBoolToObject(j, "tie_word_embeddings", c->tied_embeddings);
    if (gemma) {
        /* an integer in transformers (query_pre_attn_scalar: int), as every Gemma's is */
        double qpas = c->attn_scale > 0 ? 1.0 / ((double)c->attn_scale * c->attn_scale) : c->head_dim;
        cJSON_AddNumberToObject(j, "query_pre_attn_scalar", floor(qpas + 0.5));
        if (c->final_softcap > 0) add_float(j, "final_logit_softcapping", c->final_softcap);
        else cJSON_AddNullToObject(j, "final_logit_softcapping");
        if (c->attn_softcap > 0) add_float(j, "attn_logit_softcapping", c->attn_softcap);
        else cJSON_AddNullToObject(j, "attn_logit_softcapping");
        if (c->rope_theta_local > 0) add_float(j, "rope_local_base_freq", c->rope_theta_local);
    }
    /* the window and its layers, in the keys each model type reads */
    int any_swa = 0;
    for (int l = 0; l < c->n_layers; l++) any_swa |= c->swa_layers[l];
    if (c->sliding_window > 0 || gemma) {
        if (c->sliding_window > 0) cJSON_AddNumberToObject(j, "sliding_window", c->sliding_window);
        else cJSON_AddNullToObject(j, "sliding_window");
        if (qwen) {
            cJSON_AddBoolToObject(j, "use_sliding_window", c->sliding_window > 0 && any_swa);
            int first = c->n_layers;
            for (int l = c->n_layers - 1; l >= 0 && c->swa_layers[l]; l--) first = l;
            cJSON_AddNumberToObject(j, "max_window_layers", first);
        }
        if (gemma || qwen) {
            cJSON *lt = cJSON_AddArrayToObject(j, "layer_types");
            for (int l = 0; l < c->n_layers; l++)
                cJSON_AddItemToArray(lt, cJSON_CreateString(c->swa_layers[l] ? "sliding_attention" : "full_attention"));
        }
    } else {
        cJSON_AddNullToObject(j, "sliding_window");
        if (qwen) cJSON_AddFalseToObject(j, "use_sliding_window");
    }
    cJSON_AddNumberToObject(j, "initializer_range", 0.02);
    cJSON_AddFalseToObject(j, "use_cache");
    if (phi3) { /* Phi3Config's default pad_token_id (32000) is out of range for other vocabularies */
        if (c->pad_id >= 0 && c->pad_id < c->vocab_size) cJSON_AddNumberToObject(j, "pad_token_id", c->pad_id);
        else cJSON_AddNullToObject(j, "pad_token_id");
    }
}

/* GGUF's rope_freqs tensor holds Llama 3's per-frequency factors without their parameters: find the
 * llama3 rope_scaling that reproduces them (factor = the largest, low/high 1/4 as every Llama 3.x,
 * original_max a power of two) so that config.json can say it. 0 = found (c converted). */
static int factors_to_llama3(lg_config *c) {
    lg_rope_scaling *rs = &c->rope_scaling;
    const int half = c->head_dim / 2;
    float fmax = 1.0f;
    for (int i = 0; i < half; i++) fmax = rs->short_factor[i] > fmax ? rs->short_factor[i] : fmax;
    double *want = malloc((size_t)half * sizeof(double)), *got = malloc((size_t)half * sizeof(double)), ms;
    lg_config t = *c;
    t.rope_scaling.type = LG_ROPE_DEFAULT;
    lg_config_rope_freqs(&t, 0, want, &ms);
    for (int i = 0; i < half; i++) want[i] /= rs->short_factor[i];
    int ok = 0;
    for (int e = 4; e <= 24 && !ok; e++) {
        t.rope_scaling = (lg_rope_scaling){.type = LG_ROPE_LLAMA3, .factor = fmax, .low_freq_factor = 1.0f,
                                           .high_freq_factor = 4.0f, .original_max = 1 << e};
        lg_config_rope_freqs(&t, 0, got, &ms);
        ok = 1;
        for (int i = 0; i < half; i++) ok &= fabs(got[i] - want[i]) <= 1e-5 * want[i];
    }
    free(want), free(got);
    if (!ok) return -1;
    *rs = t.rope_scaling;
    return 0;
}

int lg_config_save(const lg_config *c_in, const char *dir) {
    lg_config cc = *c_in;
    const lg_config *c = &cc;
    if (cc.rope_scaling.type == LG_ROPE_FACTORS && factors_to_llama3(&cc) != 0)
        return lg_errorf("%s: the model's RoPE frequency factors (a GGUF rope_freqs tensor) are not Llama 3's "
                         "rope scaling: config.json cannot describe them", dir);
    cJSON *j = cJSON_CreateObject();
    if (c->arch == LG_ARCH_GPT2) {
        cJSON *a = cJSON_AddArrayToObject(j, "architectures");
        cJSON_AddItemToArray(a, cJSON_CreateString("GPT2LMHeadModel"));
        cJSON_AddStringToObject(j, "model_type", "gpt2");
        cJSON_AddNumberToObject(j, "vocab_size", c->vocab_size);
        cJSON_AddNumberToObject(j, "n_embd", c->dim);
        cJSON_AddNumberToObject(j, "n_layer", c->n_layers);
        cJSON_AddNumberToObject(j, "n_head", c->n_heads);
        cJSON_AddNumberToObject(j, "n_positions", c->max_seq);
        cJSON_AddNumberToObject(j, "n_ctx", c->max_seq);
        if (c->hidden_dim != 4 * c->dim) cJSON_AddNumberToObject(j, "n_inner", c->hidden_dim);
        else cJSON_AddNullToObject(j, "n_inner");
        cJSON_AddNumberToObject(j, "layer_norm_epsilon", c->norm_eps);
        cJSON_AddStringToObject(j, "activation_function", "gelu_new");
        cJSON_AddTrueToObject(j, "tie_word_embeddings");
    } else {
        save_llama_family(c, j);
    }
    if (c->bos_id >= 0) cJSON_AddNumberToObject(j, "bos_token_id", c->bos_id);
    if (c->eos_id >= 0) cJSON_AddNumberToObject(j, "eos_token_id", c->eos_id);
    cJSON_AddStringToObject(j, "torch_dtype", c->torch_dtype[0] ? c->torch_dtype : "float32");
    char *s = cJSON_Print(j);
    cJSON_Delete(j);
    char *path = lg_path_join(dir, "config.json");
    size_t n = strlen(s);
    s = lg_realloc(s, n + 2);
    s[n] = '\n';
    s[n + 1] = 0;
    int rc = lg_write_file_atomic(path, s, n + 1);
    free(path);
    free(s);
    return rc;
}
