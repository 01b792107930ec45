/* cmd_generate.c — `loraga generate`: sample text from a model (+ adapter) with a KV cache,
 * streaming each piece of text to stdout as soon as it is complete UTF-8. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "core/util.h"
#include "data/data.h"
#include "eval/adapter_set.h"
#include "model/generate.h"
#include "model/model.h"
#include "template/chat.h"
#include "tokenizer/tokenizer.h"

static const char *USAGE =
    "usage: loraga generate --model DIR [--adapter ADIR] --prompt STR [--chat [--system STR]] [--max-tokens N]\n"
    "                       [--temperature X] [--top-k N] [--top-p X] [--seed N]\n"
    "The prompt is BOS (where the tokenizer adds one) + its tokens; the prompt and then the continuation are\n"
    "printed as they come. --temperature 0 is greedy decoding. Generation stops at EOS, after\n"
    "--max-tokens, or when the model's context is full. Same seed, same options: same text.\n"
    "--chat: the prompt is a user message, rendered with the model's own chat template (after a system\n"
    "message with --system) and the generation prompt, as transformers' apply_chat_template(...,\n"
    "add_generation_prompt=True) renders it; the template places the special tokens. E.g.\n"
    "  loraga generate --model smol --adapter run --temperature 0 --no-echo --chat \\\n"
    "    --prompt 'What is the capital of Peru?'";

typedef struct {
    lg_text_stream *ts;
    int failed;
} stream_ud;

static int on_token(int id, void *ud) {
    stream_ud *s = ud;
    const char *txt;
    size_t len;
    if (lg_text_stream_push(s->ts, id, &txt, &len) != 0) {
        s->failed = 1;
        return 1;
    }
    if (len) {
        fwrite(txt, 1, len, stdout);
        fflush(stdout);
    }
    return 0;
}

int cmd_generate(int argc, char **argv) {
    const char *model = NULL, *tokp = NULL, *adapter = NULL, *prompt = NULL, *precision_s = "auto";
    int max_tokens = 256, top_k = 0, seed = 42, no_echo = 0, ignore_eos = 0, stats = 0, chat = 0;
    const char *system = NULL;
    char *rendered = NULL;
    float temperature = 1.0f, top_p = 1.0f;
    lg_opt opts[] = {
        {"--model", LG_OPT_STR, &model, "required: Hugging Face model directory, GGUF file, or llama2.c .bin with --tokenizer"},
        {"--precision", LG_OPT_STR, &precision_s,
         "linear layers in fp32 or bf16 (fp32 accumulation); auto = bf16 where the CPU has bf16 units (default auto)"},
        {"--tokenizer", LG_OPT_STR, &tokp, "tokenizer (default: the model directory's)"},
        {"--adapter", LG_OPT_STR, &adapter, "PEFT LoRA adapter directory applied to the model (default: none)"},
        {"--prompt", LG_OPT_STR, &prompt, "required: text to continue (may be empty when the tokenizer has a BOS token)"},
        {"--max-tokens", LG_OPT_INT, &max_tokens, "new tokens at most (default 256)"},
        {"--temperature", LG_OPT_FLOAT, &temperature, "softmax temperature; 0 = greedy (default 1.0)"},
        {"--top-k", LG_OPT_INT, &top_k, "sample among the k most likely tokens; 0 = all (default 0)"},
        {"--top-p", LG_OPT_FLOAT, &top_p, "nucleus sampling: smallest set with this probability; 1 = off (default 1)"},
        {"--seed", LG_OPT_INT, &seed, "sampling seed (default 42)"},
        {"--no-echo", LG_OPT_FLAG, &no_echo, "print only the continuation, not the prompt"},
        {"--ignore-eos", LG_OPT_FLAG, &ignore_eos, "keep going after EOS (benchmarks)"},
        {"--stats", LG_OPT_FLAG, &stats, "print tokens, speed and why generation stopped on stderr"},
        {"--chat", LG_OPT_FLAG, &chat, "the prompt is a user message: apply the model's chat template"},
        {"--system", LG_OPT_STR, &system, "--chat: a system message first (default: none; the template may add its own)"},
    };
    int pr = lg_parse_opts(argc, argv, opts, sizeof opts / sizeof opts[0], USAGE);
    if (pr) return pr > 0 ? 0 : 2;
    if (!model || !prompt) {
        fprintf(stderr, "loraga generate: --model and --prompt are required (see --help)\n");
        return 2;
    }
    if (system && !chat) {
        fprintf(stderr, "loraga generate: --system needs --chat\n");
        return 2;
    }
    if (max_tokens < 0 || top_k < 0 || temperature < 0 || top_p <= 0 || top_p > 1) {
        fprintf(stderr, "loraga generate: need --max-tokens >= 0, --top-k >= 0, --temperature >= 0, 0 < --top-p <= 1\n");
        return 2;
    }
    lg_model *m = NULL;
    lg_tokenizer *t = NULL;
    lg_adapter_set *ad = NULL;
    lg_kv *kv = NULL;
    lg_text_stream *ts = NULL;
    int *raw = NULL, *ids = NULL, nraw = 0, rc = 1;
    lg_gen_result res = {0};
    lg_model_opts mo;
    if (lg_cli_precision(precision_s, &mo) != 0 || lg_model_load(model, &mo, &m) != 0) goto done;
    const lg_config *c = lg_model_config(m);
    if (lg_tokenizer_load(tokp ? tokp : model, &t) != 0) goto done;
    if (lg_tokenizer_vocab_size(t) > c->vocab_size) {
        lg_errorf("tokenizer has %d tokens but the model's vocab_size is %d", lg_tokenizer_vocab_size(t), c->vocab_size);
        goto done;
    }
    if (adapter && lg_adapter_set_load(m, adapter, &ad) != 0) goto done;
    if (ad && stats) fprintf(stderr, "adapter: %s\n", lg_adapter_set_describe(ad));
    lg_cli_bf16_base(m);
    if (chat) { /* the prompt as a user message through the model's chat template */
        char *tpl = lg_cli_chat_template(tokp ? tokp : model);
        if (!tpl) tpl = lg_data_tokenizer_template(t);
        if (!tpl) {
            lg_errorf("--chat: the model has no chat template (chat_template.jinja, tokenizer_config.json "
                      "\"chat_template\", or tokenizer.chat_template in a GGUF)");
            goto done;
        }
        cJSON *msgs = cJSON_CreateArray(), *sp = lg_data_special_tokens(t), *mm;
        if (system) {
            cJSON_AddItemToArray(msgs, mm = cJSON_CreateObject());
            cJSON_AddStringToObject(mm, "role", "system");
            cJSON_AddStringToObject(mm, "content", system);
        }
        cJSON_AddItemToArray(msgs, mm = cJSON_CreateObject());
        cJSON_AddStringToObject(mm, "role", "user");
        cJSON_AddStringToObject(mm, "content", prompt);
        lg_chat *ch = NULL;
        int cr = lg_chat_new(tpl, "chat template", sp, NULL, &ch);
        if (!cr) cr = lg_chat_render(ch, msgs, 1, &rendered, NULL);
        lg_chat_free(ch);
        cJSON_Delete(msgs);
        cJSON_Delete(sp);
        free(tpl);
        if (cr) {
            lg_errorf_prefix("--chat");
            goto done;
        }
        prompt = rendered;
    }
    if (lg_tokenizer_encode(t, prompt, strlen(prompt), 0, &raw, &nraw) != 0) goto done;
    /* BOS where the tokenizer adds one (as eval and training frame documents); an empty prompt
     * starts from BOS in any case (GPT-2's <|endoftext|>); a chat template places its own */
    const int bos = !chat && (lg_cli_tokenizer_adds_bos(t) || nraw == 0) ? lg_tokenizer_bos(t) : -1, n = nraw + (bos >= 0);
    if (n == 0) {
        lg_errorf("the prompt is empty and the tokenizer has no BOS token to start from");
        goto done;
    }
    ids = lg_malloc((size_t)n * sizeof(int));
    if (bos >= 0) ids[0] = bos;
    memcpy(ids + (bos >= 0), raw, (size_t)nraw * sizeof(int));
    if (n > c->max_seq) {
        lg_errorf("the prompt has %d tokens; the model's context is %d", n, c->max_seq);
        goto done;
    }
    if (lg_kv_create(m, LG_MIN(c->max_seq, n + LG_MAX(max_tokens, 1)), &kv) != 0) goto done;
    int stop[2], ns = 0;
    if (!ignore_eos) {
        if (lg_tokenizer_eos(t) >= 0) stop[ns++] = lg_tokenizer_eos(t);
        if (c->eos_id >= 0 && (!ns || stop[0] != c->eos_id)) stop[ns++] = c->eos_id;
    }
    lg_gen_opts go = {max_tokens, {temperature, top_k, top_p}, (uint64_t)(unsigned)seed, stop, ns};
    if (!no_echo) {
        fputs(prompt, stdout);
        fflush(stdout);
    }
    ts = lg_text_stream_new(t, ids, n);
    stream_ud su = {ts, 0};
    const double t0 = lg_now();
    if (max_tokens > 0 && lg_generate(kv, ids, n, &go, on_token, &su, &res) != 0) goto done;
    const double dt = lg_now() - t0;
    if (su.failed) goto done;
    const char *tail;
    size_t tl;
    if (lg_text_stream_finish(ts, &tail, &tl) != 0) goto done;
    fwrite(tail, 1, tl, stdout);
    fputc('\n', stdout);
    fflush(stdout);
    if (res.stop == LG_STOP_CONTEXT)
        fprintf(stderr, "loraga generate: stopped: the model's context (%d positions) is full\n", lg_kv_cap(kv));
    if (stats) {
        static const char *why[] = {"max-tokens", "eos", "callback", "context full"};
        fprintf(stderr, "%d prompt tokens, %d new tokens in %.3fs (%.1f tokens/s), stop: %s\n", n, res.n, dt,
                dt > 0 ? res.n / dt : 0.0, max_tokens > 0 ? why[res.stop] : "max-tokens");
    }
    rc = 0;
done:
    if (rc) lg_cli_fail();
    free(res.ids);
    free(rendered);
    free(raw);
    free(ids);
    lg_text_stream_free(ts);
    lg_kv_free(kv);
    lg_adapter_set_free(ad);
    lg_tokenizer_free(t);
    lg_model_free(m);
    return rc;
}
