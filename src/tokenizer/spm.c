/* spm.c — score-ranked SentencePiece BPE: llama2.c's tokenizer.bin (and vocabularies given
 * as pieces + scores), and writing such a tokenizer as a Hugging Face tokenizer.json.
 *
 * Internally pieces are kept in SentencePiece form ("▁" for a space) and the text goes
 * through the LLaMA-2 normalizer (prepend "▁", spaces -> "▁") — the same as llama2.c's
 * "dummy prefix" — so the decoder chain and the tokenizer.json writer are those of HF. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "tokenizer/tok_internal.h"

#define SPACE_MARK "\xE2\x96\x81" /* ▁ */

static int is_byte_piece(const char *s, size_t n) {
    if (n != 6 || memcmp(s, "<0x", 3) || s[5] != '>') return 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'F'))) return 0;
    }
    return 1;
}

static void add_norm(lg_tokenizer *t, int type, const char *a, const char *b) {
    t->norms = lg_realloc(t->norms, (size_t)(t->n_norms + 1) * sizeof(tk_norm));
    tk_norm *n = &t->norms[t->n_norms++];
    memset(n, 0, sizeof *n);
    n->type = type;
    n->a = lg_strdup(a);
    n->alen = strlen(a);
    if (b) {
        n->b = lg_strdup(b);
        n->blen = strlen(b);
    }
}

static void add_dec(lg_tokenizer *t, tk_dec d) {
    t->decs = lg_realloc(t->decs, (size_t)(t->n_decs + 1) * sizeof(tk_dec));
    t->decs[t->n_decs++] = d;
}

int tk_llama2c_setup(lg_tokenizer *t, int n, const char *const *pieces, const int *lens, const float *scores, int unk,
                     int bos, int eos) {
    if (n <= 0) return lg_errorf("tokenizer: empty vocabulary");
    t->model = MODEL_SPM_SCORE;
    t->n_ids = n;
    t->piece = lg_calloc((size_t)n, sizeof(char *));
    t->plen = lg_calloc((size_t)n, sizeof(uint32_t));
    t->special = lg_calloc((size_t)n, 1);
    t->score = lg_calloc((size_t)n, sizeof(float));
    t->mergeable = lg_calloc((size_t)n, 1);
    t->byte_fallback = 1;
    t->fuse_unk = 1;
    t->unk_id = unk >= 0 && unk < n ? unk : -1;
    t->bos = bos >= 0 && bos < n ? bos : -1;
    t->eos = eos >= 0 && eos < n ? eos : -1;
    t->pad = -1;
    tk_buf b = {0};
    for (int i = 0; i < n; i++) {
        if (lens[i] < 0) {
            free(b.p);
            return lg_errorf("tokenizer: piece %d has a negative length", i);
        }
        const char *s = pieces[i];
        size_t len = (size_t)lens[i];
        int control = i == t->unk_id || i == t->bos || i == t->eos;
        b.n = 0;
        if (control) { /* llama2.c stores "\n<s>\n": keep the name only */
            while (len && (*s == '\n' || *s == ' ')) s++, len--;
            while (len && (s[len - 1] == '\n' || s[len - 1] == ' ')) len--;
            tk_buf_put(&b, s, len);
            if (b.n == 0) tk_buf_put(&b, i == t->bos ? "<s>" : i == t->eos ? "</s>" : "<unk>", i == t->bos ? 3 : i == t->eos ? 4 : 5);
        } else {
            for (size_t k = 0; k < len; k++) {
                if (s[k] == ' ') tk_buf_put(&b, SPACE_MARK, 3);
                else tk_buf_putc(&b, s[k]);
            }
        }
        if (lg_utf8_check(b.p, b.n) != b.n) {
            free(b.p);
            return lg_errorf("tokenizer: piece %d is not valid UTF-8", i);
        }
        t->piece[i] = lg_malloc(b.n + 1);
        if (b.n) memcpy(t->piece[i], b.p, b.n);
        t->piece[i][b.n] = 0;
        t->plen[i] = (uint32_t)b.n;
        t->score[i] = scores[i];
        if (control) {
            t->special[i] = 1;
        } else if (b.n) {
            if (tk_smap_get(&t->vocab, b.p, b.n) < 0) tk_smap_put(&t->vocab, b.p, b.n, i);
            t->mergeable[i] = !is_byte_piece(b.p, b.n);
        }
    }
    /* pieces map: later ids must not shadow earlier ones in lookups by name */
    for (int i = n - 1; i >= 0; i--)
        if (t->plen[i]) tk_smap_put(&t->pieces, t->piece[i], t->plen[i], i);
    free(b.p);
    add_norm(t, NORM_PREPEND, SPACE_MARK, NULL);
    add_norm(t, NORM_REPLACE, " ", SPACE_MARK);
    tk_dec d;
    memset(&d, 0, sizeof d);
    d.type = DEC_REPLACE;
    d.a = lg_strdup(SPACE_MARK);
    d.alen = 3;
    d.b = lg_strdup(" ");
    d.blen = 1;
    add_dec(t, d);
    memset(&d, 0, sizeof d);
    d.type = DEC_BYTEFALLBACK;
    add_dec(t, d);
    d.type = DEC_FUSE;
    add_dec(t, d);
    d.type = DEC_STRIP;
    d.strip_ch = ' ';
    d.start = 1;
    d.stop = 0;
    add_dec(t, d);
    if (t->bos >= 0) {
        t->prefix = lg_malloc(sizeof(int));
        t->prefix[0] = t->bos;
        t->n_prefix = 1;
    }
    return 0;
}

