/* cli.c — option parsing shared by the subcommands. */
#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "model/model.h"

int lg_cli_fail(void) {
    fprintf(stderr, "loraga: error: %s\n", lg_last_error());
    return 1;
}

void lg_print_opts(const lg_opt *opts, int nopts, const char *usage) {
    printf("%s\n\noptions:\n", usage);
    for (int i = 0; i < nopts; i++) {
        const char *arg = opts[i].type == LG_OPT_STR     ? " STR"
                          : opts[i].type == LG_OPT_INT   ? " N"
                          : opts[i].type == LG_OPT_FLOAT ? " X"
                          : opts[i].type == LG_OPT_SIZE  ? " BYTES"
                                                         : "";
        char left[64];
        snprintf(left, sizeof left, "%s%s", opts[i].name, arg);
        /* a flag without a stated default is off unless given: say so, so every line has its default */
        int say_off = opts[i].type == LG_OPT_FLAG && !strstr(opts[i].help, "default");
        printf("  %-24s %s%s\n", left, opts[i].help, say_off ? " (default off)" : "");
    }
    printf("  %-24s %s\n", "--help", "show this help");
}

static int parse_size(const char *s, size_t *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno || v < 0) return -1;
    double mul = 1;
    if (*end == 'K' || *end == 'k') mul = 1024.0, end++;
    else if (*end == 'M' || *end == 'm') mul = 1024.0 * 1024, end++;
    else if (*end == 'G' || *end == 'g') mul = 1024.0 * 1024 * 1024, end++;
    if (*end == 'B' || *end == 'b') end++;
    if (*end) return -1;
    *out = (size_t)(v * mul);
    return 0;
}

int lg_parse_opts(int argc, char **argv, const lg_opt *opts, int nopts, const char *usage) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            lg_print_opts(opts, nopts, usage);
            return 1;
        }
        const char *eq = strchr(a, '=');
        size_t alen = eq ? (size_t)(eq - a) : strlen(a);
        const lg_opt *o = NULL;
        for (int j = 0; j < nopts; j++)
            if (strlen(opts[j].name) == alen && !strncmp(opts[j].name, a, alen)) o = &opts[j];
        if (!o) {
            fprintf(stderr, "loraga %s: unknown option '%s' (see --help)\n", argv[0], a);
            return -1;
        }
        if (o->type == LG_OPT_FLAG) {
            *(int *)o->dst = 1;
            continue;
        }
        const char *v = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
        if (!v) {
            fprintf(stderr, "loraga %s: option %s needs a value (see loraga %s --help)\n", argv[0], o->name, argv[0]);
            return -1;
        }
        char *end;
        errno = 0;
        switch (o->type) {
        case LG_OPT_STR: *(const char **)o->dst = v; break;
        case LG_OPT_INT: {
            long x = strtol(v, &end, 10);
            if (end == v || *end || errno || x < -2147483647L || x > 2147483647L) goto bad;
            *(int *)o->dst = (int)x;
            break;
        }
        case LG_OPT_FLOAT: {
            float x = strtof(v, &end);
            if (end == v || *end || errno) goto bad;
            *(float *)o->dst = x;
            break;
        }
        case LG_OPT_SIZE:
            if (parse_size(v, (size_t *)o->dst) != 0) goto bad;
            break;
        default: break;
        }
        continue;
    bad:
        fprintf(stderr, "loraga %s: option %s: '%s' is not a valid value (expected %s)\n", argv[0], o->name, v,
                o->type == LG_OPT_INT     ? "a whole number, e.g. 100"
                : o->type == LG_OPT_FLOAT ? "a number, e.g. 1e-4"
                                          : "a size, e.g. 512M or 2G");
        return -1;
    }
    return 0;
}

#include "io/gguf.h"
#include "tokenizer/tokenizer.h"

/* Whether the tokenizer itself puts BOS in front of a text (LLaMA-style) — as HF's
 * tokenizer(text) would; GPT-2 and SmolLM2 do not. */
int lg_cli_precision(const char *s, lg_model_opts *mo) {
    memset(mo, 0, sizeof *mo);
    if (lg_precision_parse(s, &mo->precision) != 0) return lg_errorf_prefix("--precision");
    mo->precision = lg_precision_resolve(mo->precision);
    return 0;
}

void lg_cli_bf16_base(lg_model *m) {
    if (lg_model_ops(m)->precision == LG_PREC_BF16) lg_model_store_frozen_bf16(m);
}

int lg_cli_tokenizer_adds_bos(const lg_tokenizer *t) {
    int *ids = NULL, n = 0;
    int bos = lg_tokenizer_bos(t), adds = 0;
    if (bos >= 0 && lg_tokenizer_encode(t, "", 0, 1, &ids, &n) == 0) adds = n > 0 && ids[0] == bos;
    free(ids);
    return adds;
}

/* Whether the tokenizer itself puts EOS after a text (its post-processor adds it). */
int lg_cli_tokenizer_adds_eos(const lg_tokenizer *t) {
    int *ids = NULL, n = 0;
    int eos = lg_tokenizer_eos(t), adds = 0;
    if (eos >= 0 && lg_tokenizer_encode(t, "", 0, 1, &ids, &n) == 0) adds = n > 0 && ids[n - 1] == eos;
    free(ids);
    return adds;
}

/* A GGUF model carries its chat template in its metadata; a Hugging Face directory may have
 * chat_template.jinja, which transformers prefers to tokenizer_config.json's; NULL otherwise
 * (caller frees; the tokenizer_config.json template is then the data loader's default). */
char *lg_cli_chat_template(const char *model) {
    char *tpl = NULL;
    if (!lg_is_dir(model) && lg_gguf_is_gguf(model) && lg_gguf_chat_template(model, &tpl) != 0) tpl = NULL;
    if (lg_is_dir(model)) {
        char *p = lg_path_join(model, "chat_template.jinja");
        size_t n;
        if (lg_file_exists(p) && lg_read_file(p, &tpl, &n) != 0) tpl = NULL;
        free(p);
    }
    return tpl;
}
