/* hf_json.c — reading a Hugging Face tokenizer.json (+ tokenizer_config.json) into an
 * lg_tokenizer. Every component we do not implement is refused with a message naming it:
 * a tokenizer that silently differs from the reference would be worse than none. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "core/util.h"
#include "tokenizer/tok_internal.h"

static const char *jstr(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}
static int jbool(const cJSON *o, const char *k, int def) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : def;
}
static char *dup_or_null(const char *s) { return s && *s ? lg_strdup(s) : NULL; }

/* {"String": "x"} or {"Regex": "x"} */
static int parse_pattern(const cJSON *pat, const char *name, const char *what, pcre2_code **re, char **lit) {
    const char *s;
    if ((s = jstr(pat, "String"))) {
        if (lit) {
            *lit = lg_strdup(s);
            return 0;
        }
        *re = tk_regex_compile(s, strlen(s), 1, name);
        return *re ? 0 : -1;
    }
    if ((s = jstr(pat, "Regex"))) {
        *re = tk_regex_compile(s, strlen(s), 0, name);
        return *re ? 0 : -1;
    }
    return lg_errorf("%s: %s: pattern must be {\"String\": ...} or {\"Regex\": ...}", name, what);
}

/* ---- normalizers ------------------------------------------------------------------ */
static int add_norm(lg_tokenizer *t, const cJSON *n, const char *name) {
    if (cJSON_IsNull(n) || !n) return 0;
    const char *type = jstr(n, "type");
    if (!type) return lg_errorf("%s: normalizer without a \"type\"", name);
    if (!strcmp(type, "Sequence")) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(n, "normalizers"), *x;
        if (!cJSON_IsArray(arr)) return lg_errorf("%s: Sequence normalizer without \"normalizers\"", name);
        cJSON_ArrayForEach(x, arr) if (add_norm(t, x, name)) return -1;
        return 0;
    }
    tk_norm nm;
    memset(&nm, 0, sizeof nm);
    if (!strcmp(type, "Prepend")) {
        const char *p = jstr(n, "prepend");
        if (!p) return lg_errorf("%s: Prepend normalizer without \"prepend\"", name);
        nm.type = NORM_PREPEND;
        nm.a = lg_strdup(p);
        nm.alen = strlen(p);
    } else if (!strcmp(type, "Replace")) {
        const char *content = jstr(n, "content");
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(n, "pattern");
        if (!content || !cJSON_IsObject(pat)) return lg_errorf("%s: Replace normalizer needs pattern and content", name);
        nm.type = NORM_REPLACE;
        if (parse_pattern(pat, name, "Replace normalizer", &nm.re, &nm.a)) return -1;
        if (nm.a) nm.alen = strlen(nm.a);
        nm.b = lg_strdup(content);
        nm.blen = strlen(content);
    } else if (!strcmp(type, "NFC")) {
        nm.type = NORM_NFC;
    } else {
        return lg_errorf("%s: normalizer \"%s\" is not supported (supported: Sequence, Prepend, Replace, NFC)", name,
                         type);
    }
    t->norms = lg_realloc(t->norms, (size_t)(t->n_norms + 1) * sizeof(tk_norm));
    t->norms[t->n_norms++] = nm;
    return 0;
}

/* ---- pre-tokenizers ------------------------------------------------------------- */
#define GPT2_PATTERN "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"

static int parse_scheme(const cJSON *n, int *scheme) {
    const char *ps = jstr(n, "prepend_scheme");
    if (ps) {
        if (!strcmp(ps, "always")) *scheme = PREPEND_ALWAYS;
        else if (!strcmp(ps, "first")) *scheme = PREPEND_FIRST;
        else if (!strcmp(ps, "never")) *scheme = PREPEND_NEVER;
        else return -1;
    } else {
        *scheme = jbool(n, "add_prefix_space", 1) ? PREPEND_ALWAYS : PREPEND_NEVER;
    }
    return 0;
}