int lg_tokenizer_from_spm(int n, const char *const *pieces, const int *lens, const float *scores, int unk, int bos,
                          int eos, lg_tokenizer **out) {
    *out = NULL;
    lg_tokenizer *t = lg_calloc(1, sizeof *t);
    if (tk_llama2c_setup(t, n, pieces, lens, scores, unk, bos, eos) || tk_finish(t)) {
        lg_tokenizer_free(t);
        return -1;
    }
    *out = t;
    return 0;
}

int lg_tokenizer_load_llama2c_mem(const void *data, size_t len, const char *name, lg_tokenizer **out) {
    *out = NULL;
    const unsigned char *p = data;
    if (!name) name = "tokenizer.bin";
    if (len < 4) return lg_errorf("%s: too short for a llama2.c tokenizer.bin", name);
    int32_t maxlen;
    memcpy(&maxlen, p, 4);
    if (maxlen <= 0 || maxlen > 65536)
        return lg_errorf("%s: not a llama2.c tokenizer.bin (max_token_length %d)", name, (int)maxlen);
    size_t off = 4;
    int n = 0, cap = 0;
    const char **pieces = NULL;
    int *lens = NULL;
    float *scores = NULL;
    while (off < len) {
        if (len - off < 8) {
            free(pieces), free(lens), free(scores);
            return lg_errorf("%s: truncated record header for token %d at byte %zu", name, n, off);
        }
        float sc;
        int32_t l;
        memcpy(&sc, p + off, 4);
        memcpy(&l, p + off + 4, 4);
        off += 8;
        if (l < 0 || l > maxlen * 4 + 16 || (size_t)l > len - off) {
            free(pieces), free(lens), free(scores);
            return lg_errorf("%s: token %d has a bad length %d at byte %zu", name, n, (int)l, off - 4);
        }
        if (sc != sc) {
            free(pieces), free(lens), free(scores);
            return lg_errorf("%s: token %d has a NaN score", name, n);
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 1024;
            if (cap > (1 << 24)) {
                free(pieces), free(lens), free(scores);
                return lg_errorf("%s: too many tokens", name);
            }
            pieces = lg_realloc(pieces, (size_t)cap * sizeof(char *));
            lens = lg_realloc(lens, (size_t)cap * sizeof(int));
            scores = lg_realloc(scores, (size_t)cap * sizeof(float));
        }
        pieces[n] = (const char *)p + off;
        lens[n] = l;
        scores[n] = sc;
        n++;
        off += (size_t)l;
    }
    if (n < 3) {
        free(pieces), free(lens), free(scores);
        return lg_errorf("%s: a llama2.c tokenizer needs at least 3 tokens (unk, bos, eos), found %d", name, n);
    }
    lg_tokenizer *t = lg_calloc(1, sizeof *t);
    int rc = tk_llama2c_setup(t, n, pieces, lens, scores, 0, 1, 2);
    free(pieces), free(lens), free(scores);
    if (rc || tk_finish(t)) {
        lg_errorf_prefix("%s", name);
        lg_tokenizer_free(t);
        return -1;
    }
    *out = t;
    return 0;
}

