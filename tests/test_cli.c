/* test_cli.c — the loraga command end to end on the real stories260K: convert, eval through both
 * model paths, a short full fine-tune that lowers held-out loss, LoRA-GA training with its
 * outputs, and bad input giving a clear message and a non-zero exit. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

static char *g_tmp;    /* scratch directory for this test run */
static char *g_hf;     /* converted stories260K */
static char *g_model, *g_tok;

static int setup(void **state) {
    (void)state;
    g_model = lg_test_shared("llama2c_stories260K/stories260K.bin");
    g_tok = lg_test_shared("llama2c_stories260K/tok512.bin");
    g_tmp = lg_test_tmpdir();
    g_hf = lg_path_join(g_tmp, "hf");
    return g_tmp ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
    int rc = system(cmd);
    free(g_tmp), free(g_hf), free(g_model), free(g_tok);
    return rc == 0 ? 0 : -1;
}

static int sh(char *out, size_t cap, const char *fmt, ...) LG_PRINTF(3, 4);
static int sh(char *out, size_t cap, const char *fmt, ...) {
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    return lg_test_run(cmd, out, cap);
}

static double json_number(const char *json, const char *key) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    const char *p = strstr(json, pat);
    return p ? atof(p + strlen(pat)) : NAN;
}

/* Rows for the tests: SST-2 sentences (a domain stories260K does not know) as {"text"}. */
static char *write_rows(const char *name, const char *tsv, int first, int count) {
    char *src = lg_test_shared(tsv);
    if (!src) return NULL;
    char *text;
    assert_int_equal(lg_read_file(src, &text, NULL), 0);
    char *path = lg_path_join(g_tmp, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    char *save = NULL;
    int i = -1; /* the header line */
    for (char *ln = strtok_r(text, "\n", &save); ln; ln = strtok_r(NULL, "\n", &save), i++) {
        if (i < first) continue;
        if (i >= first + count) break;
        char *tab = strchr(ln, '\t');
        if (tab) *tab = 0;
        fputs("{\"text\": \"", f);
        for (char *c = ln; *c; c++) {
            if (*c == '"' || *c == '\\') fputc('\\', f);
            fputc(*c, f);
        }
        fputs("\"}\n", f);
    }
    fclose(f);
    free(text);
    free(src);
    return path;
}

static void test_convert_and_eval_both_paths(void **state) {
    (void)state;
    if (!g_model || !g_tok) {
        print_message("skipped: ../shared/data/llama2c_stories260K not found\n");
        skip();
    }
    static char out[8192];
    int rc = sh(out, sizeof out, "%s convert --from llama2c --model %s --out %s 2>&1", lg_test_bin(), g_model, g_hf);
    assert_int_equal(rc, 0);
    const char *files[] = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"};
    for (int i = 0; i < 4; i++) {
        char *p = lg_path_join(g_hf, files[i]);
        assert_true(lg_file_exists(p));
        free(p);
    }
    char *cfg = lg_path_join(g_hf, "config.json"), *text;
    assert_int_equal(lg_read_file(cfg, &text, NULL), 0);
    assert_non_null(strstr(text, "LlamaForCausalLM"));
    free(text);
    free(cfg);
    char *rows = write_rows("dev.jsonl", "glue_SST-2/dev.tsv", 0, 60);
    static char a[1024], b[1024];
    assert_int_equal(sh(a, sizeof a, "%s eval --model %s --data %s --json", lg_test_bin(), g_hf, rows), 0);
    assert_int_equal(sh(b, sizeof b, "%s eval --model %s --tokenizer %s --data %s --json", lg_test_bin(), g_model, g_tok,
                        rows), 0);
    double la = json_number(a, "loss"), lb = json_number(b, "loss");
    print_message("eval: HF directory %.6f, llama2.c file %.6f\n", la, lb);
    assert_true(isfinite(la) && la > 0);
    assert_float_equal(la, lb, 1e-5 * la);
    assert_true(json_number(a, "tokens") > 500);
    /* tokenize agrees between the two tokenizers (tok512.bin and the converted tokenizer.json) */
    assert_int_equal(sh(a, sizeof a, "%s tokenize --tokenizer %s --text 'Once upon a time, Lily'", lg_test_bin(), g_hf), 0);
    assert_int_equal(sh(b, sizeof b, "%s tokenize --tokenizer %s --text 'Once upon a time, Lily'", lg_test_bin(), g_tok), 0);
    assert_string_equal(a, b);
    assert_true(a[0] == '[');
    free(rows);
}

/* The converted stories260K directory exists (setup made it when ../shared/data is there). */
static int have_model(void) {
    char *cfg = lg_path_join(g_hf, "config.json");
    int have = lg_file_exists(cfg);
    free(cfg);
    return have;
}

static void test_full_finetune_lowers_heldout_loss(void **state) {
    (void)state;
    if (!have_model()) {
        print_message("skipped: no converted model (../shared/data absent)\n");
        skip();
    }
    char *train = write_rows("train.jsonl", "glue_SST-2/train.tsv", 0, 400);
    char *held = write_rows("held.jsonl", "glue_SST-2/dev.tsv", 0, 100);
    char *run = lg_path_join(g_tmp, "run_full");
    static char out[16384];
    assert_int_equal(sh(out, sizeof out, "%s eval --model %s --data %s --json", lg_test_bin(), g_hf, held), 0);
    double before = json_number(out, "loss");
    int rc = sh(out, sizeof out,
                "%s train --model %s --data %s --method full --steps 30 --batch-size 8 --seq-len 64 --lr 3e-4 "
                "--val-frac 0.1 --eval-every 10 --out %s 2>&1",
                lg_test_bin(), g_hf, train, run);
    if (rc) print_message("%s\n", out);
    assert_int_equal(rc, 0);
    assert_int_equal(sh(out, sizeof out, "%s eval --model %s --data %s --json", lg_test_bin(), run, held), 0);
    double after = json_number(out, "loss");
    print_message("held-out SST-2 loss: before %.4f, after 30 full fine-tuning steps %.4f\n", before, after);
    assert_true(after < before - 0.2);
    /* the run directory: an HF model, 30 metric lines with validation every 10, a picture */
    char *metrics = lg_path_join(run, "metrics.jsonl"), *svg = lg_path_join(run, "loss.svg"), *text;
    assert_int_equal(lg_read_file(metrics, &text, NULL), 0);
    int lines = 0, vals = 0;
    for (char *p = text; (p = strchr(p, '\n')); p++) lines++;
    for (char *p = text; (p = strstr(p, "val_loss")); p++) vals++;
    assert_int_equal(lines, 30);
    assert_int_equal(vals, 3);
    free(text);
    assert_int_equal(lg_read_file(svg, &text, NULL), 0);
    assert_non_null(strstr(text, "<polyline"));
    free(text);
    free(metrics), free(svg), free(run), free(train), free(held);
}

static void test_loraga_run_outputs(void **state) {
    (void)state;
    if (!have_model()) {
        print_message("skipped: no converted model (../shared/data absent)\n");
        skip();
    }
    char *train = write_rows("train_ga.jsonl", "glue_SST-2/train.tsv", 0, 200);
    char *run = lg_path_join(g_tmp, "run_ga");
    static char out[32768];
    int rc = sh(out, sizeof out,
                "%s train --model %s --data %s --method lora-ga --steps 10 --batch-size 4 --seq-len 64 --lr 1e-3 "
                "--ga-batches 8 --save-init --base-dtype bfloat16 --out %s 2>&1",
                lg_test_bin(), g_hf, train, run);
    if (rc) print_message("%s\n", out);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "alignment error"));
    assert_non_null(strstr(out, "base weights stored as bfloat16")); /* after the offsets, before training */
    /* what --base-dtype refuses, with the reason */
    static char err[4096];
    const struct {
        const char *args, *msg;
    } bad[] = {{"--method full --base-dtype bfloat16", "none stays frozen"},
               {"--method lora --base-dtype fp8", "expected float32 or bfloat16"},
               {"--method lora-ga --base-dtype bfloat16 --save-every 5", "not supported for lora-ga"}};
    for (int i = 0; i < 3; i++) {
        char *o2 = lg_path_join(g_tmp, "run_bad_dtype");
        rc = sh(err, sizeof err, "%s train --model %s --data %s %s --steps 2 --out %s 2>&1", lg_test_bin(), g_hf, train,
                bad[i].args, o2);
        assert_int_not_equal(rc, 0);
        if (!strstr(err, bad[i].msg)) fail_msg("%s: expected '%s' in: %s", bad[i].args, bad[i].msg, err);
        assert_int_equal(lg_file_exists(o2), 0); /* nothing written */
        free(o2);
    }
    const char *files[] = {"adapter_model.safetensors", "adapter_config.json", "metrics.jsonl", "loss.svg",
                           "loraga_diagnostics.jsonl", "init_lora_checkpoint/adapter_model.safetensors",
                           "init_lora_checkpoint/adapter_config.json"};
    for (int i = 0; i < 7; i++) {
        char *p = lg_path_join(run, files[i]);
        if (!lg_file_exists(p)) fail_msg("missing %s", p);
        free(p);
    }
    char *ac = lg_path_join(run, "adapter_config.json"), *text;
    assert_int_equal(lg_read_file(ac, &text, NULL), 0);
    /* the lora-ga preset: rsLoRA, r 8 exported as rank 2r = 16 with alpha sqrt(2) x 16 */
    assert_non_null(strstr(text, "\"r\":\t16"));
    assert_non_null(strstr(text, "\"use_rslora\":\ttrue"));
    assert_float_equal(json_number(strstr(text, "lora_alpha") - 1, "lora_alpha"), 16 * sqrt(2.0), 1e-4);
    free(text), free(ac), free(run), free(train);
}

