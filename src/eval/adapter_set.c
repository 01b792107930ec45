/* adapter_set.c — PEFT LoRA adapter directories with per-module ranks/alphas (adapter_set.h).
 * Built on lora.h's public API: one lg_adapters per (r, alpha) group, attached with init NONE to
 * exactly that group's modules, then filled from the file. */
#include "eval/adapter_set.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <cjson/cJSON.h>
#include <math.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/lora_io.h"
#include "core/json.h"
#include "core/util.h"
#include "io/safetensors.h"

#define PREFIX "base_model.model."

struct lg_adapter_set {
    int ng, nmod;
    lg_adapters **g;
    char desc[192];
};

typedef struct {
    const char *key;   /* pattern as written */
    pcre2_code *re;    /* (.*\.)?(key)$, anchored at the start: Python's re.match */
    double value;
} pattern;

typedef struct {
    char *mod;
    lg_linear *lin;
    const lg_st_tensor *A, *B, *M;
    int r;
    float alpha;
} module;

typedef struct {
    const char *cfg_path, *st_path;
    cJSON *j;
    lg_safetensors *st;
    pattern *rp, *ap;
    int nrp, nap;
    pcre2_code *target_re; /* target_modules given as one regex (re.fullmatch) */
    module *mods;
    int nmods;
} loader;

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

/* A config value that leaves the forward as plain LoRA: absent, null, false, "", [] or {}. */
static int is_off(const cJSON *v) {
    if (!v || cJSON_IsNull(v) || cJSON_IsFalse(v)) return 1;
    if (cJSON_IsString(v)) return !v->valuestring[0];
    if (cJSON_IsArray(v) || cJSON_IsObject(v)) return !v->child;
    return 0;
}

/* shown: the pattern as the user wrote it (pat may wrap it) */
static pcre2_code *compile(const char *pat, const char *shown, int anchored, const char *what, const char *cfg) {
    int err;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, anchored ? PCRE2_ANCHORED : 0, &err, &off, NULL);
    if (!re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(err, msg, sizeof msg);
        lg_errorf("%s: %s '%s' is not a valid regular expression (%s)", cfg, what, shown, (char *)msg);
    }
    return re;
}

/* Python re.match(re, s) (anchored at the start; the pattern itself ends in $) or, with full,
 * re.fullmatch. */
static int re_match(pcre2_code *re, const char *s, int full) {
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    const uint32_t opts = PCRE2_ANCHORED | (full ? PCRE2_ENDANCHORED : 0);
    int rc = pcre2_match(re, (PCRE2_SPTR)s, PCRE2_ZERO_TERMINATED, 0, opts, md, NULL);
    pcre2_match_data_free(md);
    return rc >= 0;
}

static int read_patterns(loader *L, const char *field, int integer, pattern **out, int *n) {
    const cJSON *o = cJSON_GetObjectItemCaseSensitive(L->j, field);
    *out = NULL;
    *n = 0;
    if (is_off(o)) return 0;
    if (!cJSON_IsObject(o)) return lg_errorf("%s: \"%s\" must be an object {module pattern: value}", L->cfg_path, field);
    int k = cJSON_GetArraySize(o);
    pattern *p = lg_calloc((size_t)k, sizeof *p);
    *out = p;
    const cJSON *e;
    cJSON_ArrayForEach(e, o) {
        /* ranks convert to int, alphas to float: both must fit (1e20 is not a rank, 1e300 not a scale) */
        if (!cJSON_IsNumber(e) || !isfinite((float)e->valuedouble) ||
            (integer && (e->valuedouble < 1 || e->valuedouble > (1 << 20) || e->valuedouble != floor(e->valuedouble))))
            return lg_errorf("%s: %s[\"%s\"] must be a %s", L->cfg_path, field, e->string,
                             integer ? "positive integer" : "number");
        size_t cap = strlen(e->string) + 16;
        char *rx = lg_malloc(cap);
        snprintf(rx, cap, "(.*\\.)?(%s)$", e->string);
        p[*n].key = e->string;
        p[*n].value = e->valuedouble;
        p[*n].re = compile(rx, e->string, 1, field, L->cfg_path);
        free(rx);
        if (!p[*n].re) return -1;
        (*n)++;
    }
    return 0;
}

