/* test_formats.c — the row shapes and file kinds of formats.h: each one must give exactly the
 * examples (ids and loss flags) of the canonical row it stands for; refusals name FILE:LINE and
 * what is wrong; the counts printed at start. In-memory data, the character tokenizer of
 * testutil.c (no chat template) and the tiny GGUF fixture's ChatML tokenizer. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "data/data.h"
#include "data/formats.h"
#include "io/gguf.h"
#include "tokenizer/tokenizer.h"

#define CHAT_FIXTURE "tests/golden/gguf/tiny_llama.gguf"

static lg_tokenizer *g_char, *g_chat;

static int setup(void **state) {
    (void)state;
    g_char = lg_test_char_tokenizer();
    return lg_gguf_tokenizer(CHAT_FIXTURE, &g_chat);
}
static int teardown(void **state) {
    (void)state;
    lg_tokenizer_free(g_char);
    lg_tokenizer_free(g_chat);
    return 0;
}

static lg_data_opts opts(void) {
    lg_data_opts o;
    memset(&o, 0, sizeof o);
    o.max_len = 512;
    o.add_bos = 1;
    o.seed = 1;
    return o;
}

static lg_dataset *load(const char *name, const char *s, lg_file_kind kind, const lg_tokenizer *t,
                        const lg_data_opts *o) {
    lg_dataset *d = NULL;
    if (lg_dataset_load_mem_kind(name, s, strlen(s), kind, t, o, &d)) return NULL;
    return d;
}

static lg_dataset *load_ok(const char *name, const char *s, lg_file_kind kind, const lg_tokenizer *t,
                           const lg_data_opts *o) {
    lg_dataset *d = load(name, s, kind, t, o);
    if (!d) fail_msg("%s: %s", name, lg_last_error());
    return d;
}

/* a and b hold the same examples in file order: ids and loss flags equal */
static void assert_same(const lg_dataset *a, const lg_dataset *b) {
    int n = lg_dataset_count(a, LG_SPLIT_TRAIN_FILE);
    assert_true(n > 0);
    assert_int_equal(n, lg_dataset_count(b, LG_SPLIT_TRAIN_FILE));
    for (int i = 0; i < n; i++) {
        const int *ia, *ib;
        const unsigned char *la, *lb;
        int na, nb;
        assert_int_equal(lg_dataset_example(a, LG_SPLIT_TRAIN_FILE, i, &ia, &la, &na), 0);
        assert_int_equal(lg_dataset_example(b, LG_SPLIT_TRAIN_FILE, i, &ib, &lb, &nb), 0);
        if (na != nb) fail_msg("example %d: %d tokens vs %d", i, na, nb);
        assert_memory_equal(ia, ib, (size_t)na * sizeof(int));
        assert_memory_equal(la, lb, (size_t)na);
    }
}

static int loss_count(const lg_dataset *d, int i) {
    const int *ids;
    const unsigned char *l;
    int n, k = 0;
    assert_int_equal(lg_dataset_example(d, LG_SPLIT_TRAIN_FILE, i, &ids, &l, &n), 0);
    for (int t = 0; t < n; t++) k += l[t];
    return k;
}

/* the load fails and the message holds both strings */
static void expect_error(const char *name, const char *s, lg_file_kind kind, const lg_tokenizer *t,
                         const lg_data_opts *o, const char *where, const char *what) {
    lg_dataset *d = load(name, s, kind, t, o);
    if (d) fail_msg("%s: loaded, expected an error naming '%s'", name, what);
    const char *e = lg_last_error();
    if (!strstr(e, where) || !strstr(e, what)) fail_msg("error \"%s\" should name \"%s\" and \"%s\"", e, where, what);
}

