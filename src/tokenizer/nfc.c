/* nfc.c — Unicode NFC: canonical decomposition, canonical ordering, canonical composition
 * (Unicode Standard Annex #15), Hangul done algorithmically. Text whose code points are all
 * below U+0300 is already NFC and is copied as is. */
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "tokenizer/tok_internal.h"
#include "tokenizer/unicode_nfc.h"

enum { SBASE = 0xAC00, LBASE = 0x1100, VBASE = 0x1161, TBASE = 0x11A7, LCOUNT = 19, VCOUNT = 21, TCOUNT = 28 };
#define NCOUNT (VCOUNT * TCOUNT)
#define SCOUNT (LCOUNT * NCOUNT)

static int ccc(uint32_t c) {
    if (c < 0x300) return 0;
    int lo = 0, hi = lg_ccc_n - 1;
    while (lo <= hi) {
        int m = (lo + hi) / 2;
        if (c < lg_ccc_ranges[m][0]) hi = m - 1;
        else if (c > lg_ccc_ranges[m][1]) lo = m + 1;
        else return (int)lg_ccc_ranges[m][2];
    }
    return 0;
}

static const uint32_t *decomp(uint32_t c, int *n) {
    int lo = 0, hi = lg_decomp_n - 1;
    while (lo <= hi) {
        int m = (lo + hi) / 2;
        if (c < lg_decomp_index[m][0]) hi = m - 1;
        else if (c > lg_decomp_index[m][0]) lo = m + 1;
        else {
            *n = (int)lg_decomp_index[m][2];
            return lg_decomp_cps + lg_decomp_index[m][1];
        }
    }
    return NULL;
}

static uint32_t compose(uint32_t a, uint32_t b) {
    if (a >= LBASE && a < LBASE + LCOUNT && b >= VBASE && b < VBASE + VCOUNT)
        return SBASE + ((a - LBASE) * VCOUNT + (b - VBASE)) * TCOUNT;
    if (a >= SBASE && a < SBASE + SCOUNT && (a - SBASE) % TCOUNT == 0 && b > TBASE && b < TBASE + TCOUNT)
        return a + (b - TBASE);
    int lo = 0, hi = lg_comp_n - 1;
    while (lo <= hi) {
        int m = (lo + hi) / 2;
        if (a < lg_comp_pairs[m][0] || (a == lg_comp_pairs[m][0] && b < lg_comp_pairs[m][1])) hi = m - 1;
        else if (a > lg_comp_pairs[m][0] || b > lg_comp_pairs[m][1]) lo = m + 1;
        else return lg_comp_pairs[m][2];
    }
    return 0;
}

static void push(uint32_t **v, size_t *n, size_t *cap, uint32_t c) {
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 64;
        *v = lg_realloc(*v, *cap * sizeof(uint32_t));
    }
    (*v)[(*n)++] = c;
}

void lg_nfc(const char *s, size_t len, char **out, size_t *out_len, size_t *out_cap) {
    tk_buf o = {*out, *out_len, *out_cap};
    int simple = 1;
    for (size_t i = 0; i < len && simple; i++)
        if ((unsigned char)s[i] >= 0xCC) simple = 0; /* lead bytes >= 0xCC start code points >= U+0300 */
    if (simple) {
        tk_buf_put(&o, s, len);
        *out = o.p, *out_len = o.n, *out_cap = o.cap;
        return;
    }
    uint32_t *d = NULL;
    size_t n = 0, cap = 0;
    for (size_t i = 0; i < len;) {
        int k;
        uint32_t c = lg_utf8_decode(s + i, &k);
        i += (size_t)k;
        if (c >= SBASE && c < SBASE + SCOUNT) {
            uint32_t si = c - SBASE;
            push(&d, &n, &cap, LBASE + si / NCOUNT);
            push(&d, &n, &cap, VBASE + (si % NCOUNT) / TCOUNT);
            if (si % TCOUNT) push(&d, &n, &cap, TBASE + si % TCOUNT);
            continue;
        }
        int m = 0;
        const uint32_t *dc = c >= 0xC0 ? decomp(c, &m) : NULL;
        if (dc)
            for (int j = 0; j < m; j++) push(&d, &n, &cap, dc[j]);
        else push(&d, &n, &cap, c);
    }
    /* canonical ordering: stable sort of each run of non-starters by combining class */
    for (size_t i = 1; i < n; i++) {
        int ci = ccc(d[i]);
        if (!ci) continue;
        uint32_t x = d[i];
        size_t j = i;
        while (j > 0 && ccc(d[j - 1]) > ci) {
            d[j] = d[j - 1];
            j--;
        }
        d[j] = x;
    }
    /* canonical composition */
    size_t w = 0;
    long starter = -1;
    for (size_t i = 0; i < n; i++) {
        uint32_t c = d[i];
        int cc = ccc(c);
        if (starter >= 0) {
            int adjacent = (long)w - 1 == starter;
            int last_cc = ccc(d[w - 1]);
            if (adjacent || (last_cc != 0 && last_cc < cc)) {
                uint32_t p = compose(d[starter], c);
                if (p) {
                    d[starter] = p;
                    continue;
                }
            }
        }
        if (cc == 0) starter = (long)w;
        d[w++] = c;
    }
    for (size_t i = 0; i < w; i++) {
        char b[4];
        tk_buf_put(&o, b, (size_t)lg_utf8_encode(d[i], b));
    }
    free(d);
    *out = o.p, *out_len = o.n, *out_cap = o.cap;
}
