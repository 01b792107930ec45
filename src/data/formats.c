/* formats.c — row shapes and file kinds (formats.h). */
#include "data/formats.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/util.h"
#include "tokenizer/tokenizer.h" /* lg_utf8_check */

static const char *const FORMAT_NAMES[LG_FMT_COUNT] = {"auto",     "text",     "prompt-completion",
                                                       "conversational prompt-completion",
                                                       "messages", "sharegpt", "alpaca"};

int lg_row_format_parse(const char *s, lg_row_format *f) {
    for (int i = 0; i < LG_FMT_COUNT; i++)
        if (i != LG_FMT_CONV_PC && !strcmp(s, FORMAT_NAMES[i])) {
            *f = (lg_row_format)i;
            return 0;
        }
    return lg_errorf("--format %s: expected text, prompt-completion, messages, sharegpt, alpaca or auto", s);
}

const char *lg_row_format_name(lg_row_format f) { return f >= 0 && f < LG_FMT_COUNT ? FORMAT_NAMES[f] : "?"; }

static int ends_with_ci(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcasecmp(s + a - b, suf);
}

lg_file_kind lg_file_kind_of(const char *path) {
    if (ends_with_ci(path, ".jsonl") || ends_with_ci(path, ".json")) return LG_FILE_JSON;
    if (ends_with_ci(path, ".csv")) return LG_FILE_CSV;
    if (ends_with_ci(path, ".tsv")) return LG_FILE_TSV;
    return LG_FILE_TEXT;
}

/* ---- canonical rows -------------------------------------------------------------------- */

typedef struct {
    const cJSON *row;
    const lg_field_map *fm;
    char *why;
    size_t cap;
} canon;

static const cJSON *field(const canon *c, const char *mapped, const char *dflt) {
    return cJSON_GetObjectItemCaseSensitive(c->row, mapped ? mapped : dflt);
}
#define F(c, name) field(c, (c)->fm ? (c)->fm->name : NULL, #name)
#define KEY(c, name) ((c)->fm && (c)->fm->name ? (c)->fm->name : #name)

static cJSON *fail(const canon *c, const char *fmt, const char *a, const char *b) {
    snprintf(c->why, c->cap, fmt, a ? a : "", b ? b : "");
    return NULL;
}

/* "key" must be a string (absent allowed when optional) */
static int want_str(const canon *c, const cJSON *v, const char *key, int optional) {
    if (!v && optional) return 0;
    if (cJSON_IsString(v)) return 0;
    fail(c, v ? "field \"%s\" is not a string%s" : "the row has no \"%s\" field%s", key, NULL);
    return -1;
}

static cJSON *msg(const char *role, const char *content) {
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "role", role);
    cJSON_AddStringToObject(m, "content", content);
    return m;
}

static cJSON *make_pc(const char *prompt, const char *completion) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "prompt", prompt);
    cJSON_AddStringToObject(o, "completion", completion);
    return o;
}

static cJSON *wrap_messages(cJSON *arr) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "messages", arr);
    return o;
}

static cJSON *canon_pc(const canon *c) {
    const cJSON *p = F(c, prompt), *q = F(c, completion);
    const char *kp = KEY(c, prompt), *kq = KEY(c, completion);
    if (!p || !q) return fail(c, "row has \"%s\" but not \"%s\"", p ? kp : kq, p ? kq : kp);
    if (!cJSON_IsArray(p) && !cJSON_IsArray(q)) {
        if (want_str(c, p, kp, 0) || want_str(c, q, kq, 0)) return NULL;
        return make_pc(p->valuestring, q->valuestring);
    }
    if (!cJSON_IsArray(p) || !cJSON_IsArray(q))
        return fail(c, "\"%s\" and \"%s\" must both be strings, or both lists of {\"role\", \"content\"} messages",
                    kp, kq);
    /* conversational: one chat; the prompt's turns carry no loss (TRL's completion-only loss) */
    cJSON *arr = cJSON_CreateArray();
    const cJSON *m;
    cJSON_ArrayForEach(m, p) {
        if (!cJSON_IsObject(m)) {
            cJSON_Delete(arr);
            return fail(c, "\"%s\" has an element that is not a {\"role\", \"content\"} object%s", kp, NULL);
        }
        cJSON *d = cJSON_Duplicate(m, 1);
        cJSON_DeleteItemFromObjectCaseSensitive(d, "weight");
        cJSON_AddNumberToObject(d, "weight", 0);
        cJSON_AddItemToArray(arr, d);
    }
    cJSON_ArrayForEach(m, q) cJSON_AddItemToArray(arr, cJSON_Duplicate(m, 1));
    if (cJSON_GetArraySize(q) == 0) {
        cJSON_Delete(arr);
        return fail(c, "\"%s\" is an empty list%s", kq, NULL);
    }
    return wrap_messages(arr);
}

