/* test_reliability.c — the library-level guards of docs/reliability.md, each by an exact property:
 * strict JSON (NUL, repeated keys, trailing bytes), regular files only, removal that never follows
 * a link, dead runs' temporaries, atomic output on a failing write, 64-bit config bounds and the
 * parameter count the loaders compare with the weights, non-finite tensors refused, the bounded
 * normalizer, prefix tokenisation equal to whole tokenisation, long words cut only where nothing
 * changes, rows cut before tokenising, and LoRA-GA's option checks and zero-gradient report.
 * The CLI-level sweep is tests/test_hostile.c. */
#include "testutil.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "adapters/lora.h"
#include "core/json.h"
#include "core/util.h"
#include "data/data.h"
#include "io/safetensors.h"
#include "loraga/loraga.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

static char *g_tmp;

static int setup(void **state) {
    (void)state;
    g_tmp = lg_test_tmpdir();
    return g_tmp ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
    int rc = system(cmd);
    free(g_tmp);
    return rc == 0 ? 0 : -1;
}

static char *tpath(const char *name) { return lg_path_join(g_tmp, name); }

static void put(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
}

/* ---- strict JSON ------------------------------------------------------------------------------ */

static void expect_refused(const char *text, size_t len, const char *why) {
    cJSON *j = lg_json_parse(text, len, "byte");
    if (j) fail_msg("accepted: %.*s", (int)len, text);
    if (!strstr(lg_last_error(), why)) fail_msg("message '%s' lacks '%s'", lg_last_error(), why);
}

static void test_json_strict(void **state) {
    (void)state;
    cJSON *j = lg_json_parse("{\"a\": 1, \"b\": [{\"a\": 2}, {\"a\": 3}]} \n", 37, "byte");
    assert_non_null(j); /* the same key in different objects is fine */
    cJSON_Delete(j);
    const char *s = "{\"t\": \"x\\u0000y\"}";
    expect_refused(s, strlen(s), "NUL character");
    static const char raw[] = "{\"t\": \"x\0y\"}";
    expect_refused(raw, sizeof raw - 1, "NUL character");
    s = "{\"k\\u0000\": 1}";
    expect_refused(s, strlen(s), "NUL character");
    /* an escaped backslash followed by the letters u0000 is text, not a NUL */
    s = "{\"t\": \"\\\\u0000\"}";
    assert_non_null(j = lg_json_parse(s, strlen(s), "byte"));
    assert_string_equal(cJSON_GetObjectItem(j, "t")->valuestring, "\\u0000");
    cJSON_Delete(j);
    s = "{\"text\": \"a\", \"text\": \"b\"}";
    expect_refused(s, strlen(s), "duplicate key \"text\"");
    s = "{\"x\": [1, {\"k\": 1, \"j\": 2, \"k\": 3}]}";
    expect_refused(s, strlen(s), "duplicate key \"k\"");
    s = "{\"a\": 1} x";
    expect_refused(s, strlen(s), "not valid JSON (near byte 10)");
    /* a large object (sorted check): 300 keys, then one repeated */
    char big[8192];
    size_t n = (size_t)snprintf(big, sizeof big, "{");
    for (int i = 0; i < 300; i++) n += (size_t)snprintf(big + n, sizeof big - n, "%s\"k%d\": %d", i ? "," : "", i, i);
    n += (size_t)snprintf(big + n, sizeof big - n, "}");
    assert_non_null(j = lg_json_parse(big, n, "byte"));
    cJSON_Delete(j);
    big[n - 1] = 0;
    n += (size_t)snprintf(big + n - 1, sizeof big - n, ", \"k17\": 0}") - 1;
    expect_refused(big, n, "duplicate key \"k17\"");
}

/* ---- files ------------------------------------------------------------------------------------ */

static void test_read_file_regular_only(void **state) {
    (void)state;
    char *d, *dir = tpath("adir");
    size_t n;
    assert_int_equal(mkdir(dir, 0755), 0);
    assert_int_equal(lg_read_file(dir, &d, &n), -1); /* it used to malloc 2^63 bytes */
    assert_non_null(strstr(lg_last_error(), "not a regular file (a directory)"));
    assert_int_equal(lg_read_file("/dev/zero", &d, &n), -1);
    assert_non_null(strstr(lg_last_error(), "not a regular file"));
    char *f = tpath("f.txt");
    put(f, "hello");
    assert_int_equal(lg_read_file(f, &d, &n), 0);
    assert_int_equal(n, 5);
    assert_string_equal(d, "hello");
    free(d), free(f), free(dir);
}

