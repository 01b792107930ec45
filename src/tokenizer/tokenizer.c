/* tokenizer.c — the encode / decode pipelines (Hugging Face `tokenizers` semantics), loading
 * dispatch, accessors.
 *
 * encode: (1) added tokens whose "normalized" flag is false are cut out of the raw text
 * (leftmost-longest), (2) each remaining piece is normalized and the normalized added tokens
 * are cut out of it, (3) each remaining piece goes through the pre-tokenizers (regex splits,
 * byte-to-unicode mapping, Metaspace...), (4) each resulting word through the BPE model,
 * (5) the post-processor's special tokens are added when asked. */
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "io/gguf.h"
#include "tokenizer/tok_internal.h"
#include "tokenizer/unicode_nfc.h"

/* ---- Unicode White_Space (Rust char::is_whitespace, Oniguruma \s) ---------------- */
static int is_ws_cp(uint32_t c) {
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
           c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}
#define WS_CLASS "\\t\\n\\x0B\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"

/* PCRE2's \s (with UCP) also matches U+180E; Oniguruma's (what `tokenizers` uses) does not.
 * Rewrite \s / \S into explicit White_Space classes so both agree. */
pcre2_code *tk_regex_compile(const char *pat, size_t len, int literal, const char *what) {
    tk_buf b = {0};
    if (literal) {
        tk_buf_put(&b, pat, len);
    } else {
        int in_class = 0;
        for (size_t i = 0; i < len; i++) {
            char c = pat[i];
            if (c == '\\' && i + 1 < len) {
                char d = pat[i + 1];
                if (d == 's') {
                    if (in_class) tk_buf_put(&b, WS_CLASS, strlen(WS_CLASS));
                    else tk_buf_put(&b, "[" WS_CLASS "]", strlen(WS_CLASS) + 2);
                } else if (d == 'S' && !in_class) {
                    tk_buf_put(&b, "[^" WS_CLASS "]", strlen(WS_CLASS) + 3);
                } else {
                    tk_buf_put(&b, pat + i, 2);
                }
                i++;
                continue;
            }
            if (!in_class && c == '[') {
                in_class = 1;
                tk_buf_putc(&b, c);
                /* a ']' right after '[' or '[^' is literal */
                if (i + 1 < len && pat[i + 1] == '^') tk_buf_putc(&b, pat[++i]);
                if (i + 1 < len && pat[i + 1] == ']') tk_buf_putc(&b, pat[++i]);
                continue;
            }
            if (in_class && c == '[' && i + 1 < len && pat[i + 1] == ':') { /* [:alpha:] */
                const char *e = NULL;
                for (size_t j = i + 2; j + 1 < len; j++)
                    if (pat[j] == ':' && pat[j + 1] == ']') {
                        e = pat + j;
                        break;
                    }
                if (e) {
                    size_t n = (size_t)(e - (pat + i)) + 2;
                    tk_buf_put(&b, pat + i, n);
                    i += n - 1;
                    continue;
                }
            }
            if (in_class && c == ']') in_class = 0;
            tk_buf_putc(&b, c);
        }
    }
    int err;
    PCRE2_SIZE eoff;
    uint32_t opt = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP); /* pattern UTF-8 is checked */
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)(b.p ? b.p : ""), b.n, opt, &err, &eoff, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        lg_errorf("%s: regex /%.*s/ does not compile: %s (at offset %zu)", what, (int)LG_MIN(len, 200), pat,
                  (const char *)msg, (size_t)eoff);
        free(b.p);
        return NULL;
    }
    free(b.p);
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* falls back to the interpreter if unavailable */
    return re;
}

/* ---- byte <-> unicode map of byte-level BPE ------------------------------------- */
static char g_b2u[256][3]; /* UTF-8 of the char for byte b, NUL-padded */
static unsigned char g_b2u_len[256];
static int16_t g_u2b[512]; /* code point -> byte, -1 */
static pthread_once_t g_b2u_once = PTHREAD_ONCE_INIT;
static void b2u_init(void) {
    int n = 0;
    for (int i = 0; i < 512; i++) g_u2b[i] = -1;
    for (int b = 0; b < 256; b++) {
        int direct = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        uint32_t cp = direct ? (uint32_t)b : (uint32_t)(256 + n++);
        g_b2u_len[b] = (unsigned char)lg_utf8_encode(cp, g_b2u[b]);
        g_u2b[cp] = (int16_t)b;
    }
}

/* ---- encode context ----------------------------------------------------------- */
#define MAX_STEPS 16
typedef struct {
    const lg_tokenizer *t;
    tk_bpe_ws *ws;
    tk_ivec *out;
    pcre2_match_data *md;
    pcre2_match_context *mctx;
    pcre2_jit_stack *jst;
    tk_buf scratch[MAX_STEPS][2];
    tk_ivec ranges[MAX_STEPS];
    tk_ivec m; /* raw matches, reused */
    int err;
} enc_ctx;