/* ---- tokenizer.json writer ------------------------------------------------------ */
typedef struct {
    float score;
    int t, l, r;
} merge_t;

static int merge_cmp(const void *a, const void *b) {
    const merge_t *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    if (x->t != y->t) return x->t < y->t ? -1 : 1;
    if (x->l != y->l) return x->l < y->l ? -1 : 1;
    return x->r < y->r ? -1 : x->r > y->r;
}

static cJSON *added_json(const lg_tokenizer *t, int id) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "id", id);
    cJSON_AddStringToObject(o, "content", t->piece[id]);
    cJSON_AddBoolToObject(o, "single_word", 0);
    cJSON_AddBoolToObject(o, "lstrip", 0);
    cJSON_AddBoolToObject(o, "rstrip", 0);
    cJSON_AddBoolToObject(o, "normalized", 0);
    cJSON_AddBoolToObject(o, "special", 1);
    return o;
}

static cJSON *str_pattern(const char *s) {
    cJSON *p = cJSON_CreateObject();
    cJSON_AddStringToObject(p, "String", s);
    return p;
}

static char *spm_json(const lg_tokenizer *t, size_t *out_len) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "version", "1.0");
    cJSON_AddNullToObject(root, "truncation");
    cJSON_AddNullToObject(root, "padding");
    cJSON *added = cJSON_AddArrayToObject(root, "added_tokens");
    for (int i = 0; i < t->n_ids; i++)
        if (t->special[i]) cJSON_AddItemToArray(added, added_json(t, i));
    cJSON *norm = cJSON_AddObjectToObject(root, "normalizer");
    cJSON_AddStringToObject(norm, "type", "Sequence");
    cJSON *nl = cJSON_AddArrayToObject(norm, "normalizers");
    cJSON *n1 = cJSON_CreateObject();
    cJSON_AddStringToObject(n1, "type", "Prepend");
    cJSON_AddStringToObject(n1, "prepend", SPACE_MARK);
    cJSON_AddItemToArray(nl, n1);
    cJSON *n2 = cJSON_CreateObject();
    cJSON_AddStringToObject(n2, "type", "Replace");
    cJSON_AddItemToObject(n2, "pattern", str_pattern(" "));
    cJSON_AddStringToObject(n2, "content", SPACE_MARK);
    cJSON_AddItemToArray(nl, n2);
    cJSON_AddNullToObject(root, "pre_tokenizer");
    if (t->bos >= 0) {
        const char *bn = t->piece[t->bos];
        cJSON *pp = cJSON_AddObjectToObject(root, "post_processor");
        cJSON_AddStringToObject(pp, "type", "TemplateProcessing");
        for (int pair = 0; pair < 2; pair++) {
            cJSON *arr = cJSON_AddArrayToObject(pp, pair ? "pair" : "single");
            for (int k = 0; k <= pair; k++) {
                cJSON *st = cJSON_CreateObject(), *sti = cJSON_AddObjectToObject(st, "SpecialToken");
                cJSON_AddStringToObject(sti, "id", bn);
                cJSON_AddNumberToObject(sti, "type_id", k);
                cJSON_AddItemToArray(arr, st);
                cJSON *sq = cJSON_CreateObject(), *sqi = cJSON_AddObjectToObject(sq, "Sequence");
                cJSON_AddStringToObject(sqi, "id", k ? "B" : "A");
                cJSON_AddNumberToObject(sqi, "type_id", k);
                cJSON_AddItemToArray(arr, sq);
            }
        }
        cJSON *sp = cJSON_AddObjectToObject(pp, "special_tokens");
        cJSON *def = cJSON_AddObjectToObject(sp, bn);
        cJSON_AddStringToObject(def, "id", bn);
        int ids[1] = {t->bos};
        cJSON_AddItemToObject(def, "ids", cJSON_CreateIntArray(ids, 1));
        const char *toks[1] = {bn};
        cJSON_AddItemToObject(def, "tokens", cJSON_CreateStringArray(toks, 1));
    } else {
        cJSON_AddNullToObject(root, "post_processor");
    }
    cJSON *dec = cJSON_AddObjectToObject(root, "decoder");
    cJSON_AddStringToObject(dec, "type", "Sequence");
    cJSON *dl = cJSON_AddArrayToObject(dec, "decoders");
    cJSON *d1 = cJSON_CreateObject();
    cJSON_AddStringToObject(d1, "type", "Replace");
    cJSON_AddItemToObject(d1, "pattern", str_pattern(SPACE_MARK));
    cJSON_AddStringToObject(d1, "content", " ");
    cJSON_AddItemToArray(dl, d1);
    cJSON *d2 = cJSON_CreateObject();
    cJSON_AddStringToObject(d2, "type", "ByteFallback");
    cJSON_AddItemToArray(dl, d2);
    cJSON *d3 = cJSON_CreateObject();
    cJSON_AddStringToObject(d3, "type", "Fuse");
    cJSON_AddItemToArray(dl, d3);
    cJSON *d4 = cJSON_CreateObject();
    cJSON_AddStringToObject(d4, "type", "Strip");
    cJSON_AddStringToObject(d4, "content", " ");
    cJSON_AddNumberToObject(d4, "start", 1);
    cJSON_AddNumberToObject(d4, "stop", 0);
    cJSON_AddItemToArray(dl, d4);

    cJSON *model = cJSON_AddObjectToObject(root, "model");
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddNullToObject(model, "dropout");
    if (t->unk_id >= 0) cJSON_AddStringToObject(model, "unk_token", t->piece[t->unk_id]);
    else cJSON_AddNullToObject(model, "unk_token");
    cJSON_AddNullToObject(model, "continuing_subword_prefix");
    cJSON_AddNullToObject(model, "end_of_word_suffix");
    cJSON_AddBoolToObject(model, "fuse_unk", 1);
    cJSON_AddBoolToObject(model, "byte_fallback", 1);
    cJSON_AddBoolToObject(model, "ignore_merges", 0);
    cJSON *vocab = cJSON_AddObjectToObject(model, "vocab");
    /* one entry per distinct piece (the first id wins, as the pieces map does) */
    for (int i = 0; i < t->n_ids; i++) {
        if (!t->plen[i] || tk_smap_get(&t->pieces, t->piece[i], t->plen[i]) != i) continue;
        cJSON_AddNumberToObject(vocab, t->piece[i], i);
    }
    /* merges: every split of every mergeable piece into two mergeable pieces, ordered by the
     * merged piece's score (highest first), then ids */
    merge_t *m = NULL;
    size_t nm = 0, cap = 0;
    int any_space = 0;
    for (int i = 0; i < t->n_ids; i++) {
        if (!t->mergeable[i] || tk_smap_get(&t->vocab, t->piece[i], t->plen[i]) != i) continue;
        const char *s = t->piece[i];
        size_t len = t->plen[i];
        for (size_t k = (size_t)lg_utf8_len((unsigned char)s[0]); k < len; k += (size_t)lg_utf8_len((unsigned char)s[k])) {
            int l = tk_smap_get(&t->vocab, s, k), r = tk_smap_get(&t->vocab, s + k, len - k);
            if (l < 0 || r < 0 || !t->mergeable[l] || !t->mergeable[r]) continue;
            if (nm == cap) {
                cap = cap ? cap * 2 : 4096;
                m = lg_realloc(m, cap * sizeof *m);
            }
            m[nm++] = (merge_t){t->score[i], i, l, r};
        }
        if (memchr(s, ' ', len)) any_space = 1;
    }
    if (nm) qsort(m, nm, sizeof *m, merge_cmp);
    cJSON *merges = cJSON_AddArrayToObject(model, "merges");
    tk_buf b = {0};
    for (size_t k = 0; k < nm; k++) {
        if (any_space) {
            const char *pr[2] = {t->piece[m[k].l], t->piece[m[k].r]};
            cJSON_AddItemToArray(merges, cJSON_CreateStringArray(pr, 2));
        } else {
            b.n = 0;
            tk_buf_put(&b, t->piece[m[k].l], t->plen[m[k].l]);
            tk_buf_putc(&b, ' ');
            tk_buf_put(&b, t->piece[m[k].r], t->plen[m[k].r]);
            tk_buf_putc(&b, 0);
            cJSON_AddItemToArray(merges, cJSON_CreateString(b.p));
        }
    }
    free(b.p);
    free(m);
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    *out_len = s ? strlen(s) : 0;
    return s;
}

