/* test_data.c — the data pipeline: masks, truncation, packing, splits, shuffling, bad input.
 * Most tests use a tiny character-level tokenizer built in memory (one id per ASCII char,
 * <s> = 1, </s> = 2), so expected ids are obvious; one test reads the TinyStories subset. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "data/data.h"
#include "tokenizer/tokenizer.h"

#define PAD 2 /* no pad token: eos */
static lg_tokenizer *g_tok;

static int setup(void **state) {
    (void)state;
    g_tok = lg_test_char_tokenizer();
    return 0;
}
static int teardown(void **state) {
    (void)state;
    lg_tokenizer_free(g_tok);
    return 0;
}

static lg_data_opts opts(int max_len) {
    lg_data_opts o;
    memset(&o, 0, sizeof o);
    o.max_len = max_len;
    o.add_bos = 1;
    o.seed = 42;
    return o;
}

static lg_dataset *load_str(const char *s, int jsonl, const lg_data_opts *o) {
    lg_dataset *d = NULL;
    int rc = lg_dataset_load_mem("rows.jsonl", s, strlen(s), jsonl, g_tok, o, &d);
    if (rc) print_message("load: %s\n", lg_last_error());
    assert_int_equal(rc, 0);
    return d;
}

typedef struct {
    int in[64], tg[64];
    float w[64];
    lg_batch b;
} batchbuf;

static lg_batch *mkbatch(batchbuf *bb, int B, int T) {
    assert_true(B * T <= 64);
    bb->b = (lg_batch){B, T, bb->in, bb->tg, bb->w};
    return &bb->b;
}

