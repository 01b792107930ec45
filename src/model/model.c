/* model.c — the decoder: parameters, activation plan, forward and backward.
 *
 * Shapes: B batch, T positions, N = B*T rows, C model width, qd = H*hd query width,
 * kvd = KV*hd key/value width, F FFN width, V vocabulary.
 *
 * LLaMA block                                GPT-2 block
 *   xn1 = rmsnorm(x)                           xn1 = layernorm(x)
 *   q,k,v = xn1 Wq^T, xn1 Wk^T, xn1 Wv^T       qkv = xn1 Wqkv^T + b   (q|k|v column slices)
 *   q,k = rope(q), rope(k)
 *   att = causal_attention(q, k, v)            att = causal_attention(q, k, v)
 *   xmid = x + att Wo^T                        xmid = x + att Wo^T + b
 *   xn2 = rmsnorm(xmid)                        xn2 = layernorm(xmid)
 *   h = silu(xn2 Wg^T) * (xn2 Wu^T)            h = gelu(xn2 Wfc^T + b)
 *   x' = xmid + h Wd^T                         x' = xmid + h Wproj^T + b
 *
 * The LLaMA block's switches (lg_config) cover the rest of the family in the same code:
 *   qk_norm        q,k = rmsnorm_per_head(q), rmsnorm_per_head(k) before RoPE (Qwen3, Gemma 3)
 *   fused_qkv      q|k|v = xn1 Wqkv^T, split into q, k, v (Phi-3 qkv_proj)
 *   fused_gate_up  gate|up = xn2 Wgu^T, split (Phi-3 gate_up_proj)
 *   mlp_act GEGLU  h = gelu_tanh(gate) * up (Gemma)
 *   post_norms     xmid = x + rmsnorm(att Wo^T);  x' = xmid + rmsnorm(h Wd^T) (Gemma 2/3)
 *   gemma_norms    every RMSNorm scales by 1 + w (Gemma)
 *   attention      score scale, soft cap, sliding window per layer (ops->attention_ex_*)
 *   embed_scale    x0 = embedding * sqrt(C) (Gemma);  final_softcap: logits = cap tanh(logits / cap)
 */
#include "model/model.h"
#include "model/model_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/adapter.h"
#include "adapters/lora.h" /* drop_calls: replaying dropout masks under recomputation */
#include "core/util.h"

/* ------------------------------------------------------------------------------------------ */
/* parameter table                                                                            */

static lg_param *add_param(lg_model *m, const char *name, int ndim, int64_t d0, int64_t d1, int conv1d) {
    lg_param *p = &m->params[m->nparams++];
    snprintf(p->name, sizeof p->name, "%s", name);
    p->ndim = ndim;
    p->shape[0] = d0;
    p->shape[1] = ndim > 1 ? d1 : 1;
    p->numel = d0 * (ndim > 1 ? d1 : 1);
    p->conv1d = conv1d;
    return p;
}

static void set_linear(lg_linear *l, const char *module, lg_param *w, lg_param *b) {
    snprintf(l->name, sizeof l->name, "%s", module);
    l->w = w;
    l->b = b;
    l->out = (int)w->shape[0];
    l->in = (int)w->shape[1];
    l->adapter = NULL;
    l->grad_hook = NULL;
    l->grad_hook_ud = NULL;
}

/* Declares every tensor of the architecture with its HF name; data pointers are set later. */
static void declare_params(lg_model *m) {
    const lg_config *c = &m->cfg;
    int C = c->dim, F = c->hidden_dim, V = c->vocab_size, L = c->n_layers;
    int qd = c->n_heads * c->head_dim, kvd = c->n_kv_heads * c->head_dim;
    m->params = lg_calloc((size_t)(24 * L + 8), sizeof(lg_param));
    m->layers = lg_calloc((size_t)L, sizeof(lg_layer));
    m->linears = lg_calloc((size_t)(7 * L), sizeof(lg_linear *));
    char n[112], mod[96];
    if (c->arch == LG_ARCH_GPT2) {
        m->wte = add_param(m, "transformer.wte.weight", 2, V, C, 0);
        m->wpe = add_param(m, "transformer.wpe.weight", 2, c->max_seq, C, 0);
        for (int l = 0; l < L; l++) {
            lg_layer *y = &m->layers[l];
#define P1(field, suffix, d)                                                                       \
    snprintf(n, sizeof n, "transformer.h.%d.%s", l, suffix);                                       \
    y->field = add_param(m, n, 1, d, 1, 0);
#define LIN(field, modname, out, in)                                                               \
    snprintf(mod, sizeof mod, "transformer.h.%d.%s", l, modname);                                  \
    snprintf(n, sizeof n, "%s.weight", mod);                                                       \
    {                                                                                              \
        lg_param *w_ = add_param(m, n, 2, out, in, 1);                                             \
        snprintf(n, sizeof n, "%s.bias", mod);                                                     \
        lg_param *b_ = add_param(m, n, 1, out, 1, 0);                                              \
        set_linear(&y->field, mod, w_, b_);                                                        \
        m->linears[m->nlin++] = &y->field;                                                         \
    }
            P1(norm1_w, "ln_1.weight", C);
            P1(norm1_b, "ln_1.bias", C);
            LIN(qkv, "attn.c_attn", 3 * C, C);
            LIN(o, "attn.c_proj", C, C);
            P1(norm2_w, "ln_2.weight", C);
            P1(norm2_b, "ln_2.bias", C);
            LIN(up, "mlp.c_fc", F, C);
            LIN(down, "mlp.c_proj", C, F);
#undef LIN
        }
        m->normf_w = add_param(m, "transformer.ln_f.weight", 1, C, 1, 0);
        m->normf_b = add_param(m, "transformer.ln_f.bias", 1, C, 1, 0);
        m->lm_head = m->wte;
    } else {
        const int qkvd = qd + 2 * kvd, hd = c->head_dim;
        m->wte = add_param(m, "model.embed_tokens.weight", 2, V, C, 0);
        for (int l = 0; l < L; l++) {
            lg_layer *y = &m->layers[l];
#define LIN(field, modname, out, in, bias)                                                         \
    snprintf(mod, sizeof mod, "model.layers.%d.%s", l, modname);                                   \
    snprintf(n, sizeof n, "%s.weight", mod);                                                       \
    {                                                                                              \
        lg_param *w_ = add_param(m, n, 2, out, in, 0), *b_ = NULL;                                 \
        if (bias) {                                                                                \
            snprintf(n, sizeof n, "%s.bias", mod);                                                 \
            b_ = add_param(m, n, 1, out, 1, 0);                                                    \
        }                                                                                          \
        set_linear(&y->field, mod, w_, b_);                                                        \
        m->linears[m->nlin++] = &y->field;                                                         \
    }
#define NORM(field, suffix, d)                                                                     \
    snprintf(n, sizeof n, "model.layers.%d.%s", l, suffix);                                        \
    y->field = add_param(m, n, 1, d, 1, 0);
            NORM(norm1_w, "input_layernorm.weight", C);
            if (c->fused_qkv) {
                LIN(qkv, "self_attn.qkv_proj", qkvd, C, c->qkv_bias);
            } else {
                LIN(q, "self_attn.q_proj", qd, C, c->qkv_bias);
                LIN(k, "self_attn.k_proj", kvd, C, c->qkv_bias);
                LIN(v, "self_attn.v_proj", kvd, C, c->qkv_bias);
            }
            if (c->qk_norm) {
                NORM(q_norm_w, "self_attn.q_norm.weight", hd);
                NORM(k_norm_w, "self_attn.k_norm.weight", hd);
            }
            LIN(o, "self_attn.o_proj", C, qd, c->o_bias);
            if (c->post_norms) { /* Gemma: post_attention_layernorm is the attention output's own norm */
                NORM(post_attn_w, "post_attention_layernorm.weight", C);
                NORM(norm2_w, "pre_feedforward_layernorm.weight", C);
                NORM(post_ffn_w, "post_feedforward_layernorm.weight", C);
            } else {
                NORM(norm2_w, "post_attention_layernorm.weight", C);
            }
            if (c->fused_gate_up) {
                LIN(gate_up, "mlp.gate_up_proj", 2 * F, C, c->mlp_bias);
            } else {
                LIN(gate, "mlp.gate_proj", F, C, c->mlp_bias);
                LIN(up, "mlp.up_proj", F, C, c->mlp_bias);
            }
            LIN(down, "mlp.down_proj", C, F, c->mlp_bias);
#undef LIN
#undef NORM
#undef P1
        }
        m->normf_w = add_param(m, "model.norm.weight", 1, C, 1, 0);
        m->lm_head = c->tied_embeddings ? m->wte : add_param(m, "lm_head.weight", 2, V, C, 0);
    }
}

