/* lora_io.c — load PEFT LoRA adapters, merge adapters into the base (see lora_io.h).
 * Uses only lora.h's public API: attach with init NONE, then fill the tensors. */
#include "adapters/lora_io.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "core/util.h"
#include "io/safetensors.h"

#define PREFIX "base_model.model."

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

/* Module path of a key "base_model.model.<module><suffix>", or NULL when the key is not of that form. */
static char *module_of(const char *key, const char *suffix) {
    size_t lp = strlen(PREFIX), lk = strlen(key), ls = strlen(suffix);
    if (strncmp(key, PREFIX, lp) || !ends_with(key, suffix) || lk <= lp + ls) return NULL;
    char *m = lg_malloc(lk - lp - ls + 1);
    memcpy(m, key + lp, lk - lp - ls);
    m[lk - lp - ls] = 0;
    return m;
}

static int json_empty_or_null(const cJSON *j) { return !j || cJSON_IsNull(j) || (cJSON_IsObject(j) && !j->child); }

/* Reads a tensor into dst (rows x cols), moving HF rotate-half rows back to llama2.c order when asked. */
static int read_rows(const lg_safetensors *st, const char *key, float *dst, int ndim, int64_t rows, int64_t cols,
                     int perm_hd) {
    int64_t shape[2] = {rows, cols};
    if (!perm_hd) return lg_st_read_f32(st, key, dst, ndim, shape);
    float *t = lg_malloc((size_t)(rows * cols) * sizeof(float));
    int rc = lg_st_read_f32(st, key, t, ndim, shape);
    if (rc == 0)
        for (int64_t r = 0; r < rows; r++)
            memcpy(dst + (size_t)lg_lora_half_row((int)r, perm_hd) * cols, t + (size_t)r * cols,
                   (size_t)cols * sizeof(float));
    free(t);
    return rc;
}

