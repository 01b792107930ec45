/* test_reference.c — loraga's forward pass against Hugging Face transformers.
 *
 * tests/golden/models/<name>/ holds a tiny random checkpoint written by transformers'
 * save_pretrained and reference.json: token ids, transformers' mean next-token loss and the
 * logits of a few positions (computed in float64 from the saved, possibly bf16/f16, weights
 * upcast). Regenerate with scripts/reference/make_tiny_models.py; see docs/reference.md.
 * No Python is needed here. */
#include "testutil.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "model/model.h"

/* LORAGA_GOLDEN overrides the directory (to try freshly generated references). */
static const char *golden(void) {
    const char *g = getenv("LORAGA_GOLDEN");
    return g ? g : "tests/golden/models";
}
#define LOSS_RTOL 1e-5   /* relative, on the mean loss */
#define LOGIT_TOL 1e-4   /* |ours - ref| <= LOGIT_TOL * max(1, |ref|) */

typedef struct {
    int B, T, V;
    int *ids;          /* B*T */
    double loss;
    int n_pos;
    int (*pos)[2];     /* (row, position) */
    double *logits;    /* n_pos * V */
} reference;

static cJSON *load_json(const char *path) {
    char *text = NULL;
    if (lg_read_file(path, &text, NULL) != 0) fail_msg("%s", lg_last_error());
    cJSON *j = cJSON_Parse(text);
    free(text);
    if (!j) fail_msg("%s: not valid JSON", path);
    return j;
}

static double num(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v)) fail_msg("reference.json: \"%s\" missing or not a number", key);
    return v->valuedouble;
}

static const cJSON *arr(const cJSON *o, const char *key, int n) {
    const cJSON *v = key ? cJSON_GetObjectItemCaseSensitive(o, key) : o;
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != n)
        fail_msg("reference.json: \"%s\" is not an array of %d", key ? key : "(row)", n);
    return v;
}

static void read_reference(const char *dir, int vocab, reference *r) {
    char *path = lg_path_join(dir, "reference.json");
    cJSON *j = load_json(path);
    r->B = (int)num(j, "B");
    r->T = (int)num(j, "T");
    r->V = vocab;
    r->loss = num(j, "loss");
    r->ids = calloc((size_t)r->B * r->T, sizeof(int));
    const cJSON *ids = arr(j, "ids", r->B);
    for (int b = 0; b < r->B; b++) {
        const cJSON *row = arr(cJSON_GetArrayItem(ids, b), NULL, r->T);
        for (int t = 0; t < r->T; t++) r->ids[b * r->T + t] = cJSON_GetArrayItem(row, t)->valueint;
    }
    const cJSON *pos = cJSON_GetObjectItemCaseSensitive(j, "logit_positions");
    r->n_pos = cJSON_GetArraySize(pos);
    assert_true(r->n_pos > 0);
    r->pos = calloc((size_t)r->n_pos, sizeof *r->pos);
    r->logits = calloc((size_t)r->n_pos * vocab, sizeof(double));
    const cJSON *lg = arr(j, "logits", r->n_pos);
    for (int i = 0; i < r->n_pos; i++) {
        const cJSON *p = arr(cJSON_GetArrayItem(pos, i), NULL, 2);
        r->pos[i][0] = cJSON_GetArrayItem(p, 0)->valueint;
        r->pos[i][1] = cJSON_GetArrayItem(p, 1)->valueint;
        assert_true(r->pos[i][0] >= 0 && r->pos[i][0] < r->B && r->pos[i][1] >= 0 && r->pos[i][1] < r->T);
        const cJSON *row = arr(cJSON_GetArrayItem(lg, i), NULL, vocab); /* vocab must match config */
        for (int v = 0; v < vocab; v++) r->logits[(size_t)i * vocab + v] = cJSON_GetArrayItem(row, v)->valuedouble;
    }
    cJSON_Delete(j);
    free(path);
}

static void free_reference(reference *r) {
    free(r->ids);
    free(r->pos);
    free(r->logits);
}

