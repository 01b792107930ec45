/* data.c — see data.h. */
#include "data/data.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "template/chat.h"
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
    int chat_state; /* 0 = template not looked at yet, 1 = ready, -1 = failed */
    lg_chat *chat;
    int alpaca_chat; /* a chat template exists: Alpaca rows become chats */
} loader;

/* A bad row: error, or counted when skip_bad. Returns 0 to go on, -1 to stop. */
static int bad_row(loader *L, long line, const char *fmt, const char *arg) {
    char msg[1024];
    snprintf(msg, sizeof msg, fmt, arg ? arg : "");
    if (L->o->skip_bad) {
        L->st.bad_rows++;
        if (!L->st.first_bad_line) {
            L->st.first_bad_line = line;
            snprintf(L->st.first_bad_why, sizeof L->st.first_bad_why, "%.199s", msg); /* its start */
        }
        return 0;
    }
    return lg_errorf("%s:%ld: %s", L->name, line, msg);
}

static int encode_into(loader *L, const char *s, size_t n, unsigned char loss, long line) {
    int *ids, m;
    if (lg_tokenizer_encode(L->tok, s, n, 0, &ids, &m)) return lg_errorf_prefix("%s:%ld", L->name, line);
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
    /* EOS: text rows with add_eos; prompt/completion rows unless no_eos (TRL appends it) */
    if ((L->o->add_eos || (prompt && !L->o->no_eos)) && eos >= 0) rows_push_tok(r, eos, 1);
    return end_row(L, start);
}

/* truncate (unless packing), drop a row with nothing to learn, else record it */
static int end_row(loader *L, size_t start) {
    rows_t *r = &L->rows;
    size_t len = r->n - start, full = r->n;
    if (!L->o->pack && len > (size_t)L->o->max_len) {
        L->st.truncated++;
        r->n = start + (size_t)L->o->max_len;
        len = (size_t)L->o->max_len;
    }
    int any = 0;
    for (size_t i = start + 1; i < r->n; i++) any |= r->loss[i];
    if (!any && !L->o->keep_empty) { /* nothing to learn from this row */
        int cut = 0; /* the cut-off tail is still in the buffer */
        for (size_t i = r->n; i < full; i++) cut |= r->loss[i];
        L->st.dropped_cut += cut;
        L->st.dropped++;
        r->n = start;
        return 0;
    }
    rows_end_row(r, start);
    return 0;
}