int lg_adapters_load_peft(lg_model *m, const char *dir, lg_adapters **out) {
    *out = NULL;
    char *cfg_path = lg_path_join(dir, "adapter_config.json"), *txt = NULL;
    char *st_path = lg_path_join(dir, "adapter_model.safetensors");
    size_t len;
    cJSON *j = NULL;
    lg_safetensors *st = NULL;
    lg_adapters *ad = NULL;
    char *targets = NULL;
    int rc = -1;
    if (lg_read_file(cfg_path, &txt, &len) != 0) goto done;
    if (!(j = lg_json_parse(txt, len, "byte"))) {
        lg_errorf_prefix("%s", cfg_path);
        goto done;
    }
    if (!cJSON_IsObject(j)) {
        lg_errorf("%s: not a JSON object", cfg_path);
        goto done;
    }
    const cJSON *pt = cJSON_GetObjectItem(j, "peft_type"), *r = cJSON_GetObjectItem(j, "r"),
                *al = cJSON_GetObjectItem(j, "lora_alpha");
    if (!cJSON_IsString(pt) || strcmp(pt->valuestring, "LORA")) {
        lg_errorf("%s: peft_type %s is not supported (only LORA)", cfg_path,
                  cJSON_IsString(pt) ? pt->valuestring : "(missing)");
        goto done;
    }
    if (!cJSON_IsNumber(r) || r->valuedouble < 1 || r->valuedouble > (1 << 20) || r->valuedouble != floor(r->valuedouble)) {
        lg_errorf("%s: \"r\" must be a positive integer", cfg_path);
        goto done;
    }
    if (!cJSON_IsNumber(al) || !isfinite((float)al->valuedouble)) {
        lg_errorf("%s: \"lora_alpha\" must be a finite number", cfg_path);
        goto done;
    }
    if (!json_empty_or_null(cJSON_GetObjectItem(j, "rank_pattern")) ||
        !json_empty_or_null(cJSON_GetObjectItem(j, "alpha_pattern"))) {
        lg_errorf("%s: per-module rank_pattern/alpha_pattern are not supported", cfg_path);
        goto done;
    }
    const cJSON *bias = cJSON_GetObjectItem(j, "bias");
    if (cJSON_IsString(bias) && strcmp(bias->valuestring, "none")) {
        lg_errorf("%s: bias \"%s\" is not supported (only \"none\")", cfg_path, bias->valuestring);
        goto done;
    }
    const int use_dora = cJSON_IsTrue(cJSON_GetObjectItem(j, "use_dora"));
    const cJSON *dr = cJSON_GetObjectItem(j, "lora_dropout");

    if (lg_st_open(st_path, &st) != 0) goto done;
    /* the adapted modules are those with a lora_A; every key must be one we understand */
    size_t tcap = 1, tlen = 0;
    targets = lg_malloc(tcap);
    targets[0] = 0;
    int nmod = 0;
    for (int i = 0; i < lg_st_count(st); i++) {
        const char *k = lg_st_get(st, i)->name;
        char *mod = module_of(k, ".lora_A.weight");
        if (!mod && !(mod = module_of(k, ".lora_B.weight")) && !(mod = module_of(k, ".lora_magnitude_vector"))) {
            lg_errorf("%s: tensor '%s' is not a LoRA tensor this loader understands", st_path, k);
            goto done;
        }
        int is_a = ends_with(k, ".lora_A.weight");
        int found = 0;
        for (int l = 0; l < lg_model_n_linears(m); l++) found |= !strcmp(lg_model_linear(m, l)->name, mod);
        if (!found) {
            lg_errorf("%s: tensor '%s' is for module '%s', which is not a linear layer of the model", st_path, k, mod);
            free(mod);
            goto done;
        }
        if (is_a) {
            size_t need = tlen + strlen(mod) + 2;
            if (need > tcap) targets = lg_realloc(targets, tcap = need * 2);
            tlen += (size_t)sprintf(targets + tlen, "%s%s", tlen ? "," : "", mod);
            nmod++;
        }
        free(mod);
    }
    if (!nmod) {
        lg_errorf("%s: no lora_A tensors", st_path);
        goto done;
    }
    lg_lora_opts o;
    lg_lora_opts_default(&o);
    o.r = (int)r->valuedouble;
    o.alpha = (float)al->valuedouble;
    o.use_rslora = cJSON_IsTrue(cJSON_GetObjectItem(j, "use_rslora"));
    o.use_dora = use_dora;
    o.dropout = cJSON_IsNumber(dr) ? (float)dr->valuedouble : 0.0f;
    o.init = LG_INIT_NONE;
    o.targets = targets;
    if (lg_adapters_attach(m, &o, &ad) != 0) {
        lg_errorf_prefix("%s", dir);
        goto done;
    }
    const int hd = lg_model_config(m)->head_dim;
    for (int i = 0; i < lg_adapters_count(ad); i++) {
        lg_lora *l = lg_adapters_get(ad, i);
        int perm = lg_lora_rows_interleaved(m, l) ? hd : 0;
        char key[256];
        snprintf(key, sizeof key, PREFIX "%s.lora_A.weight", l->lin->name);
        if (read_rows(st, key, l->A, 2, l->r, l->in, 0) != 0) goto done;
        snprintf(key, sizeof key, PREFIX "%s.lora_B.weight", l->lin->name);
        if (!lg_st_find(st, key)) {
            lg_errorf("%s: '%s' missing", st_path, key);
            goto done;
        }
        if (read_rows(st, key, l->B, 2, l->out, l->r, perm) != 0) goto done;
        if (use_dora) {
            snprintf(key, sizeof key, PREFIX "%s.lora_magnitude_vector", l->lin->name);
            if (!lg_st_find(st, key)) {
                lg_errorf("%s: '%s' missing (use_dora is true)", st_path, key);
                goto done;
            }
            if (read_rows(st, key, l->mag, 1, l->out, 1, perm) != 0) goto done;
        }
    }
    *out = ad;
    ad = NULL;
    rc = 0;
done:
    if (ad) lg_adapters_free(ad);
    if (st) lg_st_close(st);
    cJSON_Delete(j);
    free(txt);
    free(targets);
    free(cfg_path);
    free(st_path);
    return rc;
}

void lg_adapters_merge_and_free(lg_adapters *a) {
    if (!a) return;
    lg_model *m = lg_adapters_model(a);
    const lg_ops *ops = lg_model_ops(m);
    for (int i = 0; i < lg_adapters_count(a); i++) {
        lg_lora *l = lg_adapters_get(a, i);
        const int r = l->r, in = l->in, out = l->out;
        const float *A = l->A;
        float *scaled = NULL;
        if (l->E) { /* AdaLoRA: fold diag(E (x) mask) into A */
            scaled = lg_malloc((size_t)r * in * sizeof(float));
            for (int k = 0; k < r; k++)
                for (int c = 0; c < in; c++)
                    scaled[(size_t)k * in + c] = (l->rank_mask[k] ? l->E[k] : 0.0f) * l->A[(size_t)k * in + c];
            A = scaled;
        }
        float *W = l->lin->w->data;
        ops->gemm(ops, 0, 0, out, in, r, l->scale, l->B, r, A, in, 1.0f, W, in);
        if (l->mag) /* DoRA: W' = mag (x) (W + sBA) / ||W + sBA||_row */
            for (int o = 0; o < out; o++) {
                double s = 0;
                for (int c = 0; c < in; c++) s += (double)W[(size_t)o * in + c] * W[(size_t)o * in + c];
                double f = s > 0 ? l->mag[o] / sqrt(s) : 1.0;
                for (int c = 0; c < in; c++) W[(size_t)o * in + c] = (float)(W[(size_t)o * in + c] * f);
            }
        free(scaled);
    }
    lg_adapters_free(a); /* detaches */
    lg_model_unpack(m);
}
