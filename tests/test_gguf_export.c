/* test_gguf_export.c — GGUF out, checked by llama.cpp itself, and the writer on its own.
 *
 * Offline: a model written by the GGUF writer reads back with the same weights (F32 exact, F16 /
 * BF16 / Q8_0 as the reader dequantises them), q/k permuted to llama.cpp's order and back.
 *
 * With llama.cpp built (scripts/build_llama_cpp.sh, cached) and SmolLM2-135M-Instruct available:
 *   1. a LoRA-GA adapter is trained on SmolLM2 (a few steps of `loraga train`);
 *   2. `loraga export --to gguf` writes the base in F32; llama.cpp's llama-perplexity on a fixed
 *      text (tests/golden/gguf/ppl_text.txt, 128-token chunks, second halves scored) must equal
 *      loraga's perplexity computed the same way (the ids are llama.cpp's own tokenisation, also
 *      checked equal to loraga's);
 *   3. `loraga export --to gguf-lora`: llama-perplexity -m base.gguf --lora adapter.gguf must equal
 *      loraga's perplexity with the adapter;
 *   4. `loraga export --to gguf --adapter`: the merged model, the same.
 * Relative difference < 1e-3 (F32). Skipped with a message when either is missing. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/util.h"
#include "eval/adapter_set.h"
#include "io/gguf.h"
#include "io/gguf_write.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

#define TEXT "tests/golden/gguf/ppl_text.txt"
#define NCTX 128

/* ---- offline: the writer ---------------------------------------------------------------------- */
static void test_writer_roundtrip(void **state) {
    (void)state;
    char *dir = lg_test_tmpdir(), path[512];
    snprintf(path, sizeof path, "%s/w.gguf", dir);
    lg_gguf_writer *w = lg_gguf_writer_new();
    lg_gguf_w_str(w, "general.architecture", "llama");
    lg_gguf_w_u32(w, "llama.block_count", 3);
    lg_gguf_w_f32(w, "adapter.lora.alpha", 16.0f);
    lg_gguf_w_bool(w, "tokenizer.ggml.add_bos_token", 1);
    lg_gguf_w_u32(w, "llama.block_count", 99); /* a key already written is kept */
    float x[64 * 3];
    lg_rng r;
    lg_rng_seed(&r, 7);
    for (int i = 0; i < 64 * 3; i++) x[i] = lg_rng_normal(&r) * (i % 7 ? 1.0f : 40.0f);
    int64_t ne[2] = {64, 3};
    uint32_t types[4] = {LG_GGML_F32, LG_GGML_F16, LG_GGML_BF16, LG_GGML_Q8_0};
    const char *names[4] = {"a.f32", "b.f16", "c.bf16", "d.q8_0"};
    for (int k = 0; k < 4; k++) assert_int_equal(lg_gguf_w_tensor(w, names[k], 2, ne, types[k], x), 0);
    int64_t ne1[1] = {5};
    assert_int_equal(lg_gguf_w_tensor(w, "vec", 1, ne1, LG_GGML_F32, x), 0);
    assert_int_equal(lg_gguf_w_save(w, path), 0);
    lg_gguf_writer_free(w);

    lg_gguf *g;
    if (lg_gguf_open(path, &g)) print_message("%s\n", lg_last_error());
    int64_t v;
    double f;
    int b;
    const char *s;
    size_t sl;
    assert_int_equal(lg_gguf_get_int(g, "llama.block_count", &v), 0);
    assert_int_equal(v, 3);
    assert_int_equal(lg_gguf_get_float(g, "adapter.lora.alpha", &f), 0);
    assert_true(f == 16.0);
    assert_int_equal(lg_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b), 0);
    assert_int_equal(b, 1);
    assert_int_equal(lg_gguf_get_str(g, "general.architecture", &s, &sl), 0);
    assert_int_equal(sl, 5);
    assert_int_equal(lg_gguf_n_tensors(g), 5);
    float y[64 * 3];
    for (int k = 0; k < 4; k++) {
        const lg_gguf_tensor *t = lg_gguf_find_tensor(g, names[k]);
        assert_non_null(t);
        assert_int_equal(t->type, types[k]);
        assert_int_equal(t->ne[0], 64);
        assert_int_equal(t->ne[1], 3);
        assert_int_equal(lg_gguf_read_f32(g, t, y), 0);
        for (int i = 0; i < 64 * 3; i++) {
            float want = x[i];
            if (k == 1) want = lg_f16_to_f32(lg_f32_to_f16(x[i]));
            if (k == 2) want = lg_bf16_to_f32(lg_f32_to_bf16(x[i]));
            if (k == 3) { /* within half a quantisation step of the block's scale */
                float amax = 0;
                for (int j = i / 32 * 32; j < i / 32 * 32 + 32; j++) amax = fmaxf(amax, fabsf(x[j]));
                assert_true(fabsf(y[i] - want) <= amax / 127.0f * 0.5f * 1.01f + 1e-6f);
            } else {
                assert_true(y[i] == want);
            }
        }
    }
    /* Q8_0 is ggml's reference quantisation: re-quantising the dequantised values is exact */
    uint8_t q1[34 * 6], q2[34 * 6];
    lg_gguf_quantize_q8_0(x, q1, 64 * 3);
    float dq[64 * 3];
    assert_int_equal(lg_gguf_dequant(LG_GGML_Q8_0, q1, dq, 64 * 3), 0);
    lg_gguf_quantize_q8_0(dq, q2, 64 * 3);
    assert_memory_equal(q1, q2, sizeof q1);
    lg_gguf_close(g);
    remove(path);
    rmdir(dir);
    free(dir);
}