static void test_remove_tree_never_follows_links(void **state) {
    (void)state;
    char *victim = tpath("victim"), *keep = tpath("victim/keep.txt"), *tree = tpath("tree"), *sub = tpath("tree/sub");
    assert_int_equal(mkdir(victim, 0755), 0);
    put(keep, "precious");
    assert_int_equal(mkdir(tree, 0755), 0);
    assert_int_equal(mkdir(sub, 0755), 0);
    char *l1 = tpath("tree/link"), *l2 = tpath("tree/sub/link"), *f = tpath("tree/sub/file"), *top = tpath("toplink");
    assert_int_equal(symlink(victim, l1), 0);
    assert_int_equal(symlink(victim, l2), 0);
    assert_int_equal(symlink(victim, top), 0);
    put(f, "x");
    lg_remove_tree(tree);
    assert_false(lg_file_exists(tree));
    lg_remove_tree(top); /* a link given as the root: the link goes, not what it points to */
    assert_false(lg_is_symlink(top));
    char *txt;
    assert_int_equal(lg_read_file(keep, &txt, NULL), 0);
    assert_string_equal(txt, "precious");
    free(txt);
    free(victim), free(keep), free(tree), free(sub), free(l1), free(l2), free(f), free(top);
}

static void test_stale_tmp_of_dead_processes(void **state) {
    (void)state;
    pid_t child = fork();
    if (child == 0) _exit(0);
    assert_true(child > 0);
    waitpid(child, NULL, 0); /* a pid that just died (reuse this soon is vanishingly unlikely) */
    char name[256], *out = tpath("run");
    snprintf(name, sizeof name, "run.tmp.%d", (int)child);
    char *dead = tpath(name), *dead_file = lg_path_join(dead, "metrics.jsonl");
    snprintf(name, sizeof name, "run.tmp.%d", (int)getpid());
    char *mine = tpath(name), *init = tpath("run.tmp.1"), *odd = tpath("run.tmp.12x"), *other = tpath("runx.tmp.999999");
    assert_int_equal(mkdir(dead, 0755), 0);
    put(dead_file, "{}");
    assert_int_equal(mkdir(mine, 0755), 0);
    assert_int_equal(mkdir(init, 0755), 0); /* pid 1 is alive */
    assert_int_equal(mkdir(odd, 0755), 0);
    put(other, "");
    lg_remove_stale_tmp(out);
    assert_false(lg_file_exists(dead));
    assert_true(lg_is_dir(mine) && lg_is_dir(init) && lg_is_dir(odd) && lg_file_exists(other));
    lg_remove_tree(mine), lg_remove_tree(init), lg_remove_tree(odd), unlink(other);
    free(out), free(dead), free(dead_file), free(mine), free(init), free(odd), free(other);
}

static void test_atomic_output(void **state) {
    (void)state;
    char *p = tpath("out.txt");
    put(p, "old contents");
    /* a write that fails half way (file size limit = a full disk) leaves the old file as it was */
    pid_t c = fork();
    if (c == 0) {
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit rl = {64, 64};
        setrlimit(RLIMIT_FSIZE, &rl);
        char big[4096];
        memset(big, 'x', sizeof big);
        int rc = lg_write_file_atomic(p, big, sizeof big);
        lg_afile a;
        int rc2 = lg_afile_open(&a, p);
        if (!rc2) {
            for (int i = 0; i < 100; i++) fputs("another line of output\n", a.f);
            rc2 = lg_afile_commit(&a);
        }
        _exit(rc == -1 && rc2 == -1 && strstr(lg_last_error(), "write failed") ? 0 : 1);
    }
    int st;
    waitpid(c, &st, 0);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    char *txt;
    assert_int_equal(lg_read_file(p, &txt, NULL), 0);
    assert_string_equal(txt, "old contents");
    free(txt);
    char tmpname[64];
    snprintf(tmpname, sizeof tmpname, "out.txt.tmp.%d", (int)c);
    char *left = tpath(tmpname);
    assert_false(lg_file_exists(left)); /* no temporary left behind either */
    free(left);
    /* a device is written directly, never renamed over */
    lg_afile a;
    assert_int_equal(lg_afile_open(&a, "/dev/null"), 0);
    fputs("discarded", a.f);
    assert_int_equal(lg_afile_commit(&a), 0);
    struct stat sb;
    assert_int_equal(stat("/dev/null", &sb), 0);
    assert_true(S_ISCHR(sb.st_mode));
    assert_int_equal(lg_afile_open(&a, "/dev/full"), 0);
    fputs("lost", a.f);
    assert_int_equal(lg_afile_commit(&a), -1);
    assert_non_null(strstr(lg_last_error(), "write failed"));
    free(p);
}

