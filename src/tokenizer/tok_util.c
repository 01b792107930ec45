/* tok_util.c — UTF-8 helpers, growable buffers and the hash maps used by the tokenizer. */
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "tokenizer/tok_internal.h"

/* ---- UTF-8 ------------------------------------------------------------------ */
size_t lg_utf8_check(const char *s, size_t len) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        /* fast path: 8 ASCII bytes at a time */
        if (i + 8 <= len) {
            uint64_t w;
            memcpy(&w, p + i, 8);
            if (!(w & 0x8080808080808080ull)) {
                i += 8;
                continue;
            }
        }
        unsigned c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        uint32_t cp, min;
        if (c >= 0xC2 && c <= 0xDF) n = 2, cp = c & 0x1F, min = 0x80;
        else if (c >= 0xE0 && c <= 0xEF) n = 3, cp = c & 0x0F, min = 0x800;
        else if (c >= 0xF0 && c <= 0xF4) n = 4, cp = c & 0x07, min = 0x10000;
        else return i;
        if (i + n > len) return i;
        for (size_t k = 1; k < n; k++) {
            if ((p[i + k] & 0xC0) != 0x80) return i;
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
        i += n;
    }
    return len;
}

int lg_utf8_encode(uint32_t cp, char *out) {
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

uint32_t lg_utf8_decode(const char *s, int *n) {
    const unsigned char *p = (const unsigned char *)s;
    int k = lg_utf8_len(p[0]);
    *n = k;
    if (k == 1) return p[0];
    uint32_t cp = p[0] & (k == 2 ? 0x1F : k == 3 ? 0x0F : 0x07);
    for (int i = 1; i < k; i++) cp = (cp << 6) | (p[i] & 0x3F);
    return cp;
}

/* ---- buffers ------------------------------------------------------------------ */
void tk_buf_put(tk_buf *b, const void *s, size_t n) {
    if (b->n + n > b->cap || !b->p) { /* never leave p NULL: callers form p + offset */
        size_t c = b->cap ? b->cap * 2 : 256;
        while (c < b->n + n) c *= 2;
        b->p = lg_realloc(b->p, c);
        b->cap = c;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
}

void tk_ivec_push(tk_ivec *v, int x) {
    if (v->n == v->cap) {
        v->cap = v->cap ? v->cap * 2 : 64;
        v->p = lg_realloc(v->p, v->cap * sizeof(int));
    }
    v->p[v->n++] = x;
}

/* ---- hashing (FNV-1a over 8-byte words, then a final mix) ----------------------- */
uint64_t tk_hash(const void *p, size_t n) {
    const unsigned char *s = p;
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xFF51AFD7ED558CCDull);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * 0x100000001B3ull;
        h ^= h >> 29;
        s += 8;
        n -= 8;
    }
    uint64_t w = 0;
    for (size_t i = 0; i < n; i++) w |= (uint64_t)s[i] << (8 * i);
    h = (h ^ w) * 0x100000001B3ull;
    h ^= h >> 32;
    h *= 0xD6E8FEB86659FD93ull;
    h ^= h >> 32;
    return h;
}

/* ---- string map -------------------------------------------------------------- */
int tk_smap_get(const tk_smap *m, const char *k, size_t len) {
    if (!m->cap) return -1;
    uint64_t h = tk_hash(k, len);
    uint32_t mask = m->cap - 1, i = (uint32_t)h & mask;
    for (;;) {
        uint32_t s = m->slot[i];
        if (!s) return -1;
        const struct tk_sent *e = &m->ent[s - 1];
        if (e->h == h && e->len == len && !memcmp(m->keys + e->off, k, len)) return e->val;
        i = (i + 1) & mask;
    }
}

static void smap_grow(tk_smap *m) {
    uint32_t cap = m->cap ? m->cap * 2 : 1024;
    free(m->slot);
    m->slot = lg_calloc(cap, sizeof(uint32_t));
    m->cap = cap;
    for (uint32_t j = 0; j < m->n; j++) {
        uint32_t i = (uint32_t)m->ent[j].h & (cap - 1);
        while (m->slot[i]) i = (i + 1) & (cap - 1);
        m->slot[i] = j + 1;
    }
}

