/* test_generate.c — KV-cache inference against full recomputation, sampling, generation and
 * streamed text. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/lora.h"
#include "adapters/lora_io.h"
#include "core/util.h"
#include "model/generate.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

#define KV_RTOL 1e-5 /* |kv - full| <= KV_RTOL * max(1, max |full|) */

static lg_config tiny_config(lg_arch arch, int max_seq) {
    lg_config c;
    memset(&c, 0, sizeof c);
    c.arch = arch;
    snprintf(c.model_type, sizeof c.model_type, "%s", arch == LG_ARCH_GPT2 ? "gpt2" : "llama");
    snprintf(c.torch_dtype, sizeof c.torch_dtype, "float32");
    c.vocab_size = 37;
    c.dim = 32;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = arch == LG_ARCH_GPT2 ? 4 : 2;
    c.head_dim = 8;
    c.hidden_dim = 48;
    c.max_seq = max_seq;
    c.norm_eps = 1e-5f;
    c.rope_theta = 10000.0f;
    c.rope_style = LG_ROPE_HALF;
    c.qkv_bias = c.o_bias = c.mlp_bias = arch == LG_ARCH_GPT2;
    c.tied_embeddings = arch == LG_ARCH_GPT2;
    c.bos_id = c.eos_id = -1;
    return c;
}

/* A random model whose weights are large enough (std 0.2) that logits are far from uniform. */
static lg_model *random_model(lg_config c, uint64_t seed) {
    lg_model *m = NULL;
    assert_int_equal(lg_model_create(&c, NULL, seed, NULL, &m), 0);
    lg_rng r;
    lg_rng_seed(&r, seed + 99);
    for (int i = 0; i < lg_model_n_params(m); i++) {
        lg_param *p = lg_model_param(m, i);
        if (p->ndim == 2)
            for (int64_t e = 0; e < p->numel; e++) p->data[e] = 0.2f * lg_rng_normal(&r);
    }
    return m;
}

/* LoRA (or DoRA) on every linear layer with nonzero B and a perturbed magnitude. */
static lg_adapters *random_adapters(lg_model *m, int dora, uint64_t seed) {
    lg_lora_opts o;
    lg_lora_opts_default(&o);
    o.r = 4;
    o.alpha = 8;
    o.use_dora = dora;
    o.targets = "all-linear";
    o.seed = seed;
    lg_adapters *a = NULL;
    assert_int_equal(lg_adapters_attach(m, &o, &a), 0);
    lg_rng r;
    lg_rng_seed(&r, seed);
    for (int i = 0; i < lg_adapters_count(a); i++) {
        lg_lora *l = lg_adapters_get(a, i);
        for (int k = 0; k < l->out * l->r; k++) l->B[k] = 0.2f * lg_rng_normal(&r);
        if (l->mag)
            for (int k = 0; k < l->out; k++) l->mag[k] *= 1.0f + 0.2f * lg_rng_normal(&r);
    }
    return a;
}

static void random_ids(int *ids, int n, int V, uint64_t seed) {
    lg_rng r;
    lg_rng_seed(&r, seed);
    for (int i = 0; i < n; i++) ids[i] = (int)(lg_rng_u64(&r) % (uint64_t)V);
}

/* Logits (T x V) of one sequence with the training-path forward. */
static float *full_logits(lg_model *m, const int *ids, int T) {
    const int V = lg_model_config(m)->vocab_size;
    lg_batch b = {1, T, malloc((size_t)T * sizeof(int)), calloc((size_t)T, sizeof(int)), calloc((size_t)T, sizeof(float))};
    memcpy(b.inputs, ids, (size_t)T * sizeof(int));
    assert_int_equal(lg_model_plan(m, 1, T, 0), 0);
    lg_model_forward(m, &b, NULL);
    float *out = malloc((size_t)T * V * sizeof(float));
    memcpy(out, lg_model_logits(m), (size_t)T * V * sizeof(float));
    free(b.inputs), free(b.targets), free(b.weight);
    return out;
}

static double rel_diff(const float *a, const float *b, size_t n) {
    double worst = 0, scale = 1;
    for (size_t i = 0; i < n; i++) {
        worst = fmax(worst, fabs((double)a[i] - b[i]));
        scale = fmax(scale, fabs((double)b[i]));
    }
    return worst / scale;
}