static int is_ws(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

/* ---- chat rows ------------------------------------------------------------------------- *
 * Rendered with the model's own Jinja template (src/template), as apply_chat_template renders
 * them; the assistant turns are found by rendering (src/template/chat.h). */

/* The tokenizer's chat template when the options give none: "chat_template" of the
 * tokenizer_config.json it was loaded with (a GGUF tokenizer carries its template there too);
 * a named list [{"name", "template"}] gives its "default". */
char *lg_data_tokenizer_template(const lg_tokenizer *tok) {
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

/* bos_token, eos_token, unk_token, pad_token as the template sees them (those the tokenizer has) */
cJSON *lg_data_special_tokens(const lg_tokenizer *tok) {
    cJSON *o = cJSON_CreateObject();
    static const char *const K[] = {"bos_token", "eos_token", "unk_token", "pad_token"};
    int ids[4] = {tok->bos, tok->eos, tok->unk_id, tok->pad};
    for (int k = 0; k < 4; k++) {
        const char *p = ids[k] >= 0 ? lg_tokenizer_id_to_piece(tok, ids[k]) : NULL;
        if (p) cJSON_AddStringToObject(o, K[k], p);
    }
    return o;
}

static int chat_setup(loader *L, long line) {
    if (L->chat_state) return L->chat_state > 0 ? 0 : -1;
    L->chat_state = -1;
    char *own = L->o->chat_template ? NULL : lg_data_tokenizer_template(L->tok);
    const char *tmpl = L->o->chat_template ? L->o->chat_template : own;
    if (!tmpl)
        return lg_errorf("%s:%ld: chat rows (\"messages\") need the model's chat template, and none was found "
                         "(chat_template.jinja, \"chat_template\" in tokenizer_config.json or tokenizer.chat_template "
                         "in a GGUF)", L->name, line);
    cJSON *sp = lg_data_special_tokens(L->tok), *extra = L->o->chat_vars ? cJSON_Parse(L->o->chat_vars) : NULL;
    int rc = lg_chat_new(tmpl, "chat template", sp, extra, &L->chat);
    cJSON_Delete(sp);
    cJSON_Delete(extra);
    free(own);
    if (rc) return lg_errorf_prefix("%s:%ld", L->name, line);
    L->chat_state = 1;
    return 0;
}

/* A {"messages": [...]} row: the template's rendering of the conversation, tokenised whole with no
 * special tokens added (as apply_chat_template does: the template places BOS/EOS). A token carries
 * loss when it overlaps an assistant span and does not run past its end. */
static int add_chat_row(loader *L, const cJSON *msgs, long line) {
    if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) == 0)
        return bad_row(L, line, "\"messages\" must be a non-empty array of {\"role\", \"content\"} objects%s", NULL);
    const cJSON *m;
    int k = 0;
    cJSON_ArrayForEach(m, msgs) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        char msg[96];
        if (!cJSON_IsObject(m) || !cJSON_IsString(role) || !*role->valuestring) {
            snprintf(msg, sizeof msg, "messages[%d] needs a non-empty string \"role\"", k);
            return bad_row(L, line, "%s", msg);
        }
        const cJSON *w = cJSON_GetObjectItemCaseSensitive(m, "weight");
        if (w && !cJSON_IsBool(w) && !(cJSON_IsNumber(w) && (w->valuedouble == 0 || w->valuedouble == 1))) {
            snprintf(msg, sizeof msg, "messages[%d].weight must be 0 or 1", k);
            return bad_row(L, line, "%s", msg);
        }
        k++;
    }
    if (chat_setup(L, line)) return -1;
    char *txt = NULL;
    size_t tn = 0;
    lg_jinja_span *sp = NULL;
    int ns = 0;
    if (lg_chat_assistant_spans(L->chat, msgs, &txt, &tn, &sp, &ns)) {
        lg_errorf_prefix("%s:%ld", L->name, line);
        if (!L->o->skip_bad) return -1;
        return bad_row(L, line, "%s", lg_last_error());
    }
    rows_t *r = &L->rows;
    size_t start = r->n;
    L->st.rows++;
    int *ids = NULL, n = 0, rc = 0;
    size_t *end = NULL;
    if (lg_tokenizer_encode(L->tok, txt, tn, 0, &ids, &n)) {
        rc = lg_errorf_prefix("%s:%ld", L->name, line);
        goto done;
    }
    /* byte extent of each token: its raw bytes, special tokens kept */
    end = lg_malloc((size_t)(n ? n : 1) * sizeof(size_t));
    size_t pos = 0;
    for (int i = 0; i < n; i++) {
        char *b;
        size_t bl;
        if (lg_tokenizer_decode_ex(L->tok, ids + i, 1, LG_DECODE_KEEP_SPECIAL | LG_DECODE_RAW_BYTES, &b, &bl)) bl = 0;
        else free(b);
        pos += bl;
        end[i] = pos;
    }
    if (pos == tn) {
        size_t a = 0;
        for (int i = 0; i < n; i++) {
            int loss = 0;
            for (int q = 0; q < ns && !loss; q++) loss = end[i] > sp[q].a && a < sp[q].b && end[i] <= sp[q].b;
            rows_push_tok(r, ids[i], (unsigned char)loss);
            a = end[i];
        }
    } else { /* decoding does not give the bytes back (normalising tokenizers): piece by piece */
        size_t a = 0;
        for (int q = 0; q <= ns && !rc; q++) {
            size_t cut[2] = {q < ns ? sp[q].a : tn, q < ns ? sp[q].b : tn};
            for (int h = 0; h < 2 && !rc; h++) {
                if (cut[h] <= a) continue;
                int *pi, pn;
                if (lg_tokenizer_encode(L->tok, txt + a, cut[h] - a, 0, &pi, &pn)) {
                    rc = lg_errorf_prefix("%s:%ld", L->name, line);
                    r->n = start;
                    break;
                }
                for (int i = 0; i < pn; i++) rows_push_tok(r, pi[i], (unsigned char)(h == 1));
                free(pi);
                a = cut[h];
            }
        }
    }
    if (!rc) rc = end_row(L, start);
done:
    free(end);
    free(ids);
    free(txt);
    free(sp);
    return rc;
}