void tk_smap_put(tk_smap *m, const char *k, size_t len, int val) {
    if ((uint64_t)(m->n + 1) * 2 > m->cap) smap_grow(m);
    uint64_t h = tk_hash(k, len);
    uint32_t mask = m->cap - 1, i = (uint32_t)h & mask;
    for (;;) {
        uint32_t s = m->slot[i];
        if (!s) break;
        struct tk_sent *e = &m->ent[s - 1];
        if (e->h == h && e->len == len && !memcmp(m->keys + e->off, k, len)) {
            e->val = val;
            return;
        }
        i = (i + 1) & mask;
    }
    if (m->n == m->ent_cap) {
        m->ent_cap = m->ent_cap ? m->ent_cap * 2 : 512;
        m->ent = lg_realloc(m->ent, m->ent_cap * sizeof *m->ent);
    }
    if (m->keys_n + len > m->keys_cap || !m->keys) {
        size_t c = m->keys_cap ? m->keys_cap * 2 : 8192;
        while (c < m->keys_n + len) c *= 2;
        m->keys = lg_realloc(m->keys, c);
        m->keys_cap = c;
    }
    if (len) memcpy(m->keys + m->keys_n, k, len);
    m->ent[m->n] = (struct tk_sent){h, (uint32_t)m->keys_n, (uint32_t)len, val};
    m->keys_n += len;
    m->slot[i] = ++m->n;
}

void tk_smap_free(tk_smap *m) {
    free(m->slot);
    free(m->ent);
    free(m->keys);
    memset(m, 0, sizeof *m);
}

/* ---- pair map ---------------------------------------------------------------- */
static inline uint32_t pmix(uint64_t k) {
    k ^= k >> 33;
    k *= 0xFF51AFD7ED558CCDull;
    k ^= k >> 33;
    return (uint32_t)k;
}

int tk_pmap_get(const tk_pmap *m, int a, int b, int *rank, int *nid) {
    if (!m->cap) return 0;
    uint64_t k = tk_pkey(a, b);
    uint32_t mask = m->cap - 1, i = pmix(k) & mask;
    for (;;) {
        uint64_t x = m->key[i];
        if (x == k) {
            *rank = m->rank[i];
            *nid = m->nid[i];
            return 1;
        }
        if (x == UINT64_MAX) return 0;
        i = (i + 1) & mask;
    }
}

static void pmap_insert(tk_pmap *m, uint64_t k, int rank, int nid) {
    uint32_t mask = m->cap - 1, i = pmix(k) & mask;
    while (m->key[i] != UINT64_MAX && m->key[i] != k) i = (i + 1) & mask;
    if (m->key[i] == UINT64_MAX) m->n++;
    m->key[i] = k;
    m->rank[i] = rank;
    m->nid[i] = nid;
}

void tk_pmap_put(tk_pmap *m, int a, int b, int rank, int nid) {
    if ((uint64_t)(m->n + 1) * 2 > m->cap) {
        tk_pmap o = *m;
        m->cap = o.cap ? o.cap * 2 : 1024;
        m->n = 0;
        m->key = lg_malloc(m->cap * sizeof(uint64_t));
        memset(m->key, 0xFF, m->cap * sizeof(uint64_t));
        m->rank = lg_malloc(m->cap * sizeof(int32_t));
        m->nid = lg_malloc(m->cap * sizeof(int32_t));
        for (uint32_t i = 0; i < o.cap; i++)
            if (o.key[i] != UINT64_MAX) pmap_insert(m, o.key[i], o.rank[i], o.nid[i]);
        free(o.key);
        free(o.rank);
        free(o.nid);
    }
    pmap_insert(m, tk_pkey(a, b), rank, nid);
}

void tk_pmap_free(tk_pmap *m) {
    free(m->key);
    free(m->rank);
    free(m->nid);
    memset(m, 0, sizeof *m);
}