static int add_pretok(lg_tokenizer *t, const cJSON *n, const char *name) {
    if (cJSON_IsNull(n) || !n) return 0;
    const char *type = jstr(n, "type");
    if (!type) return lg_errorf("%s: pre_tokenizer without a \"type\"", name);
    if (!strcmp(type, "Sequence")) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(n, "pretokenizers"), *x;
        if (!cJSON_IsArray(arr)) return lg_errorf("%s: Sequence pre_tokenizer without \"pretokenizers\"", name);
        cJSON_ArrayForEach(x, arr) if (add_pretok(t, x, name)) return -1;
        return 0;
    }
    if (t->n_pretoks >= 15) return lg_errorf("%s: too many pre-tokenizers", name);
    tk_pretok p;
    memset(&p, 0, sizeof p);
    if (!strcmp(type, "ByteLevel")) {
        p.type = PT_BYTELEVEL;
        p.add_prefix_space = jbool(n, "add_prefix_space", 1);
        if (jbool(n, "use_regex", 1)) {
            p.re = tk_regex_compile(GPT2_PATTERN, strlen(GPT2_PATTERN), 0, name);
            if (!p.re) return -1;
        }
    } else if (!strcmp(type, "Split")) {
        p.type = PT_SPLIT;
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(n, "pattern");
        const char *beh = jstr(n, "behavior");
        if (!cJSON_IsObject(pat) || !beh) return lg_errorf("%s: Split pre_tokenizer needs pattern and behavior", name);
        if (!strcmp(beh, "Removed")) p.behavior = SPLIT_REMOVED;
        else if (!strcmp(beh, "Isolated")) p.behavior = SPLIT_ISOLATED;
        else if (!strcmp(beh, "MergedWithPrevious")) p.behavior = SPLIT_MERGED_PREV;
        else if (!strcmp(beh, "MergedWithNext")) p.behavior = SPLIT_MERGED_NEXT;
        else if (!strcmp(beh, "Contiguous")) p.behavior = SPLIT_CONTIGUOUS;
        else return lg_errorf("%s: Split behavior \"%s\" is unknown", name, beh);
        p.invert = jbool(n, "invert", 0);
        if (parse_pattern(pat, name, "Split pre_tokenizer", &p.re, NULL)) return -1;
    } else if (!strcmp(type, "Digits")) {
        p.type = PT_DIGITS;
        int ind = jbool(n, "individual_digits", 0);
        p.behavior = ind ? SPLIT_ISOLATED : SPLIT_CONTIGUOUS;
        p.re = tk_regex_compile("\\p{N}", 5, 0, name);
        if (!p.re) return -1;
    } else if (!strcmp(type, "WhitespaceSplit")) {
        p.type = PT_WHITESPACE_SPLIT;
        p.behavior = SPLIT_REMOVED;
        p.re = tk_regex_compile("\\s+", 3, 0, name);
        if (!p.re) return -1;
    } else if (!strcmp(type, "Metaspace")) {
        p.type = PT_METASPACE;
        const char *rep = jstr(n, "replacement");
        if (!rep) rep = "\xE2\x96\x81";
        if (strlen(rep) == 0 || strlen(rep) > 4) return lg_errorf("%s: Metaspace replacement must be one character", name);
        memcpy(p.rep, rep, strlen(rep));
        p.replen = (int)strlen(rep);
        if (parse_scheme(n, &p.prepend_scheme)) return lg_errorf("%s: Metaspace prepend_scheme is unknown", name);
        p.split = jbool(n, "split", 1);
    } else {
        return lg_errorf("%s: pre_tokenizer \"%s\" is not supported (supported: Sequence, ByteLevel, Split, Digits, "
                         "Metaspace, WhitespaceSplit)",
                         name, type);
    }
    t->pretoks = lg_realloc(t->pretoks, (size_t)(t->n_pretoks + 1) * sizeof(tk_pretok));
    t->pretoks[t->n_pretoks++] = p;
    return 0;
}

