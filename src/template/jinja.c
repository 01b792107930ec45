/* jinja.c — see jinja.h. Lexer (jinja2's rules with trim_blocks + lstrip_blocks), recursive-descent
 * parser (jinja2's grammar and precedence), tree-walking evaluator over Python-like values.
 * All memory of a parse lives in the template's arena, all memory of a render in the render's
 * arena; errors unwind with longjmp to the entry point, which frees the arena. */
#include "template/jinja.h"

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/util.h"

/* ==== arena ===================================================================================== */
typedef struct ablock {
    struct ablock *next;
    size_t used, cap;
    max_align_t data[];
} ablock;
typedef struct {
    ablock *head;
} arena;

static void *ar_alloc(arena *a, size_t n) {
    n = (n + 15) & ~(size_t)15;
    if (!a->head || a->head->used + n > a->head->cap) {
        size_t cap = n > 32768 ? n : 32768;
        ablock *b = lg_malloc(sizeof *b + cap);
        b->next = a->head;
        b->used = 0;
        b->cap = cap;
        a->head = b;
    }
    void *p = (char *)a->head->data + a->head->used;
    a->head->used += n;
    memset(p, 0, n);
    return p;
}
static void ar_free(arena *a) {
    for (ablock *b = a->head, *nx; b; b = nx) {
        nx = b->next;
        free(b);
    }
    a->head = NULL;
}
static char *ar_strndup(arena *a, const char *s, size_t n) {
    char *p = ar_alloc(a, n + 1);
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

/* ==== UTF-8 and Python's str.isspace ============================================================= */
static uint32_t u8dec(const char *s, size_t n, size_t *len) {
    const unsigned char *u = (const unsigned char *)s;
    if (u[0] < 0x80 || n < 2) return *len = 1, u[0];
    if (u[0] < 0xE0) return *len = 2, ((uint32_t)(u[0] & 0x1F) << 6) | (u[1] & 0x3F);
    if (u[0] < 0xF0 || n < 4) {
        if (n < 3) return *len = 1, u[0];
        return *len = 3, ((uint32_t)(u[0] & 0x0F) << 12) | ((uint32_t)(u[1] & 0x3F) << 6) | (u[2] & 0x3F);
    }
    return *len = 4, ((uint32_t)(u[0] & 0x07) << 18) | ((uint32_t)(u[1] & 0x3F) << 12) | ((uint32_t)(u[2] & 0x3F) << 6) |
                          (u[3] & 0x3F);
}
static int py_space(uint32_t c) {
    return (c >= 9 && c <= 13) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}
/* length of the white space at the start / end of s[0..n) */
static size_t ws_lead(const char *s, size_t n) {
    size_t i = 0, l;
    while (i < n && py_space(u8dec(s + i, n - i, &l))) i += l;
    return i;
}
static size_t ws_trail(const char *s, size_t n) {
    size_t e = n;
    while (e > 0) {
        size_t b = e - 1;
        while (b > 0 && ((unsigned char)s[b] & 0xC0) == 0x80) b--;
        size_t l;
        if (!py_space(u8dec(s + b, e - b, &l))) break;
        e = b;
    }
    return n - e;
}
static size_t u8count(const char *s, size_t n) {
    size_t c = 0;
    for (size_t i = 0; i < n; i++) c += ((unsigned char)s[i] & 0xC0) != 0x80;
    return c;
}
/* byte offset of code point k (k <= count) */
static size_t u8off(const char *s, size_t n, size_t k) {
    size_t i = 0;
    while (i < n && k) {
        i++;
        while (i < n && ((unsigned char)s[i] & 0xC0) == 0x80) i++;
        k--;
    }
    return i;
}

/* ==== values ===================================================================================== */
typedef enum { V_UNDEF, V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_LIST, V_DICT, V_FUNC } vkind;
typedef struct list list;
typedef struct dict dict;
typedef struct func func;
typedef struct val {
    vkind k;
    union {
        int b;
        int64_t i;
        double f;
        struct {
            const char *p;
            size_t n;
        } s;
        list *l;
        dict *d;
        func *fn;
    };
    const char *uname; /* undefined: what was looked up */
} val;
struct list {
    val *v;
    size_t n, cap;
    int tuple;
};
struct dict {
    val *k, *v;
    size_t n, cap;
    int ns; /* a namespace() object: attributes assignable with set */
};

/* ==== AST ======================================================================================== */
enum {
    /* expressions */
    E_LIT, E_NAME, E_ATTR, E_ITEM, E_SLICE, E_CALL, E_FILTER, E_TEST, E_BIN, E_NEG, E_POS, E_NOT, E_AND, E_OR,
    E_COND, E_LIST, E_TUPLE, E_DICT, E_CMP, E_CONCAT,
    /* statements */
    S_TEXT, S_OUT, S_IF, S_FOR, S_SET, S_SETBLOCK, S_MACRO, S_BREAK, S_CONTINUE, S_GEN, S_FILTERBLOCK
};
enum { OP_ADD, OP_SUB, OP_MUL, OP_DIV, OP_FLOORDIV, OP_MOD, OP_POW };
enum { C_EQ, C_NE, C_LT, C_LE, C_GT, C_GE, C_IN, C_NOTIN };

typedef struct node node;
struct node {
    int kind, line, col;
    node *a, *b, *c;
    node **v;    /* args / elements / body */
    int nv;
    node **kv;   /* keyword values / dict values / macro defaults */
    const char **names; /* keyword names / assignment targets / macro parameters */
    int nnames;
    int *ops;    /* comparison operators */
    const char *s; /* name / attribute / filter / text */
    size_t sn;
    val lit;
    int op, neg;
    node *body2; /* else body (for/if) as an S_* list holder: v of a pseudo node */
};

struct lg_jinja {
    arena ar;
    node *root; /* a node whose v/nv is the statement list */
    const char *name;
    int has_gen;
};

/* ==== lexer ====================================================================================== */
enum { T_TEXT, T_VBEGIN, T_VEND, T_BBEGIN, T_BEND, T_NAME, T_STR, T_INT, T_FLOAT, T_OP, T_EOF };
typedef struct {
    int type, line, col;
    const char *s; /* text / name / op / decoded string */
    size_t n;
    int64_t i;
    double f;
} tok;

typedef struct {
    arena *ar;
    const char *name;
    const char *src; /* normalised source */
    size_t n;
    tok *t;
    size_t nt, cap;
    size_t pos; /* parser position in t */
    char err[512];
    jmp_buf jb;
    int has_gen;
} P;

static void pos_of(const P *p, size_t off, int *line, int *col) {
    int l = 1, c = 1;
    for (size_t i = 0; i < off && i < p->n; i++) {
        if (p->src[i] == '\n') l++, c = 1;
        else if (((unsigned char)p->src[i] & 0xC0) != 0x80) c++;
    }
    *line = l, *col = c;
}

LG_PRINTF(4, 5) static _Noreturn void pfail(P *p, int line, int col, const char *fmt, ...) {
    char m[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof m, fmt, ap);
    va_end(ap);
    snprintf(p->err, sizeof p->err, "%s:%d:%d: %s", p->name, line, col, m);
    longjmp(p->jb, 1);
}

static void push_tok(P *p, int type, size_t off, const char *s, size_t n) {
    if (p->nt == p->cap) {
        p->cap = p->cap ? p->cap * 2 : 256;
        p->t = lg_realloc(p->t, p->cap * sizeof(tok));
    }
    tok *t = &p->t[p->nt++];
    memset(t, 0, sizeof *t);
    t->type = type;
    t->s = s;
    t->n = n;
    pos_of(p, off, &t->line, &t->col);
}

static int starts(const P *p, size_t i, const char *s) {
    size_t k = strlen(s);
    return i + k <= p->n && !memcmp(p->src + i, s, k);
}

/* the text before a tag, with '-' / lstrip_blocks applied */
static void emit_text(P *p, size_t a, size_t b, int sign, int is_var, int line_starting) {
    const char *s = p->src + a;
    size_t n = b - a;
    if (sign == '-') {
        n -= ws_trail(s, n);
    } else if (sign != '+' && !is_var) { /* lstrip_blocks */
        size_t l = n;
        while (l > 0 && s[l - 1] != '\n') l--;
        if ((l > 0 || line_starting) && n > l && ws_lead(s + l, n - l) == n - l) n = l;
    }
    if (n) push_tok(p, T_TEXT, a, s, n);
}

/* Python / Jinja string literal body -> bytes */
static void decode_string(P *p, size_t a, size_t b, const char **out, size_t *outn) {
    char *o = ar_alloc(p->ar, (b - a) * 4 + 1);
    size_t k = 0;
    for (size_t i = a; i < b; i++) {
        char c = p->src[i];
        if (c != '\\' || i + 1 >= b) {
            o[k++] = c;
            continue;
        }
        char e = p->src[++i];
        uint32_t cp = 0;
        int hex = 0;
        switch (e) {
        case 'n': o[k++] = '\n'; break;
        case 't': o[k++] = '\t'; break;
        case 'r': o[k++] = '\r'; break;
        case '\\': o[k++] = '\\'; break;
        case '\'': o[k++] = '\''; break;
        case '"': o[k++] = '"'; break;
        case 'a': o[k++] = '\a'; break;
        case 'b': o[k++] = '\b'; break;
        case 'f': o[k++] = '\f'; break;
        case 'v': o[k++] = '\v'; break;
        case '\n': break;
        case 'x': hex = 2; break;
        case 'u': hex = 4; break;
        case 'U': hex = 8; break;
        default:
            if (e >= '0' && e <= '7') {
                int d = 0;
                i--;
                while (d < 3 && i + 1 < b && p->src[i + 1] >= '0' && p->src[i + 1] <= '7') cp = cp * 8 + (uint32_t)(p->src[++i] - '0'), d++;
                hex = -1;
            } else {
                o[k++] = '\\';
                o[k++] = e;
            }
        }
        if (hex > 0) {
            for (int d = 0; d < hex; d++) {
                char h = i + 1 < b ? p->src[i + 1] : 0;
                int v = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
                if (v < 0) {
                    int l, cl;
                    pos_of(p, i, &l, &cl);
                    pfail(p, l, cl, "truncated \\%c escape in a string literal", e);
                }
                cp = cp * 16 + (uint32_t)v;
                i++;
            }
        }
        if (hex) {
            if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
                int l, cl;
                pos_of(p, i, &l, &cl);
                pfail(p, l, cl, "escape for an invalid code point U+%X in a string literal", (unsigned)cp);
            }
            if (cp < 0x80) o[k++] = (char)cp;
            else if (cp < 0x800) o[k++] = (char)(0xC0 | (cp >> 6)), o[k++] = (char)(0x80 | (cp & 0x3F));
            else if (cp < 0x10000)
                o[k++] = (char)(0xE0 | (cp >> 12)), o[k++] = (char)(0x80 | ((cp >> 6) & 0x3F)), o[k++] = (char)(0x80 | (cp & 0x3F));
            else
                o[k++] = (char)(0xF0 | (cp >> 18)), o[k++] = (char)(0x80 | ((cp >> 12) & 0x3F)),
                o[k++] = (char)(0x80 | ((cp >> 6) & 0x3F)), o[k++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    o[k] = 0;
    *out = o;
    *outn = k;
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }
static int is_id0(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
static int is_id(char c) { return is_id0(c) || is_digit(c); }

/* tokens inside {{ }} / {% %} up to and including the end tag; returns the offset after it */
static size_t lex_tag(P *p, size_t i, int is_var, int *line_starting) {
    int depth = 0;
    for (;;) {
        if (i >= p->n) {
            int l, c;
            pos_of(p, i, &l, &c);
            pfail(p, l, c, "unexpected end of template: %s not closed", is_var ? "'{{'" : "'{%'");
        }
        if (depth == 0) {
            const char *end = is_var ? "}}" : "%}";
            if (starts(p, i, "-") && starts(p, i + 1, end)) {
                push_tok(p, is_var ? T_VEND : T_BEND, i, NULL, 0);
                i += 3;
                size_t w = ws_lead(p->src + i, p->n - i);
                i += w;
                *line_starting = p->src[i - 1] == '\n';
                return i;
            }
            if (!is_var && starts(p, i, "+%}")) {
                push_tok(p, T_BEND, i, NULL, 0);
                *line_starting = 0;
                return i + 3;
            }
            if (starts(p, i, end)) {
                push_tok(p, is_var ? T_VEND : T_BEND, i, NULL, 0);
                i += 2;
                if (!is_var && i < p->n && p->src[i] == '\n') i++; /* trim_blocks */
                *line_starting = p->src[i - 1] == '\n';
                return i;
            }
        }
        char c = p->src[i];
        size_t l;
        if (py_space(u8dec(p->src + i, p->n - i, &l))) {
            i += l;
            continue;
        }
        if (is_digit(c)) {
            size_t a = i;
            while (i < p->n && (is_digit(p->src[i]) || p->src[i] == '_')) i++;
            int isf = 0;
            if (i + 1 < p->n && p->src[i] == '.' && is_digit(p->src[i + 1])) {
                isf = 1;
                i++;
                while (i < p->n && (is_digit(p->src[i]) || p->src[i] == '_')) i++;
            }
            if (i < p->n && (p->src[i] == 'e' || p->src[i] == 'E')) {
                size_t j = i + 1;
                if (j < p->n && (p->src[j] == '+' || p->src[j] == '-')) j++;
                if (j < p->n && is_digit(p->src[j])) {
                    isf = 1;
                    i = j;
                    while (i < p->n && is_digit(p->src[i])) i++;
                }
            }
            char buf[64];
            size_t k = 0;
            for (size_t j = a; j < i && k < sizeof buf - 1; j++)
                if (p->src[j] != '_') buf[k++] = p->src[j];
            buf[k] = 0;
            push_tok(p, isf ? T_FLOAT : T_INT, a, p->src + a, i - a);
            if (isf) p->t[p->nt - 1].f = strtod(buf, NULL);
            else p->t[p->nt - 1].i = strtoll(buf, NULL, 10);
            continue;
        }
        if (is_id0(c)) {
            size_t a = i;
            while (i < p->n && is_id(p->src[i])) i++;
            push_tok(p, T_NAME, a, p->src + a, i - a);
            continue;
        }
        if (c == '\'' || c == '"') {
            size_t a = i++;
            while (i < p->n && p->src[i] != c) i += p->src[i] == '\\' ? 2 : 1;
            if (i >= p->n) {
                int ln, cl;
                pos_of(p, a, &ln, &cl);
                pfail(p, ln, cl, "unterminated string literal");
            }
            const char *s;
            size_t sn;
            decode_string(p, a + 1, i, &s, &sn);
            push_tok(p, T_STR, a, s, sn);
            i++;
            continue;
        }
        static const char *const OPS[] = {"//", "**", "==", "!=", ">=", "<=", "+", "-", "/", "*", "%", "~", "[", "]",
                                          "(", ")", "{", "}", ">", "<", "=", ".", ":", "|", ",", ";"};
        int found = 0;
        for (size_t k = 0; k < sizeof OPS / sizeof OPS[0]; k++)
            if (starts(p, i, OPS[k])) {
                size_t on = strlen(OPS[k]);
                push_tok(p, T_OP, i, OPS[k], on);
                if (strchr("([{", OPS[k][0])) depth++;
                else if (strchr(")]}", OPS[k][0])) {
                    if (depth == 0) {
                        int ln, cl;
                        pos_of(p, i, &ln, &cl);
                        pfail(p, ln, cl, "unexpected '%c'", OPS[k][0]);
                    }
                    depth--;
                }
                i += on;
                found = 1;
                break;
            }
        if (!found) {
            int ln, cl;
            pos_of(p, i, &ln, &cl);
            pfail(p, ln, cl, "unexpected character '%.*s'", (int)l, p->src + i);
        }
    }
}

static void lex(P *p) {
    size_t i = 0;
    int line_starting = 1;
    while (i < p->n) {
        /* next tag opener */
        size_t m = i;
        while (m + 1 < p->n && !(p->src[m] == '{' && (p->src[m + 1] == '{' || p->src[m + 1] == '%' || p->src[m + 1] == '#'))) m++;
        if (m + 1 >= p->n) {
            push_tok(p, T_TEXT, i, p->src + i, p->n - i);
            break;
        }
        char kind = p->src[m + 1];
        int sign = m + 2 < p->n && (p->src[m + 2] == '-' || p->src[m + 2] == '+') ? p->src[m + 2] : 0;
        size_t after = m + 2 + (sign ? 1 : 0);
        /* {% raw %} */
        int raw = 0;
        size_t raw_end = 0;
        if (kind == '%') {
            size_t j = after + ws_lead(p->src + after, p->n - after);
            if (starts(p, j, "raw") && !(j + 3 < p->n && is_id(p->src[j + 3]))) {
                j += 3;
                j += ws_lead(p->src + j, p->n - j);
                if (starts(p, j, "-%}")) raw = 1, raw_end = j + 3 + ws_lead(p->src + j + 3, p->n - j - 3);
                else if (starts(p, j, "%}")) raw = 1, raw_end = j + 2;
            }
        }
        emit_text(p, i, m, sign, kind == '{', line_starting);
        if (raw) {
            /* body up to {% endraw %} */
            size_t j = raw_end;
            for (;;) {
                if (j + 1 >= p->n) {
                    int ln, cl;
                    pos_of(p, m, &ln, &cl);
                    pfail(p, ln, cl, "missing end of raw directive");
                }
                if (p->src[j] == '{' && p->src[j + 1] == '%') {
                    int s2 = j + 2 < p->n && (p->src[j + 2] == '-' || p->src[j + 2] == '+') ? p->src[j + 2] : 0;
                    size_t k = j + 2 + (s2 ? 1 : 0);
                    k += ws_lead(p->src + k, p->n - k);
                    if (starts(p, k, "endraw")) {
                        k += 6;
                        k += ws_lead(p->src + k, p->n - k);
                        size_t e = 0;
                        if (starts(p, k, "+%}")) e = k + 3;
                        else if (starts(p, k, "-%}")) e = k + 3 + ws_lead(p->src + k + 3, p->n - k - 3);
                        else if (starts(p, k, "%}")) e = k + 2 + (k + 2 < p->n && p->src[k + 2] == '\n');
                        if (e) {
                            emit_text(p, raw_end, j, s2, 0, 0);
                            i = e;
                            line_starting = p->src[e - 1] == '\n';
                            break;
                        }
                    }
                }
                j++;
            }
            continue;
        }
        if (kind == '#') {
            size_t q = after;
            while (q + 1 < p->n && !(p->src[q] == '#' && p->src[q + 1] == '}')) q++;
            if (q + 1 >= p->n) {
                int ln, cl;
                pos_of(p, m, &ln, &cl);
                pfail(p, ln, cl, "missing end of comment tag");
            }
            size_t e = q + 2;
            if (q > after && p->src[q - 1] == '-') e += ws_lead(p->src + e, p->n - e);
            else if (q > after && p->src[q - 1] == '+') {
            } else if (e < p->n && p->src[e] == '\n') e++;
            line_starting = p->src[e - 1] == '\n';
            i = e;
            continue;
        }
        push_tok(p, kind == '{' ? T_VBEGIN : T_BBEGIN, m, NULL, 0);
        i = lex_tag(p, after, kind == '{', &line_starting);
    }
    push_tok(p, T_EOF, p->n, NULL, 0);
}

/* ==== parser ===================================================================================== */
static tok *cur(P *p) { return &p->t[p->pos]; }
static tok *peek(P *p, int k) { return p->pos + (size_t)k < p->nt ? &p->t[p->pos + (size_t)k] : &p->t[p->nt - 1]; }
static int is_op(const tok *t, const char *op) { return t->type == T_OP && t->n == strlen(op) && !memcmp(t->s, op, t->n); }
static int is_name(const tok *t, const char *nm) { return t->type == T_NAME && t->n == strlen(nm) && !memcmp(t->s, nm, t->n); }
static const char *tok_desc(const tok *t, char *buf, size_t cap) {
    switch (t->type) {
    case T_EOF: return "end of template";
    case T_VEND: return "end of print statement '}}'";
    case T_BEND: return "end of statement block '%}'";
    case T_VBEGIN: return "'{{'";
    case T_BBEGIN: return "'{%'";
    case T_TEXT: return "template text";
    case T_STR: return "a string";
    default: snprintf(buf, cap, "'%.*s'", (int)(t->n > 40 ? 40 : t->n), t->s); return buf;
    }
}
static _Noreturn void unexpected(P *p, const char *want) {
    char b[64];
    tok *t = cur(p);
    if (want) pfail(p, t->line, t->col, "expected %s, got %s", want, tok_desc(t, b, sizeof b));
    pfail(p, t->line, t->col, "unexpected %s", tok_desc(t, b, sizeof b));
}
static void expect_op(P *p, const char *op) {
    if (!is_op(cur(p), op)) {
        char w[16];
        snprintf(w, sizeof w, "'%s'", op);
        unexpected(p, w);
    }
    p->pos++;
}
static const char *tok_name(P *p, const tok *t) { return ar_strndup(p->ar, t->s, t->n); }
static const char *expect_name(P *p) {
    if (cur(p)->type != T_NAME) unexpected(p, "a name");
    return tok_name(p, &p->t[p->pos++]);
}

static node *mk(P *p, int kind, const tok *at) {
    node *n = ar_alloc(p->ar, sizeof *n);
    n->kind = kind;
    n->line = at->line;
    n->col = at->col;
    return n;
}
typedef struct {
    node **v;
    int n, cap;
} nvec;
static void nv_push(P *p, nvec *v, node *x) {
    if (v->n == v->cap) {
        int nc = v->cap ? v->cap * 2 : 4;
        node **nw = ar_alloc(p->ar, (size_t)nc * sizeof *nw);
        if (v->n) memcpy(nw, v->v, (size_t)v->n * sizeof *nw);
        v->v = nw;
        v->cap = nc;
    }
    v->v[v->n++] = x;
}

static node *parse_expr(P *p, int condexpr);
static node *parse_or(P *p);
static node *parse_unary(P *p, int with_filter);
static node *parse_primary(P *p);
static node *parse_postfix(P *p, node *n);
static node *parse_tuple(P *p, int condexpr, int explicit_parens);

static void parse_call_args(P *p, node *n) {
    expect_op(p, "(");
    nvec args = {0}, kw = {0};
    const char **names = NULL;
    int nn = 0, cap = 0;
    while (!is_op(cur(p), ")")) {
        if (args.n || kw.n) expect_op(p, ",");
        if (is_op(cur(p), ")")) break;
        if (is_op(cur(p), "*") || is_op(cur(p), "**")) pfail(p, cur(p)->line, cur(p)->col, "unsupported construct: *args / **kwargs in a call");
        if (cur(p)->type == T_NAME && is_op(peek(p, 1), "=")) {
            const char *nm = expect_name(p);
            p->pos++;
            if (nn == cap) {
                cap = cap ? cap * 2 : 4;
                const char **nw = ar_alloc(p->ar, (size_t)cap * sizeof *nw);
                if (nn) memcpy(nw, names, (size_t)nn * sizeof *nw);
                names = nw;
            }
            names[nn++] = nm;
            nv_push(p, &kw, parse_expr(p, 1));
        } else {
            if (kw.n) pfail(p, cur(p)->line, cur(p)->col, "positional argument after a keyword argument");
            nv_push(p, &args, parse_expr(p, 1));
        }
    }
    p->pos++;
    n->v = args.v, n->nv = args.n;
    n->kv = kw.v, n->names = names, n->nnames = nn;
}

static node *parse_expr(P *p, int condexpr) {
    if (!condexpr) return parse_or(p);
    node *e = parse_or(p);
    while (is_name(cur(p), "if")) {
        tok *at = cur(p);
        p->pos++;
        node *c = mk(p, E_COND, at);
        c->a = parse_or(p);
        c->b = e;
        if (is_name(cur(p), "else")) {
            p->pos++;
            c->c = parse_expr(p, 1);
        }
        e = c;
    }
    return e;
}

static node *parse_not(P *p);
static node *parse_and(P *p) {
    node *l = parse_not(p);
    while (is_name(cur(p), "and")) {
        node *n = mk(p, E_AND, cur(p));
        p->pos++;
        n->a = l;
        n->b = parse_not(p);
        l = n;
    }
    return l;
}
static node *parse_or(P *p) {
    node *l = parse_and(p);
    while (is_name(cur(p), "or")) {
        node *n = mk(p, E_OR, cur(p));
        p->pos++;
        n->a = l;
        n->b = parse_and(p);
        l = n;
    }
    return l;
}
static node *parse_math1(P *p);
static node *parse_compare(P *p) {
    tok *at = cur(p);
    node *first = parse_math1(p);
    nvec ops = {0};
    int *opv = NULL, no = 0, cap = 0;
    for (;;) {
        int op = -1;
        tok *t = cur(p);
        if (is_op(t, "==")) op = C_EQ;
        else if (is_op(t, "!=")) op = C_NE;
        else if (is_op(t, "<")) op = C_LT;
        else if (is_op(t, "<=")) op = C_LE;
        else if (is_op(t, ">")) op = C_GT;
        else if (is_op(t, ">=")) op = C_GE;
        else if (is_name(t, "in")) op = C_IN;
        else if (is_name(t, "not") && is_name(peek(p, 1), "in")) op = C_NOTIN, p->pos++;
        if (op < 0) break;
        p->pos++;
        if (no == cap) {
            cap = cap ? cap * 2 : 4;
            int *nw = ar_alloc(p->ar, (size_t)cap * sizeof *nw);
            if (no) memcpy(nw, opv, (size_t)no * sizeof *nw);
            opv = nw;
        }
        opv[no++] = op;
        nv_push(p, &ops, parse_math1(p));
    }
    if (!no) return first;
    node *n = mk(p, E_CMP, at);
    n->a = first;
    n->v = ops.v, n->nv = ops.n;
    n->ops = opv;
    return n;
}
static node *parse_not(P *p) {
    if (is_name(cur(p), "not")) {
        node *n = mk(p, E_NOT, cur(p));
        p->pos++;
        n->a = parse_not(p);
        return n;
    }
    return parse_compare(p);
}
static node *parse_pow(P *p) {
    node *l = parse_unary(p, 1);
    while (is_op(cur(p), "**")) {
        node *n = mk(p, E_BIN, cur(p));
        p->pos++;
        n->op = OP_POW;
        n->a = l;
        n->b = parse_unary(p, 1);
        l = n;
    }
    return l;
}
static node *parse_math2(P *p) {
    node *l = parse_pow(p);
    for (;;) {
        int op = is_op(cur(p), "*") ? OP_MUL : is_op(cur(p), "/") ? OP_DIV : is_op(cur(p), "//") ? OP_FLOORDIV : is_op(cur(p), "%") ? OP_MOD : -1;
        if (op < 0) return l;
        node *n = mk(p, E_BIN, cur(p));
        p->pos++;
        n->op = op;
        n->a = l;
        n->b = parse_pow(p);
        l = n;
    }
}
static node *parse_concat(P *p) {
    tok *at = cur(p);
    node *first = parse_math2(p);
    if (!is_op(cur(p), "~")) return first;
    nvec v = {0};
    nv_push(p, &v, first);
    while (is_op(cur(p), "~")) {
        p->pos++;
        nv_push(p, &v, parse_math2(p));
    }
    node *n = mk(p, E_CONCAT, at);
    n->v = v.v, n->nv = v.n;
    return n;
}
static node *parse_math1(P *p) {
    node *l = parse_concat(p);
    for (;;) {
        int op = is_op(cur(p), "+") ? OP_ADD : is_op(cur(p), "-") ? OP_SUB : -1;
        if (op < 0) return l;
        node *n = mk(p, E_BIN, cur(p));
        p->pos++;
        n->op = op;
        n->a = l;
        n->b = parse_concat(p);
        l = n;
    }
}

static node *parse_filter_expr(P *p, node *n) {
    for (;;) {
        if (is_op(cur(p), "|")) {
            tok *at = cur(p);
            p->pos++;
            node *f = mk(p, E_FILTER, at);
            tok *nt = cur(p);
            f->s = expect_name(p);
            f->line = nt->line, f->col = nt->col;
            while (is_op(cur(p), ".")) { /* dotted filter names */
                p->pos++;
                const char *more = expect_name(p);
                size_t l1 = strlen(f->s), l2 = strlen(more);
                char *s = ar_alloc(p->ar, l1 + l2 + 2);
                memcpy(s, f->s, l1);
                s[l1] = '.';
                memcpy(s + l1 + 1, more, l2 + 1);
                f->s = s;
            }
            if (is_op(cur(p), "(")) parse_call_args(p, f);
            f->a = n;
            n = f;
        } else if (is_name(cur(p), "is")) {
            tok *at = cur(p);
            p->pos++;
            node *t = mk(p, E_TEST, at);
            if (is_name(cur(p), "not")) t->neg = 1, p->pos++;
            tok *nt = cur(p);
            t->s = expect_name(p);
            t->line = nt->line, t->col = nt->col;
            tok *c = cur(p);
            if (is_op(c, "(")) parse_call_args(p, t);
            else if ((c->type == T_NAME || c->type == T_STR || c->type == T_INT || c->type == T_FLOAT || is_op(c, "[") ||
                      is_op(c, "{")) &&
                     !is_name(c, "else") && !is_name(c, "or") && !is_name(c, "and")) {
                if (is_name(c, "is")) pfail(p, c->line, c->col, "you cannot chain multiple tests with is");
                node *arg = parse_postfix(p, parse_primary(p));
                t->v = ar_alloc(p->ar, sizeof(node *));
                t->v[0] = arg;
                t->nv = 1;
            }
            t->a = n;
            n = t;
        } else if (is_op(cur(p), "(")) {
            node *c = mk(p, E_CALL, cur(p));
            parse_call_args(p, c);
            c->a = n;
            n = c;
        } else {
            return n;
        }
    }
}

static node *parse_unary(P *p, int with_filter) {
    node *n;
    if (is_op(cur(p), "-") || is_op(cur(p), "+")) {
        n = mk(p, is_op(cur(p), "-") ? E_NEG : E_POS, cur(p));
        p->pos++;
        n->a = parse_unary(p, 0);
    } else {
        n = parse_primary(p);
    }
    n = parse_postfix(p, n);
    if (with_filter) n = parse_filter_expr(p, n);
    return n;
}

static node *parse_primary(P *p) {
    tok *t = cur(p);
    node *n;
    if (t->type == T_NAME) {
        p->pos++;
        n = mk(p, E_LIT, t);
        if (is_name(t, "true") || is_name(t, "True")) n->lit.k = V_BOOL, n->lit.b = 1;
        else if (is_name(t, "false") || is_name(t, "False")) n->lit.k = V_BOOL, n->lit.b = 0;
        else if (is_name(t, "none") || is_name(t, "None")) n->lit.k = V_NONE;
        else n->kind = E_NAME, n->s = tok_name(p, t);
        return n;
    }
    if (t->type == T_STR) {
        n = mk(p, E_LIT, t);
        size_t total = 0, k = 0;
        for (size_t j = p->pos; p->t[j].type == T_STR; j++) total += p->t[j].n;
        char *s = ar_alloc(p->ar, total + 1);
        while (cur(p)->type == T_STR) {
            memcpy(s + k, cur(p)->s, cur(p)->n);
            k += cur(p)->n;
            p->pos++;
        }
        n->lit.k = V_STR;
        n->lit.s.p = s;
        n->lit.s.n = k;
        return n;
    }
    if (t->type == T_INT || t->type == T_FLOAT) {
        p->pos++;
        n = mk(p, E_LIT, t);
        if (t->type == T_INT) n->lit.k = V_INT, n->lit.i = t->i;
        else n->lit.k = V_FLOAT, n->lit.f = t->f;
        return n;
    }
    if (is_op(t, "(")) {
        p->pos++;
        n = parse_tuple(p, 1, 1);
        expect_op(p, ")");
        return n;
    }
    if (is_op(t, "[")) {
        p->pos++;
        n = mk(p, E_LIST, t);
        nvec v = {0};
        while (!is_op(cur(p), "]")) {
            if (v.n) expect_op(p, ",");
            if (is_op(cur(p), "]")) break;
            nv_push(p, &v, parse_expr(p, 1));
        }
        p->pos++;
        n->v = v.v, n->nv = v.n;
        return n;
    }
    if (is_op(t, "{")) {
        p->pos++;
        n = mk(p, E_DICT, t);
        nvec k = {0}, v = {0};
        while (!is_op(cur(p), "}")) {
            if (k.n) expect_op(p, ",");
            if (is_op(cur(p), "}")) break;
            nv_push(p, &k, parse_expr(p, 1));
            expect_op(p, ":");
            nv_push(p, &v, parse_expr(p, 1));
        }
        p->pos++;
        n->v = k.v, n->nv = k.n;
        n->kv = v.v;
        return n;
    }
    unexpected(p, NULL);
}

static node *parse_postfix(P *p, node *n) {
    for (;;) {
        tok *t = cur(p);
        if (is_op(t, ".")) {
            p->pos++;
            tok *a = cur(p);
            if (a->type == T_NAME) {
                node *x = mk(p, E_ATTR, t);
                x->a = n;
                x->s = expect_name(p);
                n = x;
            } else if (a->type == T_INT) {
                p->pos++;
                node *x = mk(p, E_ITEM, t), *k = mk(p, E_LIT, a);
                k->lit.k = V_INT;
                k->lit.i = a->i;
                x->a = n;
                x->b = k;
                n = x;
            } else {
                unexpected(p, "an attribute name");
            }
        } else if (is_op(t, "[")) {
            p->pos++;
            node *parts[3] = {0};
            int np = 0, is_slice = 0;
            for (;;) {
                if (is_op(cur(p), ":")) {
                    is_slice = 1;
                    p->pos++;
                    if (++np > 2) unexpected(p, "']'");
                    continue;
                }
                if (is_op(cur(p), "]")) break;
                if (parts[np]) unexpected(p, "']'");
                parts[np] = parse_expr(p, 1);
                if (is_op(cur(p), ",")) pfail(p, cur(p)->line, cur(p)->col, "unsupported construct: tuple subscript");
            }
            p->pos++;
            node *x;
            if (is_slice) {
                x = mk(p, E_SLICE, t);
                x->b = parts[0], x->c = parts[1];
                x->kv = ar_alloc(p->ar, sizeof(node *));
                x->kv[0] = parts[2];
            } else {
                if (!parts[0]) pfail(p, t->line, t->col, "empty subscript");
                x = mk(p, E_ITEM, t);
                x->b = parts[0];
            }
            x->a = n;
            n = x;
        } else if (is_op(t, "(")) {
            node *c = mk(p, E_CALL, t);
            parse_call_args(p, c);
            c->a = n;
            n = c;
        } else {
            return n;
        }
    }
}

static node *parse_tuple(P *p, int condexpr, int explicit_parens) {
    tok *at = cur(p);
    nvec v = {0};
    int comma = 0;
    for (;;) {
        if (v.n) {
            if (!is_op(cur(p), ",")) break;
            p->pos++;
            comma = 1;
        }
        tok *c = cur(p);
        if (c->type == T_VEND || c->type == T_BEND || is_op(c, ")") || (v.n && is_name(c, "if") && !condexpr)) break;
        if (v.n == 0 && explicit_parens && is_op(c, ")")) break;
        nv_push(p, &v, parse_expr(p, condexpr));
    }
    if (v.n == 1 && !comma) return v.v[0];
    if (v.n == 0 && !explicit_parens) unexpected(p, "an expression");
    node *n = mk(p, E_TUPLE, at);
    n->v = v.v, n->nv = v.n;
    return n;
}

/* assignment target: name, name.attr (with_ns), or a tuple of names */
static node *parse_target(P *p, int with_ns) {
    tok *at = cur(p);
    int paren = 0;
    if (is_op(at, "(")) paren = 1, p->pos++;
    nvec v = {0};
    for (;;) {
        tok *t = cur(p);
        if (t->type != T_NAME) unexpected(p, "a name to assign to");
        node *x;
        if (with_ns && is_op(peek(p, 1), ".")) {
            x = mk(p, E_ATTR, t);
            node *b = mk(p, E_NAME, t);
            b->s = expect_name(p);
            p->pos++;
            x->a = b;
            x->s = expect_name(p);
        } else {
            x = mk(p, E_NAME, t);
            x->s = expect_name(p);
        }
        nv_push(p, &v, x);
        if (!is_op(cur(p), ",")) break;
        p->pos++;
        if (paren && is_op(cur(p), ")")) break;
    }
    if (paren) expect_op(p, ")");
    if (v.n == 1 && !paren) return v.v[0];
    node *n = mk(p, E_TUPLE, at);
    n->v = v.v, n->nv = v.n;
    return n;
}

static void expect_bend(P *p) {
    if (cur(p)->type != T_BEND) unexpected(p, "end of statement block '%}'");
    p->pos++;
}

/* statements until {% one of `ends` %}; returns the index of the end name found (cursor after it) */
static node *parse_body(P *p, const char *const *ends, int *which, const tok *opener, const char *what);

static node *parse_stmt(P *p) {
    tok *open = cur(p); /* T_BBEGIN */
    p->pos++;
    tok *t = cur(p);
    if (t->type != T_NAME) unexpected(p, "a statement name");
    if (is_name(t, "if")) {
        p->pos++;
        node *n = mk(p, S_IF, t), *top = n;
        n->a = parse_tuple(p, 0, 0);
        expect_bend(p);
        for (;;) {
            static const char *const E[] = {"elif", "else", "endif", NULL};
            int w;
            node *body = parse_body(p, E, &w, open, "if");
            n->v = body->v, n->nv = body->nv;
            if (w == 0) {
                node *el = mk(p, S_IF, &p->t[p->pos - 1]);
                el->a = parse_tuple(p, 0, 0);
                expect_bend(p);
                n->body2 = el;
                n = el;
                continue;
            }
            if (w == 1) {
                expect_bend(p);
                static const char *const E2[] = {"endif", NULL};
                n->body2 = parse_body(p, E2, &w, open, "if");
            }
            expect_bend(p);
            return top;
        }
    }
    if (is_name(t, "for")) {
        p->pos++;
        node *n = mk(p, S_FOR, t);
        n->c = parse_target(p, 0);
        if (!is_name(cur(p), "in")) unexpected(p, "'in'");
        p->pos++;
        n->a = parse_tuple(p, 0, 0);
        if (is_name(cur(p), "if")) {
            p->pos++;
            n->b = parse_expr(p, 1);
        }
        if (is_name(cur(p), "recursive")) pfail(p, cur(p)->line, cur(p)->col, "unsupported construct: recursive for loops");
        expect_bend(p);
        static const char *const E[] = {"else", "endfor", NULL};
        int w;
        node *body = parse_body(p, E, &w, open, "for");
        n->v = body->v, n->nv = body->nv;
        if (w == 0) {
            expect_bend(p);
            static const char *const E2[] = {"endfor", NULL};
            n->body2 = parse_body(p, E2, &w, open, "for");
        }
        expect_bend(p);
        return n;
    }
    if (is_name(t, "set")) {
        p->pos++;
        node *tg = parse_target(p, 1);
        if (is_op(cur(p), "=")) {
            p->pos++;
            node *n = mk(p, S_SET, t);
            n->a = tg;
            n->b = parse_tuple(p, 1, 0);
            expect_bend(p);
            return n;
        }
        node *n = mk(p, S_SETBLOCK, t);
        n->a = tg;
        if (tg->kind != E_NAME && tg->kind != E_ATTR) pfail(p, t->line, t->col, "a block set assigns one name");
        if (is_op(cur(p), "|")) {
            /* {% set x | filter %}...: the filter applied to the body */
            node *holder = mk(p, E_LIT, cur(p));
            holder->lit.k = V_UNDEF;
            n->b = parse_filter_expr(p, holder);
            n->c = holder;
        }
        expect_bend(p);
        static const char *const E[] = {"endset", NULL};
        int w;
        node *body = parse_body(p, E, &w, open, "set");
        n->v = body->v, n->nv = body->nv;
        expect_bend(p);
        return n;
    }
    if (is_name(t, "macro")) {
        p->pos++;
        node *n = mk(p, S_MACRO, t);
        n->s = expect_name(p);
        expect_op(p, "(");
        nvec defs = {0};
        const char **names = NULL;
        int nn = 0, cap = 0;
        while (!is_op(cur(p), ")")) {
            if (nn) expect_op(p, ",");
            if (is_op(cur(p), ")")) break;
            if (nn == cap) {
                cap = cap ? cap * 2 : 4;
                const char **nw = ar_alloc(p->ar, (size_t)cap * sizeof *nw);
                if (nn) memcpy(nw, names, (size_t)nn * sizeof *nw);
                names = nw;
            }
            names[nn++] = expect_name(p);
            node *d = NULL;
            if (is_op(cur(p), "=")) {
                p->pos++;
                d = parse_expr(p, 1);
            }
            nv_push(p, &defs, d);
        }
        p->pos++;
        n->names = names, n->nnames = nn;
        n->kv = defs.v;
        expect_bend(p);
        static const char *const E[] = {"endmacro", NULL};
        int w;
        node *body = parse_body(p, E, &w, open, "macro");
        n->v = body->v, n->nv = body->nv;
        if (cur(p)->type == T_NAME) p->pos++; /* {% endmacro name %} */
        expect_bend(p);
        return n;
    }
    if (is_name(t, "break") || is_name(t, "continue")) {
        p->pos++;
        node *n = mk(p, is_name(t, "break") ? S_BREAK : S_CONTINUE, t);
        expect_bend(p);
        return n;
    }
    if (is_name(t, "generation")) {
        p->pos++;
        p->has_gen = 1;
        node *n = mk(p, S_GEN, t);
        expect_bend(p);
        static const char *const E[] = {"endgeneration", NULL};
        int w;
        node *body = parse_body(p, E, &w, open, "generation");
        n->v = body->v, n->nv = body->nv;
        expect_bend(p);
        return n;
    }
    if (is_name(t, "filter")) {
        p->pos++;
        node *n = mk(p, S_FILTERBLOCK, t);
        node *holder = mk(p, E_LIT, t);
        holder->lit.k = V_UNDEF;
        /* parse "name(args) | name2 ..." as filters applied to the body */
        node *f = mk(p, E_FILTER, cur(p));
        f->s = expect_name(p);
        if (is_op(cur(p), "(")) parse_call_args(p, f);
        f->a = holder;
        n->b = parse_filter_expr(p, f);
        n->c = holder;
        expect_bend(p);
        static const char *const E[] = {"endfilter", NULL};
        int w;
        node *body = parse_body(p, E, &w, open, "filter");
        n->v = body->v, n->nv = body->nv;
        expect_bend(p);
        return n;
    }
    pfail(p, t->line, t->col, "unsupported construct: {%% %.*s %%}", (int)(t->n > 40 ? 40 : t->n), t->s);
}

static node *parse_body(P *p, const char *const *ends, int *which, const tok *opener, const char *what) {
    node *holder = ar_alloc(p->ar, sizeof *holder);
    nvec v = {0};
    for (;;) {
        tok *t = cur(p);
        if (t->type == T_EOF) {
            if (ends) pfail(p, opener->line, opener->col, "'%s' block is never closed (missing {%% end%s %%})", what, what);
            break;
        }
        if (t->type == T_TEXT) {
            node *n = mk(p, S_TEXT, t);
            n->s = t->s;
            n->sn = t->n;
            nv_push(p, &v, n);
            p->pos++;
            continue;
        }
        if (t->type == T_VBEGIN) {
            p->pos++;
            node *n = mk(p, S_OUT, t);
            n->a = parse_tuple(p, 1, 0);
            if (cur(p)->type != T_VEND) unexpected(p, "end of print statement '}}'");
            p->pos++;
            nv_push(p, &v, n);
            continue;
        }
        if (t->type == T_BBEGIN) {
            tok *nm = peek(p, 1);
            if (ends && nm->type == T_NAME) {
                int hit = -1;
                for (int k = 0; ends[k]; k++)
                    if (is_name(nm, ends[k])) hit = k;
                if (hit >= 0) {
                    p->pos += 2;
                    *which = hit;
                    break;
                }
            }
            if (nm->type == T_NAME) {
                static const char *const CLOSERS[] = {"endif", "endfor", "endset", "endmacro", "endgeneration", "endfilter",
                                                      "elif", "else", NULL};
                for (int k = 0; CLOSERS[k]; k++)
                    if (is_name(nm, CLOSERS[k]))
                        pfail(p, nm->line, nm->col, "unexpected {%% %s %%}%s", CLOSERS[k], ends ? " here" : " (no block is open)");
            }
            nv_push(p, &v, parse_stmt(p));
            continue;
        }
        unexpected(p, NULL);
    }
    holder->v = v.v;
    holder->nv = v.n;
    return holder;
}

int lg_jinja_parse(const char *src, size_t len, const char *name, lg_jinja **out) {
    *out = NULL;
    lg_jinja *t = lg_calloc(1, sizeof *t);
    P *p = lg_calloc(1, sizeof *p);
    p->ar = &t->ar;
    p->name = t->name = ar_strndup(&t->ar, name ? name : "template", strlen(name ? name : "template"));
    /* newlines normalised to \n; one trailing newline dropped (keep_trailing_newline=False) */
    char *s = ar_alloc(&t->ar, len + 1);
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') {
            s[n++] = '\n';
            if (i + 1 < len && src[i + 1] == '\n') i++;
        } else {
            s[n++] = src[i];
        }
    }
    if (n && s[n - 1] == '\n') n--;
    s[n] = 0;
    p->src = s;
    p->n = n;
    if (memchr(s, 0, n)) {
        lg_errorf("%s: the template contains a NUL byte", p->name);
        free(p);
        lg_jinja_free(t);
        return -1;
    }
    if (setjmp(p->jb)) {
        lg_errorf("%s", p->err);
        free(p->t);
        free(p);
        lg_jinja_free(t);
        return -1;
    }
    lex(p);
    p->pos = 0;
    int w;
    t->root = parse_body(p, NULL, &w, NULL, NULL);
    t->has_gen = p->has_gen;
    free(p->t);
    free(p);
    *out = t;
    return 0;
}

void lg_jinja_free(lg_jinja *t) {
    if (!t) return;
    ar_free(&t->ar);
    free(t);
}

int lg_jinja_has_generation(const lg_jinja *t) { return t->has_gen; }

/* ==== evaluator ================================================================================== */
typedef struct scope {
    struct scope *parent;
    dict *vars;
} scope;

typedef struct {
    char *p;
    size_t n, cap;
} obuf;

typedef struct R R;
typedef val (*builtin_fn)(R *r, const node *at, val self, int argc, val *argv, int kwc, const char **kwn, val *kwv);
struct func {
    const char *name;
    builtin_fn fn;
    val self;
    const node *macro;
    scope *closure;
};

struct R {
    arena ar;
    const lg_jinja *t;
    obuf *out, top;
    scope *globals;
    int brk, cont;
    lg_jinja_span *gen;
    int ngen, gcap;
    int depth;
    scope *sc; /* the scope names are looked up in */
    char err[600];
    jmp_buf jb;
};

LG_PRINTF(3, 4) static _Noreturn void rfail(R *r, const node *at, const char *fmt, ...) {
    char m[500];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof m, fmt, ap);
    va_end(ap);
    if (at) snprintf(r->err, sizeof r->err, "%s:%d:%d: %s", r->t->name, at->line, at->col, m);
    else snprintf(r->err, sizeof r->err, "%s: %s", r->t->name, m);
    longjmp(r->jb, 1);
}

static void out_put(obuf *o, const char *s, size_t n) {
    if (!n) return;
    if (o->n + n + 1 > o->cap) {
        o->cap = (o->n + n + 1) * 2;
        o->p = lg_realloc(o->p, o->cap);
    }
    memcpy(o->p + o->n, s, n);
    o->n += n;
}

static val V(vkind k) {
    val v;
    memset(&v, 0, sizeof v);
    v.k = k;
    return v;
}
static val vbool(int b) {
    val v = V(V_BOOL);
    v.b = !!b;
    return v;
}
static val vint(int64_t i) {
    val v = V(V_INT);
    v.i = i;
    return v;
}
static val vfloat(double f) {
    val v = V(V_FLOAT);
    v.f = f;
    return v;
}
static val vstr(const char *p, size_t n) {
    val v = V(V_STR);
    v.s.p = p;
    v.s.n = n;
    return v;
}
static val vstr_copy(R *r, const char *p, size_t n) { return vstr(ar_strndup(&r->ar, p, n), n); }
static val vcstr(const char *p) { return vstr(p, strlen(p)); }
static val vundef(const char *name) {
    val v = V(V_UNDEF);
    v.uname = name;
    return v;
}

static list *list_new(R *r, size_t cap) {
    list *l = ar_alloc(&r->ar, sizeof *l);
    l->cap = cap ? cap : 4;
    l->v = ar_alloc(&r->ar, l->cap * sizeof(val));
    return l;
}
static void list_push(R *r, list *l, val x) {
    if (l->n == l->cap) {
        val *nv = ar_alloc(&r->ar, l->cap * 2 * sizeof(val));
        memcpy(nv, l->v, l->n * sizeof(val));
        l->v = nv;
        l->cap *= 2;
    }
    l->v[l->n++] = x;
}
static val vlist(list *l) {
    val v = V(V_LIST);
    v.l = l;
    return v;
}
static dict *dict_new(R *r) {
    dict *d = ar_alloc(&r->ar, sizeof *d);
    d->cap = 8;
    d->k = ar_alloc(&r->ar, d->cap * sizeof(val));
    d->v = ar_alloc(&r->ar, d->cap * sizeof(val));
    return d;
}
static val vdict(dict *d) {
    val v = V(V_DICT);
    v.d = d;
    return v;
}
static int v_eq(const val *a, const val *b);
static long dict_find(const dict *d, const val *k) {
    for (size_t i = 0; i < d->n; i++)
        if (v_eq(&d->k[i], k)) return (long)i;
    return -1;
}
static long dict_find_s(const dict *d, const char *k, size_t n) {
    for (size_t i = 0; i < d->n; i++)
        if (d->k[i].k == V_STR && d->k[i].s.n == n && !memcmp(d->k[i].s.p, k, n)) return (long)i;
    return -1;
}
static void dict_set(R *r, dict *d, val k, val v) {
    long i = dict_find(d, &k);
    if (i >= 0) {
        d->v[i] = v;
        return;
    }
    if (d->n == d->cap) {
        val *nk = ar_alloc(&r->ar, d->cap * 2 * sizeof(val)), *nv = ar_alloc(&r->ar, d->cap * 2 * sizeof(val));
        memcpy(nk, d->k, d->n * sizeof(val));
        memcpy(nv, d->v, d->n * sizeof(val));
        d->k = nk, d->v = nv, d->cap *= 2;
    }
    d->k[d->n] = k;
    d->v[d->n++] = v;
}
static void dict_sets(R *r, dict *d, const char *k, val v) { dict_set(r, d, vcstr(k), v); }

static val vfunc(R *r, const char *name, builtin_fn fn, val self) {
    func *f = ar_alloc(&r->ar, sizeof *f);
    f->name = name;
    f->fn = fn;
    f->self = self;
    val v = V(V_FUNC);
    v.fn = f;
    return v;
}

static const char *type_name(const val *v) {
    switch (v->k) {
    case V_UNDEF: return "Undefined";
    case V_NONE: return "NoneType";
    case V_BOOL: return "bool";
    case V_INT: return "int";
    case V_FLOAT: return "float";
    case V_STR: return "str";
    case V_LIST: return v->l->tuple ? "tuple" : "list";
    case V_DICT: return v->d->ns ? "Namespace" : "dict";
    case V_FUNC: return "function";
    }
    return "?";
}

static _Noreturn void undef_fail(R *r, const node *at, const val *v) {
    if (v->uname) rfail(r, at, "'%s' is undefined", v->uname);
    rfail(r, at, "a value is undefined");
}

static int truthy(const val *v) {
    switch (v->k) {
    case V_UNDEF:
    case V_NONE: return 0;
    case V_BOOL: return v->b;
    case V_INT: return v->i != 0;
    case V_FLOAT: return v->f != 0;
    case V_STR: return v->s.n != 0;
    case V_LIST: return v->l->n != 0;
    case V_DICT: return v->d->ns ? 1 : v->d->n != 0;
    case V_FUNC: return 1;
    }
    return 0;
}

static int is_num(const val *v) { return v->k == V_INT || v->k == V_FLOAT || v->k == V_BOOL; }
static double num(const val *v) { return v->k == V_FLOAT ? v->f : v->k == V_INT ? (double)v->i : v->b; }
static int is_intlike(const val *v) { return v->k == V_INT || v->k == V_BOOL; }
static int64_t ival(const val *v) { return v->k == V_INT ? v->i : v->b; }

static int v_eq(const val *a, const val *b) {
    if (is_num(a) && is_num(b)) {
        if (is_intlike(a) && is_intlike(b)) return ival(a) == ival(b);
        return num(a) == num(b);
    }
    if (a->k != b->k) return 0;
    switch (a->k) {
    case V_UNDEF:
    case V_NONE: return 1;
    case V_STR: return a->s.n == b->s.n && !memcmp(a->s.p, b->s.p, a->s.n);
    case V_LIST:
        if (a->l->tuple != b->l->tuple || a->l->n != b->l->n) return 0;
        for (size_t i = 0; i < a->l->n; i++)
            if (!v_eq(&a->l->v[i], &b->l->v[i])) return 0;
        return 1;
    case V_DICT:
        if (a->d->ns || b->d->ns) return a->d == b->d;
        if (a->d->n != b->d->n) return 0;
        for (size_t i = 0; i < a->d->n; i++) {
            long j = dict_find(b->d, &a->d->k[i]);
            if (j < 0 || !v_eq(&a->d->v[i], &b->d->v[j])) return 0;
        }
        return 1;
    case V_FUNC: return a->fn == b->fn;
    default: return 0;
    }
}

/* <0, 0, >0; fails for types Python cannot order */
static int v_cmp(R *r, const node *at, const val *a, const val *b, const char *op) {
    if (is_num(a) && is_num(b)) {
        if (is_intlike(a) && is_intlike(b)) return (ival(a) > ival(b)) - (ival(a) < ival(b));
        double x = num(a), y = num(b);
        return (x > y) - (x < y);
    }
    if (a->k == V_STR && b->k == V_STR) {
        size_t n = LG_MIN(a->s.n, b->s.n);
        int c = memcmp(a->s.p, b->s.p, n);
        if (c) return c;
        return (a->s.n > b->s.n) - (a->s.n < b->s.n);
    }
    if (a->k == V_LIST && b->k == V_LIST && a->l->tuple == b->l->tuple) {
        size_t n = LG_MIN(a->l->n, b->l->n);
        for (size_t i = 0; i < n; i++)
            if (!v_eq(&a->l->v[i], &b->l->v[i])) return v_cmp(r, at, &a->l->v[i], &b->l->v[i], op);
        return (a->l->n > b->l->n) - (a->l->n < b->l->n);
    }
    if (a->k == V_UNDEF) undef_fail(r, at, a);
    if (b->k == V_UNDEF) undef_fail(r, at, b);
    rfail(r, at, "'%s' not supported between instances of '%s' and '%s'", op, type_name(a), type_name(b));
}

/* ---- Python str() / repr() ------------------------------------------------------------------- */
static void fmt_float(double f, char *buf, size_t cap) {
    if (isnan(f)) {
        snprintf(buf, cap, "nan");
        return;
    }
    if (isinf(f)) {
        snprintf(buf, cap, f < 0 ? "-inf" : "inf");
        return;
    }
    char e[40];
    int prec;
    for (prec = 1; prec <= 17; prec++) {
        snprintf(e, sizeof e, "%.*e", prec - 1, f);
        if (strtod(e, NULL) == f) break;
    }
    /* e = [-]d[.ddd]e[+-]XX : digits and exponent */
    char digits[24];
    int nd = 0, neg = 0, ex;
    const char *q = e;
    if (*q == '-') neg = 1, q++;
    for (; *q && *q != 'e'; q++)
        if (*q != '.') digits[nd++] = *q;
    ex = atoi(q + 1);
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    digits[nd] = 0;
    char *o = buf;
    size_t left = cap;
#define PUT(...)                                         \
    do {                                                 \
        int w_ = snprintf(o, left, __VA_ARGS__);         \
        if (w_ > 0 && (size_t)w_ < left) o += w_, left -= (size_t)w_; \
    } while (0)
    if (neg) PUT("-");
    if (ex < -4 || ex >= 16) {
        PUT("%c", digits[0]);
        if (nd > 1) PUT(".%s", digits + 1);
        PUT("e%c%02d", ex < 0 ? '-' : '+', ex < 0 ? -ex : ex);
    } else if (ex < 0) {
        PUT("0.");
        for (int i = 0; i < -ex - 1; i++) PUT("0");
        PUT("%s", digits);
    } else {
        for (int i = 0; i <= ex; i++) PUT("%c", i < nd ? digits[i] : '0');
        PUT(".");
        if (nd > ex + 1) PUT("%s", digits + ex + 1);
        else PUT("0");
    }
#undef PUT
}

static void repr_to(R *r, obuf *o, const val *v);
static void str_to(R *r, obuf *o, const val *v) {
    char b[64];
    switch (v->k) {
    case V_UNDEF: return;
    case V_NONE: out_put(o, "None", 4); return;
    case V_BOOL: out_put(o, v->b ? "True" : "False", v->b ? 4 : 5); return;
    case V_INT: snprintf(b, sizeof b, "%lld", (long long)v->i); out_put(o, b, strlen(b)); return;
    case V_FLOAT: fmt_float(v->f, b, sizeof b); out_put(o, b, strlen(b)); return;
    case V_STR: out_put(o, v->s.p, v->s.n); return;
    default: repr_to(r, o, v);
    }
}
static void repr_str(obuf *o, const char *s, size_t n) {
    int has_s = memchr(s, '\'', n) != NULL, has_d = memchr(s, '"', n) != NULL;
    char q = has_s && !has_d ? '"' : '\'';
    out_put(o, &q, 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char b[8];
        if (c == '\\') out_put(o, "\\\\", 2);
        else if (c == (unsigned char)q) out_put(o, "\\", 1), out_put(o, &q, 1);
        else if (c == '\n') out_put(o, "\\n", 2);
        else if (c == '\r') out_put(o, "\\r", 2);
        else if (c == '\t') out_put(o, "\\t", 2);
        else if (c < 0x20 || c == 0x7F) snprintf(b, sizeof b, "\\x%02x", c), out_put(o, b, 4);
        else out_put(o, (const char *)&s[i], 1);
    }
    out_put(o, &q, 1);
}
static void repr_to(R *r, obuf *o, const val *v) {
    switch (v->k) {
    case V_STR: repr_str(o, v->s.p, v->s.n); return;
    case V_LIST: {
        out_put(o, v->l->tuple ? "(" : "[", 1);
        for (size_t i = 0; i < v->l->n; i++) {
            if (i) out_put(o, ", ", 2);
            repr_to(r, o, &v->l->v[i]);
        }
        if (v->l->tuple && v->l->n == 1) out_put(o, ",", 1);
        out_put(o, v->l->tuple ? ")" : "]", 1);
        return;
    }
    case V_DICT: {
        if (v->d->ns) out_put(o, "<Namespace ", 11);
        out_put(o, "{", 1);
        for (size_t i = 0; i < v->d->n; i++) {
            if (i) out_put(o, ", ", 2);
            repr_to(r, o, &v->d->k[i]);
            out_put(o, ": ", 2);
            repr_to(r, o, &v->d->v[i]);
        }
        out_put(o, "}", 1);
        if (v->d->ns) out_put(o, ">", 1);
        return;
    }
    case V_FUNC: {
        char b[128];
        snprintf(b, sizeof b, "<function %s>", v->fn->name);
        out_put(o, b, strlen(b));
        return;
    }
    case V_UNDEF: out_put(o, "Undefined", 9); return;
    default: str_to(r, o, v);
    }
}
static val to_str(R *r, const val *v) {
    if (v->k == V_STR) return *v;
    obuf o = {0};
    str_to(r, &o, v);
    val s = vstr_copy(r, o.p ? o.p : "", o.n);
    free(o.p);
    return s;
}

/* ---- JSON (transformers' tojson: json.dumps(ensure_ascii=False, indent, separators, sort_keys)) -- */
typedef struct {
    int indent; /* -1: none */
    const char *item_sep, *key_sep;
    int sort_keys, ensure_ascii;
} json_opts;
static void json_str(obuf *o, const char *s, size_t n, int ensure_ascii) {
    out_put(o, "\"", 1);
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        char b[16];
        if (c == '"') out_put(o, "\\\"", 2), i++;
        else if (c == '\\') out_put(o, "\\\\", 2), i++;
        else if (c == '\n') out_put(o, "\\n", 2), i++;
        else if (c == '\r') out_put(o, "\\r", 2), i++;
        else if (c == '\t') out_put(o, "\\t", 2), i++;
        else if (c == '\b') out_put(o, "\\b", 2), i++;
        else if (c == '\f') out_put(o, "\\f", 2), i++;
        else if (c < 0x20) snprintf(b, sizeof b, "\\u%04x", c), out_put(o, b, 6), i++;
        else if (c >= 0x80 && ensure_ascii) {
            size_t l;
            uint32_t cp = u8dec(s + i, n - i, &l);
            if (cp >= 0x10000) {
                cp -= 0x10000;
                snprintf(b, sizeof b, "\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
                out_put(o, b, 12);
            } else {
                snprintf(b, sizeof b, "\\u%04x", cp);
                out_put(o, b, 6);
            }
            i += l;
        } else out_put(o, (const char *)s + i, 1), i++;
    }
    out_put(o, "\"", 1);
}
static void json_nl(obuf *o, const json_opts *j, int level) {
    out_put(o, "\n", 1);
    for (int i = 0; i < j->indent * level; i++) out_put(o, " ", 1);
}
static int cmp_keys(const void *a, const void *b) {
    const val *x = *(const val *const *)a, *y = *(const val *const *)b;
    if (x->k == V_STR && y->k == V_STR) {
        size_t n = LG_MIN(x->s.n, y->s.n);
        int c = memcmp(x->s.p, y->s.p, n);
        return c ? c : (x->s.n > y->s.n) - (x->s.n < y->s.n);
    }
    return 0;
}
static void json_to(R *r, const node *at, obuf *o, const val *v, const json_opts *j, int level) {
    char b[64];
    switch (v->k) {
    case V_NONE: out_put(o, "null", 4); return;
    case V_BOOL: out_put(o, v->b ? "true" : "false", v->b ? 4 : 5); return;
    case V_INT: snprintf(b, sizeof b, "%lld", (long long)v->i); out_put(o, b, strlen(b)); return;
    case V_FLOAT:
        if (isnan(v->f)) out_put(o, "NaN", 3);
        else if (isinf(v->f)) out_put(o, v->f < 0 ? "-Infinity" : "Infinity", v->f < 0 ? 9 : 8);
        else fmt_float(v->f, b, sizeof b), out_put(o, b, strlen(b));
        return;
    case V_STR: json_str(o, v->s.p, v->s.n, j->ensure_ascii); return;
    case V_LIST:
        if (!v->l->n) {
            out_put(o, "[]", 2);
            return;
        }
        out_put(o, "[", 1);
        for (size_t i = 0; i < v->l->n; i++) {
            if (i) out_put(o, j->item_sep, strlen(j->item_sep));
            if (j->indent >= 0) json_nl(o, j, level + 1);
            json_to(r, at, o, &v->l->v[i], j, level + 1);
        }
        if (j->indent >= 0) json_nl(o, j, level);
        out_put(o, "]", 1);
        return;
    case V_DICT: {
        if (v->d->ns) rfail(r, at, "tojson: Object of type Namespace is not JSON serializable");
        if (!v->d->n) {
            out_put(o, "{}", 2);
            return;
        }
        const val **keys = lg_malloc(v->d->n * sizeof *keys);
        size_t *idx = lg_malloc(v->d->n * sizeof *idx);
        for (size_t i = 0; i < v->d->n; i++) keys[i] = &v->d->k[i];
        if (j->sort_keys) qsort(keys, v->d->n, sizeof *keys, cmp_keys);
        for (size_t i = 0; i < v->d->n; i++) idx[i] = (size_t)(keys[i] - v->d->k);
        free(keys);
        out_put(o, "{", 1);
        for (size_t q = 0; q < v->d->n; q++) {
            size_t i = idx[q];
            if (q) out_put(o, j->item_sep, strlen(j->item_sep));
            if (j->indent >= 0) json_nl(o, j, level + 1);
            const val *k = &v->d->k[i];
            if (k->k == V_STR) json_str(o, k->s.p, k->s.n, j->ensure_ascii);
            else {
                val ks = to_str(r, k);
                if (k->k == V_BOOL) ks = vcstr(k->b ? "true" : "false");
                else if (k->k == V_NONE) ks = vcstr("null");
                json_str(o, ks.s.p, ks.s.n, j->ensure_ascii);
            }
            out_put(o, j->key_sep, strlen(j->key_sep));
            json_to(r, at, o, &v->d->v[i], j, level + 1);
        }
        free(idx);
        if (j->indent >= 0) json_nl(o, j, level);
        out_put(o, "}", 1);
        return;
    }
    case V_UNDEF: rfail(r, at, "tojson: Object of type Undefined is not JSON serializable");
    case V_FUNC: rfail(r, at, "tojson: Object of type function is not JSON serializable");
    }
}

/* ---- cJSON -> values ---------------------------------------------------------------------------- */
static val from_json(R *r, const cJSON *j) {
    if (!j || cJSON_IsNull(j)) return V(V_NONE);
    if (cJSON_IsBool(j)) return vbool(cJSON_IsTrue(j));
    if (cJSON_IsNumber(j)) {
        double d = j->valuedouble;
        if (d == floor(d) && fabs(d) < 9007199254740992.0) return vint((int64_t)d);
        return vfloat(d);
    }
    if (cJSON_IsString(j)) return vstr(j->valuestring, strlen(j->valuestring));
    if (cJSON_IsArray(j)) {
        list *l = list_new(r, (size_t)cJSON_GetArraySize(j) + 1);
        const cJSON *x;
        cJSON_ArrayForEach(x, j) list_push(r, l, from_json(r, x));
        return vlist(l);
    }
    if (cJSON_IsObject(j)) {
        dict *d = dict_new(r);
        const cJSON *x;
        cJSON_ArrayForEach(x, j) dict_set(r, d, vcstr(x->string), from_json(r, x));
        return vdict(d);
    }
    return V(V_NONE);
}

/* ---- scopes ---------------------------------------------------------------------------------------- */
static scope *scope_new(R *r, scope *parent) {
    scope *s = ar_alloc(&r->ar, sizeof *s);
    s->parent = parent;
    s->vars = dict_new(r);
    return s;
}
static val lookup(scope *s, const char *name) {
    size_t n = strlen(name);
    for (; s; s = s->parent) {
        long i = dict_find_s(s->vars, name, n);
        if (i >= 0) return s->vars->v[i];
    }
    return vundef(name);
}

/* ---- attribute / item access --------------------------------------------------------------------- */
static val get_attr(R *r, const node *at, val obj, const char *name);
static val get_item(R *r, const node *at, val obj, val key) {
    switch (obj.k) {
    case V_UNDEF: undef_fail(r, at, &obj);
    case V_DICT: {
        long i = dict_find(obj.d, &key);
        if (i >= 0) return obj.d->v[i];
        break;
    }
    case V_LIST:
    case V_STR:
        if (is_intlike(&key)) {
            int64_t n = obj.k == V_LIST ? (int64_t)obj.l->n : (int64_t)u8count(obj.s.p, obj.s.n), i = ival(&key);
            if (i < 0) i += n;
            if (i < 0 || i >= n) return vundef("index out of range");
            if (obj.k == V_LIST) return obj.l->v[i];
            size_t a = u8off(obj.s.p, obj.s.n, (size_t)i), b = u8off(obj.s.p, obj.s.n, (size_t)i + 1);
            return vstr(obj.s.p + a, b - a);
        }
        break;
    default: break;
    }
    if (key.k == V_STR) {
        char *nm = ar_strndup(&r->ar, key.s.p, key.s.n);
        if (obj.k != V_DICT) return get_attr(r, at, obj, nm);
        /* a dict's methods are reachable by item too (jinja tries getattr after getitem) */
        static const char *const DM[] = {"items", "keys", "values", "get", NULL};
        for (int k = 0; DM[k]; k++)
            if (!strcmp(DM[k], nm)) return get_attr(r, at, obj, nm);
        return vundef(nm);
    }
    return vundef("item");
}

/* methods */
static val m_str(R *r, const node *at, val self, int argc, val *argv, int kwc, const char **kwn, val *kwv);
static val m_dict(R *r, const node *at, val self, int argc, val *argv, int kwc, const char **kwn, val *kwv);
static val m_loop_cycle(R *r, const node *at, val self, int argc, val *argv, int kwc, const char **kwn, val *kwv);

static const char *const STR_METHODS[] = {"strip", "lstrip", "rstrip", "split", "rsplit", "splitlines", "startswith",
                                          "endswith", "upper", "lower", "title", "capitalize", "replace", "find",
                                          "rfind", "index", "rindex", "count", "join", "format", "removeprefix",
                                          "removesuffix", "isdigit", "isalpha", "isalnum", "isspace", "islower",
                                          "isupper", "isnumeric", "isdecimal", "swapcase", "casefold", "zfill",
                                          "center", "ljust", "rjust", "partition", "rpartition", "expandtabs", NULL};

static val get_attr(R *r, const node *at, val obj, const char *name) {
    if (obj.k == V_UNDEF) undef_fail(r, at, &obj);
    if (name[0] == '_') return vundef(name); /* the sandbox hides these */
    if (obj.k == V_DICT) {
        if (!obj.d->ns) {
            static const char *const DM[] = {"items", "keys", "values", "get", NULL};
            for (int k = 0; DM[k]; k++)
                if (!strcmp(DM[k], name)) return vfunc(r, DM[k], m_dict, obj);
            static const char *const UNSAFE[] = {"pop", "popitem", "update", "setdefault", "clear", "copy", "fromkeys", NULL};
            for (int k = 0; UNSAFE[k]; k++)
                if (!strcmp(UNSAFE[k], name)) rfail(r, at, "unsupported construct: dict.%s() (the sandbox forbids it)", name);
        }
        long i = dict_find_s(obj.d, name, strlen(name));
        if (i >= 0) {
            val v = obj.d->v[i];
            if (v.k == V_FUNC && !strcmp(v.fn->name, "cycle") && v.fn->fn == m_loop_cycle) return v;
            return v;
        }
        return vundef(name);
    }
    if (obj.k == V_STR) {
        for (int k = 0; STR_METHODS[k]; k++)
            if (!strcmp(STR_METHODS[k], name)) return vfunc(r, STR_METHODS[k], m_str, obj);
        return vundef(name);
    }
    if (obj.k == V_LIST) {
        if (!strcmp(name, "append") || !strcmp(name, "extend") || !strcmp(name, "pop") || !strcmp(name, "insert") ||
            !strcmp(name, "remove") || !strcmp(name, "sort") || !strcmp(name, "reverse") || !strcmp(name, "clear"))
            rfail(r, at, "unsupported construct: list.%s() (the sandbox forbids changing lists)", name);
        return vundef(name);
    }
    return vundef(name);
}

/* ---- arguments ------------------------------------------------------------------------------------ */
typedef struct {
    int argc, kwc;
    val *argv, *kwv;
    const char **kwn;
} args_t;

/* argument `i` (positional) or keyword `name`; `present` tells whether it was given */
static val arg(const args_t *a, int i, const char *name, val dflt, int *present) {
    if (i >= 0 && i < a->argc) {
        if (present) *present = 1;
        return a->argv[i];
    }
    for (int k = 0; k < a->kwc; k++)
        if (name && !strcmp(a->kwn[k], name)) {
            if (present) *present = 1;
            return a->kwv[k];
        }
    if (present) *present = 0;
    return dflt;
}
static val need_str(R *r, const node *at, val v, const char *what) {
    if (v.k == V_UNDEF) undef_fail(r, at, &v);
    if (v.k != V_STR) rfail(r, at, "%s: expected a string, got %s", what, type_name(&v));
    return v;
}

/* ---- iteration --------------------------------------------------------------------------------------- */
static list *iter_list(R *r, const node *at, val v) {
    switch (v.k) {
    case V_LIST: return v.l;
    case V_UNDEF: return list_new(r, 1);
    case V_DICT: {
        if (v.d->ns) rfail(r, at, "'Namespace' object is not iterable");
        list *l = list_new(r, v.d->n + 1);
        for (size_t i = 0; i < v.d->n; i++) list_push(r, l, v.d->k[i]);
        return l;
    }
    case V_STR: {
        list *l = list_new(r, v.s.n + 1);
        for (size_t i = 0; i < v.s.n;) {
            size_t n;
            u8dec(v.s.p + i, v.s.n - i, &n);
            if (i + n > v.s.n) n = v.s.n - i;
            list_push(r, l, vstr(v.s.p + i, n));
            i += n;
        }
        return l;
    }
    default: rfail(r, at, "'%s' object is not iterable", type_name(&v));
    }
}

/* ---- string helpers -------------------------------------------------------------------------------- */
static int in_chars(uint32_t c, const val *chars) {
    if (!chars) return py_space(c);
    for (size_t i = 0; i < chars->s.n;) {
        size_t l;
        uint32_t d = u8dec(chars->s.p + i, chars->s.n - i, &l);
        if (d == c) return 1;
        i += l;
    }
    return 0;
}
static val strip(const val *s, const val *chars, int left, int right) {
    size_t a = 0, b = s->s.n, l;
    if (left)
        while (a < b && in_chars(u8dec(s->s.p + a, b - a, &l), chars)) a += l;
    if (right)
        while (b > a) {
            size_t q = b - 1;
            while (q > a && ((unsigned char)s->s.p[q] & 0xC0) == 0x80) q--;
            if (!in_chars(u8dec(s->s.p + q, b - q, &l), chars)) break;
            b = q;
        }
    return vstr(s->s.p + a, b - a);
}
static char ascii_up(char c) { return c >= 'a' && c <= 'z' ? (char)(c - 32) : c; }
static char ascii_lo(char c) { return c >= 'A' && c <= 'Z' ? (char)(c + 32) : c; }
static val str_case(R *r, val s, int mode) { /* 0 upper 1 lower 2 capitalize 3 title(py) 4 swapcase */
    char *o = ar_strndup(&r->ar, s.s.p, s.s.n);
    int prev_cased = 0;
    for (size_t i = 0; i < s.s.n; i++) {
        char c = o[i];
        int letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        switch (mode) {
        case 0: o[i] = ascii_up(c); break;
        case 1: o[i] = ascii_lo(c); break;
        case 2: o[i] = i == 0 ? ascii_up(c) : ascii_lo(c); break;
        case 3: o[i] = prev_cased ? ascii_lo(c) : ascii_up(c); break;
        case 4: o[i] = c >= 'a' && c <= 'z' ? ascii_up(c) : ascii_lo(c); break;
        }
        prev_cased = letter;
    }
    return vstr(o, s.s.n);
}
static val str_replace(R *r, val s, val old, val nw, int64_t count) {
    obuf o = {0};
    size_t i = 0;
    int64_t done = 0;
    if (old.s.n == 0) {
        /* Python inserts nw between every character (and at both ends) */
        size_t cps = u8count(s.s.p, s.s.n);
        for (size_t k = 0; k <= cps; k++) {
            if (count < 0 || done < count) out_put(&o, nw.s.p, nw.s.n), done++;
            if (k < cps) {
                size_t a = u8off(s.s.p, s.s.n, k), b = u8off(s.s.p, s.s.n, k + 1);
                out_put(&o, s.s.p + a, b - a);
            }
        }
    } else {
        while (i < s.s.n) {
            if ((count < 0 || done < count) && i + old.s.n <= s.s.n && !memcmp(s.s.p + i, old.s.p, old.s.n)) {
                out_put(&o, nw.s.p, nw.s.n);
                i += old.s.n;
                done++;
            } else {
                out_put(&o, s.s.p + i, 1);
                i++;
            }
        }
    }
    val v = vstr_copy(r, o.p ? o.p : "", o.n);
    free(o.p);
    return v;
}
static long str_find(val s, val sub, long from, int rev) {
    if (sub.s.n > s.s.n) return -1;
    if (!rev) {
        for (size_t i = (size_t)from; i + sub.s.n <= s.s.n; i++)
            if (!memcmp(s.s.p + i, sub.s.p, sub.s.n)) return (long)i;
    } else {
        for (long i = (long)(s.s.n - sub.s.n); i >= from; i--)
            if (!memcmp(s.s.p + i, sub.s.p, sub.s.n)) return i;
    }
    return -1;
}
static val str_split(R *r, val s, const val *sep, int64_t maxsplit, int rev) {
    list *l = list_new(r, 8);
    if (!sep) { /* runs of white space */
        size_t i = 0, n = s.s.n;
        if (!rev) {
            int64_t done = 0;
            for (;;) {
                i += ws_lead(s.s.p + i, n - i);
                if (i >= n) break;
                if (maxsplit >= 0 && done >= maxsplit) {
                    size_t t = ws_trail(s.s.p + i, n - i);
                    list_push(r, l, vstr(s.s.p + i, n - i - t));
                    break;
                }
                size_t j = i, len;
                while (j < n && !py_space(u8dec(s.s.p + j, n - j, &len))) j += len;
                list_push(r, l, vstr(s.s.p + i, j - i));
                done++;
                i = j;
            }
        } else {
            /* rsplit() without sep: split from the right */
            list *tmp = list_new(r, 8);
            size_t e = n;
            int64_t done = 0;
            for (;;) {
                e -= ws_trail(s.s.p, e);
                if (e == 0) break;
                if (maxsplit >= 0 && done >= maxsplit) {
                    size_t a = ws_lead(s.s.p, e);
                    list_push(r, tmp, vstr(s.s.p + a, e - a));
                    break;
                }
                size_t b = e;
                while (b > 0) {
                    size_t q = b - 1, len;
                    while (q > 0 && ((unsigned char)s.s.p[q] & 0xC0) == 0x80) q--;
                    if (py_space(u8dec(s.s.p + q, b - q, &len))) break;
                    b = q;
                }
                list_push(r, tmp, vstr(s.s.p + b, e - b));
                done++;
                e = b;
            }
            for (size_t k = tmp->n; k > 0; k--) list_push(r, l, tmp->v[k - 1]);
        }
        return vlist(l);
    }
    if (!rev) {
        size_t i = 0;
        int64_t done = 0;
        for (;;) {
            long j = (maxsplit < 0 || done < maxsplit) ? str_find(s, *sep, (long)i, 0) : -1;
            if (j < 0) {
                list_push(r, l, vstr(s.s.p + i, s.s.n - i));
                break;
            }
            list_push(r, l, vstr(s.s.p + i, (size_t)j - i));
            i = (size_t)j + sep->s.n;
            done++;
        }
    } else {
        list *tmp = list_new(r, 8);
        long e = (long)s.s.n;
        int64_t done = 0;
        for (;;) {
            long j = -1;
            if (maxsplit < 0 || done < maxsplit) {
                val pre = vstr(s.s.p, (size_t)e);
                j = str_find(pre, *sep, 0, 1);
            }
            if (j < 0) {
                list_push(r, tmp, vstr(s.s.p, (size_t)e));
                break;
            }
            list_push(r, tmp, vstr(s.s.p + j + (long)sep->s.n, (size_t)(e - j - (long)sep->s.n)));
            e = j;
            done++;
        }
        for (size_t k = tmp->n; k > 0; k--) list_push(r, l, tmp->v[k - 1]);
    }
    return vlist(l);
}

static int affix(val s, val a, int end) {
    if (a.s.n > s.s.n) return 0;
    return !memcmp(s.s.p + (end ? s.s.n - a.s.n : 0), a.s.p, a.s.n);
}

static val m_str(R *r, const node *at, val self, int argc, val *argv, int kwc, const char **kwn, val *kwv) {
    args_t A = {argc, kwc, argv, kwv, kwn};
    const char *name = at->s; /* call_value passes the method's name in the node */
    val s = self;
    int pr;
    if (!strcmp(name, "strip") || !strcmp(name, "lstrip") || !strcmp(name, "rstrip")) {
        val c = arg(&A, 0, "chars", V(V_NONE), &pr);
        const val *cp = c.k == V_NONE ? NULL : &c;
        if (cp) need_str(r, at, c, name);
        return strip(&s, cp, name[0] != 'r', name[0] != 'l');
    }
    if (!strcmp(name, "split") || !strcmp(name, "rsplit")) {
        val sep = arg(&A, 0, "sep", V(V_NONE), NULL), mx = arg(&A, 1, "maxsplit", vint(-1), NULL);
        if (sep.k != V_NONE) {
            need_str(r, at, sep, name);
            if (!sep.s.n) rfail(r, at, "%s: empty separator", name);
        }
        return str_split(r, s, sep.k == V_NONE ? NULL : &sep, ival(&mx), name[0] == 'r');
    }
    if (!strcmp(name, "splitlines")) {
        list *l = list_new(r, 8);
        size_t i = 0;
        while (i < s.s.n) {
            size_t j = i;
            while (j < s.s.n && s.s.p[j] != '\n' && s.s.p[j] != '\r') j++;
            list_push(r, l, vstr(s.s.p + i, j - i));
            if (j < s.s.n && s.s.p[j] == '\r' && j + 1 < s.s.n && s.s.p[j + 1] == '\n') j++;
            i = j + 1;
        }
        return vlist(l);
    }
    if (!strcmp(name, "startswith") || !strcmp(name, "endswith")) {
        val a = arg(&A, 0, "prefix", V(V_UNDEF), &pr);
        if (!pr) rfail(r, at, "%s() takes at least 1 argument", name);
        int end = name[0] == 'e';
        if (a.k == V_LIST && a.l->tuple) {
            for (size_t i = 0; i < a.l->n; i++)
                if (affix(s, need_str(r, at, a.l->v[i], name), end)) return vbool(1);
            return vbool(0);
        }
        return vbool(affix(s, need_str(r, at, a, name), end));
    }
    if (!strcmp(name, "upper")) return str_case(r, s, 0);
    if (!strcmp(name, "lower") || !strcmp(name, "casefold")) return str_case(r, s, 1);
    if (!strcmp(name, "capitalize")) return str_case(r, s, 2);
    if (!strcmp(name, "title")) return str_case(r, s, 3);
    if (!strcmp(name, "swapcase")) return str_case(r, s, 4);
    if (!strcmp(name, "replace")) {
        val o = need_str(r, at, arg(&A, 0, "old", V(V_UNDEF), NULL), name), n = need_str(r, at, arg(&A, 1, "new", V(V_UNDEF), NULL), name);
        val c = arg(&A, 2, "count", vint(-1), NULL);
        return str_replace(r, s, o, n, ival(&c));
    }
    if (!strcmp(name, "find") || !strcmp(name, "rfind") || !strcmp(name, "index") || !strcmp(name, "rindex")) {
        val sub = need_str(r, at, arg(&A, 0, "sub", V(V_UNDEF), NULL), name);
        long i = str_find(s, sub, 0, name[0] == 'r');
        if (i < 0 && strstr(name, "index")) rfail(r, at, "%s(): substring not found", name);
        return vint(i < 0 ? -1 : (int64_t)u8count(s.s.p, (size_t)i));
    }
    if (!strcmp(name, "count")) {
        val sub = need_str(r, at, arg(&A, 0, "sub", V(V_UNDEF), NULL), name);
        if (!sub.s.n) return vint((int64_t)u8count(s.s.p, s.s.n) + 1);
        int64_t c = 0;
        for (long i = 0; (i = str_find(s, sub, i, 0)) >= 0; i += (long)sub.s.n) c++;
        return vint(c);
    }
    if (!strcmp(name, "join")) {
        list *l = iter_list(r, at, arg(&A, 0, "iterable", V(V_UNDEF), NULL));
        obuf o = {0};
        for (size_t i = 0; i < l->n; i++) {
            if (i) out_put(&o, s.s.p, s.s.n);
            val x = need_str(r, at, l->v[i], "join");
            out_put(&o, x.s.p, x.s.n);
        }
        val v = vstr_copy(r, o.p ? o.p : "", o.n);
        free(o.p);
        return v;
    }
    if (!strcmp(name, "removeprefix") || !strcmp(name, "removesuffix")) {
        val a = need_str(r, at, arg(&A, 0, "prefix", V(V_UNDEF), NULL), name);
        int end = name[6] == 's';
        if (!affix(s, a, end)) return s;
        return vstr(s.s.p + (end ? 0 : a.s.n), s.s.n - a.s.n);
    }
    if (!strncmp(name, "is", 2)) {
        if (!s.s.n) return vbool(0);
        int any_cased = 0, ok = 1;
        for (size_t i = 0; i < s.s.n; i++) {
            char c = s.s.p[i];
            int dg = is_digit(c), al = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'), lo = c >= 'a' && c <= 'z', up = c >= 'A' && c <= 'Z';
            if (!strcmp(name, "isdigit") || !strcmp(name, "isnumeric") || !strcmp(name, "isdecimal")) ok &= dg;
            else if (!strcmp(name, "isalpha")) ok &= al;
            else if (!strcmp(name, "isalnum")) ok &= al || dg;
            else if (!strcmp(name, "isspace")) ok &= py_space((unsigned char)c);
            else if (!strcmp(name, "islower")) ok &= !up, any_cased |= lo;
            else if (!strcmp(name, "isupper")) ok &= !lo, any_cased |= up;
        }
        if (!strcmp(name, "islower") || !strcmp(name, "isupper")) ok &= any_cased;
        return vbool(ok);
    }
    if (!strcmp(name, "format")) {
        obuf o = {0};
        int auto_i = 0;
        for (size_t i = 0; i < s.s.n; i++) {
            char c = s.s.p[i];
            if (c == '{' && i + 1 < s.s.n && s.s.p[i + 1] == '{') out_put(&o, "{", 1), i++;
            else if (c == '}' && i + 1 < s.s.n && s.s.p[i + 1] == '}') out_put(&o, "}", 1), i++;
            else if (c == '{') {
                size_t j = i + 1;
                while (j < s.s.n && s.s.p[j] != '}') j++;
                if (j >= s.s.n) {
                    free(o.p);
                    rfail(r, at, "format: single '{' in the format string");
                }
                val x;
                if (j == i + 1) x = arg(&A, auto_i++, NULL, V(V_UNDEF), &pr);
                else if (is_digit(s.s.p[i + 1])) x = arg(&A, atoi(s.s.p + i + 1), NULL, V(V_UNDEF), &pr);
                else {
                    char *k = ar_strndup(&r->ar, s.s.p + i + 1, j - i - 1);
                    x = arg(&A, -1, k, V(V_UNDEF), &pr);
                }
                if (!pr) {
                    free(o.p);
                    rfail(r, at, "format: replacement field '%.*s' has no argument (format specs are not supported)", (int)(j - i + 1), s.s.p + i);
                }
                val xs = to_str(r, &x);
                out_put(&o, xs.s.p, xs.s.n);
                i = j;
            } else out_put(&o, &c, 1);
        }
        val v = vstr_copy(r, o.p ? o.p : "", o.n);
        free(o.p);
        return v;
    }
    rfail(r, at, "unsupported construct: str.%s()", name);
}

static val m_dict(R *r, const node *at, val self, int argc, val *argv, int kwc, const char **kwn, val *kwv) {
    args_t A = {argc, kwc, argv, kwv, kwn};
    const char *name = at->s;
    dict *d = self.d;
    if (!strcmp(name, "items")) {
        list *l = list_new(r, d->n + 1);
        for (size_t i = 0; i < d->n; i++) {
            list *t = list_new(r, 2);
            t->tuple = 1;
            list_push(r, t, d->k[i]);
            list_push(r, t, d->v[i]);
            list_push(r, l, vlist(t));
        }
        return vlist(l);
    }
    if (!strcmp(name, "keys") || !strcmp(name, "values")) {
        list *l = list_new(r, d->n + 1);
        for (size_t i = 0; i < d->n; i++) list_push(r, l, name[0] == 'k' ? d->k[i] : d->v[i]);
        return vlist(l);
    }
    if (!strcmp(name, "get")) {
        val k = arg(&A, 0, "key", V(V_UNDEF), NULL);
        long i = dict_find(d, &k);
        return i >= 0 ? d->v[i] : arg(&A, 1, "default", V(V_NONE), NULL);
    }
    rfail(r, at, "unsupported construct: dict.%s()", name);
}

static val m_loop_cycle(R *r, const node *at, val self, int argc, val *argv, int kwc, const char **kwn, val *kwv) {
    (void)kwc, (void)kwn, (void)kwv;
    if (argc == 0) rfail(r, at, "loop.cycle() needs at least one argument");
    return argv[ival(&self) % argc];
}

/* ---- globals ----------------------------------------------------------------------------------------- */
static val g_range(R *r, const node *at, val self, int argc, val *argv, int kwc, const char **kwn, val *kwv) {
    (void)self, (void)kwc, (void)kwn, (void)kwv;
    int64_t a = 0, b, st = 1;
    for (int i = 0; i < argc; i++)
        if (!is_intlike(&argv[i])) rfail(r, at, "range(): '%s' object cannot be interpreted as an integer", type_name(&argv[i]));
    if (argc == 1) b = ival(&argv[0]);
    else if (argc == 2 || argc == 3) a = ival(&argv[0]), b = ival(&argv[1]), st = argc == 3 ? ival(&argv[2]) : 1;
    else rfail(r, at, "range() takes 1 to 3 arguments");
    if (st == 0) rfail(r, at, "range() arg 3 must not be zero");
    int64_t n = st > 0 ? (b > a ? (b - a + st - 1) / st : 0) : (a > b ? (a - b - st - 1) / -st : 0);
    if (n > 1000000) rfail(r, at, "range() too large (%lld items; the sandbox allows 100000)", (long long)n);
    list *l = list_new(r, (size_t)n + 1);
    for (int64_t i = 0; i < n; i++) list_push(r, l, vint(a + i * st));
    return vlist(l);
}
static val g_namespace(R *r, const node *at, val self, int argc, val *argv, int kwc, const char **kwn, val *kwv) {
    (void)self;
    dict *d = dict_new(r);
    d->ns = 1;
    for (int i = 0; i < argc; i++) {
        if (argv[i].k != V_DICT) rfail(r, at, "namespace() takes a dict or keyword arguments");
        for (size_t k = 0; k < argv[i].d->n; k++) dict_set(r, d, argv[i].d->k[k], argv[i].d->v[k]);
    }
    for (int i = 0; i < kwc; i++) {
        if (kwn[i][0] == '_') rfail(r, at, "namespace(): underscore-prefixed attribute '%s'", kwn[i]);
        dict_sets(r, d, kwn[i], kwv[i]);
    }
    return vdict(d);
}
static val g_dict(R *r, const node *at, val self, int argc, val *argv, int kwc, const char **kwn, val *kwv) {
    (void)self;
    dict *d = dict_new(r);
    for (int i = 0; i < argc; i++) {
        if (argv[i].k == V_DICT) {
            for (size_t k = 0; k < argv[i].d->n; k++) dict_set(r, d, argv[i].d->k[k], argv[i].d->v[k]);
        } else if (argv[i].k == V_LIST) {
            for (size_t k = 0; k < argv[i].l->n; k++) {
                val p = argv[i].l->v[k];
                if (p.k != V_LIST || p.l->n != 2) rfail(r, at, "dict(): sequence elements must be pairs");
                dict_set(r, d, p.l->v[0], p.l->v[1]);
            }
        } else rfail(r, at, "dict(): cannot convert '%s'", type_name(&argv[i]));
    }
    for (int i = 0; i < kwc; i++) dict_sets(r, d, kwn[i], kwv[i]);
    return vdict(d);
}
static val g_raise(R *r, const node *at, val self, int argc, val *argv, int kwc, const char **kwn, val *kwv) {
    (void)self, (void)kwc, (void)kwn, (void)kwv;
    val m = argc ? to_str(r, &argv[0]) : vcstr("");
    rfail(r, at, "the template raised an exception: %.*s", (int)LG_MIN(m.s.n, 400), m.s.p);
}
static val g_strftime(R *r, const node *at, val self, int argc, val *argv, int kwc, const char **kwn, val *kwv) {
    (void)self, (void)kwc, (void)kwn, (void)kwv;
    if (argc != 1 || argv[0].k != V_STR) rfail(r, at, "strftime_now() takes one format string");
    time_t now = time(NULL);
    struct tm tmv;
    localtime_r(&now, &tmv);
    char fmt[256], out[512];
    snprintf(fmt, sizeof fmt, "%.*s", (int)argv[0].s.n, argv[0].s.p);
    size_t n = strftime(out, sizeof out, fmt, &tmv);
    return vstr_copy(r, out, n);
}

/* ---- evaluation ------------------------------------------------------------------------------------ */
static val eval(R *r, const node *n);
static void exec_body(R *r, node **v, int nv, scope *sc);

static val call_value(R *r, const node *at, val fn, args_t *A);

static val apply_filter(R *r, const node *at, const char *name, val x, args_t *A);
static int apply_test(R *r, const node *at, const char *name, val x, args_t *A);

static void eval_args(R *r, const node *n, args_t *A) {
    A->argc = n->nv;
    A->argv = ar_alloc(&r->ar, (size_t)(n->nv + 1) * sizeof(val));
    for (int i = 0; i < n->nv; i++) A->argv[i] = eval(r, n->v[i]);
    A->kwc = n->nnames;
    A->kwn = n->names;
    A->kwv = ar_alloc(&r->ar, (size_t)(n->nnames + 1) * sizeof(val));
    for (int i = 0; i < n->nnames; i++) A->kwv[i] = eval(r, n->kv[i]);
}

static val arith(R *r, const node *at, int op, val a, val b) {
    if (a.k == V_UNDEF) undef_fail(r, at, &a);
    if (b.k == V_UNDEF) undef_fail(r, at, &b);
    static const char *const OPN[] = {"+", "-", "*", "/", "//", "%", "**"};
    if (is_num(&a) && is_num(&b)) {
        int ints = is_intlike(&a) && is_intlike(&b);
        int64_t x = ints ? ival(&a) : 0, y = ints ? ival(&b) : 0;
        double fx = num(&a), fy = num(&b);
        switch (op) {
        case OP_ADD: return ints ? vint(x + y) : vfloat(fx + fy);
        case OP_SUB: return ints ? vint(x - y) : vfloat(fx - fy);
        case OP_MUL: return ints ? vint(x * y) : vfloat(fx * fy);
        case OP_DIV:
            if (fy == 0) rfail(r, at, "division by zero");
            return vfloat(fx / fy);
        case OP_FLOORDIV:
        case OP_MOD:
            if (fy == 0) rfail(r, at, "integer division or modulo by zero");
            if (ints) {
                int64_t q = x / y, m = x % y;
                if (m != 0 && ((m < 0) != (y < 0))) q--, m += y;
                return op == OP_MOD ? vint(m) : vint(q);
            } else {
                double m = fmod(fx, fy);
                if (m != 0 && ((m < 0) != (fy < 0))) m += fy;
                return op == OP_MOD ? vfloat(m) : vfloat(floor(fx / fy));
            }
        case OP_POW:
            if (ints && y >= 0) {
                int64_t p = 1;
                for (int64_t i = 0; i < y; i++) p *= x;
                return vint(p);
            }
            return vfloat(pow(fx, fy));
        }
    }
    if (op == OP_ADD && a.k == V_STR && b.k == V_STR) {
        char *s = ar_alloc(&r->ar, a.s.n + b.s.n + 1);
        memcpy(s, a.s.p, a.s.n);
        memcpy(s + a.s.n, b.s.p, b.s.n);
        return vstr(s, a.s.n + b.s.n);
    }
    if (op == OP_ADD && a.k == V_LIST && b.k == V_LIST && a.l->tuple == b.l->tuple) {
        list *l = list_new(r, a.l->n + b.l->n + 1);
        l->tuple = a.l->tuple;
        for (size_t i = 0; i < a.l->n; i++) list_push(r, l, a.l->v[i]);
        for (size_t i = 0; i < b.l->n; i++) list_push(r, l, b.l->v[i]);
        return vlist(l);
    }
    if (op == OP_MUL && ((a.k == V_STR || a.k == V_LIST) && is_intlike(&b))) {
        int64_t k = ival(&b);
        if (a.k == V_STR) {
            obuf o = {0};
            for (int64_t i = 0; i < k && o.n < (1u << 24); i++) out_put(&o, a.s.p, a.s.n);
            val v = vstr_copy(r, o.p ? o.p : "", o.n);
            free(o.p);
            return v;
        }
        list *l = list_new(r, 4);
        l->tuple = a.l->tuple;
        for (int64_t i = 0; i < k && l->n < (1u << 20); i++)
            for (size_t j = 0; j < a.l->n; j++) list_push(r, l, a.l->v[j]);
        return vlist(l);
    }
    if (op == OP_MUL && is_intlike(&a) && (b.k == V_STR || b.k == V_LIST)) return arith(r, at, op, b, a);
    if (op == OP_MOD && a.k == V_STR) { /* printf-style formatting: %s %d %% */
        list *vals = b.k == V_LIST && b.l->tuple ? b.l : NULL;
        size_t vi = 0;
        obuf o = {0};
        for (size_t i = 0; i < a.s.n; i++) {
            char c = a.s.p[i];
            if (c != '%' || i + 1 >= a.s.n) {
                out_put(&o, &c, 1);
                continue;
            }
            char f = a.s.p[++i];
            if (f == '%') {
                out_put(&o, "%", 1);
                continue;
            }
            val x = vals ? (vi < vals->n ? vals->v[vi++] : V(V_UNDEF)) : (vi++ == 0 ? b : V(V_UNDEF));
            if (f == 's' || f == 'd' || f == 'i' || f == 'r') {
                val xs;
                if (f == 'd' || f == 'i') xs = to_str(r, &(val){.k = V_INT, .i = x.k == V_FLOAT ? (int64_t)x.f : ival(&x)});
                else if (f == 'r') {
                    obuf q = {0};
                    repr_to(r, &q, &x);
                    xs = vstr_copy(r, q.p ? q.p : "", q.n);
                    free(q.p);
                } else xs = to_str(r, &x);
                out_put(&o, xs.s.p, xs.s.n);
            } else {
                free(o.p);
                rfail(r, at, "unsupported construct: '%%%c' in %% formatting", f);
            }
        }
        val v = vstr_copy(r, o.p ? o.p : "", o.n);
        free(o.p);
        return v;
    }
    rfail(r, at, "unsupported operand type(s) for %s: '%s' and '%s'", OPN[op], type_name(&a), type_name(&b));
}

static int contains(R *r, const node *at, val hay, val x) {
    switch (hay.k) {
    case V_STR:
        if (x.k != V_STR) rfail(r, at, "'in <string>' requires string as left operand, not %s", type_name(&x));
        return str_find(hay, x, 0, 0) >= 0;
    case V_LIST:
        for (size_t i = 0; i < hay.l->n; i++)
            if (v_eq(&hay.l->v[i], &x)) return 1;
        return 0;
    case V_DICT: return dict_find(hay.d, &x) >= 0;
    case V_UNDEF: return 0;
    default: rfail(r, at, "argument of type '%s' is not iterable", type_name(&hay));
    }
}

static val slice(R *r, const node *at, val obj, val a, val b, val c) {
    if (obj.k == V_UNDEF) undef_fail(r, at, &obj);
    if (obj.k != V_LIST && obj.k != V_STR) rfail(r, at, "'%s' object is not subscriptable", type_name(&obj));
    int64_t n = obj.k == V_LIST ? (int64_t)obj.l->n : (int64_t)u8count(obj.s.p, obj.s.n);
    int64_t st = c.k == V_NONE || c.k == V_UNDEF ? 1 : ival(&c);
    if (st == 0) rfail(r, at, "slice step cannot be zero");
    int64_t lo, hi;
    if (st > 0) {
        lo = a.k == V_NONE || a.k == V_UNDEF ? 0 : ival(&a);
        hi = b.k == V_NONE || b.k == V_UNDEF ? n : ival(&b);
        if (lo < 0) lo += n;
        if (hi < 0) hi += n;
        lo = LG_MAX(0, LG_MIN(lo, n));
        hi = LG_MAX(0, LG_MIN(hi, n));
    } else {
        lo = a.k == V_NONE || a.k == V_UNDEF ? n - 1 : ival(&a);
        hi = b.k == V_NONE || b.k == V_UNDEF ? -1 : ival(&b);
        if (a.k != V_NONE && a.k != V_UNDEF && lo < 0) lo += n;
        if (b.k != V_NONE && b.k != V_UNDEF && hi < 0) hi += n;
        lo = LG_MIN(lo, n - 1);
        hi = LG_MAX(hi, -1);
    }
    list *idx = list_new(r, 8);
    for (int64_t i = lo; st > 0 ? i < hi : i > hi; i += st) list_push(r, idx, vint(i));
    if (obj.k == V_LIST) {
        list *l = list_new(r, idx->n + 1);
        l->tuple = obj.l->tuple;
        for (size_t i = 0; i < idx->n; i++) list_push(r, l, obj.l->v[idx->v[i].i]);
        return vlist(l);
    }
    obuf o = {0};
    for (size_t i = 0; i < idx->n; i++) {
        size_t p = u8off(obj.s.p, obj.s.n, (size_t)idx->v[i].i), q = u8off(obj.s.p, obj.s.n, (size_t)idx->v[i].i + 1);
        out_put(&o, obj.s.p + p, q - p);
    }
    val v = vstr_copy(r, o.p ? o.p : "", o.n);
    free(o.p);
    return v;
}

static val eval(R *r, const node *n) {
    switch (n->kind) {
    case E_LIT: return n->lit;
    case E_NAME: return lookup(r->sc, n->s);
    case E_ATTR: return get_attr(r, n, eval(r, n->a), n->s);
    case E_ITEM: return get_item(r, n, eval(r, n->a), eval(r, n->b));
    case E_SLICE: {
        val o = eval(r, n->a);
        val a = n->b ? eval(r, n->b) : V(V_NONE), b = n->c ? eval(r, n->c) : V(V_NONE), c = n->kv[0] ? eval(r, n->kv[0]) : V(V_NONE);
        return slice(r, n, o, a, b, c);
    }
    case E_CALL: {
        val fn = eval(r, n->a);
        args_t A;
        eval_args(r, n, &A);
        return call_value(r, n, fn, &A);
    }
    case E_FILTER: {
        val x = eval(r, n->a);
        args_t A;
        eval_args(r, n, &A);
        return apply_filter(r, n, n->s, x, &A);
    }
    case E_TEST: {
        val x = eval(r, n->a);
        args_t A;
        eval_args(r, n, &A);
        int t = apply_test(r, n, n->s, x, &A);
        return vbool(n->neg ? !t : t);
    }
    case E_BIN: return arith(r, n, n->op, eval(r, n->a), eval(r, n->b));
    case E_NEG:
    case E_POS: {
        val x = eval(r, n->a);
        if (x.k == V_UNDEF) undef_fail(r, n, &x);
        if (!is_num(&x)) rfail(r, n, "bad operand type for unary %s: '%s'", n->kind == E_NEG ? "-" : "+", type_name(&x));
        if (n->kind == E_POS) return is_intlike(&x) ? vint(ival(&x)) : x;
        return is_intlike(&x) ? vint(-ival(&x)) : vfloat(-x.f);
    }
    case E_NOT: {
        val x = eval(r, n->a);
        return vbool(!truthy(&x));
    }
    case E_AND: {
        val a = eval(r, n->a);
        return truthy(&a) ? eval(r, n->b) : a;
    }
    case E_OR: {
        val a = eval(r, n->a);
        return truthy(&a) ? a : eval(r, n->b);
    }
    case E_COND: {
        val c = eval(r, n->a);
        if (truthy(&c)) return eval(r, n->b);
        return n->c ? eval(r, n->c) : vundef("conditional expression without else");
    }
    case E_LIST:
    case E_TUPLE: {
        list *l = list_new(r, (size_t)n->nv + 1);
        l->tuple = n->kind == E_TUPLE;
        for (int i = 0; i < n->nv; i++) list_push(r, l, eval(r, n->v[i]));
        return vlist(l);
    }
    case E_DICT: {
        dict *d = dict_new(r);
        for (int i = 0; i < n->nv; i++) dict_set(r, d, eval(r, n->v[i]), eval(r, n->kv[i]));
        return vdict(d);
    }
    case E_CMP: {
        val a = eval(r, n->a);
        for (int i = 0; i < n->nv; i++) {
            val b = eval(r, n->v[i]);
            int ok;
            switch (n->ops[i]) {
            case C_EQ: ok = v_eq(&a, &b); break;
            case C_NE: ok = !v_eq(&a, &b); break;
            case C_LT: ok = v_cmp(r, n, &a, &b, "<") < 0; break;
            case C_LE: ok = v_cmp(r, n, &a, &b, "<=") <= 0; break;
            case C_GT: ok = v_cmp(r, n, &a, &b, ">") > 0; break;
            case C_GE: ok = v_cmp(r, n, &a, &b, ">=") >= 0; break;
            case C_IN: ok = contains(r, n, b, a); break;
            default: ok = !contains(r, n, b, a); break;
            }
            if (!ok) return vbool(0);
            a = b;
        }
        return vbool(1);
    }
    case E_CONCAT: {
        obuf o = {0};
        for (int i = 0; i < n->nv; i++) {
            val x = eval(r, n->v[i]);
            str_to(r, &o, &x);
        }
        val v = vstr_copy(r, o.p ? o.p : "", o.n);
        free(o.p);
        return v;
    }
    }
    rfail(r, n, "internal error: bad expression node %d", n->kind);
}

/* macros: positional then keyword arguments, defaults evaluated in the macro's scope */
static val call_macro(R *r, const node *at, func *f, args_t *A) {
    const node *m = f->macro;
    if (A->argc > m->nnames) rfail(r, at, "macro '%s' takes %d arguments, %d given", m->s, m->nnames, A->argc);
    if (++r->depth > 200) rfail(r, at, "macro recursion too deep");
    scope *sc = scope_new(r, f->closure);
    scope *saved = r->sc;
    r->sc = sc;
    for (int i = 0; i < m->nnames; i++) {
        int pr;
        val v = arg(A, i, m->names[i], V(V_UNDEF), &pr);
        if (!pr) v = m->kv[i] ? eval(r, m->kv[i]) : vundef(m->names[i]);
        dict_sets(r, sc->vars, m->names[i], v);
    }
    for (int k = 0; k < A->kwc; k++) {
        int ok = 0;
        for (int i = 0; i < m->nnames; i++) ok |= !strcmp(A->kwn[k], m->names[i]);
        if (!ok) rfail(r, at, "macro '%s' has no parameter '%s'", m->s, A->kwn[k]);
    }
    obuf *saved_out = r->out, mo = {0};
    r->out = &mo;
    exec_body(r, m->v, m->nv, sc);
    r->out = saved_out;
    r->sc = saved;
    r->depth--;
    val v = vstr_copy(r, mo.p ? mo.p : "", mo.n);
    free(mo.p);
    return v;
}

static val call_value(R *r, const node *at, val fn, args_t *A) {
    if (fn.k == V_UNDEF) {
        if (fn.uname) rfail(r, at, "'%s' is undefined (not a known function or method)", fn.uname);
        undef_fail(r, at, &fn);
    }
    if (fn.k != V_FUNC) rfail(r, at, "'%s' object is not callable", type_name(&fn));
    if (fn.fn->macro) return call_macro(r, at, fn.fn, A);
    /* methods read their name from the node: pass a node that carries it */
    node tmp = *at;
    tmp.s = fn.fn->name;
    return fn.fn->fn(r, &tmp, fn.fn->self, A->argc, A->argv, A->kwc, A->kwn, A->kwv);
}

/* ---- filters --------------------------------------------------------------------------------------- */
static val attr_path(R *r, const node *at, val x, val attr) {
    if (is_intlike(&attr)) return get_item(r, at, x, attr);
    val a = need_str(r, at, attr, "attribute");
    size_t i = 0;
    while (i <= a.s.n) {
        size_t j = i;
        while (j < a.s.n && a.s.p[j] != '.') j++;
        val part = vstr(a.s.p + i, j - i);
        int digits = j > i;
        for (size_t q = i; q < j; q++) digits &= is_digit(a.s.p[q]);
        if (x.k == V_UNDEF) return x;
        x = digits ? get_item(r, at, x, vint(atoll(ar_strndup(&r->ar, part.s.p, part.s.n)))) : get_item(r, at, x, part);
        i = j + 1;
    }
    return x;
}

static _Thread_local int cmp_sort_ci;
static _Thread_local R *cmp_r;
static _Thread_local const node *cmp_at;
static int sort_cmp(const void *a, const void *b) {
    const val *x = a, *y = b;
    if (cmp_sort_ci && x->k == V_STR && y->k == V_STR) {
        val lx = str_case(cmp_r, *x, 1), ly = str_case(cmp_r, *y, 1);
        return v_cmp(cmp_r, cmp_at, &lx, &ly, "<");
    }
    return v_cmp(cmp_r, cmp_at, x, y, "<");
}

typedef struct {
    val key, v;
    size_t i;
} keyed;
static int keyed_cmp(const void *a, const void *b) {
    const keyed *x = a, *y = b;
    int c = sort_cmp(&x->key, &y->key);
    return c ? c : (x->i > y->i) - (x->i < y->i);
}

static val apply_filter(R *r, const node *at, const char *name, val x, args_t *A) {
    int pr;
    if (!strcmp(name, "trim")) {
        val s = to_str(r, &x), c = arg(A, 0, "chars", V(V_NONE), NULL);
        return strip(&s, c.k == V_NONE ? NULL : &c, 1, 1);
    }
    if (!strcmp(name, "tojson")) {
        json_opts j = {-1, ", ", ": ", 0, 0};
        val ind = arg(A, 0, "indent", V(V_NONE), NULL), sk = arg(A, 3, "sort_keys", vbool(0), NULL);
        val ea = arg(A, -1, "ensure_ascii", vbool(0), NULL), sep = arg(A, 2, "separators", V(V_NONE), NULL);
        if (ind.k != V_NONE) {
            if (!is_intlike(&ind)) rfail(r, at, "tojson: indent must be an integer");
            j.indent = (int)LG_MAX(0, ival(&ind));
            j.item_sep = ",";
        }
        if (sep.k == V_LIST && sep.l->n == 2) {
            j.item_sep = need_str(r, at, sep.l->v[0], "tojson separators").s.p;
            j.key_sep = need_str(r, at, sep.l->v[1], "tojson separators").s.p;
            j.item_sep = ar_strndup(&r->ar, sep.l->v[0].s.p, sep.l->v[0].s.n);
            j.key_sep = ar_strndup(&r->ar, sep.l->v[1].s.p, sep.l->v[1].s.n);
        }
        j.sort_keys = truthy(&sk);
        j.ensure_ascii = truthy(&ea);
        obuf o = {0};
        json_to(r, at, &o, &x, &j, 0);
        val v = vstr_copy(r, o.p ? o.p : "", o.n);
        free(o.p);
        return v;
    }
    if (!strcmp(name, "length") || !strcmp(name, "count")) {
        switch (x.k) {
        case V_STR: return vint((int64_t)u8count(x.s.p, x.s.n));
        case V_LIST: return vint((int64_t)x.l->n);
        case V_DICT: return vint((int64_t)x.d->n);
        case V_UNDEF: return vint(0);
        default: rfail(r, at, "object of type '%s' has no len()", type_name(&x));
        }
    }
    if (!strcmp(name, "items")) {
        if (x.k == V_UNDEF) return vlist(list_new(r, 1));
        if (x.k != V_DICT) rfail(r, at, "items: can only get item pairs from a mapping, not %s", type_name(&x));
        node t = *at;
        t.s = "items";
        return m_dict(r, &t, x, 0, NULL, 0, NULL, NULL);
    }
    if (!strcmp(name, "upper")) return str_case(r, to_str(r, &x), 0);
    if (!strcmp(name, "lower")) return str_case(r, to_str(r, &x), 1);
    if (!strcmp(name, "capitalize")) return str_case(r, to_str(r, &x), 2);
    if (!strcmp(name, "title")) return str_case(r, to_str(r, &x), 3);
    if (!strcmp(name, "replace")) {
        val s = to_str(r, &x);
        val o = to_str(r, &(val){0}), nw;
        o = arg(A, 0, "old", V(V_UNDEF), NULL);
        nw = arg(A, 1, "new", V(V_UNDEF), NULL);
        val c = arg(A, 2, "count", V(V_NONE), NULL);
        return str_replace(r, s, to_str(r, &o), to_str(r, &nw), c.k == V_NONE ? -1 : ival(&c));
    }
    if (!strcmp(name, "join")) {
        val d = arg(A, 0, "d", vcstr(""), NULL), at2 = arg(A, 1, "attribute", V(V_NONE), NULL);
        list *l = iter_list(r, at, x);
        obuf o = {0};
        d = to_str(r, &d);
        for (size_t i = 0; i < l->n; i++) {
            if (i) out_put(&o, d.s.p, d.s.n);
            val it = at2.k == V_NONE ? l->v[i] : attr_path(r, at, l->v[i], at2);
            str_to(r, &o, &it);
        }
        val v = vstr_copy(r, o.p ? o.p : "", o.n);
        free(o.p);
        return v;
    }
    if (!strcmp(name, "first") || !strcmp(name, "last")) {
        list *l = iter_list(r, at, x);
        if (!l->n) return vundef(name);
        return name[0] == 'f' ? l->v[0] : l->v[l->n - 1];
    }
    if (!strcmp(name, "default") || !strcmp(name, "d")) {
        val d = arg(A, 0, "default_value", vcstr(""), NULL), b = arg(A, 1, "boolean", vbool(0), NULL);
        if (x.k == V_UNDEF || (truthy(&b) && !truthy(&x))) return d;
        return x;
    }
    if (!strcmp(name, "list")) {
        list *src = iter_list(r, at, x), *l = list_new(r, src->n + 1);
        for (size_t i = 0; i < src->n; i++) list_push(r, l, src->v[i]);
        return vlist(l);
    }
    if (!strcmp(name, "string")) return to_str(r, &x);
    if (!strcmp(name, "safe") || !strcmp(name, "escape") || !strcmp(name, "e")) {
        if (!strcmp(name, "safe")) return x;
        val s = to_str(r, &x);
        obuf o = {0};
        for (size_t i = 0; i < s.s.n; i++) {
            char c = s.s.p[i];
            if (c == '&') out_put(&o, "&amp;", 5);
            else if (c == '<') out_put(&o, "&lt;", 4);
            else if (c == '>') out_put(&o, "&gt;", 4);
            else if (c == '"') out_put(&o, "&#34;", 5);
            else if (c == '\'') out_put(&o, "&#39;", 5);
            else out_put(&o, &c, 1);
        }
        val v = vstr_copy(r, o.p ? o.p : "", o.n);
        free(o.p);
        return v;
    }
    if (!strcmp(name, "int")) {
        val d = arg(A, 0, "default", vint(0), NULL);
        if (is_intlike(&x)) return vint(ival(&x));
        if (x.k == V_FLOAT) return isfinite(x.f) ? vint((int64_t)x.f) : d;
        if (x.k == V_STR) {
            char *s = ar_strndup(&r->ar, x.s.p, x.s.n), *e;
            long long v = strtoll(s, &e, 10);
            while (*e == ' ') e++;
            if (*e == 0 && e != s) return vint(v);
            double f = strtod(s, &e);
            if (*e == 0 && e != s && isfinite(f)) return vint((int64_t)f);
        }
        return d;
    }
    if (!strcmp(name, "float")) {
        val d = arg(A, 0, "default", vfloat(0), NULL);
        if (is_num(&x)) return vfloat(num(&x));
        if (x.k == V_STR) {
            char *s = ar_strndup(&r->ar, x.s.p, x.s.n), *e;
            double f = strtod(s, &e);
            if (*e == 0 && e != s) return vfloat(f);
        }
        return d;
    }
    if (!strcmp(name, "abs")) {
        if (!is_num(&x)) rfail(r, at, "bad operand type for abs(): '%s'", type_name(&x));
        return is_intlike(&x) ? vint(ival(&x) < 0 ? -ival(&x) : ival(&x)) : vfloat(fabs(x.f));
    }
    if (!strcmp(name, "round")) {
        val p = arg(A, 0, "precision", vint(0), NULL), m = arg(A, 1, "method", vcstr("common"), NULL);
        if (!is_num(&x)) rfail(r, at, "round: expected a number, got %s", type_name(&x));
        double f = num(&x), sc = pow(10, (double)ival(&p));
        if (m.k == V_STR && m.s.n == 4 && !memcmp(m.s.p, "ceil", 4)) return vfloat(ceil(f * sc) / sc);
        if (m.k == V_STR && m.s.n == 5 && !memcmp(m.s.p, "floor", 5)) return vfloat(floor(f * sc) / sc);
        return vfloat(round(f * sc) / sc);
    }
    if (!strcmp(name, "select") || !strcmp(name, "reject") || !strcmp(name, "selectattr") || !strcmp(name, "rejectattr")) {
        int is_attr = strstr(name, "attr") != NULL, keep = name[0] == 's';
        list *src = iter_list(r, at, x), *l = list_new(r, src->n + 1);
        int off = is_attr ? 1 : 0;
        val attrname = is_attr ? arg(A, 0, NULL, V(V_UNDEF), &pr) : V(V_UNDEF);
        if (is_attr && !pr) rfail(r, at, "%s: missing attribute name", name);
        val tn = arg(A, off, NULL, V(V_UNDEF), &pr);
        args_t T = {A->argc > off + 1 ? A->argc - off - 1 : 0, 0, A->argv + off + 1, NULL, NULL};
        for (size_t i = 0; i < src->n; i++) {
            val it = is_attr ? attr_path(r, at, src->v[i], attrname) : src->v[i];
            int ok;
            if (!pr) ok = truthy(&it);
            else {
                val tns = need_str(r, at, tn, name);
                ok = apply_test(r, at, ar_strndup(&r->ar, tns.s.p, tns.s.n), it, &T);
            }
            if (ok == keep) list_push(r, l, src->v[i]);
        }
        return vlist(l);
    }
    if (!strcmp(name, "map")) {
        list *src = iter_list(r, at, x), *l = list_new(r, src->n + 1);
        val an = arg(A, -1, "attribute", V(V_UNDEF), &pr);
        if (pr) {
            val dflt = arg(A, -1, "default", V(V_UNDEF), NULL);
            for (size_t i = 0; i < src->n; i++) {
                val it = attr_path(r, at, src->v[i], an);
                list_push(r, l, it.k == V_UNDEF && dflt.k != V_UNDEF ? dflt : it);
            }
            return vlist(l);
        }
        val fname = need_str(r, at, arg(A, 0, NULL, V(V_UNDEF), NULL), "map");
        args_t F = {A->argc - 1, A->kwc, A->argv + 1, A->kwv, A->kwn};
        const char *fn = ar_strndup(&r->ar, fname.s.p, fname.s.n);
        for (size_t i = 0; i < src->n; i++) list_push(r, l, apply_filter(r, at, fn, src->v[i], &F));
        return vlist(l);
    }
    if (!strcmp(name, "unique")) {
        list *src = iter_list(r, at, x), *l = list_new(r, src->n + 1);
        for (size_t i = 0; i < src->n; i++) {
            int seen = 0;
            for (size_t k = 0; k < l->n && !seen; k++) seen = v_eq(&l->v[k], &src->v[i]);
            if (!seen) list_push(r, l, src->v[i]);
        }
        return vlist(l);
    }
    if (!strcmp(name, "sort") || !strcmp(name, "dictsort")) {
        int dsort = name[0] == 'd';
        list *src = dsort ? NULL : iter_list(r, at, x);
        if (dsort) {
            if (x.k != V_DICT) rfail(r, at, "dictsort: expected a mapping");
            node t = *at;
            t.s = "items";
            src = m_dict(r, &t, x, 0, NULL, 0, NULL, NULL).l;
        }
        val rev = arg(A, dsort ? 2 : 0, "reverse", vbool(0), NULL), cs = arg(A, dsort ? 0 : 1, "case_sensitive", vbool(0), NULL);
        val an = dsort ? V(V_UNDEF) : arg(A, 2, "attribute", V(V_UNDEF), NULL);
        val by = dsort ? arg(A, 1, "by", vcstr("key"), NULL) : V(V_UNDEF);
        keyed *k = lg_malloc((src->n + 1) * sizeof *k);
        for (size_t i = 0; i < src->n; i++) {
            k[i].v = src->v[i];
            k[i].i = i;
            if (dsort) k[i].key = src->v[i].l->v[by.k == V_STR && by.s.n == 5 && !memcmp(by.s.p, "value", 5) ? 1 : 0];
            else k[i].key = an.k == V_UNDEF ? src->v[i] : attr_path(r, at, src->v[i], an);
        }
        cmp_sort_ci = !truthy(&cs);
        cmp_r = r;
        cmp_at = at;
        qsort(k, src->n, sizeof *k, keyed_cmp);
        list *l = list_new(r, src->n + 1);
        for (size_t i = 0; i < src->n; i++) list_push(r, l, k[truthy(&rev) ? src->n - 1 - i : i].v);
        free(k);
        return vlist(l);
    }
    if (!strcmp(name, "reverse")) {
        if (x.k == V_STR) {
            size_t n = u8count(x.s.p, x.s.n);
            obuf o = {0};
            for (size_t i = n; i > 0; i--) {
                size_t a = u8off(x.s.p, x.s.n, i - 1), b = u8off(x.s.p, x.s.n, i);
                out_put(&o, x.s.p + a, b - a);
            }
            val v = vstr_copy(r, o.p ? o.p : "", o.n);
            free(o.p);
            return v;
        }
        list *src = iter_list(r, at, x), *l = list_new(r, src->n + 1);
        for (size_t i = src->n; i > 0; i--) list_push(r, l, src->v[i - 1]);
        return vlist(l);
    }
    if (!strcmp(name, "indent")) {
        val w = arg(A, 0, "width", vint(4), NULL), first = arg(A, 1, "first", vbool(0), NULL), blank = arg(A, 2, "blank", vbool(0), NULL);
        val s = to_str(r, &x);
        obuf ind = {0}, o = {0};
        if (w.k == V_STR) out_put(&ind, w.s.p, w.s.n);
        else
            for (int64_t i = 0; i < ival(&w); i++) out_put(&ind, " ", 1);
        /* jinja: lines = s.splitlines(); s += "\n" if it ended with newline handled by splitlines semantics */
        size_t i = 0;
        int line0 = 1;
        while (i <= s.s.n) {
            size_t j = i;
            while (j < s.s.n && s.s.p[j] != '\n') j++;
            int empty = j == i;
            if (i == s.s.n && !line0) break;
            if (!line0) out_put(&o, "\n", 1);
            if ((line0 ? truthy(&first) : 1) && (!empty || truthy(&blank))) out_put(&o, ind.p, ind.n);
            out_put(&o, s.s.p + i, j - i);
            line0 = 0;
            if (j >= s.s.n) break;
            i = j + 1;
            if (i == s.s.n) {
                out_put(&o, "\n", 1);
                break;
            }
        }
        val v = vstr_copy(r, o.p ? o.p : "", o.n);
        free(o.p);
        free(ind.p);
        return v;
    }
    if (!strcmp(name, "wordcount")) {
        val s = to_str(r, &x);
        return vint((int64_t)str_split(r, s, NULL, -1, 0).l->n);
    }
    if (!strcmp(name, "sum")) {
        list *src = iter_list(r, at, x);
        val an = arg(A, 0, "attribute", V(V_UNDEF), NULL), acc = arg(A, 1, "start", vint(0), NULL);
        for (size_t i = 0; i < src->n; i++) acc = arith(r, at, OP_ADD, acc, an.k == V_UNDEF ? src->v[i] : attr_path(r, at, src->v[i], an));
        return acc;
    }
    if (!strcmp(name, "min") || !strcmp(name, "max")) {
        list *src = iter_list(r, at, x);
        if (!src->n) return vundef(name);
        val best = src->v[0];
        for (size_t i = 1; i < src->n; i++) {
            int c = v_cmp(r, at, &src->v[i], &best, "<");
            if (name[1] == 'i' ? c < 0 : c > 0) best = src->v[i];
        }
        return best;
    }
    if (!strcmp(name, "center")) {
        val s = to_str(r, &x), w = arg(A, 0, "width", vint(80), NULL);
        int64_t n = (int64_t)u8count(s.s.p, s.s.n), W = ival(&w);
        if (W <= n) return s;
        int64_t left = (W - n) / 2 + ((W - n) & W & 1), right = W - n - left;
        obuf o = {0};
        for (int64_t i = 0; i < left; i++) out_put(&o, " ", 1);
        out_put(&o, s.s.p, s.s.n);
        for (int64_t i = 0; i < right; i++) out_put(&o, " ", 1);
        val v = vstr_copy(r, o.p, o.n);
        free(o.p);
        return v;
    }
    if (!strcmp(name, "attr")) return get_attr(r, at, x, ar_strndup(&r->ar, need_str(r, at, arg(A, 0, "name", V(V_UNDEF), NULL), "attr").s.p, arg(A, 0, "name", V(V_UNDEF), NULL).s.n));
    if (!strcmp(name, "format")) {
        val s = need_str(r, at, x, "format");
        list *t = list_new(r, (size_t)A->argc + 1);
        t->tuple = 1;
        for (int i = 0; i < A->argc; i++) list_push(r, t, A->argv[i]);
        return arith(r, at, OP_MOD, s, vlist(t));
    }
    rfail(r, at, "unsupported construct: filter '%s'", name);
}

static int apply_test(R *r, const node *at, const char *name, val x, args_t *A) {
    int pr;
    val a0 = arg(A, 0, NULL, V(V_UNDEF), &pr);
    if (!strcmp(name, "defined")) return x.k != V_UNDEF;
    if (!strcmp(name, "undefined")) return x.k == V_UNDEF;
    if (!strcmp(name, "none")) return x.k == V_NONE;
    if (!strcmp(name, "string")) return x.k == V_STR;
    if (!strcmp(name, "number")) return is_num(&x);
    if (!strcmp(name, "integer")) return x.k == V_INT;
    if (!strcmp(name, "float")) return x.k == V_FLOAT;
    if (!strcmp(name, "boolean")) return x.k == V_BOOL;
    if (!strcmp(name, "true")) return x.k == V_BOOL && x.b;
    if (!strcmp(name, "false")) return x.k == V_BOOL && !x.b;
    if (!strcmp(name, "mapping")) return x.k == V_DICT && !x.d->ns;
    if (!strcmp(name, "iterable")) return x.k == V_STR || x.k == V_LIST || (x.k == V_DICT && !x.d->ns) || x.k == V_UNDEF;
    if (!strcmp(name, "sequence")) return x.k == V_STR || x.k == V_LIST || (x.k == V_DICT && !x.d->ns);
    if (!strcmp(name, "callable")) return x.k == V_FUNC;
    if (!strcmp(name, "odd") || !strcmp(name, "even")) {
        if (!is_intlike(&x)) rfail(r, at, "test '%s' needs an integer, got %s", name, type_name(&x));
        int64_t m = ival(&x) % 2;
        return name[0] == 'o' ? m != 0 : m == 0;
    }
    if (!strcmp(name, "divisibleby")) {
        if (!is_intlike(&x) || !is_intlike(&a0) || ival(&a0) == 0) rfail(r, at, "test 'divisibleby' needs integers (and a non-zero divisor)");
        return ival(&x) % ival(&a0) == 0;
    }
    if (!strcmp(name, "eq") || !strcmp(name, "equalto") || !strcmp(name, "==")) return v_eq(&x, &a0);
    if (!strcmp(name, "ne") || !strcmp(name, "!=")) return !v_eq(&x, &a0);
    if (!strcmp(name, "lt") || !strcmp(name, "lessthan") || !strcmp(name, "<")) return v_cmp(r, at, &x, &a0, "<") < 0;
    if (!strcmp(name, "le") || !strcmp(name, "<=")) return v_cmp(r, at, &x, &a0, "<=") <= 0;
    if (!strcmp(name, "gt") || !strcmp(name, "greaterthan") || !strcmp(name, ">")) return v_cmp(r, at, &x, &a0, ">") > 0;
    if (!strcmp(name, "ge") || !strcmp(name, ">=")) return v_cmp(r, at, &x, &a0, ">=") >= 0;
    if (!strcmp(name, "in")) return contains(r, at, a0, x);
    if (!strcmp(name, "sameas")) {
        if (x.k != a0.k) return 0;
        if (x.k == V_NONE || x.k == V_UNDEF) return 1;
        if (x.k == V_BOOL) return x.b == a0.b;
        if (x.k == V_LIST) return x.l == a0.l;
        if (x.k == V_DICT) return x.d == a0.d;
        return v_eq(&x, &a0);
    }
    if (!strcmp(name, "lower") || !strcmp(name, "upper")) {
        if (x.k != V_STR) return 0;
        node t = *at;
        t.s = name[0] == 'l' ? "islower" : "isupper";
        val v = m_str(r, &t, x, 0, NULL, 0, NULL, NULL);
        return v.b;
    }
    if (!strcmp(name, "escaped")) return 0;
    rfail(r, at, "unsupported construct: test '%s'", name);
}

/* ---- statements --------------------------------------------------------------------------------------- */
static void assign(R *r, const node *tg, val v, scope *sc) {
    if (tg->kind == E_NAME) {
        dict_sets(r, sc->vars, tg->s, v);
        return;
    }
    if (tg->kind == E_ATTR) {
        val ns = eval(r, tg->a);
        if (ns.k != V_DICT || !ns.d->ns) rfail(r, tg, "cannot assign attribute '%s' on a non-namespace object", tg->s);
        if (tg->s[0] == '_') rfail(r, tg, "namespace: underscore-prefixed attribute '%s'", tg->s);
        dict_sets(r, ns.d, tg->s, v);
        return;
    }
    /* tuple */
    list *l = iter_list(r, tg, v);
    if ((int)l->n != tg->nv)
        rfail(r, tg, "cannot unpack %zu values into %d names", l->n, tg->nv);
    for (int i = 0; i < tg->nv; i++) assign(r, tg->v[i], l->v[i], sc);
}

static void exec_stmt(R *r, const node *s, scope *sc);

static void exec_body(R *r, node **v, int nv, scope *sc) {
    for (int i = 0; i < nv && !r->brk && !r->cont; i++) exec_stmt(r, v[i], sc);
}

static val render_body_to_str(R *r, const node *s, scope *sc) {
    obuf *saved = r->out, o = {0};
    r->out = &o;
    exec_body(r, s->v, s->nv, sc);
    r->out = saved;
    val v = vstr_copy(r, o.p ? o.p : "", o.n);
    free(o.p);
    return v;
}

static void exec_stmt(R *r, const node *s, scope *sc) {
    scope *saved_scope = r->sc;
    r->sc = sc;
    switch (s->kind) {
    case S_TEXT: out_put(r->out, s->s, s->sn); break;
    case S_OUT: {
        val v = eval(r, s->a);
        str_to(r, r->out, &v);
        break;
    }
    case S_IF: {
        const node *n = s;
        for (;;) {
            val c = eval(r, n->a);
            if (truthy(&c)) {
                exec_body(r, n->v, n->nv, sc);
                break;
            }
            if (!n->body2) break;
            if (n->body2->kind == S_IF) {
                n = n->body2;
                continue;
            }
            exec_body(r, n->body2->v, n->body2->nv, sc);
            break;
        }
        break;
    }
    case S_FOR: {
        val it = eval(r, s->a);
        list *src = iter_list(r, s->a, it), *items = src;
        if (s->b) { /* for x in xs if cond: filtered first */
            items = list_new(r, src->n + 1);
            for (size_t i = 0; i < src->n; i++) {
                scope *fs = scope_new(r, sc);
                assign(r, s->c, src->v[i], fs);
                r->sc = fs;
                val c = eval(r, s->b);
                r->sc = sc;
                if (truthy(&c)) list_push(r, items, src->v[i]);
            }
        }
        if (!items->n) {
            if (s->body2) exec_body(r, s->body2->v, s->body2->nv, sc);
            break;
        }
        for (size_t i = 0; i < items->n; i++) {
            scope *ls = scope_new(r, sc);
            dict *lp = dict_new(r);
            int64_t n = (int64_t)items->n, k = (int64_t)i;
            dict_sets(r, lp, "index", vint(k + 1));
            dict_sets(r, lp, "index0", vint(k));
            dict_sets(r, lp, "revindex", vint(n - k));
            dict_sets(r, lp, "revindex0", vint(n - k - 1));
            dict_sets(r, lp, "first", vbool(k == 0));
            dict_sets(r, lp, "last", vbool(k == n - 1));
            dict_sets(r, lp, "length", vint(n));
            dict_sets(r, lp, "depth", vint(1));
            dict_sets(r, lp, "depth0", vint(0));
            dict_sets(r, lp, "previtem", k > 0 ? items->v[k - 1] : vundef("loop.previtem"));
            dict_sets(r, lp, "nextitem", k + 1 < n ? items->v[k + 1] : vundef("loop.nextitem"));
            dict_sets(r, lp, "cycle", vfunc(r, "cycle", m_loop_cycle, vint(k)));
            dict_sets(r, ls->vars, "loop", vdict(lp));
            assign(r, s->c, items->v[i], ls);
            exec_body(r, s->v, s->nv, ls);
            r->sc = sc;
            r->cont = 0;
            if (r->brk) {
                r->brk = 0;
                break;
            }
        }
        break;
    }
    case S_SET: assign(r, s->a, eval(r, s->b), sc); break;
    case S_SETBLOCK: {
        val v = render_body_to_str(r, s, sc);
        if (s->b) {
            node *holder = s->c;
            val saved = holder->lit;
            holder->lit = v;
            v = eval(r, s->b);
            holder->lit = saved;
        }
        assign(r, s->a, v, sc);
        break;
    }
    case S_FILTERBLOCK: {
        val v = render_body_to_str(r, s, sc);
        node *holder = s->c;
        val saved = holder->lit;
        holder->lit = v;
        v = eval(r, s->b);
        holder->lit = saved;
        str_to(r, r->out, &v);
        break;
    }
    case S_MACRO: {
        func *f = ar_alloc(&r->ar, sizeof *f);
        f->name = s->s;
        f->macro = s;
        f->closure = sc;
        val v = V(V_FUNC);
        v.fn = f;
        dict_sets(r, sc->vars, s->s, v);
        break;
    }
    case S_BREAK: r->brk = 1; break;
    case S_CONTINUE: r->cont = 1; break;
    case S_GEN: {
        size_t a = r->out->n;
        exec_body(r, s->v, s->nv, sc);
        if (r->out == &r->top) {
            if (r->ngen == r->gcap) {
                r->gcap = r->gcap ? r->gcap * 2 : 8;
                r->gen = lg_realloc(r->gen, (size_t)r->gcap * sizeof *r->gen);
            }
            r->gen[r->ngen].a = a;
            r->gen[r->ngen++].b = r->out->n;
        }
        break;
    }
    default: rfail(r, s, "internal error: bad statement node %d", s->kind);
    }
    r->sc = saved_scope;
}

int lg_jinja_render(const lg_jinja *t, const cJSON *vars, char **out, size_t *len, lg_jinja_span **gen, int *ngen) {
    *out = NULL;
    if (len) *len = 0;
    if (gen) *gen = NULL;
    if (ngen) *ngen = 0;
    R *r = lg_calloc(1, sizeof *r);
    r->t = t;
    r->out = &r->top;
    if (setjmp(r->jb)) {
        lg_errorf("%s", r->err);
        free(r->top.p);
        free(r->gen);
        ar_free(&r->ar);
        free(r);
        return -1;
    }
    r->globals = scope_new(r, NULL);
    dict *g = r->globals->vars;
    dict_sets(r, g, "range", vfunc(r, "range", g_range, V(V_NONE)));
    dict_sets(r, g, "namespace", vfunc(r, "namespace", g_namespace, V(V_NONE)));
    dict_sets(r, g, "dict", vfunc(r, "dict", g_dict, V(V_NONE)));
    dict_sets(r, g, "raise_exception", vfunc(r, "raise_exception", g_raise, V(V_NONE)));
    dict_sets(r, g, "strftime_now", vfunc(r, "strftime_now", g_strftime, V(V_NONE)));
    if (vars) {
        const cJSON *x;
        cJSON_ArrayForEach(x, vars) dict_set(r, g, vcstr(x->string), from_json(r, x));
    }
    scope *root = scope_new(r, r->globals);
    r->sc = root;
    exec_body(r, t->root->v, t->root->nv, root);
    out_put(&r->top, "", 0);
    char *s = lg_malloc(r->top.n + 1);
    if (r->top.n) memcpy(s, r->top.p, r->top.n);
    s[r->top.n] = 0;
    *out = s;
    if (len) *len = r->top.n;
    if (gen) *gen = r->gen, r->gen = NULL;
    if (ngen) *ngen = r->ngen;
    free(r->gen);
    free(r->top.p);
    ar_free(&r->ar);
    free(r);
    return 0;
}
