/* model_io.c — load a model from a Hugging Face directory, a llama2.c file or a GGUF file; save as HF. */
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "io/gguf.h"
#include "io/safetensors.h"
#include "model/model.h"

static int st_read(void *ctx, const char *name, float *dst, int ndim, const int64_t *shape) {
    return lg_st_read_f32(ctx, name, dst, ndim, shape);
}
static int st_has(void *ctx, const char *name) { return lg_st_find(ctx, name) != NULL; }

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* Before the model is allocated (and zeroed) from the config's sizes, they must be about what the
 * weight files hold: a small config.json next to tiny weights must not reach gigabytes. The
 * allocation stays within twice the values in the files plus 64 MB; a smaller disagreement (a
 * layer too many, a wrong width) is left to the per-tensor shape checks, whose messages name the
 * tensor. Files may hold more (buffers, a tied head stored twice). */
static int check_budget(const char *path, const lg_config *cfg, int64_t have) {
    int64_t need = lg_config_n_params(cfg);
    if (need <= 2 * have + ((int64_t)1 << 24)) return 0;
    return lg_errorf("%s: the config describes %lld parameters (%.1f MB as float32: vocab %d, hidden %d, %d layers, "
                     "FFN %d) but the weights hold only %lld values: config and weights do not belong together",
                     path, (long long)need, need * 4.0 / 1e6, cfg->vocab_size, cfg->dim, cfg->n_layers,
                     cfg->hidden_dim, (long long)have);
}

int lg_model_load(const char *path, const lg_model_opts *opts, lg_model **out) {
    *out = NULL;
    lg_config cfg;
    if (lg_is_dir(path)) {
        if (lg_config_load(path, &cfg) != 0) return -1;
        lg_safetensors *st;
        if (lg_st_open(path, &st) != 0) return -1;
        int64_t have = 0;
        for (int i = 0; i < lg_st_count(st); i++) have += lg_st_get(st, i)->numel;
        lg_weight_src src = {st, st_read, st_has};
        int rc = check_budget(path, &cfg, have);
        if (!rc && (rc = lg_model_create(&cfg, &src, 0, opts, out)) != 0) lg_errorf_prefix("%s", path);
        lg_st_close(st);
        return rc;
    }
    if (!lg_file_exists(path)) return lg_errorf("%s: no such file or directory", path);
    lg_weight_src src;
    if (ends_with(path, ".gguf") || lg_gguf_is_gguf(path)) { /* llama.cpp's format: dequantised to float32 */
        lg_gguf *g;
        if (lg_gguf_open(path, &g) != 0) return -1;
        if (lg_gguf_model_from(g, &cfg, &src) != 0) {
            lg_gguf_close(g);
            return -1;
        }
        int64_t have = 0;
        for (int i = 0; i < lg_gguf_n_tensors(g); i++) have += lg_gguf_tensor_at(g, i)->numel;
        int rc = check_budget(path, &cfg, have);
        if (!rc && (rc = lg_model_create(&cfg, &src, 0, opts, out)) != 0) lg_errorf_prefix("%s", path);
        lg_gguf_model_close(&src);
        lg_gguf_close(g);
        return rc;
    }
    if (lg_llama2c_open(path, &cfg, &src) != 0) return -1; /* its size is checked against its header */
    int rc = lg_model_create(&cfg, &src, 0, opts, out);
    lg_llama2c_close(&src);
    return rc;
}

/* HF's rotate-half layout pairs dims (i, i + hd/2) where llama2.c pairs (2i, 2i+1): within each
 * head, new row s*hd/2 + i = old row 2i + s. Same permutation as transformers'
 * convert_llama_weights_to_hf.py applies to Meta's checkpoints. */
static void permute_rows_to_half(float *dst, const float *src, int rows, int cols, int hd) {
    for (int r = 0; r < rows; r++) {
        int head = r / hd, j = r % hd, s = j / (hd / 2), i = j % (hd / 2);
        int old = head * hd + 2 * i + s;
        memcpy(dst + (size_t)r * cols, src + (size_t)old * cols, (size_t)cols * sizeof(float));
    }
}

static int parse_dtype(const char *s, lg_dtype *dt) {
    if (!s || !strcmp(s, "float32")) *dt = LG_DT_F32;
    else if (!strcmp(s, "bfloat16")) *dt = LG_DT_BF16;
    else if (!strcmp(s, "float16")) *dt = LG_DT_F16;
    else return lg_errorf("unknown dtype '%s' (float32, bfloat16, float16)", s);
    return 0;
}

int lg_model_save_hf(lg_model *m, const char *dir, const char *dtype) {
    lg_config cfg = *lg_model_config(m);
    lg_dtype dt = LG_DT_F32;
    if (parse_dtype(dtype ? dtype : cfg.torch_dtype, &dt) != 0) return -1;
    if (lg_mkdir_p(dir) != 0) return -1;
    int n = lg_model_n_params(m);
    lg_st_item *items = lg_calloc((size_t)n, sizeof *items);
    float **owned = lg_calloc((size_t)n, sizeof *owned);
    for (int i = 0; i < n; i++) {
        lg_param *p = lg_model_param(m, i);
        lg_st_item *it = &items[i];
        it->name = p->name;
        it->dtype = dt;
        it->ndim = p->ndim;
        it->shape[0] = p->shape[0];
        it->shape[1] = p->shape[1];
        it->data = p->data;
        float *f32 = p->data;
        if (p->bf16) { /* a frozen weight kept as bf16: written from its float32 expansion */
            f32 = owned[i] = lg_malloc((size_t)p->numel * sizeof(float));
            lg_param_read_f32(p, f32);
            it->data = f32;
        }
        int is_qk = strstr(p->name, "self_attn.q_proj.weight") || strstr(p->name, "self_attn.k_proj.weight");
        if (p->conv1d) { /* back to Conv1D's (in, out) */
            float *t = lg_malloc((size_t)p->numel * sizeof(float));
            for (int64_t o = 0; o < p->shape[0]; o++)
                for (int64_t k = 0; k < p->shape[1]; k++) t[k * p->shape[0] + o] = f32[o * p->shape[1] + k];
            free(owned[i]);
            owned[i] = t;
            it->shape[0] = p->shape[1];
            it->shape[1] = p->shape[0];
            it->data = t;
        } else if (is_qk && cfg.rope_style == LG_ROPE_INTERLEAVED) {
            float *t = lg_malloc((size_t)p->numel * sizeof(float));
            permute_rows_to_half(t, f32, (int)p->shape[0], (int)p->shape[1], cfg.head_dim);
            free(owned[i]);
            owned[i] = t;
            it->data = t;
        }
    }
    char *path = lg_path_join(dir, "model.safetensors");
    lg_st_meta meta[] = {{"format", "pt"}};
    int rc = lg_st_write(path, items, n, meta, 1);
    free(path);
    for (int i = 0; i < n; i++) free(owned[i]);
    free(owned);
    free(items);
    if (rc) return -1;
    cfg.rope_style = LG_ROPE_HALF;
    snprintf(cfg.torch_dtype, sizeof cfg.torch_dtype, "%s", dt == LG_DT_F32 ? "float32" : dt == LG_DT_BF16 ? "bfloat16" : "float16");
    return lg_config_save(&cfg, dir);
}