/* Forward the reference ids: position t predicts ids[t+1], the last position nothing. */
static double run(lg_model *m, const reference *r, int quiet, double *worst_logit) {
    int n = r->B * r->T;
    lg_batch b = {r->B, r->T, calloc((size_t)n, sizeof(int)), calloc((size_t)n, sizeof(int)),
                  calloc((size_t)n, sizeof(float))};
    for (int i = 0; i < n; i++) {
        int last = i % r->T == r->T - 1;
        b.inputs[i] = r->ids[i];
        b.targets[i] = last ? 0 : r->ids[i + 1];
        b.weight[i] = last ? 0.0f : 1.0f;
    }
    assert_int_equal(lg_model_plan(m, r->B, r->T, 0), 0);
    double wsum;
    double loss = lg_model_forward(m, &b, &wsum);
    assert_true(wsum == (double)r->B * (r->T - 1));
    const float *logits = lg_model_logits(m);
    *worst_logit = 0;
    int shown = 0;
    for (int i = 0; i < r->n_pos; i++) {
        const float *ours = logits + ((size_t)r->pos[i][0] * r->T + r->pos[i][1]) * r->V;
        const double *ref = r->logits + (size_t)i * r->V;
        for (int v = 0; v < r->V; v++) {
            double err = fabs(ours[v] - ref[v]) / fmax(1.0, fabs(ref[v]));
            if (!(err <= *worst_logit)) *worst_logit = isnan(err) ? INFINITY : err;
            if (!(err <= LOGIT_TOL) && !quiet && shown++ < 8)
                print_message("  logit[row %d, pos %d, token %d]: loraga %.7g, transformers %.7g\n", r->pos[i][0],
                              r->pos[i][1], v, ours[v], ref[v]);
        }
    }
    free(b.inputs);
    free(b.targets);
    free(b.weight);
    return loss;
}

enum { MATCH = 0, MISMATCH = 1, REFUSED = 2 };

/* Load golden model `name`, run its reference ids, compare. With roundtrip, also write the
 * model back with lg_model_save_hf (the config's dtype), reload it and require the same
 * numbers (Conv1D transposes, tied heads and bf16/f16 re-rounding are lossless here).
 * Frees everything before returning, so a mismatch can be reported without leaks. */
static int compare_file(const char *name, const char *file, int roundtrip) {
    char *dir = lg_path_join(golden(), name);
    char *path = file ? lg_path_join(dir, file) : lg_strdup(dir);
    lg_model *m;
    int lrc = lg_model_load(path, NULL, &m);
    free(path);
    if (lrc != 0) {
        print_message("%-16s refused by lg_model_load: %s\n", name, lg_last_error());
        free(dir);
        return REFUSED;
    }
    reference r;
    read_reference(dir, lg_model_config(m)->vocab_size, &r);
    if (lg_model_plan(m, r.B, r.T, 0) != 0) { /* e.g. longer than an unimplemented sliding window */
        print_message("%-16s refused by lg_model_plan: %s\n", name, lg_last_error());
        free_reference(&r);
        lg_model_free(m);
        free(dir);
        return REFUSED;
    }
    double worst;
    double loss = run(m, &r, 0, &worst);
    double rel = fabs(loss - r.loss) / fabs(r.loss);
    print_message("%-16s%s loss loraga %.7f transformers %.7f (rel %.1e); logits max rel/abs err %.1e\n", name,
                  file ? " (GGUF)" : "", loss, r.loss, rel, worst);
    int rc = rel <= LOSS_RTOL && worst <= LOGIT_TOL ? MATCH : MISMATCH; /* NaN: mismatch */
    if (rc == MATCH && roundtrip) {
        char *tmp = lg_test_tmpdir();
        assert_non_null(tmp);
        if (lg_model_save_hf(m, tmp, NULL) != 0) fail_msg("lg_model_save_hf: %s", lg_last_error());
        lg_model *m2;
        if (lg_model_load(tmp, NULL, &m2) != 0) fail_msg("reload %s: %s", tmp, lg_last_error());
        double worst2, loss2 = run(m2, &r, 0, &worst2);
        if (!(fabs(loss2 - loss) <= 1e-6 * fabs(loss) && worst2 <= LOGIT_TOL)) {
            print_message("%-16s after lg_model_save_hf + reload: loss %.7f, logits max err %.1e\n", name, loss2,
                          worst2);
            rc = MISMATCH;
        }
        lg_model_free(m2);
        char cmd[512];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
        assert_int_equal(system(cmd), 0);
        free(tmp);
    }
    free_reference(&r);
    lg_model_free(m);
    free(dir);
    return rc;
}

static int compare_model(const char *name, int roundtrip) { return compare_file(name, NULL, roundtrip); }