static void test_file_kinds(void **state) {
    (void)state;
    assert_int_equal(lg_file_kind_of("a/b.jsonl"), LG_FILE_JSON);
    assert_int_equal(lg_file_kind_of("B.JSON"), LG_FILE_JSON);
    assert_int_equal(lg_file_kind_of("x.csv"), LG_FILE_CSV);
    assert_int_equal(lg_file_kind_of("x.TSV"), LG_FILE_TSV);
    assert_int_equal(lg_file_kind_of("x.txt"), LG_FILE_TEXT);
    assert_int_equal(lg_file_kind_of("csv"), LG_FILE_TEXT);
    lg_row_format f;
    assert_int_equal(lg_row_format_parse("sharegpt", &f), 0);
    assert_int_equal(f, LG_FMT_SHAREGPT);
    assert_int_equal(lg_row_format_parse("alpaca", &f), 0);
    assert_int_equal(f, LG_FMT_ALPACA);
    assert_int_equal(lg_row_format_parse("prompt-completion", &f), 0);
    assert_int_equal(f, LG_FMT_PROMPT_COMPLETION);
    assert_int_equal(lg_row_format_parse("conversational prompt-completion", &f), -1);
    assert_int_equal(lg_row_format_parse("vicuna", &f), -1);
    assert_non_null(strstr(lg_last_error(), "text, prompt-completion, messages, sharegpt, alpaca"));
}

/* Without a chat template, Alpaca rows are the Stanford Alpaca prompt + the output as completion. */
static void test_alpaca_prompt(void **state) {
    (void)state;
    lg_data_opts o = opts();
    const char *alpaca = "{\"instruction\": \"Add 2 and 3.\", \"input\": \"\", \"output\": \"5\"}\n"
                         "{\"instruction\": \"Translate.\", \"input\": \"chat\", \"output\": \"cat\", \"text\": \"x\"}\n"
                         "{\"instruction\": \"Say hi.\", \"output\": \"hi\", \"system\": \"Be short.\"}\n";
    const char *pc =
        "{\"prompt\": \"Below is an instruction that describes a task. Write a response that appropriately completes "
        "the request.\\n\\n### Instruction:\\nAdd 2 and 3.\\n\\n### Response:\\n\", \"completion\": \"5\"}\n"
        "{\"prompt\": \"Below is an instruction that describes a task, paired with an input that provides further "
        "context. Write a response that appropriately completes the request.\\n\\n### Instruction:\\nTranslate.\\n\\n"
        "### Input:\\nchat\\n\\n### Response:\\n\", \"completion\": \"cat\"}\n"
        "{\"prompt\": \"Be short.\\n\\n### Instruction:\\nSay hi.\\n\\n### Response:\\n\", \"completion\": \"hi\"}\n";
    lg_dataset *a = load_ok("alpaca.jsonl", alpaca, LG_FILE_JSON, g_char, &o);
    lg_dataset *b = load_ok("pc.jsonl", pc, LG_FILE_JSON, g_char, &o);
    assert_same(a, b);
    assert_int_equal(loss_count(a, 0), 2); /* "5" and the EOS a completion ends with (issue 15) */
    lg_data_stats st;
    lg_dataset_stats(a, &st);
    assert_int_equal(st.shape_rows[LG_FMT_ALPACA], 3); /* "text" beside the Alpaca keys does not win */
    assert_int_equal(st.alpaca_chat, 0);
    lg_dataset_free(a);
    lg_dataset_free(b);
    expect_error("a.jsonl", "{\"instruction\": \"x\", \"input\": \"y\"}\n", LG_FILE_JSON, g_char, &o, "a.jsonl:1:",
                 "no \"output\" field");
    expect_error("a.jsonl", "{\"instruction\": \"x\", \"output\": 3}\n", LG_FILE_JSON, g_char, &o, "a.jsonl:1:",
                 "\"output\" is not a string");
    expect_error("a.jsonl", "{\"instruction\": \"x\", \"output\": \"y\", \"history\": [[\"q\", \"a\"]]}\n", LG_FILE_JSON,
                 g_char, &o, "a.jsonl:1:", "needs a chat template");
}

/* With a chat template, Alpaca, ShareGPT and conversational prompt-completion rows are the
 * {"messages"} rows they stand for, token for token and loss flag for loss flag. */
