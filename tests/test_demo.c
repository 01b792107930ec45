/* test_demo.c — `make demo`'s pipeline (scripts/demo.sh + demo/demo.py) on a reduced budget:
 * `scripts/demo.sh --quick` on SmolLM2-135M-Instruct (fetched like test_gguf; skipped when it
 * cannot be had) and on stories260K from ../shared/data (skipped without it). Each run must
 * write the outputs the demo promises, and they must load: the PEFT adapters reload with
 * `loraga eval --adapter` and give the held-out loss the demo reported, metrics.jsonl parses,
 * the pictures are well-formed SVG, summary.json holds the table. The demo also refuses an
 * output folder it did not write. */
#include "testutil.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

static char *g_tmp;

static int setup(void **state) {
    (void)state;
    g_tmp = lg_test_tmpdir();
    return g_tmp ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
    int rc = system(cmd);
    free(g_tmp);
    return rc == 0 ? 0 : -1;
}

static int sh(char *out, size_t cap, const char *fmt, ...) LG_PRINTF(3, 4);
static int sh(char *out, size_t cap, const char *fmt, ...) {
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    return lg_test_run(cmd, out, cap);
}

static int have_python(void) {
    return lg_test_run("python3 -c 'import json, xml.etree.ElementTree' >/dev/null 2>&1", NULL, 0) == 0;
}

static char *path2(const char *a, const char *b) {
    char *p = lg_malloc(strlen(a) + strlen(b) + 2);
    sprintf(p, "%s/%s", a, b);
    return p;
}

static void assert_file(const char *dir, const char *name) {
    char *p = path2(dir, name);
    size_t n = 0;
    char *data = NULL;
    if (lg_read_file(p, &data, &n) != 0 || n == 0) fail_msg("demo output %s is missing or empty", p);
    free(data);
    free(p);
}

static cJSON *read_json(const char *path) {
    char *data = NULL;
    size_t n = 0;
    if (lg_read_file(path, &data, &n) != 0) fail_msg("cannot read %s", path);
    cJSON *j = cJSON_ParseWithLength(data, n);
    if (!j) fail_msg("%s is not JSON", path);
    free(data);
    return j;
}

static double num(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v)) fail_msg("'%s' is not a number", key);
    return v->valuedouble;
}

/* metrics.jsonl: one JSON object per update, steps 1..steps in order, finite losses. */
static void check_metrics(const char *run, int steps) {
    char *p = path2(run, "metrics.jsonl");
    char *data = NULL;
    assert_int_equal(lg_read_file(p, &data, NULL), 0);
    int k = 0;
    char *save = NULL;
    for (char *ln = strtok_r(data, "\n", &save); ln; ln = strtok_r(NULL, "\n", &save)) {
        cJSON *j = cJSON_Parse(ln);
        if (!j) fail_msg("%s: a line is not JSON: %.80s", p, ln);
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(j, "step");
        const cJSON *split = cJSON_GetObjectItemCaseSensitive(j, "split");
        if (cJSON_IsNumber(st) && !(cJSON_IsString(split) && strcmp(split->valuestring, "train"))) {
            double loss = num(j, "loss");
            assert_true(isfinite(loss) && loss > 0);
            assert_int_equal((int)st->valuedouble, ++k);
        }
        cJSON_Delete(j);
    }
    assert_int_equal(k, steps);
    free(data);
    free(p);
}

/* A picture is well-formed XML whose root is <svg> with a size. */
static void check_svg(const char *path) {
    char out[256];
    int rc = sh(out, sizeof out,
                "python3 -c 'import sys, xml.etree.ElementTree as E; r = E.parse(sys.argv[1]).getroot(); "
                "assert r.tag.endswith(\"svg\") and r.get(\"width\") and r.get(\"height\"), r.tag; "
                "print(len(list(r.iter())))' '%s' 2>&1",
                path);
    if (rc != 0) fail_msg("%s is not a valid SVG: %s", path, out);
    assert_true(atoi(out) > 10); /* more than an empty frame */
}

/* The adapter reloads: `loraga eval --adapter` gives the held-out loss the demo reported. */
static void check_adapter_reloads(const char *out, const char *model, const char *method, const cJSON *summary,
                                  int rank2) {
    char *run = path2(out, method);
    assert_file(run, "adapter_model.safetensors");
    char *cfgp = path2(run, "adapter_config.json");
    cJSON *cfg = read_json(cfgp);
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(cfg, "peft_type");
    assert_true(cJSON_IsString(pt) && !strcmp(pt->valuestring, "LORA"));
    assert_int_equal((int)num(cfg, "r"), rank2); /* LoRA-GA exports rank 2r relative to the base */
    cJSON_Delete(cfg);
    free(cfgp);
    char buf[4096];
    int rc = sh(buf, sizeof buf, "'%s' eval --model '%s' --adapter '%s' --data '%s/eval/heldout_rows.jsonl' --json 2>&1",
                lg_test_bin(), model, run, out);
    if (rc != 0) fail_msg("the %s adapter does not reload: %s", method, buf);
    cJSON *ev = cJSON_Parse(buf);
    if (!ev) fail_msg("eval output is not JSON: %s", buf);
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(summary, method);
    assert_non_null(m);
    double got = num(ev, "loss"), want = num(m, "heldout_loss");
    print_message("%s: reloaded adapter held-out loss %.6f (demo reported %.6f)\n", method, got, want);
    assert_true(fabs(got - want) <= 1e-4 * fmax(1.0, fabs(want)));
    cJSON_Delete(ev);
    free(run);
}

