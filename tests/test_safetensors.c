/* test_safetensors.c — safetensors writer/reader round trips, shards, malformed input, fuzz. */
#include "testutil.h"

#include "core/util.h"
#include "io/safetensors.h"

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- helpers ------------------------------------------------------------------ */

static void rm_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char *p = lg_path_join(dir, e->d_name);
        unlink(p);
        free(p);
    }
    closedir(d);
    rmdir(dir);
}

static void write_bytes(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (n) assert_int_equal(fwrite(p, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

/* Raw safetensors file: 8-byte length, header text as given, then `data_len` data bytes
 * (0,1,2,...). `hlen_override` >= 0 replaces the length field. */
static void write_raw(const char *path, const char *header, size_t data_len, int64_t hlen_override) {
    size_t hl = strlen(header);
    size_t n = 8 + hl + data_len;
    unsigned char *b = malloc(n);
    uint64_t L = hlen_override >= 0 ? (uint64_t)hlen_override : hl;
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(L >> (8 * i));
    memcpy(b + 8, header, hl);
    for (size_t i = 0; i < data_len; i++) b[8 + hl + i] = (unsigned char)i;
    write_bytes(path, b, n);
    free(b);
}

static unsigned char *slurp(const char *path, size_t *n) {
    char *d = NULL;
    assert_int_equal(lg_read_file(path, &d, n), 0);
    return (unsigned char *)d;
}

static uint64_t hdr_len(const unsigned char *b) {
    uint64_t L = 0;
    for (int i = 7; i >= 0; i--) L = (L << 8) | b[i];
    return L;
}

static int same_bits(float a, float b) { return memcmp(&a, &b, sizeof a) == 0; }

/* ---- round trips ------------------------------------------------------------- */

static void test_roundtrip_f32(void **state) {
    (void)state;
    char *dir = lg_test_tmpdir();
    char *path = lg_path_join(dir, "m.safetensors");
    float a[6] = {1.0f, -2.5f, 3.14159265f, 1e-30f, -0.0f, 6.02e23f};
    float b[24];
    for (int i = 0; i < 24; i++) b[i] = (float)i * 0.37f - 4.1f;
    float s = 42.125f;
    lg_st_item items[4] = {
        {"model.layers.0.weight", LG_DT_F32, 2, {2, 3}, a},
        {"b.scalar", LG_DT_F32, 0, {0}, &s},
        {"a.cube", LG_DT_F32, 3, {2, 3, 4}, b},
        {"empty", LG_DT_F32, 2, {0, 5}, NULL},
    };
    assert_int_equal(lg_st_write(path, items, 4, NULL, 0), 0);

    lg_safetensors *st = NULL;
    assert_int_equal(lg_st_open(path, &st), 0);
    assert_int_equal(lg_st_count(st), 4);
    /* lg_st_get keeps the written order */
    for (int i = 0; i < 4; i++) assert_string_equal(lg_st_get(st, i)->name, items[i].name);
    assert_null(lg_st_get(st, 4));
    assert_null(lg_st_find(st, "nope"));

    const lg_st_tensor *t = lg_st_find(st, "a.cube");
    assert_non_null(t);
    assert_int_equal(t->dtype, LG_DT_F32);
    assert_int_equal(t->ndim, 3);
    assert_int_equal(t->shape[2], 4);
    assert_int_equal(t->numel, 24);
    assert_int_equal(t->nbytes, 96);
    assert_string_equal(t->file, path);

    float out[24];
    int64_t sa[2] = {2, 3}, sb[3] = {2, 3, 4}, se[2] = {0, 5};
    assert_int_equal(lg_st_read_f32(st, "model.layers.0.weight", out, 2, sa), 0);
    assert_memory_equal(out, a, sizeof a);
    assert_int_equal(lg_st_read_f32(st, "a.cube", out, 3, sb), 0);
    assert_memory_equal(out, b, sizeof b);
    assert_int_equal(lg_st_read_f32(st, "b.scalar", out, 0, NULL), 0);
    assert_true(same_bits(out[0], s));
    assert_int_equal(lg_st_read_f32(st, "empty", out, 2, se), 0);
    assert_int_equal(lg_st_find(st, "empty")->numel, 0);
    lg_st_close(st);

    /* no temp file left behind */
    int entries = 0;
    DIR *d = opendir(dir);
    for (struct dirent *e; (e = readdir(d));) entries += e->d_name[0] != '.';
    closedir(d);
    assert_int_equal(entries, 1);
    free(path);
    rm_tree(dir);
    free(dir);
}

static void test_roundtrip_half(void **state) {
    (void)state;
    char *dir = lg_test_tmpdir();
    char *path = lg_path_join(dir, "h.safetensors");
    enum { N = 1000 };
    float *v = malloc(N * sizeof(float));
    lg_rng r;
    lg_rng_seed(&r, 7);
    for (int i = 0; i < N; i++) v[i] = lg_rng_normal(&r) * powf(10.0f, (float)(i % 9) - 4.0f);
    v[0] = 0.0f;
    v[1] = -0.0f;
    v[2] = 65504.0f;
    v[3] = 1e-7f;  /* f16 subnormal */
    v[4] = 1e5f;   /* f16 overflow -> inf */
    v[5] = 1.0009765625f + 0.00048828125f; /* halfway case for f16: round to even */
    lg_st_item items[2] = {{"h", LG_DT_F16, 2, {10, 100}, v}, {"bf", LG_DT_BF16, 1, {N}, v}};
    assert_int_equal(lg_st_write(path, items, 2, NULL, 0), 0);

    lg_safetensors *st = NULL;
    assert_int_equal(lg_st_open(path, &st), 0);
    assert_int_equal(lg_st_find(st, "h")->dtype, LG_DT_F16);
    assert_int_equal(lg_st_find(st, "bf")->dtype, LG_DT_BF16);
    assert_int_equal(lg_st_find(st, "bf")->nbytes, 2 * N);
    float *out = malloc(N * sizeof(float));
    int64_t sh[2] = {10, 100}, sb[1] = {N};
    /* 1e5 overflows f16 to infinity, stored as such; reading it as a weight is refused (a non-finite
     * value would spread through every output), naming the element */
    const uint8_t *raw = lg_st_find(st, "h")->data;
    assert_int_equal(raw[8] | raw[9] << 8, 0x7c00);
    assert_int_equal(lg_st_read_f32(st, "h", out, 2, sh), -1);
    assert_non_null(strstr(lg_last_error(), "non-finite value (inf at element 4)"));
    lg_st_close(st);
    v[4] = 1e4f; /* finite: the rest of the round trip */
    assert_int_equal(lg_st_write(path, items, 2, NULL, 0), 0);
    assert_int_equal(lg_st_open(path, &st), 0);
    assert_int_equal(lg_st_read_f32(st, "h", out, 2, sh), 0);
    for (int i = 0; i < N; i++) assert_true(same_bits(out[i], lg_f16_to_f32(lg_f32_to_f16(v[i]))));
    assert_int_equal(lg_st_read_f32(st, "bf", out, 1, sb), 0);
    for (int i = 0; i < N; i++)
        assert_true(same_bits(out[i], lg_bf16_to_f32(lg_f32_to_bf16(v[i]))));
    /* conversion really happened: at least one value is not exact in bf16 */
    int differs = 0;
    for (int i = 0; i < N; i++) differs += !same_bits(out[i], v[i]);
    assert_true(differs > 0);
    lg_st_close(st);
    free(out);
    free(v);
    free(path);
    rm_tree(dir);
    free(dir);
}

static void test_metadata(void **state) {
    (void)state;
    char *dir = lg_test_tmpdir();
    char *path = lg_path_join(dir, "m.safetensors");
    float x[2] = {1, 2};
    lg_st_item it = {"x", LG_DT_F32, 1, {2}, x};
    lg_st_meta meta[2] = {{"format", "pt"}, {"note", "quote \" and \\ and ünïcode"}};
    assert_int_equal(lg_st_write(path, &it, 1, meta, 2), 0);
    lg_safetensors *st = NULL;
    assert_int_equal(lg_st_open(path, &st), 0);
    assert_string_equal(lg_st_metadata(st, "format"), "pt");
    assert_string_equal(lg_st_metadata(st, "note"), meta[1].value);
    assert_null(lg_st_metadata(st, "absent"));
    assert_int_equal(lg_st_count(st), 1); /* __metadata__ is not a tensor */
    lg_st_close(st);

    /* nmeta == 0: no __metadata__ key at all */
    assert_int_equal(lg_st_write(path, &it, 1, NULL, 0), 0);
    size_t n;
    unsigned char *b = slurp(path, &n);
    assert_null(strstr((char *)b + 8, "__metadata__"));
    free(b);
    assert_int_equal(lg_st_open(path, &st), 0);
    assert_null(lg_st_metadata(st, "format"));
    lg_st_close(st);
    free(path);
    rm_tree(dir);
    free(dir);
}

static void test_header_alignment(void **state) {
    (void)state;
    char *dir = lg_test_tmpdir();
    char *path = lg_path_join(dir, "a.safetensors");
    float x[3] = {1.5f, -2.0f, 3.25f};
    char name[16];
    int padded = 0;
    for (int len = 1; len <= 9; len++) {
        memset(name, 'n', (size_t)len);
        name[len] = 0;
        lg_st_item it = {name, LG_DT_F32, 1, {3}, x};
        assert_int_equal(lg_st_write(path, &it, 1, NULL, 0), 0);
        size_t n;
        unsigned char *b = slurp(path, &n);
        uint64_t L = hdr_len(b);
        assert_int_equal((8 + L) % 8, 0);
        assert_int_equal(n, 8 + L + sizeof x);
        assert_memory_equal(b + 8 + L, x, sizeof x); /* data right after the header */
        assert_int_equal(b[8], '{');
        padded += b[8 + L - 1] == ' ';
        free(b);
    }
    assert_true(padded > 0); /* some name lengths needed space padding */
    free(path);
    rm_tree(dir);
    free(dir);
}

/* ---- shards ------------------------------------------------------------------- */

static void make_shards(const char *dir) {
    float a[4] = {1, 2, 3, 4}, b[2] = {5, 6}, c[3] = {7, 8, 9};
    lg_st_item s1[2] = {{"a", LG_DT_F32, 2, {2, 2}, a}, {"b", LG_DT_BF16, 1, {2}, b}};
    lg_st_item s2[1] = {{"c", LG_DT_F16, 1, {3}, c}};
    lg_st_meta meta = {"format", "pt"};
    char *p1 = lg_path_join(dir, "model-00001-of-00002.safetensors");
    char *p2 = lg_path_join(dir, "model-00002-of-00002.safetensors");
    assert_int_equal(lg_st_write(p1, s1, 2, &meta, 1), 0);
    assert_int_equal(lg_st_write(p2, s2, 1, NULL, 0), 0);
    free(p1);
    free(p2);
}

static void write_index(const char *dir, const char *weight_map) {
    char *p = lg_path_join(dir, "model.safetensors.index.json");
    char buf[1024];
    snprintf(buf, sizeof buf, "{\"metadata\": {\"total_size\": 30}, \"weight_map\": %s}", weight_map);
    write_bytes(p, buf, strlen(buf));
    free(p);
}

static void test_sharded(void **state) {
    (void)state;
    char *dir = lg_test_tmpdir();
    make_shards(dir);
    /* listed out of shard order on purpose */
    write_index(dir, "{\"c\": \"model-00002-of-00002.safetensors\", "
                     "\"a\": \"model-00001-of-00002.safetensors\", "
                     "\"b\": \"model-00001-of-00002.safetensors\"}");
    char *ipath = lg_path_join(dir, "model.safetensors.index.json");
    const char *opens[2] = {dir, ipath};
    for (int k = 0; k < 2; k++) {
        lg_safetensors *st = NULL;
        assert_int_equal(lg_st_open(opens[k], &st), 0);
        assert_int_equal(lg_st_count(st), 3);
        float out[4];
        int64_t sa[2] = {2, 2}, sb[1] = {2}, sc[1] = {3};
        assert_int_equal(lg_st_read_f32(st, "a", out, 2, sa), 0);
        assert_true(out[0] == 1 && out[3] == 4);
        assert_int_equal(lg_st_read_f32(st, "b", out, 1, sb), 0);
        assert_true(out[0] == 5 && out[1] == 6);
        assert_int_equal(lg_st_read_f32(st, "c", out, 1, sc), 0);
        assert_true(out[0] == 7 && out[2] == 9);
        assert_non_null(strstr(lg_st_find(st, "c")->file, "model-00002-of-00002"));
        assert_non_null(strstr(lg_st_find(st, "a")->file, "model-00001-of-00002"));
        assert_string_equal(lg_st_metadata(st, "format"), "pt"); /* from the first shard */
        lg_st_close(st);
    }
    /* a single shard opened directly */
    char *p2 = lg_path_join(dir, "model-00002-of-00002.safetensors");
    lg_safetensors *st = NULL;
    assert_int_equal(lg_st_open(p2, &st), 0);
    assert_int_equal(lg_st_count(st), 1);
    lg_st_close(st);
    /* model.safetensors takes precedence over the index */
    char *single = lg_path_join(dir, "model.safetensors");
    float z = 0;
    lg_st_item it = {"only", LG_DT_F32, 1, {1}, &z};
    assert_int_equal(lg_st_write(single, &it, 1, NULL, 0), 0);
    assert_int_equal(lg_st_open(dir, &st), 0);
    assert_int_equal(lg_st_count(st), 1);
    assert_non_null(lg_st_find(st, "only"));
    lg_st_close(st);
    free(single);
    free(p2);
    free(ipath);
    rm_tree(dir);
    free(dir);
}

static void expect_open_error(const char *path, const char *what1, const char *what2) {
    lg_safetensors *st = (lg_safetensors *)1;
    lg_clear_error();
    int rc = lg_st_open(path, &st);
    if (rc != -1 || st != NULL) fail_msg("%s: expected an error mentioning '%s'", path, what1);
    const char *e = lg_last_error();
    if (!strstr(e, what1) || (what2 && !strstr(e, what2)))
        fail_msg("error \"%s\" lacks '%s' / '%s'", e, what1, what2 ? what2 : "");
}

static void test_sharded_errors(void **state) {
    (void)state;
    char *dir = lg_test_tmpdir();
    /* neither file */
    expect_open_error(dir, "neither model.safetensors nor", dir);
    make_shards(dir);
    char *ipath = lg_path_join(dir, "model.safetensors.index.json");
    /* missing shard file */
    write_index(dir, "{\"a\": \"model-00001-of-00002.safetensors\", "
                     "\"d\": \"model-00003-of-00003.safetensors\"}");
    expect_open_error(dir, "model-00003-of-00003.safetensors", "does not exist");
    /* tensor absent from the shard it names */
    write_index(dir, "{\"a\": \"model-00001-of-00002.safetensors\", "
                     "\"zz\": \"model-00002-of-00002.safetensors\"}");
    expect_open_error(dir, "tensor 'zz'", "not found");
    /* tensor present, but in a different shard than the index says */
    write_index(dir, "{\"a\": \"model-00002-of-00002.safetensors\", "
                     "\"b\": \"model-00001-of-00002.safetensors\", "
                     "\"c\": \"model-00002-of-00002.safetensors\"}");
    expect_open_error(ipath, "tensor 'a'", "but it is in");
    expect_open_error(ipath, "model-00001-of-00002", NULL);
    /* no weight_map; bad JSON; shard path escaping the directory */
    write_bytes(ipath, "{\"metadata\": {}}", 16);
    expect_open_error(dir, "weight_map", ipath);
    write_bytes(ipath, "{\"weight_map\": ", 15);
    expect_open_error(dir, "not valid JSON", ipath);
    write_index(dir, "{\"a\": \"../model-00001-of-00002.safetensors\"}");
    expect_open_error(dir, "not a plain file name", NULL);
    /* the same tensor in two shards */
    float one = 1;
    lg_st_item it = {"a", LG_DT_F32, 1, {1}, &one};
    char *p2 = lg_path_join(dir, "model-00002-of-00002.safetensors");
    assert_int_equal(lg_st_write(p2, &it, 1, NULL, 0), 0);
    write_index(dir, "{\"a\": \"model-00001-of-00002.safetensors\", "
                     "\"x\": \"model-00002-of-00002.safetensors\"}");
    expect_open_error(dir, "tensor 'a'", "duplicate");
    free(p2);
    free(ipath);
    rm_tree(dir);
    free(dir);
}

/* ---- malformed single files -------------------------------------------------- */

typedef struct {
    const char *header;
    size_t data_len;
    int64_t hlen;       /* -1: the real length */
    const char *expect; /* substring of the error */
} bad_case;

static void test_malformed(void **state) {
    (void)state;
    char *dir = lg_test_tmpdir();
    char *path = lg_path_join(dir, "bad.safetensors");

    /* empty file, and shorter than the length field */
    write_bytes(path, "", 0);
    expect_open_error(path, path, "empty");
    write_bytes(path, "\x10\x00\x00", 3);
    expect_open_error(path, path, "too short");
    /* nonexistent file */
    char *nope = lg_path_join(dir, "nope.safetensors");
    expect_open_error(nope, nope, "cannot open");
    free(nope);

    const bad_case cases[] = {
        /* header length beyond the file / absurd */
        {"{}", 0, 1000, "exceeds the file size"},
        {"{}", 0, (int64_t)1 << 40, "absurd"},
        /* header itself */
        {"{\"a\": {\"dtype\": \"F32\", ", 0, -1, "not valid JSON"},
        {"[1, 2]", 0, -1, "not a JSON object"},
        {"{}  xx", 0, -1, "trailing bytes"},
        /* entries */
        {"{\"a\": 3}", 0, -1, "tensor 'a': entry is not a JSON object"},
        {"{\"a\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", 4, -1, "tensor 'a': missing 'dtype'"},
        {"{\"a\": {\"dtype\": 5, \"shape\": [1], \"data_offsets\": [0, 4]}}", 4, -1,
         "'dtype' is not a string"},
        {"{\"a\": {\"dtype\": \"Q9\", \"shape\": [1], \"data_offsets\": [0, 4]}}", 4, -1,
         "tensor 'a': unknown dtype 'Q9'"},
        {"{\"a\": {\"dtype\": \"F64\", \"shape\": [1], \"data_offsets\": [0, 8]}}", 8, -1,
         "tensor 'a': unsupported dtype 'F64'"},
        {"{\"a\": {\"dtype\": \"F32\", \"data_offsets\": [0, 4]}}", 4, -1, "missing 'shape'"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": 1, \"data_offsets\": [0, 4]}}", 4, -1,
         "'shape' is not an array"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [2, -3], \"data_offsets\": [0, 4]}}", 4, -1,
         "tensor 'a': negative dimension -3"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1.5], \"data_offsets\": [0, 4]}}", 4, -1,
         "not a non-negative integer"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1,1,1,1,1], \"data_offsets\": [0, 4]}}", 4, -1,
         "5 dimensions"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296], \"data_offsets\": "
         "[0, 4]}}",
         4, -1, "overflows"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1]}}", 4, -1, "missing 'data_offsets'"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0]}}", 4, -1,
         "[begin, end]"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [\"0\", 4]}}", 4, -1,
         "[begin, end]"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [4, 0]}}", 4, -1,
         "begin > end"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}", 4, -1,
         "tensor 'a': data_offsets [0, 8] out of range"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [2, 3], \"data_offsets\": [0, 16]}}", 24, -1,
         "shape [2, 3] x F32 needs 24 bytes"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}, "
         "\"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}",
         12, -1, "overlap"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}, "
         "\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}",
         8, -1, "tensor 'a': duplicate name"},
        {"{\"__metadata__\": {\"k\": 1}}", 0, -1, "not a string"},
        {"{\"__metadata__\": [1]}", 0, -1, "'__metadata__' is not an object"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_raw(path, cases[i].header, cases[i].data_len, cases[i].hlen);
        expect_open_error(path, path, cases[i].expect);
    }

    /* a valid file whose data section was cut off */
    float x[8] = {0};
    lg_st_item it = {"w", LG_DT_F32, 2, {2, 4}, x};
    assert_int_equal(lg_st_write(path, &it, 1, NULL, 0), 0);
    size_t n;
    unsigned char *b = slurp(path, &n);
    write_bytes(path, b, n - 5);
    expect_open_error(path, "tensor 'w'", "out of range");
    expect_open_error(path, path, "truncated");
    /* ... and whose header was cut off */
    write_bytes(path, b, 8 + hdr_len(b) / 2);
    expect_open_error(path, path, "exceeds the file size");
    free(b);

    /* sanity: the helper builds files the reader accepts */
    write_raw(path, "{\"ok\": {\"dtype\": \"I32\", \"shape\": [2], \"data_offsets\": [0, 8]}}", 8, -1);
    lg_safetensors *st = NULL;
    assert_int_equal(lg_st_open(path, &st), 0);
    assert_int_equal(lg_st_find(st, "ok")->dtype, LG_DT_I32);
    lg_st_close(st);

    free(path);
    rm_tree(dir);
    free(dir);
}

