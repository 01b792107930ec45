/* cmd_eval.c — `loraga eval`: loss and perplexity of a model (+ adapter) on documents, or a
 * downstream task (SST-2 / MRPC accuracy, GSM8K exact match; see src/eval/tasks.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "data_opts.h"
#include "core/util.h"
#include "data/data.h"
#include "eval/adapter_set.h"
#include "eval/tasks.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

static const char *USAGE =
    "usage: loraga eval --model DIR [--adapter ADIR] --data FILE [--task lm|sst2|mrpc|gsm8k] [--json]\n"
    "lm (default): each row is a document: BOS + its tokens, truncated to the model's maximum length;\n"
    "  loss = mean negative log-likelihood over all predicted tokens (prompt/completion rows: the\n"
    "  completion's; chat rows: the assistant turns'); perplexity = exp(loss).\n"
    "sst2, mrpc: GLUE TSV (or JSONL); accuracy of the label whose completion is most likely.\n"
    "gsm8k: JSONL {question, answer}; exact match of the final number of a greedy answer.\n"
    "Prompts and scoring: docs/interop.md.\n"
    "example: loraga eval --model smol --adapter run --data demo/heldout.jsonl --json";

static void progress(int done, int total, void *ud) {
    (void)ud;
    if (isatty(2)) fprintf(stderr, "\r%d/%d examples", done, total);
    if (isatty(2) && done == total) fprintf(stderr, "\n");
}

static void put_json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c == '\n') fputs("\\n", f);
        else if (c == '\t') fputs("\\t", f);
        else if (c == '\r') fputs("\\r", f);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

/* `--write-rows`: the task's examples as prompt/completion JSONL, for `loraga train`. */
static int write_rows(const lg_task_set *s, const char *path, const lg_task_set *shots_src, int shots, int first,
                      int limit) {
    FILE *f = fopen(path, "w");
    if (!f) return lg_errorf("%s: cannot write", path);
    int n = s->n - first;
    if (limit > 0) n = LG_MIN(n, limit);
    for (int i = 0; i < n; i++) {
        char *ctx = lg_task_context(s, first + i, shots_src, shots);
        fputs("{\"prompt\": ", f);
        put_json_str(f, ctx);
        fputs(", \"completion\": ", f);
        put_json_str(f, s->ex[first + i].target);
        fputs("}\n", f);
        free(ctx);
    }
    int bad = ferror(f);
    if (fclose(f) != 0 || bad) return lg_errorf("%s: write error", path);
    fprintf(stderr, "wrote %d rows to %s\n", LG_MAX(n, 0), path);
    return 0;
}

static int eval_task(lg_model *m, const lg_tokenizer *t, lg_task_kind kind, const char *data, const char *shots_data,
                     int shots, int limit, int max_tokens, const char *pred_path, const char *rows_path, int json,
                     const char *adapter_desc) {
    lg_task_set *s = NULL, *ss = NULL;
    FILE *pf = NULL;
    int rc = -1;
    if (lg_task_load(kind, data, &s) != 0) goto done;
    if (shots_data && lg_task_load(kind, shots_data, &ss) != 0) goto done;
    const lg_task_set *src = shots > 0 ? (ss ? ss : s) : NULL;
    if (src && shots > src->n) {
        lg_errorf("--shots %d: %s has only %d examples", shots, ss ? shots_data : data, src->n);
        goto done;
    }
    const int first = (shots > 0 && !ss) ? shots : 0; /* shots taken from --data are not scored */
    if (rows_path) {
        rc = write_rows(s, rows_path, src, shots, first, limit);
        goto done;
    }
    if (pred_path && !(pf = fopen(pred_path, "w"))) {
        lg_errorf("%s: cannot write", pred_path);
        goto done;
    }
    lg_task_opts o = {shots, src, first, limit, max_tokens, pf, json ? NULL : progress, NULL, 0};
    o.no_bos = t && !lg_cli_tokenizer_adds_bos(t); /* BOS as the tokenizer itself (and the lm protocol) adds it */
    lg_task_result r;
    if (lg_task_eval(m, t, s, &o, &r) != 0) goto done;
    const char *name = lg_task_name(kind);
    if (kind == LG_TASK_GSM8K) {
        if (json)
            printf("{\"task\": \"%s\", \"examples\": %d, \"shots\": %d, \"exact_match\": %.6f, "
                   "\"exact_match_flexible\": %.6f, \"no_answer\": %d, \"generated_tokens\": %ld, \"max_tokens\": %d, "
                   "\"truncated\": %d, \"seconds\": %.3f}\n",
                   name, r.n, shots, r.accuracy, r.exact_match_flexible, r.no_answer, r.generated_tokens, max_tokens,
                   r.truncated, r.seconds);
        else
            printf("%s: exact match %.4f (flexible %.4f) on %d examples, %d-shot%s%s (%d without a number, %.1fs)\n",
                   name, r.accuracy, r.exact_match_flexible, r.n, shots, adapter_desc ? ", adapter " : "",
                   adapter_desc ? adapter_desc : "", r.no_answer, r.seconds);
    } else {
        if (json)
            printf("{\"task\": \"%s\", \"examples\": %d, \"shots\": %d, \"accuracy\": %.6f, \"accuracy_norm\": %.6f, "
                   "\"f1\": %.6f, \"majority_baseline\": %.6f, \"predicted\": [%d, %d], \"truncated\": %d, "
                   "\"seconds\": %.3f}\n",
                   name, r.n, shots, r.accuracy, r.accuracy_norm, r.f1, r.majority, r.pred_counts[0], r.pred_counts[1],
                   r.truncated, r.seconds);
        else
            printf("%s: accuracy %.4f (normalised %.4f, F1 %.4f; majority baseline %.4f) on %d examples, %d-shot%s%s "
                   "(%.1fs)\n",
                   name, r.accuracy, r.accuracy_norm, r.f1, r.majority, r.n, shots, adapter_desc ? ", adapter " : "",
                   adapter_desc ? adapter_desc : "", r.seconds);
    }
    rc = 0;
done:
    if (pf) fclose(pf);
    lg_task_free(s);
    lg_task_free(ss);
    return rc;
}

