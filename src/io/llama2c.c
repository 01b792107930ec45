/* llama2.c.c — read Karpathy's llama2.c checkpoints (legacy v0: 7 int32 header, float32).
 *
 * Layout after the header: tok_emb[V,C], rms_att[L,C], wq[L,qd,C], wk[L,kvd,C], wv[L,kvd,C],
 * wo[L,C,qd], rms_ffn[L,C], w1[L,F,C], w2[L,C,F], w3[L,F,C], rms_final[C],
 * freq_cis_real[S,hd/2], freq_cis_imag[S,hd/2], then wcls[V,C] if vocab_size < 0 (unshared).
 * Tensors are exposed under Hugging Face names, in llama2.c's own q/k row order: the config
 * says rope_style INTERLEAVED, which is what these weights were trained with. */
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "model/model.h"

typedef struct {
    char name[112];
    int64_t off; /* in floats from the start of the data */
    int64_t shape[2];
} l2c_entry;

typedef struct {
    char *path;
    lg_mmap map;
    const unsigned char *data;
    int n;
    l2c_entry *e;
} l2c_ctx;

static const l2c_entry *l2c_find(const l2c_ctx *c, const char *name) {
    for (int i = 0; i < c->n; i++)
        if (!strcmp(c->e[i].name, name)) return &c->e[i];
    return NULL;
}

static int l2c_has(void *ctx, const char *name) { return l2c_find(ctx, name) != NULL; }

static int l2c_read(void *ctx, const char *name, float *dst, int ndim, const int64_t *shape) {
    l2c_ctx *c = ctx;
    const l2c_entry *e = l2c_find(c, name);
    if (!e) return lg_errorf("%s: no tensor '%s'", c->path, name);
    int64_t s0 = shape[0], s1 = ndim > 1 ? shape[1] : 1;
    int64_t e1 = e->shape[1] ? e->shape[1] : 1;
    if (s0 != e->shape[0] || s1 != e1)
        return lg_errorf("%s: tensor '%s' has shape [%lld, %lld], expected [%lld, %lld]", c->path, name,
                         (long long)e->shape[0], (long long)e1, (long long)s0, (long long)s1);
    memcpy(dst, c->data + e->off * 4, (size_t)(s0 * s1) * sizeof(float));
    int64_t bad = lg_first_nonfinite(dst, s0 * s1);
    if (bad >= 0)
        return lg_errorf("%s: tensor '%s' holds a non-finite value (%g at element %lld); refusing it", c->path, name,
                         (double)dst[bad], (long long)bad);
    return 0;
}

void lg_llama2c_close(lg_weight_src *src) {
    l2c_ctx *c = src->ctx;
    if (!c) return;
    lg_munmap(&c->map);
    free(c->e);
    free(c->path);
    free(c);
    src->ctx = NULL;
}