static void test_read_errors(void **state) {
    (void)state;
    char *dir = lg_test_tmpdir();
    char *path = lg_path_join(dir, "r.safetensors");
    static float w[576 * 192];
    lg_st_item it = {"model.embed", LG_DT_BF16, 2, {576, 192}, w};
    assert_int_equal(lg_st_write(path, &it, 1, NULL, 0), 0);
    lg_safetensors *st = NULL;
    assert_int_equal(lg_st_open(path, &st), 0);
    static float out[576 * 576];
    int64_t want[2] = {576, 576};
    assert_int_equal(lg_st_read_f32(st, "model.embed", out, 2, want), -1);
    const char *e = lg_last_error();
    assert_non_null(strstr(e, "[576, 192]"));
    assert_non_null(strstr(e, "[576, 576]"));
    assert_non_null(strstr(e, "model.embed"));
    assert_non_null(strstr(e, path));
    int64_t want1[1] = {576 * 192}; /* same numel, different rank: still refused */
    assert_int_equal(lg_st_read_f32(st, "model.embed", out, 1, want1), -1);
    assert_non_null(strstr(lg_last_error(), "[110592]"));
    assert_int_equal(lg_st_read_f32(st, "missing.tensor", out, 2, want), -1);
    assert_non_null(strstr(lg_last_error(), "missing.tensor"));
    assert_non_null(strstr(lg_last_error(), "not found"));
    lg_st_close(st);

    /* integer tensors are readable as metadata but not as float */
    write_raw(path, "{\"ids\": {\"dtype\": \"I64\", \"shape\": [3], \"data_offsets\": [0, 24]}}", 24,
              -1);
    assert_int_equal(lg_st_open(path, &st), 0);
    assert_int_equal(lg_st_find(st, "ids")->nbytes, 24);
    int64_t s3[1] = {3};
    assert_int_equal(lg_st_read_f32(st, "ids", out, 1, s3), -1);
    assert_non_null(strstr(lg_last_error(), "I64"));
    lg_st_close(st);

    /* writer refuses bad input and leaves nothing behind */
    lg_st_item dup[2] = {{"x", LG_DT_F32, 1, {1}, w}, {"x", LG_DT_F32, 1, {1}, w}};
    char *p2 = lg_path_join(dir, "w.safetensors");
    assert_int_equal(lg_st_write(p2, dup, 2, NULL, 0), -1);
    assert_non_null(strstr(lg_last_error(), "duplicate"));
    lg_st_item ity = {"x", LG_DT_I32, 1, {1}, w};
    assert_int_equal(lg_st_write(p2, &ity, 1, NULL, 0), -1);
    lg_st_item neg = {"x", LG_DT_F32, 1, {-1}, w};
    assert_int_equal(lg_st_write(p2, &neg, 1, NULL, 0), -1);
    assert_false(lg_file_exists(p2));
    char *p3 = lg_path_join(dir, "no/such/dir.safetensors");
    lg_st_item okit = {"x", LG_DT_F32, 1, {1}, w};
    assert_int_equal(lg_st_write(p3, &okit, 1, NULL, 0), -1);
    assert_non_null(strstr(lg_last_error(), "cannot create"));
    free(p3);
    free(p2);
    free(path);
    rm_tree(dir);
    free(dir);
}

