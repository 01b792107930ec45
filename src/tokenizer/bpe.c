/* bpe.c — merging one pre-tokenized word into token ids.
 *
 * MODEL_BPE (tokenizer.json): the word starts as one symbol per character (vocab lookup,
 * else byte fallback <0xNN>, else unk); then the pair with the lowest merge rank is merged,
 * leftmost first on ties, until no pair of adjacent symbols has a merge — exactly the
 * procedure of Hugging Face `tokenizers` (including its check that a queued pair still maps
 * to the same merged id). A binary heap over the candidate pairs makes it O(n log n).
 *
 * MODEL_SPM_SCORE (llama2.c tokenizer.bin / SentencePiece scores): same skeleton, but the pair
 * to merge is the one whose concatenation is a vocabulary piece with the highest score,
 * leftmost on ties (llama2.c run.c's rule, which is SentencePiece's); characters missing from
 * the vocabulary become byte tokens that never merge.
 *
 * Results for words shorter than 256 bytes are cached per tokenizer (mutex, try-lock only:
 * a busy cache is skipped, never waited for). */
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "tokenizer/tok_internal.h"

typedef struct {
    int id, prev, next, start, len;
    int mergeable;
} sym_t;

typedef struct {
    double key; /* rank (BPE) or -score (SPM): smaller first */
    int pos, nid, len;
} cand_t;

struct tk_bpe_ws {
    sym_t *sym;
    size_t sym_cap;
    cand_t *heap;
    size_t heap_n, heap_cap;
    tk_buf tmp;
};

tk_bpe_ws *tk_bpe_ws_new(void) { return lg_calloc(1, sizeof(tk_bpe_ws)); }
void tk_bpe_ws_free(tk_bpe_ws *ws) {
    if (!ws) return;
    free(ws->sym);
    free(ws->heap);
    free(ws->tmp.p);
    free(ws);
}

static inline int cand_less(const cand_t *a, const cand_t *b) {
    return a->key < b->key || (a->key == b->key && a->pos < b->pos);
}

static void heap_push(tk_bpe_ws *ws, cand_t c) {
    if (ws->heap_n == ws->heap_cap) {
        ws->heap_cap = ws->heap_cap ? ws->heap_cap * 2 : 64;
        ws->heap = lg_realloc(ws->heap, ws->heap_cap * sizeof(cand_t));
    }
    size_t i = ws->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_less(&c, &ws->heap[p])) break;
        ws->heap[i] = ws->heap[p];
        i = p;
    }
    ws->heap[i] = c;
}

static cand_t heap_pop(tk_bpe_ws *ws) {
    cand_t top = ws->heap[0], last = ws->heap[--ws->heap_n];
    size_t i = 0, n = ws->heap_n;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const cand_t *best = &last;
        if (l < n && cand_less(&ws->heap[l], best)) m = l, best = &ws->heap[l];
        if (r < n && cand_less(&ws->heap[r], best)) m = r;
        if (m == i) break;
        ws->heap[i] = ws->heap[m];
        i = m;
    }
    if (n) ws->heap[i] = last;
    return top;
}

static void add_sym(tk_bpe_ws *ws, size_t *ns, int id, int start, int len, int mergeable) {
    if (*ns == ws->sym_cap) {
        ws->sym_cap = ws->sym_cap ? ws->sym_cap * 2 : 64;
        ws->sym = lg_realloc(ws->sym, ws->sym_cap * sizeof(sym_t));
    }
    ws->sym[*ns] = (sym_t){id, (int)*ns - 1, (int)*ns + 1, start, len, mergeable};
    (*ns)++;
}

/* candidate pair (i, next of i), if any */
static void push_pair(const lg_tokenizer *t, tk_bpe_ws *ws, const char *w, int i) {
    sym_t *s = ws->sym;
    int j = s[i].next;
    if (j < 0) return;
    if (t->model == MODEL_BPE) {
        int rank, nid;
        if (tk_pmap_get(&t->merges, s[i].id, s[j].id, &rank, &nid))
            heap_push(ws, (cand_t){(double)rank, i, nid, 0});
    } else {
        if (!s[i].mergeable || !s[j].mergeable) return;
        int len = s[i].len + s[j].len;
        int id = tk_smap_get(&t->vocab, w + s[i].start, (size_t)len);
        if (id >= 0 && t->mergeable[id]) heap_push(ws, (cand_t){-(double)t->score[id], i, id, len});
    }
}

