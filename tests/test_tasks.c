/* test_tasks.c — task evaluation: readers, answer extraction, metrics, and end-to-end runs whose
 * answers are known by construction (a "bigram machine" model whose next token is a fixed function
 * of the current one) or recomputed independently with the training forward (stories260K). */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "eval/tasks.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

/* ---- pieces ------------------------------------------------------------------------------------- */

static void test_answer_number(void **state) {
    (void)state;
    char n[64];
    assert_int_equal(lg_answer_number("so 3 + 4 = 7\n#### 1,234", 1, n, sizeof n), 1);
    assert_string_equal(n, "1234");
    assert_int_equal(lg_answer_number("#### $ -3.5 dollars", 1, n, sizeof n), 1);
    assert_string_equal(n, "-3.5");
    assert_int_equal(lg_answer_number("no marker 5", 1, n, sizeof n), 0);
    assert_int_equal(lg_answer_number("#### none", 1, n, sizeof n), 0);
    assert_int_equal(lg_answer_number("She pays $18.00 for 2,500 eggs. So 12", 0, n, sizeof n), 1);
    assert_string_equal(n, "12");
    assert_int_equal(lg_answer_number("costs $18.00.", 0, n, sizeof n), 1);
    assert_string_equal(n, "18.00");
    assert_int_equal(lg_answer_number("x-5 and item2 and -7", 0, n, sizeof n), 1); /* not "2" of item2 */
    assert_string_equal(n, "-7");
    assert_int_equal(lg_answer_number("no digits here", 0, n, sizeof n), 0);
    assert_true(lg_number_equal("18", "18.00"));
    assert_true(lg_number_equal("1,234", "1234"));
    assert_true(lg_number_equal("$5", "5"));
    assert_true(lg_number_equal("7.", "7"));
    assert_false(lg_number_equal("5", "6"));
    assert_false(lg_number_equal("5", ""));
}

static void test_metrics(void **state) {
    (void)state;
    int pred[5] = {1, 1, 0, 0, 1}, gold[5] = {1, 0, 0, 1, 1};
    double acc, f1;
    lg_cls_metrics(pred, gold, 5, &acc, &f1);
    assert_true(fabs(acc - 0.6) < 1e-12);
    assert_true(fabs(f1 - 2.0 / 3.0) < 1e-12); /* tp 2, fp 1, fn 1: 4 / 6 */
    int none[3] = {0, 0, 0}, g3[3] = {1, 0, 1};
    lg_cls_metrics(none, g3, 3, &acc, &f1);
    assert_true(fabs(acc - 1.0 / 3.0) < 1e-12 && f1 == 0.0);
    double x[3] = {-2.0, -1.0, -1.0};
    assert_int_equal(lg_argmax_d(x, 3), 1);
}

static const char SST2_TSV[] = "sentence\tlabel\r\n"
                               "a charming journey . \t1\r\n"
                               "bleak and desperate \t0\r\n"
                               "\r\n"
                               "it works \t1\r\n";
static const char MRPC_TSV[] = "\xEF\xBB\xBFQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
                               "1\t1\t2\tHe said \" yes \" .\tHe agreed .\n"
                               "0\t3\t4\tIt rained .\tThe sun shone .\n"
                               "1\t5\t6\tA cat sat .\tA cat was sitting .\n"
                               "1\t7\t8\tGo now .\tLeave now .\n";
static const char GSM8K_JSONL[] = "{\"question\": \"Tom has 3 apples and buys 4. How many?\", \"answer\": \"3+4=7\\n#### 7\"}\n"
                                  "\n"
                                  "{\"question\": \"What is 2*4?\", \"answer\": \"#### 8\"}\n"
                                  "{\"question\": \"Half of 14?\", \"answer\": \"14/2 = <<14/2=7>>7\\n#### 7.00\"}\n";

