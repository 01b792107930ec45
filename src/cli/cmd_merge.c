/* cmd_merge.c — `loraga merge`: fold a PEFT LoRA adapter into the base weights and write a new
 * Hugging Face model directory (W + s·B·A; DoRA: rows rescaled to magnitude / ||W + s·B·A||). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "core/util.h"
#include "eval/adapter_set.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

static const char *USAGE =
    "usage: loraga merge --model DIR --adapter ADIR --out DIR2 [--dtype float32|bfloat16|float16]\n"
    "Writes DIR2 (must not exist, or be empty; written atomically): model.safetensors with the adapter\n"
    "merged, in the base's dtype unless --dtype, config.json, and the base's tokenizer files.\n"
    "example: loraga merge --model smol --adapter run --out smol-merged   (then: loraga generate --model smol-merged)";

/* Files of a Hugging Face model directory that travel with the weights unchanged. */
static const char *const TOKENIZER_FILES[] = {"tokenizer.json",  "tokenizer_config.json", "special_tokens_map.json",
                                              "tokenizer.model", "vocab.json",            "merges.txt",
                                              "added_tokens.json", "generation_config.json", "chat_template.jinja",
                                              "tokenizer.bin"};

static int copy_file(const char *from, const char *to) {
    char *data = NULL;
    size_t len = 0;
    if (lg_read_file(from, &data, &len) != 0) return -1;
    int rc = lg_write_file_atomic(to, data, len);
    free(data);
    return rc;
}

int cmd_merge(int argc, char **argv) {
    const char *model = NULL, *adapter = NULL, *out = NULL, *dtype = NULL, *tokp = NULL;
    lg_opt opts[] = {
        {"--model", LG_OPT_STR, &model, "required: base model, Hugging Face directory (or llama2.c .bin / GGUF with --tokenizer)"},
        {"--adapter", LG_OPT_STR, &adapter, "required: PEFT LoRA adapter directory (loraga's or PEFT's)"},
        {"--out", LG_OPT_STR, &out, "required: output Hugging Face directory (must not exist, or be empty)"},
        {"--dtype", LG_OPT_STR, &dtype, "float32, bfloat16 or float16 (default: the base's torch_dtype)"},
        {"--tokenizer", LG_OPT_STR, &tokp, "tokenizer to write when the base is not an HF directory (default: the base directory's files)"},
    };
    int pr = lg_parse_opts(argc, argv, opts, sizeof opts / sizeof opts[0], USAGE);
    if (pr) return pr > 0 ? 0 : 2;
    if (!model || !adapter || !out) {
        fprintf(stderr, "loraga merge: --model, --adapter and --out are required (see --help)\n");
        return 2;
    }
    lg_model *m = NULL;
    lg_adapter_set *ad = NULL;
    lg_tokenizer *t = NULL;
    char *tmp = NULL;
    int rc = 1;
    if (lg_model_load(model, NULL, &m) != 0) goto done;
    if (lg_adapter_set_load(m, adapter, &ad) != 0) goto done;
    fprintf(stderr, "merging %s\n", lg_adapter_set_describe(ad));
    const int hf_dir = lg_is_dir(model);
    if (!hf_dir && lg_tokenizer_load(tokp ? tokp : model, &t) != 0) {
        lg_errorf_prefix("the base is not a Hugging Face directory, so the tokenizer must be given with --tokenizer");
        goto done;
    }
    lg_adapter_set_merge_and_free(ad);
    ad = NULL;
    if (!(tmp = lg_outdir_begin(out))) goto done;
    if (lg_model_save_hf(m, tmp, dtype) != 0) goto done;
    if (hf_dir) {
        for (size_t i = 0; i < sizeof TOKENIZER_FILES / sizeof TOKENIZER_FILES[0]; i++) {
            char *from = lg_path_join(model, TOKENIZER_FILES[i]), *to = lg_path_join(tmp, TOKENIZER_FILES[i]);
            int bad = lg_file_exists(from) && copy_file(from, to) != 0;
            free(from), free(to);
            if (bad) goto done;
        }
    } else if (lg_tokenizer_save_hf(t, tmp) != 0) {
        goto done;
    }
    if (lg_outdir_commit(tmp, out) != 0) {
        tmp = NULL;
        goto done;
    }
    tmp = NULL;
    fprintf(stderr, "done: %s\n", out);
    rc = 0;
done:
    if (rc) lg_cli_fail();
    lg_outdir_abort(tmp);
    lg_adapter_set_free(ad);
    lg_tokenizer_free(t);
    lg_model_free(m);
    return rc;
}
