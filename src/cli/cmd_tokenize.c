/* cmd_tokenize.c — `loraga tokenize`: print the token ids of a text or of JSONL {"text"} rows,
 * one JSON array per input, exactly as Hugging Face `tokenizers` would produce them; with
 * --as-training, each row of a training file as `train` builds it: {"ids": [...], "mask": [...]}. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "core/util.h"
#include "data/data.h"
#include "tokenizer/tokenizer.h"

static int print_ids(const lg_tokenizer *t, const char *s, size_t n, int add_special, FILE *out) {
    int *ids, m;
    if (lg_tokenizer_encode(t, s, n, add_special, &ids, &m)) return -1;
    fputc('[', out);
    for (int i = 0; i < m; i++) fprintf(out, i ? ",%d" : "%d", ids[i]);
    fputs("]\n", out);
    free(ids);
    return 0;
}

static int read_stdin(char **data, size_t *len) {
    size_t cap = 1 << 16, n = 0, k;
    char *b = lg_malloc(cap);
    while ((k = fread(b + n, 1, cap - n - 1, stdin)) > 0) {
        n += k;
        if (n + 1 == cap) b = lg_realloc(b, cap *= 2);
    }
    b[n] = 0;
    *data = b;
    *len = n;
    return 0;
}

static int tokenize_rows(const lg_tokenizer *t, const char *path, int add_special) {
    char *data;
    size_t len;
    int is_stdin = !strcmp(path, "-");
    if (is_stdin ? read_stdin(&data, &len) : lg_read_file(path, &data, &len)) return -1;
    const char *name = is_stdin ? "<stdin>" : path;
    /* validate every row first: nothing is printed for a bad file */
    for (int pass = 0; pass < 2; pass++) {
        long line = 0;
        size_t pos = 0;
        while (pos < len) {
            char *s = data + pos;
            char *nl = memchr(s, '\n', len - pos);
            size_t n = nl ? (size_t)(nl - s) : len - pos;
            pos += n + (nl ? 1 : 0);
            line++;
            if (line == 1 && n >= 3 && !memcmp(s, "\xEF\xBB\xBF", 3)) s += 3, n -= 3;
            size_t k = 0;
            while (k < n && (s[k] == ' ' || s[k] == '\t' || s[k] == '\r')) k++;
            if (k == n) continue;
            size_t bad = lg_utf8_check(s, n);
            if (bad != n) {
                free(data);
                return lg_errorf("%s:%ld: invalid UTF-8 at byte %zu of the line", name, line, bad + 1);
            }
            const char *end = NULL;
            cJSON *o = cJSON_ParseWithLengthOpts(s, n, &end, 0);
            int trailing = 0;
            if (o && end)
                for (const char *e = end; e < s + n; e++)
                    if (*e != ' ' && *e != '\t' && *e != '\r') trailing = 1;
            const cJSON *tx = o ? cJSON_GetObjectItemCaseSensitive(o, "text") : NULL;
            const char *err = !o || trailing      ? "not valid JSON"
                              : !cJSON_IsObject(o) ? "row is not a JSON object"
                              : !tx                ? "row has no \"text\" field"
                              : !cJSON_IsString(tx) ? "field \"text\" is not a string"
                                                    : NULL;
            if (err) {
                cJSON_Delete(o);
                free(data);
                return lg_errorf("%s:%ld: %s", name, line, err);
            }
            int rc = 0;
            if (pass == 1) rc = print_ids(t, tx->valuestring, strlen(tx->valuestring), add_special, stdout);
            cJSON_Delete(o);
            if (rc) {
                free(data);
                return lg_errorf_prefix("%s:%ld", name, line);
            }
        }
    }
    free(data);
    return 0;
}

