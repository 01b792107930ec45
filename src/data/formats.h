/* formats.h — the shapes a data row may have and the kinds of data file (data.h loads them).
 *
 * Row shapes, detected per row from its keys (in this order) or forced with lg_data_opts.format:
 *   prompt-completion  {"prompt": STR, "completion": STR}             loss on the completion
 *                      {"prompt": [MSG...], "completion": [MSG...]}   conversational (TRL): rendered
 *                                                                     as one chat, loss on the
 *                                                                     completion's assistant turns
 *   alpaca             {"instruction", "output", "input"?, "system"?, "history"?}
 *                      with a chat template: user = instruction + "\n" + input (input when not
 *                      empty), assistant = output, "system" a system turn, "history"
 *                      [[user, assistant], ...] earlier turns (as LLaMA-Factory); without one:
 *                      the Stanford Alpaca prompt ("Below is an instruction ...### Response:\n",
 *                      "system" replacing its first paragraph) with output as the completion
 *   text               {"text": STR}                                  loss on every token
 *   messages           {"messages": [{"role", "content", "weight"?}, ...]}  loss on assistant turns
 *   sharegpt           {"conversations": [{"from", "value", "weight"?}, ...], "system"?}
 *                      from: human|user -> user, gpt|assistant|chatgpt -> assistant, system
 * A message's optional "weight" 0 (or false) takes an assistant turn out of the loss (OpenAI's
 * fine-tuning format). Every key name may be mapped to another (lg_field_map): a mapped shape is
 * tried before the others.
 *
 * File kinds, by extension (case-insensitive): .jsonl/.json — JSON Lines, or one JSON array of
 * row objects when the file starts with '['; .csv/.tsv — a header row naming the columns, then
 * one row per record (RFC 4180 quoting: a field that starts with '"' runs to the next lone '"',
 * "" inside it is a quote, and it may span lines), every value a string; anything else — plain
 * text (data.h). */
#ifndef LG_FORMATS_H
#define LG_FORMATS_H

#include <stddef.h>

struct cJSON;

typedef enum {
    LG_FMT_AUTO = 0,
    LG_FMT_TEXT,
    LG_FMT_PROMPT_COMPLETION,
    LG_FMT_CONV_PC, /* conversational prompt-completion (forced as prompt-completion) */
    LG_FMT_MESSAGES,
    LG_FMT_SHAREGPT,
    LG_FMT_ALPACA,
    LG_FMT_COUNT
} lg_row_format;

typedef enum { LG_FILE_AUTO = 0, LG_FILE_JSON, LG_FILE_CSV, LG_FILE_TSV, LG_FILE_TEXT } lg_file_kind;

/* The key (JSON) or column (CSV/TSV) that holds each field; NULL: the field's own name. */
typedef struct {
    const char *text, *prompt, *completion, *messages, *conversations, *instruction, *input, *output, *system;
} lg_field_map;

/* "text", "prompt-completion", "messages", "sharegpt", "alpaca" (and "auto"); -1 with a message
 * listing them otherwise. */
int lg_row_format_parse(const char *s, lg_row_format *f);
const char *lg_row_format_name(lg_row_format f);
lg_file_kind lg_file_kind_of(const char *path);

/* The canonical form of one row — {"text": STR}, {"prompt": STR, "completion": STR} or
 * {"messages": [...]} — as a fresh object, and its shape. NULL when the row has no accepted shape
 * (or not the forced one): why then says what is wrong, naming the keys. alpaca_chat: render
 * Alpaca rows as a chat (the model has a chat template). */
struct cJSON *lg_row_canonical(const struct cJSON *row, lg_row_format force, const lg_field_map *fm, int alpaca_chat,
                               lg_row_format *shape, char *why, size_t cap);

/* Records of a JSON-array or CSV/TSV file, one at a time, as JSON objects. */
typedef struct lg_rec_reader lg_rec_reader;
/* kind: LG_FILE_JSON (the data must start with '[', after a BOM and white space), LG_FILE_CSV or
 * LG_FILE_TSV (reads the header: an empty, duplicated or missing column name is an error). */
int lg_rec_open(const char *name, const char *data, size_t len, lg_file_kind kind, lg_rec_reader **out);
/* 1: a record — *obj (caller deletes), or *obj NULL and why set for a bad one that can be skipped
 * (invalid UTF-8, a CSV row with the wrong number of fields); *line is where it starts.
 * 0: no more records. -1: the file cannot be read on (broken JSON, an unclosed quote), with a
 * message naming FILE:LINE. */
int lg_rec_next(lg_rec_reader *r, struct cJSON **obj, long *line, char *why, size_t cap);
void lg_rec_close(lg_rec_reader *r);

#endif