/* All matches of re in s: appended to m as (start, end) pairs. */
static int regex_matches(enc_ctx *c, const pcre2_code *re, const char *s, size_t len, tk_ivec *m) {
    size_t off = 0;
    while (off <= len) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, len, off, PCRE2_NO_UTF_CHECK, c->md, c->mctx);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            c->err = lg_errorf("tokenizer: regex match failed: %s", (const char *)msg);
            return -1;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(c->md);
        size_t a = ov[0], e = ov[1];
        if (e == a) { /* empty match: skip one character */
            if (a >= len) break;
            off = a + (size_t)lg_utf8_len((unsigned char)s[a]);
            continue;
        }
        tk_ivec_push(m, (int)a);
        tk_ivec_push(m, (int)e);
        off = e;
    }
    return 0;
}

/* HF SplitDelimiterBehavior over the match list -> ranges (start, end) of the pieces. */
static void apply_behavior(const tk_ivec *m, size_t len, int behavior, int invert, tk_ivec *out) {
    /* build (start, end, is_match) covering [0, len) */
    size_t prev = 0;
    int prev_match = 0;
    size_t nm = m->n / 2;
    out->n = 0;
    /* iterate splits in order; for MERGED_NEXT we post-process */
    typedef struct {
        size_t a, e;
        int match;
    } sp;
    sp local[64];
    sp *spl = local;
    size_t cap = 64, ns = 0;
    for (size_t k = 0; k <= nm; k++) {
        size_t a = k < nm ? (size_t)m->p[2 * k] : len, e = k < nm ? (size_t)m->p[2 * k + 1] : len;
        for (int part = 0; part < 2; part++) {
            size_t x = part == 0 ? prev : a, y = part == 0 ? a : e;
            int ismatch = part == 1;
            if (part == 0 && x == y) continue;
            if (part == 1 && k == nm) continue;
            if (ns == cap) {
                cap *= 2;
                if (spl == local) {
                    spl = lg_malloc(cap * sizeof(sp));
                    memcpy(spl, local, sizeof local);
                } else spl = lg_realloc(spl, cap * sizeof(sp));
            }
            spl[ns++] = (sp){x, y, invert ? !ismatch : ismatch};
        }
        prev = e;
    }
    switch (behavior) {
    case SPLIT_REMOVED:
        for (size_t i = 0; i < ns; i++)
            if (!spl[i].match) tk_ivec_push(out, (int)spl[i].a), tk_ivec_push(out, (int)spl[i].e);
        break;
    case SPLIT_ISOLATED:
        for (size_t i = 0; i < ns; i++) tk_ivec_push(out, (int)spl[i].a), tk_ivec_push(out, (int)spl[i].e);
        break;
    case SPLIT_MERGED_PREV:
        prev_match = 0;
        for (size_t i = 0; i < ns; i++) {
            if (spl[i].match && !prev_match && out->n) out->p[out->n - 1] = (int)spl[i].e;
            else tk_ivec_push(out, (int)spl[i].a), tk_ivec_push(out, (int)spl[i].e);
            prev_match = spl[i].match;
        }
        break;
    case SPLIT_CONTIGUOUS:
        prev_match = 0;
        for (size_t i = 0; i < ns; i++) {
            if (spl[i].match == prev_match && out->n) out->p[out->n - 1] = (int)spl[i].e;
            else tk_ivec_push(out, (int)spl[i].a), tk_ivec_push(out, (int)spl[i].e);
            prev_match = spl[i].match;
        }
        break;
    case SPLIT_MERGED_NEXT: {
        prev_match = 0;
        /* walk backwards, building reversed list, then reverse */
        for (size_t r = ns; r-- > 0;) {
            if (spl[r].match && !prev_match && out->n) out->p[out->n - 2] = (int)spl[r].a;
            else tk_ivec_push(out, (int)spl[r].a), tk_ivec_push(out, (int)spl[r].e);
            prev_match = spl[r].match;
        }
        size_t np = out->n / 2;
        for (size_t i = 0; i < np / 2; i++) {
            int a0 = out->p[2 * i], e0 = out->p[2 * i + 1];
            out->p[2 * i] = out->p[2 * (np - 1 - i)];
            out->p[2 * i + 1] = out->p[2 * (np - 1 - i) + 1];
            out->p[2 * (np - 1 - i)] = a0;
            out->p[2 * (np - 1 - i) + 1] = e0;
        }
        break;
    }
    }
    if (spl != local) free(spl);
}

static int pretok(enc_ctx *c, int step, const char *s, size_t len, int at_origin);

static int split_and_recurse(enc_ctx *c, int step, const char *s, size_t len, const pcre2_code *re, int behavior,
                             int invert, int at_origin) {
    c->m.n = 0;
    if (regex_matches(c, re, s, len, &c->m)) return -1;
    tk_ivec *r = &c->ranges[step];
    apply_behavior(&c->m, len, behavior, invert, r);
    size_t np = r->n / 2;
    for (size_t i = 0; i < np; i++) {
        size_t a = (size_t)c->ranges[step].p[2 * i], e = (size_t)c->ranges[step].p[2 * i + 1];
        if (e <= a) continue;
        if (pretok(c, step + 1, s + a, e - a, at_origin && a == 0)) return -1;
    }
    return 0;
}