/* ---- decoders ------------------------------------------------------------------- */
static int add_dec(lg_tokenizer *t, const cJSON *n, const char *name) {
    if (cJSON_IsNull(n) || !n) return 0;
    const char *type = jstr(n, "type");
    if (!type) return lg_errorf("%s: decoder without a \"type\"", name);
    if (!strcmp(type, "Sequence")) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(n, "decoders"), *x;
        if (!cJSON_IsArray(arr)) return lg_errorf("%s: Sequence decoder without \"decoders\"", name);
        cJSON_ArrayForEach(x, arr) if (add_dec(t, x, name)) return -1;
        return 0;
    }
    tk_dec d;
    memset(&d, 0, sizeof d);
    if (!strcmp(type, "ByteLevel")) d.type = DEC_BYTELEVEL;
    else if (!strcmp(type, "ByteFallback")) d.type = DEC_BYTEFALLBACK;
    else if (!strcmp(type, "Fuse")) d.type = DEC_FUSE;
    else if (!strcmp(type, "Replace")) {
        d.type = DEC_REPLACE;
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(n, "pattern");
        const char *content = jstr(n, "content");
        const char *s = cJSON_IsObject(pat) ? jstr(pat, "String") : NULL;
        if (!s || !content) return lg_errorf("%s: Replace decoder needs a String pattern and content", name);
        d.a = lg_strdup(s);
        d.alen = strlen(s);
        d.b = lg_strdup(content);
        d.blen = strlen(content);
    } else if (!strcmp(type, "Strip")) {
        d.type = DEC_STRIP;
        const char *content = jstr(n, "content");
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(n, "start"), *sp = cJSON_GetObjectItemCaseSensitive(n, "stop");
        if (!content || !*content || !cJSON_IsNumber(st) || !cJSON_IsNumber(sp))
            return lg_errorf("%s: Strip decoder needs content, start and stop", name);
        int k;
        if (lg_utf8_check(content, strlen(content)) != strlen(content))
            return lg_errorf("%s: Strip decoder content is not UTF-8", name);
        d.strip_ch = lg_utf8_decode(content, &k);
        d.start = (int)LG_MAX(0, LG_MIN(st->valuedouble, 1 << 20));
        d.stop = (int)LG_MAX(0, LG_MIN(sp->valuedouble, 1 << 20));
    } else if (!strcmp(type, "Metaspace")) {
        d.type = DEC_METASPACE;
        const char *rep = jstr(n, "replacement");
        if (!rep) rep = "\xE2\x96\x81";
        if (strlen(rep) == 0 || strlen(rep) > 4) return lg_errorf("%s: Metaspace replacement must be one character", name);
        memcpy(d.rep, rep, strlen(rep));
        d.replen = (int)strlen(rep);
        if (parse_scheme(n, &d.prepend_scheme)) return lg_errorf("%s: Metaspace prepend_scheme is unknown", name);
    } else {
        return lg_errorf("%s: decoder \"%s\" is not supported (supported: Sequence, ByteLevel, ByteFallback, Fuse, "
                         "Replace, Strip, Metaspace)",
                         name, type);
    }
    t->decs = lg_realloc(t->decs, (size_t)(t->n_decs + 1) * sizeof(tk_dec));
    t->decs[t->n_decs++] = d;
    return 0;
}

/* ---- post-processor -------------------------------------------------------------- */
static void push_id(int **arr, int *n, int id) {
    *arr = lg_realloc(*arr, (size_t)(*n + 1) * sizeof(int));
    (*arr)[(*n)++] = id;
}

