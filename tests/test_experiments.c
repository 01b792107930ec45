/* test_experiments.c — the experiment runners' dry runs: experiments/run.sh --dry-run and
 * experiments/smollm2.sh --dry-run print their whole plan (every training and evaluation command)
 * without a binary, a model or data, create nothing, and exit 0; the plan covers every method ×
 * task, the learning-rate sweep and the three seeds. Seconds, no shared data needed. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define CAP (1 << 20)

static const char *const METHODS[] = {"full", "lora", "rslora", "loraplus", "dora", "pissa", "adalora", "lora-ga"};
#define NMETHODS (sizeof METHODS / sizeof METHODS[0])
static const char *const SEEDS[] = {"1", "2", "3"};

/* A line of out that starts with prefix (at the start of out or after a newline). */
static const char *line_with(const char *out, const char *prefix) {
    size_t n = strlen(prefix);
    for (const char *p = out; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (!strncmp(p, prefix, n)) return p;
    return NULL;
}

/* The rest of the line that starts at p, copied into buf. */
static const char *line_text(const char *p, char *buf, size_t cap) {
    size_t n = strcspn(p, "\n");
    if (n >= cap) n = cap - 1;
    memcpy(buf, p, n);
    buf[n] = 0;
    return buf;
}

static int count_prefix(const char *out, const char *prefix) {
    int c = 0;
    size_t n = strlen(prefix);
    for (const char *p = out; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (!strncmp(p, prefix, n)) c++;
    return c;
}

/* The rates of "plan: TASK: rates [a b c], ..." as a space-separated string in buf. */
static int rates_of(const char *out, const char *task, char *buf, size_t cap) {
    char pre[128];
    snprintf(pre, sizeof pre, "plan: %s: rates [", task);
    const char *p = line_with(out, pre);
    if (!p) return -1;
    p += strlen(pre);
    size_t n = strcspn(p, "]\n");
    if (n >= cap) n = cap - 1;
    memcpy(buf, p, n);
    buf[n] = 0;
    int k = 0;
    char tmp[256];
    snprintf(tmp, sizeof tmp, "%s", buf);
    char *save = NULL;
    for (char *t = strtok_r(tmp, " ", &save); t; t = strtok_r(NULL, " ", &save)) k++;
    return k;
}

static void expect_line(const char *out, const char *fmt, const char *a, const char *b, const char *c,
                        const char *d) {
    char pre[256];
    snprintf(pre, sizeof pre, fmt, a, b, c, d);
    if (!line_with(out, pre)) fail_msg("plan has no line starting with '%s'", pre);
}

static int exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

static void test_run_sh_dry_run_covers_the_study(void **state) {
    (void)state;
    char *tmp = lg_test_tmpdir();
    assert_non_null(tmp);
    char *out = malloc(CAP), cmd[1024], line[4096];
    assert_non_null(out);
    /* no binary and no data: the plan must still come out (and say what is missing) */
    snprintf(cmd, sizeof cmd,
             "env -u TASKS -u METHODS -u SEEDS LORAGA=%s/no-loraga DATA=%s/no-data bash experiments/run.sh "
             "--dry-run --out %s/out 2>&1",
             tmp, tmp, tmp);
    assert_int_equal(lg_test_run(cmd, out, CAP), 0);
    assert_non_null(line_with(out, "check: binary"));
    assert_non_null(strstr(out, "missing"));
    const char *tasks[] = {"sst2", "mrpc", "tinystories", "gsm8k-lm"};
    int ntrain = 0;
    for (size_t t = 0; t < sizeof tasks / sizeof tasks[0]; t++) {
        char rates[256];
        int nr = rates_of(out, tasks[t], rates, sizeof rates);
        if (nr < 3) fail_msg("task %s: a sweep of %d rates (want >= 3)", tasks[t], nr);
        for (size_t m = 0; m < NMETHODS; m++) {
            char rs[256], *save = NULL;
            snprintf(rs, sizeof rs, "%s", rates);
            for (char *r = strtok_r(rs, " ", &save); r; r = strtok_r(NULL, " ", &save), ntrain++)
                expect_line(out, "train %s %s lr=%s seed=%s:", tasks[t], METHODS[m], r, "1");
            for (int s = 1; s < 3; s++, ntrain++) /* the other seeds at the best rate */
                expect_line(out, "train %s %s lr=%s seed=%s:", tasks[t], METHODS[m], "<best>", SEEDS[s]);
            if (t == 2) continue; /* tinystories: validation loss only */
            for (int s = 0; s < 3; s++) { /* every seed's best-rate run is scored on the task */
                char pre[256];
                snprintf(pre, sizeof pre, "eval %s %s lr=<best> seed=%s:", tasks[t], METHODS[m], SEEDS[s]);
                const char *p = line_with(out, pre);
                if (!p) fail_msg("plan has no line starting with '%s'", pre);
                line_text(p, line, sizeof line);
                const char *want = t == 3 ? "--task gsm8k" : t == 0 ? "--task sst2" : "--task mrpc";
                int found = 0; /* the task metric: some eval line of this run scores the task */
                for (const char *q = p; q; q = line_with(q + 1, pre))
                    if (strstr(line_text(q, line, sizeof line), want)) found = 1;
                if (!found) fail_msg("no '%s' evaluation for '%s'", want, pre);
            }
        }
        /* the training commands carry the method and the rate */
        char pre[128];
        snprintf(pre, sizeof pre, "train %s lora-ga lr=<best> seed=2:", tasks[t]);
        line_text(line_with(out, pre), line, sizeof line);
        assert_non_null(strstr(line, "train --model"));
        assert_non_null(strstr(line, "--method lora-ga"));
        assert_non_null(strstr(line, "--seed 2"));
    }
    assert_int_equal(count_prefix(out, "train "), ntrain);
    assert_non_null(strstr(out, "--limit")); /* GSM8K: the first N test problems */
    assert_non_null(line_with(out, "analyse: "));
    /* nothing was created */
    snprintf(line, sizeof line, "%s/out", tmp);
    assert_false(exists(line));

    /* the environment narrows the plan: one task, two rates, four seeds */
    snprintf(cmd, sizeof cmd,
             "TASKS=mrpc LRS_mrpc='1e-3 2e-3' SEEDS='1 2 3 4' METHODS='lora lora-ga' bash experiments/run.sh "
             "--dry-run --out %s/out 2>&1",
             tmp);
    assert_int_equal(lg_test_run(cmd, out, CAP), 0);
    assert_int_equal(count_prefix(out, "train "), 2 * (2 + 3));
    expect_line(out, "train %s %s lr=%s seed=%s:", "mrpc", "lora-ga", "2e-3", "1");
    expect_line(out, "train %s %s lr=%s seed=%s:", "mrpc", "lora", "<best>", "4");
    assert_null(line_with(out, "train sst2"));

    /* a bad option is an error */
    snprintf(cmd, sizeof cmd, "bash experiments/run.sh --dry-run --no-such-option 2>&1");
    assert_int_equal(lg_test_run(cmd, out, CAP), 2);

    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    assert_int_equal(system(cmd), 0);
    free(out);
    free(tmp);
}

static void test_smollm2_dry_run_covers_every_method_and_task(void **state) {
    (void)state;
    char *tmp = lg_test_tmpdir();
    assert_non_null(tmp);
    char *out = malloc(CAP), cmd[1024];
    assert_non_null(out);
    snprintf(cmd, sizeof cmd,
             "env -u TASKS -u METHODS LORAGA=%s/no-loraga DATA=%s/no-data bash experiments/smollm2.sh --dry-run "
             "--out %s/out 2>&1",
             tmp, tmp, tmp);
    assert_int_equal(lg_test_run(cmd, out, CAP), 0);
    const char *tasks[] = {"sst2", "mrpc", "gsm8k-lm"};
    for (size_t t = 0; t < sizeof tasks / sizeof tasks[0]; t++) {
        for (size_t m = 0; m < NMETHODS; m++) {
            char pre[128];
            snprintf(pre, sizeof pre, "train %s %s lr=", tasks[t], METHODS[m]);
            if (!line_with(out, pre)) fail_msg("smollm2 plan has no '%s'", pre);
            snprintf(pre, sizeof pre, "eval %s %s lr=", tasks[t], METHODS[m]);
            if (!line_with(out, pre)) fail_msg("smollm2 plan has no '%s'", pre);
        }
        char pre[64];
        snprintf(pre, sizeof pre, "eval %s base:", tasks[t]);
        assert_non_null(line_with(out, pre));
    }
    /* LoRA and LoRA-GA at (at least) two rates each */
    char pre[64];
    snprintf(pre, sizeof pre, "train sst2 lora lr=");
    assert_true(count_prefix(out, pre) >= 2);
    snprintf(pre, sizeof pre, "train sst2 lora-ga lr=");
    assert_true(count_prefix(out, pre) >= 2);
    assert_non_null(strstr(out, "--task gsm8k"));
    snprintf(cmd, sizeof cmd, "%s/out", tmp);
    assert_false(exists(cmd));
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    assert_int_equal(system(cmd), 0);
    free(out);
    free(tmp);
}

static void test_scripts_parse(void **state) {
    (void)state;
    char out[4096];
    assert_int_equal(lg_test_run("bash -n experiments/run.sh && bash -n experiments/smollm2.sh 2>&1", out, sizeof out),
                     0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scripts_parse),
        cmocka_unit_test(test_run_sh_dry_run_covers_the_study),
        cmocka_unit_test(test_smollm2_dry_run_covers_every_method_and_task),
    };
    return cmocka_run_group_tests_name("experiments", tests, NULL, NULL);
}