int lg_llama2c_open(const char *path, lg_config *cfg, lg_weight_src *src) {
    memset(src, 0, sizeof *src);
    l2c_ctx *c = lg_calloc(1, sizeof *c);
    c->path = lg_strdup(path);
    src->ctx = c;
    src->read = l2c_read;
    src->has = l2c_has;
    if (lg_mmap_file(path, &c->map) != 0) goto fail;
    if (c->map.size < 28) {
        lg_errorf("%s: too short for a llama2.c header (%zu bytes, need 28)", path, c->map.size);
        goto fail;
    }
    int32_t h[7];
    memcpy(h, c->map.data, sizeof h);
    if (h[0] == 0x616b3432) { /* "ak42": llama2.c's newer versioned export */
        lg_errorf("%s: llama2.c version-%d export (ak42 header) is not supported; use the legacy v0 export",
                  path, h[1]);
        goto fail;
    }
    memset(cfg, 0, sizeof *cfg);
    cfg->arch = LG_ARCH_LLAMA;
    snprintf(cfg->model_type, sizeof cfg->model_type, "llama");
    snprintf(cfg->torch_dtype, sizeof cfg->torch_dtype, "float32");
    cfg->dim = h[0];
    cfg->hidden_dim = h[1];
    cfg->n_layers = h[2];
    cfg->n_heads = h[3];
    cfg->n_kv_heads = h[4];
    int shared = h[5] > 0;
    cfg->vocab_size = h[5] == INT32_MIN ? 0 : h[5] < 0 ? -h[5] : h[5]; /* -INT32_MIN overflows: 0 is refused below */
    cfg->max_seq = h[6];
    cfg->head_dim = cfg->n_heads > 0 ? cfg->dim / cfg->n_heads : 0;
    cfg->norm_eps = 1e-5f;
    cfg->rope_theta = 10000.0f;
    cfg->rope_style = LG_ROPE_INTERLEAVED;
    cfg->tied_embeddings = shared;
    cfg->bos_id = 1;
    cfg->eos_id = 2;
    if (lg_config_validate(cfg) != 0 || cfg->head_dim * cfg->n_heads != cfg->dim) {
        lg_errorf("%s: not a llama2.c checkpoint: header dim=%d hidden_dim=%d n_layers=%d n_heads=%d "
                  "n_kv_heads=%d vocab_size=%d seq_len=%d is inconsistent",
                  path, h[0], h[1], h[2], h[3], h[4], h[5], h[6]);
        goto fail;
    }
    int64_t C = cfg->dim, F = cfg->hidden_dim, L = cfg->n_layers, V = cfg->vocab_size, S = cfg->max_seq;
    int64_t hd = cfg->head_dim, qd = C, kvd = cfg->n_kv_heads * hd;
    c->e = lg_calloc((size_t)(9 * L + 4), sizeof(l2c_entry));
    int64_t off = 0;
#define ADD(fmt, l, d0, d1)                                                                         \
    do {                                                                                            \
        l2c_entry *e_ = &c->e[c->n++];                                                              \
        snprintf(e_->name, sizeof e_->name, fmt, l);                                                \
        e_->off = off;                                                                              \
        e_->shape[0] = d0;                                                                          \
        e_->shape[1] = d1;                                                                          \
        off += (d0) * ((d1) ? (d1) : 1);                                                            \
    } while (0)
    ADD("model.embed_tokens.weight%.0d", 0, V, C);
    for (int64_t l = 0; l < L; l++) ADD("model.layers.%d.input_layernorm.weight", (int)l, C, 0);
    for (int64_t l = 0; l < L; l++) ADD("model.layers.%d.self_attn.q_proj.weight", (int)l, qd, C);
    for (int64_t l = 0; l < L; l++) ADD("model.layers.%d.self_attn.k_proj.weight", (int)l, kvd, C);
    for (int64_t l = 0; l < L; l++) ADD("model.layers.%d.self_attn.v_proj.weight", (int)l, kvd, C);
    for (int64_t l = 0; l < L; l++) ADD("model.layers.%d.self_attn.o_proj.weight", (int)l, C, qd);
    for (int64_t l = 0; l < L; l++) ADD("model.layers.%d.post_attention_layernorm.weight", (int)l, C, 0);
    for (int64_t l = 0; l < L; l++) ADD("model.layers.%d.mlp.gate_proj.weight", (int)l, F, C);
    for (int64_t l = 0; l < L; l++) ADD("model.layers.%d.mlp.down_proj.weight", (int)l, C, F);
    for (int64_t l = 0; l < L; l++) ADD("model.layers.%d.mlp.up_proj.weight", (int)l, F, C);
    ADD("model.norm.weight%.0d", 0, C, 0);
    off += S * hd; /* freq_cis_real, freq_cis_imag: recomputed, not read */
    if (!shared) ADD("lm_head.weight%.0d", 0, V, C);
#undef ADD
    size_t need = 28 + (size_t)off * 4;
    if (c->map.size != need) {
        lg_errorf("%s: size %zu bytes does not match its header (dim=%d layers=%d vocab=%d seq=%d need %zu bytes)%s",
                  path, c->map.size, h[0], h[2], h[5], h[6], need,
                  c->map.size < need ? ": file is truncated" : "");
        goto fail;
    }
    c->data = (const unsigned char *)c->map.data + 28;
    return 0;
fail:
    lg_llama2c_close(src);
    return -1;
}