/* PEFT's get_pattern_key: the first key (in file order) that matches wins. */
static const pattern *match_pattern(const pattern *p, int n, const char *mod) {
    for (int i = 0; i < n; i++)
        if (re_match(p[i].re, mod, 0)) return &p[i];
    return NULL;
}

/* PEFT's list rule: the module path equals the entry or ends with "." + entry. */
static int suffix_match(const char *mod, const char *pat) {
    size_t a = strlen(mod), b = strlen(pat);
    if (a == b) return !strcmp(mod, pat);
    return a > b && mod[a - b - 1] == '.' && !strcmp(mod + a - b, pat);
}

static int selected_by_targets(loader *L, const char *mod) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(L->j, "target_modules");
    if (is_off(t)) return 1; /* PEFT's per-architecture default: nothing to check against */
    if (cJSON_IsString(t)) return !strcmp(t->valuestring, "all-linear") || re_match(L->target_re, mod, 1);
    const cJSON *e;
    cJSON_ArrayForEach(e, t) if (cJSON_IsString(e) && (!strcmp(e->valuestring, "all-linear") || suffix_match(mod, e->valuestring))) return 1;
    return 0;
}

static int check_config(loader *L, lg_model *m) {
    const char *cfg = L->cfg_path;
    const cJSON *j = L->j;
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(j, "peft_type"), *r = cJSON_GetObjectItemCaseSensitive(j, "r"),
                *al = cJSON_GetObjectItemCaseSensitive(j, "lora_alpha");
    if (!cJSON_IsString(pt) || strcmp(pt->valuestring, "LORA"))
        return lg_errorf("%s: peft_type %s is not supported (only LORA adapters: LoRA, rsLoRA, DoRA, and exports of "
                         "PiSSA / LoRA-GA / AdaLoRA as LoRA)", cfg, cJSON_IsString(pt) ? pt->valuestring : "(missing)");
    if (!cJSON_IsNumber(r) || r->valuedouble < 1 || r->valuedouble > (1 << 20) || r->valuedouble != floor(r->valuedouble))
        return lg_errorf("%s: \"r\" must be a positive integer (at most 2^20)", cfg);
    if (!cJSON_IsNumber(al) || !isfinite((float)al->valuedouble))
        return lg_errorf("%s: \"lora_alpha\" must be a finite number", cfg);
    const cJSON *bias = cJSON_GetObjectItemCaseSensitive(j, "bias");
    if (bias && !cJSON_IsNull(bias) && (!cJSON_IsString(bias) || strcmp(bias->valuestring, "none")))
        return lg_errorf("%s: bias \"%s\" is not supported (only \"none\")", cfg,
                         cJSON_IsString(bias) ? bias->valuestring : "?");
    /* features that change the forward beyond W + s B A (+ DoRA) */
    static const char *const off[] = {"lora_bias", "modules_to_save", "trainable_token_indices", "layer_replication",
                                      "alora_invocation_tokens", "target_parameters", "use_qalora", "arrow_config",
                                      "use_bdlora", "kasa_config", "monteclora_config", "velora_config",
                                      "megatron_config"};
    for (size_t i = 0; i < sizeof off / sizeof off[0]; i++)
        if (!is_off(cJSON_GetObjectItemCaseSensitive(j, off[i])))
            return lg_errorf("%s: \"%s\" is set; that PEFT feature is not supported by loraga", cfg, off[i]);
    const cJSON *init = cJSON_GetObjectItemCaseSensitive(j, "init_lora_weights");
    if (cJSON_IsString(init)) {
        const char *s = init->valuestring;
        if (!strncmp(s, "pissa", 5) || !strncmp(s, "corda", 5) || !strcmp(s, "olora") || !strcmp(s, "loftq") ||
            !strcmp(s, "lora_ga"))
            return lg_errorf("%s: init_lora_weights \"%s\": such an adapter is relative to base weights that PEFT "
                             "rewrites when it loads it; save it with path_initial_model_for_weight_conversion (a plain "
                             "LoRA relative to the original base), as loraga's own exports are", cfg, s);
    }
    if (read_patterns(L, "rank_pattern", 1, &L->rp, &L->nrp) != 0) return -1;
    if (read_patterns(L, "alpha_pattern", 0, &L->ap, &L->nap) != 0) return -1;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "target_modules");
    if (cJSON_IsString(t) && strcmp(t->valuestring, "all-linear")) {
        if (!(L->target_re = compile(t->valuestring, t->valuestring, 1, "target_modules", cfg))) return -1;
    } else if (cJSON_IsArray(t)) {
        const cJSON *e;
        cJSON_ArrayForEach(e, t) {
            if (!cJSON_IsString(e)) return lg_errorf("%s: target_modules entries must be strings", cfg);
            if (!strcmp(e->valuestring, "all-linear")) continue;
            int hit = 0;
            for (int i = 0; i < lg_model_n_linears(m) && !hit; i++) hit = suffix_match(lg_model_linear(m, i)->name, e->valuestring);
            if (!hit)
                return lg_errorf("%s: target module '%s' is not a linear layer of this model (module names look like "
                                 "'%s'); is the adapter for another architecture?", cfg, e->valuestring,
                                 lg_model_n_linears(m) ? lg_model_linear(m, 0)->name : "?");
        }
    } else if (!is_off(t)) {
        return lg_errorf("%s: target_modules must be a list of names or a regular expression", cfg);
    }
    return 0;
}

