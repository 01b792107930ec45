/* generate.c — key/value-cache inference, sampling, generation and streamed text (generate.h).
 *
 * The incremental forward is the decoder's own block forward (lg_block_forward, model.c) run on
 * the rows being fed with a key/value cache: the new keys/values are written into the cache and
 * the queries attend over every cached position (ops->attention_decode) instead of a T x T block. */
#include "model/generate.h"
#include "model/model_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK 256 /* rows fed per pass: bounds the scratch however long the prompt */

struct lg_kv {
    lg_model *m;
    int cap, len, chunk, kvd;
    int alloc; /* positions allocated: grows up to cap, so a large context costs only what is used */
    int *ids;
    float *K, *V;   /* per layer alloc x kvd, keys after RoPE */
    layer_acts a;   /* the block's buffers for chunk rows (no probs: attention reads the cache) */
    float *xn, *mean, *rstd; /* final norm of the last rows */
};

int lg_kv_create(lg_model *m, int cap, lg_kv **out) {
    *out = NULL;
    const lg_config *c = &m->cfg;
    const lg_ops *o = m->ops;
    /* LongRoPE switches to its long factors past original_max (not implemented): contexts stop there */
    const int longrope = c->rope_scaling.type == LG_ROPE_LONGROPE, lmax = c->rope_scaling.original_max;
    if (cap <= 0) cap = longrope ? LG_MIN(c->max_seq, lmax) : c->max_seq;
    if (cap > c->max_seq) return lg_errorf("context of %d positions exceeds the model's maximum %d", cap, c->max_seq);
    if (longrope && cap > lmax)
        return lg_errorf("context of %d positions exceeds original_max_position_embeddings %d: LongRoPE's long "
                         "factors are not implemented", cap, lmax);
    lg_model_rope_reserve(m, cap);
    lg_kv *kv = lg_calloc(1, sizeof *kv);
    kv->m = m;
    kv->cap = cap;
    kv->chunk = LG_MIN(cap, CHUNK);
    kv->kvd = c->n_kv_heads * c->head_dim;
    const size_t n = (size_t)kv->chunk, C = (size_t)c->dim, F = (size_t)c->hidden_dim, f = sizeof(float);
    const size_t qd = (size_t)c->n_heads * c->head_dim;
    kv->ids = lg_malloc((size_t)cap * sizeof(int));
    layer_acts *a = &kv->a;
    a->x = o->alloc(o, n * C * f);
    a->xn1 = o->alloc(o, n * C * f);
    a->xmid = o->alloc(o, n * C * f);
    a->xn2 = o->alloc(o, n * C * f);
    a->tmp = o->alloc(o, n * C * f);
    a->mean1 = o->alloc(o, n * f), a->rstd1 = o->alloc(o, n * f);
    a->mean2 = o->alloc(o, n * f), a->rstd2 = o->alloc(o, n * f);
    if (c->arch == LG_ARCH_GPT2) {
        a->qkv = o->alloc(o, n * 3 * C * f);
        a->q = a->qkv; /* k and v are copied from the slices into the cache */
    } else {
        a->q = o->alloc(o, n * qd * f);
        a->gate = o->alloc(o, n * F * f);
    }
    const size_t kvd = (size_t)kv->kvd;
    if (c->qk_norm) {
        a->qraw = o->alloc(o, n * qd * f), a->kraw = o->alloc(o, n * kvd * f);
        a->rstd_q = o->alloc(o, n * (size_t)c->n_heads * f), a->rstd_k = o->alloc(o, n * (size_t)c->n_kv_heads * f);
    }
    if (c->post_norms) {
        a->ao = o->alloc(o, n * C * f), a->mo = o->alloc(o, n * C * f);
        a->rstd_pa = o->alloc(o, n * f), a->rstd_pf = o->alloc(o, n * f);
    }
    if (c->fused_qkv || c->fused_gate_up)
        a->fused = o->alloc(o, n * LG_MAX(c->fused_qkv ? qd + 2 * kvd : 0, c->fused_gate_up ? 2 * F : 0) * f);
    a->att = o->alloc(o, n * qd * f);
    a->up = o->alloc(o, n * F * f);
    a->h = o->alloc(o, n * F * f);
    kv->xn = o->alloc(o, n * C * f);
    kv->mean = o->alloc(o, n * f);
    kv->rstd = o->alloc(o, n * f);
    *out = kv;
    return 0;
}

