/* test_chat_template.c — the Jinja interpreter and chat rendering against transformers.
 *
 * tests/golden/chat_templates/golden.json (scripts/reference/chat_templates.py, transformers +
 * jinja2): the real templates of SmolLM2, Llama 3.1/3.2/3.3, Qwen2.5, Qwen3, Gemma 2, Phi-3.5,
 * Mistral Nemo and SmolLM3 rendered on single/multi-turn, system, generation-prompt, unicode and
 * tools cases, byte for byte; the assistant spans found by rendering prefixes; and small templates
 * covering the Jinja features chat templates use. Plus errors: unsupported constructs and syntax
 * errors are refused with their line and column. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "template/chat.h"
#include "template/jinja.h"

#define GOLDEN "tests/golden/chat_templates/"

static cJSON *load_golden(void) {
    char *data;
    size_t n;
    assert_int_equal(lg_read_file(GOLDEN "golden.json", &data, &n), 0);
    cJSON *g = cJSON_ParseWithLength(data, n);
    free(data);
    assert_non_null(g);
    return g;
}

static void show_diff(const char *want, const char *got) {
    size_t i = 0;
    while (want[i] && want[i] == got[i]) i++;
    print_message("first difference at byte %zu:\n  want: %.80s\n  got:  %.80s\n", i, want + i, got + i);
}

static void test_real_templates(void **state) {
    (void)state;
    cJSON *g = load_golden();
    const cJSON *t, *c;
    int checked = 0, spans_checked = 0, failed = 0;
    cJSON_ArrayForEach(t, cJSON_GetObjectItem(g, "templates")) {
        const char *name = cJSON_GetObjectItem(t, "name")->valuestring;
        char path[256], *tmpl;
        size_t tl;
        snprintf(path, sizeof path, GOLDEN "%s", cJSON_GetObjectItem(t, "file")->valuestring);
        assert_int_equal(lg_read_file(path, &tmpl, &tl), 0);
        cJSON_ArrayForEach(c, cJSON_GetObjectItem(t, "cases")) {
            const char *cn = cJSON_GetObjectItem(c, "case")->valuestring;
            lg_chat *ch;
            if (lg_chat_new(tmpl, name, cJSON_GetObjectItem(t, "special"), cJSON_GetObjectItem(c, "extra"), &ch)) {
                print_message("%s: %s\n", name, lg_last_error());
                fail();
            }
            const cJSON *msgs = cJSON_GetObjectItem(c, "messages"), *want = cJSON_GetObjectItem(c, "rendered");
            int agp = cJSON_IsTrue(cJSON_GetObjectItem(c, "add_generation_prompt"));
            char *out = NULL;
            size_t n = 0;
            int rc = lg_chat_render(ch, msgs, agp, &out, &n);
            if (want) {
                if (rc) {
                    print_message("%s/%s: error %s\n", name, cn, lg_last_error());
                    failed++;
                } else if (n != strlen(want->valuestring) || memcmp(out, want->valuestring, n)) {
                    print_message("%s/%s: rendering differs from transformers\n", name, cn);
                    show_diff(want->valuestring, out);
                    failed++;
                }
            } else {
                const char *err = cJSON_GetObjectItem(c, "error")->valuestring;
                const char *msg = strchr(err, ':') ? strchr(err, ':') + 2 : err;
                if (rc == 0) {
                    print_message("%s/%s: rendered, transformers raised %s\n", name, cn, err);
                    failed++;
                } else if (!strstr(lg_last_error(), msg)) {
                    print_message("%s/%s: error '%s', transformers: '%s'\n", name, cn, lg_last_error(), err);
                    failed++;
                }
            }
            free(out);
            checked++;
            /* assistant spans */
            const cJSON *sp = cJSON_GetObjectItem(c, "spans"), *se = cJSON_GetObjectItem(c, "span_error");
            if (sp || se) {
                char *txt;
                size_t tn;
                lg_jinja_span *s;
                int ns;
                rc = lg_chat_assistant_spans(ch, msgs, &txt, &tn, &s, &ns);
                if (se) {
                    if (rc == 0) print_message("%s/%s: spans found where the reference failed\n", name, cn), failed++;
                    else assert_non_null(strstr(lg_last_error(), "cannot locate this assistant turn"));
                } else if (rc) {
                    print_message("%s/%s: spans: %s\n", name, cn, lg_last_error());
                    failed++;
                } else {
                    int ok = ns == cJSON_GetArraySize(sp);
                    for (int i = 0; ok && i < ns; i++) {
                        const cJSON *pr = cJSON_GetArrayItem(sp, i);
                        ok = (size_t)cJSON_GetArrayItem(pr, 0)->valuedouble == s[i].a &&
                             (size_t)cJSON_GetArrayItem(pr, 1)->valuedouble == s[i].b;
                    }
                    if (!ok) print_message("%s/%s: assistant spans differ from the reference\n", name, cn), failed++;
                    free(txt);
                    free(s);
                }
                spans_checked++;
            }
            lg_chat_free(ch);
        }
        free(tmpl);
    }
    cJSON_Delete(g);
    print_message("%d template cases, %d span cases checked against transformers\n", checked, spans_checked);
    assert_int_equal(failed, 0);
    assert_true(checked >= 50);
}