/* --targets peft: PEFT's default target modules for the model type (llama: q_proj, v_proj). */
static void test_targets_peft(void **state) {
    (void)state;
    if (!have_model()) {
        print_message("skipped: no converted model (../shared/data absent)\n");
        skip();
    }
    char *train = write_rows("train_peft.jsonl", "glue_SST-2/train.tsv", 0, 40);
    char *run = lg_path_join(g_tmp, "run_peft_targets");
    static char out[16384];
    int rc = sh(out, sizeof out, "%s train --model %s --data %s --targets peft --steps 2 --batch-size 2 --seq-len 32 "
                "--out %s 2>&1", lg_test_bin(), g_hf, train, run);
    if (rc) print_message("%s\n", out);
    assert_int_equal(rc, 0);
    char *ac = lg_path_join(run, "adapter_config.json"), *text;
    assert_int_equal(lg_read_file(ac, &text, NULL), 0);
    assert_non_null(strstr(text, "\"q_proj\""));
    assert_non_null(strstr(text, "\"v_proj\""));
    assert_null(strstr(text, "\"k_proj\""));
    assert_null(strstr(text, "gate_proj"));
    free(text), free(ac), free(run), free(train);
}

/* Every method trains on the real model and a real task: SST-2 as prompt/completion rows on
 * stories260K. Each must lower the held-out loss (measured with eval, through the saved output:
 * the adapter reloaded with --adapter, or full FT's HF directory). */
