/* data.c — see data.h. */
#include "data/data.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "core/util.h"
#include "tokenizer/tok_internal.h" /* the tokenizer's tokenizer_config.json, for its chat template */

struct lg_dataset {
    int *ids;
    unsigned char *loss;
    long n[2];      /* examples per split */
    size_t *off[2]; /* example i of split s: ids[off[s][i] .. + len[s][i]) */
    int *len[2];
    int pad;
    uint64_t seed;
    lg_data_stats st;
};

/* ---- growable row store ---------------------------------------------------------- */
typedef struct {
    int *ids;
    unsigned char *loss;
    size_t n, cap;
    size_t *roff;
    int *rlen;
    long nrows, rcap;
} rows_t;

static void rows_push_tok(rows_t *r, int id, unsigned char loss) {
    if (r->n == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 4096;
        r->ids = lg_realloc(r->ids, r->cap * sizeof(int));
        r->loss = lg_realloc(r->loss, r->cap);
    }
    r->ids[r->n] = id;
    r->loss[r->n++] = loss;
}

static void rows_end_row(rows_t *r, size_t start) {
    if (r->nrows == r->rcap) {
        r->rcap = r->rcap ? r->rcap * 2 : 1024;
        r->roff = lg_realloc(r->roff, (size_t)r->rcap * sizeof(size_t));
        r->rlen = lg_realloc(r->rlen, (size_t)r->rcap * sizeof(int));
    }
    r->roff[r->nrows] = start;
    r->rlen[r->nrows++] = (int)(r->n - start);
}

static void rows_free(rows_t *r) {
    free(r->ids);
    free(r->loss);
    free(r->roff);
    free(r->rlen);
}

/* ---- loader state ----------------------------------------------------------------- */
typedef struct {
    const char *name;
    const lg_tokenizer *tok;
    const lg_data_opts *o;
    rows_t rows;
    lg_data_stats st;
    int chat_state;    /* 0 = template not looked at yet, 1 = ChatML ready, -1 = failed */
    char *chat_system; /* default system prompt of the template (NULL: none) */
} loader;

/* A bad row: error, or counted when skip_bad. Returns 0 to go on, -1 to stop. */
static int bad_row(loader *L, long line, const char *fmt, const char *arg) {
    char msg[512];
    snprintf(msg, sizeof msg, fmt, arg ? arg : "");
    if (L->o->skip_bad) {
        L->st.bad_rows++;
        if (!L->st.first_bad_line) L->st.first_bad_line = line;
        return 0;
    }
    return lg_errorf("%s:%ld: %s", L->name, line, msg);
}

/* Tokens a piece of a row can contribute: a row is cut to max_len (one more tells end_row that it
 * was cut), so a long text is tokenised only as far as that (a 50 MB row no longer is whole). */
static int piece_cap(const loader *L) { return L->o->pack ? -1 : L->o->max_len + 1; }

static int encode_into(loader *L, const char *s, size_t n, unsigned char loss, long line) {
    int *ids, m;
    if (lg_tokenizer_encode_prefix(L->tok, s, n, piece_cap(L), &ids, &m)) return lg_errorf_prefix("%s:%ld", L->name, line);
    for (int i = 0; i < m; i++) rows_push_tok(&L->rows, ids[i], loss);
    free(ids);
    return 0;
}

static int end_row(loader *L, size_t start);

/* one row: prompt (may be NULL) + body (text or completion) */
static int add_row(loader *L, const char *prompt, size_t plen, const char *body, size_t blen, long line) {
    rows_t *r = &L->rows;
    size_t start = r->n;
    L->st.rows++;
    int bos = lg_tokenizer_bos(L->tok), eos = lg_tokenizer_eos(L->tok);
    if (L->o->add_bos && bos >= 0) rows_push_tok(r, bos, 0);
    if (prompt && encode_into(L, prompt, plen, 0, line)) return -1;
    if (encode_into(L, body, blen, 1, line)) return -1;
    if (L->o->add_eos && eos >= 0) rows_push_tok(r, eos, 1);
    return end_row(L, start);
}