static char *default_config(const lg_tokenizer *t, int llama, size_t *out_len) {
    cJSON *c = cJSON_CreateObject();
    if (llama) {
        cJSON_AddBoolToObject(c, "add_bos_token", t->bos >= 0);
        cJSON_AddBoolToObject(c, "add_eos_token", 0);
    }
    if (t->bos >= 0) cJSON_AddStringToObject(c, "bos_token", t->piece[t->bos]);
    if (t->eos >= 0) cJSON_AddStringToObject(c, "eos_token", t->piece[t->eos]);
    if (t->unk_id >= 0) cJSON_AddStringToObject(c, "unk_token", t->piece[t->unk_id]);
    cJSON_AddNullToObject(c, "pad_token");
    cJSON_AddBoolToObject(c, "clean_up_tokenization_spaces", 0);
    if (llama) {
        cJSON_AddBoolToObject(c, "legacy", 1);
        cJSON_AddStringToObject(c, "tokenizer_class", "LlamaTokenizer");
    } else {
        cJSON_AddStringToObject(c, "tokenizer_class", "PreTrainedTokenizerFast");
    }
    char *s = cJSON_Print(c);
    cJSON_Delete(c);
    *out_len = s ? strlen(s) : 0;
    return s;
}

int lg_tokenizer_save_hf(const lg_tokenizer *t, const char *dir) {
    if (lg_mkdir_p(dir)) return -1;
    char *jp = lg_path_join(dir, "tokenizer.json"), *cp = lg_path_join(dir, "tokenizer_config.json");
    int rc = 0;
    if (t->src_json) {
        rc = lg_write_file_atomic(jp, t->src_json, t->src_json_len);
        if (!rc) {
            if (t->src_config) rc = lg_write_file_atomic(cp, t->src_config, t->src_config_len);
            else {
                size_t n;
                char *s = default_config(t, 0, &n);
                rc = s ? lg_write_file_atomic(cp, s, n) : lg_errorf("tokenizer: cannot build tokenizer_config.json");
                free(s);
            }
        }
    } else {
        size_t n;
        char *s = spm_json(t, &n);
        rc = s ? lg_write_file_atomic(jp, s, n) : lg_errorf("tokenizer: cannot build tokenizer.json");
        free(s);
        if (!rc) {
            s = default_config(t, 1, &n);
            rc = s ? lg_write_file_atomic(cp, s, n) : lg_errorf("tokenizer: cannot build tokenizer_config.json");
            free(s);
        }
    }
    free(jp);
    free(cp);
    return rc;
}