static void test_chat_shapes(void **state) {
    (void)state;
    lg_data_opts o = opts();
    const char *alpaca =
        "{\"instruction\": \"Add\", \"input\": \"2 3\", \"output\": \"5\", \"system\": \"math\", \"history\": [[\"hi\", "
        "\"hello\"]]}\n"
        "{\"instruction\": \"Name a cat.\", \"output\": \"Tom\"}\n";
    const char *alpaca_msgs =
        "{\"messages\": [{\"role\": \"system\", \"content\": \"math\"}, {\"role\": \"user\", \"content\": \"hi\"}, "
        "{\"role\": \"assistant\", \"content\": \"hello\"}, {\"role\": \"user\", \"content\": \"Add\\n2 3\"}, "
        "{\"role\": \"assistant\", \"content\": \"5\"}]}\n"
        "{\"messages\": [{\"role\": \"user\", \"content\": \"Name a cat.\"}, {\"role\": \"assistant\", \"content\": "
        "\"Tom\"}]}\n";
    lg_dataset *a = load_ok("alpaca.jsonl", alpaca, LG_FILE_JSON, g_chat, &o);
    lg_dataset *b = load_ok("msgs.jsonl", alpaca_msgs, LG_FILE_JSON, g_chat, &o);
    assert_same(a, b);
    lg_data_stats st;
    lg_dataset_stats(a, &st);
    assert_int_equal(st.alpaca_chat, 1);
    lg_dataset_free(a);
    lg_dataset_free(b);

    const char *sharegpt =
        "{\"conversations\": [{\"from\": \"human\", \"value\": \"hi\"}, {\"from\": \"gpt\", \"value\": \"hello\"}, "
        "{\"from\": \"user\", \"value\": \"and?\"}, {\"from\": \"assistant\", \"value\": \"bye\", \"weight\": 0}], "
        "\"system\": \"be nice\"}\n";
    const char *sharegpt_msgs =
        "{\"messages\": [{\"role\": \"system\", \"content\": \"be nice\"}, {\"role\": \"user\", \"content\": \"hi\"}, "
        "{\"role\": \"assistant\", \"content\": \"hello\"}, {\"role\": \"user\", \"content\": \"and?\"}, "
        "{\"role\": \"assistant\", \"content\": \"bye\", \"weight\": 0}]}\n";
    a = load_ok("sg.jsonl", sharegpt, LG_FILE_JSON, g_chat, &o);
    b = load_ok("msgs.jsonl", sharegpt_msgs, LG_FILE_JSON, g_chat, &o);
    assert_same(a, b);
    /* weight 0 takes "bye" out of the loss: fewer loss tokens than the same row without it */
    const char *unweighted =
        "{\"messages\": [{\"role\": \"system\", \"content\": \"be nice\"}, {\"role\": \"user\", \"content\": \"hi\"}, "
        "{\"role\": \"assistant\", \"content\": \"hello\"}, {\"role\": \"user\", \"content\": \"and?\"}, "
        "{\"role\": \"assistant\", \"content\": \"bye\"}]}\n";
    lg_dataset *c = load_ok("u.jsonl", unweighted, LG_FILE_JSON, g_chat, &o);
    assert_true(loss_count(c, 0) > loss_count(a, 0));
    lg_dataset_free(a);
    lg_dataset_free(b);
    lg_dataset_free(c);

    /* conversational prompt-completion: the prompt's turns (even an assistant one) carry no loss */
    const char *cpc = "{\"prompt\": [{\"role\": \"user\", \"content\": \"2+2\"}, {\"role\": \"assistant\", \"content\": "
                      "\"4\"}, {\"role\": \"user\", \"content\": \"3+3\"}], \"completion\": [{\"role\": \"assistant\", "
                      "\"content\": \"6\"}]}\n";
    const char *cpc_msgs = "{\"messages\": [{\"role\": \"user\", \"content\": \"2+2\"}, {\"role\": \"assistant\", "
                           "\"content\": \"4\", \"weight\": 0}, {\"role\": \"user\", \"content\": \"3+3\"}, {\"role\": "
                           "\"assistant\", \"content\": \"6\"}]}\n";
    a = load_ok("cpc.jsonl", cpc, LG_FILE_JSON, g_chat, &o);
    b = load_ok("msgs.jsonl", cpc_msgs, LG_FILE_JSON, g_chat, &o);
    assert_same(a, b);
    lg_dataset_stats(a, &st);
    assert_int_equal(st.shape_rows[LG_FMT_CONV_PC], 1);
    lg_dataset_free(a);
    lg_dataset_free(b);

    /* refusals name the row and what is wrong */
    expect_error("sg.jsonl", "{\"conversations\": [{\"from\": \"bot\", \"value\": \"x\"}]}\n", LG_FILE_JSON, g_chat, &o,
                 "sg.jsonl:1:", "\"from\" is \"bot\"; expected human, user, gpt");
    expect_error("sg.jsonl", "\n{\"conversations\": []}\n", LG_FILE_JSON, g_chat, &o, "sg.jsonl:2:",
                 "non-empty list");
    expect_error("sg.jsonl", "{\"conversations\": [{\"from\": \"human\"}]}\n", LG_FILE_JSON, g_chat, &o,
                 "sg.jsonl:1:", "conversations[0] needs a string \"from\" and a string \"value\"");
    expect_error("c.jsonl", "{\"prompt\": [{\"role\": \"user\", \"content\": \"a\"}], \"completion\": \"b\"}\n",
                 LG_FILE_JSON, g_chat, &o, "c.jsonl:1:", "must both be strings, or both lists");
    expect_error("m.jsonl", "{\"messages\": [{\"role\": \"assistant\", \"content\": \"a\", \"weight\": 2}]}\n",
                 LG_FILE_JSON, g_chat, &o, "m.jsonl:1:", "messages[0].weight must be 0 or 1");
    /* chat shapes without a template */
    expect_error("sg.jsonl", sharegpt, LG_FILE_JSON, g_char, &o, "sg.jsonl:1:", "need the model's chat template");
}