static void test_readers(void **state) {
    (void)state;
    lg_task_set *s = NULL;
    assert_int_equal(lg_task_load_mem(LG_TASK_SST2, "sst2.tsv", SST2_TSV, strlen(SST2_TSV), &s), 0);
    assert_int_equal(s->n, 3);
    assert_string_equal(s->ex[0].prompt, "a charming journey .\nQuestion: Is this sentence positive or negative?\nAnswer:");
    assert_string_equal(s->ex[0].target, " positive");
    assert_int_equal(s->ex[1].label, 0);
    assert_int_equal(s->ex[2].line, 5);
    char *ctx = lg_task_context(s, 2, s, 2);
    assert_string_equal(ctx, "a charming journey .\nQuestion: Is this sentence positive or negative?\nAnswer: positive\n\n"
                             "bleak and desperate\nQuestion: Is this sentence positive or negative?\nAnswer: negative\n\n"
                             "it works\nQuestion: Is this sentence positive or negative?\nAnswer:");
    free(ctx);
    lg_task_free(s);

    assert_int_equal(lg_task_load_mem(LG_TASK_MRPC, "mrpc.tsv", MRPC_TSV, strlen(MRPC_TSV), &s), 0);
    assert_int_equal(s->n, 4);
    assert_string_equal(s->ex[0].prompt, "Sentence 1: He said \" yes \" .\nSentence 2: He agreed .\nQuestion: Do both "
                                         "sentences mean the same thing?\nAnswer:");
    assert_string_equal(s->ex[1].target, " no");
    lg_task_free(s);

    assert_int_equal(lg_task_load_mem(LG_TASK_GSM8K, "g.jsonl", GSM8K_JSONL, strlen(GSM8K_JSONL), &s), 0);
    assert_int_equal(s->n, 3);
    assert_string_equal(s->ex[0].prompt, "Question: Tom has 3 apples and buys 4. How many?\nAnswer:");
    assert_string_equal(s->ex[0].target, " 3+4=7\n#### 7");
    assert_string_equal(s->ex[2].gold, "7.00");
    assert_int_equal(s->ex[2].line, 4);
    lg_task_free(s);

    const char *jl = "{\"sentence1\": \"a\", \"sentence2\": \"b\", \"label\": 1}\n";
    assert_int_equal(lg_task_load_mem(LG_TASK_MRPC, "m.jsonl", jl, strlen(jl), &s), 0);
    assert_int_equal(s->ex[0].label, 1);
    lg_task_free(s);

    /* errors name the file and line */
    const char *bad_label = "sentence\tlabel\nok\t2\n";
    assert_int_equal(lg_task_load_mem(LG_TASK_SST2, "x.tsv", bad_label, strlen(bad_label), &s), -1);
    assert_non_null(strstr(lg_last_error(), "x.tsv:2: label '2'"));
    const char *no_label = "index\tsentence\n0\tfine\n";
    assert_int_equal(lg_task_load_mem(LG_TASK_SST2, "test.tsv", no_label, strlen(no_label), &s), -1);
    assert_non_null(strstr(lg_last_error(), "no column \"label\""));
    const char *fields = "sentence\tlabel\na\tb\t1\n";
    assert_int_equal(lg_task_load_mem(LG_TASK_SST2, "f.tsv", fields, strlen(fields), &s), -1);
    assert_non_null(strstr(lg_last_error(), "f.tsv:2: 3 tab-separated fields"));
    const char *nohash = "{\"question\": \"q\", \"answer\": \"42\"}\n";
    assert_int_equal(lg_task_load_mem(LG_TASK_GSM8K, "g.jsonl", nohash, strlen(nohash), &s), -1);
    assert_non_null(strstr(lg_last_error(), "g.jsonl:1: the answer has no \"#### N\""));
    assert_int_equal(lg_task_load_mem(LG_TASK_SST2, "e.tsv", "sentence\tlabel\n", 15, &s), -1);
    assert_non_null(strstr(lg_last_error(), "no examples"));
    lg_task_kind k;
    assert_int_equal(lg_task_parse("SST-2", &k), 0);
    assert_int_equal(k, LG_TASK_SST2);
    assert_int_equal(lg_task_parse("cola", &k), -1);
}

/* ---- a model with known answers ----------------------------------------------------------------- */

/* Tokenizer: <unk> <s> </s>, the 256 byte-fallback tokens (id = byte + 3), and "▁####" (id 259).
 * Every character of plain text is encoded as its UTF-8 bytes (" " as U+2581 = E2 96 81). */