/* truncate (unless packing), drop a row with nothing to learn, else record it */
static int end_row(loader *L, size_t start) {
    rows_t *r = &L->rows;
    size_t len = r->n - start;
    if (!L->o->pack && len > (size_t)L->o->max_len) {
        L->st.truncated++;
        r->n = start + (size_t)L->o->max_len;
        len = (size_t)L->o->max_len;
    }
    int any = 0;
    for (size_t i = start + 1; i < r->n; i++) any |= r->loss[i];
    if (!any) { /* nothing to learn from this row */
        L->st.dropped++;
        r->n = start;
        return 0;
    }
    rows_end_row(r, start);
    return 0;
}

static int is_ws(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

/* ---- chat rows ------------------------------------------------------------------------- *
 * There is no Jinja engine here: a template is recognised as one of the known ChatML forms and
 * rendered by code that produces exactly what Jinja would for plain role/content messages. */

/* Template text with the white space inside {{ }} / {% %} tags (outside string literals) removed,
 * "..." literals turned into '...', and the \n escape turned into a newline: two spellings of the
 * same template compare equal. Text outside tags is output and is kept as it is. */
static char *tmpl_norm(const char *t) {
    size_t n = strlen(t);
    char *o = lg_malloc(n + 1), *p = o;
    int tag = 0;
    char quote = 0;
    for (size_t i = 0; i < n; i++) {
        char c = t[i];
        if (!tag) {
            if (c == '{' && i + 1 < n && (t[i + 1] == '{' || t[i + 1] == '%')) tag = 1;
            *p++ = c;
            continue;
        }
        if (quote) {
            if (c == '\\' && i + 1 < n && t[i + 1] == 'n') *p++ = '\n', i++;
            else if (c == quote) *p++ = '\'', quote = 0;
            else *p++ = c;
            continue;
        }
        if (c == '\'' || c == '"') {
            quote = c;
            *p++ = '\'';
        } else if (c == '}' && i + 1 < n && t[i + 1] == '}' ) {
            *p++ = '}', *p++ = '}', i++, tag = 0;
        } else if (c == '%' && i + 1 < n && t[i + 1] == '}') {
            *p++ = '%', *p++ = '}', i++, tag = 0;
        } else if (!is_ws(c)) {
            *p++ = c;
        }
    }
    *p = 0;
    return o;
}

/* ChatML as SmolLM2 / Qwen1.5 write it (with a default system turn when the first message is not
 * a system one), or without the default system turn. sys_default receives the default text. */
static int chatml_parse(const char *tmpl, char **sys_default) {
    /* \x01 marks where the default system text goes; patterns are normalised whole */
    static const char *const WITH_SYS =
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\n\x01<|im_end|>\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
    static const char *const PLAIN =
        "{% for message in messages %}"
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
    char *t = tmpl_norm(tmpl), *a = tmpl_norm(WITH_SYS), *b = tmpl_norm(PLAIN);
    int ok = 0;
    *sys_default = NULL;
    char *mark = strchr(a, '\x01');
    if (!strcmp(t, b)) ok = 1;
    else if (mark) {
        size_t pre = (size_t)(mark - a), post = strlen(mark + 1), n = strlen(t);
        if (n >= pre + post && !strncmp(t, a, pre) && !strcmp(t + n - post, mark + 1)) {
            const char *d = t + pre;
            size_t dl = n - pre - post;
            /* the default text is a plain literal: no quotes, escapes or tags in it */
            if (!memchr(d, '\'', dl) && !memchr(d, '\\', dl) && !memchr(d, '{', dl)) {
                *sys_default = lg_malloc(dl + 1);
                memcpy(*sys_default, d, dl);
                (*sys_default)[dl] = 0;
                ok = 1;
            }
        }
    }
    free(t), free(a), free(b);
    return ok;
}

/* The tokenizer's chat template when the options give none: "chat_template" of the
 * tokenizer_config.json it was loaded with (a GGUF tokenizer carries its template there too). */
static char *tokenizer_template(const lg_tokenizer *tok) {
    if (!tok->src_config) return NULL;
    cJSON *cfg = cJSON_ParseWithLength(tok->src_config, tok->src_config_len);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template"), *x;
    char *r = NULL;
    if (cJSON_IsString(v)) r = lg_strdup(v->valuestring);
    else if (cJSON_IsArray(v)) /* [{"name": "default", "template": ...}, ...] */
        cJSON_ArrayForEach(x, v) {
            const cJSON *nm = cJSON_GetObjectItemCaseSensitive(x, "name"), *tp = cJSON_GetObjectItemCaseSensitive(x, "template");
            if (cJSON_IsString(nm) && !strcmp(nm->valuestring, "default") && cJSON_IsString(tp)) r = lg_strdup(tp->valuestring);
        }
    cJSON_Delete(cfg);
    return r;
}

static int chat_setup(loader *L, long line) {
    if (L->chat_state) return L->chat_state > 0 ? 0 : -1;
    L->chat_state = -1;
    char *own = L->o->chat_template ? NULL : tokenizer_template(L->tok);
    const char *tmpl = L->o->chat_template ? L->o->chat_template : own;
    if (!tmpl) {
        return lg_errorf("%s:%ld: chat rows (\"messages\") need the model's chat template, and the tokenizer has none "
                         "(\"chat_template\" in tokenizer_config.json or tokenizer.chat_template in a GGUF)", L->name, line);
    }
    int ok = chatml_parse(tmpl, &L->chat_system);
    if (!ok) {
        int rc = lg_errorf("%s:%ld: the chat template is not one loraga can render (only ChatML: "
                           "'<|im_start|>' + role + '\\n' + content + '<|im_end|>' + '\\n'; there is no Jinja engine). "
                           "It starts: %.120s", L->name, line, tmpl);
        free(own);
        return rc;
    }
    free(own);
    if (lg_tokenizer_piece_to_id(L->tok, "<|im_start|>") < 0 || lg_tokenizer_piece_to_id(L->tok, "<|im_end|>") < 0)
        return lg_errorf("%s:%ld: ChatML template but the tokenizer has no <|im_start|> / <|im_end|> token", L->name, line);
    L->chat_state = 1;
    return 0;
}

typedef struct {
    size_t a, b; /* byte range in the rendered text */
    int loss;
} chat_span;

static void span_add(tk_buf *txt, chat_span **sp, int *n, const char *s, size_t len, int loss) {
    *sp = lg_realloc(*sp, (size_t)(*n + 1) * sizeof **sp);
    (*sp)[*n].a = txt->n;
    tk_buf_put(txt, s, len);
    (*sp)[*n].b = txt->n;
    (*sp)[(*n)++].loss = loss;
}

/* A {"messages": [...]} row rendered with ChatML. Loss on each assistant message's content and
 * its <|im_end|> (what the model must learn to produce and where to stop); no BOS/EOS is added:
 * the template decides the special tokens. The whole text is tokenised at once (as
 * apply_chat_template does) and a token counts if its bytes overlap a loss span. */
static int add_chat_row(loader *L, const cJSON *msgs, long line) {
    if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) == 0)
        return bad_row(L, line, "\"messages\" must be a non-empty array of {\"role\", \"content\"} objects%s", NULL);
    const cJSON *m;
    int k = 0;
    cJSON_ArrayForEach(m, msgs) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role"), *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        char msg[96];
        if (!cJSON_IsObject(m) || !cJSON_IsString(role) || !cJSON_IsString(content) || !*role->valuestring) {
            snprintf(msg, sizeof msg, "messages[%d] needs a non-empty string \"role\" and a string \"content\"", k);
            return bad_row(L, line, "%s", msg);
        }
        k++;
    }
    if (chat_setup(L, line)) return -1;
    tk_buf txt = {0};
    chat_span *sp = NULL;
    int ns = 0;
    const char *first_role = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(msgs, 0), "role")->valuestring;
    if (L->chat_system && strcmp(first_role, "system")) {
        span_add(&txt, &sp, &ns, "<|im_start|>system\n", 19, 0);
        span_add(&txt, &sp, &ns, L->chat_system, strlen(L->chat_system), 0);
        span_add(&txt, &sp, &ns, "<|im_end|>\n", 11, 0);
    }
    cJSON_ArrayForEach(m, msgs) {
        const char *role = cJSON_GetObjectItemCaseSensitive(m, "role")->valuestring;
        const char *content = cJSON_GetObjectItemCaseSensitive(m, "content")->valuestring;
        int as = !strcmp(role, "assistant");
        span_add(&txt, &sp, &ns, "<|im_start|>", 12, 0);
        span_add(&txt, &sp, &ns, role, strlen(role), 0);
        span_add(&txt, &sp, &ns, "\n", 1, 0);
        span_add(&txt, &sp, &ns, content, strlen(content), as);
        span_add(&txt, &sp, &ns, "<|im_end|>", 10, as);
        span_add(&txt, &sp, &ns, "\n", 1, 0);
    }
    rows_t *r = &L->rows;
    size_t start = r->n;
    L->st.rows++;
    int *ids = NULL, n = 0, rc = 0, cap = piece_cap(L);
    if (lg_tokenizer_encode_prefix(L->tok, txt.p, txt.n, cap, &ids, &n)) {
        rc = lg_errorf_prefix("%s:%ld", L->name, line);
        goto done;
    }
    /* byte extent of each token: its raw bytes, special tokens kept; they must spell the text (all of
     * it, unless the row was cut at cap tokens) */
    size_t *end = lg_malloc((size_t)(n ? n : 1) * sizeof(size_t)), pos = 0;
    int spelled = 1;
    for (int i = 0; i < n; i++) {
        char *b;
        size_t bl;
        if (lg_tokenizer_decode_ex(L->tok, ids + i, 1, LG_DECODE_KEEP_SPECIAL | LG_DECODE_RAW_BYTES, &b, &bl)) {
            bl = 0;
            spelled = 0;
        } else {
            spelled &= pos + bl <= txt.n && !memcmp(b, txt.p + pos, bl);
            free(b);
        }
        pos += bl;
        end[i] = pos;
    }
    if (spelled && (pos == txt.n || n == cap)) {
        size_t a = 0;
        int s = 0;
        for (int i = 0; i < n; i++) {
            int loss = 0;
            while (s < ns && sp[s].b <= a) s++;
            for (int q = s; q < ns && sp[q].a < end[i]; q++) loss |= sp[q].loss && sp[q].b > a && sp[q].a < sp[q].b;
            rows_push_tok(r, ids[i], (unsigned char)loss);
            a = end[i];
        }
    } else { /* decoding does not give the bytes back (normalising tokenizers): span by span */
        for (int q = 0; q < ns && !rc && (cap < 0 || r->n - start < (size_t)cap); q++) {
            int *pi, pn;
            if (lg_tokenizer_encode_prefix(L->tok, txt.p + sp[q].a, sp[q].b - sp[q].a, cap, &pi, &pn)) {
                rc = lg_errorf_prefix("%s:%ld", L->name, line);
                r->n = start;
                break;
            }
            for (int i = 0; i < pn; i++) rows_push_tok(r, pi[i], (unsigned char)sp[q].loss);
            free(pi);
        }
    }
    free(end);
    if (!rc) rc = end_row(L, start);