static char *write_sst2_pc(const char *name, const char *tsv, int first, int count) {
    char *src = lg_test_shared(tsv), *text;
    if (!src) return NULL;
    assert_int_equal(lg_read_file(src, &text, NULL), 0);
    char *path = lg_path_join(g_tmp, name);
    FILE *f = fopen(path, "w");
    char *save = NULL;
    int i = -1;
    for (char *ln = strtok_r(text, "\n", &save); ln; ln = strtok_r(NULL, "\n", &save), i++) {
        if (i < first) continue;
        if (i >= first + count) break;
        char *tab = strchr(ln, '\t');
        if (!tab) continue;
        *tab = 0;
        fputs("{\"prompt\": \"Review: ", f);
        for (char *c = ln; *c; c++) {
            if (*c == '"' || *c == '\\') fputc('\\', f);
            fputc(*c, f);
        }
        fprintf(f, "\\nSentiment:\", \"completion\": \"%s\"}\n", tab[1] == '1' ? " positive" : " negative");
    }
    fclose(f);
    free(text), free(src);
    return path;
}

static void test_every_method_lowers_heldout_loss(void **state) {
    (void)state;
    if (!have_model()) {
        print_message("skipped: no converted model (../shared/data absent)\n");
        skip();
    }
    char *train = write_sst2_pc("pc_train.jsonl", "glue_SST-2/train.tsv", 0, 300);
    char *held = write_sst2_pc("pc_held.jsonl", "glue_SST-2/dev.tsv", 0, 60);
    static char out[16384];
    assert_int_equal(sh(out, sizeof out, "%s eval --model %s --data %s --json", lg_test_bin(), g_hf, held), 0);
    double base = json_number(out, "loss");
    const char *methods[] = {"full", "lora", "rslora", "loraplus", "dora", "pissa", "adalora", "lora-ga"};
    const char *lrs[] = {"1e-3", "3e-3", "3e-3", "1e-3", "3e-3", "1e-3", "3e-3", "1e-3"};
    for (int i = 0; i < 8; i++) {
        char run[600];
        snprintf(run, sizeof run, "%s/m_%s", g_tmp, methods[i]);
        int rc = sh(out, sizeof out,
                    "OMP_NUM_THREADS=1 %s train --model %s --data %s --method %s --steps 15 --batch-size 8 --seq-len 64 --lr %s "
                    "--rank 4 --target-r 2 --ga-batches 8 --out %s 2>&1",
                    lg_test_bin(), g_hf, train, methods[i], lrs[i], run);
        if (rc) print_message("%s\n", out);
        assert_int_equal(rc, 0);
        if (i == 0) rc = sh(out, sizeof out, "%s eval --model %s --data %s --json", lg_test_bin(), run, held);
        else rc = sh(out, sizeof out, "%s eval --model %s --adapter %s --data %s --json", lg_test_bin(), g_hf, run, held);
        if (rc) print_message("%s\n", out);
        assert_int_equal(rc, 0);
        double after = json_number(out, "loss");
        print_message("%-9s held-out loss %.4f -> %.4f\n", methods[i], base, after);
        assert_true(after < base - 0.1);
    }
    free(train), free(held);
}