/* A JSON array holds the same rows as JSON Lines; errors name the element's line. */
static void test_json_array(void **state) {
    (void)state;
    lg_data_opts o = opts();
    const char *lines = "{\"text\": \"one\"}\n{\"prompt\": \"a\", \"completion\": \"b\"}\n";
    const char *arr = "\xEF\xBB\xBF [\n  {\"text\": \"one\"},\n  {\"prompt\": \"a\",\n   \"completion\": \"b\"}\n]\n";
    lg_dataset *a = load_ok("rows.json", arr, LG_FILE_JSON, g_char, &o);
    lg_dataset *b = load_ok("rows.jsonl", lines, LG_FILE_JSON, g_char, &o);
    assert_same(a, b);
    lg_dataset_free(a);
    lg_dataset_free(b);
    expect_error("rows.json", "[\n{\"text\": \"a\"},\n{\"txt\": \"b\"}\n]", LG_FILE_JSON, g_char, &o, "rows.json:3:",
                 "none of the accepted shapes (its keys: \"txt\")");
    expect_error("rows.json", "[\n{\"text\": \"a\"},\n{\"text\": \"b\" oops}\n]", LG_FILE_JSON, g_char, &o,
                 "rows.json:3:", "not valid JSON");
    expect_error("rows.json", "[{\"text\": \"a\"}\n{\"text\": \"b\"}]", LG_FILE_JSON, g_char, &o, "rows.json:2:",
                 "expected ',' or ']'");
    expect_error("rows.json", "[{\"text\": \"a\"}]\n[]", LG_FILE_JSON, g_char, &o, "rows.json:2:", "after the closing");
    expect_error("rows.json", "[ ]", LG_FILE_JSON, g_char, &o, "rows.json", "no data");
    /* a bad element is skipped and counted with --skip-bad */
    o.skip_bad = 1;
    a = load_ok("rows.json", "[{\"text\": \"a\"}, 7, {\"text\": \"b\"}]", LG_FILE_JSON, g_char, &o);
    lg_data_stats st;
    lg_dataset_stats(a, &st);
    assert_int_equal(st.bad_rows, 1);
    assert_int_equal(lg_dataset_count(a, LG_SPLIT_TRAIN_FILE), 2);
    assert_non_null(strstr(st.first_bad_why, "not a JSON object"));
    lg_dataset_free(a);
}

