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
    if (c->vocab_size > 10000000 || c->dim > 65536 || c->n_layers > 1000 || c->hidden_dim > 1 << 20 ||
        c->max_seq > 1 << 20)
        return lg_errorf("config: implausibly large sizes (vocab %d, dim %d, layers %d)", c->vocab_size,
                         c->dim, c->n_layers);
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
    c->bos_id = c->eos_id = -1;
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
    } else if (!strcmp(mt, "llama") || !strcmp(mt, "mistral") || !strcmp(mt, "qwen2")) {
        c->arch = LG_ARCH_LLAMA;
        if (get_int(j, "vocab_size", REQ, &c->vocab_size, path) ||
            get_int(j, "hidden_size", REQ, &c->dim, path) ||
            get_int(j, "num_hidden_layers", REQ, &c->n_layers, path) ||
            get_int(j, "num_attention_heads", REQ, &c->n_heads, path) ||
            get_int(j, "num_key_value_heads", c->n_heads, &c->n_kv_heads, path) ||
            get_int(j, "intermediate_size", REQ, &c->hidden_dim, path) ||
            get_int(j, "max_position_embeddings", 2048, &c->max_seq, path) ||
            get_float(j, "rms_norm_eps", 1e-6f, &c->norm_eps, path) ||
            get_float(j, "rope_theta", 10000.0f, &c->rope_theta, path) ||
            get_int(j, "bos_token_id", -1, &c->bos_id, path) || get_int(j, "eos_token_id", -1, &c->eos_id, path))
            goto done;
        if (get_int(j, "head_dim", c->n_heads > 0 ? c->dim / c->n_heads : 0, &c->head_dim, path)) goto done;
        c->rope_style = LG_ROPE_HALF;
        int qwen = !strcmp(mt, "qwen2");
        int ab = get_bool(j, "attention_bias", 0);
        c->qkv_bias = qwen ? 1 : ab;
        c->o_bias = qwen ? 0 : ab;
        c->mlp_bias = get_bool(j, "mlp_bias", 0);
        c->tied_embeddings = get_bool(j, "tie_word_embeddings", 0);
        const char *act = get_str(j, "hidden_act");
        if (act && strcmp(act, "silu")) {
            lg_errorf("%s: hidden_act \"%s\" not supported (silu only)", path, act);
            goto done;
        }
        /* transformers >= 5 writes rope_parameters {rope_theta, rope_type} instead of rope_theta;
         * older files may carry rope_scaling. Only plain RoPE is implemented. */
        const char *rope_keys[] = {"rope_parameters", "rope_scaling"};
        for (int k = 0; k < 2; k++) {
            const cJSON *rp = cJSON_GetObjectItemCaseSensitive(j, rope_keys[k]);
            if (!rp || cJSON_IsNull(rp)) continue;
            if (!cJSON_IsObject(rp)) {
                lg_errorf("%s: \"%s\" must be an object", path, rope_keys[k]);
                goto done;
            }
            const char *rt = get_str(rp, "rope_type");
            if (!rt) rt = get_str(rp, "type");
            if (rt && strcmp(rt, "default")) {
                lg_errorf("%s: %s.rope_type \"%s\" is not supported (default only)", path, rope_keys[k], rt);
                goto done;
            }
            if (!rt && k == 1) {
                lg_errorf("%s: rope_scaling is not supported", path);
                goto done;
            }
            if (!cJSON_GetObjectItemCaseSensitive(j, "rope_theta") &&
                get_float(rp, "rope_theta", c->rope_theta, &c->rope_theta, path))
                goto done;
        }
        /* Sliding-window attention is not implemented: record the window and refuse longer
         * sequences (shorter ones are unaffected by it). */
        const cJSON *sw = cJSON_GetObjectItemCaseSensitive(j, "sliding_window");
        int sw_on = !qwen || get_bool(j, "use_sliding_window", 0);
        if (sw_on && cJSON_IsNumber(sw) && sw->valuedouble > 0) c->sliding_window = (int)sw->valuedouble;
    } else {
        lg_errorf("%s: model_type \"%s\" not supported (llama, mistral, qwen2, gpt2)", path, mt);
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

int lg_config_save(const lg_config *c, const char *dir) {
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
        cJSON *a = cJSON_AddArrayToObject(j, "architectures");
        int qwen = !strcmp(c->model_type, "qwen2");
        int mistral = !strcmp(c->model_type, "mistral");
        cJSON_AddItemToArray(a, cJSON_CreateString(qwen ? "Qwen2ForCausalLM"
                                                        : mistral ? "MistralForCausalLM" : "LlamaForCausalLM"));
        cJSON_AddStringToObject(j, "model_type", c->model_type[0] ? c->model_type : "llama");
        cJSON_AddNumberToObject(j, "vocab_size", c->vocab_size);
        cJSON_AddNumberToObject(j, "hidden_size", c->dim);
        cJSON_AddNumberToObject(j, "intermediate_size", c->hidden_dim);
        cJSON_AddNumberToObject(j, "num_hidden_layers", c->n_layers);
        cJSON_AddNumberToObject(j, "num_attention_heads", c->n_heads);
        cJSON_AddNumberToObject(j, "num_key_value_heads", c->n_kv_heads);
        cJSON_AddNumberToObject(j, "head_dim", c->head_dim);
        cJSON_AddNumberToObject(j, "max_position_embeddings", c->max_seq);
        cJSON_AddNumberToObject(j, "rms_norm_eps", c->norm_eps);
        cJSON_AddNumberToObject(j, "rope_theta", c->rope_theta);
        cJSON_AddNullToObject(j, "rope_scaling");
        cJSON_AddStringToObject(j, "hidden_act", "silu");
        if (!qwen) {
            cJSON_AddBoolToObject(j, "attention_bias", c->qkv_bias);
            cJSON_AddBoolToObject(j, "mlp_bias", c->mlp_bias);
        }
        cJSON_AddBoolToObject(j, "tie_word_embeddings", c->tied_embeddings);
        cJSON_AddNumberToObject(j, "initializer_range", 0.02);
        cJSON_AddFalseToObject(j, "use_cache");
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