int cmd_eval(int argc, char **argv) {
    const char *model = NULL, *data = NULL, *tokp = NULL, *adapter = NULL, *task = "lm", *dump = NULL, *precision_s = "auto";
    const char *shots_data = NULL, *pred_path = NULL, *rows_path = NULL;
    int no_eos = 0, add_eos = 0;
    int json = 0, max_len = 0, skip_bad = 0, limit = 0, shots = 0, max_tokens = 256;
    const char *format = "auto";
    lg_field_map fm = {0};
    lg_opt opts[] = {
        {"--model", LG_OPT_STR, &model, "required: Hugging Face model directory, GGUF file, or llama2.c .bin with --tokenizer"},
        {"--precision", LG_OPT_STR, &precision_s,
         "linear layers in fp32 or bf16 (fp32 accumulation); auto = bf16 where the CPU has bf16 units (default auto)"},
        {"--tokenizer", LG_OPT_STR, &tokp, "tokenizer (default: the model directory's)"},
        {"--adapter", LG_OPT_STR, &adapter, "PEFT LoRA adapter directory (loraga's or PEFT's) applied to the model (default: none)"},
        {"--data", LG_OPT_STR, &data, "required. lm: rows in any format train reads (.jsonl/.json/.csv/.tsv) or .txt; tasks: the task file"},
        LG_DATA_FORMAT_OPTS(format, fm),
        {"--task", LG_OPT_STR, &task, "lm (default), sst2, mrpc or gsm8k"},
        {"--max-len", LG_OPT_INT, &max_len, "lm: truncate documents to this many tokens (default: the model's maximum)"},
        {"--skip-bad", LG_OPT_FLAG, &skip_bad, "lm: skip malformed rows (counted) instead of stopping"},
        {"--no-eos", LG_OPT_FLAG, &no_eos, "lm: prompt/completion rows without the EOS train appends by default"},
        {"--add-eos", LG_OPT_FLAG, &add_eos, "lm: end text rows with EOS (default: only when the tokenizer adds it)"},
        {"--dump-logits", LG_OPT_STR, &dump,
         "lm: also write every document's ids and logits to this safetensors file (ids.N, logits.N;\n"
         "                           default: not written)"},
        {"--limit", LG_OPT_INT, &limit, "tasks: evaluate the first N examples only (default: all)"},
        {"--shots", LG_OPT_INT, &shots, "tasks: few-shot examples before each prompt (default 0)"},
        {"--shots-data", LG_OPT_STR, &shots_data, "tasks: take the shots from this file (default: the first rows of --data, then not scored)"},
        {"--max-tokens", LG_OPT_INT, &max_tokens, "gsm8k: tokens generated per answer (default 256)"},
        {"--predictions", LG_OPT_STR, &pred_path, "tasks: write one JSON line per example here (default: not written)"},
        {"--write-rows", LG_OPT_STR, &rows_path, "tasks: write the examples as prompt/completion JSONL (for train) instead of evaluating (default: evaluate)"},
        {"--json", LG_OPT_FLAG, &json, "print one JSON object (default: a one-line summary)"},
    };
    int pr = lg_parse_opts(argc, argv, opts, sizeof opts / sizeof opts[0], USAGE);
    if (pr) return pr > 0 ? 0 : 2;
    if ((!model && !rows_path) || !data) {
        fprintf(stderr, "loraga eval: --model and --data are required (see --help)\n");
        return 2;
    }
    lg_task_kind kind;
    lg_row_format row_format;
    if (lg_task_parse(task, &kind) != 0 || lg_row_format_parse(format, &row_format) != 0) return lg_cli_fail();
    if (kind == LG_TASK_LM && rows_path) {
        fprintf(stderr, "loraga eval: --write-rows is for the tasks (sst2, mrpc, gsm8k)\n");
        return 2;
    }
    if (kind != LG_TASK_LM && dump) {
        fprintf(stderr, "loraga eval: --dump-logits is for --task lm\n");
        return 2;
    }
    if (shots < 0 || limit < 0 || max_tokens < 1) {
        fprintf(stderr, "loraga eval: --shots, --limit must be >= 0 and --max-tokens >= 1\n");
        return 2;
    }
    if (rows_path && kind != LG_TASK_LM) return eval_task(NULL, NULL, kind, data, shots_data, shots, limit, max_tokens,
                                                         NULL, rows_path, json, NULL) ? lg_cli_fail() : 0;
    lg_model *m = NULL;
    lg_tokenizer *t = NULL;
    lg_dataset *d = NULL;
    lg_adapter_set *ad = NULL;
    lg_st_item *items = NULL;
    char **names = NULL;
    float **bufs = NULL;
    int nitems = 0;
    int rc = 1;
    lg_model_opts mo;
    if (lg_cli_precision(precision_s, &mo) != 0 || lg_model_load(model, &mo, &m) != 0) goto done;
    const lg_config *c = lg_model_config(m);
    if (lg_tokenizer_load(tokp ? tokp : model, &t) != 0) goto done;
    if (lg_tokenizer_vocab_size(t) > c->vocab_size) {
        lg_errorf("tokenizer has %d tokens but the model's vocab_size is %d", lg_tokenizer_vocab_size(t),
                  c->vocab_size);
        goto done;
    }
    if (adapter) {
        if (lg_adapter_set_load(m, adapter, &ad) != 0) goto done;
        if (!json) fprintf(stderr, "adapter: %s\n", lg_adapter_set_describe(ad));
    }
    lg_cli_bf16_base(m);
    if (kind != LG_TASK_LM) {
        if (eval_task(m, t, kind, data, shots_data, shots, limit, max_tokens, pred_path, NULL, json,
                      ad ? lg_adapter_set_describe(ad) : NULL) != 0)
            goto done;
        rc = 0;
        goto done;
    }
    lg_data_opts o = {0};
    o.max_len = max_len > 0 ? LG_MIN(max_len, c->max_seq) : c->max_seq;
    o.add_bos = lg_cli_tokenizer_adds_bos(t); /* BOS as the tokenizer itself would add it */
    char *chat_tpl = lg_cli_chat_template(model);
    o.chat_template = chat_tpl;
    o.skip_bad = skip_bad;
    o.no_eos = no_eos;
    o.add_eos = add_eos || lg_cli_tokenizer_adds_eos(t);
    o.format = row_format;
    o.fields = fm;
    int dl = lg_dataset_load(data, t, &o, &d);
    free(chat_tpl);
    if (dl != 0) goto done;
    int n = lg_dataset_count(d, LG_SPLIT_TRAIN_FILE);
    lg_data_stats st;
    lg_dataset_stats(d, &st);
    if (dump) {
        items = lg_calloc((size_t)2 * n + 1, sizeof *items);
        names = lg_calloc((size_t)2 * n + 1, sizeof *names);
        bufs = lg_calloc((size_t)2 * n + 1, sizeof *bufs);
    }
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
        if (dump) { /* ids as float32 (exact below 2^24) so one safetensors file carries both */
            float *fi = bufs[nitems] = lg_malloc((size_t)len * sizeof(float));
            for (int k = 0; k < len; k++) fi[k] = (float)ids[k];
            names[nitems] = lg_malloc(32);
            snprintf(names[nitems], 32, "ids.%d", i);
            items[nitems] = (lg_st_item){.name = names[nitems], .dtype = LG_DT_F32, .ndim = 1, .shape = {len}, .data = fi};
            nitems++;
            float *fl = bufs[nitems] = lg_malloc((size_t)len * c->vocab_size * sizeof(float));
            memcpy(fl, lg_model_logits(m), (size_t)len * c->vocab_size * sizeof(float));
            names[nitems] = lg_malloc(32);
            snprintf(names[nitems], 32, "logits.%d", i);
            items[nitems] = (lg_st_item){.name = names[nitems], .dtype = LG_DT_F32, .ndim = 2, .shape = {len, c->vocab_size}, .data = fl};
            nitems++;
        }
        free(b.inputs), free(b.targets), free(b.weight);
        if (!json && isatty(2)) fprintf(stderr, "\r%d/%d documents", i + 1, n);
    }
    if (!json && isatty(2)) fprintf(stderr, "\n");
    if (wsum == 0) {
        lg_errorf("%s: no predicted tokens (every document shorter than 2 tokens?)", data);
        goto done;
    }
    if (dump) {
        lg_st_meta meta[] = {{"format", "pt"}, {"producer", "loraga eval --dump-logits"}};
        if (lg_st_write(dump, items, nitems, meta, 2) != 0) goto done;
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
    for (int i = 0; i < nitems; i++) free(names[i]), free(bufs[i]);
    free(items), free(names), free(bufs);
    lg_adapter_set_free(ad);
    lg_dataset_free(d);
    lg_tokenizer_free(t);
    lg_model_free(m);
    return rc;
}
