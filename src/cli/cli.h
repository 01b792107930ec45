/* cli.h — shared pieces of the command-line tool: option parsing and the subcommands. */
#ifndef LG_CLI_H
#define LG_CLI_H

#include <stddef.h>

typedef enum {
    LG_OPT_STR,   /* const char ** */
    LG_OPT_INT,   /* int * */
    LG_OPT_FLOAT, /* float * */
    LG_OPT_FLAG,  /* int *, set to 1 */
    LG_OPT_SIZE   /* size_t *, accepts 512M, 2G, 100K */
} lg_opt_type;

typedef struct {
    const char *name; /* "--lr" */
    lg_opt_type type;
    void *dst;
    const char *help; /* one line; mention the default */
} lg_opt;

/* Parses argv[1..argc) (argv[0] is the subcommand). Unknown options, missing or malformed
 * values -> message naming the option on stderr, returns -1. --help / -h prints usage and
 * the option table to stdout and returns 1 (caller exits 0). */
int lg_parse_opts(int argc, char **argv, const lg_opt *opts, int nopts, const char *usage);
void lg_print_opts(const lg_opt *opts, int nopts, const char *usage);

/* "loraga: error: <lg_last_error()>" on stderr; returns 1 (the exit status). */
int lg_cli_fail(void);

/* --precision's value -> model options (AUTO resolved); -1 with a message when malformed. */
struct lg_model_opts;
int lg_cli_precision(const char *s, struct lg_model_opts *mo);
/* Inference in bf16: store the (frozen) base as bf16, as the products read it anyway (half the
 * memory; the backend may prepack it). Call once adapters are attached. */
struct lg_model;
void lg_cli_bf16_base(struct lg_model *m);

struct lg_tokenizer;
/* Whether the tokenizer adds BOS in front of a text, as HF's tokenizer(text) does. */
int lg_cli_tokenizer_adds_bos(const struct lg_tokenizer *t);
/* Whether the tokenizer puts EOS after a text (its post-processor adds it). */
int lg_cli_tokenizer_adds_eos(const struct lg_tokenizer *t);
/* The chat template stored in a GGUF model's metadata or a directory's chat_template.jinja, or NULL
 * (caller frees). */
char *lg_cli_chat_template(const char *model);

/* subcommands: each returns the process exit status */
int cmd_convert(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_merge(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_export(int argc, char **argv);

#endif
