/* testutil.c — see testutil.h. */
#include "testutil.h"

#include "core/util.h"
#include "tokenizer/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

char *lg_test_shared(const char *rel) {
    const char *root = getenv("LORAGA_SHARED");
    if (!root) root = "../shared/data";
    char buf[4096];
    snprintf(buf, sizeof buf, "%s/%s", root, rel);
    struct stat st;
    if (stat(buf, &st) != 0) return NULL;
    return strdup(buf);
}

char *lg_test_tmpdir(void) {
    char tmpl[] = "/tmp/loraga-test-XXXXXX";
    char *d = mkdtemp(tmpl);
    return d ? strdup(d) : NULL;
}

int lg_test_run(const char *cmd, char *out, size_t cap) {
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t n = 0;
    if (out && cap) {
        size_t k;
        while (n + 1 < cap && (k = fread(out + n, 1, cap - 1 - n, p)) > 0) n += k;
        out[n] = 0;
    }
    char sink[4096];
    while (fread(sink, 1, sizeof sink, p) > 0) {}
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

const char *lg_test_bin(void) {
    const char *b = getenv("LORAGA_BIN");
    return b ? b : "build/loraga";
}

lg_config lg_test_tiny_config(lg_arch arch, int vocab, int layers) {
    lg_config c;
    memset(&c, 0, sizeof c);
    c.arch = arch;
    snprintf(c.model_type, sizeof c.model_type, "%s", arch == LG_ARCH_GPT2 ? "gpt2" : "llama");
    snprintf(c.torch_dtype, sizeof c.torch_dtype, "float32");
    c.vocab_size = vocab;
    c.dim = 16;
    c.n_layers = layers;
    c.n_heads = 4;
    c.n_kv_heads = arch == LG_ARCH_GPT2 ? 4 : 2;
    c.head_dim = 4;
    c.hidden_dim = 24;
    c.max_seq = 16;
    c.norm_eps = 1e-5f;
    c.rope_theta = 10000.0f;
    c.rope_style = LG_ROPE_HALF;
    c.qkv_bias = c.o_bias = c.mlp_bias = arch == LG_ARCH_GPT2;
    c.tied_embeddings = arch == LG_ARCH_GPT2;
    c.bos_id = c.eos_id = -1;
    return c;
}

lg_config lg_test_arch_config(const char *kind, int vocab, int layers) {
    lg_config c = lg_test_tiny_config(LG_ARCH_LLAMA, vocab, layers);
    snprintf(c.model_type, sizeof c.model_type, "%s", !strcmp(kind, "gemma3") ? "gemma3_text" : kind);
    const int gemma = !strcmp(kind, "gemma2") || !strcmp(kind, "gemma3");
    if (gemma) {
        c.mlp_act = LG_MLP_GEGLU;
        c.gemma_norms = c.post_norms = 1;
        c.embed_scale = 4.0f; /* sqrt(dim 16) */
        c.attn_scale = 0.45f;
        c.final_softcap = 3.0f;
        c.tied_embeddings = 1;
        c.sliding_window = 3;
        for (int l = 0; l < layers; l++) c.swa_layers[l] = l % 2 == 0;
    }
    if (!strcmp(kind, "gemma2")) c.attn_softcap = 2.0f;
    if (!strcmp(kind, "gemma3") || !strcmp(kind, "qwen3")) c.qk_norm = 1;
    if (!strcmp(kind, "gemma3")) {
        c.rope_theta_local = 100.0f;
        c.rope_scaling.type = LG_ROPE_LINEAR;
        c.rope_scaling.factor = 2.0f;
    }
    if (!strcmp(kind, "phi3")) {
        c.fused_qkv = c.fused_gate_up = 1;
        c.sliding_window = 4;
        for (int l = 0; l < layers; l++) c.swa_layers[l] = 1;
        lg_rope_scaling *rs = &c.rope_scaling;
        rs->type = LG_ROPE_LONGROPE;
        rs->n_factors = c.head_dim / 2;
        rs->original_max = 16;
        for (int i = 0; i < rs->n_factors; i++) rs->short_factor[i] = 1.0f + 0.7f * (float)i, rs->long_factor[i] = 2.0f;
        rs->factor = 4.0f;
    }
    if (!strcmp(kind, "llama3")) {
        lg_rope_scaling *rs = &c.rope_scaling;
        rs->type = LG_ROPE_LLAMA3;
        rs->factor = 8.0f, rs->low_freq_factor = 1.0f, rs->high_freq_factor = 4.0f, rs->original_max = 8;
        c.tied_embeddings = 1;
    }
    return c;
}

void lg_test_random_batch(lg_batch *b, int B, int T, int V, uint64_t seed) {
    lg_rng r;
    lg_rng_seed(&r, seed);
    b->B = B;
    b->T = T;
    b->inputs = calloc((size_t)B * T, sizeof(int));
    b->targets = calloc((size_t)B * T, sizeof(int));
    b->weight = calloc((size_t)B * T, sizeof(float));
    for (int i = 0; i < B * T; i++) {
        b->inputs[i] = (int)(lg_rng_u64(&r) % (uint64_t)V);
        b->targets[i] = (int)(lg_rng_u64(&r) % (uint64_t)V);
        b->weight[i] = (i % T == T - 1) ? 0.0f : 1.0f; /* the last position predicts nothing */
    }
    b->weight[1] = 0.0f; /* a masked prompt token */
}

void lg_test_free_batch(lg_batch *b) {
    free(b->inputs);
    free(b->targets);
    free(b->weight);
}

/* chars ' '..'~' get id = code; <s> = 1, </s> = 2; no merges */
lg_tokenizer *lg_test_char_tokenizer(void) {
    char json[8192];
    size_t n = 0;
    n += (size_t)snprintf(json + n, sizeof json - n,
                          "{\"added_tokens\":[{\"id\":1,\"content\":\"<s>\",\"special\":true,\"normalized\":false},"
                          "{\"id\":2,\"content\":\"</s>\",\"special\":true,\"normalized\":false}],"
                          "\"model\":{\"type\":\"BPE\",\"vocab\":{\"<s>\":1,\"</s>\":2,\"\\n\":10");
    for (int c = ' '; c <= '~'; c++) {
        if (c == '"' || c == '\\') n += (size_t)snprintf(json + n, sizeof json - n, ",\"\\%c\":%d", c, c);
        else n += (size_t)snprintf(json + n, sizeof json - n, ",\"%c\":%d", c, c);
    }
    n += (size_t)snprintf(json + n, sizeof json - n, "},\"merges\":[]}}");
    const char *cfg = "{\"bos_token\":\"<s>\",\"eos_token\":\"</s>\"}";
    lg_tokenizer *t;
    int rc = lg_tokenizer_load_json_mem(json, n, cfg, strlen(cfg), "char.json", &t);
    if (rc) print_message("%s\n", lg_last_error());
    assert_int_equal(rc, 0);
    return t;
}