/* Room for `need` positions: grow geometrically (up to cap), keeping the cached rows. */
static void kv_reserve(lg_kv *kv, int need) {
    if (need <= kv->alloc) return;
    const lg_ops *o = kv->m->ops;
    const int na = LG_MIN(kv->cap, LG_MAX(need, LG_MAX(2 * kv->alloc, 256)));
    const size_t L = (size_t)kv->m->cfg.n_layers, row = (size_t)kv->kvd * sizeof(float);
    float *K = o->alloc(o, L * na * row), *V = o->alloc(o, L * na * row);
    for (size_t l = 0; l < L && kv->len > 0; l++) {
        memcpy(K + l * na * kv->kvd, kv->K + l * kv->alloc * kv->kvd, (size_t)kv->len * row);
        memcpy(V + l * na * kv->kvd, kv->V + l * kv->alloc * kv->kvd, (size_t)kv->len * row);
    }
    o->free(o, kv->K);
    o->free(o, kv->V);
    kv->K = K, kv->V = V;
    kv->alloc = na;
}

void lg_kv_free(lg_kv *kv) {
    if (!kv) return;
    const lg_ops *o = kv->m->ops;
    layer_acts *a = &kv->a;
    float *bufs[] = {kv->K,    kv->V,    a->x,     a->xn1,  a->xmid, a->xn2,   a->tmp, a->mean1, a->rstd1,
                     a->mean2, a->rstd2, a->qkv ? a->qkv : a->q, a->gate, a->att, a->up, a->h, kv->xn,
                     kv->mean, kv->rstd, a->qraw, a->kraw, a->rstd_q, a->rstd_k, a->ao, a->mo, a->rstd_pa,
                     a->rstd_pf, a->fused};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) o->free(o, bufs[i]);
    free(kv->ids);
    free(kv);
}

int lg_kv_len(const lg_kv *kv) { return kv->len; }
int lg_kv_cap(const lg_kv *kv) { return kv->cap; }
const int *lg_kv_ids(const lg_kv *kv) { return kv->ids; }
void lg_kv_truncate(lg_kv *kv, int len) {
    if (len >= 0 && len < kv->len) kv->len = len;
}
int lg_kv_common_prefix(const lg_kv *kv, const int *ids, int n) {
    int k = 0;
    while (k < kv->len && k < n && kv->ids[k] == ids[k]) k++;
    return k;
}

/* ---- the incremental forward ------------------------------------------------------------------ */

/* One pass over n <= chunk rows at positions kv->len..; logits of rows [lo, n) into lg (rows x V). */
static void feed_chunk(lg_kv *kv, const int *ids, int n, float *lg, int lo) {
    lg_model *m = kv->m;
    const lg_config *c = &m->cfg;
    const int C = c->dim, pos0 = kv->len;
    float *x = kv->a.x;
    lg_embed(m, x, ids, 1, n, pos0);
    for (int l = 0; l < c->n_layers; l++) {
        const lg_kv_view view = {kv->K + (size_t)l * kv->alloc * kv->kvd, kv->V + (size_t)l * kv->alloc * kv->kvd,
                                 pos0};
        lg_block_forward(m, l, &kv->a, 1, n, &view, 0, x); /* the output becomes the next input */
    }
    memcpy(kv->ids + pos0, ids, (size_t)n * sizeof(int));
    kv->len += n;
    if (!lg || lo >= n) return;
    const int rows = n - lo;
    lg_final_norm(m, kv->xn, kv->mean, kv->rstd, x + (size_t)lo * C, rows);
    lg_model_head(m, lg, kv->xn, rows);
}

int lg_kv_feed(lg_kv *kv, const int *ids, int n, float *logits, int all) {
    const lg_config *c = &kv->m->cfg;
    if (n <= 0) return lg_errorf("nothing to feed");
    if (kv->len + n > kv->cap)
        return lg_errorf("context full: %d + %d tokens exceed the cache's %d positions", kv->len, n, kv->cap);
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= c->vocab_size)
            return lg_errorf("token id %d out of range (vocab_size %d)", ids[i], c->vocab_size);
    kv_reserve(kv, kv->len + n);
    for (int s = 0; s < n; s += kv->chunk) {
        const int k = LG_MIN(kv->chunk, n - s);
        float *lg = NULL;
        int lo = k;
        if (logits && all) lg = logits + (size_t)s * c->vocab_size, lo = 0;
        else if (logits && s + k == n) lg = logits, lo = k - 1;
        feed_chunk(kv, ids + s, k, lg, lo);
    }
    return 0;
}

/* ---- sampling ---------------------------------------------------------------------------------- */

typedef struct {
    double z;
    int id;
} cand;