/* ---- sizes from files ------------------------------------------------------------------------- */

static void test_config_bounds_and_count(void **state) {
    (void)state;
    lg_config c = lg_test_tiny_config(LG_ARCH_LLAMA, 50, 2);
    assert_int_equal(lg_config_validate(&c), 0);
    lg_config b = c;
    b.n_heads = 1000000000, b.n_kv_heads = 1000000000; /* n_heads * head_dim overflowed int in model.c */
    assert_int_equal(lg_config_validate(&b), -1);
    assert_non_null(strstr(lg_last_error(), "implausible attention sizes"));
    b = c;
    b.head_dim = 1000000000;
    assert_int_equal(lg_config_validate(&b), -1);
    b = c;
    b.max_seq = 1 << 20, b.head_dim = 4096, b.n_heads = b.n_kv_heads = 1;
    assert_int_equal(lg_config_validate(&b), -1);
    assert_non_null(strstr(lg_last_error(), "max_position_embeddings"));
    /* the count the loaders compare with the weight files is exactly what the model allocates */
    for (int v = 0; v < 6; v++) {
        lg_config k = lg_test_tiny_config(v < 3 ? LG_ARCH_LLAMA : LG_ARCH_GPT2, 37 + v, 1 + v % 3);
        if (v == 1) k.tied_embeddings = 1, k.qkv_bias = 1;
        if (v == 2) k.o_bias = k.mlp_bias = 1, k.hidden_dim = 40;
        if (v == 4) k.hidden_dim = 20;
        lg_model *m;
        assert_int_equal(lg_model_create(&k, NULL, 1, NULL, &m), 0);
        assert_int_equal(lg_config_n_params(&k), lg_model_numel(m));
        lg_model_free(m);
    }
    /* a config next to weights that cannot hold it is refused before the model is allocated */
    char *dir = tpath("tiny"), *cfgp = tpath("tiny/config.json");
    lg_model *m;
    assert_int_equal(lg_model_create(&c, NULL, 1, NULL, &m), 0);
    assert_int_equal(lg_model_save_hf(m, dir, "float32"), 0);
    lg_model_free(m);
    char *txt;
    assert_int_equal(lg_read_file(cfgp, &txt, NULL), 0);
    cJSON *j = cJSON_Parse(txt);
    cJSON_SetNumberValue(cJSON_GetObjectItem(j, "vocab_size"), 1000000);
    char *big = cJSON_Print(j);
    cJSON_Delete(j);
    put(cfgp, big);
    free(big);
    char *fixed = malloc(strlen(txt) + 32);
    assert_int_equal(lg_model_load(dir, NULL, &m), -1);
    assert_non_null(strstr(lg_last_error(), "do not belong together"));
    /* a repeated key is refused, whichever value came first */
    snprintf(fixed, strlen(txt) + 32, "{\"vocab_size\": 50,%s", txt + 1);
    put(cfgp, fixed);
    assert_int_equal(lg_model_load(dir, NULL, &m), -1);
    assert_non_null(strstr(lg_last_error(), "duplicate key \"vocab_size\""));
    free(fixed), free(txt), free(dir), free(cfgp);
}

static void test_nonfinite_tensor_refused(void **state) {
    (void)state;
    float x[6] = {1, 2, 3, 4, 5, 6};
    char *p = tpath("t.safetensors");
    for (int k = 0; k < 3; k++) {
        x[4] = k == 0 ? NAN : k == 1 ? INFINITY : 5.0f;
        lg_st_item it = {"w", k == 1 ? LG_DT_BF16 : LG_DT_F32, 2, {2, 3}, x};
        assert_int_equal(lg_st_write(p, &it, 1, NULL, 0), 0);
        lg_safetensors *st;
        assert_int_equal(lg_st_open(p, &st), 0);
        float y[6];
        int64_t shape[2] = {2, 3};
        int rc = lg_st_read_f32(st, "w", y, 2, shape);
        lg_st_close(st);
        if (k < 2) {
            assert_int_equal(rc, -1);
            assert_non_null(strstr(lg_last_error(), "tensor 'w' holds a non-finite value"));
            assert_non_null(strstr(lg_last_error(), "element 4"));
        } else {
            assert_int_equal(rc, 0);
        }
    }
    free(p);
}