/* ---- JSONL ---------------------------------------------------------------------------- */
/* One row of any accepted shape (formats.h): made canonical, then added. */
static int process_row(loader *L, const cJSON *row, long line) {
    char why[1024];
    lg_row_format shape;
    cJSON *c = lg_row_canonical(row, L->o->format, &L->o->fields, L->alpaca_chat, &shape, why, sizeof why);
    if (!c) return bad_row(L, line, "%s", why);
    L->st.shape_rows[shape]++;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(c, "text"), *p = cJSON_GetObjectItemCaseSensitive(c, "prompt"),
                *q = cJSON_GetObjectItemCaseSensitive(c, "completion");
    int rc;
    if (p) rc = add_row(L, p->valuestring, strlen(p->valuestring), q->valuestring, strlen(q->valuestring), line);
    else if (t) rc = add_row(L, NULL, 0, t->valuestring, strlen(t->valuestring), line);
    else rc = add_chat_row(L, cJSON_GetObjectItemCaseSensitive(c, "messages"), line);
    cJSON_Delete(c);
    return rc;
}

/* A JSON array of rows, or a CSV/TSV file (formats.h reads the records). */
static int load_records(loader *L, const char *data, size_t len, lg_file_kind kind) {
    lg_rec_reader *r;
    if (lg_rec_open(L->name, data, len, kind, &r)) return -1;
    int rc = 0;
    for (;;) {
        cJSON *o;
        long line;
        char why[256];
        int got = lg_rec_next(r, &o, &line, why, sizeof why);
        if (got <= 0) {
            rc = got;
            break;
        }
        rc = o ? process_row(L, o, line) : bad_row(L, line, "%s", why);
        cJSON_Delete(o);
        if (rc) break;
    }
    lg_rec_close(r);
    return rc;
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
        const char *end = NULL;
        cJSON *o = cJSON_ParseWithLengthOpts(s, n, &end, 0);
        if (o && end) {
            const char *e = end;
            while (e < s + n && is_ws(*e)) e++;
            if (e < s + n) {
                cJSON_Delete(o);
                o = NULL;
                end = e;
            }
        }
        if (!o) {
            const char *ep = end ? end : cJSON_GetErrorPtr();
            long col = ep && ep >= s && ep <= s + n ? (long)(ep - s) + 1 : 0;
            char m[64];
            snprintf(m, sizeof m, "not valid JSON (near column %ld)", col);
            if (bad_row(L, line, "%s", m)) return -1;
            continue;
        }
        int rc = process_row(L, o, line);
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
    return lg_dataset_load_mem_kind(name, data, len, is_jsonl ? LG_FILE_JSON : LG_FILE_TEXT, tok, o, out);
}

/* JSON that starts with '[' (after a BOM and white space) is one array of rows, else JSON Lines. */
static int json_is_array(const char *data, size_t len) {
    size_t i = len >= 3 && !memcmp(data, "\xEF\xBB\xBF", 3) ? 3 : 0;
    while (i < len && is_ws(data[i])) i++;
    return i < len && data[i] == '[';
}

int lg_dataset_load_mem_kind(const char *name, const char *data, size_t len, lg_file_kind kind,
                             const lg_tokenizer *tok, const lg_data_opts *o, lg_dataset **out) {
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
    if (kind != LG_FILE_TEXT) { /* Alpaca rows become chats when there is a template to render them */
        char *tt = o->chat_template ? NULL : lg_data_tokenizer_template(tok);
        L.alpaca_chat = o->chat_template || tt;
        free(tt);
    }
    L.st.alpaca_chat = L.alpaca_chat;
    int rc = kind == LG_FILE_TEXT                       ? load_txt(&L, data, len)
             : kind == LG_FILE_JSON && !json_is_array(data, len) ? load_jsonl(&L, data, len)
                                                                 : load_records(&L, data, len, kind);
    lg_chat_free(L.chat);
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

int lg_dataset_load(const char *path, const lg_tokenizer *tok, const lg_data_opts *o, lg_dataset **out) {
    *out = NULL;
    char *data;
    size_t len;
    if (lg_read_file(path, &data, &len)) return -1;
    lg_file_kind kind = o->kind != LG_FILE_AUTO ? o->kind : lg_file_kind_of(path);
    int rc = lg_dataset_load_mem_kind(path, data, len, kind, tok, o, out);
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