static int cand_desc(const void *a, const void *b) {
    const cand *x = a, *y = b;
    if (x->z != y->z) return x->z < y->z ? 1 : -1;
    return (x->id > y->id) - (x->id < y->id); /* ties: lower id first, so the order is total */
}

size_t lg_sampler_scratch_bytes(int V) { return (size_t)(V > 0 ? V : 1) * sizeof(cand); }

int lg_sample(const float *logits, int V, const lg_sample_opts *o, lg_rng *rng, void *scratch) {
    int best = 0;
    for (int i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    if (o->temperature <= 0 || o->top_k == 1 || V == 1) return best;
    cand *c = scratch ? scratch : lg_malloc(lg_sampler_scratch_bytes(V));
    const double inv_t = 1.0 / o->temperature, zmax = (double)logits[best] * inv_t;
    for (int i = 0; i < V; i++) c[i] = (cand){(double)logits[i] * inv_t, i};
    int k = V;
    const int filter = (o->top_k > 0 && o->top_k < V) || o->top_p < 1.0f;
    if (filter) { /* rank by probability; the kept set is a prefix of that order */
        qsort(c, (size_t)V, sizeof *c, cand_desc);
        if (o->top_k > 0 && o->top_k < V) k = o->top_k;
    }
    double total = 0;
    for (int i = 0; i < k; i++) total += c[i].z = exp(c[i].z - zmax); /* z now holds the unnormalised p */
    if (o->top_p < 1.0f) {
        /* keep the smallest prefix whose mass reaches top_p (always at least one token) */
        const double want = (double)o->top_p * total;
        double cum = 0;
        int keep = 0;
        while (keep < k && (keep == 0 || cum < want)) cum += c[keep++].z;
        k = keep;
        total = cum;
    }
    const double u = (double)lg_rng_uniform(rng) * total;
    double cum = 0;
    int pick = c[k - 1].id; /* rounding: u may reach the very end */
    for (int i = 0; i < k; i++) {
        cum += c[i].z;
        if (u < cum) {
            pick = c[i].id;
            break;
        }
    }
    if (!scratch) free(c);
    return pick;
}

/* ---- generation -------------------------------------------------------------------------------- */

int lg_generate(lg_kv *kv, const int *prompt, int n, const lg_gen_opts *o, lg_gen_cb cb, void *ud,
                lg_gen_result *res) {
    memset(res, 0, sizeof *res);
    const int V = kv->m->cfg.vocab_size;
    if (n < 1) return lg_errorf("generation needs at least one prompt token");
    if (n > kv->cap) return lg_errorf("the prompt's %d tokens do not fit the context of %d positions", n, kv->cap);
    float *logits = lg_malloc((size_t)V * sizeof(float));
    void *scratch = lg_malloc(lg_sampler_scratch_bytes(V));
    int *ids = lg_malloc((size_t)(o->max_tokens > 0 ? o->max_tokens : 1) * sizeof(int));
    int rc = -1, cnt = 0;
    lg_gen_stop why = LG_STOP_MAX_TOKENS;
    /* reuse the cached prefix; the last prompt token is always fed again for its logits */
    int k = lg_kv_common_prefix(kv, prompt, n);
    if (k == n) k = n - 1;
    lg_kv_truncate(kv, k);
    if (lg_kv_feed(kv, prompt + k, n - k, logits, 0) != 0) goto done;
    lg_rng rng;
    lg_rng_seed(&rng, o->seed);
    while (cnt < o->max_tokens) {
        const int id = lg_sample(logits, V, &o->sample, &rng, scratch);
        int stop = 0;
        for (int i = 0; i < o->n_stop; i++) stop |= id == o->stop_ids[i];
        if (stop) {
            why = LG_STOP_ID;
            break;
        }
        ids[cnt++] = id;
        if (cb && cb(id, ud)) {
            why = LG_STOP_CALLBACK;
            break;
        }
        if (cnt == o->max_tokens) break;
        if (kv->len >= kv->cap) {
            why = LG_STOP_CONTEXT;
            break;
        }
        if (lg_kv_feed(kv, &id, 1, logits, 0) != 0) goto done;
    }
    res->ids = ids;
    res->n = cnt;
    res->stop = why;
    ids = NULL;
    rc = 0;
done:
    free(ids);
    free(logits);
    free(scratch);
    return rc;
}

/* ---- streaming text ---------------------------------------------------------------------------- */

struct lg_text_stream {
    const lg_tokenizer *t;
    int *ids, n, cap;
    size_t done;     /* bytes of the raw decode already returned (or belonging to the context) */
    char *out;       /* the last returned piece */
    size_t out_cap;
};

/* Bytes a sequence starting with lead byte c needs (0: c cannot start one) and the allowed range
 * of its second byte (UTF-8's shortest-form and surrogate rules). */
static int utf8_need(unsigned c, unsigned *lo, unsigned *hi) {
    *lo = 0x80, *hi = 0xBF;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) return 2;
    if (c >= 0xE0 && c <= 0xEF) {
        if (c == 0xE0) *lo = 0xA0;
        if (c == 0xED) *hi = 0x9F;
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (c == 0xF0) *lo = 0x90;
        if (c == 0xF4) *hi = 0x8F;
        return 4;
    }
    return 0;
}