/* Feed ids in pieces of the given sizes (0-terminated) and compare every row with the full forward. */
static void kv_matches_full(lg_model *m, int T, const int *pieces, const char *what) {
    const int V = lg_model_config(m)->vocab_size;
    int *ids = malloc((size_t)T * sizeof(int));
    random_ids(ids, T, V, 7);
    float *ref = full_logits(m, ids, T);
    float *got = malloc((size_t)T * V * sizeof(float));
    lg_kv *kv = NULL;
    assert_int_equal(lg_kv_create(m, T, &kv), 0);
    int pos = 0;
    for (int p = 0; pieces[p] && pos < T; p++) {
        int n = LG_MIN(pieces[p], T - pos);
        assert_int_equal(lg_kv_feed(kv, ids + pos, n, got + (size_t)pos * V, 1), 0);
        pos += n;
    }
    while (pos < T) { /* the rest one token at a time, last-row logits only */
        assert_int_equal(lg_kv_feed(kv, ids + pos, 1, got + (size_t)pos * V, 0), 0);
        pos++;
    }
    assert_int_equal(lg_kv_len(kv), T);
    double d = rel_diff(got, ref, (size_t)T * V);
    print_message("%-34s T %3d  max rel diff %.2e\n", what, T, d);
    assert_true(d <= KV_RTOL);
    /* a further token past the capacity is refused */
    assert_int_not_equal(lg_kv_feed(kv, ids, 1, NULL, 0), 0);
    lg_kv_free(kv);
    free(ids), free(ref), free(got);
}

static void test_kv_equals_full(void **state) {
    (void)state;
    const int pieces[] = {17, 5, 0};
    const int big[] = {290, 0};         /* more than one internal chunk of 256 rows */
    const int grow[] = {100, 190, 0};   /* the cache grows (256 -> 290 positions) keeping its rows */
    for (int arch = 0; arch < 2; arch++) {
        lg_config c = tiny_config((lg_arch)arch, 300);
        lg_model *m = random_model(c, 11 + arch);
        kv_matches_full(m, 40, pieces, arch ? "gpt2" : "llama (GQA)");
        kv_matches_full(m, 290, big, arch ? "gpt2 chunked prefill" : "llama chunked prefill");
        kv_matches_full(m, 290, grow, arch ? "gpt2 cache growth" : "llama cache growth");
        lg_adapters *a = random_adapters(m, 0, 5);
        kv_matches_full(m, 40, pieces, arch ? "gpt2 + LoRA" : "llama + LoRA");
        lg_adapters_free(a);
        a = random_adapters(m, 1, 6);
        kv_matches_full(m, 40, pieces, arch ? "gpt2 + DoRA" : "llama + DoRA");
        lg_adapters_free(a);
        lg_model_free(m);
    }
    lg_config c = tiny_config(LG_ARCH_LLAMA, 64);
    c.rope_style = LG_ROPE_INTERLEAVED; /* llama2.c checkpoints */
    lg_model *m = random_model(c, 21);
    kv_matches_full(m, 30, pieces, "llama interleaved RoPE");
    lg_model_free(m);
}

static void test_kv_truncate_reuse(void **state) {
    (void)state;
    lg_model *m = random_model(tiny_config(LG_ARCH_LLAMA, 64), 3);
    const int V = 37;
    int ids[24];
    random_ids(ids, 24, V, 1);
    float *ref = full_logits(m, ids, 24);
    lg_kv *kv = NULL;
    assert_int_equal(lg_kv_create(m, 0, &kv), 0);
    assert_int_equal(lg_kv_cap(kv), 64);
    int other[10];
    random_ids(other, 10, V, 2);
    assert_int_equal(lg_kv_feed(kv, ids, 12, NULL, 0), 0);
    assert_int_equal(lg_kv_feed(kv, other, 10, NULL, 0), 0); /* a detour to forget */
    assert_int_equal(lg_kv_common_prefix(kv, ids, 24), 12);
    lg_kv_truncate(kv, 12);
    float *last = malloc((size_t)V * sizeof(float));
    assert_int_equal(lg_kv_feed(kv, ids + 12, 12, last, 0), 0);
    assert_true(rel_diff(last, ref + 23 * V, (size_t)V) <= KV_RTOL);
    assert_memory_equal(lg_kv_ids(kv), ids, sizeof ids);
    int bad = V;
    assert_int_not_equal(lg_kv_feed(kv, &bad, 1, NULL, 0), 0); /* out of range id */
    assert_non_null(strstr(lg_last_error(), "out of range"));
    free(last), free(ref);
    lg_kv_free(kv);
    lg_model_free(m);
}

/* ---- sampling ---------------------------------------------------------------------------------- */