/* CSV and TSV: a header naming the columns; quoting as RFC 4180; columns mapped to fields. */
static void test_csv_tsv(void **state) {
    (void)state;
    lg_data_opts o = opts();
    const char *csv = "id,text\r\n1,\"Hello, \"\"world\"\"\"\r\n2,\"two\nlines\"\r\n\r\n3,plain \"quote\" inside\r\n";
    const char *jsonl = "{\"text\": \"Hello, \\\"world\\\"\"}\n{\"text\": \"two\\nlines\"}\n"
                        "{\"text\": \"plain \\\"quote\\\" inside\"}\n";
    lg_dataset *a = load_ok("rows.csv", csv, LG_FILE_CSV, g_char, &o);
    lg_dataset *b = load_ok("rows.jsonl", jsonl, LG_FILE_JSON, g_char, &o);
    assert_same(a, b);
    lg_dataset_free(a);
    /* TSV with other column names, mapped; the header is not a row */
    const char *tsv = "sentence\tlabel\nHello, \"world\"\t1\n";
    o.fields.prompt = "sentence";
    o.fields.completion = "label";
    a = load_ok("rows.tsv", tsv, LG_FILE_TSV, g_char, &o);
    memset(&o.fields, 0, sizeof o.fields);
    lg_dataset *c = load_ok("pc.jsonl", "{\"prompt\": \"Hello, \\\"world\\\"\", \"completion\": \"1\"}\n", LG_FILE_JSON,
                            g_char, &o);
    assert_same(a, c);
    lg_dataset_free(a);
    lg_dataset_free(c);
    /* the same file unmapped: its columns are named in the refusal */
    expect_error("rows.tsv", tsv, LG_FILE_TSV, g_char, &o, "rows.tsv:2:", "its keys: \"sentence\", \"label\"");
    /* a mapped text column wins over the prompt/completion columns of the same row */
    o.fields.text = "label";
    a = load_ok("rows.csv", "prompt,completion,label\np,c,xyz\n", LG_FILE_CSV, g_char, &o);
    memset(&o.fields, 0, sizeof o.fields);
    c = load_ok("t.jsonl", "{\"text\": \"xyz\"}\n", LG_FILE_JSON, g_char, &o);
    assert_same(a, c);
    lg_dataset_free(a);
    lg_dataset_free(c);
    /* records with the wrong number of fields, broken quoting, bad headers */
    expect_error("r.csv", "text\na\nb,c\n", LG_FILE_CSV, g_char, &o, "r.csv:3:", "2 fields, but the header names 1 column");
    expect_error("r.csv", "id,text\n1,\"never closed\n2,x\n", LG_FILE_CSV, g_char, &o, "r.csv:2:", "never closed");
    expect_error("r.csv", "text\n\"a\"b\n", LG_FILE_CSV, g_char, &o, "r.csv:2:", "text after the closing quote");
    expect_error("r.csv", "text,text\na,b\n", LG_FILE_CSV, g_char, &o, "r.csv", "\"text\" appears twice");
    expect_error("r.csv", "text,\na,b\n", LG_FILE_CSV, g_char, &o, "r.csv", "column 2 has no name");
    expect_error("r.csv", "", LG_FILE_CSV, g_char, &o, "r.csv", "no header row");
    expect_error("r.csv", "text\n", LG_FILE_CSV, g_char, &o, "r.csv", "no data");
    /* skipped and counted */
    o.skip_bad = 1;
    a = load_ok("r.csv", "text\na\nb,c\nd\n", LG_FILE_CSV, g_char, &o);
    lg_data_stats st;
    lg_dataset_stats(a, &st);
    assert_int_equal(st.bad_rows, 1);
    assert_int_equal(st.first_bad_line, 3);
    assert_int_equal(lg_dataset_count(a, LG_SPLIT_TRAIN_FILE), 2);
    lg_dataset_free(a);
    lg_dataset_free(b);
}