done:
    free(ids);
    free(txt.p);
    free(sp);
    return rc;
}

/* ---- JSONL ---------------------------------------------------------------------------- */
static int get_str(loader *L, const cJSON *o, const char *key, long line, const char **out, int *bad) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    *out = NULL;
    *bad = 0;
    if (!v) return 0;
    if (!cJSON_IsString(v)) {
        char m[128];
        snprintf(m, sizeof m, "field \"%s\" is not a string", key);
        *bad = 1;
        return bad_row(L, line, "%s", m);
    }
    *out = v->valuestring;
    return 0;
}

static int load_jsonl(loader *L, const char *data, size_t len) {
    long line = 0;
    size_t pos = 0;
    while (pos < len) {
        const char *s = data + pos;
        const char *nl = memchr(s, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - s) : len - pos;
        pos += n + (nl ? 1 : 0);
        line++;
        if (line == 1 && n >= 3 && !memcmp(s, "\xEF\xBB\xBF", 3)) s += 3, n -= 3;
        size_t k = 0;
        while (k < n && is_ws(s[k])) k++;
        if (k == n) continue; /* blank line */
        size_t bad = lg_utf8_check(s, n);
        if (bad != n) {
            char m[64];
            snprintf(m, sizeof m, "invalid UTF-8 at byte %zu of the line", bad + 1);
            if (bad_row(L, line, "%s", m)) return -1;
            continue;
        }
        cJSON *o = lg_json_parse(s, n, "column"); /* also refuses NUL in a string and repeated keys */
        if (!o) {
            char m[512];
            snprintf(m, sizeof m, "%s", lg_last_error());
            if (bad_row(L, line, "%s", m)) return -1;
            continue;
        }
        int rc = 0, b1 = 0, b2 = 0, b3 = 0;
        const char *text, *prompt, *comp;
        if (!cJSON_IsObject(o)) {
            rc = bad_row(L, line, "row is not a JSON object%s", NULL);
            goto next;
        }
        if ((rc = get_str(L, o, "text", line, &text, &b1)) || b1) goto next;
        if ((rc = get_str(L, o, "prompt", line, &prompt, &b2)) || b2) goto next;
        if ((rc = get_str(L, o, "completion", line, &comp, &b3)) || b3) goto next;
        if (prompt || comp) {
            if (!prompt || !comp) {
                rc = bad_row(L, line, "row has \"%s\" but not the other of \"prompt\"/\"completion\"",
                             prompt ? "prompt" : "completion");
                goto next;
            }
            rc = add_row(L, prompt, strlen(prompt), comp, strlen(comp), line);
        } else if (text) {
            rc = add_row(L, NULL, 0, text, strlen(text), line);
        } else if (cJSON_GetObjectItemCaseSensitive(o, "messages")) {
            rc = add_chat_row(L, cJSON_GetObjectItemCaseSensitive(o, "messages"), line);
        } else {
            rc = bad_row(L, line, "row has neither \"text\" nor \"prompt\"+\"completion\"%s", NULL);
        }
    next:
        cJSON_Delete(o);
        if (rc) return -1;
    }
    return 0;
}