static void freqs(const float *logits, int V, lg_sample_opts o, int n, double *f) {
    lg_rng r;
    lg_rng_seed(&r, 5);
    for (int i = 0; i < V; i++) f[i] = 0;
    for (int i = 0; i < n; i++) f[lg_sample(logits, V, &o, &r, NULL)] += 1.0 / n;
}

static void test_sampler(void **state) {
    (void)state;
    float lg[4] = {logf(0.5f), logf(0.3f), logf(0.2f), -INFINITY};
    double f[4];
    lg_rng r;
    lg_rng_seed(&r, 1);
    /* greedy: temperature 0, top-k 1, or a nucleus smaller than the top token */
    assert_int_equal(lg_sample(lg, 4, &(lg_sample_opts){0.0f, 0, 1.0f}, &r, NULL), 0);
    assert_int_equal(lg_sample(lg, 4, &(lg_sample_opts){1.0f, 1, 1.0f}, &r, NULL), 0);
    for (int i = 0; i < 50; i++) assert_int_equal(lg_sample(lg, 4, &(lg_sample_opts){1.0f, 0, 0.5f}, &r, NULL), 0);
    float tie[3] = {1.0f, 3.0f, 3.0f};
    assert_int_equal(lg_sample(tie, 3, &(lg_sample_opts){0.0f, 0, 1.0f}, &r, NULL), 1); /* lowest id on ties */
    const int n = 40000;
    freqs(lg, 4, (lg_sample_opts){1.0f, 0, 1.0f}, n, f);
    assert_true(fabs(f[0] - 0.5) < 0.01 && fabs(f[1] - 0.3) < 0.01 && fabs(f[2] - 0.2) < 0.01 && f[3] == 0);
    freqs(lg, 4, (lg_sample_opts){1.0f, 2, 1.0f}, n, f); /* top-k 2: 0.5/0.8, 0.3/0.8 */
    assert_true(fabs(f[0] - 0.625) < 0.01 && fabs(f[1] - 0.375) < 0.01 && f[2] == 0);
    freqs(lg, 4, (lg_sample_opts){1.0f, 0, 0.7f}, n, f); /* top-p 0.7 keeps {0, 1} */
    assert_true(fabs(f[0] - 0.625) < 0.01 && fabs(f[1] - 0.375) < 0.01 && f[2] == 0);
    freqs(lg, 4, (lg_sample_opts){2.0f, 0, 1.0f}, n, f); /* temperature 2: p ~ sqrt(p) */
    double z = sqrt(0.5) + sqrt(0.3) + sqrt(0.2);
    assert_true(fabs(f[0] - sqrt(0.5) / z) < 0.01 && fabs(f[2] - sqrt(0.2) / z) < 0.01);
}

/* ---- generation -------------------------------------------------------------------------------- */

static int *gen(lg_model *m, const int *prompt, int n, lg_gen_opts o, int *nout, lg_gen_stop *why) {
    lg_kv *kv = NULL;
    assert_int_equal(lg_kv_create(m, 0, &kv), 0);
    lg_gen_result r;
    assert_int_equal(lg_generate(kv, prompt, n, &o, NULL, NULL, &r), 0);
    lg_kv_free(kv);
    *nout = r.n;
    if (why) *why = r.stop;
    return r.ids;
}

static void test_greedy_is_argmax(void **state) {
    (void)state;
    lg_model *m = random_model(tiny_config(LG_ARCH_LLAMA, 64), 8);
    const int V = 37, P = 6, N = 20;
    int prompt[6];
    random_ids(prompt, P, V, 4);
    int n;
    lg_gen_opts o = {N, {0.0f, 0, 1.0f}, 1, NULL, 0};
    int *out = gen(m, prompt, P, o, &n, NULL);
    assert_int_equal(n, N);
    int all[26];
    memcpy(all, prompt, sizeof prompt);
    memcpy(all + P, out, (size_t)N * sizeof(int));
    float *ref = full_logits(m, all, P + N);
    for (int i = 0; i < N; i++) {
        const float *row = ref + (size_t)(P - 1 + i) * V;
        int best = 0;
        for (int v = 1; v < V; v++)
            if (row[v] > row[best]) best = v;
        assert_int_equal(out[i], best);
    }
    /* a stop id ends generation without being output */
    int stop = out[3], n2;
    lg_gen_stop why;
    lg_gen_opts o2 = {N, {0.0f, 0, 1.0f}, 1, &stop, 1};
    int *out2 = gen(m, prompt, P, o2, &n2, &why);
    int first = 0;
    while (out[first] != stop) first++;
    assert_int_equal(n2, first);
    assert_int_equal(why, LG_STOP_ID);
    /* the context bounds generation */
    lg_kv *kv = NULL;
    assert_int_equal(lg_kv_create(m, P + 5, &kv), 0);
    lg_gen_result r;
    assert_int_equal(lg_generate(kv, prompt, P, &o, NULL, NULL, &r), 0);
    assert_int_equal(r.stop, LG_STOP_CONTEXT);
    assert_int_equal(r.n, 6); /* 5 fed + the last drawn, never fed */
    free(r.ids);
    lg_kv_free(kv);
    free(out), free(out2), free(ref);
    lg_model_free(m);
}