static const char *const ALPACA_PRE_INPUT = "Below is an instruction that describes a task, paired with an input that "
                                            "provides further context. Write a response that appropriately completes "
                                            "the request.";
static const char *const ALPACA_PRE = "Below is an instruction that describes a task. Write a response that "
                                      "appropriately completes the request.";

static cJSON *canon_alpaca(const canon *c, int chat) {
    const cJSON *ins = F(c, instruction), *inp = F(c, input), *out = F(c, output), *sys = F(c, system);
    const cJSON *hist = cJSON_GetObjectItemCaseSensitive(c->row, "history");
    if (want_str(c, ins, KEY(c, instruction), 0) || want_str(c, out, KEY(c, output), 0) ||
        want_str(c, inp, KEY(c, input), 1) || want_str(c, sys, KEY(c, system), 1))
        return NULL;
    const char *in = inp ? inp->valuestring : "";
    if (hist && !cJSON_IsNull(hist)) {
        int ok = cJSON_IsArray(hist);
        const cJSON *h;
        cJSON_ArrayForEach(h, hist) ok &= cJSON_IsArray(h) && cJSON_GetArraySize(h) == 2 &&
                                          cJSON_IsString(cJSON_GetArrayItem(h, 0)) &&
                                          cJSON_IsString(cJSON_GetArrayItem(h, 1));
        if (!ok) return fail(c, "\"history\" must be a list of [user, assistant] string pairs%s%s", NULL, NULL);
        if (!chat && cJSON_GetArraySize(hist) > 0)
            return fail(c, "Alpaca \"history\" needs a chat template to render earlier turns, and the model has "
                           "none%s%s", NULL, NULL);
    }
    if (chat) {
        cJSON *arr = cJSON_CreateArray();
        if (sys && *sys->valuestring) cJSON_AddItemToArray(arr, msg("system", sys->valuestring));
        const cJSON *h;
        if (cJSON_IsArray(hist))
            cJSON_ArrayForEach(h, hist) {
                cJSON_AddItemToArray(arr, msg("user", cJSON_GetArrayItem(h, 0)->valuestring));
                cJSON_AddItemToArray(arr, msg("assistant", cJSON_GetArrayItem(h, 1)->valuestring));
            }
        size_t n = strlen(ins->valuestring) + strlen(in) + 2;
        char *user = lg_malloc(n);
        snprintf(user, n, *in ? "%s\n%s" : "%s", ins->valuestring, in);
        cJSON_AddItemToArray(arr, msg("user", user));
        cJSON_AddItemToArray(arr, msg("assistant", out->valuestring));
        free(user);
        return wrap_messages(arr);
    }
    const char *pre = sys && *sys->valuestring ? sys->valuestring : *in ? ALPACA_PRE_INPUT : ALPACA_PRE;
    size_t n = strlen(pre) + strlen(ins->valuestring) + strlen(in) + 64;
    char *prompt = lg_malloc(n);
    if (*in)
        snprintf(prompt, n, "%s\n\n### Instruction:\n%s\n\n### Input:\n%s\n\n### Response:\n", pre, ins->valuestring,
                 in);
    else
        snprintf(prompt, n, "%s\n\n### Instruction:\n%s\n\n### Response:\n", pre, ins->valuestring);
    cJSON *o = make_pc(prompt, out->valuestring);
    free(prompt);
    return o;
}