/* --format forces one shape: rows without its fields are refused by name. */
static void test_forced_format(void **state) {
    (void)state;
    lg_data_opts o = opts();
    const char *row = "{\"prompt\": \"p\", \"completion\": \"c\", \"text\": \"whole\"}\n";
    o.format = LG_FMT_TEXT;
    lg_dataset *a = load_ok("r.jsonl", row, LG_FILE_JSON, g_char, &o);
    o.format = LG_FMT_AUTO;
    lg_dataset *b = load_ok("t.jsonl", "{\"text\": \"whole\"}\n", LG_FILE_JSON, g_char, &o);
    assert_same(a, b);
    lg_dataset_free(a);
    lg_dataset_free(b);
    o.format = LG_FMT_ALPACA;
    expect_error("r.jsonl", row, LG_FILE_JSON, g_char, &o, "r.jsonl:1:", "no \"instruction\" field");
    o.format = LG_FMT_MESSAGES;
    expect_error("r.jsonl", row, LG_FILE_JSON, g_char, &o, "r.jsonl:1:", "no \"messages\" field");
    o.format = LG_FMT_SHAREGPT;
    expect_error("r.jsonl", row, LG_FILE_JSON, g_char, &o, "r.jsonl:1:", "\"conversations\" must be a non-empty list");
}

/* What is printed at start: rows by shape, skipped with the reason, truncated, tokens. */
static void test_counts_printed(void **state) {
    (void)state;
    lg_data_opts o = opts();
    o.max_len = 8;
    o.skip_bad = 1;
    const char *rows = "{\"text\": \"abcdefghijkl\"}\n"                          /* truncated to 8 */
                       "{\"prompt\": \"0123456789\", \"completion\": \"x\"}\n" /* completion cut off */
                       "{\"text\": \"\"}\n"                                    /* nothing to learn */
                       "not json\n"
                       "{\"instruction\": \"i\", \"output\": \"o\"}\n";
    lg_dataset *d = load_ok("r.jsonl", rows, LG_FILE_JSON, g_char, &o);
    lg_data_stats st;
    lg_dataset_stats(d, &st);
    assert_int_equal(st.rows, 4);
    assert_int_equal(st.bad_rows, 1);
    assert_int_equal(st.dropped, 3);
    assert_int_equal(st.dropped_cut, 2); /* the prompt-completion and the Alpaca prompt */
    assert_int_equal(st.truncated, 3);   /* those and the text */
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    lg_data_stats_print(f, "data", "r.jsonl", &st, 8);
    fclose(f);
    print_message("%s", buf);
    assert_non_null(strstr(buf, "data r.jsonl: 5 rows read (text 2; prompt-completion 1; alpaca 1, with the Alpaca "
                                "prompt)\n"));
    assert_non_null(strstr(buf, "skipped 4: 1 malformed (--skip-bad; the first at line 4: not valid JSON (near column "
                                "1)), 1 with nothing to learn (empty text or completion), 2 whose prompt alone fills "
                                "the 8 tokens of a sequence (raise --seq-len)\n"));
    assert_non_null(strstr(buf, "truncated to 8 tokens: 3 rows\n"));
    char want[128];
    snprintf(want, sizeof want, "  %ld example, %ld tokens (%ld predicted with loss)\n", st.examples[0], st.tokens[0],
             st.loss_tokens[0]);
    assert_int_equal(st.examples[0], 1);
    assert_int_equal(st.tokens[0], 8);
    assert_non_null(strstr(buf, want));
    free(buf);
    lg_dataset_free(d);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_file_kinds),    cmocka_unit_test(test_alpaca_prompt),
        cmocka_unit_test(test_chat_shapes),   cmocka_unit_test(test_json_array),
        cmocka_unit_test(test_csv_tsv),       cmocka_unit_test(test_forced_format),
        cmocka_unit_test(test_counts_printed),
    };
    return cmocka_run_group_tests_name("formats", tests, setup, teardown);
}