static int add_post(lg_tokenizer *t, const cJSON *n, const char *name) {
    if (cJSON_IsNull(n) || !n) return 0;
    const char *type = jstr(n, "type");
    if (!type) return lg_errorf("%s: post_processor without a \"type\"", name);
    if (!strcmp(type, "Sequence")) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(n, "processors"), *x;
        if (!cJSON_IsArray(arr)) return lg_errorf("%s: Sequence post_processor without \"processors\"", name);
        cJSON_ArrayForEach(x, arr) if (add_post(t, x, name)) return -1;
        return 0;
    }
    if (!strcmp(type, "ByteLevel")) return 0; /* offsets only */
    if (!strcmp(type, "TemplateProcessing")) {
        const cJSON *single = cJSON_GetObjectItemCaseSensitive(n, "single"), *x;
        const cJSON *sp = cJSON_GetObjectItemCaseSensitive(n, "special_tokens");
        if (!cJSON_IsArray(single)) return lg_errorf("%s: TemplateProcessing without \"single\"", name);
        int seen_a = 0;
        cJSON_ArrayForEach(x, single) {
            const cJSON *st = cJSON_GetObjectItemCaseSensitive(x, "SpecialToken");
            if (cJSON_GetObjectItemCaseSensitive(x, "Sequence")) {
                seen_a = 1;
                continue;
            }
            const char *sid = st ? jstr(st, "id") : NULL;
            if (!sid) return lg_errorf("%s: TemplateProcessing: bad template item", name);
            const cJSON *def = cJSON_IsObject(sp) ? cJSON_GetObjectItemCaseSensitive(sp, sid) : NULL;
            const cJSON *ids = def ? cJSON_GetObjectItemCaseSensitive(def, "ids") : NULL, *y;
            if (!cJSON_IsArray(ids))
                return lg_errorf("%s: TemplateProcessing: special token \"%s\" is not defined", name, sid);
            cJSON_ArrayForEach(y, ids) {
                if (!cJSON_IsNumber(y) || y->valuedouble < 0 || y->valuedouble >= 1 << 30)
                    return lg_errorf("%s: TemplateProcessing: bad id for \"%s\"", name, sid);
                if (seen_a) push_id(&t->suffix, &t->n_suffix, (int)y->valuedouble);
                else push_id(&t->prefix, &t->n_prefix, (int)y->valuedouble);
            }
        }
        return 0;
    }
    if (!strcmp(type, "RobertaProcessing") || !strcmp(type, "BertProcessing")) {
        const cJSON *cls = cJSON_GetObjectItemCaseSensitive(n, "cls"), *sep = cJSON_GetObjectItemCaseSensitive(n, "sep");
        const cJSON *ci = cJSON_GetArrayItem(cls, 1), *si = cJSON_GetArrayItem(sep, 1);
        if (!cJSON_IsNumber(ci) || !cJSON_IsNumber(si) || ci->valuedouble < 0 || si->valuedouble < 0 ||
            ci->valuedouble >= 1 << 30 || si->valuedouble >= 1 << 30)
            return lg_errorf("%s: %s needs cls and sep", name, type);
        push_id(&t->prefix, &t->n_prefix, (int)ci->valuedouble);
        push_id(&t->suffix, &t->n_suffix, (int)si->valuedouble);
        return 0;
    }
    return lg_errorf("%s: post_processor \"%s\" is not supported", name, type);
}

/* ---- tokenizer_config.json -------------------------------------------------------- */
static const char *cfg_token(const cJSON *cfg, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (cJSON_IsString(v)) return v->valuestring;
    if (cJSON_IsObject(v)) return jstr(v, "content");
    return NULL;
}

static int guess(const lg_tokenizer *t, const char *const *names) {
    for (int i = 0; names[i]; i++) {
        int id = tk_smap_get(&t->pieces, names[i], strlen(names[i]));
        if (id >= 0) return id;
    }
    return -1;
}