static int char_id(const lg_tokenizer *t, const char *s, int k) {
    if (t->cp_id) {
        int n;
        uint32_t cp = lg_utf8_decode(s, &n);
        if (cp < 0x10000) return t->cp_id[cp];
    }
    return tk_smap_get(&t->vocab, s, (size_t)k);
}

static void merge_word(const lg_tokenizer *t, tk_bpe_ws *ws, const char *w, size_t len, tk_ivec *out) {
    size_t ns = 0;
    int unk = -1, unk_start = 0, unk_len = 0; /* pending unk (BPE) */
    int plain = !t->cont_prefix && !t->eow_suffix;
    for (size_t i = 0; i < len;) {
        int k = lg_utf8_len((unsigned char)w[i]);
        if (i + (size_t)k > len) k = (int)(len - i);
        const char *s = w + i;
        size_t sl = (size_t)k;
        int id;
        if (plain || t->model != MODEL_BPE) {
            id = char_id(t, s, k);
        } else {
            ws->tmp.n = 0;
            if (i > 0 && t->cont_prefix) tk_buf_put(&ws->tmp, t->cont_prefix, strlen(t->cont_prefix));
            tk_buf_put(&ws->tmp, w + i, (size_t)k);
            if (i + (size_t)k == len && t->eow_suffix) tk_buf_put(&ws->tmp, t->eow_suffix, strlen(t->eow_suffix));
            s = ws->tmp.p;
            sl = ws->tmp.n;
            id = tk_smap_get(&t->vocab, s, sl);
        }
        if (id >= 0) {
            if (unk >= 0) {
                add_sym(ws, &ns, unk, unk_start, unk_len, 0);
                unk = -1;
            }
            add_sym(ws, &ns, id, (int)i, k, 1);
        } else {
            int done = 0;
            if (t->byte_fallback) {
                int ok = 1;
                for (size_t b = 0; b < sl; b++)
                    if (t->byte_tok[(unsigned char)s[b]] < 0) ok = 0;
                if (ok) {
                    if (unk >= 0) {
                        add_sym(ws, &ns, unk, unk_start, unk_len, 0);
                        unk = -1;
                    }
                    for (size_t b = 0; b < sl; b++)
                        add_sym(ws, &ns, t->byte_tok[(unsigned char)s[b]], (int)i, b + 1 == sl ? k : 0, 0);
                    done = 1;
                }
            }
            if (!done && t->unk_id >= 0) {
                if (unk >= 0 && t->fuse_unk) {
                    unk_len += k;
                } else {
                    if (unk >= 0) add_sym(ws, &ns, unk, unk_start, unk_len, 0);
                    unk = t->unk_id;
                    unk_start = (int)i;
                    unk_len = k;
                }
            }
        }
        i += (size_t)k;
    }
    if (unk >= 0) add_sym(ws, &ns, unk, unk_start, unk_len, 0);
    if (ns == 0) return;
    sym_t *sy = ws->sym;
    sy[ns - 1].next = -1;
    /* Byte-fallback symbols in a BPE model take part in merges like any id (as in HF). */
    if (t->model == MODEL_BPE)
        for (size_t i = 0; i < ns; i++) sy[i].mergeable = 1;

    ws->heap_n = 0;
    for (size_t i = 0; i + 1 < ns; i++) push_pair(t, ws, w, (int)i);
    while (ws->heap_n) {
        cand_t c = heap_pop(ws);
        sy = ws->sym;
        sym_t *a = &sy[c.pos];
        if (a->len < 0 || a->next < 0) continue; /* removed, or last */
        sym_t *b = &sy[a->next];
        if (t->model == MODEL_BPE) {
            int rank, nid;
            if (!tk_pmap_get(&t->merges, a->id, b->id, &rank, &nid) || nid != c.nid) continue;
        } else {
            if (a->len + b->len != c.len || !a->mergeable || !b->mergeable) continue;
        }
        a->id = c.nid;
        a->len += b->len;
        a->next = b->next;
        b->len = -1;
        if (a->next >= 0) sy[a->next].prev = c.pos;
        if (a->prev >= 0) push_pair(t, ws, w, a->prev);
        push_pair(t, ws, w, c.pos);
    }
    for (int i = 0; i >= 0; i = ws->sym[i].next) tk_ivec_push(out, ws->sym[i].id);
}