/* ---- tokenisation ----------------------------------------------------------------------------- */

/* A SentencePiece-style BPE (byte fallback, "▁" for spaces); prepend: LLaMA-2's Prepend normalizer. */
static lg_tokenizer *spm_tokenizer(int prepend, int growth_rules) {
    static const char *const merges[][2] = {{"t", "h"}, {"th", "e"}, {"\xE2\x96\x81", "the"}, {"a", "t"},
                                            {"c", "at"}, {"\xE2\x96\x81", "cat"}, {"s", "at"}, {"\xE2\x96\x81", "sat"},
                                            {"o", "n"}, {"\xE2\x96\x81", "on"}, {"m", "at"}, {"\xE2\x96\x81", "mat"},
                                            {"a", "a"}, {"aa", "aa"}};
    const int nm = (int)(sizeof merges / sizeof merges[0]);
    size_t cap = 1 << 16, n = 0;
    char *j = malloc(cap);
    n += (size_t)snprintf(j + n, cap - n, "{\"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [");
    if (prepend) n += (size_t)snprintf(j + n, cap - n, "{\"type\": \"Prepend\", \"prepend\": \"\\u2581\"}, ");
    for (int g = 0; g < growth_rules; g++)
        n += (size_t)snprintf(j + n, cap - n,
                              "{\"type\": \"Replace\", \"pattern\": {\"String\": \"a\"}, \"content\": \"aaaa\"}, ");
    n += (size_t)snprintf(j + n, cap - n,
                          "{\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, \"content\": \"\\u2581\"}]}, "
                          "\"model\": {\"type\": \"BPE\", \"byte_fallback\": true, \"vocab\": {\"<unk>\": 0");
    int id = 1;
    for (int b = 0; b < 256; b++) n += (size_t)snprintf(j + n, cap - n, ", \"<0x%02X>\": %d", b, id++);
    n += (size_t)snprintf(j + n, cap - n, ", \"\\u2581\": %d", id++);
    for (int c = 'a'; c <= 'z'; c++) n += (size_t)snprintf(j + n, cap - n, ", \"%c\": %d", c, id++);
    for (int k = 0; k < nm; k++) n += (size_t)snprintf(j + n, cap - n, ", \"%s%s\": %d", merges[k][0], merges[k][1], id++);
    n += (size_t)snprintf(j + n, cap - n, "}, \"merges\": [");
    for (int k = 0; k < nm; k++) n += (size_t)snprintf(j + n, cap - n, "%s\"%s %s\"", k ? ", " : "", merges[k][0], merges[k][1]);
    n += (size_t)snprintf(j + n, cap - n, "]}}");
    lg_tokenizer *t;
    if (lg_tokenizer_load_json_mem(j, n, NULL, 0, "spm", &t)) fail_msg("tokenizer: %s", lg_last_error());
    free(j);
    return t;
}

static char *words(size_t bytes, uint64_t seed) {
    static const char *const w[] = {"the", "cat", "sat", "on", "mat", "a", "zebra", "Q", "aaaa"};
    lg_rng r;
    lg_rng_seed(&r, seed);
    char *s = malloc(bytes + 16);
    size_t n = 0;
    while (n < bytes) n += (size_t)sprintf(s + n, "%s%s", n ? " " : "", w[lg_rng_u64(&r) % 9]);
    s[bytes] = 0;
    return s;
}

static void test_encode_prefix_equals_whole(void **state) {
    (void)state;
    lg_tokenizer *t = spm_tokenizer(1, 0);
    const size_t lens[] = {0, 10, 5000, 70000, 300000};
    const int caps[] = {0, 1, 7, 100, 2000, 30000, -1};
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
        char *s = words(lens[li], li + 1);
        int *all, na;
        assert_int_equal(lg_tokenizer_encode(t, s, lens[li], 0, &all, &na), 0);
        for (size_t ci = 0; ci < sizeof caps / sizeof caps[0]; ci++) {
            int *p, np;
            assert_int_equal(lg_tokenizer_encode_prefix(t, s, lens[li], caps[ci], &p, &np), 0);
            int want = caps[ci] < 0 ? na : LG_MIN(na, caps[ci]);
            assert_int_equal(np, want);
            assert_memory_equal(p, all, (size_t)np * sizeof(int));
            free(p);
        }
        free(all), free(s);
    }
    lg_tokenizer_free(t);
}