/* every row as train builds it (template rendered, BOS/EOS added), mask 1 where the loss counts */
static int tokenize_training(const lg_tokenizer *t, const char *tok_path, const char *path, int no_eos, int add_eos) {
    lg_data_opts o = {0};
    o.max_len = 1 << 30; /* no truncation: the rows as they are */
    o.add_bos = lg_cli_tokenizer_adds_bos(t);
    o.add_eos = add_eos || lg_cli_tokenizer_adds_eos(t);
    o.no_eos = no_eos;
    o.keep_empty = 1;
    o.seed = 42;
    char *tpl = lg_cli_chat_template(tok_path);
    o.chat_template = tpl;
    lg_dataset *d = NULL;
    int rc;
    if (!strcmp(path, "-")) {
        char *data;
        size_t len;
        read_stdin(&data, &len);
        rc = lg_dataset_load_mem("<stdin>", data, len, 1, t, &o, &d);
        free(data);
    } else {
        rc = lg_dataset_load(path, t, &o, &d);
    }
    free(tpl);
    if (rc) return -1;
    int n = lg_dataset_count(d, LG_SPLIT_TRAIN_FILE);
    for (int i = 0; i < n; i++) {
        const int *ids;
        const unsigned char *loss;
        int m;
        lg_dataset_example(d, LG_SPLIT_TRAIN_FILE, i, &ids, &loss, &m);
        fputs("{\"ids\": [", stdout);
        for (int k = 0; k < m; k++) printf(k ? ", %d" : "%d", ids[k]);
        fputs("], \"mask\": [", stdout);
        for (int k = 0; k < m; k++) printf(k ? ", %d" : "%d", loss[k]);
        fputs("]}\n", stdout);
    }
    lg_dataset_free(d);
    return 0;
}

int cmd_tokenize(int argc, char **argv) {
    const char *tok_path = NULL, *text = NULL, *input = NULL;
    int add_special = 0, as_training = 0, no_eos = 0, add_eos = 0;
    const lg_opt opts[] = {
        {"--tokenizer", LG_OPT_STR, &tok_path, "required: tokenizer.json, a model directory, a .gguf, or a llama2.c tokenizer.bin"},
        {"--text", LG_OPT_STR, &text, "text to tokenize (this or --input is required)"},
        {"--input", LG_OPT_STR, &input, "JSONL file of {\"text\": ...} rows ('-' = stdin); one array per row (this or --text is required)"},
        {"--add-special", LG_OPT_FLAG, &add_special, "add the special tokens the tokenizer adds (e.g. BOS) (default off)"},
        {"--as-training", LG_OPT_FLAG, &as_training, "with --input: each row (text, prompt/completion, messages) as train "
                                                     "builds it, {\"ids\": [...], \"mask\": [...]} (mask 1 = loss)"},
        {"--no-eos", LG_OPT_FLAG, &no_eos, "--as-training: prompt/completion rows without the EOS train appends"},
        {"--add-eos", LG_OPT_FLAG, &add_eos, "--as-training: end text rows with EOS (default: when the tokenizer adds it)"},
    };
    const char *usage = "usage: loraga tokenize --tokenizer PATH [--text STR | --input ROWS.jsonl [--as-training]] [--add-special]";
    int nopts = (int)(sizeof opts / sizeof opts[0]);
    int rc = lg_parse_opts(argc, argv, opts, nopts, usage);
    if (rc == 1) return 0;
    if (rc < 0) return 2;
    if (!tok_path || (!text && !input) || (text && input)) {
        fprintf(stderr, "loraga tokenize: need --tokenizer and exactly one of --text / --input (see --help)\n");
        return 2;
    }
    if (as_training && !input) {
        fprintf(stderr, "loraga tokenize: --as-training needs --input ROWS.jsonl\n");
        return 2;
    }
    lg_tokenizer *t;
    if (lg_tokenizer_load(tok_path, &t)) return lg_cli_fail();
    int err = text          ? print_ids(t, text, strlen(text), add_special, stdout)
              : as_training ? tokenize_training(t, tok_path, input, no_eos, add_eos)
                            : tokenize_rows(t, input, add_special);
    lg_tokenizer_free(t);
    if (err) return lg_cli_fail();
    return fflush(stdout) == 0 ? 0 : 1;
}