#define MODEL_TEST(n)                                                                          \
    static void test_##n(void **state) {                                                       \
        (void)state;                                                                           \
        assert_int_equal(compare_model(#n, 1), MATCH);                                         \
    }
MODEL_TEST(llama_gqa)
MODEL_TEST(llama_tied_bf16)
MODEL_TEST(qwen2)
MODEL_TEST(mistral_sharded)
MODEL_TEST(gpt2)
MODEL_TEST(gpt2_f16)

MODEL_TEST(qwen2_theta1e6) /* rope_theta given only inside rope_parameters (transformers >= 5) */
MODEL_TEST(mistral_window4) /* sliding_window 4 < T: the window implemented, not refused */
/* issue 15: the architectures users bring */
MODEL_TEST(llama3_tied)
MODEL_TEST(qwen3)
MODEL_TEST(gemma2)
MODEL_TEST(gemma2_qpas)
MODEL_TEST(gemma3_text)
MODEL_TEST(gemma3_layers)
MODEL_TEST(phi3)
MODEL_TEST(qwen2_swa)

/* The same models converted to GGUF by llama.cpp's own convert_hf_to_gguf.py (F32): loraga must
 * undo what the converter changed (q/k permutation, Gemma's 1 + w norms, RoPE factor tensors) and
 * read what it keeps in metadata, and give transformers' logits again. */
#define GGUF_TEST(n)                                                                           \
    static void test_gguf_##n(void **state) {                                                  \
        (void)state;                                                                           \
        assert_int_equal(compare_file(#n, "model.gguf", 1), MATCH);                            \
    }
GGUF_TEST(qwen2)
GGUF_TEST(llama3_tied)
GGUF_TEST(qwen3)
GGUF_TEST(gemma2)
GGUF_TEST(gemma3_text)
GGUF_TEST(phi3)

/* Features loraga does not implement must be refused with a message naming them, never
 * silently computed differently from transformers. */
static void expect_refused(const char *name, const char *feature) {
    assert_int_equal(compare_model(name, 0), REFUSED);
    assert_non_null(strstr(lg_last_error(), feature));
}

static void test_gpt2_layer_scale_refused(void **state) {
    (void)state;
    expect_refused("gpt2_layer_scale", "scale_attn_by_inverse_layer_idx");
}

/* The comparison can fail: a perturbed reference logit, a perturbed reference loss and a
 * perturbed weight are each rejected, and restoring them passes again. */
static int passes(lg_model *m, const reference *r) {
    double worst, loss = run(m, r, 1, &worst);
    return fabs(loss - r->loss) <= LOSS_RTOL * fabs(r->loss) && worst <= LOGIT_TOL;
}

static void test_detects_mismatch(void **state) {
    (void)state;
    char *dir = lg_path_join(golden(), "llama_gqa");
    lg_model *m;
    assert_int_equal(lg_model_load(dir, NULL, &m), 0);
    reference r;
    read_reference(dir, lg_model_config(m)->vocab_size, &r);
    assert_true(passes(m, &r));
    double l7 = r.logits[7], loss = r.loss;
    r.logits[7] += 1e-3;
    assert_false(passes(m, &r));
    r.logits[7] = l7;
    r.loss *= 1 + 3e-5;
    assert_false(passes(m, &r));
    r.loss = loss;
    lg_param *p = lg_model_find_param(m, "model.layers.1.mlp.down_proj.weight");
    assert_non_null(p);
    float w = p->data[3];
    p->data[3] += 1e-3f;
    assert_false(passes(m, &r));
    p->data[3] = w;
    assert_true(passes(m, &r));
    free_reference(&r);
    lg_model_free(m);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_llama_gqa),       cmocka_unit_test(test_llama_tied_bf16),
        cmocka_unit_test(test_qwen2),           cmocka_unit_test(test_mistral_sharded),
        cmocka_unit_test(test_gpt2),            cmocka_unit_test(test_gpt2_f16),
        cmocka_unit_test(test_detects_mismatch),
        cmocka_unit_test(test_qwen2_theta1e6),
        cmocka_unit_test(test_mistral_window4),
        cmocka_unit_test(test_llama3_tied),     cmocka_unit_test(test_qwen3),
        cmocka_unit_test(test_gemma2),          cmocka_unit_test(test_gemma2_qpas),
        cmocka_unit_test(test_gemma3_text),     cmocka_unit_test(test_gemma3_layers),
        cmocka_unit_test(test_phi3),            cmocka_unit_test(test_qwen2_swa),
        cmocka_unit_test(test_gguf_qwen2),      cmocka_unit_test(test_gguf_llama3_tied),
        cmocka_unit_test(test_gguf_qwen3),      cmocka_unit_test(test_gguf_gemma2),
        cmocka_unit_test(test_gguf_gemma3_text), cmocka_unit_test(test_gguf_phi3),
        cmocka_unit_test(test_gpt2_layer_scale_refused),
    };
    return cmocka_run_group_tests_name("reference", tests, NULL, NULL);
}