/* A "word" longer than this (a megabyte without a split point of the pre-tokenizer, or a whole
 * document under a tokenizer without one, as LLaMA-2's) is merged in pieces of at most this size,
 * cut before a space or a "▁" that starts a word where there is one: the merge state of a word
 * costs ~50 bytes per byte, which a 50 MB word would take to 2.5 GB. SentencePiece-style
 * vocabularies have no token that spans such a word start, so those cuts change nothing; a piece
 * with no word start in its last half is cut at a character boundary. */
#define MAX_WORD ((size_t)1 << 20)

static int word_start(const char *w, size_t at) {
    int here = w[at] == ' ' || (w[at] == '\xE2' && w[at + 1] == '\x96' && w[at + 2] == '\x81');
    int before = w[at - 1] == ' ' || (at >= 3 && !memcmp(w + at - 3, "\xE2\x96\x81", 3));
    return here && !before;
}

static int merge_long_word(const lg_tokenizer *t, tk_bpe_ws *ws, const char *w, size_t len, tk_ivec *out) {
    for (size_t pos = 0; pos < len;) {
        size_t end = len;
        if (len - pos > MAX_WORD) {
            end = 0;
            for (size_t at = pos + MAX_WORD; at > pos + MAX_WORD / 2 && !end; at--)
                if (word_start(w, at)) end = at;
            if (!end)
                for (end = pos + MAX_WORD; end > pos + 1 && ((unsigned char)w[end] & 0xC0) == 0x80;) end--;
        }
        merge_word(t, ws, w + pos, end - pos, out);
        pos = end;
    }
    /* the workspace grew to a piece's size: give it back rather than keep it for short words */
    free(ws->sym), free(ws->heap);
    ws->sym = NULL, ws->heap = NULL;
    ws->sym_cap = ws->heap_cap = 0;
    return 0;
}

#define CACHE_MAX_WORD 256
#define CACHE_MAX_ENTRIES 200000
#define CACHE_MAX_IDS (4u << 20)

int tk_bpe_word(const lg_tokenizer *t, tk_bpe_ws *ws, const char *w, size_t len, tk_ivec *out) {
    if (len == 0) return 0;
    if (t->model == MODEL_BPE && t->ignore_merges) {
        int id = tk_smap_get(&t->vocab, w, len);
        if (id >= 0) {
            tk_ivec_push(out, id);
            return 0;
        }
    }
    tk_cache *c = (tk_cache *)&t->cache; /* the cache is the only mutable part of a tokenizer */
    int cacheable = len < CACHE_MAX_WORD;
    if (cacheable && pthread_mutex_trylock(&c->mu) == 0) {
        int off = tk_smap_get(&c->map, w, len);
        if (off >= 0) {
            int cnt = c->ids.p[off];
            for (int i = 0; i < cnt; i++) tk_ivec_push(out, c->ids.p[off + 1 + i]);
            pthread_mutex_unlock(&c->mu);
            return 0;
        }
        pthread_mutex_unlock(&c->mu);
    }
    size_t first = out->n;
    if (len > MAX_WORD) return merge_long_word(t, ws, w, len, out);
    merge_word(t, ws, w, len, out);
    if (cacheable && pthread_mutex_trylock(&c->mu) == 0) {
        if (c->map.n >= CACHE_MAX_ENTRIES || c->ids.n >= CACHE_MAX_IDS) {
            tk_smap_free(&c->map);
            c->ids.n = 0;
        }
        int off = (int)c->ids.n;
        tk_ivec_push(&c->ids, (int)(out->n - first));
        for (size_t i = first; i < out->n; i++) tk_ivec_push(&c->ids, out->p[i]);
        tk_smap_put(&c->map, w, len, off);
        pthread_mutex_unlock(&c->mu);
    }
    return 0;
}