/* `loraga bench --model DIR`: the benchmark on a real model directory (random tokens, r 8 on all
 * linear layers) runs and reports its JSON line with the precision it used (no speed is asserted). */
static void test_bench_model(void **state) {
    (void)state;
    if (!have_model()) {
        print_message("skipped: no converted model (../shared/data absent)\n");
        skip();
    }
    static char out[16384];
    const char *modes[3] = {"lora", "full", "fwd"};
    for (int i = 0; i < 3; i++) {
        int rc = sh(out, sizeof out,
                    "%s bench --model %s --mode %s --batch-size 2 --seq-len 32 --steps 2 --warmup 1 --precision bf16 "
                    "--json 2>&1",
                    lg_test_bin(), g_hf, modes[i]);
        if (rc) print_message("%s\n", out);
        assert_int_equal(rc, 0);
        assert_non_null(strstr(out, "\"precision\": \"bf16\""));
        assert_true(json_number(out, "tokens_per_s") > 0);
        assert_true(json_number(out, "tokens_per_step") == 64);
        if (!strcmp(modes[i], "lora")) assert_true(json_number(out, "adapted_layers") == 5 * 7);
    }
    assert_int_not_equal(sh(out, sizeof out, "%s bench --model %s --mode lora --seq-len 4096 2>&1", lg_test_bin(), g_hf), 0);
    assert_non_null(strstr(out, "--seq-len 4096"));
}