static int bytelevel_map_recurse(enc_ctx *c, int step, const char *s, size_t len, int at_origin) {
    tk_buf *b = &c->scratch[step][1];
    b->n = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char x = (unsigned char)s[i];
        tk_buf_put(b, g_b2u[x], g_b2u_len[x]);
    }
    return pretok(c, step + 1, b->p, b->n, at_origin);
}

static int pretok(enc_ctx *c, int step, const char *s, size_t len, int at_origin) {
    const lg_tokenizer *t = c->t;
    if (len == 0) return 0;
    if (step == t->n_pretoks) return tk_bpe_word(t, c->ws, s, len, c->out);
    const tk_pretok *p = &t->pretoks[step];
    switch (p->type) {
    case PT_BYTELEVEL: {
        if (p->add_prefix_space && s[0] != ' ') {
            tk_buf *a = &c->scratch[step][0];
            a->n = 0;
            tk_buf_putc(a, ' ');
            tk_buf_put(a, s, len);
            s = a->p;
            len = a->n;
        }
        if (!p->re) return bytelevel_map_recurse(c, step, s, len, at_origin);
        c->m.n = 0;
        if (regex_matches(c, p->re, s, len, &c->m)) return -1;
        tk_ivec *r = &c->ranges[step];
        apply_behavior(&c->m, len, SPLIT_ISOLATED, 0, r);
        size_t np = r->n / 2;
        for (size_t i = 0; i < np; i++) {
            size_t a = (size_t)c->ranges[step].p[2 * i], e = (size_t)c->ranges[step].p[2 * i + 1];
            if (bytelevel_map_recurse(c, step, s + a, e - a, at_origin && a == 0)) return -1;
        }
        return 0;
    }
    case PT_SPLIT:
    case PT_DIGITS:
    case PT_WHITESPACE_SPLIT:
        return split_and_recurse(c, step, s, len, p->re, p->behavior, p->invert, at_origin);
    case PT_METASPACE: {
        tk_buf *a = &c->scratch[step][0];
        a->n = 0;
        int starts = (len >= (size_t)p->replen && !memcmp(s, p->rep, (size_t)p->replen)) || s[0] == ' ';
        if (!starts && (p->prepend_scheme == PREPEND_ALWAYS || (p->prepend_scheme == PREPEND_FIRST && at_origin)))
            tk_buf_put(a, p->rep, (size_t)p->replen);
        for (size_t i = 0; i < len; i++) {
            if (s[i] == ' ') tk_buf_put(a, p->rep, (size_t)p->replen);
            else tk_buf_putc(a, s[i]);
        }
        if (!p->split) return pretok(c, step + 1, a->p, a->n, at_origin);
        /* split on the replacement, MergedWithNext */
        c->m.n = 0;
        for (size_t i = 0; i + (size_t)p->replen <= a->n;) {
            if (!memcmp(a->p + i, p->rep, (size_t)p->replen)) {
                tk_ivec_push(&c->m, (int)i);
                tk_ivec_push(&c->m, (int)(i + (size_t)p->replen));
                i += (size_t)p->replen;
            } else i++;
        }
        tk_ivec *r = &c->ranges[step];
        apply_behavior(&c->m, a->n, SPLIT_MERGED_NEXT, 0, r);
        size_t np = r->n / 2;
        for (size_t i = 0; i < np; i++) {
            size_t x = (size_t)c->ranges[step].p[2 * i], e = (size_t)c->ranges[step].p[2 * i + 1];
            if (pretok(c, step + 1, c->scratch[step][0].p + x, e - x, at_origin && x == 0)) return -1;
        }
        return 0;
    }
    }
    return 0;
}

/* ---- normalizers ------------------------------------------------------------------ */
/* Real normalizer chains grow a text a few times at most (" " -> "▁" triples it); a file can chain
 * Replace rules that grow it without bound, so the output is capped. */
#define NORM_MAX(len) (16 * (len) + 4096)