/* Floats of logits held at a time by a training plan with a frozen LM head (32 MiB): each block
 * re-packs the head for the GEMM, so a few large blocks cost ~1-3 % of a step, many small ones more. */
#define LOGIT_BLOCK_FLOATS ((int64_t)1 << 23)

/* GPT-2 checkpoints exist with and without the "transformer." prefix. */
static int read_param(const lg_weight_src *src, lg_param *p, float *tmp) {
    const char *name = p->name;
    if (!src->has(src->ctx, name) && !strncmp(name, "transformer.", 12) && src->has(src->ctx, name + 12))
        name += 12;
    if (!src->has(src->ctx, name)) return lg_errorf("tensor '%s' missing from the checkpoint", p->name);
    if (!p->conv1d) return src->read(src->ctx, name, p->data, p->ndim, p->shape);
    int64_t st[2] = {p->shape[1], p->shape[0]}; /* Conv1D stores (in, out) */
    if (src->read(src->ctx, name, tmp, 2, st) != 0) return -1;
    for (int64_t i = 0; i < st[0]; i++)
        for (int64_t o = 0; o < st[1]; o++) p->data[o * st[0] + i] = tmp[i * st[1] + o];
    return 0;
}

/* RoPE tables for positions 0 .. npos-1 (global, and local for Gemma 3's sliding layers), grown
 * on demand up to max_seq: a 128k-position model does not pay for tables it never reads. */
void lg_model_rope_reserve(lg_model *m, int npos) {
    const lg_config *c = &m->cfg;
    if (c->arch != LG_ARCH_LLAMA || npos <= m->rope_len) return;
    const int n = LG_MIN(c->max_seq, LG_MAX(npos, 2 * m->rope_len)), half = c->head_dim / 2;
    double *inv = lg_malloc((size_t)half * sizeof(double)), ms;
    free(m->rope_cos), free(m->rope_sin), free(m->rope_cos_l), free(m->rope_sin_l);
    m->rope_cos_l = m->rope_sin_l = NULL;
    lg_config_rope_freqs(c, 0, inv, &ms);
    lg_rope_tables_freq(n, half, inv, ms, &m->rope_cos, &m->rope_sin);
    int local = 0;
    for (int l = 0; l < c->n_layers; l++) local |= lg_config_local_rope(c, l);
    if (local) {
        lg_config_rope_freqs(c, 1, inv, &ms);
        lg_rope_tables_freq(n, half, inv, ms, &m->rope_cos_l, &m->rope_sin_l);
    }
    free(inv);
    m->rope_len = n;
}

int lg_model_create(const lg_config *c, const lg_weight_src *src, uint64_t seed, const lg_model_opts *opts,
                    lg_model **out) {
    *out = NULL;
    if (lg_config_validate(c) != 0) return -1;
    lg_model *m = lg_calloc(1, sizeof *m);
    m->cfg = *c;
    if (lg_ops_create(opts ? opts->precision : LG_PREC_FP32, &m->ops) != 0) {
        free(m);
        return -1;
    }
    m->logit_block_floats = LOGIT_BLOCK_FLOATS;
    declare_params(m);
    int64_t total = 0, biggest = 0;
    for (int i = 0; i < m->nparams; i++) {
        total += (m->params[i].numel + 15) & ~(int64_t)15; /* 64-byte aligned views */
        if (m->params[i].conv1d) biggest = LG_MAX(biggest, m->params[i].numel);
    }
    m->numel = 0;
    m->param_mem = m->ops->alloc(m->ops, (size_t)total * sizeof(float));
    int64_t off = 0;
    for (int i = 0; i < m->nparams; i++) {
        m->params[i].data = m->param_mem + off;
        off += (m->params[i].numel + 15) & ~(int64_t)15;
        m->numel += m->params[i].numel;
    }
    if (src) {
        float *tmp = biggest ? lg_malloc((size_t)biggest * sizeof(float)) : NULL;
        for (int i = 0; i < m->nparams; i++) {
            if (read_param(src, &m->params[i], tmp) != 0) {
                free(tmp);
                lg_model_free(m);
                return -1;
            }
        }
        free(tmp);
    } else {
        lg_rng rng;
        lg_rng_seed(&rng, seed);
        for (int i = 0; i < m->nparams; i++) {
            lg_param *p = &m->params[i];
            int is_norm_w = p->ndim == 1 && (strstr(p->name, "norm") || strstr(p->name, "ln_")) &&
                            strstr(p->name, ".weight");
            const float norm1 = c->gemma_norms ? 0.0f : 1.0f; /* Gemma stores w of a 1 + w scale */
            for (int64_t e = 0; e < p->numel; e++)
                p->data[e] = is_norm_w ? norm1 : p->ndim == 1 ? 0.0f : 0.02f * lg_rng_normal(&rng);
        }
    }
    m->norm_w1 = lg_malloc((size_t)LG_MAX(c->dim, c->head_dim) * sizeof(float));
    lg_model_rope_reserve(m, LG_MIN(c->max_seq, 1024));
    *out = m;
    return 0;
}