static module *find_or_add(loader *L, lg_model *m, const char *key, const char *mod_name) {
    for (int i = 0; i < L->nmods; i++)
        if (!strcmp(L->mods[i].mod, mod_name)) return &L->mods[i];
    lg_linear *lin = NULL;
    for (int i = 0; i < lg_model_n_linears(m) && !lin; i++)
        if (!strcmp(lg_model_linear(m, i)->name, mod_name)) lin = lg_model_linear(m, i);
    if (!lin) {
        lg_errorf("%s: tensor '%s' is for module '%s', which is not a linear layer of the model (module names look "
                  "like '%s')", L->st_path, key, mod_name, lg_model_n_linears(m) ? lg_model_linear(m, 0)->name : "?");
        return NULL;
    }
    L->mods = lg_realloc(L->mods, (size_t)(L->nmods + 1) * sizeof *L->mods);
    module *e = &L->mods[L->nmods++];
    memset(e, 0, sizeof *e);
    e->mod = lg_strdup(mod_name);
    e->lin = lin;
    return e;
}

static int shape_is(const lg_st_tensor *t, int ndim, int64_t d0, int64_t d1) {
    return t->ndim == ndim && t->shape[0] == d0 && (ndim < 2 || t->shape[1] == d1);
}

static void shape_str(const lg_st_tensor *t, char *buf, size_t cap) {
    size_t k = (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < t->ndim && k < cap; d++) k += (size_t)snprintf(buf + k, cap - k, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
    if (k < cap) snprintf(buf + k, cap - k, "]");
}

/* Tensors -> modules, each checked against the config and the model. */
static int collect(loader *L, lg_model *m, int use_dora) {
    static const char *const suffixes[] = {".lora_A.weight", ".lora_B.weight", ".lora_magnitude_vector",
                                           ".lora_magnitude_vector.weight"};
    const size_t lp = strlen(PREFIX);
    for (int i = 0; i < lg_st_count(L->st); i++) {
        const lg_st_tensor *t = lg_st_get(L->st, i);
        int kind = -1;
        for (int s = 0; s < 4 && kind < 0; s++)
            if (!strncmp(t->name, PREFIX, lp) && ends_with(t->name, suffixes[s]) &&
                strlen(t->name) > lp + strlen(suffixes[s]))
                kind = s;
        if (kind < 0)
            return lg_errorf("%s: tensor '%s' is not a LoRA tensor (base_model.model.<module>.lora_A.weight, "
                             ".lora_B.weight or .lora_magnitude_vector)", L->st_path, t->name);
        size_t n = strlen(t->name) - lp - strlen(suffixes[kind]);
        char *mod = lg_malloc(n + 1);
        memcpy(mod, t->name + lp, n);
        mod[n] = 0;
        module *e = find_or_add(L, m, t->name, mod);
        free(mod);
        if (!e) return -1;
        if (kind == 0) e->A = t;
        else if (kind == 1) e->B = t;
        else e->M = t;
    }
    if (!L->nmods) return lg_errorf("%s: no LoRA tensors", L->st_path);
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(L->j, "r"), *al = cJSON_GetObjectItemCaseSensitive(L->j, "lora_alpha");
    for (int i = 0; i < L->nmods; i++) {
        module *e = &L->mods[i];
        if (!e->A || !e->B)
            return lg_errorf("%s: module '%s' has %s but no %s", L->st_path, e->mod, e->A ? "lora_A" : "lora_B",
                             e->A ? "lora_B" : "lora_A");
        if (use_dora && !e->M)
            return lg_errorf("%s: '" PREFIX "%s.lora_magnitude_vector' missing (use_dora is true)", L->st_path, e->mod);
        if (!use_dora && e->M)
            return lg_errorf("%s: module '%s' has a DoRA magnitude but adapter_config.json has use_dora false",
                             L->st_path, e->mod);
        if (!selected_by_targets(L, e->mod))
            return lg_errorf("%s: module '%s' has LoRA tensors but adapter_config.json's target_modules does not select "
                             "it", L->st_path, e->mod);
        const pattern *pr = match_pattern(L->rp, L->nrp, e->mod), *pa = match_pattern(L->ap, L->nap, e->mod);
        e->r = pr ? (int)pr->value : (int)r->valuedouble;
        e->alpha = (float)(pa ? pa->value : al->valuedouble);
        const int in = e->lin->in, out = e->lin->out;
        char got[64], why[160];
        if (pr) snprintf(why, sizeof why, " (r %d from rank_pattern key '%s')", e->r, pr->key);
        else snprintf(why, sizeof why, " (r %d from \"r\")", e->r);
        if (!shape_is(e->A, 2, e->r, in)) {
            shape_str(e->A, got, sizeof got);
            return lg_errorf("%s: '%s' has shape %s, expected [%d, %d]%s", L->st_path, e->A->name, got, e->r, in, why);
        }
        if (!shape_is(e->B, 2, out, e->r)) {
            shape_str(e->B, got, sizeof got);
            return lg_errorf("%s: '%s' has shape %s, expected [%d, %d]%s", L->st_path, e->B->name, got, out, e->r, why);
        }
        if (e->M && !shape_is(e->M, 1, out, 1) && !shape_is(e->M, 2, out, 1)) {
            shape_str(e->M, got, sizeof got);
            return lg_errorf("%s: '%s' has shape %s, expected [%d]", L->st_path, e->M->name, got, out);
        }
    }
    return 0;
}

/* Reads t into dst (rows x cols), moving HF rotate-half rows to llama2.c's order when perm_hd > 0. */
static int read_rows(const lg_safetensors *st, const lg_st_tensor *t, float *dst, int64_t rows, int64_t cols, int perm_hd) {
    int64_t shape[2] = {t->shape[0], t->ndim > 1 ? t->shape[1] : 1};
    if (!perm_hd) return lg_st_read_f32(st, t->name, dst, t->ndim, shape);
    float *tmp = lg_malloc((size_t)(rows * cols) * sizeof(float));
    int rc = lg_st_read_f32(st, t->name, tmp, t->ndim, shape);
    if (rc == 0)
        for (int64_t r = 0; r < rows; r++)
            memcpy(dst + (size_t)lg_lora_half_row((int)r, perm_hd) * cols, tmp + (size_t)r * cols, (size_t)cols * sizeof(float));
    free(tmp);
    return rc;
}

static void loader_free(loader *L) {
    for (int i = 0; i < L->nrp; i++) pcre2_code_free(L->rp[i].re);
    for (int i = 0; i < L->nap; i++) pcre2_code_free(L->ap[i].re);
    free(L->rp);
    free(L->ap);
    if (L->target_re) pcre2_code_free(L->target_re);
    for (int i = 0; i < L->nmods; i++) free(L->mods[i].mod);
    free(L->mods);
    if (L->st) lg_st_close(L->st);
    cJSON_Delete(L->j);
}

int lg_adapter_set_load(lg_model *m, const char *dir, lg_adapter_set **out) {
    *out = NULL;
    if (!lg_is_dir(dir)) return lg_errorf("%s: not a directory (expected a PEFT adapter directory)", dir);
    char *cfg_path = lg_path_join(dir, "adapter_config.json"), *st_path = lg_path_join(dir, "adapter_model.safetensors");
    loader L = {0};
    L.cfg_path = cfg_path;
    L.st_path = st_path;
    lg_adapter_set *S = NULL;
    char *txt = NULL, *targets = NULL;
    int rc = -1;
    if (!lg_file_exists(cfg_path)) {
        lg_errorf("%s: no adapter_config.json (not a PEFT adapter directory)", dir);
        goto done;
    }
    size_t len;
    if (lg_read_file(cfg_path, &txt, &len) != 0) goto done;
    if (!(L.j = lg_json_parse(txt, len, "byte"))) {
        lg_errorf_prefix("%s", cfg_path);
        goto done;
    }
    if (!cJSON_IsObject(L.j)) {
        lg_errorf("%s: not a JSON object", cfg_path);
        goto done;
    }
    if (check_config(&L, m) != 0) goto done;
    if (!lg_file_exists(st_path)) {
        char *bin = lg_path_join(dir, "adapter_model.bin");
        lg_errorf("%s: adapter_model.safetensors missing%s", dir,
                  lg_file_exists(bin) ? " (adapter_model.bin, a PyTorch pickle, is not read: save with "
                                        "safe_serialization=True)" : "");
        free(bin);
        goto done;
    }
    if (lg_st_open(st_path, &L.st) != 0) goto done;
    const int use_dora = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(L.j, "use_dora"));
    const int rslora = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(L.j, "use_rslora"));
    const cJSON *dr = cJSON_GetObjectItemCaseSensitive(L.j, "lora_dropout");
    if (collect(&L, m, use_dora) != 0) goto done;

    S = lg_calloc(1, sizeof *S);
    S->g = lg_calloc((size_t)L.nmods, sizeof *S->g);
    /* groups in the order of the model's linear layers, so the result does not depend on the file */
    unsigned char *used = lg_calloc((size_t)L.nmods, 1);
    int rmin = 1 << 30, rmax = 0;
    float amin = INFINITY, amax = -INFINITY;
    for (int li = 0; li < lg_model_n_linears(m); li++) {
        int first = -1;
        for (int i = 0; i < L.nmods && first < 0; i++)
            if (!used[i] && L.mods[i].lin == lg_model_linear(m, li)) first = i;
        if (first < 0) continue;
        const int r = L.mods[first].r;
        const float alpha = L.mods[first].alpha;
        size_t tl = 0, tc = 64;
        targets = lg_malloc(tc);
        targets[0] = 0;
        for (int i = 0; i < L.nmods; i++) {
            if (used[i] || L.mods[i].r != r || L.mods[i].alpha != alpha) continue;
            used[i] = 1;
            size_t need = tl + strlen(L.mods[i].mod) + 2;
            if (need > tc) targets = lg_realloc(targets, tc = 2 * need);
            tl += (size_t)sprintf(targets + tl, "%s%s", tl ? "," : "", L.mods[i].mod);
        }
        lg_lora_opts o;
        lg_lora_opts_default(&o);
        o.r = r;
        o.alpha = alpha;
        o.use_rslora = rslora;
        o.use_dora = use_dora;
        o.dropout = cJSON_IsNumber(dr) ? (float)dr->valuedouble : 0.0f;
        o.init = LG_INIT_NONE;
        o.targets = targets; /* full module paths: each matches exactly its own layer */
        lg_adapters *g = NULL;
        if (lg_adapters_attach(m, &o, &g) != 0) {
            lg_errorf_prefix("%s", dir);
            free(used);
            goto done;
        }
        S->g[S->ng++] = g;
        free(targets);
        targets = NULL;
        rmin = LG_MIN(rmin, r), rmax = LG_MAX(rmax, r);
        amin = fminf(amin, alpha), amax = fmaxf(amax, alpha);
        const int hd = lg_model_config(m)->head_dim;
        for (int i = 0; i < lg_adapters_count(g); i++) {
            lg_lora *l = lg_adapters_get(g, i);
            const module *e = NULL;
            for (int k = 0; k < L.nmods && !e; k++)
                if (L.mods[k].lin == l->lin) e = &L.mods[k];
            const int perm = lg_lora_rows_interleaved(m, l) ? hd : 0;
            if (read_rows(L.st, e->A, l->A, l->r, l->in, 0) != 0 || read_rows(L.st, e->B, l->B, l->out, l->r, perm) != 0 ||
                (use_dora && read_rows(L.st, e->M, l->mag, l->out, 1, perm) != 0)) {
                free(used);
                goto done;
            }
        }
        S->nmod += lg_adapters_count(g);
    }
    free(used);
    char rs[32], as[48];
    if (rmin == rmax) snprintf(rs, sizeof rs, "r %d", rmin);
    else snprintf(rs, sizeof rs, "r %d..%d", rmin, rmax);
    if (amin == amax) snprintf(as, sizeof as, "alpha %g", (double)amin);
    else snprintf(as, sizeof as, "alpha %g..%g", (double)amin, (double)amax);
    snprintf(S->desc, sizeof S->desc, "%s%s on %d modules, %s, %s", rslora ? "rsLoRA" : "LoRA", use_dora ? " + DoRA" : "",
             S->nmod, rs, as);
    *out = S;
    S = NULL;
    rc = 0;
done:
    if (S) lg_adapter_set_free(S);
    loader_free(&L);
    free(targets);
    free(txt);
    free(cfg_path);
    free(st_path);
    return rc;
}

int lg_adapter_set_groups(const lg_adapter_set *s) { return s->ng; }
lg_adapters *lg_adapter_set_group(lg_adapter_set *s, int i) { return s->g[i]; }
int lg_adapter_set_modules(const lg_adapter_set *s) { return s->nmod; }
const char *lg_adapter_set_describe(const lg_adapter_set *s) { return s->desc; }

void lg_adapter_set_merge_and_free(lg_adapter_set *s) {
    if (!s) return;
    for (int i = 0; i < s->ng; i++) lg_adapters_merge_and_free(s->g[i]);
    free(s->g);
    free(s);
}

void lg_adapter_set_free(lg_adapter_set *s) {
    if (!s) return;
    for (int i = 0; i < s->ng; i++) lg_adapters_free(s->g[i]);
    free(s->g);
    free(s);
}