static void test_long_words_cut_at_word_starts(void **state) {
    (void)state;
    /* without Prepend, "a b" tokenises as "a" then " b": pieces split before a space can be encoded
     * one by one, and a 2.5 MB text (one BPE word: no pre-tokenizer) must give exactly that */
    lg_tokenizer *t = spm_tokenizer(0, 0);
    const size_t n = (5u << 20) / 2;
    char *s = words(n, 9);
    int *all, na;
    assert_int_equal(lg_tokenizer_encode(t, s, n, 0, &all, &na), 0);
    int *ref = malloc((size_t)na * sizeof(int) + 16);
    int nr = 0;
    for (size_t pos = 0; pos < n;) {
        size_t end = LG_MIN(n, pos + 50000);
        while (end < n && s[end] != ' ') end++;
        int *p, np;
        assert_int_equal(lg_tokenizer_encode(t, s + pos, end - pos, 0, &p, &np), 0);
        assert_true(nr + np <= na);
        memcpy(ref + nr, p, (size_t)np * sizeof(int));
        nr += np;
        free(p);
        pos = end;
    }
    assert_int_equal(nr, na);
    assert_memory_equal(ref, all, (size_t)na * sizeof(int));
    free(ref), free(all);
    /* a 3 MB word with no word start at all still round-trips, in bounded pieces */
    free(s);
    s = malloc(3u << 20);
    memset(s, 'b', 3u << 20);
    assert_int_equal(lg_tokenizer_encode(t, s, 3u << 20, 0, &all, &na), 0);
    assert_int_equal(na, 3 << 20); /* "b" has no merge: one token per byte */
    free(all), free(s);
    lg_tokenizer_free(t);
}

static void test_normalizer_growth_bounded(void **state) {
    (void)state;
    lg_tokenizer *t = spm_tokenizer(1, 12); /* each rule quadruples every "a": 4^12 x */
    int *ids, n;
    assert_int_equal(lg_tokenizer_encode(t, "a cat", 5, 0, &ids, &n), -1);
    assert_non_null(strstr(lg_last_error(), "normalizers grow a text of 5 bytes"));
    assert_int_equal(lg_tokenizer_encode(t, "the cot", 7, 0, &ids, &n), 0); /* no "a": nothing grows */
    free(ids);
    lg_tokenizer_free(t);
}

static void test_rows_cut_before_tokenising(void **state) {
    (void)state;
    lg_tokenizer *t = spm_tokenizer(1, 0);
    const size_t big = 8u << 20;
    char *text = words(big, 3), *row = malloc(big + 64);
    int rl = snprintf(row, big + 64, "{\"text\": \"%s\"}\n{\"text\": \"the cat\"}\n", text);
    lg_data_opts o = {0};
    o.max_len = 32;
    lg_dataset *d;
    assert_int_equal(lg_dataset_load_mem("rows.jsonl", row, (size_t)rl, 1, t, &o, &d), 0);
    lg_data_stats st;
    lg_dataset_stats(d, &st);
    assert_int_equal(st.truncated, 1);
    const int *ids;
    const unsigned char *loss;
    int n;
    assert_int_equal(lg_dataset_example(d, LG_SPLIT_TRAIN_FILE, 0, &ids, &loss, &n), 0);
    assert_int_equal(n, 32);
    int *ref, nr;
    assert_int_equal(lg_tokenizer_encode(t, text, 4096, 0, &ref, &nr), 0);
    assert_true(nr > 32);
    assert_memory_equal(ids, ref, 32 * sizeof(int)); /* what tokenising the whole row would start with */
    free(ref);
    lg_dataset_free(d);
    /* NUL and repeated keys: errors naming the line, or skipped and counted */
    const char *bad = "{\"text\": \"the cat\"}\n{\"text\": \"the\\u0000cat\"}\n{\"text\": \"a\", \"text\": \"b\"}\n";
    assert_int_equal(lg_dataset_load_mem("b.jsonl", bad, strlen(bad), 1, t, &o, &d), -1);
    assert_non_null(strstr(lg_last_error(), "b.jsonl:2: a NUL character"));
    o.skip_bad = 1;
    assert_int_equal(lg_dataset_load_mem("b.jsonl", bad, strlen(bad), 1, t, &o, &d), 0);
    lg_dataset_stats(d, &st);
    assert_int_equal(st.bad_rows, 2);
    assert_int_equal(st.first_bad_line, 2);
    lg_dataset_free(d);
    const char *dup = "{\"text\": \"the cat\"}\n{\"text\": \"a\", \"text\": \"b\"}\n";
    o.skip_bad = 0;
    assert_int_equal(lg_dataset_load_mem("d.jsonl", dup, strlen(dup), 1, t, &o, &d), -1);
    assert_non_null(strstr(lg_last_error(), "d.jsonl:2: duplicate key \"text\""));
    free(text), free(row);
    lg_tokenizer_free(t);
}