void lg_model_free(lg_model *m) {
    if (!m) return;
    lg_model_unpack(m);
    m->ops->free(m->ops, m->param_mem);
    m->ops->free(m->ops, m->bf16_mem);
    m->ops->free(m->ops, m->grad_mem);
    m->ops->free(m->ops, m->act_mem);
    free(m->acts);
    free(m->drop_snap);
    free(m->params);
    free(m->layers);
    free(m->linears);
    free(m->rope_cos);
    free(m->rope_sin);
    free(m->rope_cos_l);
    free(m->rope_sin_l);
    free(m->norm_w1);
    lg_ops_free(m->ops);
    free(m);
}

const lg_config *lg_model_config(const lg_model *m) { return &m->cfg; }
const lg_ops *lg_model_ops(const lg_model *m) { return m->ops; }
int lg_model_n_params(const lg_model *m) { return m->nparams; }
lg_param *lg_model_param(lg_model *m, int i) { return &m->params[i]; }
int lg_model_n_linears(const lg_model *m) { return m->nlin; }
lg_linear *lg_model_linear(lg_model *m, int i) { return m->linears[i]; }
int64_t lg_model_numel(const lg_model *m) { return m->numel; }
lg_param *lg_model_find_param(lg_model *m, const char *name) {
    for (int i = 0; i < m->nparams; i++)
        if (!strcmp(m->params[i].name, name)) return &m->params[i];
    return NULL;
}

int lg_model_set_trainable(lg_model *m, int (*want)(const lg_param *p, void *ud), void *ud) {
    for (int i = 0; i < m->nparams; i++)
        if (m->params[i].bf16 && (!want || want(&m->params[i], ud)))
            return lg_errorf("%s is stored as bf16 (frozen) and cannot be made trainable", m->params[i].name);
    lg_model_unpack(m); /* a packed copy is only ever made of a frozen weight */
    m->ops->free(m->ops, m->grad_mem);
    m->grad_mem = NULL;
    int64_t total = 0;
    for (int i = 0; i < m->nparams; i++) {
        m->params[i].grad = NULL;
        if (!want || want(&m->params[i], ud)) total += (m->params[i].numel + 15) & ~(int64_t)15;
    }
    if (!total) return 0;
    m->grad_mem = m->ops->alloc(m->ops, (size_t)total * sizeof(float));
    int64_t off = 0;
    for (int i = 0; i < m->nparams; i++) {
        if (!want || want(&m->params[i], ud)) {
            m->params[i].grad = m->grad_mem + off;
            off += (m->params[i].numel + 15) & ~(int64_t)15;
        }
    }
    return 0;
}

void lg_model_zero_grads(lg_model *m) {
    for (int i = 0; i < m->nparams; i++)
        if (m->params[i].grad) memset(m->params[i].grad, 0, (size_t)m->params[i].numel * sizeof(float));
}

/* ------------------------------------------------------------------------------------------ */
/* bf16 storage of frozen weights                                                             */

/* Frozen matrices that reach the GEMMs or the embedding lookup (GPT-2's small position table stays). */
static int is_bf16_candidate(const lg_model *m, const lg_param *p) {
    return p->ndim == 2 && !p->grad && p->data && p != m->wpe;
}

int64_t lg_model_store_frozen_bf16(lg_model *m) {
    int64_t n16 = 0, n32 = 0;
    for (int i = 0; i < m->nparams; i++) {
        const lg_param *p = &m->params[i];
        int64_t a = (p->numel + 31) & ~(int64_t)31; /* 64-byte aligned views in both arenas */
        if (p->bf16) return 0;                       /* already done */
        if (is_bf16_candidate(m, p)) n16 += a;
        else n32 += a;
    }
    if (!n16) return 0;
    lg_model_unpack(m);
    uint16_t *mem16 = m->ops->alloc(m->ops, (size_t)n16 * sizeof(uint16_t));
    float *mem32 = m->ops->alloc(m->ops, (size_t)(n32 ? n32 : 1) * sizeof(float));
    int64_t o16 = 0, o32 = 0;
    for (int i = 0; i < m->nparams; i++) {
        lg_param *p = &m->params[i];
        int64_t a = (p->numel + 31) & ~(int64_t)31;
        if (is_bf16_candidate(m, p)) {
            lg_round_bf16(mem16 + o16, p->data, p->numel);
            p->bf16 = mem16 + o16;
            p->data = NULL;
            o16 += a;
        } else {
            memcpy(mem32 + o32, p->data, (size_t)p->numel * sizeof(float));
            p->data = mem32 + o32;
            o32 += a;
        }
    }
    m->ops->free(m->ops, m->param_mem);
    m->param_mem = mem32;
    m->bf16_mem = mem16;
    return n16 * (int64_t)sizeof(uint16_t);
}

void lg_param_read_f32(const lg_param *p, float *dst) {
    if (!p->bf16) {
        memcpy(dst, p->data, (size_t)p->numel * sizeof(float));
        return;
    }
#pragma omp parallel for schedule(static) if (p->numel > 65536)
    for (int64_t e = 0; e < p->numel; e++) dst[e] = lg_bf16_to_f32(p->bf16[e]);
}