#define BYTE(b) (3 + (b))
#define HASHES 259
static lg_tokenizer *byte_tokenizer(void) {
    const int n = 260;
    const char **pieces = calloc((size_t)n, sizeof *pieces);
    int *lens = calloc((size_t)n, sizeof(int));
    float *scores = calloc((size_t)n, sizeof(float));
    char (*bytes)[8] = calloc(256, 8);
    pieces[0] = "<unk>", pieces[1] = "<s>", pieces[2] = "</s>";
    for (int b = 0; b < 256; b++) {
        snprintf(bytes[b], 8, "<0x%02X>", b);
        pieces[3 + b] = bytes[b];
    }
    pieces[HASHES] = "▁####";
    for (int i = 0; i < n; i++) lens[i] = (int)strlen(pieces[i]);
    lg_tokenizer *t = NULL;
    assert_int_equal(lg_tokenizer_from_spm(n, pieces, lens, scores, 0, 1, 2, &t), 0);
    free(pieces), free(lens), free(scores), free(bytes);
    return t;
}

/* A one-layer LLaMA whose linear layers are all zero: attention and MLP add nothing, so the final
 * state is the embedding of the current token. With one-hot embeddings and lm_head[j][i] = 1 when
 * next[i] == j, the token after i has logit sqrt(C) (RMSNorm of a one-hot) and every other 0. */
static lg_model *bigram_machine(const int *next, int V, int max_seq) {
    lg_config c;
    memset(&c, 0, sizeof c);
    c.arch = LG_ARCH_LLAMA;
    snprintf(c.model_type, sizeof c.model_type, "llama");
    snprintf(c.torch_dtype, sizeof c.torch_dtype, "float32");
    c.vocab_size = V;
    c.dim = 264;
    c.n_layers = 1;
    c.n_heads = 2;
    c.n_kv_heads = 2;
    c.head_dim = 132;
    c.hidden_dim = 8;
    c.max_seq = max_seq;
    c.norm_eps = 1e-6f;
    c.rope_theta = 10000.0f;
    c.bos_id = 1, c.eos_id = 2;
    lg_model *m = NULL;
    assert_int_equal(lg_model_create(&c, NULL, 1, NULL, &m), 0);
    for (int i = 0; i < lg_model_n_params(m); i++) {
        lg_param *p = lg_model_param(m, i);
        if (p->ndim == 2) memset(p->data, 0, (size_t)p->numel * sizeof(float));
    }
    float *wte = lg_model_find_param(m, "model.embed_tokens.weight")->data;
    float *head = lg_model_find_param(m, "lm_head.weight")->data;
    for (int i = 0; i < V; i++) {
        wte[(size_t)i * c.dim + i] = 1.0f;
        if (next[i] >= 0) head[(size_t)next[i] * c.dim + i] = 1.0f;
    }
    return m;
}