/* ---- with llama.cpp ------------------------------------------------------------------------------ */
static char *smollm2_path(void) {
    const char *env = getenv("LORAGA_SMOLLM2");
    if (env && *env) return lg_file_exists(env) ? strdup(env) : NULL;
    const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    char p[4096];
    if (xdg && *xdg) snprintf(p, sizeof p, "%s/loraga/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", xdg);
    else snprintf(p, sizeof p, "%s/.cache/loraga/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", home ? home : "/tmp");
    if (lg_file_exists(p)) return strdup(p);
    const char *fetch = getenv("LORAGA_FETCH");
    if (fetch && !strcmp(fetch, "0")) return NULL;
    char out[4096];
    if (lg_test_run("timeout 300 scripts/fetch_smollm2.sh 2>/dev/null", out, sizeof out) != 0) return NULL;
    char *nl = strchr(out, '\n');
    if (nl) *nl = 0;
    return lg_file_exists(out) ? strdup(out) : NULL;
}

static int run_ok(const char *cmd, char *out, size_t cap) {
    int rc = lg_test_run(cmd, out, cap);
    if (rc) print_message("command failed (%d): %s\n%s\n", rc, cmd, out ? out : "");
    return rc;
}

/* llama-perplexity's "Final estimate: PPL = X" */
static double llama_ppl(const char *bin, const char *model, const char *lora, const char *log) {
    char cmd[4096], out[256];
    snprintf(cmd, sizeof cmd,
             "%s/llama-perplexity -m %s %s%s -f " TEXT " -c %d -b %d -t 2 > %s 2>&1; "
             "sed -n 's/.*Final estimate: PPL = \\([0-9.]*\\).*/\\1/p' %s",
             bin, model, lora ? "--lora " : "", lora ? lora : "", NCTX, NCTX, log, log);
    if (run_ok(cmd, out, sizeof out) || !out[0]) {
        char tail[4096];
        snprintf(cmd, sizeof cmd, "tail -5 %s", log);
        lg_test_run(cmd, tail, sizeof tail);
        print_message("llama-perplexity gave no estimate:\n%s\n", tail);
        return NAN;
    }
    return atof(out);
}

/* loraga's perplexity over the same chunks: llama.cpp's ids, BOS replacing the first token of each
 * chunk when the vocabulary adds BOS, tokens first+1 .. n_ctx-1 scored (first = n_ctx / 2) */
static double loraga_ppl(lg_model *m, const int *ids, int n, int bos) {
    int nch = n / NCTX, first = NCTX / 2;
    lg_batch b = {nch, NCTX, lg_malloc((size_t)nch * NCTX * sizeof(int)), lg_malloc((size_t)nch * NCTX * sizeof(int)),
                  lg_malloc((size_t)nch * NCTX * sizeof(float))};
    for (int c = 0; c < nch; c++)
        for (int j = 0; j < NCTX; j++) {
            int k = c * NCTX + j;
            b.inputs[k] = j == 0 && bos >= 0 ? bos : ids[k];
            b.targets[k] = j + 1 < NCTX ? ids[k + 1] : 0;
            b.weight[k] = j >= first && j < NCTX - 1 ? 1.0f : 0.0f;
        }
    assert_int_equal(lg_model_plan(m, nch, NCTX, 0), 0);
    double w;
    float loss = lg_model_forward(m, &b, &w);
    assert_true(w == (double)nch * (NCTX - first - 1));
    free(b.inputs), free(b.targets), free(b.weight);
    return exp((double)loss);
}

static void check_close(const char *what, double llama, double ours) {
    double rel = fabs(llama - ours) / ours;
    print_message("%s: llama.cpp PPL %.4f, loraga %.6f, relative difference %.2e\n", what, llama, ours, rel);
    assert_true(rel < 1e-3);
}

