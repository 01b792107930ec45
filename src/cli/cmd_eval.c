/* cmd_eval.c — `loraga eval`: loss and perplexity of a model on documents. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "core/util.h"
#include "data/data.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

static const char *USAGE =
    "usage: loraga eval --model DIR [--tokenizer PATH] --data ROWS.jsonl|TEXT.txt [--json]\n"
    "Each row is a document: BOS + its tokens, truncated to the model's maximum length.\n"
    "loss = mean negative log-likelihood over all predicted tokens; perplexity = exp(loss).";

int cmd_eval(int argc, char **argv) {
    const char *model = NULL, *data = NULL, *tokp = NULL;
    int json = 0, max_len = 0, skip_bad = 0;
    lg_opt opts[] = {
        {"--model", LG_OPT_STR, &model, "Hugging Face model directory (or llama2.c .bin with --tokenizer)"},
        {"--tokenizer", LG_OPT_STR, &tokp, "tokenizer (default: the model directory's)"},
        {"--data", LG_OPT_STR, &data, "JSONL rows ({\"text\"} or {\"prompt\",\"completion\"}) or .txt"},
        {"--max-len", LG_OPT_INT, &max_len, "truncate documents to this many tokens (default: the model's maximum)"},
        {"--skip-bad", LG_OPT_FLAG, &skip_bad, "skip malformed rows (counted) instead of stopping"},
        {"--json", LG_OPT_FLAG, &json, "print one JSON object"},
    };
    int pr = lg_parse_opts(argc, argv, opts, sizeof opts / sizeof opts[0], USAGE);
    if (pr) return pr > 0 ? 0 : 2;
    if (!model || !data) {
        fprintf(stderr, "loraga eval: --model and --data are required (see --help)\n");
        return 2;
    }
    lg_model *m = NULL;
    lg_tokenizer *t = NULL;
    lg_dataset *d = NULL;
    int rc = 1;
    if (lg_model_load(model, &m) != 0) goto done;
    const lg_config *c = lg_model_config(m);
    if (lg_tokenizer_load(tokp ? tokp : model, &t) != 0) goto done;
    if (lg_tokenizer_vocab_size(t) > c->vocab_size) {
        lg_errorf("tokenizer has %d tokens but the model's vocab_size is %d", lg_tokenizer_vocab_size(t),
                  c->vocab_size);
        goto done;
    }
    lg_data_opts o = {0};
    o.max_len = max_len > 0 ? LG_MIN(max_len, c->max_seq) : c->max_seq;
    o.add_bos = 1;
    o.skip_bad = skip_bad;
    if (lg_dataset_load(data, t, &o, &d) != 0) goto done;
    int n = lg_dataset_count(d, LG_SPLIT_TRAIN_FILE);
    lg_data_stats st;
    lg_dataset_stats(d, &st);
    double sum = 0, wsum = 0;
    double t0 = lg_now();
    /* one document per forward: exact lengths, no padding, activations re-sliced not reallocated */
    for (int i = 0; i < n; i++) {
        const int *ids;
        const unsigned char *lossf;
        int len;
        if (lg_dataset_example(d, LG_SPLIT_TRAIN_FILE, i, &ids, &lossf, &len) != 0 || len < 2) continue;
        lg_batch b = {1, len, lg_malloc((size_t)len * sizeof(int)), lg_malloc((size_t)len * sizeof(int)),
                      lg_malloc((size_t)len * sizeof(float))};
        if (lg_dataset_fill_batch(d, LG_SPLIT_TRAIN_FILE, i, &b) != 1) {
            free(b.inputs), free(b.targets), free(b.weight);
            goto done;
        }
        double w;
        float l = lg_model_forward(m, &b, &w);
        if (w > 0) {
            if (!isfinite(l)) {
                lg_errorf("%s: document %d: loss is not finite", data, i + 1);
                free(b.inputs), free(b.targets), free(b.weight);
                goto done;
            }
            sum += (double)l * w;
            wsum += w;
        }
        free(b.inputs), free(b.targets), free(b.weight);
        if (!json && isatty(2)) fprintf(stderr, "\r%d/%d documents", i + 1, n);
    }
    if (!json && isatty(2)) fprintf(stderr, "\n");
    if (wsum == 0) {
        lg_errorf("%s: no predicted tokens (every document shorter than 2 tokens?)", data);
        goto done;
    }
    double loss = sum / wsum;
    if (json)
        printf("{\"loss\": %.6f, \"perplexity\": %.4f, \"tokens\": %.0f, \"documents\": %d, \"skipped_rows\": %d, "
               "\"seconds\": %.3f}\n",
               loss, exp(loss), wsum, n, (int)st.bad_rows, lg_now() - t0);
    else
        printf("loss %.4f  perplexity %.3f  (%.0f predicted tokens, %d documents)\n", loss, exp(loss), wsum, n);
    rc = 0;
done:
    if (rc) lg_cli_fail();
    lg_dataset_free(d);
    lg_tokenizer_free(t);
    lg_model_free(m);
    return rc;
}