/* ---- plain text ------------------------------------------------------------------------- */
#define EOT "<|endoftext|>"

static int is_eot_line(const char *s, size_t n) {
    if (n && s[n - 1] == '\r') n--;
    return n == strlen(EOT) && !memcmp(s, EOT, n);
}
static int is_blank_line(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!is_ws(s[i])) return 0;
    return 1;
}

static int add_doc(loader *L, const char *s, size_t n, long line) {
    size_t a = 0, b = n;
    while (a < b && is_ws(s[a])) {
        if (s[a] == '\n') line++;
        a++;
    }
    while (b > a && is_ws(s[b - 1])) b--;
    if (a == b) return 0;
    size_t bad = lg_utf8_check(s + a, b - a);
    if (bad != b - a) {
        long bl = line;
        for (size_t i = a; i < a + bad; i++) bl += s[i] == '\n';
        return bad_row(L, bl, "%s", "invalid UTF-8");
    }
    return add_row(L, NULL, 0, s + a, b - a, line);
}

static int load_txt(loader *L, const char *data, size_t len) {
    size_t skip = len >= 3 && !memcmp(data, "\xEF\xBB\xBF", 3) ? 3 : 0;
    data += skip;
    len -= skip;
    int eot_mode = 0;
    for (size_t pos = 0; pos < len && !eot_mode;) {
        const char *nl = memchr(data + pos, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - (data + pos)) : len - pos;
        if (is_eot_line(data + pos, n)) eot_mode = 1;
        pos += n + 1;
    }
    long line = 0, doc_line = 1;
    size_t doc_start = 0;
    for (size_t pos = 0; pos <= len;) {
        const char *s = data + pos;
        const char *nl = pos < len ? memchr(s, '\n', len - pos) : NULL;
        size_t n = nl ? (size_t)(nl - s) : len - pos;
        line++;
        int sep = pos < len && (eot_mode ? is_eot_line(s, n) : is_blank_line(s, n));
        int last = !nl;
        if (sep || last) {
            size_t doc_end = sep ? pos : len;
            if (add_doc(L, data + doc_start, doc_end - doc_start, doc_line)) return -1;
            doc_start = pos + n + 1;
            doc_line = line + 1;
        }
        if (last) break;
        pos += n + 1;
    }
    return 0;
}