static int normalize(enc_ctx *c, const char *s, size_t len, tk_buf *out) {
    const lg_tokenizer *t = c->t;
    const size_t cap = NORM_MAX(len);
    tk_buf tmp = {0};
    out->n = 0;
    tk_buf_put(out, s, len);
    for (int i = 0; i < t->n_norms; i++) {
        const tk_norm *nm = &t->norms[i];
        if (out->n == 0) break;
        tmp.n = 0;
        if (nm->type == NORM_PREPEND) {
            if (nm->alen + out->n > cap) goto grows;
            tk_buf_put(&tmp, nm->a, nm->alen);
            tk_buf_put(&tmp, out->p, out->n);
        } else if (nm->type == NORM_REPLACE && !nm->re) {
            size_t j = 0;
            while (j < out->n) {
                if (nm->alen && j + nm->alen <= out->n && !memcmp(out->p + j, nm->a, nm->alen)) {
                    if (tmp.n + nm->blen > cap) goto grows;
                    tk_buf_put(&tmp, nm->b, nm->blen);
                    j += nm->alen;
                } else tk_buf_putc(&tmp, out->p[j++]);
            }
        } else if (nm->type == NORM_REPLACE) {
            c->m.n = 0;
            if (regex_matches(c, nm->re, out->p, out->n, &c->m)) {
                free(tmp.p);
                return -1;
            }
            size_t prev = 0;
            for (size_t k = 0; k < c->m.n; k += 2) {
                if (tmp.n + ((size_t)c->m.p[k] - prev) + nm->blen > cap) goto grows;
                tk_buf_put(&tmp, out->p + prev, (size_t)c->m.p[k] - prev);
                tk_buf_put(&tmp, nm->b, nm->blen);
                prev = (size_t)c->m.p[k + 1];
            }
            tk_buf_put(&tmp, out->p + prev, out->n - prev);
        } else {
            lg_nfc(out->p, out->n, &tmp.p, &tmp.n, &tmp.cap);
        }
        if (tmp.n > cap) goto grows;
        tk_buf sw = *out;
        *out = tmp;
        tmp = sw;
    }
    free(tmp.p);
    return 0;
grows:
    free(tmp.p);
    return lg_errorf("tokenizer: its normalizers grow a text of %zu bytes beyond %zu bytes (a chain of rules that "
                     "grows the text without bound?); refusing",
                     len, cap);
}

/* ---- added tokens ------------------------------------------------------------------ */
static int ends_with_word(const char *s, size_t n) {
    if (!n) return 0;
    size_t i = n - 1;
    while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80) i--;
    unsigned char c = (unsigned char)s[i];
    return c >= 0x80 || (c >= '0' && c <= '9') || ((c | 32) >= 'a' && (c | 32) <= 'z');
}
static int starts_with_word(const char *s, size_t n) {
    if (!n) return 0;
    unsigned char c = (unsigned char)s[0];
    return c >= 0x80 || (c >= '0' && c <= '9') || ((c | 32) >= 'a' && (c | 32) <= 'z');
}

/* next match of an added token (normalized flag == which) in s[from, len): leftmost, then
 * longest. Returns index into t->added or -1. */
static int find_added(const lg_tokenizer *t, int which, const char *s, size_t len, size_t from, size_t *at) {
    const unsigned char *first = t->added_first[which];
    for (size_t p = from; p < len; p++) {
        if (!first[(unsigned char)s[p]]) continue;
        int best = -1;
        size_t blen = 0;
        for (int k = 0; k < t->n_added; k++) {
            const tk_added *a = &t->added[k];
            if ((int)a->normalized != which) continue;
            const char *cs = which ? a->norm : a->content;
            size_t cl = which ? a->norm_len : a->len;
            if (cl == 0 || cl <= blen || p + cl > len || cs[0] != s[p]) continue;
            if (!memcmp(s + p, cs, cl)) best = k, blen = cl;
        }
        if (best >= 0) {
            *at = p;
            return best;
        }
    }
    return -1;
}

typedef int (*piece_fn)(enc_ctx *c, const char *s, size_t len, int at_origin);

/* Cut the added tokens of kind `which` out of s; tokens go to out, pieces to fn. */
static int split_added(enc_ctx *c, int which, const char *s, size_t len, int at_origin, piece_fn fn) {
    const lg_tokenizer *t = c->t;
    int have = which ? t->has_norm_added : t->has_raw_added;
    if (!have) return fn(c, s, len, at_origin);
    size_t start_off = 0, from = 0, at;
    int k;
    while (from < len && (k = find_added(t, which, s, len, from, &at)) >= 0) {
        const tk_added *a = &t->added[k];
        size_t cl = which ? a->norm_len : a->len;
        size_t start = at, stop = at + cl;
        from = stop;
        if (a->single_word) {
            int start_space = start == 0 || !ends_with_word(s, start);
            int stop_space = stop == len || !starts_with_word(s + stop, len - stop);
            if (!start_space || !stop_space) continue;
        }
        if (a->lstrip) {
            size_t ns = start;
            while (ns > 0) {
                size_t q = ns - 1;
                while (q > 0 && ((unsigned char)s[q] & 0xC0) == 0x80) q--;
                int n;
                if (!is_ws_cp(lg_utf8_decode(s + q, &n))) break;
                ns = q;
            }
            start = LG_MAX(ns, start_off);
        }
        if (a->rstrip) {
            while (stop < len) {
                int n;
                if (!is_ws_cp(lg_utf8_decode(s + stop, &n))) break;
                stop += (size_t)n;
            }
            from = stop;
        }
        if (start_off < start && fn(c, s + start_off, start - start_off, at_origin && start_off == 0)) return -1;
        tk_ivec_push(c->out, a->id);
        start_off = stop;
    }
    if (start_off < len) return fn(c, s + start_off, len - start_off, at_origin && start_off == 0);
    return 0;
}

