/* testutil.h — helpers shared by the cmocka tests. */
#ifndef LG_TESTUTIL_H
#define LG_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

/* Path of a file under ../shared/data (relative to the repo root, where tests run), or
 * NULL if ../shared/data is absent. Caller frees. */
char *lg_test_shared(const char *rel);
/* cmocka skip with a clear line on stdout when shared data is missing. */
#define LG_REQUIRE_SHARED(var, rel)                                                            \
    char *var = lg_test_shared(rel);                                                           \
    if (!var) {                                                                                \
        print_message("skipped: ../shared/data/%s not found\n", rel);                          \
        skip();                                                                                \
    }
/* A fresh empty temporary directory (mkdtemp under /tmp); caller frees the string. */
char *lg_test_tmpdir(void);
/* Run a shell command, capture stdout (up to cap-1 bytes) and return its exit status. */
int lg_test_run(const char *cmd, char *out, size_t cap);
/* Path of the built CLI (LORAGA_BIN or build/loraga). */
const char *lg_test_bin(void);

/* A tiny decoder config for gradient checks: dim 16, 4 heads of 4, FFN 24, 16 positions;
 * LLaMA with 2 kv heads (GQA), RoPE rotate-half, untied; GPT-2 with biases, tied. */
#include "data/batch.h"
#include "model/config.h"
lg_config lg_test_tiny_config(lg_arch arch, int vocab, int layers);
/* The same tiny LLaMA with the switches of another architecture, each chosen to matter at this
 * size (windows of 3 positions, soft caps near the values' scale): "gemma2" (GeGLU, 1 + w norms,
 * post norms, scaled embeddings, attention scale and cap, logit cap, window on even layers, tied),
 * "gemma3" (the same with q/k norms, no attention cap, a local RoPE base, linear scaling on the
 * global layers), "qwen3" (q/k norms), "phi3" (fused qkv / gate_up, LongRoPE, window everywhere),
 * "llama3" (llama3 RoPE, tied). */
lg_config lg_test_arch_config(const char *kind, int vocab, int layers);
/* Random B x T batch (inputs, targets uniform in [0, V)); the last position of each row and
 * position 1 (a masked "prompt" token) have weight 0. Free with lg_test_free_batch. */
void lg_test_random_batch(lg_batch *b, int B, int T, int V, uint64_t seed);
void lg_test_free_batch(lg_batch *b);

/* A tiny character-level tokenizer: chars ' '..'~' get id = their code, "\n" 10, <s> = 1 (BOS),
 * </s> = 2 (EOS); no merges, no chat template. */
typedef struct lg_tokenizer lg_tokenizer;
lg_tokenizer *lg_test_char_tokenizer(void);

#endif