/* ---- seeded permutation (Feistel network + cycle walking): stateless, O(1) per index ----- */
static uint64_t mix64(uint64_t x) {
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBull;
    x ^= x >> 31;
    return x;
}

static uint64_t permute(uint64_t i, uint64_t n, uint64_t key) {
    if (n <= 1) return 0;
    int bits = 2;
    while ((1ull << bits) < n) bits++;
    if (bits & 1) bits++;
    int h = bits / 2;
    uint64_t mask = (1ull << h) - 1;
    uint64_t x = i;
    do {
        uint64_t l = x >> h, r = x & mask;
        for (int round = 0; round < 4; round++) {
            uint64_t f = mix64(r ^ mix64(key + (uint64_t)round)) & mask;
            uint64_t nl = r;
            r = l ^ f;
            l = nl;
        }
        x = (l << h) | r;
    } while (x >= n);
    return x;
}

/* ---- assembling the dataset ------------------------------------------------------------- */
static void build_split(lg_dataset *d, int s, const rows_t *r, const long *rows, long nr, int pack, int max_len,
                        size_t *pos) {
    if (!pack) {
        d->n[s] = nr;
        d->off[s] = lg_malloc((size_t)(nr ? nr : 1) * sizeof(size_t));
        d->len[s] = lg_malloc((size_t)(nr ? nr : 1) * sizeof(int));
        for (long i = 0; i < nr; i++) {
            long k = rows[i];
            memcpy(d->ids + *pos, r->ids + r->roff[k], (size_t)r->rlen[k] * sizeof(int));
            memcpy(d->loss + *pos, r->loss + r->roff[k], (size_t)r->rlen[k]);
            d->off[s][i] = *pos;
            d->len[s][i] = r->rlen[k];
            *pos += (size_t)r->rlen[k];
        }
        return;
    }
    size_t start = *pos;
    for (long i = 0; i < nr; i++) {
        long k = rows[i];
        memcpy(d->ids + *pos, r->ids + r->roff[k], (size_t)r->rlen[k] * sizeof(int));
        memcpy(d->loss + *pos, r->loss + r->roff[k], (size_t)r->rlen[k]);
        *pos += (size_t)r->rlen[k];
    }
    size_t total = *pos - start;
    long nc = (long)((total + (size_t)max_len - 1) / (size_t)max_len);
    d->off[s] = lg_malloc((size_t)(nc ? nc : 1) * sizeof(size_t));
    d->len[s] = lg_malloc((size_t)(nc ? nc : 1) * sizeof(int));
    long m = 0;
    for (long c = 0; c < nc; c++) {
        size_t a = start + (size_t)c * (size_t)max_len;
        size_t l = LG_MIN((size_t)max_len, *pos - a);
        int any = 0;
        for (size_t t = a + 1; t < a + l; t++) any |= d->loss[t];
        if (l < 2 || !any) continue;
        d->off[s][m] = a;
        d->len[s][m++] = (int)l;
    }
    d->n[s] = m;
}