static int piece_pretok(enc_ctx *c, const char *s, size_t len, int at_origin) {
    return pretok(c, 0, s, len, at_origin);
}

static int piece_normalize(enc_ctx *c, const char *s, size_t len, int at_origin) {
    if (c->t->n_norms == 0) return split_added(c, 1, s, len, at_origin, piece_pretok);
    tk_buf nb = {0};
    int rc = normalize(c, s, len, &nb);
    if (!rc) rc = split_added(c, 1, nb.p, nb.n, at_origin, piece_pretok);
    free(nb.p);
    return rc;
}

static void ctx_free(enc_ctx *c) {
    tk_bpe_ws_free(c->ws);
    if (c->md) pcre2_match_data_free(c->md);
    if (c->mctx) pcre2_match_context_free(c->mctx);
    if (c->jst) pcre2_jit_stack_free(c->jst);
    for (int i = 0; i < MAX_STEPS; i++) {
        free(c->scratch[i][0].p);
        free(c->scratch[i][1].p);
        free(c->ranges[i].p);
    }
    free(c->m.p);
}

int lg_tokenizer_encode(const lg_tokenizer *t, const char *text, size_t len, int add_special, int **ids, int *n) {
    *ids = NULL;
    *n = 0;
    if (!text && len) return lg_errorf("tokenizer: NULL text");
    if (len > (size_t)1 << 28) return lg_errorf("tokenizer: text of %zu bytes is too long (max 256 MiB)", len);
    size_t bad = lg_utf8_check(text, len);
    if (bad != len) return lg_errorf("tokenizer: invalid UTF-8 in the text at byte %zu", bad);
    pthread_once(&g_b2u_once, b2u_init);
    tk_ivec out = {0};
    enc_ctx c;
    memset(&c, 0, sizeof c);
    c.t = t;
    c.out = &out;
    c.ws = tk_bpe_ws_new();
    c.md = pcre2_match_data_create(8, NULL);
    c.mctx = pcre2_match_context_create(NULL);
    c.jst = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, NULL);
    if (!c.md || !c.mctx || !c.jst) {
        ctx_free(&c);
        return lg_errorf("tokenizer: out of memory (pcre2)");
    }
    pcre2_jit_stack_assign(c.mctx, NULL, c.jst);
    if (add_special)
        for (int i = 0; i < t->n_prefix; i++) tk_ivec_push(&out, t->prefix[i]);
    int rc = split_added(&c, 0, text ? text : "", len, 1, piece_normalize);
    if (!rc && add_special)
        for (int i = 0; i < t->n_suffix; i++) tk_ivec_push(&out, t->suffix[i]);
    ctx_free(&c);
    if (rc) {
        free(out.p);
        return -1;
    }
    if (!out.p) out.p = lg_malloc(sizeof(int));
    *ids = out.p;
    *n = (int)out.n;
    return 0;
}

/* Bytes of text to try first per wanted token (real tokens average 3-5 bytes), and the least. */
#define PREFIX_BYTES_PER_TOKEN 16
#define PREFIX_MIN_BYTES 4096

static size_t utf8_floor(const char *s, size_t n, size_t at) {
    if (at >= n) return n;
    while (at > 0 && ((unsigned char)s[at] & 0xC0) == 0x80) at--;
    return at;
}

int lg_tokenizer_encode_prefix(const lg_tokenizer *t, const char *text, size_t len, int max_tokens, int **ids, int *n) {
    size_t want = max_tokens < 0 ? len : LG_MAX((size_t)PREFIX_MIN_BYTES, (size_t)max_tokens * PREFIX_BYTES_PER_TOKEN);
    int *a = NULL, na = 0;
    size_t pa = 0; /* bytes behind a */
    for (;;) {
        size_t p = utf8_floor(text, len, want);
        if (p == 0) p = utf8_floor(text, len, want + 4); /* at least one character */
        int *b, nb;
        if (lg_tokenizer_encode(t, text, p, 0, &b, &nb) != 0) {
            free(a);
            return -1;
        }
        /* done: the whole text, or two prefixes agree on the first max_tokens ids */
        int whole = p >= len;
        int agree = a && na >= max_tokens && nb >= max_tokens && !memcmp(a, b, (size_t)max_tokens * sizeof(int));
        if (whole || agree) {
            free(a);
            if (max_tokens >= 0 && nb > max_tokens) nb = max_tokens;
            *ids = b;
            *n = nb;
            return 0;
        }
        free(a);
        a = b, na = nb, pa = p;
        want = 2 * pa;
    }
}

/* ---- decode --------------------------------------------------------------------- */
typedef struct {
    tk_buf b;
    tk_ivec off; /* token i = b[off[2i], off[2i]+off[2i+1]) */
} toklist;

static void tl_add(toklist *l, const char *s, size_t n) {
    tk_ivec_push(&l->off, (int)l->b.n);
    tk_ivec_push(&l->off, (int)n);
    tk_buf_put(&l->b, s, n);
}
static void tl_free(toklist *l) {
    free(l->b.p);
    free(l->off.p);
}