/* Runs the quick demo for one model; returns 0, or 77 when the demo skipped. */
static int run_quick(const char *model_kind, const char *out) {
    char log[16384]; /* the first 16 KB of the output; all of it is in OUT/demo.log */
    double t0 = lg_now();
    int rc = sh(log, sizeof log, "LORAGA_BIN='%s' timeout 600 scripts/demo.sh --quick --model %s --out '%s' 2>&1",
                lg_test_bin(), model_kind, out);
    if (rc == 77) {
        const char *s = strstr(log, "demo: skipped:");
        print_message("skipped (%s): %s", model_kind, s ? s + 15 : log);
        return 77;
    }
    if (rc != 0) {
        char *lp = path2(out, "demo.log"), *dlog = NULL;
        size_t n = 0;
        if (lg_read_file(lp, &dlog, &n) == 0) print_message("...%s\n", dlog + (n > 6000 ? n - 6000 : 0));
        else print_message("%s\n", log);
        free(dlog);
        free(lp);
        fail_msg("scripts/demo.sh --quick --model %s failed (exit %d)", model_kind, rc);
    }
    print_message("demo --quick --model %s: %.1f s\n", model_kind, lg_now() - t0);
    return 0;
}

static void check_outputs(const char *out) {
    static const char *files[] = {"summary.md", "summary.json", "compare.svg", "demo.log", "timings.tsv",
                                  "lora-ga/adapter_config.json", "lora-ga/metrics.jsonl", "lora-ga/loss.svg",
                                  "lora-ga/loraga_diagnostics.jsonl", "lora/adapter_config.json", "lora/metrics.jsonl",
                                  "lora/loss.svg", "eval/base.answers.jsonl", "eval/lora.answers.jsonl",
                                  "eval/lora-ga.answers.jsonl", "logs/train-lora-ga.log", "logs/train-lora.log"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) assert_file(out, files[i]);
    char *sp = path2(out, "summary.json");
    cJSON *s = read_json(sp);
    int steps = (int)num(s, "steps"), rank = (int)num(s, "rank");
    assert_true(steps >= 1);
    assert_true(num(s, "total_s") > 0);
    const cJSON *md = cJSON_GetObjectItemCaseSensitive(s, "model_dir");
    assert_true(cJSON_IsString(md));
    const cJSON *base = cJSON_GetObjectItemCaseSensitive(s, "base");
    assert_true(isfinite(num(base, "heldout_loss")));
    check_metrics(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(s, "lora-ga"), "adapter")->valuestring,
                  steps);
    char *r1 = path2(out, "lora");
    check_metrics(r1, steps);
    free(r1);
    static const char *svgs[] = {"compare.svg", "lora-ga/loss.svg", "lora/loss.svg"};
    for (size_t i = 0; i < 3; i++) {
        char *p = path2(out, svgs[i]);
        check_svg(p);
        free(p);
    }
    check_adapter_reloads(out, md->valuestring, "lora-ga", s, 2 * rank);
    check_adapter_reloads(out, md->valuestring, "lora", s, rank);
    /* the answers were parsed: every line has the verdicts */
    char *ap = path2(out, "eval/lora-ga.answers.jsonl");
    char *data = NULL;
    assert_int_equal(lg_read_file(ap, &data, NULL), 0);
    assert_non_null(strstr(data, "\"json_format\""));
    assert_non_null(strstr(data, "\"capital_right\""));
    free(data);
    free(ap);
    cJSON_Delete(s);
    free(sp);
}

static void quick(const char *kind) {
    if (!have_python()) {
        print_message("skipped: python3 not found (the demo needs it; apt-get install python3)\n");
        skip();
    }
    char *out = path2(g_tmp, kind);
    if (run_quick(kind, out) == 77) {
        free(out);
        skip();
    }
    check_outputs(out);
    free(out);
}

static void test_demo_quick_smollm2(void **state) {
    (void)state;
    quick("smollm2");
}

static void test_demo_quick_stories260K(void **state) {
    (void)state;
    quick("stories260K");
}

/* The demo never writes into a folder it did not create: a foreign file stays untouched. */
static void test_demo_refuses_foreign_output(void **state) {
    (void)state;
    char *dir = path2(g_tmp, "foreign");
    char out[2048];
    sh(out, sizeof out, "mkdir -p '%s' && echo keep > '%s/mine.txt'", dir, dir);
    int rc = sh(out, sizeof out, "LORAGA_BIN='%s' scripts/demo.sh --quick --out '%s' 2>&1", lg_test_bin(), dir);
    assert_int_not_equal(rc, 0);
    assert_non_null(strstr(out, "was not written by the demo"));
    assert_non_null(strstr(out, "--out"));
    char *f = path2(dir, "mine.txt"), *data = NULL;
    assert_int_equal(lg_read_file(f, &data, NULL), 0);
    assert_string_equal(data, "keep\n");
    free(data);
    free(f);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_demo_refuses_foreign_output),
        cmocka_unit_test(test_demo_quick_stories260K),
        cmocka_unit_test(test_demo_quick_smollm2),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