static int apply_config(lg_tokenizer *t, const char *cfg_text, size_t cfg_len, const char *name) {
    static const char *const bos_names[] = {"<s>", "<|begin_of_text|>", "<bos>", NULL};
    static const char *const eos_names[] = {"</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", NULL};
    t->bos = t->n_prefix ? t->prefix[0] : guess(t, bos_names);
    t->eos = t->n_suffix ? t->suffix[t->n_suffix - 1] : guess(t, eos_names);
    t->pad = -1;
    if (!cfg_text) return 0;
    cJSON *cfg = lg_json_parse(cfg_text, cfg_len, "byte");
    if (!cfg) return lg_errorf_prefix("%s: tokenizer_config.json", name);
    if (!cJSON_IsObject(cfg)) {
        cJSON_Delete(cfg);
        return lg_errorf("%s: tokenizer_config.json is not a JSON object", name);
    }
    const char *s;
    int bos_given = 0, eos_given = 0;
    if ((s = cfg_token(cfg, "bos_token"))) t->bos = tk_smap_get(&t->pieces, s, strlen(s)), bos_given = 1;
    else if (cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(cfg, "bos_token"))) t->bos = -1, bos_given = 1;
    if ((s = cfg_token(cfg, "eos_token"))) t->eos = tk_smap_get(&t->pieces, s, strlen(s)), eos_given = 1;
    if ((s = cfg_token(cfg, "pad_token"))) t->pad = tk_smap_get(&t->pieces, s, strlen(s));
    (void)bos_given;
    (void)eos_given;
    const cJSON *ab = cJSON_GetObjectItemCaseSensitive(cfg, "add_bos_token");
    const cJSON *ae = cJSON_GetObjectItemCaseSensitive(cfg, "add_eos_token");
    /* transformers' LLaMA-style tokenizers rebuild the post-processor from these flags */
    if (cJSON_IsBool(ab) || cJSON_IsBool(ae)) {
        int had_bos = t->n_prefix > 0 && t->bos >= 0 && t->prefix[0] == t->bos;
        int had_eos = t->n_suffix > 0 && t->eos >= 0 && t->suffix[t->n_suffix - 1] == t->eos;
        int add_bos = cJSON_IsBool(ab) ? cJSON_IsTrue(ab) : had_bos;
        int add_eos = cJSON_IsBool(ae) ? cJSON_IsTrue(ae) : had_eos;
        t->n_prefix = t->n_suffix = 0;
        if (add_bos && t->bos >= 0) push_id(&t->prefix, &t->n_prefix, t->bos);
        if (add_eos && t->eos >= 0) push_id(&t->suffix, &t->n_suffix, t->eos);
    }
    cJSON_Delete(cfg);
    return 0;
}

/* ---- the model -------------------------------------------------------------------- */
static int set_piece(lg_tokenizer *t, int id, const char *s, size_t n) {
    if (id < 0 || id >= t->n_ids) return -1;
    free(t->piece[id]);
    t->piece[id] = lg_malloc(n + 1);
    memcpy(t->piece[id], s, n);
    t->piece[id][n] = 0;
    t->plen[id] = (uint32_t)n;
    return 0;
}

static int id_of(const cJSON *v, int *id) {
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble >= (1 << 26) || v->valuedouble != (int)v->valuedouble)
        return -1;
    *id = (int)v->valuedouble;
    return 0;
}