static cJSON *canon_sharegpt(const canon *c) {
    const cJSON *conv = F(c, conversations), *sys = F(c, system);
    const char *key = KEY(c, conversations);
    if (!cJSON_IsArray(conv) || cJSON_GetArraySize(conv) == 0)
        return fail(c, "\"%s\" must be a non-empty list of {\"from\", \"value\"} turns%s", key, NULL);
    if (want_str(c, sys, KEY(c, system), 1)) return NULL;
    cJSON *arr = cJSON_CreateArray();
    if (sys && *sys->valuestring) cJSON_AddItemToArray(arr, msg("system", sys->valuestring));
    const cJSON *t;
    int k = 0;
    cJSON_ArrayForEach(t, conv) {
        const cJSON *from = cJSON_GetObjectItemCaseSensitive(t, "from"), *val = cJSON_GetObjectItemCaseSensitive(t, "value");
        if (!from) from = cJSON_GetObjectItemCaseSensitive(t, "role");
        if (!val) val = cJSON_GetObjectItemCaseSensitive(t, "content");
        char at[48];
        snprintf(at, sizeof at, "%s[%d]", key, k);
        if (!cJSON_IsObject(t) || !cJSON_IsString(from) || !cJSON_IsString(val)) {
            cJSON_Delete(arr);
            return fail(c, "%s needs a string \"from\" and a string \"value\"%s", at, NULL);
        }
        static const char *const user[] = {"human", "user"}, *const asst[] = {"gpt", "assistant", "chatgpt"};
        const char *role = NULL, *f = from->valuestring;
        for (int i = 0; i < 2; i++)
            if (!strcmp(f, user[i])) role = "user";
        for (int i = 0; i < 3; i++)
            if (!strcmp(f, asst[i])) role = "assistant";
        if (!strcmp(f, "system")) role = "system";
        if (!role) {
            cJSON_Delete(arr);
            char m[160];
            snprintf(m, sizeof m, "%.60s", f);
            return fail(c, "%s: \"from\" is \"%s\"; expected human, user, gpt, assistant, chatgpt or system", at, m);
        }
        cJSON *mm = msg(role, val->valuestring);
        const cJSON *w = cJSON_GetObjectItemCaseSensitive(t, "weight");
        if (w) cJSON_AddItemToObject(mm, "weight", cJSON_Duplicate(w, 1));
        cJSON_AddItemToArray(arr, mm);
        k++;
    }
    return wrap_messages(arr);
}

cJSON *lg_row_canonical(const cJSON *row, lg_row_format force, const lg_field_map *fm, int alpaca_chat,
                        lg_row_format *shape, char *why, size_t cap) {
    canon cc = {row, fm, why, cap}, *c = &cc;
    why[0] = 0;
    if (!cJSON_IsObject(row)) return fail(c, "row is not a JSON object%s%s", NULL, NULL);
    /* detection order; a shape whose fields were mapped is tried first */
    lg_row_format order[5] = {LG_FMT_PROMPT_COMPLETION, LG_FMT_ALPACA, LG_FMT_TEXT, LG_FMT_MESSAGES, LG_FMT_SHAREGPT};
    if (fm) {
        int mapped[LG_FMT_COUNT] = {0};
        mapped[LG_FMT_PROMPT_COMPLETION] = fm->prompt || fm->completion;
        mapped[LG_FMT_ALPACA] = fm->instruction || fm->input || fm->output;
        mapped[LG_FMT_TEXT] = fm->text != NULL;
        mapped[LG_FMT_MESSAGES] = fm->messages != NULL;
        mapped[LG_FMT_SHAREGPT] = fm->conversations != NULL;
        lg_row_format o2[5];
        int k = 0;
        for (int pass = 0; pass < 2; pass++)
            for (int i = 0; i < 5; i++)
                if (mapped[order[i]] == !pass) o2[k++] = order[i];
        memcpy(order, o2, sizeof order);
    }
    lg_row_format f = force;
    if (f == LG_FMT_CONV_PC) f = LG_FMT_PROMPT_COMPLETION;
    for (int i = 0; i < 5 && f == LG_FMT_AUTO; i++) {
        int has = 0;
        switch (order[i]) {
        case LG_FMT_PROMPT_COMPLETION: has = F(c, prompt) || F(c, completion); break;
        case LG_FMT_ALPACA: has = F(c, instruction) != NULL; break;
        case LG_FMT_TEXT: has = F(c, text) != NULL; break;
        case LG_FMT_MESSAGES: has = F(c, messages) != NULL; break;
        case LG_FMT_SHAREGPT: has = F(c, conversations) != NULL; break;
        default: break;
        }
        if (has) f = order[i];
    }
    cJSON *o = NULL;
    switch (f) {
    case LG_FMT_PROMPT_COMPLETION:
        if ((o = canon_pc(c))) *shape = cJSON_GetObjectItemCaseSensitive(o, "messages") ? LG_FMT_CONV_PC : f;
        return o;
    case LG_FMT_ALPACA: o = canon_alpaca(c, alpaca_chat); break;
    case LG_FMT_TEXT:
        if (want_str(c, F(c, text), KEY(c, text), 0)) return NULL;
        o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "text", F(c, text)->valuestring);
        break;
    case LG_FMT_MESSAGES:
        if (!F(c, messages)) return fail(c, "the row has no \"%s\" field%s", KEY(c, messages), NULL);
        o = wrap_messages(cJSON_Duplicate(F(c, messages), 1));
        break;
    case LG_FMT_SHAREGPT: o = canon_sharegpt(c); break;
    default: {
        /* no shape: name the row's keys and every accepted shape */
        char keys[160] = "", *p = keys;
        const cJSON *e;
        int n = 0;
        cJSON_ArrayForEach(e, row) {
            size_t left = sizeof keys - (size_t)(p - keys);
            if (left < 24) {
                snprintf(p, left, ", ...");
                break;
            }
            int w = snprintf(p, left, "%s\"%.40s\"", n++ ? ", " : "", e->string);
            p += w > 0 && (size_t)w < left ? w : 0;
        }
        return fail(c,
                    "the row has none of the accepted shapes (its keys: %s): {\"text\"}, {\"prompt\", \"completion\"} "
                    "(strings or message lists), {\"messages\"}, {\"conversations\"} (ShareGPT), {\"instruction\", "
                    "\"input\", \"output\"} (Alpaca); map other names with --text-field, --prompt-field, "
                    "--completion-field, --instruction-field, --output-field ... or force a shape with --format%s",
                    n ? keys : "none", NULL);
    }
    }
    if (o) *shape = f;
    return o;
}