/* Length of the valid-or-broken prefix of s[0..n): all of it except a final sequence that is
 * valid so far but incomplete (it may still be completed by the next token's bytes). */
static size_t utf8_settled(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned lo, hi;
        const int need = utf8_need(s[i], &lo, &hi);
        if (need <= 1) { /* ASCII, or a byte that can never start a sequence */
            i++;
            continue;
        }
        size_t k = 1;
        while (k < (size_t)need && i + k < n && s[i + k] >= lo && s[i + k] <= hi) lo = 0x80, hi = 0xBF, k++;
        if (k == (size_t)need) i += k;        /* complete */
        else if (i + k == n) return i;        /* ran out of bytes: wait for more */
        else i += k;                          /* broken: settled (becomes U+FFFD) */
    }
    return n;
}

/* Append s[0..n) to the stream's output with every maximal invalid subpart replaced by U+FFFD. */
static void put_lossy(lg_text_stream *st, size_t *len, const unsigned char *s, size_t n) {
    if (*len + 3 * n + 1 > st->out_cap) st->out = lg_realloc(st->out, st->out_cap = *len + 3 * n + 64);
    size_t i = 0;
    while (i < n) {
        unsigned lo, hi;
        const int need = utf8_need(s[i], &lo, &hi);
        size_t k = 1;
        if (need > 1)
            while (k < (size_t)need && i + k < n && s[i + k] >= lo && s[i + k] <= hi) lo = 0x80, hi = 0xBF, k++;
        if (need >= 1 && k == (size_t)need) {
            memcpy(st->out + *len, s + i, k);
            *len += k;
        } else {
            memcpy(st->out + *len, "\xEF\xBF\xBD", 3);
            *len += 3;
        }
        i += k;
    }
    st->out[*len] = 0;
}

lg_text_stream *lg_text_stream_new(const lg_tokenizer *t, const int *context, int n) {
    lg_text_stream *s = lg_calloc(1, sizeof *s);
    s->t = t;
    s->cap = n + 64;
    s->ids = lg_malloc((size_t)s->cap * sizeof(int));
    if (n > 0) memcpy(s->ids, context, (size_t)n * sizeof(int));
    s->n = n;
    char *txt = NULL;
    size_t len = 0;
    if (n > 0 && lg_tokenizer_decode_ex(t, context, n, LG_DECODE_RAW_BYTES, &txt, &len) == 0) s->done = len;
    free(txt);
    s->out_cap = 64;
    s->out = lg_malloc(s->out_cap);
    s->out[0] = 0;
    return s;
}

static int stream_emit(lg_text_stream *s, int final, const char **text, size_t *len) {
    char *raw = NULL;
    size_t n = 0, olen = 0;
    if (lg_tokenizer_decode_ex(s->t, s->ids, s->n, LG_DECODE_RAW_BYTES, &raw, &n) != 0) return -1;
    /* The decode of more tokens normally extends the previous one; a decoder that rewrote earlier
     * text cannot be taken back, so output simply resumes at the same byte offset. */
    if (n > s->done) {
        const unsigned char *b = (const unsigned char *)raw + s->done;
        const size_t cut = final ? n - s->done : utf8_settled(b, n - s->done);
        put_lossy(s, &olen, b, cut);
        s->done += cut;
    }
    s->out[olen] = 0;
    free(raw);
    *text = s->out;
    *len = olen;
    return 0;
}

int lg_text_stream_push(lg_text_stream *s, int id, const char **text, size_t *len) {
    if (s->n == s->cap) s->ids = lg_realloc(s->ids, (size_t)(s->cap *= 2) * sizeof(int));
    s->ids[s->n++] = id;
    if (stream_emit(s, 0, text, len) != 0) {
        s->n--;
        return -1;
    }
    return 0;
}

int lg_text_stream_finish(lg_text_stream *s, const char **text, size_t *len) { return stream_emit(s, 1, text, len); }

void lg_text_stream_free(lg_text_stream *s) {
    if (!s) return;
    free(s->ids);
    free(s->out);
    free(s);
}