static int load_model(lg_tokenizer *t, const cJSON *root, const char *name) {
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(model)) return lg_errorf("%s: no \"model\" object", name);
    const char *type = jstr(model, "type");
    if (type && strcmp(type, "BPE"))
        return lg_errorf("%s: model type \"%s\" is not supported (only BPE)", name, type);
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab"), *v;
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    if (!cJSON_IsObject(vocab)) return lg_errorf("%s: model has no \"vocab\" object", name);
    if (merges && !cJSON_IsArray(merges)) return lg_errorf("%s: model \"merges\" is not an array", name);
    if (added && !cJSON_IsArray(added) && !cJSON_IsNull(added))
        return lg_errorf("%s: \"added_tokens\" is not an array", name);
    int max_id = -1, id;
    cJSON_ArrayForEach(v, vocab) {
        if (id_of(v, &id)) return lg_errorf("%s: vocab entry \"%.64s\" has a bad id", name, v->string);
        max_id = LG_MAX(max_id, id);
    }
    if (cJSON_IsArray(added)) cJSON_ArrayForEach(v, added) {
            if (id_of(cJSON_GetObjectItemCaseSensitive(v, "id"), &id) || !jstr(v, "content"))
                return lg_errorf("%s: added_tokens entry without a valid id and content", name);
            max_id = LG_MAX(max_id, id);
        }
    if (max_id < 0) return lg_errorf("%s: empty vocabulary", name);
    t->model = MODEL_BPE;
    t->n_ids = max_id + 1;
    t->piece = lg_calloc((size_t)t->n_ids, sizeof(char *));
    t->plen = lg_calloc((size_t)t->n_ids, sizeof(uint32_t));
    t->special = lg_calloc((size_t)t->n_ids, 1);
    cJSON_ArrayForEach(v, vocab) {
        id_of(v, &id);
        size_t n = strlen(v->string);
        tk_smap_put(&t->vocab, v->string, n, id);
        tk_smap_put(&t->pieces, v->string, n, id);
        set_piece(t, id, v->string, n);
    }
    t->byte_fallback = jbool(model, "byte_fallback", 0);
    t->fuse_unk = jbool(model, "fuse_unk", 0);
    t->ignore_merges = jbool(model, "ignore_merges", 0);
    t->cont_prefix = dup_or_null(jstr(model, "continuing_subword_prefix"));
    t->eow_suffix = dup_or_null(jstr(model, "end_of_word_suffix"));
    t->unk_id = -1;
    const char *unk = jstr(model, "unk_token");
    if (unk) {
        t->unk_id = tk_smap_get(&t->vocab, unk, strlen(unk));
        if (t->unk_id < 0) return lg_errorf("%s: unk_token \"%.64s\" is not in the vocabulary", name, unk);
    }
    /* merges: "a b" strings or ["a", "b"] pairs; rank = position (a later duplicate wins, as in HF) */
    int rank = 0;
    size_t plen = t->cont_prefix ? strlen(t->cont_prefix) : 0;
    tk_buf nb = {0};
    if (merges) cJSON_ArrayForEach(v, merges) {
            const char *a, *b;
            size_t al, bl;
            if (cJSON_IsString(v)) {
                const char *sp = strchr(v->valuestring, ' ');
                if (!sp) {
                    free(nb.p);
                    return lg_errorf("%s: merge %d (\"%.64s\") is not \"a b\"", name, rank, v->valuestring);
                }
                a = v->valuestring;
                al = (size_t)(sp - a);
                b = sp + 1;
                bl = strlen(b);
            } else if (cJSON_IsArray(v) && cJSON_GetArraySize(v) == 2 && cJSON_IsString(cJSON_GetArrayItem(v, 0)) &&
                       cJSON_IsString(cJSON_GetArrayItem(v, 1))) {
                a = cJSON_GetArrayItem(v, 0)->valuestring;
                b = cJSON_GetArrayItem(v, 1)->valuestring;
                al = strlen(a);
                bl = strlen(b);
            } else {
                free(nb.p);
                return lg_errorf("%s: merge %d is neither \"a b\" nor [\"a\", \"b\"]", name, rank);
            }
            int ia = tk_smap_get(&t->vocab, a, al), ib = tk_smap_get(&t->vocab, b, bl);
            if (ia < 0 || ib < 0) {
                free(nb.p);
                return lg_errorf("%s: merge %d: token \"%.*s\" is not in the vocabulary", name, rank,
                                 (int)LG_MIN(ia < 0 ? al : bl, 64), ia < 0 ? a : b);
            }
            nb.n = 0;
            tk_buf_put(&nb, a, al);
            if (plen && bl >= plen && !memcmp(b, t->cont_prefix, plen)) tk_buf_put(&nb, b + plen, bl - plen);
            else tk_buf_put(&nb, b, bl);
            int nid = tk_smap_get(&t->vocab, nb.p, nb.n);
            if (nid < 0) {
                free(nb.p);
                return lg_errorf("%s: merge %d: merged token \"%.*s\" is not in the vocabulary", name, rank,
                                 (int)LG_MIN(nb.n, 64), nb.p);
            }
            tk_pmap_put(&t->merges, ia, ib, rank, nid);
            rank++;
        }
    free(nb.p);
    /* added tokens */
    if (cJSON_IsArray(added)) {
        int na = cJSON_GetArraySize(added), k = 0;
        t->added = lg_calloc((size_t)na + 1, sizeof(tk_added));
        cJSON_ArrayForEach(v, added) {
            const char *content = jstr(v, "content");
            id_of(cJSON_GetObjectItemCaseSensitive(v, "id"), &id);
            size_t cl = strlen(content);
            /* as HF: a token already in the model vocabulary keeps its vocabulary id */
            int vid = tk_smap_get(&t->vocab, content, cl);
            if (vid >= 0) id = vid;
            if (lg_utf8_check(content, cl) != cl) return lg_errorf("%s: added token %d is not valid UTF-8", name, id);
            tk_added *a = &t->added[k++];
            t->n_added = k;
            a->content = lg_strdup(content);
            a->len = cl;
            a->id = id;
            a->special = (unsigned)jbool(v, "special", 0);
            a->lstrip = (unsigned)jbool(v, "lstrip", 0);
            a->rstrip = (unsigned)jbool(v, "rstrip", 0);
            a->single_word = (unsigned)jbool(v, "single_word", 0);
            a->normalized = (unsigned)jbool(v, "normalized", !a->special);
            set_piece(t, id, content, cl);
            tk_smap_put(&t->pieces, content, cl, id);
            if (a->special) t->special[id] = 1;
        }
    }
    return 0;
}