static void test_seed_reproducible(void **state) {
    (void)state;
    lg_model *m = random_model(tiny_config(LG_ARCH_GPT2, 64), 9);
    int prompt[3] = {1, 2, 3}, n1, n2, n3;
    lg_gen_opts o = {40, {1.0f, 10, 0.95f}, 123, NULL, 0};
    int *a = gen(m, prompt, 3, o, &n1, NULL);
    int *b = gen(m, prompt, 3, o, &n2, NULL);
    assert_int_equal(n1, n2);
    assert_memory_equal(a, b, (size_t)n1 * sizeof(int));
    o.seed = 124;
    int *c = gen(m, prompt, 3, o, &n3, NULL);
    assert_true(n3 != n1 || memcmp(a, c, (size_t)n1 * sizeof(int)) != 0);
    /* the same kv reused for a second generation (cached prefix) gives the same tokens */
    lg_kv *kv = NULL;
    assert_int_equal(lg_kv_create(m, 0, &kv), 0);
    o.seed = 123;
    lg_gen_result r1, r2;
    assert_int_equal(lg_generate(kv, prompt, 3, &o, NULL, NULL, &r1), 0);
    assert_int_equal(lg_generate(kv, prompt, 3, &o, NULL, NULL, &r2), 0);
    assert_int_equal(r1.n, r2.n);
    assert_memory_equal(r1.ids, a, (size_t)n1 * sizeof(int));
    assert_memory_equal(r2.ids, a, (size_t)n1 * sizeof(int));
    free(r1.ids), free(r2.ids);
    lg_kv_free(kv);
    free(a), free(b), free(c);
    lg_model_free(m);
}

/* With adapters attached, and with them merged into the weights: the same text for the same seed. */
static void test_adapter_equals_merged(void **state) {
    (void)state;
    for (int dora = 0; dora < 2; dora++) {
        lg_model *m = random_model(tiny_config(LG_ARCH_LLAMA, 64), 10);
        lg_adapters *a = random_adapters(m, dora, 12);
        int prompt[4] = {5, 6, 7, 8}, n1, n2;
        for (uint64_t seed = 1; seed <= 4; seed++) {
            lg_gen_opts o = {30, {seed == 1 ? 0.0f : 0.9f, 0, seed == 3 ? 0.9f : 1.0f}, seed, NULL, 0};
            int *x = gen(m, prompt, 4, o, &n1, NULL);
            lg_model *m2 = random_model(tiny_config(LG_ARCH_LLAMA, 64), 10);
            lg_adapters *a2 = random_adapters(m2, dora, 12);
            lg_adapters_merge_and_free(a2);
            int *y = gen(m2, prompt, 4, o, &n2, NULL);
            assert_int_equal(n1, n2);
            assert_memory_equal(x, y, (size_t)n1 * sizeof(int));
            free(x), free(y);
            lg_model_free(m2);
        }
        lg_adapters_free(a);
        lg_model_free(m);
    }
}

/* ---- streamed text ------------------------------------------------------------------------------ */

static lg_tokenizer *byte_tokenizer(void) {
    /* pieces: specials, all 256 byte-fallback tokens, and a few words */
    const char *words[] = {"▁a", "▁b", "c", "▁€"};
    int n = 3 + 256 + 4;
    const char **pieces = calloc((size_t)n, sizeof *pieces);
    int *lens = calloc((size_t)n, sizeof(int));
    float *scores = calloc((size_t)n, sizeof(float));
    char (*bytes)[8] = calloc(256, 8);
    pieces[0] = "<unk>", pieces[1] = "<s>", pieces[2] = "</s>";
    for (int b = 0; b < 256; b++) {
        snprintf(bytes[b], 8, "<0x%02X>", b);
        pieces[3 + b] = bytes[b];
    }
    for (int w = 0; w < 4; w++) pieces[259 + w] = words[w], scores[259 + w] = (float)-w;
    for (int i = 0; i < n; i++) lens[i] = (int)strlen(pieces[i]);
    lg_tokenizer *t = NULL;
    assert_int_equal(lg_tokenizer_from_spm(n, pieces, lens, scores, 0, 1, 2, &t), 0);
    free(pieces), free(lens), free(scores), free(bytes);
    return t;
}

