/* data.h — training / evaluation data: rows -> tokenised examples -> batches.
 *
 * Input files (lg_dataset_load; formats.h has every row shape and file kind: Alpaca, ShareGPT,
 * conversational prompt-completion, JSON arrays, CSV/TSV, key mapping — each turned into one of
 * the three shapes below before anything else happens):
 *   .jsonl  one JSON object per line (blank lines ignored, a UTF-8 BOM on line 1 is ignored):
 *             {"text": STR}                     loss on every token
 *             {"prompt": STR, "completion": STR} loss on completion tokens only; prompt and
 *                                               completion are tokenised separately (no special
 *                                               tokens) and the ids concatenated, then EOS (a loss
 *                                               token) unless no_eos, as TRL does
 *             {"messages": [{"role": STR, "content": ...}, ...]}
 *                                               chat, rendered with the model's chat template
 *                                               (below); loss on assistant turns only
 *           Other keys are ignored (a row with "text" or "prompt"/"completion" uses those).
 *
 * Chat rows: the template is lg_data_opts.chat_template, else the "chat_template" of the
 * tokenizer_config.json the tokenizer was loaded with (GGUF tokenizers carry theirs there). It is
 * run by loraga's Jinja interpreter exactly as transformers' apply_chat_template runs it (special
 * tokens bos_token/eos_token/unk_token/pad_token from the tokenizer, the variables of chat_vars),
 * and the text is tokenised whole without BOS/EOS (add_bos/add_eos do not apply: the template
 * places the special tokens). The assistant turns are found by rendering (src/template/chat.h:
 * {% generation %} blocks, else prefixes of the conversation rendered turn by turn); a token is a
 * loss token if it overlaps an assistant span without running past its end. A template the
 * interpreter cannot run is an error naming the construct; a row the template refuses
 * (raise_exception) or whose assistant turns cannot be located is a bad row.
 *   .txt    (any other extension) plain text. If some line is exactly "<|endoftext|>" (the
 *           TinyStories convention) documents are separated by such lines; otherwise by one or
 *           more blank lines. Leading and trailing white space of each document is dropped.
 *
 * Every row is checked before anything else happens: a line that is not valid JSON, not an
 * object, lacks the fields, has a non-string field, or is not valid UTF-8 is an error
 * "FILE:LINE: problem". With skip_bad such rows are skipped and counted instead.
 * No usable example at all -> error.
 *
 * Example: [BOS] + tokens [+ EOS] truncated to max_len tokens, with a per-token loss flag.
 * In a batch (src/data/batch.h) of T positions: inputs[t] = x_t, targets[t] = x_{t+1},
 * weight[t] = 1 iff x_{t+1} is a loss token; positions past the example (and its last
 * token) get weight 0, input = target = pad id. Padding is on the right, so a causal model
 * never attends to it: weight is the whole attention/loss mask. An example longer than T is
 * cut to T tokens.
 *
 * Packing (pack=1): the examples of a split are concatenated (each keeps its BOS/EOS and its
 * loss flags) and cut into chunks of max_len tokens (the last chunk may be shorter); documents
 * then share a chunk with no attention separation, as Hugging Face's group_texts does.
 *
 * Validation split: round(val_frac * rows) of the rows (at least 1 when val_frac > 0 and
 * there are 2+ rows), chosen by a seeded permutation, never also in train. Packing is done
 * per split.
 *
 * Order: LG_SPLIT_TRAIN is reshuffled every epoch by (seed, epoch); `first` counts examples
 * across epochs (example k is position k % n of epoch k / n). LG_SPLIT_TRAIN_FILE is the
 * train split in file order (what LoRA-GA's gradient estimation uses: "the first N x B
 * rows in file order"); LG_SPLIT_VAL is in file order. All of it is deterministic and
 * stateless: any number of threads may fill batches of one dataset at once. */
#ifndef LG_DATA_H
#define LG_DATA_H

#include <stdint.h>
#include <stdio.h>

#include "data/batch.h"
#include "data/formats.h"
#include "tokenizer/tokenizer.h"

enum { LG_SPLIT_TRAIN = 0, LG_SPLIT_VAL = 1, LG_SPLIT_TRAIN_FILE = 2 };