/* ---- fuzz --------------------------------------------------------------------- */

static void test_fuzz(void **state) {
    (void)state;
    char *dir = lg_test_tmpdir();
    char *path = lg_path_join(dir, "f.safetensors");
    float a[12], b[5] = {1, 2, 3, 4, 5}, c[6];
    for (int i = 0; i < 12; i++) a[i] = (float)i - 5.5f;
    for (int i = 0; i < 6; i++) c[i] = (float)i * 1e3f;
    lg_st_item items[3] = {{"layer.0.weight", LG_DT_F32, 2, {3, 4}, a},
                           {"layer.0.bias", LG_DT_BF16, 1, {5}, b},
                           {"norm", LG_DT_F16, 3, {1, 2, 3}, c}};
    lg_st_meta meta = {"format", "pt"};
    assert_int_equal(lg_st_write(path, items, 3, &meta, 1), 0);
    size_t n;
    unsigned char *orig = slurp(path, &n);
    size_t hend = 8 + (size_t)hdr_len(orig);
    unsigned char *buf = malloc(n);
    float *out = malloc(4096 * sizeof(float));
    const char *digits = "0123456789-.e\"[]{},: ";

    lg_rng r;
    lg_rng_seed(&r, 12345);
    int opened = 0, failed = 0;
    for (int iter = 0; iter < 3000; iter++) {
        memcpy(buf, orig, n);
        size_t len = n;
        int kind = (int)(lg_rng_u64(&r) % 5);
        int flips = 1 + (int)(lg_rng_u64(&r) % 4);
        for (int k = 0; k < flips; k++) {
            size_t pos;
            switch (kind) {
            case 0: /* random byte anywhere */
                pos = lg_rng_u64(&r) % len;
                buf[pos] = (unsigned char)lg_rng_u64(&r);
                break;
            case 1: /* JSON-ish character inside the header: keeps it near-valid */
                pos = 8 + lg_rng_u64(&r) % (hend - 8);
                buf[pos] = (unsigned char)digits[lg_rng_u64(&r) % strlen(digits)];
                break;
            case 2: /* bit flip in the length field or header */
                pos = lg_rng_u64(&r) % hend;
                buf[pos] ^= (unsigned char)(1u << (lg_rng_u64(&r) % 8));
                break;
            case 3: /* truncation */
                len = lg_rng_u64(&r) % (len + 1);
                if (len == 0) len = 1;
                break;
            default: /* digit edits only: plausible but wrong shapes/offsets */
                pos = 8 + lg_rng_u64(&r) % (hend - 8);
                if (buf[pos] >= '0' && buf[pos] <= '9')
                    buf[pos] = (unsigned char)('0' + lg_rng_u64(&r) % 10);
                break;
            }
        }
        write_bytes(path, buf, len);
        lg_safetensors *st = NULL;
        int rc = lg_st_open(path, &st);
        assert_true(rc == 0 || rc == -1);
        if (rc != 0) {
            assert_null(st);
            assert_true(strlen(lg_last_error()) > 0);
            failed++;
            continue;
        }
        opened++;
        for (int i = 0; i < lg_st_count(st); i++) {
            const lg_st_tensor *t = lg_st_get(st, i);
            assert_true(t->nbytes == (size_t)t->numel * lg_dtype_size(t->dtype));
            if (t->numel > 4096) continue;
            int rr = lg_st_read_f32(st, t->name, out, t->ndim, t->shape);
            assert_true(rr == 0 || (rr == -1 && t->dtype >= LG_DT_I32));
        }
        lg_st_close(st);
    }
    print_message("fuzz: %d opened, %d rejected\n", opened, failed);
    assert_true(opened > 0 && failed > 0);
    free(out);
    free(buf);
    free(orig);
    free(path);
    rm_tree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_f32),  cmocka_unit_test(test_roundtrip_half),
        cmocka_unit_test(test_metadata),       cmocka_unit_test(test_header_alignment),
        cmocka_unit_test(test_sharded),        cmocka_unit_test(test_sharded_errors),
        cmocka_unit_test(test_malformed),      cmocka_unit_test(test_read_errors),
        cmocka_unit_test(test_fuzz),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