static char *stream_all(lg_tokenizer *t, const int *ctx, int nc, const int *ids, int n, int *held) {
    lg_text_stream *s = lg_text_stream_new(t, ctx, nc);
    size_t cap = 256, len = 0;
    char *out = calloc(cap, 1);
    *held = 0;
    for (int i = 0; i < n; i++) {
        const char *p;
        size_t k;
        assert_int_equal(lg_text_stream_push(s, ids[i], &p, &k), 0);
        if (!k) (*held)++;
        memcpy(out + len, p, k);
        len += k;
    }
    const char *p;
    size_t k;
    assert_int_equal(lg_text_stream_finish(s, &p, &k), 0);
    memcpy(out + len, p, k);
    lg_text_stream_free(s);
    return out;
}

static void test_stream_utf8(void **state) {
    (void)state;
    lg_tokenizer *t = byte_tokenizer();
    const int B = 3; /* id of byte 0x00 */
    /* BOS, "▁a", then "é" (C3 A9) and "€" (E2 82 AC) as byte tokens, then "▁b" */
    int ctx[2] = {1, 259};
    int ids[] = {B + 0xC3, B + 0xA9, B + 0xE2, B + 0x82, B + 0xAC, 260};
    int held;
    char *s = stream_all(t, ctx, 2, ids, 6, &held);
    assert_string_equal(s, "é€ b");
    assert_int_equal(held, 3); /* the pushes that ended inside a character printed nothing */
    free(s);
    /* an invalid sequence (E2 then 'c') becomes U+FFFD as soon as it is known to be broken; so does a
     * dangling lead byte at the end */
    int bad[] = {B + 0xE2, 261, B + 0xF0};
    s = stream_all(t, ctx, 2, bad, 3, &held);
    assert_string_equal(s, "\xEF\xBF\xBD" "c" "\xEF\xBF\xBD");
    free(s);
    /* the same text as decoding everything at once, context stripped (SentencePiece's leading space) */
    int all[] = {1, 260, 259, B + 0xE2, B + 0x82, B + 0xAC, 262};
    s = stream_all(t, all, 1, all + 1, 6, &held);
    char *ref = NULL;
    assert_int_equal(lg_tokenizer_decode(t, all, 7, &ref, NULL), 0);
    assert_string_equal(s, ref);
    free(s), free(ref);
    lg_tokenizer_free(t);
}

/* stories260K: greedy text from BOS is the reference sample of llama2.c's doc/stories260K.md. */
static void test_stories260k_greedy(void **state) {
    (void)state;
    LG_REQUIRE_SHARED(bin, "llama2c_stories260K/stories260K.bin");
    char *tokp = lg_test_shared("llama2c_stories260K/tok512.bin");
    lg_model *m = NULL;
    lg_tokenizer *t = NULL;
    assert_int_equal(lg_model_load(bin, NULL, &m), 0);
    assert_int_equal(lg_tokenizer_load(tokp, &t), 0);
    lg_kv *kv = NULL;
    assert_int_equal(lg_kv_create(m, 0, &kv), 0);
    int bos = lg_tokenizer_bos(t), eos = lg_tokenizer_eos(t);
    lg_gen_opts o = {40, {0.0f, 0, 1.0f}, 0, &eos, 1};
    lg_gen_result r;
    assert_int_equal(lg_generate(kv, &bos, 1, &o, NULL, NULL, &r), 0);
    char *txt = NULL;
    assert_int_equal(lg_tokenizer_decode(t, r.ids, r.n, &txt, NULL), 0);
    print_message("stories260K greedy: %s\n", txt);
    assert_non_null(strstr(txt, "Once upon a time, there was a little girl named Lily. She loved to play outside"));
    free(txt), free(r.ids);
    lg_kv_free(kv);
    lg_tokenizer_free(t);
    lg_model_free(m);
    free(bin), free(tokp);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kv_equals_full),     cmocka_unit_test(test_kv_truncate_reuse),
        cmocka_unit_test(test_sampler),            cmocka_unit_test(test_greedy_is_argmax),
        cmocka_unit_test(test_seed_reproducible),  cmocka_unit_test(test_adapter_equals_merged),
        cmocka_unit_test(test_stream_utf8),        cmocka_unit_test(test_stories260k_greedy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
