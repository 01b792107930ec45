/* cmd_convert.c — `loraga convert`: llama2.c / GGUF model -> Hugging Face directory. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "core/util.h"
#include "io/gguf.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

static const char *USAGE =
    "usage: loraga convert --from llama2c|gguf --model FILE [--tokenizer T.bin] --out DIR\n"
    "Writes a Hugging Face model directory (model.safetensors, config.json, tokenizer.json,\n"
    "tokenizer_config.json). llama2.c q/k weights are permuted to HF's rotate-half RoPE, so\n"
    "transformers computes the same logits as llama2.c on the original file. GGUF tensors\n"
    "(F32/F16/BF16/Q8_0/Q4_0/Q4_1) are dequantised and written as float32 unless --dtype says\n"
    "otherwise; the tokenizer and chat template come from the GGUF metadata.\n"
    "example: loraga convert --from gguf --model SmolLM2-135M-Instruct.Q4_1.gguf --out smol\n"
    "(a Hugging Face directory needs no conversion: pass it to train/eval/generate as it is)";

/* llama2.c keeps the tokenizer beside the model: tokenizer.bin, or tok<N>.bin for custom vocabularies. */
static char *find_tokenizer(const char *model, int vocab) {
    char *dir = lg_strdup(model);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0;
    else strcpy(dir, ".");
    char name[64];
    snprintf(name, sizeof name, "tok%d.bin", vocab);
    const char *cands[] = {name, "tokenizer.bin"};
    for (int i = 0; i < 2; i++) {
        char *p = lg_path_join(dir, cands[i]);
        if (lg_file_exists(p)) {
            free(dir);
            return p;
        }
        free(p);
    }
    free(dir);
    return NULL;
}

/* GGUF: weights dequantised (float32 unless --dtype), q/k rows back in HF order, tokenizer and
 * chat template from the file's metadata. */
static int convert_gguf(const char *model, const char *out, const char *dtype, const char *tok) {
    if (tok) {
        lg_errorf("--tokenizer is for llama2c; a GGUF file carries its own tokenizer");
        return lg_cli_fail();
    }
    lg_gguf *g = NULL;
    lg_model *m = NULL;
    lg_tokenizer *t = NULL;
    char *tmp = NULL;
    lg_config cfg;
    lg_weight_src src = {0};
    fprintf(stderr, "loading %s\n", model);
    if (lg_gguf_open(model, &g) != 0 || lg_gguf_model_from(g, &cfg, &src) != 0) goto fail;
    if (!dtype) snprintf(cfg.torch_dtype, sizeof cfg.torch_dtype, "float32");
    if (lg_model_create(&cfg, &src, 0, NULL, &m) != 0) {
        lg_errorf_prefix("%s", model);
        goto fail;
    }
    lg_gguf_model_close(&src);
    if (lg_gguf_tokenizer_from(g, &t) != 0) goto fail;
    if (lg_tokenizer_vocab_size(t) > cfg.vocab_size) {
        lg_errorf("%s: the tokenizer has %d tokens but the model's vocab_size is %d", model, lg_tokenizer_vocab_size(t),
                  cfg.vocab_size);
        goto fail;
    }
    if (!(tmp = lg_outdir_begin(out))) goto fail;
    fprintf(stderr, "writing %s (%lld parameters)\n", out, (long long)lg_model_numel(m));
    if (lg_model_save_hf(m, tmp, dtype) != 0 || lg_gguf_save_tokenizer(g, t, tmp) != 0) goto fail;
    if (lg_outdir_commit(tmp, out) != 0) {
        tmp = NULL;
        goto fail;
    }
    fprintf(stderr, "done: %s\n", out);
    lg_tokenizer_free(t);
    lg_model_free(m);
    lg_gguf_close(g);
    return 0;
fail:
    lg_outdir_abort(tmp);
    lg_gguf_model_close(&src);
    lg_tokenizer_free(t);
    lg_model_free(m);
    lg_gguf_close(g);
    return lg_cli_fail();
}

int cmd_convert(int argc, char **argv) {
    const char *from = NULL, *model = NULL, *tok = NULL, *out = NULL, *dtype = NULL;
    lg_opt opts[] = {
        {"--from", LG_OPT_STR, &from, "required: source format, llama2c or gguf"},
        {"--model", LG_OPT_STR, &model, "required: the model file (llama2.c .bin or .gguf)"},
        {"--tokenizer", LG_OPT_STR, &tok, "llama2.c tokenizer.bin (default: tok<vocab>.bin or tokenizer.bin beside the model)"},
        {"--out", LG_OPT_STR, &out, "required: output directory (must not exist or be empty)"},
        {"--dtype", LG_OPT_STR, &dtype, "float32 (default), bfloat16 or float16"},
    };
    int pr = lg_parse_opts(argc, argv, opts, sizeof opts / sizeof opts[0], USAGE);
    if (pr) return pr > 0 ? 0 : 2;
    if (!from || !model || !out) {
        fprintf(stderr, "loraga convert: --from, --model and --out are required (see --help)\n");
        return 2;
    }
    if (strcmp(from, "llama2c") && strcmp(from, "gguf")) {
        lg_errorf("--from '%s': expected llama2c or gguf", from);
        return lg_cli_fail();
    }
    if (!strcmp(from, "gguf")) return convert_gguf(model, out, dtype, tok);
    lg_model *m = NULL;
    lg_tokenizer *t = NULL;
    char *tmp = NULL, *tokpath = NULL;
    fprintf(stderr, "loading %s\n", model);
    if (lg_model_load(model, NULL, &m) != 0) goto fail;
    const lg_config *c = lg_model_config(m);
    tokpath = tok ? lg_strdup(tok) : find_tokenizer(model, c->vocab_size);
    if (!tokpath) {
        lg_errorf("%s: no tokenizer found beside the model (tok%d.bin or tokenizer.bin); pass --tokenizer", model,
                  c->vocab_size);
        goto fail;
    }
    if (lg_tokenizer_load(tokpath, &t) != 0) goto fail;
    if (lg_tokenizer_vocab_size(t) != c->vocab_size) {
        lg_errorf("%s has %d tokens but the model %s has vocab_size %d", tokpath, lg_tokenizer_vocab_size(t), model,
                  c->vocab_size);
        goto fail;
    }
    if (!(tmp = lg_outdir_begin(out))) goto fail;
    fprintf(stderr, "writing %s (%lld parameters)\n", out, (long long)lg_model_numel(m));
    if (lg_model_save_hf(m, tmp, dtype) != 0 || lg_tokenizer_save_hf(t, tmp) != 0) goto fail;
    if (lg_outdir_commit(tmp, out) != 0) {
        tmp = NULL;
        goto fail;
    }
    tmp = NULL;
    fprintf(stderr, "done: %s\n", out);
    free(tokpath);
    lg_tokenizer_free(t);
    lg_model_free(m);
    return 0;
fail:
    lg_outdir_abort(tmp);
    free(tokpath);
    lg_tokenizer_free(t);
    lg_model_free(m);
    return lg_cli_fail();
}