int lg_dataset_load_mem(const char *name, const char *data, size_t len, int is_jsonl, const lg_tokenizer *tok,
                        const lg_data_opts *o, lg_dataset **out) {
    *out = NULL;
    if (!name) name = "data";
    if (!tok) return lg_errorf("%s: no tokenizer", name);
    if (o->max_len < 2) return lg_errorf("%s: max length %d is too small (need at least 2 tokens)", name, o->max_len);
    if (!(o->val_frac >= 0 && o->val_frac < 1))
        return lg_errorf("%s: validation fraction %g must be in [0, 1)", name, (double)o->val_frac);
    loader L;
    memset(&L, 0, sizeof L);
    L.name = name;
    L.tok = tok;
    L.o = o;
    int rc = is_jsonl ? load_jsonl(&L, data, len) : load_txt(&L, data, len);
    free(L.chat_system);
    if (rc) {
        rows_free(&L.rows);
        return -1;
    }
    long R = L.rows.nrows;
    if (R == 0) {
        rows_free(&L.rows);
        if (L.st.rows == 0 && L.st.bad_rows == 0) return lg_errorf("%s: no data (the file has no rows)", name);
        return lg_errorf("%s: no usable examples (%ld rows read, %ld skipped as bad, %ld without any loss token)", name,
                         L.st.rows, L.st.bad_rows, L.st.dropped);
    }
    long nval = 0;
    if (o->val_frac > 0 && R >= 2) {
        nval = lround((double)o->val_frac * (double)R);
        nval = LG_MAX(1, LG_MIN(nval, R - 1));
    }
    unsigned char *is_val = lg_calloc((size_t)R, 1);
    uint64_t key = mix64(o->seed ^ 0x5EEDDA7A5EEDDA7Aull);
    for (long i = 0; i < nval; i++) is_val[permute((uint64_t)i, (uint64_t)R, key)] = 1;
    long *tr = lg_malloc((size_t)R * sizeof(long)), *va = lg_malloc((size_t)(nval ? nval : 1) * sizeof(long));
    long ntr = 0, nva = 0;
    for (long i = 0; i < R; i++) {
        if (is_val[i]) va[nva++] = i;
        else tr[ntr++] = i;
    }
    lg_dataset *d = lg_calloc(1, sizeof *d);
    d->ids = lg_malloc((L.rows.n ? L.rows.n : 1) * sizeof(int));
    d->loss = lg_malloc(L.rows.n ? L.rows.n : 1);
    d->pad = lg_tokenizer_pad(tok);
    d->seed = o->seed;
    size_t pos = 0;
    build_split(d, 0, &L.rows, tr, ntr, o->pack, o->max_len, &pos);
    build_split(d, 1, &L.rows, va, nva, o->pack, o->max_len, &pos);
    free(tr);
    free(va);
    free(is_val);
    rows_free(&L.rows);
    d->st = L.st;
    for (int s = 0; s < 2; s++) {
        d->st.examples[s] = d->n[s];
        for (long i = 0; i < d->n[s]; i++) {
            d->st.tokens[s] += d->len[s][i];
            for (int t = 1; t < d->len[s][i]; t++) d->st.loss_tokens[s] += d->loss[d->off[s][i] + (size_t)t];
        }
    }
    if (d->n[0] == 0) {
        lg_dataset_free(d);
        return lg_errorf("%s: no usable training examples", name);
    }
    *out = d;
    return 0;
}

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