static void test_llama_cpp_perplexity(void **state) {
    (void)state;
    char bin[4096] = {0};
    if (lg_test_run("scripts/build_llama_cpp.sh --check 2>/dev/null", bin, sizeof bin) != 0) {
        print_message("skipped: llama.cpp is not built (run scripts/build_llama_cpp.sh once, ~10 min)\n");
        skip();
    }
    char *nl = strchr(bin, '\n');
    if (nl) *nl = 0;
    char *smol = smollm2_path();
    if (!smol) {
        print_message("skipped: SmolLM2-135M-Instruct is not available (scripts/fetch_smollm2.sh)\n");
        skip();
    }
    const char *lb = lg_test_bin();
    char *dir = lg_test_tmpdir(), cmd[8192], out[1 << 16];
    /* 1. a LoRA-GA adapter (rank 4 -> saved at rank 8, relative to the original weights) */
    snprintf(cmd, sizeof cmd,
             "OMP_NUM_THREADS=2 %s train --model %s --data demo/train.jsonl --method lora-ga --rank 4 --steps 3 "
             "--batch-size 2 --seq-len 64 --ga-batches 2 --lr 1e-3 --out %s/ad > %s/train.log 2>&1",
             lb, smol, dir, dir);
    assert_int_equal(run_ok(cmd, NULL, 0), 0);
    /* 2. the base in F32 */
    snprintf(cmd, sizeof cmd, "%s export --to gguf --model %s --out %s/base.gguf 2>&1", lb, smol, dir);
    assert_int_equal(run_ok(cmd, out, sizeof out), 0);
    snprintf(cmd, sizeof cmd, "%s export --to gguf-lora --model %s --adapter %s/ad --out %s/ad.gguf 2>&1", lb, smol, dir, dir);
    assert_int_equal(run_ok(cmd, out, sizeof out), 0);
    print_message("%s", out);
    snprintf(cmd, sizeof cmd, "%s export --to gguf --model %s --adapter %s/ad --out %s/merged.gguf 2>&1", lb, smol, dir, dir);
    assert_int_equal(run_ok(cmd, out, sizeof out), 0);

    /* llama.cpp's ids for the text (and BOS handling) */
    snprintf(cmd, sizeof cmd, "%s/llama-tokenize -m %s/base.gguf -f " TEXT " --ids --log-disable 2>/dev/null | tail -1", bin, dir);
    assert_int_equal(run_ok(cmd, out, sizeof out), 0);
    int *ids = lg_malloc(sizeof(int) * 4096), n = 0;
    for (char *p = out; *p && n < 4096;) {
        while (*p && (*p < '0' || *p > '9')) p++;
        if (!*p) break;
        ids[n++] = (int)strtol(p, &p, 10);
    }
    lg_tokenizer *t;
    assert_int_equal(lg_tokenizer_load(smol, &t), 0);
    char *text;
    size_t tl;
    assert_int_equal(lg_read_file(TEXT, &text, &tl), 0);
    int *ours, on;
    assert_int_equal(lg_tokenizer_encode(t, text, tl, 1, &ours, &on), 0);
    print_message("text: %d tokens (llama.cpp), %d (loraga); %d chunks of %d\n", n, on, n / NCTX, NCTX);
    assert_int_equal(on, n);
    assert_memory_equal(ours, ids, (size_t)n * sizeof(int));
    assert_true(n >= 2 * NCTX);
    lg_gguf *g;
    assert_int_equal(lg_gguf_open(smol, &g), 0);
    int add_bos = 0;
    if (lg_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &add_bos) != 0) add_bos = 0;
    lg_gguf_close(g);
    int bos = add_bos ? lg_tokenizer_bos(t) : -1;

    lg_model *m;
    assert_int_equal(lg_model_load(smol, NULL, &m), 0);
    char p1[4200], p2[4200], log[4200];
    snprintf(p1, sizeof p1, "%s/base.gguf", dir);
    snprintf(log, sizeof log, "%s/ppl_base.log", dir);
    check_close("base (F32 export)", llama_ppl(bin, p1, NULL, log), loraga_ppl(m, ids, n, bos));
    lg_adapter_set *ad;
    snprintf(p2, sizeof p2, "%s/ad", dir);
    assert_int_equal(lg_adapter_set_load(m, p2, &ad), 0);
    print_message("adapter: %s\n", lg_adapter_set_describe(ad));
    double with = loraga_ppl(m, ids, n, bos);
    snprintf(p2, sizeof p2, "%s/ad.gguf", dir);
    snprintf(log, sizeof log, "%s/ppl_lora.log", dir);
    check_close("base + adapter GGUF (--lora)", llama_ppl(bin, p1, p2, log), with);
    snprintf(p1, sizeof p1, "%s/merged.gguf", dir);
    snprintf(log, sizeof log, "%s/ppl_merged.log", dir);
    check_close("merged GGUF", llama_ppl(bin, p1, NULL, log), with);
    lg_adapter_set_free(ad);
    lg_model_free(m);
    lg_tokenizer_free(t);
    free(text), free(ours), free(ids), free(smol);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    lg_test_run(cmd, NULL, 0);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_writer_roundtrip),
        cmocka_unit_test(test_llama_cpp_perplexity),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