static void test_prompt_completion_masks(void **state) {
    (void)state;
    lg_data_opts o = opts(16);
    const int *ids;
    const unsigned char *loss;
    int n;
    /* by default a completion ends with EOS (a loss token), as TRL appends it; a text row does not
     * (the tokenizer's post-processor adds none here) */
    lg_dataset *d = load_str("{\"prompt\":\"ab\",\"completion\":\"cd\"}\n{\"text\":\"xy\"}\n", 1, &o);
    assert_int_equal(lg_dataset_example(d, LG_SPLIT_TRAIN_FILE, 0, &ids, &loss, &n), 0);
    int eos_ids[6] = {1, 'a', 'b', 'c', 'd', 2};
    unsigned char eos_loss[6] = {0, 0, 0, 1, 1, 1};
    assert_int_equal(n, 6);
    assert_memory_equal(ids, eos_ids, sizeof eos_ids);
    assert_memory_equal(loss, eos_loss, sizeof eos_loss);
    assert_int_equal(lg_dataset_example(d, LG_SPLIT_TRAIN_FILE, 1, &ids, &loss, &n), 0);
    assert_int_equal(n, 3);
    lg_dataset_free(d);
    /* no_eos (--no-eos): the rows as they are */
    o.no_eos = 1;
    d = load_str("{\"prompt\":\"ab\",\"completion\":\"cd\"}\n{\"text\":\"xy\"}\n", 1, &o);
    assert_int_equal(lg_dataset_count(d, LG_SPLIT_TRAIN), 2);
    assert_int_equal(lg_dataset_example(d, LG_SPLIT_TRAIN_FILE, 0, &ids, &loss, &n), 0);
    assert_int_equal(n, 5);
    int want_ids[5] = {1, 'a', 'b', 'c', 'd'};
    unsigned char want_loss[5] = {0, 0, 0, 1, 1};
    assert_memory_equal(ids, want_ids, sizeof want_ids);
    assert_memory_equal(loss, want_loss, sizeof want_loss);
    batchbuf bb;
    lg_batch *b = mkbatch(&bb, 2, 6);
    assert_int_equal(lg_dataset_fill_batch(d, LG_SPLIT_TRAIN_FILE, 0, b), 2);
    int in0[6] = {1, 'a', 'b', 'c', 'd', PAD}, tg0[6] = {'a', 'b', 'c', 'd', PAD, PAD};
    float w0[6] = {0, 0, 1, 1, 0, 0};
    assert_memory_equal(bb.in, in0, sizeof in0);
    assert_memory_equal(bb.tg, tg0, sizeof tg0);
    assert_memory_equal(bb.w, w0, sizeof w0);
    /* text row: every token after BOS counts */
    int in1[6] = {1, 'x', 'y', PAD, PAD, PAD};
    float w1[6] = {1, 1, 0, 0, 0, 0};
    assert_memory_equal(bb.in + 6, in1, sizeof in1);
    assert_memory_equal(bb.w + 6, w1, sizeof w1);
    /* past the end of a file-order split: padding, count of real rows returned */
    assert_int_equal(lg_dataset_fill_batch(d, LG_SPLIT_TRAIN_FILE, 1, b), 1);
    for (int t = 0; t < 6; t++) assert_true(bb.w[6 + t] == 0.0f);
    lg_dataset_free(d);

    /* add_eos: EOS is a loss token of the completion (once, with or without no_eos) and of text rows;
     * no BOS when not asked */
    o.add_eos = 1;
    o.add_bos = 0;
    d = load_str("{\"text\":\"x\"}\n", 1, &o);
    assert_int_equal(lg_dataset_example(d, LG_SPLIT_TRAIN_FILE, 0, &ids, &loss, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(ids[1], 2);
    lg_dataset_free(d);
    o.no_eos = 0;
    d = load_str("{\"prompt\":\"ab\",\"completion\":\"c\"}\n", 1, &o);
    assert_int_equal(lg_dataset_example(d, LG_SPLIT_TRAIN_FILE, 0, &ids, &loss, &n), 0);
    int want2[4] = {'a', 'b', 'c', 2};
    unsigned char wl2[4] = {0, 0, 1, 1};
    assert_int_equal(n, 4);
    assert_memory_equal(ids, want2, sizeof want2);
    assert_memory_equal(loss, wl2, sizeof wl2);
    lg_dataset_free(d);
}

static void test_truncation_and_short_T(void **state) {
    (void)state;
    lg_data_opts o = opts(4);
    lg_dataset *d = load_str("{\"text\":\"abcdefgh\"}\n{\"prompt\":\"abcdef\",\"completion\":\"z\"}\n", 1, &o);
    lg_data_stats st;
    lg_dataset_stats(d, &st);
    assert_int_equal(st.rows, 2);
    assert_int_equal(st.truncated, 2);
    assert_int_equal(st.dropped, 1); /* the prompt alone fills max_len: nothing to learn */
    assert_int_equal(lg_dataset_count(d, LG_SPLIT_TRAIN), 1);
    const int *ids;
    const unsigned char *loss;
    int n;
    assert_int_equal(lg_dataset_example(d, LG_SPLIT_TRAIN, 0, &ids, &loss, &n), 0);
    assert_int_equal(n, 4);
    assert_int_equal(ids[3], 'c');
    /* a batch narrower than the example uses T + 1 tokens: all T positions predict */
    batchbuf bb;
    lg_batch *b = mkbatch(&bb, 1, 2);
    assert_int_equal(lg_dataset_fill_batch(d, LG_SPLIT_TRAIN, 0, b), 1);
    assert_int_equal(bb.in[0], 1);
    assert_int_equal(bb.in[1], 'a');
    assert_int_equal(bb.tg[0], 'a');
    assert_int_equal(bb.tg[1], 'b');
    assert_true(bb.w[0] == 1.0f && bb.w[1] == 1.0f);
    lg_dataset_free(d);
}

static void test_packing(void **state) {
    (void)state;
    lg_data_opts o = opts(4);
    o.pack = 1;
    o.no_eos = 1;
    lg_dataset *d = load_str("{\"text\":\"ab\"}\n{\"prompt\":\"c\",\"completion\":\"d\"}\n{\"text\":\"ef\"}\n", 1, &o);
    /* stream: <s> a b <s> c d <s> e f -> chunks [<s> a b <s>] [c d <s> e] [f] (too short) */
    assert_int_equal(lg_dataset_count(d, LG_SPLIT_TRAIN), 2);
    const int *ids;
    const unsigned char *loss;
    int n;
    assert_int_equal(lg_dataset_example(d, LG_SPLIT_TRAIN_FILE, 1, &ids, &loss, &n), 0);
    int want[4] = {'c', 'd', 1, 'e'};
    unsigned char wl[4] = {0, 1, 0, 1};
    assert_int_equal(n, 4);
    assert_memory_equal(ids, want, sizeof want);
    assert_memory_equal(loss, wl, sizeof wl);
    lg_dataset_free(d);
}

static void test_split_and_shuffle(void **state) {
    (void)state;
    char rows[2048];
    size_t n = 0;
    for (int i = 0; i < 20; i++) n += (size_t)snprintf(rows + n, sizeof rows - n, "{\"text\":\"%c%c\"}\n", 'A' + i, 'a' + i);
    lg_data_opts o = opts(8);
    o.val_frac = 0.2f;
    lg_dataset *d = load_str(rows, 1, &o);
    assert_int_equal(lg_dataset_count(d, LG_SPLIT_TRAIN), 16);
    assert_int_equal(lg_dataset_count(d, LG_SPLIT_VAL), 4);
    int seen[20] = {0};
    const int *ids;
    const unsigned char *loss;
    int len;
    for (int i = 0; i < 16; i++) {
        assert_int_equal(lg_dataset_example(d, LG_SPLIT_TRAIN_FILE, i, &ids, &loss, &len), 0);
        seen[ids[1] - 'A'] += 1;
    }
    int prev = -1;
    for (int i = 0; i < 4; i++) { /* validation in file order, disjoint from train */
        assert_int_equal(lg_dataset_example(d, LG_SPLIT_VAL, i, &ids, &loss, &len), 0);
        assert_true(ids[1] - 'A' > prev);
        prev = ids[1] - 'A';
        seen[ids[1] - 'A'] += 10;
    }
    for (int i = 0; i < 20; i++) assert_true(seen[i] == 1 || seen[i] == 10);
    /* train order: each epoch a permutation, epochs differ, not file order */
    int ep[2][16], file_order = 1, same = 1;
    for (int e = 0; e < 2; e++) {
        int cnt[20] = {0};
        for (int i = 0; i < 16; i++) {
            assert_int_equal(lg_dataset_example(d, LG_SPLIT_TRAIN, e * 16 + i, &ids, &loss, &len), 0);
            ep[e][i] = ids[1] - 'A';
            cnt[ep[e][i]]++;
        }
        for (int i = 0; i < 20; i++) assert_true(cnt[i] == (seen[i] == 1));
    }
    const int *fids;
    for (int i = 0; i < 16; i++) {
        lg_dataset_example(d, LG_SPLIT_TRAIN_FILE, i, &fids, &loss, &len);
        if (fids[1] - 'A' != ep[0][i]) file_order = 0;
        if (ep[0][i] != ep[1][i]) same = 0;
    }
    assert_false(file_order);
    assert_false(same);
    /* same seed -> same split and order; other seed -> other split */
    lg_dataset *d2 = load_str(rows, 1, &o);
    for (int i = 0; i < 32; i++) {
        const int *a, *b2;
        lg_dataset_example(d, LG_SPLIT_TRAIN, i, &a, &loss, &len);
        lg_dataset_example(d2, LG_SPLIT_TRAIN, i, &b2, &loss, &len);
        assert_int_equal(a[1], b2[1]);
    }
    lg_dataset_free(d2);
    o.seed = 7;
    d2 = load_str(rows, 1, &o);
    int diff = 0;
    for (int i = 0; i < 4; i++) {
        const int *a, *b2;
        lg_dataset_example(d, LG_SPLIT_VAL, i, &a, &loss, &len);
        lg_dataset_example(d2, LG_SPLIT_VAL, i, &b2, &loss, &len);
        diff |= a[1] != b2[1];
    }
    assert_true(diff);
    assert_int_equal(lg_dataset_example(d2, LG_SPLIT_VAL, 4, &ids, &loss, &len), -1);
    assert_int_equal(lg_dataset_example(d2, LG_SPLIT_TRAIN, -1, &ids, &loss, &len), -1);
    lg_dataset_free(d2);
    lg_dataset_free(d);
}

static void expect_bad(const char *rows, int jsonl, const char *where, const char *what) {
    lg_data_opts o = opts(8);
    lg_dataset *d = (lg_dataset *)1;
    assert_int_equal(lg_dataset_load_mem("rows.jsonl", rows, strlen(rows), jsonl, g_tok, &o, &d), -1);
    assert_null(d);
    const char *e = lg_last_error();
    if (!strstr(e, where) || !strstr(e, what)) fail_msg("error \"%s\" should name \"%s\" and \"%s\"", e, where, what);
}

static void test_bad_rows(void **state) {
    (void)state;
    expect_bad("{\"text\":\"ok\"}\n{\"text\":\"ok\"\n", 1, "rows.jsonl:2:", "not valid JSON");
    expect_bad("{\"text\":\"ok\"} x\n", 1, "rows.jsonl:1:", "not valid JSON");
    expect_bad("\n\n[1,2]\n", 1, "rows.jsonl:3:", "not a JSON object");
    expect_bad("{\"text\":\"ok\"}\n{\"txt\":\"ok\"}\n", 1, "rows.jsonl:2:", "none of the accepted shapes");
    expect_bad("{\"text\":5}\n", 1, "rows.jsonl:1:", "\"text\" is not a string");
    expect_bad("{\"prompt\":\"a\",\"completion\":null}\n", 1, "rows.jsonl:1:", "\"completion\" is not a string");
    expect_bad("{\"prompt\":\"a\"}\n", 1, "rows.jsonl:1:", "has \"prompt\" but not \"completion\"");
    expect_bad("{\"messages\":[]}\n", 1, "rows.jsonl:1:", "messages");
    expect_bad("{\"text\":\"ok\"}\n{\"text\":\"\xC3\x28\"}\n", 1, "rows.jsonl:2:", "invalid UTF-8");
    expect_bad("{\"text\":\"\\ud800\"}\n", 1, "rows.jsonl:1:", "not valid JSON");
    expect_bad("one\n\ntw\xFFo\n", 0, "rows.jsonl:3:", "invalid UTF-8");
    expect_bad("", 1, "rows.jsonl", "no data");
    expect_bad("\n  \n", 1, "rows.jsonl", "no data");
    expect_bad("{\"text\":\"\"}\n", 1, "rows.jsonl", "no usable examples");

    /* skip_bad: skipped and counted, the good rows kept */
    lg_data_opts o = opts(8);
    o.skip_bad = 1;
    const char *rows = "{\"text\":\"ab\"}\n{oops\n{\"text\":1}\n{\"text\":\"cd\"}\n";
    lg_dataset *d = NULL;
    assert_int_equal(lg_dataset_load_mem("r.jsonl", rows, strlen(rows), 1, g_tok, &o, &d), 0);
    lg_data_stats st;
    lg_dataset_stats(d, &st);
    assert_int_equal(st.bad_rows, 2);
    assert_int_equal(st.first_bad_line, 2);
    assert_int_equal(lg_dataset_count(d, LG_SPLIT_TRAIN), 2);
    lg_dataset_free(d);
    const char *allbad = "{oops\n";
    assert_int_equal(lg_dataset_load_mem("r.jsonl", allbad, strlen(allbad), 1, g_tok, &o, &d), -1);
    assert_non_null(strstr(lg_last_error(), "no usable examples"));
    /* bad options */
    o.max_len = 1;
    assert_int_equal(lg_dataset_load_mem("r.jsonl", rows, strlen(rows), 1, g_tok, &o, &d), -1);
    o.max_len = 8;
    o.val_frac = 1.0f;
    assert_int_equal(lg_dataset_load_mem("r.jsonl", rows, strlen(rows), 1, g_tok, &o, &d), -1);
    /* a missing file */
    assert_int_equal(lg_dataset_load("/nonexistent/x.jsonl", g_tok, &o, &d), -1);
    assert_non_null(strstr(lg_last_error(), "/nonexistent/x.jsonl"));
}

static void test_txt_formats(void **state) {
    (void)state;
    lg_data_opts o = opts(32);
    /* blank-line separated */
    lg_dataset *d = load_str("\nfirst doc\nline two\n\n\n  second  \n", 0, &o);
    assert_int_equal(lg_dataset_count(d, LG_SPLIT_TRAIN), 2);
    const int *ids;
    const unsigned char *loss;
    int n;
    lg_dataset_example(d, LG_SPLIT_TRAIN_FILE, 1, &ids, &loss, &n);
    assert_int_equal(n, 7); /* <s> + "second" */
    lg_dataset_free(d);
    /* <|endoftext|> separated: blank lines stay inside a document */
    d = load_str("para one\n\npara two\n<|endoftext|>\nstory two\n<|endoftext|>\n", 0, &o);
    assert_int_equal(lg_dataset_count(d, LG_SPLIT_TRAIN), 2);
    lg_dataset_example(d, LG_SPLIT_TRAIN_FILE, 0, &ids, &loss, &n);
    assert_int_equal(n, 1 + (int)strlen("para one\n\npara two"));
    assert_int_equal(ids[9], '\n');
    lg_dataset_free(d);
}

static void test_tinystories(void **state) {
    (void)state;
    LG_REQUIRE_SHARED(txt, "tinystories_subset/validation_100.txt");
    char *tp = lg_test_shared("llama2c_stories260K/tok512.bin");
    lg_tokenizer *t;
    assert_int_equal(lg_tokenizer_load(tp, &t), 0);
    lg_data_opts o = opts(128);
    o.val_frac = 0.1f;
    lg_dataset *d;
    assert_int_equal(lg_dataset_load(txt, t, &o, &d), 0);
    lg_data_stats st;
    lg_dataset_stats(d, &st);
    assert_int_equal(st.rows, 100);
    assert_int_equal(lg_dataset_count(d, LG_SPLIT_TRAIN), 90);
    assert_int_equal(lg_dataset_count(d, LG_SPLIT_VAL), 10);
    const int *ids;
    const unsigned char *loss;
    int n;
    assert_int_equal(lg_dataset_example(d, LG_SPLIT_TRAIN_FILE, 0, &ids, &loss, &n), 0);
    assert_int_equal(ids[0], 1);
    char *s;
    assert_int_equal(lg_tokenizer_decode(t, ids, LG_MIN(n, 8), &s, NULL), 0);
    assert_true(strlen(s) > 10);
    free(s);
    int in[4 * 128], tg[4 * 128];
    float w[4 * 128];
    lg_batch b = {4, 128, in, tg, w};
    assert_int_equal(lg_dataset_fill_batch(d, LG_SPLIT_TRAIN, 1000, &b), 4);
    lg_dataset_free(d);
    lg_tokenizer_free(t);
    free(tp);
    free(txt);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prompt_completion_masks), cmocka_unit_test(test_truncation_and_short_T),
        cmocka_unit_test(test_packing),                 cmocka_unit_test(test_split_and_shuffle),
        cmocka_unit_test(test_bad_rows),                cmocka_unit_test(test_txt_formats),
        cmocka_unit_test(test_tinystories),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