static void test_known_answers_classification(void **state) {
    (void)state;
    lg_tokenizer *t = byte_tokenizer();
    const int V = 260;
    int next[260];
    for (int i = 0; i < V; i++) next[i] = -1;
    /* after ':' the machine says " p..." / " y...": positive and yes win whatever the input */
    next[BYTE(':')] = BYTE(0xE2), next[BYTE(0xE2)] = BYTE(0x96), next[BYTE(0x96)] = BYTE(0x81);
    next[BYTE(0x81)] = BYTE('p');
    lg_model *m = bigram_machine(next, V, 256);
    lg_task_set *s = NULL;
    assert_int_equal(lg_task_load_mem(LG_TASK_SST2, "sst2.tsv", SST2_TSV, strlen(SST2_TSV), &s), 0);
    lg_task_opts o = {0};
    lg_task_result r;
    assert_int_equal(lg_task_eval(m, t, s, &o, &r), 0);
    assert_int_equal(r.n, 3);
    assert_true(fabs(r.accuracy - 2.0 / 3.0) < 1e-12); /* all "positive"; gold 1, 0, 1 */
    assert_true(fabs(r.f1 - 0.8) < 1e-12);             /* tp 2, fp 1: 4 / 5 */
    assert_true(fabs(r.majority - 2.0 / 3.0) < 1e-12);
    assert_int_equal(r.pred_counts[1], 3);
    /* two shots from the file: only the third example is scored */
    lg_task_opts o2 = {2, s, 2, 0, 0, NULL, NULL, NULL, 0};
    assert_int_equal(lg_task_eval(m, t, s, &o2, &r), 0);
    assert_int_equal(r.n, 1);
    assert_true(r.accuracy == 1.0);
    o2.no_bos = 1; /* without BOS (GPT-2-style tokenizers) the machine answers the same */
    assert_int_equal(lg_task_eval(m, t, s, &o2, &r), 0);
    assert_true(r.n == 1 && r.accuracy == 1.0);
    lg_task_free(s);
    lg_model_free(m);

    next[BYTE(0x81)] = BYTE('y'), next[BYTE('y')] = BYTE('e'), next[BYTE('e')] = BYTE('s');
    m = bigram_machine(next, V, 64); /* 64 positions: the MRPC contexts must be cut from the left */
    assert_int_equal(lg_task_load_mem(LG_TASK_MRPC, "mrpc.tsv", MRPC_TSV, strlen(MRPC_TSV), &s), 0);
    FILE *pf = tmpfile();
    lg_task_opts o3 = {0, NULL, 0, 0, 0, pf, NULL, NULL, 0};
    assert_int_equal(lg_task_eval(m, t, s, &o3, &r), 0);
    assert_int_equal(r.n, 4);
    assert_true(fabs(r.accuracy - 0.75) < 1e-12);
    assert_true(fabs(r.accuracy_norm - 0.75) < 1e-12);
    assert_true(fabs(r.f1 - 6.0 / 7.0) < 1e-12); /* tp 3, fp 1 */
    assert_true(r.truncated == 4);
    rewind(pf);
    char line[512];
    assert_non_null(fgets(line, sizeof line, pf));
    assert_non_null(strstr(line, "\"label\": 1, \"pred\": 1"));
    fclose(pf);
    lg_task_free(s);
    lg_model_free(m);
    lg_tokenizer_free(t);
}

static void test_known_answers_gsm8k(void **state) {
    (void)state;
    lg_tokenizer *t = byte_tokenizer();
    const int V = 260;
    int next[260];
    for (int i = 0; i < V; i++) next[i] = -1;
    /* after ':' the machine writes " #### 7\n\n" and would go on: "\n\n" stops it */
    next[BYTE(':')] = HASHES, next[HASHES] = BYTE(' '), next[BYTE(' ')] = BYTE('7');
    next[BYTE('7')] = BYTE('\n'), next[BYTE('\n')] = BYTE('\n');
    lg_model *m = bigram_machine(next, V, 256);
    lg_task_set *s = NULL;
    assert_int_equal(lg_task_load_mem(LG_TASK_GSM8K, "g.jsonl", GSM8K_JSONL, strlen(GSM8K_JSONL), &s), 0);
    FILE *pf = tmpfile();
    lg_task_opts o = {0, NULL, 0, 0, 32, pf, NULL, NULL, 0};
    lg_task_result r;
    assert_int_equal(lg_task_eval(m, t, s, &o, &r), 0);
    assert_int_equal(r.n, 3);
    assert_true(fabs(r.accuracy - 2.0 / 3.0) < 1e-12); /* golds 7, 8, 7.00 */
    assert_true(fabs(r.exact_match_flexible - 2.0 / 3.0) < 1e-12);
    assert_int_equal(r.no_answer, 0);
    assert_int_equal(r.generated_tokens, 3 * 5); /* "▁####", " ", 7, \n, \n: stopped at the 2nd \n */
    rewind(pf);
    char line[512];
    assert_non_null(fgets(line, sizeof line, pf));
    assert_non_null(strstr(line, "#### 7\", \"answer_strict\": \"7\""));
    fclose(pf);
    /* --limit */
    lg_task_opts o2 = {0, NULL, 0, 2, 32, NULL, NULL, NULL, 0};
    assert_int_equal(lg_task_eval(m, t, s, &o2, &r), 0);
    assert_int_equal(r.n, 2);
    assert_true(fabs(r.accuracy - 0.5) < 1e-12);
    lg_task_free(s);
    lg_model_free(m);
    lg_tokenizer_free(t);
}

