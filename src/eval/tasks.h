/* tasks.h — downstream task evaluation: SST-2 and MRPC classification by comparing the
 * log-likelihood of each label's completion, GSM8K exact match of the final number from greedy
 * generation. (Loss / perplexity on documents is `loraga eval`'s plain protocol, in cmd_eval.c.)
 *
 * Prompts (lm-evaluation-harness's wording, so numbers are comparable to its zero-shot tables):
 *   sst2   "{sentence}\nQuestion: Is this sentence positive or negative?\nAnswer:"
 *          choices " negative" (label 0), " positive" (label 1)
 *   mrpc   "Sentence 1: {s1}\nSentence 2: {s2}\nQuestion: Do both sentences mean the same thing?\nAnswer:"
 *          choices " no" (label 0), " yes" (label 1)
 *   gsm8k  "Question: {question}\nAnswer:"   target " {answer}" (the reference answer ends "#### N")
 * Few-shot: K solved examples (prompt + target) each followed by "\n\n", then the prompt.
 *
 * BOS below: the tokenizer's BOS, unless it has none or lg_task_opts.no_bos.
 *
 * Scoring a choice: ids = BOS + encode(context + choice), ctx = BOS + encode(context); the choice's
 * tokens are those after the longest common prefix of the two (so a SentencePiece tokenizer does
 * not add a spurious word-start piece to a separately encoded " positive"), and its score is the
 * sum of their log-probabilities. The prediction is the best score (lowest label on ties);
 * accuracy_norm uses the score divided by the choice's length in bytes instead. Sequences longer
 * than the model's context lose tokens after BOS from the left (counted as truncated).
 *
 * GSM8K: greedy decoding from BOS + encode(context), at most max_tokens, stopping at EOS or when the
 * text contains "Question:" or "\n\n" (cut there). exact_match: the number after the first "####"
 * of the output equals the reference's; flexible: the last number in the output equals it.
 * Numbers are compared after removing "," and "$" (as numbers when both parse: "18.00" == "18"). */
#ifndef LG_TASKS_H
#define LG_TASKS_H

#include <stddef.h>
#include <stdio.h>

#include "model/model.h"
#include "tokenizer/tokenizer.h"

typedef enum { LG_TASK_LM = 0, LG_TASK_SST2 = 1, LG_TASK_MRPC = 2, LG_TASK_GSM8K = 3 } lg_task_kind;

typedef struct {
    char *prompt; /* the formatted prompt (no few-shot prefix) */
    char *target; /* the reference completion: the gold choice, or " " + the GSM8K answer */
    int label;    /* classification: index of the gold choice; -1 for GSM8K */
    char *gold;   /* GSM8K: the reference number as written after "####"; NULL otherwise */
    long line;    /* line in the input file (for messages) */
} lg_task_example;

typedef struct {
    lg_task_kind kind;
    int n;
    lg_task_example *ex;
    int nchoices;                /* 2 for classification, 0 for GSM8K */
    const char *const *choices;  /* index = label */
} lg_task_set;

/* "lm", "sst2", "mrpc", "gsm8k" (case-insensitive; "sst-2" also accepted). */
int lg_task_parse(const char *name, lg_task_kind *k);
const char *lg_task_name(lg_task_kind k);

/* Read a task file: GLUE TSV for sst2 (columns "sentence", "label") and mrpc ("Quality",
 * "#1 String", "#2 String"), found by header name, UTF-8 BOM ignored; or JSONL rows
 * ({"sentence","label"} / {"sentence1","sentence2","label"}) when the name ends in .jsonl;
 * gsm8k: JSONL {"question","answer"} whose answer contains "#### N". Errors name file and line. */
int lg_task_load(lg_task_kind k, const char *path, lg_task_set **out);
int lg_task_load_mem(lg_task_kind k, const char *name, const char *text, size_t len, lg_task_set **out);
void lg_task_free(lg_task_set *s);

/* ---- pieces with known answers (exposed for the tests) ----------------------------------------- */

/* The number in text: strict = the one right after the first "####" (spaces and "$" skipped),
 * else the last one anywhere. A number is -?[0-9][0-9,]*(\.[0-9]+)?. Copies it (without commas)
 * into out; returns 1 if found, 0 if not. */
int lg_answer_number(const char *text, int strict, char *out, size_t cap);
/* Equal as numbers when both parse fully, else as strings (after removing "," and "$"). */
int lg_number_equal(const char *a, const char *b);
/* Index of the largest of x[0..n) (the first on ties). */
int lg_argmax_d(const double *x, int n);
/* accuracy and F1 of class 1 over n predictions. */
void lg_cls_metrics(const int *pred, const int *gold, int n, double *acc, double *f1);

/* ---- evaluation ---------------------------------------------------------------------------------- */

typedef struct {
    int shots;                  /* few-shot examples prepended (0 = zero-shot) */
    const lg_task_set *shot_src; /* where the shots come from: its first `shots` examples */
    int first;                  /* skip this many examples of the evaluated set (shots drawn from it) */
    int limit;                  /* evaluate at most this many (0 = all) */
    int max_tokens;             /* GSM8K: generated tokens per answer */
    FILE *predictions;          /* one JSON line per example, or NULL */
    void (*progress)(int done, int total, void *ud);
    void *progress_ud;
    int no_bos;                 /* 1: no BOS although the tokenizer has one (its post-processor adds
                                 * none, e.g. GPT-2), as the lm protocol then does */
} lg_task_opts;

typedef struct {
    int n;
    double accuracy;       /* classification; GSM8K: exact_match (strict) */
    double accuracy_norm;  /* classification: per-byte normalised scores */
    double f1;             /* classification: F1 of label 1 */
    double majority;       /* classification: accuracy of always answering the commonest gold label */
    int pred_counts[2];    /* classification: how often each label was predicted */
    double exact_match_flexible; /* GSM8K */
    int no_answer;         /* GSM8K: outputs without any number */
    long generated_tokens; /* GSM8K */
    int truncated;         /* examples whose context was cut to fit */
    double seconds;
} lg_task_result;

int lg_task_eval(lg_model *m, const lg_tokenizer *t, const lg_task_set *s, const lg_task_opts *o, lg_task_result *r);

/* The few-shot prefix followed by example i's prompt (malloc'd). */
char *lg_task_context(const lg_task_set *s, int i, const lg_task_set *shot_src, int shots);

#endif