int tk_hf_load(lg_tokenizer *t, const char *json, size_t len, const char *cfg, size_t cfg_len, const char *name) {
    t->bos = t->eos = t->pad = t->unk_id = -1;
    /* every string that reaches the pipeline (and PCRE2, which trusts it) must be UTF-8 */
    size_t bad = lg_utf8_check(json, len);
    if (bad != len) return lg_errorf("%s: not valid UTF-8 (byte %zu)", name, bad);
    if (cfg && (bad = lg_utf8_check(cfg, cfg_len)) != cfg_len)
        return lg_errorf("%s: tokenizer_config.json is not valid UTF-8 (byte %zu)", name, bad);
    cJSON *root = lg_json_parse(json, len, "byte");
    if (!root) return lg_errorf_prefix("%s", name);
    int rc = -1;
    if (!cJSON_IsObject(root)) {
        lg_errorf("%s: top level is not a JSON object", name);
        goto done;
    }
    if (load_model(t, root, name)) goto done;
    if (add_norm(t, cJSON_GetObjectItemCaseSensitive(root, "normalizer"), name)) goto done;
    if (add_pretok(t, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), name)) goto done;
    if (add_dec(t, cJSON_GetObjectItemCaseSensitive(root, "decoder"), name)) goto done;
    if (add_post(t, cJSON_GetObjectItemCaseSensitive(root, "post_processor"), name)) goto done;
    for (int i = 0; i < t->n_prefix; i++)
        if (t->prefix[i] >= t->n_ids) {
            lg_errorf("%s: post_processor id %d is outside the vocabulary", name, t->prefix[i]);
            goto done;
        }
    for (int i = 0; i < t->n_suffix; i++)
        if (t->suffix[i] >= t->n_ids) {
            lg_errorf("%s: post_processor id %d is outside the vocabulary", name, t->suffix[i]);
            goto done;
        }
    if (apply_config(t, cfg, cfg_len, name)) goto done;
    t->src_json = lg_malloc(len + 1);
    memcpy(t->src_json, json, len);
    t->src_json[len] = 0;
    t->src_json_len = len;
    if (cfg) {
        t->src_config = lg_malloc(cfg_len + 1);
        memcpy(t->src_config, cfg, cfg_len);
        t->src_config[cfg_len] = 0;
        t->src_config_len = cfg_len;
    }
    rc = 0;
done:
    cJSON_Delete(root);
    return rc;
}