/* ---- LoRA-GA --------------------------------------------------------------------------------- */

static int random_batch(void *ud, int split, long index, lg_batch *b) {
    (void)split;
    lg_rng r;
    lg_rng_seed(&r, (uint64_t)index + 7);
    int V = *(int *)ud;
    for (int i = 0; i < b->B * b->T; i++) {
        b->inputs[i] = (int)(lg_rng_u64(&r) % (uint64_t)V);
        b->targets[i] = (int)(lg_rng_u64(&r) % (uint64_t)V);
        b->weight[i] = 1.0f;
    }
    return 0;
}

static int want_none(const lg_param *p, void *ud) {
    (void)p, (void)ud;
    return 0;
}

static void test_loraga_checks_and_zero_gradient(void **state) {
    (void)state;
    lg_config c = lg_test_tiny_config(LG_ARCH_LLAMA, 40, 2);
    int V = c.vocab_size;
    lg_model *m;
    assert_int_equal(lg_model_create(&c, NULL, 3, NULL, &m), 0);
    lg_model_set_trainable(m, want_none, NULL);
    lg_lora_opts lo;
    lg_lora_opts_default(&lo);
    lo.r = 2;
    lo.init = LG_INIT_NONE;
    lg_adapters *a;
    assert_int_equal(lg_adapters_attach(m, &lo, &a), 0);
    lg_ga_opts go;
    lg_ga_opts_default(&go);
    go.batches = 2, go.batch_size = 2, go.seq_len = 8;
    lg_ga_report rep;
    go.mode = LG_GA_SKETCH, go.sketch_k = 3; /* below 2r = 4: overflowed a heap buffer, NaN init */
    assert_int_equal(lg_loraga_init(m, a, &go, random_batch, &V, &rep), -1);
    assert_non_null(strstr(lg_last_error(), "--ga-sketch-k 3 is below 2r = 4"));
    go.sketch_k = 0;
    const float gammas[] = {0.0f, -1.0f, NAN, INFINITY};
    for (int i = 0; i < 4; i++) {
        go.gamma = gammas[i];
        assert_int_equal(lg_loraga_init(m, a, &go, random_batch, &V, &rep), -1);
        assert_non_null(strstr(lg_last_error(), "--ga-gamma"));
    }
    go.gamma = 16.0f;
    /* every hidden state zero (zero embeddings): no target gets a gradient; none reads as aligned */
    lg_param *emb = lg_model_find_param(m, "model.embed_tokens.weight");
    memset(emb->data, 0, (size_t)emb->numel * sizeof(float));
    char *diag = tpath("diag.jsonl");
    go.mode = LG_GA_ALL, go.diag_path = diag;
    assert_int_equal(lg_loraga_init(m, a, &go, random_batch, &V, &rep), 0);
    assert_int_equal(rep.zero_gradient, lg_adapters_count(a));
    assert_true(isnan(rep.align_err_mean) && isnan(rep.captured_mean));
    assert_int_equal(rep.estimated, 0);
    char *txt;
    assert_int_equal(lg_read_file(diag, &txt, NULL), 0);
    assert_non_null(strstr(txt, "\"align_err\": null, \"zero_gradient\": true"));
    free(txt), free(diag);
    lg_adapters_free(a);
    lg_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_strict),
        cmocka_unit_test(test_read_file_regular_only),
        cmocka_unit_test(test_remove_tree_never_follows_links),
        cmocka_unit_test(test_stale_tmp_of_dead_processes),
        cmocka_unit_test(test_atomic_output),
        cmocka_unit_test(test_config_bounds_and_count),
        cmocka_unit_test(test_nonfinite_tensor_refused),
        cmocka_unit_test(test_encode_prefix_equals_whole),
        cmocka_unit_test(test_long_words_cut_at_word_starts),
        cmocka_unit_test(test_normalizer_growth_bounded),
        cmocka_unit_test(test_rows_cut_before_tokenising),
        cmocka_unit_test(test_loraga_checks_and_zero_gradient),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