int lg_dataset_load(const char *path, const lg_tokenizer *tok, const lg_data_opts *o, lg_dataset **out) {
    *out = NULL;
    char *data;
    size_t len;
    if (lg_read_file(path, &data, &len)) return -1;
    int jsonl = ends_with(path, ".jsonl") || ends_with(path, ".json") || ends_with(path, ".JSONL");
    int rc = lg_dataset_load_mem(path, data, len, jsonl, tok, o, out);
    free(data);
    return rc;
}

void lg_dataset_free(lg_dataset *d) {
    if (!d) return;
    free(d->ids);
    free(d->loss);
    for (int s = 0; s < 2; s++) {
        free(d->off[s]);
        free(d->len[s]);
    }
    free(d);
}

int lg_dataset_count(const lg_dataset *d, int split) {
    if (split == LG_SPLIT_TRAIN || split == LG_SPLIT_TRAIN_FILE) return (int)d->n[0];
    if (split == LG_SPLIT_VAL) return (int)d->n[1];
    return 0;
}

void lg_dataset_stats(const lg_dataset *d, lg_data_stats *s) { *s = d->st; }

/* split + index -> (store index s, example j) */
static int resolve(const lg_dataset *d, int split, long i, int *s, long *j) {
    if (i < 0) return -1;
    if (split == LG_SPLIT_TRAIN) {
        long n = d->n[0];
        if (n <= 0) return -1;
        uint64_t epoch = (uint64_t)(i / n);
        uint64_t key = mix64(d->seed ^ mix64(epoch + 0x9E3779B97F4A7C15ull));
        *s = 0;
        *j = (long)permute((uint64_t)(i % n), (uint64_t)n, key);
        return 0;
    }
    int st = split == LG_SPLIT_VAL ? 1 : split == LG_SPLIT_TRAIN_FILE ? 0 : -1;
    if (st < 0 || i >= d->n[st]) return -1;
    *s = st;
    *j = i;
    return 0;
}