static void test_features(void **state) {
    (void)state;
    cJSON *g = load_golden();
    const cJSON *f;
    int i = 0, failed = 0;
    cJSON_ArrayForEach(f, cJSON_GetObjectItem(g, "features")) {
        const char *src = cJSON_GetObjectItem(f, "template")->valuestring;
        const cJSON *want = cJSON_GetObjectItem(f, "rendered");
        lg_jinja *t = NULL;
        char *out = NULL;
        int rc = lg_jinja_parse(src, strlen(src), "feature", &t);
        if (!rc) rc = lg_jinja_render(t, cJSON_GetObjectItem(f, "vars"), &out, NULL, NULL, NULL);
        lg_jinja_free(t);
        if (want) {
            if (rc) print_message("feature %d: %s\n  template: %s\n", i, lg_last_error(), src), failed++;
            else if (strcmp(out, want->valuestring)) {
                print_message("feature %d differs\n  template: %s\n", i, src);
                show_diff(want->valuestring, out);
                failed++;
            }
        } else if (!rc) {
            print_message("feature %d: rendered '%s', jinja2 raised %s\n", i, out, cJSON_GetObjectItem(f, "error")->valuestring);
            failed++;
        }
        free(out);
        i++;
    }
    cJSON_Delete(g);
    assert_int_equal(failed, 0);
}

static void expect_parse_error(const char *src, const char *needle) {
    lg_jinja *t = NULL;
    int rc = lg_jinja_parse(src, strlen(src), "t.jinja", &t);
    if (rc == 0) {
        char *out = NULL;
        rc = lg_jinja_render(t, NULL, &out, NULL, NULL, NULL);
        free(out);
        lg_jinja_free(t);
    }
    assert_int_equal(rc, -1);
    if (!strstr(lg_last_error(), needle)) print_message("error '%s' lacks '%s'\n", lg_last_error(), needle);
    assert_non_null(strstr(lg_last_error(), needle));
}

static void test_errors(void **state) {
    (void)state;
    expect_parse_error("ab\n{% include 'x.jinja' %}", "t.jinja:2:4: unsupported construct: {% include %}");
    expect_parse_error("{% for x in xs recursive %}{% endfor %}", "unsupported construct: recursive");
    expect_parse_error("{{ x | frobnicate }}", "unsupported construct: filter 'frobnicate'");
    expect_parse_error("{{ x is frob }}", "unsupported construct: test 'frob'");
    expect_parse_error("{% if x %}never closed", "t.jinja:1:1: 'if' block is never closed");
    expect_parse_error("{{ 'abc' }", "t.jinja:1:10: unexpected '}'");
    expect_parse_error("{{ 'abc'", "'{{' not closed");
    expect_parse_error("{% endfor %}", "unexpected {% endfor %}");
    expect_parse_error("{{ (1 + }}", "t.jinja:1:");
    expect_parse_error("{{ raise_exception('no system role') }}", "the template raised an exception: no system role");
    expect_parse_error("{{ x.y }}", "'x' is undefined");
    expect_parse_error("{{ [1].append(2) }}", "list.append()");
    expect_parse_error("{{ 'a' + 1 }}", "unsupported operand type(s) for +: 'str' and 'int'");
}

static void test_generation_spans(void **state) {
    (void)state;
    const char *src = "{% for m in messages %}{{ m.role }}:{% if m.role == 'assistant' %}{% generation %}"
                      "{{ m.content }}!{% endgeneration %}{% else %}{{ m.content }}{% endif %}{{ '\\n' }}{% endfor %}";
    cJSON *msgs = cJSON_Parse("[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":\"yo\"},"
                              "{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"assistant\",\"content\":\"a\"}]");
    lg_chat *c;
    assert_int_equal(lg_chat_new(src, "gen", NULL, NULL, &c), 0);
    char *txt;
    size_t n;
    lg_jinja_span *s;
    int ns;
    assert_int_equal(lg_chat_assistant_spans(c, msgs, &txt, &n, &s, &ns), 0);
    assert_string_equal(txt, "user:hi\nassistant:yo!\nuser:q\nassistant:a!\n");
    assert_int_equal(ns, 2);
    assert_int_equal(s[0].a, 18);
    assert_int_equal(s[0].b, 21);
    assert_int_equal(s[1].a, 39);
    assert_int_equal(s[1].b, 41);
    free(txt);
    free(s);
    lg_chat_free(c);
    cJSON_Delete(msgs);
}