/* ---- JSON arrays and CSV/TSV ------------------------------------------------------------- */

struct lg_rec_reader {
    const char *name, *p;
    size_t len, pos;
    long line;        /* line of p[pos] */
    lg_file_kind kind;
    char delim;
    char **cols;      /* CSV header */
    int ncols;
    int done;
};

static int is_ws(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

/* advance to `to`, counting lines */
static void move_to(lg_rec_reader *r, size_t to) {
    for (; r->pos < to; r->pos++) r->line += r->p[r->pos] == '\n';
}
static void skip_ws(lg_rec_reader *r) {
    size_t q = r->pos;
    while (q < r->len && is_ws(r->p[q])) q++;
    move_to(r, q);
}

/* One CSV record from r->pos: fields into *f (fresh strings), their count into *n. 1: a record,
 * 0: end of data, -1: unclosed quote (error set). bad: a skippable problem in this record. */
static int csv_record(lg_rec_reader *r, char ***f, int *n, char *bad, size_t cap) {
    *f = NULL;
    *n = 0;
    bad[0] = 0;
    if (r->pos >= r->len) return 0;
    long start_line = r->line;
    char **v = NULL;
    int k = 0;
    for (;;) {
        size_t cap2 = 64, m = 0;
        char *s = lg_malloc(cap2);
        if (r->pos < r->len && r->p[r->pos] == '"') {
            move_to(r, r->pos + 1);
            for (;;) {
                if (r->pos >= r->len) {
                    free(s);
                    for (int i = 0; i < k; i++) free(v[i]);
                    free(v);
                    return lg_errorf("%s:%ld: a quoted field (column %d) is never closed", r->name, start_line, k + 1);
                }
                char ch = r->p[r->pos];
                if (ch == '"' && r->pos + 1 < r->len && r->p[r->pos + 1] == '"') {
                    ch = '"';
                    move_to(r, r->pos + 2);
                } else if (ch == '"') {
                    move_to(r, r->pos + 1);
                    break;
                } else {
                    move_to(r, r->pos + 1);
                }
                if (m + 1 >= cap2) s = lg_realloc(s, cap2 *= 2);
                s[m++] = ch;
            }
            if (r->pos < r->len && r->p[r->pos] != r->delim && r->p[r->pos] != '\n' && r->p[r->pos] != '\r' && !bad[0])
                snprintf(bad, cap, "column %d: text after the closing quote of a quoted field", k + 1);
        }
        while (r->pos < r->len && r->p[r->pos] != r->delim && r->p[r->pos] != '\n') {
            char ch = r->p[r->pos];
            move_to(r, r->pos + 1);
            if (ch == '\r' && (r->pos >= r->len || r->p[r->pos] == '\n')) continue; /* CRLF */
            if (m + 1 >= cap2) s = lg_realloc(s, cap2 *= 2);
            s[m++] = ch;
        }
        s[m] = 0;
        if (strlen(s) != m && !bad[0]) snprintf(bad, cap, "column %d: contains a NUL byte", k + 1);
        v = lg_realloc(v, (size_t)(k + 1) * sizeof *v);
        v[k++] = s;
        if (r->pos < r->len && r->p[r->pos] == r->delim) {
            move_to(r, r->pos + 1);
            continue;
        }
        if (r->pos < r->len) move_to(r, r->pos + 1); /* the newline */
        break;
    }
    *f = v;
    *n = k;
    return 1;
}

static void free_fields(char **f, int n) {
    for (int i = 0; i < n; i++) free(f[i]);
    free(f);
}

static int blank_record(char **f, int n) { return n == 1 && !f[0][0]; }

int lg_rec_open(const char *name, const char *data, size_t len, lg_file_kind kind, lg_rec_reader **out) {
    *out = NULL;
    lg_rec_reader *r = lg_calloc(1, sizeof *r);
    r->name = name;
    r->p = data;
    r->len = len;
    r->line = 1;
    r->kind = kind;
    if (len >= 3 && !memcmp(data, "\xEF\xBB\xBF", 3)) r->pos = 3;
    if (kind == LG_FILE_JSON) {
        skip_ws(r);
        if (r->pos >= len || data[r->pos] != '[') {
            free(r);
            return lg_errorf("%s: not a JSON array", name);
        }
        move_to(r, r->pos + 1);
        skip_ws(r);
        if (r->pos < len && data[r->pos] == ']') {
            move_to(r, r->pos + 1);
            r->done = 1;
        }
        *out = r;
        return 0;
    }
    if (kind != LG_FILE_CSV && kind != LG_FILE_TSV) {
        free(r);
        return lg_errorf("%s: not a JSON array or CSV/TSV file", name);
    }
    r->delim = kind == LG_FILE_CSV ? ',' : '\t';
    char bad[160];
    for (;;) { /* the header: the first record that is not blank */
        int got = csv_record(r, &r->cols, &r->ncols, bad, sizeof bad);
        if (got < 0) {
            free(r);
            return -1;
        }
        if (got == 0) {
            free(r);
            return lg_errorf("%s: no header row (an empty file)", name);
        }
        if (!blank_record(r->cols, r->ncols)) break;
        free_fields(r->cols, r->ncols);
    }
    for (int i = 0; i < r->ncols; i++) {
        int dup = 0;
        for (int j = 0; j < i; j++) dup |= !strcmp(r->cols[i], r->cols[j]);
        if (!r->cols[i][0] || dup || lg_utf8_check(r->cols[i], strlen(r->cols[i])) != strlen(r->cols[i])) {
            int rc = lg_errorf("%s: header: column %d %s%.60s%s", name, i + 1, r->cols[i][0] ? "\"" : "",
                               r->cols[i][0] ? r->cols[i] : "has no name",
                               !r->cols[i][0] ? "" : dup ? "\" appears twice" : "\" is not valid UTF-8");
            lg_rec_close(r);
            return rc;
        }
    }
    *out = r;
    return 0;
}

static int json_next(lg_rec_reader *r, cJSON **obj, long *line, char *why, size_t cap) {
    if (r->done) {
        skip_ws(r);
        if (r->pos < r->len) return lg_errorf("%s:%ld: text after the closing ']' of the array", r->name, r->line);
        return 0;
    }
    skip_ws(r);
    *line = r->line;
    const char *s = r->p + r->pos, *end = NULL;
    cJSON *o = cJSON_ParseWithLengthOpts(s, r->len - r->pos, &end, 0);
    if (!o) {
        const char *ep = end && end >= s ? end : s;
        move_to(r, (size_t)(ep - r->p));
        return lg_errorf("%s:%ld: not valid JSON (an array element starting at line %ld)", r->name, r->line, *line);
    }
    size_t a = r->pos, b = (size_t)(end - r->p);
    move_to(r, b);
    size_t bad = lg_utf8_check(r->p + a, b - a);
    if (bad != b - a) {
        cJSON_Delete(o);
        o = NULL;
        snprintf(why, cap, "invalid UTF-8 at byte %zu of the element", bad + 1);
    }
    skip_ws(r);
    if (r->pos < r->len && r->p[r->pos] == ',') {
        move_to(r, r->pos + 1);
    } else if (r->pos < r->len && r->p[r->pos] == ']') {
        move_to(r, r->pos + 1);
        r->done = 1;
    } else {
        cJSON_Delete(o);
        return lg_errorf("%s:%ld: expected ',' or ']' after an array element", r->name, r->line);
    }
    *obj = o;
    return 1;
}

int lg_rec_next(lg_rec_reader *r, cJSON **obj, long *line, char *why, size_t cap) {
    *obj = NULL;
    why[0] = 0;
    if (r->kind == LG_FILE_JSON) return json_next(r, obj, line, why, cap);
    for (;;) {
        char **f;
        int n;
        *line = r->line;
        int got = csv_record(r, &f, &n, why, cap);
        if (got <= 0) return got;
        if (blank_record(f, n)) {
            free_fields(f, n);
            continue;
        }
        if (!why[0] && n != r->ncols)
            snprintf(why, cap, "%d field%s, but the header names %d column%s", n, n == 1 ? "" : "s", r->ncols,
                     r->ncols == 1 ? "" : "s");
        for (int i = 0; i < n && !why[0]; i++) {
            size_t l = strlen(f[i]), b = lg_utf8_check(f[i], l);
            if (b != l) snprintf(why, cap, "column \"%.60s\": invalid UTF-8 at byte %zu", r->cols[i], b + 1);
        }
        if (!why[0]) {
            *obj = cJSON_CreateObject();
            for (int i = 0; i < n; i++) cJSON_AddStringToObject(*obj, r->cols[i], f[i]);
        }
        free_fields(f, n);
        return 1;
    }
}

void lg_rec_close(lg_rec_reader *r) {
    if (!r) return;
    free_fields(r->cols, r->ncols);
    free(r);
}

/* ---- what was read ------------------------------------------------------------------------ */
#include "data/data.h"

void lg_data_stats_print(FILE *f, const char *what, const char *path, const lg_data_stats *s, int max_len) {
    fprintf(f, "%s %s: %ld rows read", what, path, s->rows + s->bad_rows);
    const char *sep = " (";
    for (int k = 1; k < LG_FMT_COUNT; k++)
        if (s->shape_rows[k]) {
            fprintf(f, "%s%s %ld", sep, FORMAT_NAMES[k], s->shape_rows[k]);
            if (k == LG_FMT_ALPACA)
                fprintf(f, s->alpaca_chat ? ", as chats with the model's template" : ", with the Alpaca prompt");
            sep = "; ";
        }
    fprintf(f, "%s\n", *sep == ';' ? ")" : "");
    long skipped = s->bad_rows + s->dropped;
    if (skipped) {
        fprintf(f, "  skipped %ld:", skipped);
        sep = " ";
        if (s->bad_rows) {
            fprintf(f, "%s%ld malformed (--skip-bad; the first at line %ld: %s)", sep, s->bad_rows, s->first_bad_line,
                    s->first_bad_why);
            sep = ", ";
        }
        if (s->dropped - s->dropped_cut) {
            fprintf(f, "%s%ld with nothing to learn (empty text or completion)", sep, s->dropped - s->dropped_cut);
            sep = ", ";
        }
        if (s->dropped_cut)
            fprintf(f, "%s%ld whose prompt alone fills the %d tokens of a sequence (raise --seq-len)", sep,
                    s->dropped_cut, max_len);
        fprintf(f, "\n");
    }
    if (s->truncated) fprintf(f, "  truncated to %d tokens: %ld rows\n", max_len, s->truncated);
    fprintf(f, "  %ld example%s, %ld tokens (%ld predicted with loss)", s->examples[0], s->examples[0] == 1 ? "" : "s",
            s->tokens[0], s->loss_tokens[0]);
    if (s->examples[1])
        fprintf(f, "; held out for validation: %ld example%s, %ld tokens (%ld with loss)", s->examples[1],
                s->examples[1] == 1 ? "" : "s", s->tokens[1], s->loss_tokens[1]);
    fprintf(f, "\n");
}