typedef struct {
    int max_len;    /* tokens per example / packed chunk (>= 2) */
    int pack;       /* concatenate and chunk instead of one example per row */
    int add_bos;    /* start each example with BOS (if the tokenizer has one) */
    int skip_bad;   /* skip (and count) bad rows instead of failing */
    float val_frac; /* fraction of rows held out for validation, [0, 1) */
    uint64_t seed;  /* validation split and per-epoch shuffling */
    int add_eos;    /* end text rows with EOS (a loss token) if the tokenizer has one */
    const char *chat_template; /* Jinja chat template for "messages" rows; NULL = the tokenizer's */
    int no_eos;     /* prompt/completion rows without the EOS they get by default */
    const char *chat_vars; /* JSON object of extra template variables (e.g. {"enable_thinking": false}); NULL */
    int keep_empty; /* keep rows without any loss token (loraga tokenize --as-training) */
    lg_row_format format;      /* force one row shape (LG_FMT_AUTO: detect each row's) */
    lg_field_map fields;       /* keys / columns under other names */
    lg_file_kind kind;         /* lg_dataset_load: LG_FILE_AUTO = by the file's extension */
} lg_data_opts;

typedef struct lg_dataset lg_dataset;

typedef struct {
    long rows;         /* rows / documents read (not counting blank lines) */
    long bad_rows;     /* skipped with skip_bad */
    long first_bad_line; /* line of the first skipped row (0 if none) */
    long dropped;      /* rows left with no loss token (empty, or prompt alone fills max_len) */
    long truncated;    /* rows cut to max_len (before packing) */
    long examples[2];  /* per split (train, validation) */
    long tokens[2];    /* tokens per split */
    long loss_tokens[2];
    long dropped_cut;  /* of `dropped`: rows that had loss tokens, all past max_len */
    long shape_rows[LG_FMT_COUNT]; /* rows read, by shape */
    char first_bad_why[200];       /* what was wrong with the first skipped row */
    int alpaca_chat;   /* Alpaca rows were rendered as a chat (the model has a chat template) */
} lg_data_stats;

int lg_dataset_load(const char *path, const lg_tokenizer *tok, const lg_data_opts *o, lg_dataset **out);
/* The same from memory (name is used in messages; is_jsonl selects the format). */
int lg_dataset_load_mem(const char *name, const char *data, size_t len, int is_jsonl, const lg_tokenizer *tok,
                        const lg_data_opts *o, lg_dataset **out);
/* The same for any file kind (LG_FILE_JSON covers JSON Lines and JSON arrays). */
int lg_dataset_load_mem_kind(const char *name, const char *data, size_t len, lg_file_kind kind,
                             const lg_tokenizer *tok, const lg_data_opts *o, lg_dataset **out);
void lg_dataset_free(lg_dataset *d);

/* {"bos_token": ..., "eos_token": ..., "unk_token": ..., "pad_token": ...}: the special tokens a chat
 * template sees, those the tokenizer has (caller deletes). */
struct cJSON *lg_data_special_tokens(const lg_tokenizer *tok);
/* The chat template of the tokenizer_config.json the tokenizer was loaded with ("chat_template": a
 * string, or the "default" of a named list), or NULL (caller frees). */
char *lg_data_tokenizer_template(const lg_tokenizer *tok);
/* What was read, in a few lines: rows by shape, skipped (why), truncated, examples and tokens per
 * split. what: "data", "validation data"... */
void lg_data_stats_print(FILE *f, const char *what, const char *path, const lg_data_stats *s, int max_len);

/* Examples in a split (LG_SPLIT_TRAIN_FILE counts the train split). */
int lg_dataset_count(const lg_dataset *d, int split);
void lg_dataset_stats(const lg_dataset *d, lg_data_stats *s);

/* Example i (0-based, in the split's order; for LG_SPLIT_TRAIN i counts across epochs) without
 * copying: its ids and per-token loss flags (1 = this token is predicted with loss), n tokens.
 * Pointers stay valid until lg_dataset_free. -1 if i is out of range (negative, or beyond the
 * split for the file-order splits) or the split is empty. */
int lg_dataset_example(const lg_dataset *d, int split, long i, const int **ids, const unsigned char **loss, int *n);

/* Fill batch b (caller-allocated b->B * b->T arrays) with examples [first, first + B) of the
 * split. For the file-order splits, rows past the end are padding (weight 0). Returns the
 * number of real examples placed (0..B), -1 on error (bad split, B or T < 1). */
int lg_dataset_fill_batch(const lg_dataset *d, int split, long first, lg_batch *b);

#endif