static void test_bad_input_is_reported(void **state) {
    (void)state;
    static char out[8192];
    /* unknown option, missing arguments: usage errors (exit 2) */
    assert_int_equal(sh(out, sizeof out, "%s eval --modle x 2>&1", lg_test_bin()), 2);
    assert_non_null(strstr(out, "--modle"));
    assert_int_equal(sh(out, sizeof out, "%s frobnicate 2>&1", lg_test_bin()), 2);
    /* a truncated llama2.c file */
    char *bad = lg_path_join(g_tmp, "trunc.bin");
    FILE *f = fopen(bad, "wb");
    int32_t hdr[7] = {64, 172, 5, 8, 4, 512, 512};
    fwrite(hdr, 4, 7, f);
    fwrite(hdr, 4, 7, f);
    fclose(f);
    char *o1 = lg_path_join(g_tmp, "o1");
    assert_int_equal(sh(out, sizeof out, "%s convert --from llama2c --model %s --out %s 2>&1", lg_test_bin(), bad, o1), 1);
    assert_non_null(strstr(out, "trunc.bin"));
    assert_non_null(strstr(out, "truncated"));
    assert_false(lg_file_exists(o1)); /* nothing written */
    /* a JSONL row that is not JSON: file:line named, nothing starts */
    char *cfg = lg_path_join(g_hf, "config.json");
    if (lg_file_exists(cfg)) {
        char *rows = lg_path_join(g_tmp, "bad.jsonl");
        f = fopen(rows, "w");
        fputs("{\"text\": \"fine\"}\n{\"text\": \"also fine\"}\n{\"text\": broken\n", f);
        fclose(f);
        char *o2 = lg_path_join(g_tmp, "o2");
        assert_int_equal(sh(out, sizeof out, "%s train --model %s --data %s --method full --steps 1 --out %s 2>&1",
                            lg_test_bin(), g_hf, rows, o2), 1);
        print_message("bad row: %s", out);
        assert_non_null(strstr(out, "bad.jsonl:3"));
        assert_false(lg_file_exists(o2));
        /* an existing, non-empty output directory is never overwritten */
        char *good = lg_path_join(g_tmp, "good.jsonl");
        f = fopen(good, "w");
        fputs("{\"text\": \"fine\"}\n", f);
        fclose(f);
        assert_int_equal(sh(out, sizeof out, "%s train --model %s --data %s --method full --steps 1 --out %s 2>&1",
                            lg_test_bin(), g_hf, good, g_hf), 1);
        assert_non_null(strstr(out, "already exists"));
        free(good);
        /* --skip-bad: the run goes on and says how many rows it skipped */
        assert_int_equal(sh(out, sizeof out,
                            "%s train --model %s --data %s --method full --steps 1 --batch-size 2 --seq-len 16 "
                            "--skip-bad --out %s 2>&1",
                            lg_test_bin(), g_hf, rows, o2), 0);
        assert_non_null(strstr(out, "skipped 1"));
        free(o2), free(rows);
    }
    free(cfg), free(bad), free(o1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_convert_and_eval_both_paths),
        cmocka_unit_test(test_full_finetune_lowers_heldout_loss),
        cmocka_unit_test(test_loraga_run_outputs),
        cmocka_unit_test(test_targets_peft),
        cmocka_unit_test(test_every_method_lowers_heldout_loss),
        cmocka_unit_test(test_bench_model),
        cmocka_unit_test(test_bad_input_is_reported),
    };
    return cmocka_run_group_tests_name("cli", tests, setup, teardown);
}
