/* tasks.c — SST-2 / MRPC / GSM8K evaluation (tasks.h). */
#include "eval/tasks.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "core/util.h"
#include "model/generate.h"

static const char *const CHOICES_SST2[] = {" negative", " positive"};
static const char *const CHOICES_MRPC[] = {" no", " yes"};

int lg_task_parse(const char *name, lg_task_kind *k) {
    static const struct {
        const char *s;
        lg_task_kind k;
    } names[] = {{"lm", LG_TASK_LM}, {"sst2", LG_TASK_SST2}, {"sst-2", LG_TASK_SST2}, {"mrpc", LG_TASK_MRPC},
                 {"gsm8k", LG_TASK_GSM8K}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcasecmp(name, names[i].s)) {
            *k = names[i].k;
            return 0;
        }
    return lg_errorf("unknown task '%s' (lm, sst2, mrpc, gsm8k)", name);
}

const char *lg_task_name(lg_task_kind k) {
    switch (k) {
    case LG_TASK_SST2: return "sst2";
    case LG_TASK_MRPC: return "mrpc";
    case LG_TASK_GSM8K: return "gsm8k";
    default: return "lm";
    }
}

/* ---- small string helpers ------------------------------------------------------------------------ */

static char *xprintf(const char *fmt, ...) LG_PRINTF(1, 2);
static char *xprintf(const char *fmt, ...) {
    va_list ap, aq;
    va_start(ap, fmt);
    va_copy(aq, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *s = lg_malloc((size_t)n + 1);
    vsnprintf(s, (size_t)n + 1, fmt, aq);
    va_end(aq);
    return s;
}

/* A copy of s[0..n) without leading and trailing white space (GLUE sentences end in " "). */
static char *trimmed(const char *s, size_t n) {
    while (n && isspace((unsigned char)*s)) s++, n--;
    while (n && isspace((unsigned char)s[n - 1])) n--;
    char *r = lg_malloc(n + 1);
    memcpy(r, s, n);
    r[n] = 0;
    return r;
}

/* ---- reading ------------------------------------------------------------------------------------- */

static void add_example(lg_task_set *s, char *prompt, char *target, int label, char *gold, long line) {
    s->ex = lg_realloc(s->ex, (size_t)(s->n + 1) * sizeof *s->ex);
    s->ex[s->n++] = (lg_task_example){prompt, target, label, gold, line};
}

static int make_cls(lg_task_set *s, const char *name, long line, const char *a, size_t alen, const char *b, size_t blen,
                    const char *label, size_t llen) {
    char *lab = trimmed(label, llen);
    int y = !strcmp(lab, "1") ? 1 : !strcmp(lab, "0") ? 0 : -1;
    if (y < 0) {
        lg_errorf("%s:%ld: label '%s' is not 0 or 1", name, line, lab);
        free(lab);
        return -1;
    }
    free(lab);
    char *sa = trimmed(a, alen), *prompt;
    if (s->kind == LG_TASK_SST2) {
        prompt = xprintf("%s\nQuestion: Is this sentence positive or negative?\nAnswer:", sa);
    } else {
        char *sb = trimmed(b, blen);
        prompt = xprintf("Sentence 1: %s\nSentence 2: %s\nQuestion: Do both sentences mean the same thing?\nAnswer:", sa, sb);
        free(sb);
    }
    free(sa);
    add_example(s, prompt, lg_strdup(s->choices[y]), y, NULL, line);
    return 0;
}

typedef struct {
    const char *p;
    size_t n;
} span;

/* Split a line into tab-separated fields (at most cap). */
static int split_tabs(const char *p, size_t n, span *f, int cap) {
    int k = 0;
    size_t s = 0;
    for (size_t i = 0; i <= n && k < cap; i++)
        if (i == n || p[i] == '\t') {
            f[k++] = (span){p + s, i - s};
            s = i + 1;
        }
    return k;
}

static int load_tsv(lg_task_set *s, const char *name, const char *text, size_t len) {
    const char *want[3] = {"sentence", "label", NULL};
    if (s->kind == LG_TASK_MRPC) want[0] = "#1 String", want[1] = "#2 String", want[2] = "Quality";
    const int nw = s->kind == LG_TASK_MRPC ? 3 : 2;
    int col[3] = {-1, -1, -1}, ncols = 0;
    size_t pos = 0;
    long line = 0;
    if (len >= 3 && !memcmp(text, "\xEF\xBB\xBF", 3)) pos = 3;
    while (pos < len) {
        const char *p = text + pos;
        const char *nl = memchr(p, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - p) : len - pos;
        pos += n + (nl ? 1 : 0);
        line++;
        if (n && p[n - 1] == '\r') n--;
        span f[16];
        int k = split_tabs(p, n, f, 16);
        if (line == 1) {
            ncols = k;
            for (int w = 0; w < nw; w++)
                for (int c = 0; c < k; c++)
                    if (f[c].n == strlen(want[w]) && !memcmp(f[c].p, want[w], f[c].n)) col[w] = c;
            for (int w = 0; w < nw; w++)
                if (col[w] < 0)
                    return lg_errorf("%s:1: no column \"%s\" in the header (GLUE %s TSV expected%s)", name, want[w],
                                     s->kind == LG_TASK_MRPC ? "MRPC" : "SST-2",
                                     !strcmp(want[w], "label") || !strcmp(want[w], "Quality")
                                         ? "; a test split without labels cannot be scored" : "");
            continue;
        }
        if (!n) continue;
        if (k != ncols) return lg_errorf("%s:%ld: %d tab-separated fields, the header has %d", name, line, k, ncols);
        int rc = s->kind == LG_TASK_MRPC
                     ? make_cls(s, name, line, f[col[0]].p, f[col[0]].n, f[col[1]].p, f[col[1]].n, f[col[2]].p, f[col[2]].n)
                     : make_cls(s, name, line, f[col[0]].p, f[col[0]].n, NULL, 0, f[col[1]].p, f[col[1]].n);
        if (rc) return -1;
    }
    return 0;
}

static const char *json_str(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int load_jsonl(lg_task_set *s, const char *name, const char *text, size_t len) {
    size_t pos = 0;
    long line = 0;
    if (len >= 3 && !memcmp(text, "\xEF\xBB\xBF", 3)) pos = 3;
    while (pos < len) {
        const char *p = text + pos;
        const char *nl = memchr(p, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - p) : len - pos;
        pos += n + (nl ? 1 : 0);
        line++;
        size_t b = 0;
        while (b < n && isspace((unsigned char)p[b])) b++;
        if (b == n) continue;
        cJSON *j = lg_json_parse(p, n, "column");
        if (!j) return lg_errorf_prefix("%s:%ld", name, line);
        if (!cJSON_IsObject(j)) {
            cJSON_Delete(j);
            return lg_errorf("%s:%ld: not a JSON object", name, line);
        }
        int rc = 0;
        if (s->kind == LG_TASK_GSM8K) {
            const char *q = json_str(j, "question"), *a = json_str(j, "answer");
            char num[64];
            if (!q || !a) rc = lg_errorf("%s:%ld: a GSM8K row needs string fields \"question\" and \"answer\"", name, line);
            else if (!lg_answer_number(a, 1, num, sizeof num))
                rc = lg_errorf("%s:%ld: the answer has no \"#### N\" final number", name, line);
            else {
                char *qt = trimmed(q, strlen(q)), *at = trimmed(a, strlen(a));
                add_example(s, xprintf("Question: %s\nAnswer:", qt), xprintf(" %s", at), -1, lg_strdup(num), line);
                free(qt), free(at);
            }
        } else {
            const cJSON *lab = cJSON_GetObjectItemCaseSensitive(j, "label");
            const char *a = json_str(j, s->kind == LG_TASK_MRPC ? "sentence1" : "sentence");
            const char *b2 = s->kind == LG_TASK_MRPC ? json_str(j, "sentence2") : "";
            char lb[8];
            if (!a || !b2 || !cJSON_IsNumber(lab))
                rc = lg_errorf("%s:%ld: a row needs %s and a numeric \"label\"", name, line,
                               s->kind == LG_TASK_MRPC ? "\"sentence1\", \"sentence2\"" : "\"sentence\"");
            else {
                snprintf(lb, sizeof lb, "%d", lab->valueint);
                rc = make_cls(s, name, line, a, strlen(a), b2, strlen(b2), lb, strlen(lb));
            }
        }
        cJSON_Delete(j);
        if (rc) return -1;
    }
    return 0;
}

int lg_task_load_mem(lg_task_kind k, const char *name, const char *text, size_t len, lg_task_set **out) {
    *out = NULL;
    if (k == LG_TASK_LM) return lg_errorf("task lm reads documents with the data pipeline, not a task file");
    lg_task_set *s = lg_calloc(1, sizeof *s);
    s->kind = k;
    if (k == LG_TASK_SST2) s->choices = CHOICES_SST2, s->nchoices = 2;
    if (k == LG_TASK_MRPC) s->choices = CHOICES_MRPC, s->nchoices = 2;
    size_t nl = strlen(name);
    int jsonl = k == LG_TASK_GSM8K || (nl >= 6 && !strcasecmp(name + nl - 6, ".jsonl"));
    int rc = jsonl ? load_jsonl(s, name, text, len) : load_tsv(s, name, text, len);
    if (rc == 0 && s->n == 0) rc = lg_errorf("%s: no examples", name);
    if (rc) {
        lg_task_free(s);
        return -1;
    }
    *out = s;
    return 0;
}

int lg_task_load(lg_task_kind k, const char *path, lg_task_set **out) {
    char *text = NULL;
    size_t len = 0;
    *out = NULL;
    if (lg_read_file(path, &text, &len) != 0) return -1;
    int rc = lg_task_load_mem(k, path, text, len, out);
    free(text);
    return rc;
}

void lg_task_free(lg_task_set *s) {
    if (!s) return;
    for (int i = 0; i < s->n; i++) free(s->ex[i].prompt), free(s->ex[i].target), free(s->ex[i].gold);
    free(s->ex);
    free(s);
}

/* ---- answers and metrics ---------------------------------------------------------------------- */

/* Length of the number starting at p (0 if none): -?[0-9][0-9,]*(\.[0-9]+)? */
static size_t number_at(const char *p) {
    size_t i = 0;
    if (p[i] == '-') i++;
    if (!isdigit((unsigned char)p[i])) return 0;
    while (isdigit((unsigned char)p[i]) || (p[i] == ',' && isdigit((unsigned char)p[i + 1]))) i++;
    if (p[i] == '.' && isdigit((unsigned char)p[i + 1])) {
        i++;
        while (isdigit((unsigned char)p[i])) i++;
    }
    return i;
}

static void copy_number(const char *p, size_t n, char *out, size_t cap) {
    size_t k = 0;
    for (size_t i = 0; i < n && k + 1 < cap; i++)
        if (p[i] != ',') out[k++] = p[i];
    out[k] = 0;
}

int lg_answer_number(const char *text, int strict, char *out, size_t cap) {
    if (strict) {
        const char *h = strstr(text, "####");
        if (!h) return 0;
        h += 4;
        while (*h == ' ' || *h == '\t' || *h == '$') h++;
        size_t n = number_at(h);
        if (!n) return 0;
        copy_number(h, n, out, cap);
        return 1;
    }
    const char *best = NULL;
    size_t bn = 0;
    for (const char *p = text; *p;) {
        /* a number starts at a digit (or '-' before one) that does not continue a word or number */
        int start = (isdigit((unsigned char)*p) || (*p == '-' && isdigit((unsigned char)p[1]))) &&
                    (p == text || !(isalnum((unsigned char)p[-1]) || p[-1] == '.' || p[-1] == ',' || p[-1] == '-'));
        size_t n = start ? number_at(p) : 0;
        if (n) {
            best = p, bn = n;
            p += n;
        } else {
            p++;
        }
    }
    if (!best) return 0;
    copy_number(best, bn, out, cap);
    return 1;
}

static void strip_num(const char *s, char *out, size_t cap) {
    size_t k = 0;
    while (*s == ' ') s++;
    for (; *s && k + 1 < cap; s++)
        if (*s != ',' && *s != '$') out[k++] = *s;
    while (k && (out[k - 1] == ' ' || out[k - 1] == '.')) k--;
    out[k] = 0;
}

int lg_number_equal(const char *a, const char *b) {
    char x[96], y[96];
    strip_num(a, x, sizeof x);
    strip_num(b, y, sizeof y);
    char *ex, *ey;
    double dx = strtod(x, &ex), dy = strtod(y, &ey);
    if (x[0] && y[0] && !*ex && !*ey) return dx == dy;
    return !strcmp(x, y);
}

int lg_argmax_d(const double *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

void lg_cls_metrics(const int *pred, const int *gold, int n, double *acc, double *f1) {
    long ok = 0, tp = 0, fp = 0, fn = 0;
    for (int i = 0; i < n; i++) {
        ok += pred[i] == gold[i];
        tp += pred[i] == 1 && gold[i] == 1;
        fp += pred[i] == 1 && gold[i] != 1;
        fn += pred[i] != 1 && gold[i] == 1;
    }
    *acc = n ? (double)ok / n : 0.0;
    *f1 = tp ? 2.0 * tp / (2.0 * tp + fp + fn) : 0.0;
}

/* ---- evaluation ---------------------------------------------------------------------------------- */

char *lg_task_context(const lg_task_set *s, int i, const lg_task_set *shot_src, int shots) {
    size_t cap = strlen(s->ex[i].prompt) + 1, len = 0;
    for (int k = 0; shot_src && k < shots && k < shot_src->n; k++)
        cap += strlen(shot_src->ex[k].prompt) + strlen(shot_src->ex[k].target) + 2;
    char *c = lg_malloc(cap);
    for (int k = 0; shot_src && k < shots && k < shot_src->n; k++)
        len += (size_t)sprintf(c + len, "%s%s\n\n", shot_src->ex[k].prompt, shot_src->ex[k].target);
    strcpy(c + len, s->ex[i].prompt);
    return c;
}

/* BOS (if any and wanted) + encode(text); *n tokens. */
static int encode_bos(const lg_tokenizer *t, const char *text, int use_bos, int **ids, int *n) {
    int *raw = NULL, k = 0;
    if (lg_tokenizer_encode(t, text, strlen(text), 0, &raw, &k) != 0) return -1;
    const int bos = use_bos ? lg_tokenizer_bos(t) : -1, off = bos >= 0;
    *ids = lg_malloc((size_t)(k + 1) * sizeof(int));
    if (off) (*ids)[0] = bos;
    memcpy(*ids + off, raw, (size_t)k * sizeof(int));
    *n = k + off;
    free(raw);
    return 0;
}

/* Drop tokens after the first from the left so that n <= cap; returns how many were dropped. */
static int fit_left(int *ids, int *n, int cap, int keep_first) {
    if (*n <= cap) return 0;
    const int drop = *n - cap, k = keep_first ? 1 : 0;
    memmove(ids + k, ids + k + drop, (size_t)(*n - k - drop) * sizeof(int));
    *n -= drop;
    return drop;
}

static void json_escape(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c == '\n') fputs("\\n", f);
        else if (c == '\t') fputs("\\t", f);
        else if (c == '\r') fputs("\\r", f);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

typedef struct {
    const lg_tokenizer *t;
    int *ids, n, cap;
    int cut; /* byte length to keep when a stop string was found, else -1 */
} stop_state;

static const char *const STOP_STRINGS[] = {"Question:", "\n\n"};

static int gsm8k_stop(int id, void *ud) {
    stop_state *s = ud;
    if (s->n == s->cap) s->ids = lg_realloc(s->ids, (size_t)(s->cap = 2 * s->cap + 16) * sizeof(int));
    s->ids[s->n++] = id;
    char *txt = NULL;
    size_t len = 0;
    if (lg_tokenizer_decode(s->t, s->ids, s->n, &txt, &len) != 0) return 1;
    int stop = 0;
    for (size_t k = 0; k < sizeof STOP_STRINGS / sizeof STOP_STRINGS[0]; k++) {
        const char *h = strstr(txt, STOP_STRINGS[k]);
        if (h && (s->cut < 0 || (int)(h - txt) < s->cut)) s->cut = (int)(h - txt), stop = 1;
    }
    free(txt);
    return stop;
}

int lg_task_eval(lg_model *m, const lg_tokenizer *t, const lg_task_set *s, const lg_task_opts *o, lg_task_result *r) {
    memset(r, 0, sizeof *r);
    const lg_config *c = lg_model_config(m);
    const int V = c->vocab_size, first = LG_MAX(0, o->first);
    int total = s->n - first;
    if (o->limit > 0) total = LG_MIN(total, o->limit);
    if (total <= 0) return lg_errorf("no examples left to evaluate (%d in the file, %d used as shots)", s->n, first);
    const double t0 = lg_now();
    lg_kv *kv = NULL;
    if (lg_kv_create(m, 0, &kv) != 0) return -1;
    const int cap = lg_kv_cap(kv), has_bos = !o->no_bos && lg_tokenizer_bos(t) >= 0;
    int rc = -1;
    int *pred = lg_calloc((size_t)total, sizeof(int)), *pred_n = lg_calloc((size_t)total, sizeof(int));
    int *gold = lg_calloc((size_t)total, sizeof(int));
    int *ctx = NULL, *full = NULL;
    float *lg = NULL;
    long flex_ok = 0, strict_ok = 0;
    for (int e = 0; e < total; e++) {
        const lg_task_example *ex = &s->ex[first + e];
        char *context = lg_task_context(s, first + e, o->shot_src, o->shots);
        int nc = 0, truncated = 0;
        if (encode_bos(t, context, has_bos, &ctx, &nc) != 0) {
            free(context);
            goto done;
        }
        if (s->kind == LG_TASK_GSM8K) {
            const int room = LG_MAX(1, cap - LG_MAX(1, o->max_tokens));
            truncated = fit_left(ctx, &nc, room, has_bos) > 0;
            stop_state st = {t, NULL, 0, 0, -1};
            int eos[2], ne = 0;
            if (lg_tokenizer_eos(t) >= 0) eos[ne++] = lg_tokenizer_eos(t);
            if (c->eos_id >= 0 && (!ne || c->eos_id != eos[0])) eos[ne++] = c->eos_id;
            lg_gen_opts go = {o->max_tokens > 0 ? o->max_tokens : 256, {0.0f, 0, 1.0f}, 0, eos, ne};
            lg_gen_result gr;
            if (lg_generate(kv, ctx, nc, &go, gsm8k_stop, &st, &gr) != 0) {
                free(st.ids);
                free(context);
                goto done;
            }
            r->generated_tokens += gr.n;
            char *txt = NULL;
            size_t tl = 0;
            if (lg_tokenizer_decode(t, gr.ids, gr.n, &txt, &tl) != 0) {
                free(gr.ids), free(st.ids), free(context);
                goto done;
            }
            if (st.cut >= 0 && (size_t)st.cut <= tl) txt[st.cut] = 0;
            char sn[64] = "", fn[64] = "";
            const int hs = lg_answer_number(txt, 1, sn, sizeof sn), hf = lg_answer_number(txt, 0, fn, sizeof fn);
            const int ok_s = hs && lg_number_equal(sn, ex->gold), ok_f = hf && lg_number_equal(fn, ex->gold);
            strict_ok += ok_s, flex_ok += ok_f;
            r->no_answer += !hf;
            if (o->predictions) {
                fprintf(o->predictions, "{\"index\": %d, \"line\": %ld, \"gold\": ", first + e, ex->line);
                json_escape(o->predictions, ex->gold);
                fputs(", \"output\": ", o->predictions);
                json_escape(o->predictions, txt);
                fputs(", \"answer_strict\": ", o->predictions);
                if (hs) json_escape(o->predictions, sn);
                else fputs("null", o->predictions);
                fputs(", \"answer_flexible\": ", o->predictions);
                if (hf) json_escape(o->predictions, fn);
                else fputs("null", o->predictions);
                fprintf(o->predictions, ", \"exact_match\": %s, \"exact_match_flexible\": %s}\n", ok_s ? "true" : "false",
                        ok_f ? "true" : "false");
            }
            free(txt);
            free(gr.ids);
            free(st.ids);
        } else {
            double ll[2], lln[2];
            for (int j = 0; j < s->nchoices; j++) {
                char *ft = lg_malloc(strlen(context) + strlen(s->choices[j]) + 1);
                strcpy(ft, context);
                strcat(ft, s->choices[j]);
                int nf = 0;
                int rc2 = encode_bos(t, ft, has_bos, &full, &nf);
                free(ft);
                if (rc2 != 0) {
                    free(context);
                    goto done;
                }
                int k = 0;
                while (k < nc && k < nf && ctx[k] == full[k]) k++;
                if (k < 1) k = 1;                 /* the first token has no prediction */
                if (k >= nf) k = nf - 1;          /* degenerate: the choice added no token */
                int tail = nf - k, drop = 0;
                if (nf > cap) { /* keep the choice, cut the context after BOS */
                    drop = fit_left(full, &nf, cap, has_bos);
                    truncated = 1;
                    k = LG_MAX(1, k - drop);
                    tail = nf - k;
                }
                /* feed the shared context, then the last context token and the choice with logits */
                int cp = lg_kv_common_prefix(kv, full, k - 1);
                lg_kv_truncate(kv, cp);
                if (cp < k - 1 && lg_kv_feed(kv, full + cp, k - 1 - cp, NULL, 0) != 0) {
                    free(context);
                    goto done;
                }
                lg = lg_realloc(lg, (size_t)tail * V * sizeof(float));
                if (lg_kv_feed(kv, full + k - 1, tail, lg, 1) != 0) {
                    free(context);
                    goto done;
                }
                double sum = 0;
                for (int p = 0; p < tail; p++) {
                    const float *row = lg + (size_t)p * V;
                    float mx = row[0];
                    for (int v = 1; v < V; v++) mx = row[v] > mx ? row[v] : mx;
                    double z = 0;
                    for (int v = 0; v < V; v++) z += exp((double)row[v] - mx);
                    sum += (double)row[full[k + p]] - mx - log(z);
                }
                ll[j] = sum;
                lln[j] = sum / (double)LG_MAX((size_t)1, strlen(s->choices[j]));
                free(full);
                full = NULL;
            }
            pred[e] = lg_argmax_d(ll, s->nchoices);
            pred_n[e] = lg_argmax_d(lln, s->nchoices);
            gold[e] = ex->label;
            if (o->predictions)
                fprintf(o->predictions,
                        "{\"index\": %d, \"line\": %ld, \"label\": %d, \"pred\": %d, \"pred_norm\": %d, "
                        "\"loglik\": [%.6f, %.6f]}\n",
                        first + e, ex->line, ex->label, pred[e], pred_n[e], ll[0], ll[1]);
        }
        r->truncated += truncated;
        free(context);
        free(ctx);
        ctx = NULL;
        if (o->progress) o->progress(e + 1, total, o->progress_ud);
    }
    r->n = total;
    if (s->kind == LG_TASK_GSM8K) {
        r->accuracy = (double)strict_ok / total;
        r->exact_match_flexible = (double)flex_ok / total;
    } else {
        double f1n;
        lg_cls_metrics(pred, gold, total, &r->accuracy, &r->f1);
        lg_cls_metrics(pred_n, gold, total, &r->accuracy_norm, &f1n);
        int ng[2] = {0, 0};
        for (int e = 0; e < total; e++) ng[gold[e]]++, r->pred_counts[pred[e]]++;
        r->majority = (double)LG_MAX(ng[0], ng[1]) / total;
    }
    r->seconds = lg_now() - t0;
    rc = 0;
done:
    lg_kv_free(kv);
    free(pred), free(pred_n), free(gold), free(ctx), free(full), free(lg);
    return rc;
}