int lg_dataset_example(const lg_dataset *d, int split, long i, const int **ids, const unsigned char **loss, int *n) {
    int s;
    long j;
    if (resolve(d, split, i, &s, &j)) return -1;
    *ids = d->ids + d->off[s][j];
    *loss = d->loss + d->off[s][j];
    *n = d->len[s][j];
    return 0;
}

int lg_dataset_fill_batch(const lg_dataset *d, int split, long first, lg_batch *b) {
    if (split != LG_SPLIT_TRAIN && split != LG_SPLIT_VAL && split != LG_SPLIT_TRAIN_FILE)
        return lg_errorf("dataset: unknown split %d", split);
    if (b->B < 1 || b->T < 1) return lg_errorf("dataset: bad batch shape %d x %d", b->B, b->T);
    if (first < 0) return lg_errorf("dataset: negative example index %ld", first);
    int T = b->T, placed = 0;
    for (int r = 0; r < b->B; r++) {
        int *in = b->inputs + (size_t)r * (size_t)T, *tg = b->targets + (size_t)r * (size_t)T;
        float *w = b->weight + (size_t)r * (size_t)T;
        const int *x = NULL;
        const unsigned char *ls = NULL;
        int L = 0;
        if (lg_dataset_example(d, split, first + r, &x, &ls, &L) == 0) placed++;
        else L = 0;
        int use = LG_MIN(L, T + 1); /* T inputs and T targets need T + 1 tokens */
        for (int t = 0; t < T; t++) {
            if (t + 1 < use) {
                in[t] = x[t];
                tg[t] = x[t + 1];
                w[t] = ls[t + 1] ? 1.0f : 0.0f;
            } else {
                in[t] = t < use ? x[t] : d->pad;
                tg[t] = d->pad;
                w[t] = 0.0f;
            }
        }
    }
    return placed;
}