/* ---- stories260K: the KV-cache scorer against the training forward ----------------------------- */

static double loglik_full(lg_model *m, const lg_tokenizer *t, const char *ctx, const char *choice) {
    int *a = NULL, *b = NULL, na, nb;
    size_t lc = strlen(ctx), lf = lc + strlen(choice);
    char *full = malloc(lf + 1);
    memcpy(full, ctx, lc);
    strcpy(full + lc, choice);
    assert_int_equal(lg_tokenizer_encode(t, ctx, lc, 0, &a, &na), 0);
    assert_int_equal(lg_tokenizer_encode(t, full, lf, 0, &b, &nb), 0);
    int T = nb + 1, k = 0;
    while (k < na && k < nb && a[k] == b[k]) k++;
    const int V = lg_model_config(m)->vocab_size;
    lg_batch bt = {1, T, calloc((size_t)T, sizeof(int)), calloc((size_t)T, sizeof(int)), calloc((size_t)T, sizeof(float))};
    bt.inputs[0] = lg_tokenizer_bos(t);
    memcpy(bt.inputs + 1, b, (size_t)nb * sizeof(int));
    assert_int_equal(lg_model_plan(m, 1, T, 0), 0);
    lg_model_forward(m, &bt, NULL);
    const float *lg = lg_model_logits(m);
    double sum = 0;
    for (int p = k + 1; p < T; p++) { /* token p of BOS+b is predicted at position p-1 */
        const float *row = lg + (size_t)(p - 1) * V;
        double mx = row[0], z = 0;
        for (int v = 1; v < V; v++) mx = fmax(mx, row[v]);
        for (int v = 0; v < V; v++) z += exp(row[v] - mx);
        sum += row[bt.inputs[p]] - mx - log(z);
    }
    free(bt.inputs), free(bt.targets), free(bt.weight), free(a), free(b), free(full);
    return sum;
}

static void test_stories260k_sst2_independent(void **state) {
    (void)state;
    LG_REQUIRE_SHARED(bin, "llama2c_stories260K/stories260K.bin");
    LG_REQUIRE_SHARED(dev, "glue_SST-2/dev.tsv");
    char *tokp = lg_test_shared("llama2c_stories260K/tok512.bin");
    lg_model *m = NULL;
    lg_tokenizer *t = NULL;
    assert_int_equal(lg_model_load(bin, NULL, &m), 0);
    assert_int_equal(lg_tokenizer_load(tokp, &t), 0);
    lg_task_set *s = NULL;
    assert_int_equal(lg_task_load(LG_TASK_SST2, dev, &s), 0);
    const int n = 12;
    int pred[12], gold[12];
    for (int i = 0; i < n; i++) {
        double ll[2];
        for (int j = 0; j < 2; j++) ll[j] = loglik_full(m, t, s->ex[i].prompt, s->choices[j]);
        pred[i] = lg_argmax_d(ll, 2);
        gold[i] = s->ex[i].label;
    }
    double acc, f1;
    lg_cls_metrics(pred, gold, n, &acc, &f1);
    lg_task_opts o = {0, NULL, 0, n, 0, NULL, NULL, NULL, 0};
    lg_task_result r;
    assert_int_equal(lg_task_eval(m, t, s, &o, &r), 0);
    print_message("stories260K SST-2 first %d: accuracy %.3f (independent %.3f)\n", n, r.accuracy, acc);
    assert_true(r.accuracy == acc && r.f1 == f1);
    lg_task_free(s);
    lg_tokenizer_free(t);
    lg_model_free(m);
    free(bin), free(dev), free(tokp);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_answer_number),
        cmocka_unit_test(test_metrics),
        cmocka_unit_test(test_readers),
        cmocka_unit_test(test_known_answers_classification),
        cmocka_unit_test(test_known_answers_gsm8k),
        cmocka_unit_test(test_stories260k_sst2_independent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