/* Append s with invalid UTF-8 replaced by U+FFFD (maximal subparts, as Rust from_utf8_lossy). */
static void put_lossy(tk_buf *o, const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        size_t ok = lg_utf8_check(s + i, n - i);
        tk_buf_put(o, s + i, ok);
        i += ok;
        if (i >= n) break;
        /* length of the maximal invalid subpart starting at i */
        unsigned c = p[i];
        size_t k = 1, need = 0;
        unsigned lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) need = 1;
        else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
        }
        for (size_t j = 0; j < need && i + k < n; j++) {
            unsigned d = p[i + k];
            if (d < lo || d > hi) break;
            lo = 0x80, hi = 0xBF;
            k++;
        }
        tk_buf_put(o, "\xEF\xBF\xBD", 3);
        i += k;
    }
}

static int byte_token(const char *s, size_t n) {
    if (n != 6 || memcmp(s, "<0x", 3) || s[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

static void replace_all(tk_buf *o, const char *s, size_t n, const char *a, size_t al, const char *b, size_t bl) {
    size_t j = 0;
    while (j < n) {
        if (al && j + al <= n && !memcmp(s + j, a, al)) {
            tk_buf_put(o, b, bl);
            j += al;
        } else tk_buf_putc(o, s[j++]);
    }
}

static void run_decoder(const tk_dec *d, toklist *in, toklist *out, int raw) {
    size_t nt = in->off.n / 2;
#define TOK(i) (in->b.p + in->off.p[2 * (i)]), ((size_t)in->off.p[2 * (i) + 1])
    switch (d->type) {
    case DEC_BYTELEVEL: {
        tk_buf bytes = {0};
        for (size_t i = 0; i < nt; i++) {
            const char *s = in->b.p + in->off.p[2 * i];
            size_t n = (size_t)in->off.p[2 * i + 1];
            size_t mark = bytes.n;
            int all = 1;
            for (size_t j = 0; j < n;) {
                int k;
                uint32_t cp = lg_utf8_decode(s + j, &k);
                if (cp < 512 && g_u2b[cp] >= 0) tk_buf_putc(&bytes, (char)g_u2b[cp]);
                else {
                    all = 0;
                    break;
                }
                j += (size_t)k;
            }
            if (!all) {
                bytes.n = mark;
                tk_buf_put(&bytes, s, n);
            }
        }
        tk_buf o = {0};
        if (raw) tk_buf_put(&o, bytes.p, bytes.n);
        else put_lossy(&o, bytes.p, bytes.n);
        tl_add(out, o.p ? o.p : "", o.n);
        free(o.p);
        free(bytes.p);
        break;
    }
    case DEC_REPLACE:
        for (size_t i = 0; i < nt; i++) {
            tk_buf o = {0};
            replace_all(&o, TOK(i), d->a, d->alen, d->b, d->blen);
            tl_add(out, o.p ? o.p : "", o.n);
            free(o.p);
        }
        break;
    case DEC_BYTEFALLBACK: {
        tk_buf pend = {0};
        for (size_t i = 0; i <= nt; i++) {
            int v = i < nt ? byte_token(TOK(i)) : -1;
            if (v >= 0) {
                tk_buf_putc(&pend, (char)v);
                continue;
            }
            if (pend.n) {
                if (raw || lg_utf8_check(pend.p, pend.n) == pend.n) tl_add(out, pend.p, pend.n);
                else
                    for (size_t k = 0; k < pend.n; k++) tl_add(out, "\xEF\xBF\xBD", 3);
                pend.n = 0;
            }
            if (i < nt) tl_add(out, TOK(i));
        }
        free(pend.p);
        break;
    }
    case DEC_FUSE: {
        tk_ivec_push(&out->off, (int)out->b.n);
        tk_ivec_push(&out->off, (int)in->b.n);
        tk_buf_put(&out->b, in->b.p, in->b.n);
        /* tokens are contiguous in in->b, in order */
        break;
    }
    case DEC_STRIP:
        for (size_t i = 0; i < nt; i++) {
            const char *s = in->b.p + in->off.p[2 * i];
            size_t n = (size_t)in->off.p[2 * i + 1];
            char cb[4];
            size_t cl = (size_t)lg_utf8_encode(d->strip_ch, cb);
            for (int k = 0; k < d->start && n >= cl && !memcmp(s, cb, cl); k++) s += cl, n -= cl;
            for (int k = 0; k < d->stop && n >= cl && !memcmp(s + n - cl, cb, cl); k++) n -= cl;
            tl_add(out, s, n);
        }
        break;
    case DEC_METASPACE:
        for (size_t i = 0; i < nt; i++) {
            const char *s = in->b.p + in->off.p[2 * i];
            size_t n = (size_t)in->off.p[2 * i + 1];
            tk_buf o = {0};
            size_t rl = (size_t)d->replen;
            for (size_t j = 0; j < n;) {
                if (rl && j + rl <= n && !memcmp(s + j, d->rep, rl)) {
                    if (!(i == 0 && d->prepend_scheme != PREPEND_NEVER)) tk_buf_putc(&o, ' ');
                    j += rl;
                } else tk_buf_putc(&o, s[j++]);
            }
            tl_add(out, o.p ? o.p : "", o.n);
            free(o.p);
        }
        break;
    }
#undef TOK
}

int lg_tokenizer_decode_ex(const lg_tokenizer *t, const int *ids, int n, int flags, char **text, size_t *len) {
    *text = NULL;
    if (len) *len = 0;
    pthread_once(&g_b2u_once, b2u_init);
    toklist a = {0}, b = {0};
    for (int i = 0; i < n; i++) {
        int id = ids[i];
        if (id < 0 || id >= t->n_ids) {
            tl_free(&a);
            return lg_errorf("tokenizer: token id %d out of range (vocabulary of %d)", id, t->n_ids);
        }
        if (!t->piece[id]) continue;
        if (t->special[id] && !(flags & LG_DECODE_KEEP_SPECIAL)) continue;
        tl_add(&a, t->piece[id], t->plen[id]);
    }
    tk_buf o = {0};
    if (t->n_decs == 0) {
        size_t nt = a.off.n / 2;
        for (size_t i = 0; i < nt; i++) {
            if (i) tk_buf_putc(&o, ' ');
            tk_buf_put(&o, a.b.p + a.off.p[2 * i], (size_t)a.off.p[2 * i + 1]);
        }
    } else {
        for (int k = 0; k < t->n_decs; k++) {
            b.b.n = 0;
            b.off.n = 0;
            run_decoder(&t->decs[k], &a, &b, flags & LG_DECODE_RAW_BYTES);
            toklist sw = a;
            a = b;
            b = sw;
        }
        size_t nt = a.off.n / 2;
        for (size_t i = 0; i < nt; i++) tk_buf_put(&o, a.b.p + a.off.p[2 * i], (size_t)a.off.p[2 * i + 1]);
    }
    tl_free(&a);
    tl_free(&b);
    tk_buf_putc(&o, 0);
    *text = o.p;
    if (len) *len = o.n - 1;
    return 0;
}

int lg_tokenizer_decode(const lg_tokenizer *t, const int *ids, int n, char **text, size_t *len) {
    return lg_tokenizer_decode_ex(t, ids, n, 0, text, len);
}

/* ---- accessors ------------------------------------------------------------------ */
int lg_tokenizer_vocab_size(const lg_tokenizer *t) { return t->n_ids; }
int lg_tokenizer_bos(const lg_tokenizer *t) { return t->bos; }
int lg_tokenizer_eos(const lg_tokenizer *t) { return t->eos; }
int lg_tokenizer_pad(const lg_tokenizer *t) { return t->pad >= 0 ? t->pad : t->eos >= 0 ? t->eos : 0; }
int lg_tokenizer_is_special(const lg_tokenizer *t, int id) {
    return id >= 0 && id < t->n_ids && t->special[id];
}
const char *lg_tokenizer_id_to_piece(const lg_tokenizer *t, int id) {
    return id >= 0 && id < t->n_ids ? t->piece[id] : NULL;
}
int lg_tokenizer_piece_to_id(const lg_tokenizer *t, const char *piece) {
    return tk_smap_get(&t->pieces, piece, strlen(piece));
}

/* ---- construction helpers ------------------------------------------------------- */
int tk_finish(lg_tokenizer *t) {
    pthread_once(&g_b2u_once, b2u_init);
    /* code point -> single-character vocab id table */
    t->cp_id = lg_malloc(0x10000 * sizeof(int));
    for (int i = 0; i < 0x10000; i++) t->cp_id[i] = -1;
    for (uint32_t e = 0; e < t->vocab.n; e++) {
        const struct tk_sent *s = &t->vocab.ent[e];
        if (s->len == 0 || s->len > 3) continue;
        const char *k = t->vocab.keys + s->off;
        int n;
        if (lg_utf8_check(k, s->len) != s->len) continue;
        uint32_t cp = lg_utf8_decode(k, &n);
        if ((uint32_t)n == s->len && cp < 0x10000) t->cp_id[cp] = s->val;
    }
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->byte_tok[b] = tk_smap_get(&t->vocab, name, 6);
    }
    for (int k = 0; k < t->n_added; k++) {
        tk_added *a = &t->added[k];
        if (a->normalized && !a->norm) { /* match the token as the normalizer would have turned it */
            enc_ctx c;
            memset(&c, 0, sizeof c);
            c.t = t;
            tk_buf nb = {0};
            c.md = pcre2_match_data_create(8, NULL);
            int rc = normalize(&c, a->content, a->len, &nb);
            pcre2_match_data_free(c.md);
            free(c.m.p);
            if (rc) {
                free(nb.p);
                return -1;
            }
            tk_buf_putc(&nb, 0);
            a->norm = nb.p;
            a->norm_len = nb.n - 1;
        }
        const char *cs = a->normalized ? a->norm : a->content;
        size_t cl = a->normalized ? a->norm_len : a->len;
        if (!cl) continue;
        t->added_first[a->normalized][(unsigned char)cs[0]] = 1;
        if (a->normalized) t->has_norm_added = 1;
        else t->has_raw_added = 1;
    }
    if (pthread_mutex_init(&t->cache.mu, NULL)) return lg_errorf("tokenizer: cannot create a mutex");
    return 0;
}

void tk_free_parts(lg_tokenizer *t) {
    for (int i = 0; i < t->n_ids; i++) free(t->piece[i]);
    free(t->piece);
    free(t->plen);
    free(t->special);
    tk_smap_free(&t->vocab);
    tk_smap_free(&t->pieces);
    tk_pmap_free(&t->merges);
    free(t->cont_prefix);
    free(t->eow_suffix);
    free(t->cp_id);
    free(t->score);
    free(t->mergeable);
    for (int i = 0; i < t->n_added; i++) {
        free(t->added[i].content);
        free(t->added[i].norm);
    }
    free(t->added);
    for (int i = 0; i < t->n_norms; i++) {
        free(t->norms[i].a);
        free(t->norms[i].b);
        if (t->norms[i].re) pcre2_code_free(t->norms[i].re);
    }
    free(t->norms);
    for (int i = 0; i < t->n_pretoks; i++)
        if (t->pretoks[i].re) pcre2_code_free(t->pretoks[i].re);
    free(t->pretoks);
    for (int i = 0; i < t->n_decs; i++) {
        free(t->decs[i].a);
        free(t->decs[i].b);
    }
    free(t->decs);
    free(t->prefix);
    free(t->suffix);
    free(t->src_json);
    free(t->src_config);
    tk_smap_free(&t->cache.map);
    free(t->cache.ids.p);
}

void lg_tokenizer_free(lg_tokenizer *t) {
    if (!t) return;
    int had_mutex = t->cp_id != NULL;
    tk_free_parts(t);
    if (had_mutex) pthread_mutex_destroy(&t->cache.mu);
    free(t);
}

/* ---- loading ---------------------------------------------------------------------- */
int lg_tokenizer_load_json_mem(const char *json, size_t len, const char *config_json, size_t config_len,
                               const char *name, lg_tokenizer **out) {
    *out = NULL;
    lg_tokenizer *t = lg_calloc(1, sizeof *t);
    if (tk_hf_load(t, json, len, config_json, config_len, name ? name : "tokenizer.json") || tk_finish(t)) {
        lg_tokenizer_free(t);
        return -1;
    }
    *out = t;
    return 0;
}

static int is_json_text(const char *d, size_t n) {
    size_t i = 0;
    if (n >= 3 && !memcmp(d, "\xEF\xBB\xBF", 3)) i = 3;
    while (i < n && (d[i] == ' ' || d[i] == '\t' || d[i] == '\n' || d[i] == '\r')) i++;
    return i < n && d[i] == '{';
}

int lg_tokenizer_load(const char *path, lg_tokenizer **out) {
    *out = NULL;
    if (!path || !*path) return lg_errorf("tokenizer: no path given");
    if (!lg_is_dir(path) && lg_gguf_is_gguf(path)) return lg_gguf_tokenizer(path, out); /* from its metadata */
    char *file = NULL, *dir = NULL;
    if (lg_is_dir(path)) {
        char *j = lg_path_join(path, "tokenizer.json");
        char *b = lg_path_join(path, "tokenizer.bin");
        if (lg_file_exists(j)) {
            file = j;
            free(b);
        } else if (lg_file_exists(b)) {
            file = b;
            free(j);
        } else {
            free(j);
            free(b);
            return lg_errorf("%s: directory has neither tokenizer.json nor tokenizer.bin", path);
        }
        dir = lg_strdup(path);
    } else {
        file = lg_strdup(path);
        const char *sl = strrchr(path, '/');
        if (sl) {
            dir = lg_malloc((size_t)(sl - path) + 2);
            memcpy(dir, path, (size_t)(sl - path) + 1);
            dir[sl - path + 1] = 0;
        } else dir = lg_strdup(".");
    }
    char *data = NULL;
    size_t n = 0;
    int rc = lg_read_file(file, &data, &n);
    if (rc == 0) {
        if (is_json_text(data, n)) {
            char *cfgp = lg_path_join(dir, "tokenizer_config.json");
            char *cfg = NULL;
            size_t cfgn = 0;
            if (lg_file_exists(cfgp) && lg_read_file(cfgp, &cfg, &cfgn)) rc = -1;
            if (rc == 0) {
                lg_tokenizer *t = lg_calloc(1, sizeof *t);
                if (tk_hf_load(t, data, n, cfg, cfgn, file) || tk_finish(t)) {
                    lg_tokenizer_free(t);
                    rc = -1;
                } else *out = t;
            }
            free(cfg);
            free(cfgp);
        } else {
            rc = lg_tokenizer_load_llama2c_mem(data, n, file, out);
        }
    }
    free(data);
    free(file);
    free(dir);
    return rc;
}