/* the CLI on the real SmolLM2 (skipped without it): tokenize --as-training gives transformers'
 * apply_chat_template ids for a chat row and EOS after a completion; generate --chat renders the
 * question as apply_chat_template(..., add_generation_prompt=True) and answers as transformers'
 * greedy generate did (tests/golden/gguf/smollm2_reference.json) */
static void test_cli_smollm2(void **state) {
    (void)state;
    char smol[4096] = {0};
    const char *env = getenv("LORAGA_SMOLLM2"), *home = getenv("HOME");
    if (env && *env) snprintf(smol, sizeof smol, "%s", env);
    else snprintf(smol, sizeof smol, "%s/.cache/loraga/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", home ? home : "/tmp");
    if (!lg_file_exists(smol)) {
        print_message("skipped: SmolLM2-135M-Instruct not cached (scripts/fetch_smollm2.sh)\n");
        skip();
    }
    char *data;
    size_t n;
    assert_int_equal(lg_read_file("tests/golden/gguf/smollm2_reference.json", &data, &n), 0);
    cJSON *ref = cJSON_Parse(data);
    free(data);
    const cJSON *chat = cJSON_GetObjectItem(ref, "chat");
    char *dir = lg_test_tmpdir(), rows[4200], cmd[16384];
    static char out[1 << 16];
    snprintf(rows, sizeof rows, "%s/rows.jsonl", dir);
    char *msgs = cJSON_PrintUnformatted(cJSON_GetObjectItem(chat, "messages"));
    FILE *f = fopen(rows, "w");
    fprintf(f, "{\"messages\": %s}\n{\"prompt\": \"Hello there\", \"completion\": \" friend\"}\n", msgs);
    fclose(f);
    free(msgs);
    snprintf(cmd, sizeof cmd, "%s tokenize --tokenizer %s --input %s --as-training", lg_test_bin(), smol, rows);
    assert_int_equal(lg_test_run(cmd, out, sizeof out), 0);
    char *l2 = strchr(out, '\n');
    assert_non_null(l2);
    *l2++ = 0;
    cJSON *r1 = cJSON_Parse(out), *r2 = cJSON_Parse(l2);
    assert_non_null(r1);
    assert_non_null(r2);
    const cJSON *ids = cJSON_GetObjectItem(r1, "ids"), *want = cJSON_GetObjectItem(chat, "ids");
    assert_int_equal(cJSON_GetArraySize(ids), cJSON_GetArraySize(want));
    for (int i = 0; i < cJSON_GetArraySize(want); i++)
        assert_int_equal(cJSON_GetArrayItem(ids, i)->valueint, cJSON_GetArrayItem(want, i)->valueint);
    /* prompt + completion + EOS (<|im_end|>, id 2), loss on " friend" and EOS */
    const cJSON *i2 = cJSON_GetObjectItem(r2, "ids"), *m2 = cJSON_GetObjectItem(r2, "mask");
    int k = cJSON_GetArraySize(i2);
    assert_true(k >= 3);
    assert_int_equal(cJSON_GetArrayItem(i2, k - 1)->valueint, 2);
    assert_int_equal(cJSON_GetArrayItem(m2, k - 1)->valueint, 1);
    assert_int_equal(cJSON_GetArrayItem(m2, 0)->valueint, 0);
    cJSON_Delete(r1);
    cJSON_Delete(r2);
    /* generate --chat: the question, greedy */
    const cJSON *q = cJSON_GetArrayItem(cJSON_GetObjectItem(chat, "question"), 0);
    snprintf(cmd, sizeof cmd, "OMP_NUM_THREADS=2 %s generate --model %s --chat --prompt '%s' --temperature 0 --no-echo "
             "--max-tokens %d --stats 2>&1", lg_test_bin(), smol, cJSON_GetObjectItem(q, "content")->valuestring,
             cJSON_GetArraySize(cJSON_GetObjectItem(chat, "greedy_ids")) + 2);
    assert_int_equal(lg_test_run(cmd, out, sizeof out), 0);
    char want_stats[64];
    snprintf(want_stats, sizeof want_stats, "%d prompt tokens", cJSON_GetArraySize(cJSON_GetObjectItem(chat, "prompt_ids")));
    print_message("generate --chat: %s", out);
    assert_non_null(strstr(out, want_stats));
    char greedy[512];
    snprintf(greedy, sizeof greedy, "%s", cJSON_GetObjectItem(chat, "greedy_text")->valuestring);
    char *im = strstr(greedy, "<|im_end|>");
    if (im) *im = 0;
    assert_true(strncmp(out, greedy, strlen(greedy)) == 0);
    cJSON_Delete(ref);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    lg_test_run(cmd, NULL, 0);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_real_templates),
        cmocka_unit_test(test_features),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_generation_spans),
        cmocka_unit_test(test_cli_smollm2),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