void lg_model_unpack(lg_model *m) {
    for (int i = 0; i < m->nparams; i++) {
        if (m->params[i].packed) m->ops->release_packed(m->ops, m->params[i].packed);
        m->params[i].packed = NULL;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* activation plan                                                                            */

int lg_model_plan(lg_model *m, int B, int T, int training) {
    const lg_config *c = &m->cfg;
    if (B <= 0 || T <= 0) return lg_errorf("batch shape %d x %d is invalid", B, T);
    if (T > c->max_seq) return lg_errorf("sequence length %d exceeds the model's maximum %d", T, c->max_seq);
    if (c->rope_scaling.type == LG_ROPE_LONGROPE && T > c->rope_scaling.original_max)
        return lg_errorf("sequence length %d exceeds original_max_position_embeddings %d: LongRoPE's long factors "
                         "are not implemented (use sequences of at most %d)", T, c->rope_scaling.original_max,
                         c->rope_scaling.original_max);
    lg_model_rope_reserve(m, T);
    int64_t N = (int64_t)B * T, C = c->dim, F = c->hidden_dim, V = c->vocab_size, L = c->n_layers;
    int64_t H = c->n_heads, KV = c->n_kv_heads, qd = (int64_t)c->n_heads * c->head_dim,
            kvd = (int64_t)c->n_kv_heads * c->head_dim;
    int gpt2 = c->arch == LG_ARCH_GPT2;
    int64_t wide = LG_MAX(qd, gpt2 ? 3 * C : qd);
    const int qkn = c->qk_norm, post = c->post_norms, fused = c->fused_qkv || c->fused_gate_up;
    const int64_t fw = fused ? LG_MAX(c->fused_qkv ? qd + 2 * kvd : 0, c->fused_gate_up ? 2 * F : 0) : 0;
    /* Sizes in floats, every slice rounded to 16 floats so views stay 64-byte aligned. */
#define R(x) (((x) + 15) & ~(int64_t)15)
    int64_t per_layer = R(N * C) * 4 /* x xn1 xmid xn2 */ + R(N) * 4 +
                        (gpt2 ? R(N * 3 * C) : R(N * qd) + 2 * R(N * kvd)) + R(B * H * T * T) + R(N * qd) +
                        (gpt2 ? R(N * F) * 2 : R(N * F) * 3) +
                        (qkn ? R(N * qd) + R(N * kvd) + R(N * H) + R(N * KV) : 0) +
                        (post ? 2 * R(N * C) + 2 * R(N) : 0);
    /* what a layer keeps under recomputation: its input (and a post-norm model's MLP output) */
    const int64_t kept = R(N * C) + (post ? R(N * C) + R(N) : 0);
    /* inference: one layer's buffers reused; recompute: every layer's input x plus one shared set
     * of the other activations, refilled per layer in backward */
    const int recompute = training == LG_PLAN_RECOMPUTE;
    int64_t layers_total = !training ? per_layer : recompute ? (L - 1) * kept + per_layer : L * per_layer;
    /* Training with a frozen LM head: the logits are formed, turned into their loss gradient and
     * multiplied back through the head a block of rows at a time (forward), so only one block of
     * N x V is ever held; otherwise all N rows (inference reads them; a trainable head keeps the
     * whole-batch GEMMs). */
    const int64_t logit_rows = training && !m->lm_head->grad
                                   ? LG_MIN(N, LG_MAX((int64_t)16, m->logit_block_floats / V))
                                   : N;
    int64_t rest = R(N * C) * 3 /* x_final xnf tmp */ + R(N) * 2 + R(logit_rows * V) + (fused ? R(N * fw) : 0);
    int64_t grads = training ? R(N * C) * 3 + R(N * wide) * 6 + R(N * F) * 3 + (fused ? R(N * fw) : 0) +
                                   (post ? R(N * C) : 0)
                             : 0;
    int64_t total = layers_total + rest + grads;
    if (total > m->act_cap) { /* grow only: re-slicing a big enough arena allocates nothing */
        m->ops->free(m->ops, m->act_mem);
        m->act_mem = m->ops->alloc(m->ops, (size_t)total * sizeof(float));
        m->act_cap = total;
    }
    if (!m->acts) m->acts = lg_calloc((size_t)L, sizeof(layer_acts));
    float *p = m->act_mem;
#define TAKE(n) (p += R(n), p - R(n))
    for (int64_t l = 0; l < L; l++) {
        layer_acts *a = &m->acts[l];
        if (!training && l > 0) {
            *a = m->acts[0];
            continue;
        }
        if (recompute && l > 0) {
            *a = m->acts[0];
            a->x = TAKE(N * C);
            if (post) {
                a->mo = TAKE(N * C);
                a->rstd_pf = TAKE(N);
            }
            continue;
        }
        memset(a, 0, sizeof *a);
        a->x = TAKE(N * C);
        a->xn1 = TAKE(N * C);
        a->mean1 = TAKE(N);
        a->rstd1 = TAKE(N);
        if (gpt2) {
            a->qkv = TAKE(N * 3 * C);
            a->q = a->qkv;
            a->k = a->qkv + C;
            a->v = a->qkv + 2 * C;
        } else {
            a->q = TAKE(N * qd);
            a->k = TAKE(N * kvd);
            a->v = TAKE(N * kvd);
        }
        a->probs = TAKE(B * H * T * T);
        a->att = TAKE(N * qd);
        a->xmid = TAKE(N * C);
        a->xn2 = TAKE(N * C);
        a->mean2 = TAKE(N);
        a->rstd2 = TAKE(N);
        if (gpt2) {
            a->up = TAKE(N * F);
            a->h = TAKE(N * F);
        } else {
            a->gate = TAKE(N * F);
            a->up = TAKE(N * F);
            a->h = TAKE(N * F);
        }
        if (qkn) {
            a->qraw = TAKE(N * qd);
            a->kraw = TAKE(N * kvd);
            a->rstd_q = TAKE(N * H);
            a->rstd_k = TAKE(N * KV);
        }
        if (post) {
            a->ao = TAKE(N * C);
            a->rstd_pa = TAKE(N);
            a->mo = TAKE(N * C);
            a->rstd_pf = TAKE(N);
        }
    }
    m->x_final = TAKE(N * C);
    m->xnf = TAKE(N * C);
    m->tmp = TAKE(N * C);
    float *fbuf = fused ? TAKE(N * fw) : NULL;
    for (int64_t l = 0; l < L; l++) m->acts[l].tmp = m->tmp, m->acts[l].fused = fbuf;
    m->meanf = TAKE(N);
    m->rstdf = TAKE(N);
    m->logits = TAKE(logit_rows * V);
    m->logit_rows = (int)logit_rows;
    m->dfused = m->dpost = NULL;
    if (training) {
        m->dres = TAKE(N * C);
        m->dxn = TAKE(N * C);
        m->dlogit_x = TAKE(N * C);
        m->datt = TAKE(N * wide);
        m->dq = TAKE(N * wide);
        m->dk = TAKE(N * wide);
        m->dv = TAKE(N * wide);
        m->dq2 = TAKE(N * wide);
        m->dk2 = TAKE(N * wide);
        m->dgate = TAKE(N * F);
        m->dup = TAKE(N * F);
        m->dh = TAKE(N * F);
        if (fused) m->dfused = TAKE(N * fw);
        if (post) m->dpost = TAKE(N * C);
    }
    if (p - m->act_mem != total) { /* the sizes above and the slices must agree */
        fprintf(stderr, "internal error: activation plan %lld != %lld floats\n", (long long)(p - m->act_mem),
                (long long)total);
        abort();
    }
#undef TAKE
#undef R
    if (recompute && !m->drop_snap) /* 7 linear layers a block at most */
        m->drop_snap = lg_calloc((size_t)L * 7, sizeof(uint64_t));
    m->act_floats = total;
    m->B = B;
    m->T = T;
    m->training = training;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* linear layers: the base GEMM plus the optional adapter                                     */

static void linear_fwd(lg_model *m, lg_linear *l, float *y, const float *x, int N, int training) {
    m->ops->linear_forward(m->ops, y, x, lg_param_weight(l->w, !training), l->b ? l->b->data : NULL, N, l->in, l->out);
    if (l->adapter) lg_adapter_forward(l->adapter, l, y, x, N, training);
}

/* dx += dy W (+ adapter path);  dW, db only when the base weight is trainable. */
static void linear_bwd(lg_model *m, lg_linear *l, float *dx, const float *dy, const float *x, int N) {
    const float *dyb = l->adapter ? lg_adapter_backward(l->adapter, l, dx, dy, x, N) : dy;
    float *db = l->b ? l->b->grad : NULL;
    const lg_weight w = lg_param_weight(l->w, 0);
    /* the bias sees the layer's own dy; the base weight the (DoRA-scaled) dyb */
    m->ops->linear_backward(m->ops, dx, l->w->grad, dyb == dy ? db : NULL, dyb, x, w, N, l->in, l->out, 1.0f);
    if (dyb != dy && db) m->ops->linear_backward(m->ops, NULL, NULL, db, dy, x, w, N, l->in, l->out, 1.0f);
    if (l->grad_hook) l->grad_hook(l, dyb, x, N, l->grad_hook_ud);
}

/* The weight an RMSNorm multiplies by: w, or Gemma's 1 + w (formed in a small scratch, so that the
 * parameter stays Hugging Face's w and its gradient is the same: d(1 + w)/dw = 1). */
static const float *norm_scale(lg_model *m, const lg_param *w, int C) {
    if (!m->cfg.gemma_norms) return w->data;
    for (int i = 0; i < C; i++) m->norm_w1[i] = 1.0f + w->data[i];
    return m->norm_w1;
}

/* RMSNorm of `rows` rows of width C (the model width, or one head for the q/k norms). */
static void rms_fwd(lg_model *m, float *out, float *rstd, const float *x, lg_param *w, int rows, int C) {
    m->ops->rmsnorm_forward(m->ops, out, rstd, x, norm_scale(m, w, C), rows, C, m->cfg.norm_eps);
}
static void rms_bwd(lg_model *m, float *dx, const float *dout, const float *x, lg_param *w, const float *rstd, int rows,
                    int C) {
    m->ops->rmsnorm_backward(m->ops, dx, w->grad, dout, x, norm_scale(m, w, C), rstd, rows, C);
}

static void norm_fwd(lg_model *m, float *out, float *mean, float *rstd, const float *x, lg_param *w, lg_param *b,
                     int N) {
    if (m->cfg.arch == LG_ARCH_GPT2)
        m->ops->layernorm_forward(m->ops, out, mean, rstd, x, w->data, b->data, N, m->cfg.dim, m->cfg.norm_eps);
    else
        rms_fwd(m, out, rstd, x, w, N, m->cfg.dim);
}

static void norm_bwd(lg_model *m, float *dx, const float *dout, const float *x, lg_param *w, lg_param *b,
                     const float *mean, const float *rstd, int N) {
    if (m->cfg.arch == LG_ARCH_GPT2)
        m->ops->layernorm_backward(m->ops, dx, w->grad, b->grad, dout, x, w->data, mean, rstd, N, m->cfg.dim);
    else
        rms_bwd(m, dx, dout, x, w, rstd, N, m->cfg.dim);
}

void lg_final_norm(lg_model *m, float *xn, float *mean, float *rstd, const float *x, int N) {
    norm_fwd(m, xn, mean, rstd, x, m->normf_w, m->normf_b, N);
}

void lg_embed(lg_model *m, float *x, const int *ids, int B, int T, int pos0) {
    const lg_config *c = &m->cfg;
    const long n = (long)B * T * c->dim;
    m->ops->embedding_forward(m->ops, x, ids, lg_param_weight(m->wte, 0), B * T, c->dim);
    if (c->embed_scale > 0)
        for (long i = 0; i < n; i++) x[i] *= c->embed_scale;
    if (c->arch == LG_ARCH_GPT2) m->ops->posemb_forward(m->ops, x, m->wpe->data, B, T, c->dim, pos0);
}

void lg_model_head(lg_model *m, float *logits, const float *xn, int N) {
    const lg_config *c = &m->cfg;
    m->ops->linear_forward(m->ops, logits, xn, lg_param_weight(m->lm_head, 1), NULL, N, c->dim, c->vocab_size);
    if (c->final_softcap > 0) m->ops->softcap_forward(m->ops, logits, logits, (long)N * c->vocab_size, c->final_softcap);
}

/* Loss over rows of logits (soft-capped first when the model says so; capped: they already are). */
static double model_ce(lg_model *m, float *logits, const int *tg, const float *w, int N, int capped, int want_grad) {
    const lg_config *c = &m->cfg;
    if (c->final_softcap > 0)
        return m->ops->cross_entropy_softcap(m->ops, logits, tg, w, N, c->vocab_size, c->final_softcap, capped, 1.0f,
                                             want_grad);
    return m->ops->cross_entropy(m->ops, logits, tg, w, N, c->vocab_size, 1.0f, want_grad);
}

/* ------------------------------------------------------------------------------------------ */
/* forward                                                                                    */

/* The linear layers of one block, in forward order. */
static int block_linears(const lg_model *m, lg_layer *y, lg_linear **out) {
    int k = 0;
    if (m->cfg.arch == LG_ARCH_GPT2) {
        out[k++] = &y->qkv, out[k++] = &y->o, out[k++] = &y->up, out[k++] = &y->down;
    } else {
        if (m->cfg.fused_qkv) out[k++] = &y->qkv;
        else out[k++] = &y->q, out[k++] = &y->k, out[k++] = &y->v;
        out[k++] = &y->o;
        if (m->cfg.fused_gate_up) out[k++] = &y->gate_up;
        else out[k++] = &y->gate, out[k++] = &y->up;
        out[k++] = &y->down;
    }
    return k;
}

/* The LoRA family draws a fresh dropout mask per training forward from a call counter; replaying
 * a block in backward must see the same masks, so the counters are noted before the block's
 * first forward and rewound before the replay -- except the down projection's, which the replay
 * does not run (its adapter still holds its forward state). NULL: no such counter. */
static uint64_t *drop_counter(lg_linear *l) {
    if (!l->adapter) return NULL;
    const char *k = l->adapter->vt->kind;
    if (strcmp(k, "lora") && strcmp(k, "dora") && strcmp(k, "adalora")) return NULL;
    return &((lg_lora *)l->adapter)->drop_calls; /* lg_lora starts with its lg_adapter header */
}

static void drop_counters(lg_model *m, int l, int restore) {
    lg_linear *ls[7];
    int n = block_linears(m, &m->layers[l], ls);
    for (int i = 0; i < n; i++) {
        uint64_t *c = ls[i] == &m->layers[l].down && restore ? NULL : drop_counter(ls[i]);
        if (c && restore) *c = m->drop_snap[(size_t)l * 7 + i];
        else if (c) m->drop_snap[(size_t)l * 7 + i] = *c;
    }
}

/* Layer l's attention options: score scale, soft cap, and its window when it is a sliding layer. */
static lg_attn_params layer_attn(const lg_config *c, int l) {
    lg_attn_params p = lg_attn_default(c->head_dim);
    if (c->attn_scale > 0) p.scale = c->attn_scale;
    p.softcap = c->attn_softcap;
    p.window = c->swa_layers[l] ? c->sliding_window : 0;
    return p;
}

/* Whether the options change anything for keys 0 .. npos-1 (else the plain kernels run). */
static int attn_needs_ex(const lg_attn_params *p, int hd, int npos) {
    return p->scale != lg_attn_default(hd).scale || p->softcap > 0 || (p->window > 0 && p->window < npos);
}

/* Columns [c0, c0 + w) of the rows of src (stride lds) into dense rows of dst (width w), and back. */
static void take_cols(float *dst, const float *src, int lds, int c0, int w, int rows) {
    for (int i = 0; i < rows; i++) memcpy(dst + (size_t)i * w, src + (size_t)i * lds + c0, (size_t)w * sizeof(float));
}
static void put_cols(float *dst, int ldd, int c0, const float *src, int w, int rows) {
    for (int i = 0; i < rows; i++) memcpy(dst + (size_t)i * ldd + c0, src + (size_t)i * w, (size_t)w * sizeof(float));
}

/* RoPE tables of layer l: Gemma 3's sliding layers have their own base. */
static void layer_rope(const lg_model *m, int l, const float **cos, const float **sin) {
    const int local = m->rope_cos_l && lg_config_local_rope(&m->cfg, l);
    *cos = local ? m->rope_cos_l : m->rope_cos;
    *sin = local ? m->rope_sin_l : m->rope_sin;
}

void lg_block_forward(lg_model *m, int l, layer_acts *a, int B, int T, const lg_kv_view *kv, int training,
                      float *out) {
    const lg_config *c = &m->cfg;
    const lg_ops *ops = m->ops;
    const int N = B * T, C = c->dim, H = c->n_heads, KV = c->n_kv_heads, hd = c->head_dim, F = c->hidden_dim;
    const int qd = H * hd, kvd = KV * hd, gpt2 = c->arch == LG_ARCH_GPT2, pos0 = kv ? kv->pos0 : 0;
    lg_layer *y = &m->layers[l];
    norm_fwd(m, a->xn1, a->mean1, a->rstd1, a->x, y->norm1_w, y->norm1_b, N);
    /* with a cache, the new keys/values go straight into its rows at pos0 */
    float *k = kv ? kv->K + (size_t)pos0 * kvd : a->k, *v = kv ? kv->V + (size_t)pos0 * kvd : a->v;
    int ldq, ldkv;
    if (gpt2) {
        linear_fwd(m, &y->qkv, a->qkv, a->xn1, N, training);
        ldq = ldkv = 3 * C;
        if (kv) {
            for (int i = 0; i < N; i++) {
                memcpy(k + (size_t)i * kvd, a->qkv + (size_t)i * 3 * C + C, (size_t)C * sizeof(float));
                memcpy(v + (size_t)i * kvd, a->qkv + (size_t)i * 3 * C + 2 * C, (size_t)C * sizeof(float));
            }
            ldkv = kvd;
        } else {
            k = a->k, v = a->v;
        }
    } else {
        /* q, k before their per-head norm go to qraw/kraw (qk_norm), else straight to q, k */
        float *qp = c->qk_norm ? a->qraw : a->q, *kp = c->qk_norm ? a->kraw : k;
        if (c->fused_qkv) {
            const int w = qd + 2 * kvd;
            linear_fwd(m, &y->qkv, a->fused, a->xn1, N, training);
            take_cols(qp, a->fused, w, 0, qd, N);
            take_cols(kp, a->fused, w, qd, kvd, N);
            take_cols(v, a->fused, w, qd + kvd, kvd, N);
        } else {
            linear_fwd(m, &y->q, qp, a->xn1, N, training);
            linear_fwd(m, &y->k, kp, a->xn1, N, training);
            linear_fwd(m, &y->v, v, a->xn1, N, training);
        }
        if (c->qk_norm) {
            rms_fwd(m, a->q, a->rstd_q, a->qraw, y->q_norm_w, N * H, hd);
            rms_fwd(m, k, a->rstd_k, a->kraw, y->k_norm_w, N * KV, hd);
        }
        const float *rc, *rs;
        layer_rope(m, l, &rc, &rs);
        ops->rope_forward(ops, a->q, a->q, qd, B, T, H, hd, pos0, rc, rs, c->rope_style);
        ops->rope_forward(ops, k, k, kvd, B, T, KV, hd, pos0, rc, rs, c->rope_style);
        ldq = qd;
        ldkv = kvd;
    }
    const lg_attn_params ap = layer_attn(c, l);
    if (kv && attn_needs_ex(&ap, hd, pos0 + T))
        ops->attention_ex_decode(ops, a->att, a->q, ldq, kv->K, kv->V, kvd, T, pos0, H, KV, hd, &ap);
    else if (kv)
        ops->attention_decode(ops, a->att, a->q, ldq, kv->K, kv->V, kvd, T, pos0, H, KV, hd);
    else if (attn_needs_ex(&ap, hd, T))
        ops->attention_ex_forward(ops, a->att, a->probs, a->q, ldq, k, ldkv, v, ldkv, B, T, H, KV, hd, &ap);
    else
        ops->attention_forward(ops, a->att, a->probs, a->q, ldq, k, ldkv, v, ldkv, B, T, H, KV, hd);
    if (c->post_norms) {
        linear_fwd(m, &y->o, a->ao, a->att, N, training);
        rms_fwd(m, a->tmp, a->rstd_pa, a->ao, y->post_attn_w, N, C);
    } else {
        linear_fwd(m, &y->o, a->tmp, a->att, N, training);
    }
    for (long i = 0; i < (long)N * C; i++) a->xmid[i] = a->x[i] + a->tmp[i];
    norm_fwd(m, a->xn2, a->mean2, a->rstd2, a->xmid, y->norm2_w, y->norm2_b, N);
    if (gpt2) {
        linear_fwd(m, &y->up, a->up, a->xn2, N, training);
        ops->gelu_forward(ops, a->h, a->up, (long)N * F);
    } else {
        if (c->fused_gate_up) {
            linear_fwd(m, &y->gate_up, a->fused, a->xn2, N, training);
            take_cols(a->gate, a->fused, 2 * F, 0, F, N);
            take_cols(a->up, a->fused, 2 * F, F, F, N);
        } else {
            linear_fwd(m, &y->gate, a->gate, a->xn2, N, training);
            linear_fwd(m, &y->up, a->up, a->xn2, N, training);
        }
        if (c->mlp_act == LG_MLP_GEGLU) ops->geglu_forward(ops, a->h, a->gate, a->up, (long)N * F);
        else ops->swiglu_forward(ops, a->h, a->gate, a->up, (long)N * F);
    }
    if (!out) return; /* a replay in backward needs nothing past h */
    if (c->post_norms) {
        linear_fwd(m, &y->down, a->mo, a->h, N, training);
        rms_fwd(m, a->tmp, a->rstd_pf, a->mo, y->post_ffn_w, N, C);
    } else {
        linear_fwd(m, &y->down, a->tmp, a->h, N, training);
    }
    for (long i = 0; i < (long)N * C; i++) out[i] = a->xmid[i] + a->tmp[i];
}

float lg_model_forward(lg_model *m, const lg_batch *b, double *wsum_out) {
    const lg_config *c = &m->cfg;
    const lg_ops *ops = m->ops;
    int B = b->B, T = b->T, N = B * T, C = c->dim;
    /* a plan made for blocked logits is stale once the head trains */
    int stale = m->act_mem && m->logit_rows < N && m->lm_head->grad;
    if ((!m->act_mem || B != m->B || T != m->T || stale) &&
        lg_model_plan(m, B, T, m->act_mem ? m->training : 0) != 0) {
        if (wsum_out) *wsum_out = 0;
        return NAN; /* the message is in lg_last_error() */
    }
    const int training = m->training != 0, pack = !training;

    float *x = m->acts[0].x;
    lg_embed(m, x, b->inputs, B, T, 0);

    for (int l = 0; l < c->n_layers; l++) {
        layer_acts *a = &m->acts[l];
        if (a->x != x) memcpy(a->x, x, (size_t)N * C * sizeof(float));
        if (m->training == LG_PLAN_RECOMPUTE) drop_counters(m, l, 0);
        float *next = (l + 1 < c->n_layers) ? m->acts[l + 1].x : m->x_final;
        if (next == a->x) next = m->x_final; /* inference plan: one layer buffer reused */
        lg_block_forward(m, l, a, B, T, NULL, training, next);
        x = next;
    }
    if (x != m->x_final) memcpy(m->x_final, x, (size_t)N * C * sizeof(float));
    norm_fwd(m, m->xnf, m->meanf, m->rstdf, m->x_final, m->normf_w, m->normf_b, N);
    double wsum = 0;
    for (int i = 0; i < N; i++) wsum += b->weight[i];
    if (wsum_out) *wsum_out = wsum;
    const int V = c->vocab_size;
    const lg_weight head = lg_param_weight(m->lm_head, pack);
    double nll = 0;
    if (m->logit_rows < N) {
        /* Blocked (training, frozen head): per block of rows, logits -> loss and
         * d(sum w·nll)/dlogits in place -> dlogit_x = that gradient times W (unscaled; backward
         * applies its loss scale). The block stays in cache between the three passes. */
        memset(m->dlogit_x, 0, (size_t)N * C * sizeof(float));
        for (int i0 = 0; i0 < N; i0 += m->logit_rows) {
            const int nr = LG_MIN(m->logit_rows, N - i0);
            ops->linear_forward(ops, m->logits, m->xnf + (int64_t)i0 * C, head, NULL, nr, C, V);
            nll += model_ce(m, m->logits, b->targets + i0, b->weight + i0, nr, 0, 1);
            ops->linear_backward(ops, m->dlogit_x + (int64_t)i0 * C, NULL, NULL, m->logits, NULL, head, nr, C, V,
                                 1.0f);
        }
        m->dlogit_ready = 1;
        m->logits_hold_grad = 0;
        return wsum > 0 ? (float)(nll / wsum) : NAN;
    }
    ops->linear_forward(ops, m->logits, m->xnf, head, NULL, N, C, V);
    /* Training: loss and d(sum w·nll)/dlogits in one pass over the logits (in place; backward
     * applies its loss scale in the lm_head GEMMs). Inference: the logits stay readable. */
    nll = model_ce(m, m->logits, b->targets, b->weight, N, 0, training);
    m->logits_hold_grad = training;
    m->dlogit_ready = 0;
    return wsum > 0 ? (float)(nll / wsum) : NAN;
}

const float *lg_model_logits(const lg_model *m) { return m->logits; }

int64_t lg_model_activation_bytes(const lg_model *m) { return m->act_floats * (int64_t)sizeof(float); }

/* ------------------------------------------------------------------------------------------ */
/* backward                                                                                   */

void lg_model_backward(lg_model *m, const lg_batch *b, float loss_scale) {
    const lg_config *c = &m->cfg;
    const lg_ops *ops = m->ops;
    int B = b->B, T = b->T, N = B * T, C = c->dim, H = c->n_heads, KV = c->n_kv_heads, hd = c->head_dim;
    int F = c->hidden_dim, qd = H * hd, kvd = KV * hd, gpt2 = c->arch == LG_ARCH_GPT2;
    size_t NC = (size_t)N * C * sizeof(float), NF = (size_t)N * F * sizeof(float);

    /* loss -> logits -> final norm. The training forward left d(sum w·nll)/dlogits in the logits;
     * loss_scale is applied as the GEMMs' scale (dX = s·dL W, dW += s·dL^T X). */
    const int V = c->vocab_size;
    if (m->dlogit_ready) { /* blocked forward: dlogit_x holds the unscaled gradient */
        const int64_t nc = (int64_t)N * C;
        float *d = m->dlogit_x;
#pragma omp parallel for simd schedule(static) if (nc > 65536)
        for (int64_t i = 0; i < nc; i++) d[i] *= loss_scale;
    } else {
        /* an inference forward left the (soft-capped) logits themselves */
        if (!m->logits_hold_grad) model_ce(m, m->logits, b->targets, b->weight, N, 1, 1);
        memset(m->dlogit_x, 0, NC);
        ops->linear_backward(ops, m->dlogit_x, m->lm_head->grad, NULL, m->logits, m->xnf,
                             lg_param_weight(m->lm_head, 0), N, C, V, loss_scale);
    }
    m->logits_hold_grad = 0;
    m->dlogit_ready = 0;
    memset(m->dres, 0, NC);
    norm_bwd(m, m->dres, m->dlogit_x, m->x_final, m->normf_w, m->normf_b, m->meanf, m->rstdf, N);

    for (int l = c->n_layers - 1; l >= 0; l--) {
        lg_layer *y = &m->layers[l];
        layer_acts *a = &m->acts[l];
        /* Recomputation: the shared buffers still hold the last block from the forward; the
         * others are replayed from their saved input, with the forward's dropout masks. */
        if (m->training == LG_PLAN_RECOMPUTE && l < c->n_layers - 1) {
            drop_counters(m, l, 1);
            lg_block_forward(m, l, a, B, T, NULL, 1, NULL);
        }
        /* MLP: x' = xmid + down(h) (post_norms: + rmsnorm(down(h))); dres is d x' and becomes d xmid */
        const float *ddown = m->dres;
        if (c->post_norms) {
            memset(m->dpost, 0, NC);
            rms_bwd(m, m->dpost, m->dres, a->mo, y->post_ffn_w, a->rstd_pf, N, C);
            ddown = m->dpost;
        }
        memset(m->dh, 0, NF);
        linear_bwd(m, &y->down, m->dh, ddown, a->h, N);
        memset(m->dup, 0, NF);
        memset(m->dxn, 0, NC);
        if (gpt2) {
            ops->gelu_backward(ops, m->dup, m->dh, a->up, (long)N * F);
            linear_bwd(m, &y->up, m->dxn, m->dup, a->xn2, N);
        } else {
            memset(m->dgate, 0, NF);
            if (c->mlp_act == LG_MLP_GEGLU)
                ops->geglu_backward(ops, m->dgate, m->dup, m->dh, a->gate, a->up, (long)N * F);
            else
                ops->swiglu_backward(ops, m->dgate, m->dup, m->dh, a->gate, a->up, (long)N * F);
            if (c->fused_gate_up) {
                put_cols(m->dfused, 2 * F, 0, m->dgate, F, N);
                put_cols(m->dfused, 2 * F, F, m->dup, F, N);
                linear_bwd(m, &y->gate_up, m->dxn, m->dfused, a->xn2, N);
            } else {
                linear_bwd(m, &y->gate, m->dxn, m->dgate, a->xn2, N);
                linear_bwd(m, &y->up, m->dxn, m->dup, a->xn2, N);
            }
        }
        norm_bwd(m, m->dres, m->dxn, a->xmid, y->norm2_w, y->norm2_b, a->mean2, a->rstd2, N);

        /* attention: xmid = x + o(att) (post_norms: + rmsnorm(o(att))); dres becomes d x */
        const float *dao = m->dres;
        if (c->post_norms) {
            memset(m->dpost, 0, NC);
            rms_bwd(m, m->dpost, m->dres, a->ao, y->post_attn_w, a->rstd_pa, N, C);
            dao = m->dpost;
        }
        memset(m->datt, 0, (size_t)N * qd * sizeof(float));
        linear_bwd(m, &y->o, m->datt, dao, a->att, N);
        memset(m->dxn, 0, NC);
        if (gpt2) {
            float *dqkv = m->dq;
            memset(dqkv, 0, (size_t)N * 3 * C * sizeof(float));
            ops->attention_backward(ops, dqkv, dqkv + C, dqkv + 2 * C, m->datt, a->q, 3 * C, a->k, 3 * C, a->v,
                                    3 * C, a->probs, B, T, H, KV, hd);
            linear_bwd(m, &y->qkv, m->dxn, dqkv, a->xn1, N);
        } else {
            memset(m->dq, 0, (size_t)N * qd * sizeof(float));
            memset(m->dk, 0, (size_t)N * kvd * sizeof(float));
            memset(m->dv, 0, (size_t)N * kvd * sizeof(float));
            const lg_attn_params ap = layer_attn(c, l);
            if (attn_needs_ex(&ap, hd, T))
                ops->attention_ex_backward(ops, m->dq, m->dk, m->dv, m->datt, a->q, qd, a->k, kvd, a->v, kvd, a->probs,
                                           B, T, H, KV, hd, &ap);
            else
                ops->attention_backward(ops, m->dq, m->dk, m->dv, m->datt, a->q, qd, a->k, kvd, a->v, kvd, a->probs,
                                        B, T, H, KV, hd);
            const float *rc, *rs;
            layer_rope(m, l, &rc, &rs);
            memset(m->dq2, 0, (size_t)N * qd * sizeof(float));
            memset(m->dk2, 0, (size_t)N * kvd * sizeof(float));
            ops->rope_backward(ops, m->dq2, m->dq, qd, B, T, H, hd, 0, rc, rs, c->rope_style);
            ops->rope_backward(ops, m->dk2, m->dk, kvd, B, T, KV, hd, 0, rc, rs, c->rope_style);
            /* through the per-head norms: the gradients at qraw/kraw reuse dq/dk */
            float *gq = m->dq2, *gk = m->dk2;
            if (c->qk_norm) {
                memset(m->dq, 0, (size_t)N * qd * sizeof(float));
                memset(m->dk, 0, (size_t)N * kvd * sizeof(float));
                rms_bwd(m, m->dq, m->dq2, a->qraw, y->q_norm_w, a->rstd_q, N * H, hd);
                rms_bwd(m, m->dk, m->dk2, a->kraw, y->k_norm_w, a->rstd_k, N * KV, hd);
                gq = m->dq, gk = m->dk;
            }
            if (c->fused_qkv) {
                const int w = qd + 2 * kvd;
                put_cols(m->dfused, w, 0, gq, qd, N);
                put_cols(m->dfused, w, qd, gk, kvd, N);
                put_cols(m->dfused, w, qd + kvd, m->dv, kvd, N);
                linear_bwd(m, &y->qkv, m->dxn, m->dfused, a->xn1, N);
            } else {
                linear_bwd(m, &y->q, m->dxn, gq, a->xn1, N);
                linear_bwd(m, &y->k, m->dxn, gk, a->xn1, N);
                linear_bwd(m, &y->v, m->dxn, m->dv, a->xn1, N);
            }
        }
        norm_bwd(m, m->dres, m->dxn, a->x, y->norm1_w, y->norm1_b, a->mean1, a->rstd1, N);
    }
    if (c->embed_scale > 0) /* x0 = s * embedding: the table sees s * d x0 */
        for (long i = 0; i < (long)N * C; i++) m->dres[i] *= c->embed_scale;
    if (m->wte->grad) ops->embedding_backward(ops, m->wte->grad, m->dres, b->inputs, N, C);
    if (gpt2 && m->wpe->grad) ops->posemb_backward(ops, m->wpe->grad, m->dres, B, T, C, 0);
}
