/* test_hostile.c — the hostile-input corpus (docs/reliability.md): every reader of the loraga CLI fed
 * malformed files, each case classified, and the data-safety scenarios.
 *
 * The corpus is generated here, at test time, from small valid fixtures made first (a tiny LLaMA
 * model with its SentencePiece-style tokenizer, briefly trained so that its loss is well below a
 * uniform guess; rows; a LoRA adapter and a checkpointed run made by the CLI; a llama2.c model and
 * tokenizer.bin; the GGUF fixture of tests/golden): crafted cases for each known way a file can lie
 * (sizes that overflow or ask for gigabytes, NaN weights, NUL and repeated keys, links in a run
 * directory, full disks...) and seeded random mutations (byte flips, truncations, hostile numbers
 * and strings spliced into JSON). The 50 MB cases are written, run and removed one at a time.
 *
 * Each case runs the sanitised CLI (build/san/loraga, ASan + UBSan + LSan) with an address limit
 * (ASan's max_allocation_size_mb and hard_rss_limit_mb, 1536 MB: RLIMIT_AS cannot be used under
 * ASan); every crafted case and a quarter of the random ones run again on the optimised CLI
 * (build/loraga) under RLIMIT_AS 4 GB. Each run has a time limit and is classified: clean error
 * (exit 1 or 2 with a "loraga" message), accepted (exit 0), crash (signal, sanitizer report, other
 * exit status, or a silent failure), hang, huge memory (an allocation refused by the limit, or a
 * peak RSS over 1.5 GB), wrong exit 0 (exit 0 on a case that must fail), lost data (a failed write changed an existing file or left a finished-looking
 * output). Anything but the first two fails the test; the table of counts and the peak RSS are
 * printed. LORAGA_HOSTILE_JOBS sets how many cases run at once (default 2); LORAGA_HOSTILE_KEEP=1
 * keeps the case directories (but the 50 MB ones) and says where. */
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "core/util.h"
#include "io/gguf.h"
#include "model/model.h"

#define LIMIT_MB 1536
#define SAN_TIMEOUT 120
#define REL_TIMEOUT 60

static char *g_tmp;                 /* everything of this run */
static char g_base[512];            /* the fixtures */
static char g_model[600], g_data[600], g_adapter[600], g_ck[600], g_gguf[600], g_l2c[600], g_l2ctok[600],
    g_sst2[600], g_victim[600];
static const char *g_san, *g_rel;
static const char *CK_OPTS[] = {"--method", "lora", "--steps", "3", "--batch-size", "2", "--seq-len", "16",
                                "--save-every", "1", "--lr", "1e-3"};

/* ---- small file helpers ------------------------------------------------------------------------ */

static void wfile(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) fail_msg("cannot write %s: %s", path, strerror(errno));
    if (len && fwrite(data, 1, len, f) != len) fail_msg("short write %s", path);
    if (fclose(f) != 0) fail_msg("close %s", path);
}
static void wtext(const char *path, const char *s) { wfile(path, s, strlen(s)); }

static char *rfile(const char *path, size_t *len) {
    char *d;
    if (lg_read_file(path, &d, len) != 0) fail_msg("%s", lg_last_error());
    return d;
}

static char *pj(const char *a, const char *b) { return lg_path_join(a, b); }

static void sh(const char *fmt, ...) LG_PRINTF(1, 2);
static void sh(const char *fmt, ...) {
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    if (system(cmd) != 0) fail_msg("command failed: %s", cmd);
}

/* a file of a fixture directory, linked (not copied: nothing writes to inputs) into dst */
static void link_into(const char *srcdir, const char *name, const char *dstdir) {
    char *a = pj(srcdir, name), *b = pj(dstdir, name);
    if (link(a, b) != 0) fail_msg("link %s: %s", a, strerror(errno));
    free(a), free(b);
}

/* ---- fixtures ----------------------------------------------------------------------------------- */

/* SentencePiece-style BPE: Prepend "▁" + " " -> "▁", byte fallback, LLaMA-2's decoder. */
static void write_tokenizer(const char *dir) {
    static const char *const merges[][2] = {
        {"t", "h"}, {"th", "e"}, {"\xE2\x96\x81", "the"}, {"a", "t"}, {"c", "at"}, {"\xE2\x96\x81", "cat"},
        {"s", "at"}, {"\xE2\x96\x81", "sat"}, {"o", "n"}, {"\xE2\x96\x81", "on"}, {"m", "at"}, {"\xE2\x96\x81", "mat"},
        {"d", "o"}, {"do", "g"}, {"\xE2\x96\x81", "dog"}, {"r", "a"}, {"ra", "n"}, {"\xE2\x96\x81", "ran"},
        {"\xE2\x96\x81", "a"}, {"i", "s"}, {"\xE2\x96\x81", "is"}};
    const int nm = (int)(sizeof merges / sizeof merges[0]);
    size_t cap = 1 << 16, n = 0;
    char *j = malloc(cap);
    n += (size_t)snprintf(j + n, cap - n,
                          "{\"version\": \"1.0\", \"added_tokens\": ["
                          "{\"id\": 0, \"content\": \"<unk>\", \"special\": true, \"normalized\": false},"
                          "{\"id\": 1, \"content\": \"<s>\", \"special\": true, \"normalized\": false},"
                          "{\"id\": 2, \"content\": \"</s>\", \"special\": true, \"normalized\": false}],"
                          "\"normalizer\": {\"type\": \"Sequence\", \"normalizers\": ["
                          "{\"type\": \"Prepend\", \"prepend\": \"\\u2581\"},"
                          "{\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, \"content\": \"\\u2581\"}]},"
                          "\"pre_tokenizer\": null,"
                          "\"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": [{\"SpecialToken\": "
                          "{\"id\": \"<s>\", \"type_id\": 0}}, {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}], "
                          "\"pair\": [], \"special_tokens\": {\"<s>\": {\"id\": \"<s>\", \"ids\": [1], \"tokens\": [\"<s>\"]}}},"
                          "\"decoder\": {\"type\": \"Sequence\", \"decoders\": ["
                          "{\"type\": \"Replace\", \"pattern\": {\"String\": \"\\u2581\"}, \"content\": \" \"},"
                          "{\"type\": \"ByteFallback\"}, {\"type\": \"Fuse\"},"
                          "{\"type\": \"Strip\", \"content\": \" \", \"start\": 1, \"stop\": 0}]},"
                          "\"model\": {\"type\": \"BPE\", \"byte_fallback\": true, \"unk_token\": \"<unk>\", "
                          "\"vocab\": {\"<unk>\": 0, \"<s>\": 1, \"</s>\": 2");
    int id = 3;
    for (int b = 0; b < 256; b++) n += (size_t)snprintf(j + n, cap - n, ", \"<0x%02X>\": %d", b, id++);
    n += (size_t)snprintf(j + n, cap - n, ", \"\\u2581\": %d", id++);
    for (int c = 'a'; c <= 'z'; c++) n += (size_t)snprintf(j + n, cap - n, ", \"%c\": %d", c, id++);
    for (int k = 0; k < nm; k++) n += (size_t)snprintf(j + n, cap - n, ", \"%s%s\": %d", merges[k][0], merges[k][1], id++);
    n += (size_t)snprintf(j + n, cap - n, "}, \"merges\": [");
    for (int k = 0; k < nm; k++) n += (size_t)snprintf(j + n, cap - n, "%s\"%s %s\"", k ? ", " : "", merges[k][0], merges[k][1]);
    n += (size_t)snprintf(j + n, cap - n, "]}}\n");
    char *p = pj(dir, "tokenizer.json");
    wfile(p, j, n);
    free(p);
    p = pj(dir, "tokenizer_config.json");
    wtext(p, "{\"bos_token\": \"<s>\", \"eos_token\": \"</s>\", \"add_bos_token\": true}\n");
    free(p), free(j);
}

/* llama2.c: a v0 checkpoint of the same shape with random weights, and a tokenizer.bin */
static void write_llama2c(const lg_config *c) {
    int32_t h[7] = {c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads, -c->vocab_size, c->max_seq};
    int64_t C = c->dim, F = c->hidden_dim, L = c->n_layers, V = c->vocab_size, hd = c->head_dim;
    int64_t kvd = c->n_kv_heads * hd;
    int64_t n = V * C + L * (C + C * C + 2 * kvd * C + C * C + C + 3 * F * C) + C + c->max_seq * hd + V * C;
    float *w = malloc((size_t)n * sizeof(float));
    lg_rng r;
    lg_rng_seed(&r, 5);
    for (int64_t i = 0; i < n; i++) w[i] = 0.05f * lg_rng_normal(&r);
    FILE *f = fopen(g_l2c, "wb");
    assert_non_null(f);
    fwrite(h, 4, 7, f);
    fwrite(w, 4, (size_t)n, f);
    assert_int_equal(fclose(f), 0);
    free(w);
    f = fopen(g_l2ctok, "wb");
    assert_non_null(f);
    int32_t maxlen = 16;
    fwrite(&maxlen, 4, 1, f);
    char piece[16];
    for (int i = 0; i < c->vocab_size - 8; i++) {
        if (i < 3) snprintf(piece, sizeof piece, "%s", i == 0 ? "<unk>" : i == 1 ? "\n<s>\n" : "\n</s>\n");
        else if (i < 259) snprintf(piece, sizeof piece, "<0x%02X>", i - 3);
        else if (i == 259) snprintf(piece, sizeof piece, " ");
        else if (i < 286) snprintf(piece, sizeof piece, "%c", 'a' + i - 260);
        else snprintf(piece, sizeof piece, " %c%c", 'a' + (i * 7) % 26, 'a' + (i * 3) % 26);
        float sc = i < 286 ? 0.0f : -(float)i;
        int32_t len = (int32_t)strlen(piece);
        fwrite(&sc, 4, 1, f);
        fwrite(&len, 4, 1, f);
        fwrite(piece, 1, (size_t)len, f);
    }
    assert_int_equal(fclose(f), 0);
}

static int setup(void **state) {
    (void)state;
    g_san = getenv("LORAGA_SAN_BIN");
    if (!g_san) g_san = "build/san/loraga";
    g_rel = lg_test_bin();
    g_tmp = lg_test_tmpdir();
    return g_tmp ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    if (getenv("LORAGA_HOSTILE_KEEP")) {
        print_message("kept %s\n", g_tmp);
        free(g_tmp);
        return 0;
    }
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
    int rc = system(cmd);
    free(g_tmp);
    return rc == 0 ? 0 : -1;
}

static int g_fixtures_ok;

static void make_fixtures(void) {
    if (g_fixtures_ok) return;
    if (access(g_san, X_OK) != 0 || access(g_rel, X_OK) != 0)
        fail_msg("%s or %s not built (make test builds both)", g_san, g_rel);
    snprintf(g_base, sizeof g_base, "%s/base", g_tmp);
    sh("mkdir -p '%s'", g_base);
    snprintf(g_data, sizeof g_data, "%s/data.jsonl", g_base);
    {
        static const char *const w[] = {"the", "cat", "sat", "on", "mat", "dog", "ran", "a", "is"};
        lg_rng r;
        lg_rng_seed(&r, 1);
        FILE *f = fopen(g_data, "w");
        assert_non_null(f);
        for (int i = 0; i < 48; i++) {
            fputs(i % 4 == 3 ? "{\"prompt\": \"the cat\", \"completion\": \"" : "{\"text\": \"", f);
            for (int k = 0; k < 14; k++) fprintf(f, "%s%s", k ? " " : "", k % 3 == 0 ? "the" : w[lg_rng_u64(&r) % 9]);
            fputs("\"}\n", f);
        }
        assert_int_equal(fclose(f), 0);
    }
    snprintf(g_sst2, sizeof g_sst2, "%s/sst2.tsv", g_base);
    wtext(g_sst2, "sentence\tlabel\nthe cat sat on the mat\t1\nthe dog ran\t0\na cat is a cat\t1\nthe mat\t0\n");
    /* the model: random, then a short full fine-tune so that its loss sits well below ln V */
    lg_config c = lg_test_tiny_config(LG_ARCH_LLAMA, 320, 2);
    c.max_seq = 64;
    c.bos_id = 1, c.eos_id = 2;
    char init[600];
    snprintf(init, sizeof init, "%s/init", g_base);
    lg_model *m;
    assert_int_equal(lg_model_create(&c, NULL, 11, NULL, &m), 0);
    assert_int_equal(lg_model_save_hf(m, init, "float32"), 0);
    lg_model_free(m);
    write_tokenizer(init);
    snprintf(g_model, sizeof g_model, "%s/model", g_base);
    sh("'%s' train --model '%s' --data '%s' --method full --steps 60 --batch-size 8 --seq-len 24 --lr 1e-2 "
       "--out '%s' 2>/dev/null",
       g_rel, init, g_data, g_model);
    snprintf(g_adapter, sizeof g_adapter, "%s/adapter", g_base);
    sh("'%s' train --model '%s' --data '%s' --method lora --rank 4 --steps 2 --batch-size 2 --seq-len 16 "
       "--out '%s' 2>/dev/null",
       g_rel, g_model, g_data, g_adapter);
    snprintf(g_ck, sizeof g_ck, "%s/ckrun", g_base);
    char ckopts[512] = "";
    for (size_t i = 0; i < sizeof CK_OPTS / sizeof CK_OPTS[0]; i++)
        snprintf(ckopts + strlen(ckopts), sizeof ckopts - strlen(ckopts), " %s", CK_OPTS[i]);
    sh("'%s' train --model '%s' --data '%s' %s --stop-after 1 --out '%s' 2>/dev/null", g_rel, g_model, g_data, ckopts,
       g_ck);
    snprintf(g_gguf, sizeof g_gguf, "%s/tiny.gguf", g_base);
    sh("cp tests/golden/gguf/tiny_llama.gguf '%s'", g_gguf);
    snprintf(g_l2c, sizeof g_l2c, "%s/l2c.bin", g_base);
    snprintf(g_l2ctok, sizeof g_l2ctok, "%s/tok.bin", g_base);
    write_llama2c(&c);
    snprintf(g_victim, sizeof g_victim, "%s/victim", g_base);
    sh("mkdir -p '%s' && echo precious > '%s/keep.txt'", g_victim, g_victim);
    g_fixtures_ok = 1;
}

/* ---- cases -------------------------------------------------------------------------------------- */

enum { C_CLEAN, C_ACCEPTED, C_CRASH, C_HANG, C_HUGE, C_WRONG0, C_LOST, C_N };
static const char *const CLASS[C_N] = {"clean error", "accepted", "crash", "hang", "huge memory", "wrong exit 0",
                                       "lost data"};

typedef struct {
    char family[24];
    char name[160];
    char dir[600];
    char argbuf[8192];
    size_t argn;
    int nargs;
    int must_fail;  /* the input is invalid: exit 0 is wrong */
    int to_full;    /* standard output is /dev/full */
    long fsize;     /* RLIMIT_FSIZE (bytes), 0 = none: a disk that fills up */
    int big;        /* a 50 MB case: its directory is removed as soon as it has run */
    char keep[32];  /* a file of the case directory that must still hold KEPT afterwards */
    char absent[32]; /* an output that must not exist after the (failed) run */
} hcase;

#define KEPT "the previous predictions\n"

static void arg(hcase *c, const char *fmt, ...) LG_PRINTF(2, 3);
static void arg(hcase *c, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(c->argbuf + c->argn, sizeof c->argbuf - c->argn, fmt, ap);
    va_end(ap);
    if (n < 0 || c->argn + (size_t)n + 1 >= sizeof c->argbuf) fail_msg("case %s: arguments too long", c->name);
    c->argn += (size_t)n + 1;
    c->nargs++;
}

static char *cpath(hcase *c, const char *name) { return pj(c->dir, name); }

static void eval_args(hcase *c, const char *model) {
    arg(c, "eval"), arg(c, "--model"), arg(c, "%s", model), arg(c, "--data"), arg(c, "%s", g_data), arg(c, "--json");
}

/* a fresh copy of the model directory in the case directory (files linked), less `except` */
static char *model_copy(hcase *c, const char *except) {
    char *d = cpath(c, "model");
    mkdir(d, 0755);
    static const char *const files[] = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"};
    for (int i = 0; i < 4; i++)
        if (!except || strcmp(except, files[i])) link_into(g_model, files[i], d);
    return d;
}

/* ---- mutators (seeded: the same case every run) ---- */

static uint64_t rnd(lg_rng *r, uint64_t n) { return n ? lg_rng_u64(r) % n : 0; }

static const char *const HOSTILE_NUMS[] = {"1e9",     "-1",   "0",          "1e300",    "-1e300",     "2147483648",
                                           "-2147483648", "4294967296", "1e-300", "9007199254740993", "0.5", "65537",
                                           "1048576", "-0",   "3.4e38",     "1e19"};
static const char *const HOSTILE_STRS[] = {"\"\"", "\"\\u0000\"", "\"\\ud800\"", "\"x\\u0000y\"", "\"\\uFFFF\"",
                                           "\"(a+)+$\"", "\"[\"", "\"%s%s%n\"", "null", "true", "[]", "{}"};

/* One random edit of a JSON text: a byte, a span deleted or repeated, a number or a string replaced
 * by a hostile one, a cut, or deep nesting. Returns a new string. */
static char *mutate_json(const char *s, size_t n, lg_rng *r, size_t *out_n) {
    size_t cap = n * 2 + 70000;
    char *o = malloc(cap);
    size_t p = n ? rnd(r, n) : 0, k = 0;
    int op = (int)rnd(r, 8);
    if (op == 0) { /* a byte */
        memcpy(o, s, n);
        k = n;
        if (n) o[p] = (char)rnd(r, 256);
    } else if (op == 1) { /* delete a span */
        size_t l = 1 + rnd(r, 16);
        if (p + l > n) l = n - p;
        memcpy(o, s, p);
        memcpy(o + p, s + p + l, n - p - l);
        k = n - l;
    } else if (op == 2) { /* repeat a span (keys, commas, brackets) */
        size_t l = 1 + rnd(r, 40);
        if (p + l > n) l = n - p;
        memcpy(o, s, p + l);
        memcpy(o + p + l, s + p, n - p);
        k = n + l;
    } else if (op == 3 || op == 4) { /* a number or a string replaced */
        size_t a = p;
        int num = op == 3;
        while (a < n && !(num ? (s[a] >= '0' && s[a] <= '9') : s[a] == '"')) a++;
        if (a == n) a = p;
        size_t e = a + 1;
        if (num)
            while (e < n && ((s[e] >= '0' && s[e] <= '9') || s[e] == '.' || s[e] == 'e' || s[e] == '-')) e++;
        else
            while (e < n && s[e] != '"') e += s[e] == '\\' ? 2 : 1;
        if (!num && e < n) e++;
        if (e > n) e = n;
        const char *rep = num ? HOSTILE_NUMS[rnd(r, sizeof HOSTILE_NUMS / sizeof *HOSTILE_NUMS)]
                              : HOSTILE_STRS[rnd(r, sizeof HOSTILE_STRS / sizeof *HOSTILE_STRS)];
        memcpy(o, s, a);
        k = a;
        k += (size_t)sprintf(o + k, "%s", rep);
        memcpy(o + k, s + e, n - e);
        k += n - e;
    } else if (op == 5) { /* cut */
        memcpy(o, s, p);
        k = p;
    } else if (op == 6) { /* deep nesting where a value starts */
        size_t a = p;
        while (a < n && s[a] != ':') a++;
        if (a < n) a++;
        memcpy(o, s, a);
        k = a;
        int depth = 200 + (int)rnd(r, 30000);
        for (int i = 0; i < depth; i++) o[k++] = '[';
        for (int i = 0; i < depth; i++) o[k++] = ']';
        o[k++] = ',';
        memcpy(o + k, s + a, n - a);
        k += n - a;
    } else { /* a long string value */
        size_t a = p;
        while (a < n && s[a] != '"') a++;
        memcpy(o, s, a < n ? a + 1 : a);
        k = a < n ? a + 1 : a;
        size_t l = 1000 + rnd(r, 60000);
        for (size_t i = 0; i < l; i++) o[k++] = "ab\\u00e9 \\n"[rnd(r, 11)] == '\\' ? 'x' : "ab cd efgh"[rnd(r, 10)];
        if (a < n) {
            memcpy(o + k, s + a + 1, n - a - 1);
            k += n - a - 1;
        }
    }
    o[k] = 0;
    *out_n = k;
    return o;
}

static const uint64_t HOSTILE_INTS[] = {0, 1, 0x7fffffffu, 0x80000000u, 0xffffffffu, 0x7fffffffffffffffull,
                                        0x8000000000000000ull, 0xffffffffffffffffull, 1ull << 32, 1ull << 40,
                                        1000000000, 65536, 3, 0xfffffff0u};

/* One random edit of a binary file: bytes flipped (mostly near the start, where the sizes are), a
 * hostile integer stamped, a cut, or junk inserted. In place when the size does not grow. */
static char *mutate_bin(const char *s, size_t n, lg_rng *r, size_t head, size_t *out_n) {
    char *o = malloc(n + 4096);
    memcpy(o, s, n);
    size_t k = n;
    int op = (int)rnd(r, 5);
    size_t span = head && head < n && rnd(r, 4) ? head : n;
    if (op <= 1) {
        int flips = 1 + (int)rnd(r, 8);
        for (int i = 0; i < flips && n; i++) o[rnd(r, span)] ^= (char)(1 << rnd(r, 8));
    } else if (op == 2 && n >= 8) {
        size_t p = rnd(r, (span >= 8 ? span - 7 : 1));
        p &= ~(size_t)3;
        uint64_t v = HOSTILE_INTS[rnd(r, sizeof HOSTILE_INTS / sizeof *HOSTILE_INTS)];
        memcpy(o + p, &v, rnd(r, 2) ? 8 : 4);
    } else if (op == 3) {
        k = rnd(r, n + 1);
    } else {
        size_t p = rnd(r, n + 1), l = 1 + rnd(r, 4000);
        memmove(o + p + l, o + p, n - p);
        for (size_t i = 0; i < l; i++) o[p + i] = (char)rnd(r, 256);
        k = n + l;
    }
    *out_n = k;
    return o;
}

/* JSON file: read, edit with fn(cJSON root) or mutate, write to dst */
static void json_edit(const char *src, const char *dst, void (*fn)(cJSON *, void *), void *ud) {
    size_t n;
    char *t = rfile(src, &n);
    cJSON *j = cJSON_Parse(t);
    assert_non_null(j);
    fn(j, ud);
    char *o = cJSON_Print(j);
    wtext(dst, o);
    free(o), free(t);
    cJSON_Delete(j);
}

typedef struct {
    const char *key;
    double num;
    const char *str;
} setkv;
static void set_key(cJSON *j, void *ud) {
    const setkv *s = ud;
    cJSON_DeleteItemFromObjectCaseSensitive(j, s->key);
    if (s->str) cJSON_AddStringToObject(j, s->key, s->str);
    else cJSON_AddNumberToObject(j, s->key, s->num);
}

/* text with `ins` inserted right after the first '{' (a repeated key, an extra field) */
static void json_prepend_field(const char *src, const char *dst, const char *ins) {
    size_t n;
    char *t = rfile(src, &n);
    char *b = strchr(t, '{');
    assert_non_null(b);
    size_t at = (size_t)(b - t) + 1, il = strlen(ins);
    char *o = malloc(n + il + 1);
    memcpy(o, t, at);
    memcpy(o + at, ins, il);
    memcpy(o + at + il, t + at, n - at + 1);
    wfile(dst, o, n + il);
    free(o), free(t);
}

static void mutate_json_file(const char *src, const char *dst, lg_rng *r) {
    size_t n, m;
    char *t = rfile(src, &n);
    char *o = mutate_json(t, n, r, &m);
    wfile(dst, o, m);
    free(o), free(t);
}

static void mutate_bin_file(const char *src, const char *dst, lg_rng *r, size_t head) {
    size_t n, m;
    char *t = rfile(src, &n);
    char *o = mutate_bin(t, n, r, head, &m);
    unlink(dst); /* dst may be a link to the fixture: never write through it */
    wfile(dst, o, m);
    free(o), free(t);
}

/* safetensors: the header, parsed, edited by fn, written back with the same data */
static void st_edit(const char *src, const char *dst, void (*fn)(cJSON *, void *), void *ud) {
    size_t n;
    char *t = rfile(src, &n);
    uint64_t hl;
    memcpy(&hl, t, 8);
    cJSON *h = cJSON_ParseWithLength(t + 8, (size_t)hl);
    assert_non_null(h);
    fn(h, ud);
    char *hs = cJSON_PrintUnformatted(h);
    cJSON_Delete(h);
    uint64_t nl = strlen(hs);
    unlink(dst);
    FILE *f = fopen(dst, "wb");
    assert_non_null(f);
    fwrite(&nl, 8, 1, f);
    fwrite(hs, 1, nl, f);
    fwrite(t + 8 + hl, 1, n - 8 - hl, f);
    assert_int_equal(fclose(f), 0);
    free(hs), free(t);
}

/* a float32 value written over element `el` of tensor `name` of a safetensors file (a copy) */
static void st_poke(const char *src, const char *dst, const char *name, int64_t el, float v) {
    size_t n;
    char *t = rfile(src, &n);
    uint64_t hl;
    memcpy(&hl, t, 8);
    cJSON *h = cJSON_ParseWithLength(t + 8, (size_t)hl);
    const cJSON *e = cJSON_GetObjectItem(h, name);
    if (!e) fail_msg("no tensor %s in %s", name, src);
    size_t off = 8 + (size_t)hl + (size_t)cJSON_GetArrayItem(cJSON_GetObjectItem(e, "data_offsets"), 0)->valuedouble;
    memcpy(t + off + 4 * el, &v, 4);
    cJSON_Delete(h);
    unlink(dst);
    wfile(dst, t, n);
    free(t);
}

typedef struct {
    const char *name, *field;
    const char *json; /* the new value, as JSON text */
} st_field;
static void st_set_field(cJSON *h, void *ud) {
    const st_field *s = ud;
    cJSON *e = cJSON_GetObjectItem(h, s->name);
    if (!e) fail_msg("no tensor %s", s->name);
    cJSON_DeleteItemFromObjectCaseSensitive(e, s->field);
    cJSON_AddItemToObject(e, s->field, cJSON_Parse(s->json));
}
static void st_drop(cJSON *h, void *ud) { cJSON_DeleteItemFromObjectCaseSensitive(h, (const char *)ud); }

/* ---- the families ------------------------------------------------------------------------------ */

static void fam_config(hcase *c, int i, lg_rng *r) {
    char *m = model_copy(c, "config.json"), *cfg = pj(m, "config.json"), *src = pj(g_model, "config.json");
    static const struct {
        const char *what, *key;
        double v;
    } nums[] = {{"heads 1e9", "num_attention_heads", 1e9},       {"head_dim 1e9", "head_dim", 1e9},
                {"vocab 1M", "vocab_size", 1e6},                {"1000 layers", "num_hidden_layers", 1000},
                {"FFN 2^20", "intermediate_size", 1048576},     {"kv heads 0", "num_key_value_heads", 0},
                {"hidden -16", "hidden_size", -16},             {"rope_theta 1e300", "rope_theta", 1e300},
                {"eps 1e300", "rms_norm_eps", 1e300},           {"2^20 positions", "max_position_embeddings", 1048576},
                {"hidden 4096", "hidden_size", 4096},           {"heads 2^31", "num_attention_heads", 2147483648.0},
                {"head_dim 65536", "head_dim", 65536}};
    const int nn = (int)(sizeof nums / sizeof nums[0]);
    c->must_fail = 1;
    if (i < nn) {
        snprintf(c->name, sizeof c->name, "config: %s", nums[i].what);
        setkv s = {nums[i].key, nums[i].v, NULL};
        json_edit(src, cfg, set_key, &s);
        if (!strcmp(nums[i].key, "max_position_embeddings")) c->must_fail = 0; /* valid: RoPE tables of 16 MB */
    } else if (i == nn) {
        snprintf(c->name, sizeof c->name, "config: vocab 1M x hidden 4096 next to tiny weights");
        setkv s = {"vocab_size", 1e6, NULL};
        json_edit(src, cfg, set_key, &s);
        char *tmp = cpath(c, "c2.json");
        setkv s2 = {"hidden_size", 4096, NULL};
        json_edit(cfg, tmp, set_key, &s2);
        rename(tmp, cfg);
        free(tmp);
    } else if (i == nn + 1) {
        snprintf(c->name, sizeof c->name, "config: repeated key");
        json_prepend_field(src, cfg, "\"hidden_size\": 999, ");
    } else if (i == nn + 2) {
        snprintf(c->name, sizeof c->name, "config: NUL in model_type");
        json_prepend_field(src, cfg, "\"model_type\": \"lla\\u0000ma\", ");
    } else if (i == nn + 3) {
        snprintf(c->name, sizeof c->name, "config: a directory named config.json");
        mkdir(cfg, 0755);
    } else if (i == nn + 4) {
        snprintf(c->name, sizeof c->name, "config: missing");
    } else if (i == nn + 5) {
        snprintf(c->name, sizeof c->name, "config: llama2.c-style interleaved head_dim odd");
        setkv s = {"head_dim", 3, NULL};
        json_edit(src, cfg, set_key, &s);
    } else {
        snprintf(c->name, sizeof c->name, "config: random edit %d", i);
        c->must_fail = 0;
        mutate_json_file(src, cfg, r);
    }
    eval_args(c, m);
    free(m), free(cfg), free(src);
}

static void fam_safetensors(hcase *c, int i, lg_rng *r) {
    char *m = model_copy(c, "model.safetensors"), *st = pj(m, "model.safetensors"),
         *src = pj(g_model, "model.safetensors");
    c->must_fail = 1;
    switch (i) {
    case 0: st_poke(src, st, "model.embed_tokens.weight", 5, NAN), snprintf(c->name, sizeof c->name, "st: NaN weight"); break;
    case 1: st_poke(src, st, "model.norm.weight", 0, INFINITY), snprintf(c->name, sizeof c->name, "st: Inf weight"); break;
    case 2: st_poke(src, st, "lm_head.weight", 100, -INFINITY), snprintf(c->name, sizeof c->name, "st: -Inf lm_head"); break;
    case 3: {
        snprintf(c->name, sizeof c->name, "st: header length 2^63");
        size_t n;
        char *t = rfile(src, &n);
        uint64_t v = 1ull << 63;
        memcpy(t, &v, 8);
        wfile(st, t, n);
        free(t);
        break;
    }
    case 4: {
        snprintf(c->name, sizeof c->name, "st: shape 1e9 x 1e9");
        st_field f = {"model.embed_tokens.weight", "shape", "[1000000000, 1000000000]"};
        st_edit(src, st, st_set_field, &f);
        break;
    }
    case 5: {
        snprintf(c->name, sizeof c->name, "st: data_offsets 2^60");
        st_field f = {"model.norm.weight", "data_offsets", "[0, 1152921504606846976]"};
        st_edit(src, st, st_set_field, &f);
        break;
    }
    case 6: {
        snprintf(c->name, sizeof c->name, "st: dtype F64");
        st_field f = {"model.norm.weight", "dtype", "\"F64\""};
        st_edit(src, st, st_set_field, &f);
        break;
    }
    case 7: {
        snprintf(c->name, sizeof c->name, "st: dtype I32 weight");
        st_field f = {"model.norm.weight", "dtype", "\"I32\""};
        st_edit(src, st, st_set_field, &f);
        break;
    }
    case 8: {
        snprintf(c->name, sizeof c->name, "st: overlapping tensors");
        st_field f = {"model.norm.weight", "data_offsets", "[0, 64]"};
        st_edit(src, st, st_set_field, &f);
        break;
    }
    case 9: st_edit(src, st, st_drop, "model.layers.1.mlp.down_proj.weight"), snprintf(c->name, sizeof c->name, "st: tensor missing"); break;
    case 10: {
        snprintf(c->name, sizeof c->name, "st: truncated data");
        size_t n;
        char *t = rfile(src, &n);
        wfile(st, t, n - 100);
        free(t);
        break;
    }
    case 11: wfile(st, "", 0), snprintf(c->name, sizeof c->name, "st: empty file"); break;
    case 12: {
        snprintf(c->name, sizeof c->name, "st: shape [-1, 16]");
        st_field f = {"model.embed_tokens.weight", "shape", "[-1, 16]"};
        st_edit(src, st, st_set_field, &f);
        break;
    }
    case 13: {
        snprintf(c->name, sizeof c->name, "st: NUL in a tensor name");
        size_t n;
        char *t = rfile(src, &n);
        char *p = strstr(t + 8, "model.norm.weight");
        assert_non_null(p);
        p[6] = 0; /* a raw NUL byte in place of a letter */
        wfile(st, t, n);
        free(t);
        break;
    }
    default:
        c->must_fail = 0;
        snprintf(c->name, sizeof c->name, "st: random edit %d", i);
        size_t hl;
        char *t = rfile(src, NULL);
        memcpy(&hl, t, 8);
        free(t);
        mutate_bin_file(src, st, r, i % 2 ? 8 + hl : 0);
    }
    eval_args(c, m);
    free(m), free(st), free(src);
}

static const char *TOK_ROWS = "{\"text\": \"the cat sat on a mat\"}\n{\"text\": \"aaaa bbbb\"}\n";

static void fam_tokjson(hcase *c, int i, lg_rng *r) {
    char *dir = cpath(c, "tok"), *tj = cpath(c, "tok/tokenizer.json"), *src = pj(g_model, "tokenizer.json"),
         *rows = cpath(c, "rows.jsonl");
    mkdir(dir, 0755);
    link_into(g_model, "tokenizer_config.json", dir);
    wtext(rows, TOK_ROWS);
    c->must_fail = 1;
    if (i == 0) {
        snprintf(c->name, sizeof c->name, "tokenizer.json: normalizers that grow without bound");
        size_t n;
        char *t = rfile(src, &n), *o = malloc(n + 8192);
        char *p = strstr(t, "\"normalizers\": [");
        assert_non_null(p);
        size_t at = (size_t)(p - t) + 16, k = at;
        memcpy(o, t, at);
        for (int g = 0; g < 30; g++)
            k += (size_t)sprintf(o + k, "{\"type\": \"Replace\", \"pattern\": {\"String\": \"a\"}, \"content\": \"aaaa\"},");
        memcpy(o + k, t + at, n - at);
        wfile(tj, o, k + n - at);
        free(o), free(t);
    } else if (i == 1) {
        snprintf(c->name, sizeof c->name, "tokenizer.json: repeated vocabulary key");
        size_t n;
        char *t = rfile(src, &n), *o = malloc(n + 64);
        char *p = strstr(t, "\"vocab\": {");
        size_t at = (size_t)(p - t) + 10;
        memcpy(o, t, at);
        size_t k = at + (size_t)sprintf(o + at, "\"a\": 5, ");
        memcpy(o + k, t + at, n - at);
        wfile(tj, o, k + n - at);
        free(o), free(t);
    } else if (i == 2) {
        snprintf(c->name, sizeof c->name, "tokenizer.json: NUL in a vocabulary key");
        size_t n;
        char *t = rfile(src, &n), *o = malloc(n + 64);
        char *p = strstr(t, "\"vocab\": {");
        size_t at = (size_t)(p - t) + 10;
        memcpy(o, t, at);
        size_t k = at + (size_t)sprintf(o + at, "\"x\\u0000\": 7, ");
        memcpy(o + k, t + at, n - at);
        wfile(tj, o, k + n - at);
        free(o), free(t);
    } else if (i == 3) {
        snprintf(c->name, sizeof c->name, "tokenizer.json: a directory");
        mkdir(tj, 0755);
    } else if (i <= 6) {
        static const char *const ids[] = {"1000000000", "-7", "2147483647"};
        snprintf(c->name, sizeof c->name, "tokenizer.json: vocabulary id %s", ids[i - 4]);
        c->must_fail = 0; /* an id that large may be accepted if it fits, but not with gigabytes */
        size_t n;
        char *t = rfile(src, &n), *o = malloc(n + 64);
        char *p = strstr(t, "\"vocab\": {");
        size_t at = (size_t)(p - t) + 10;
        memcpy(o, t, at);
        size_t k = at + (size_t)sprintf(o + at, "\"zz\": %s, ", ids[i - 4]);
        memcpy(o + k, t + at, n - at);
        wfile(tj, o, k + n - at);
        free(o), free(t);
    } else if (i == 7) {
        snprintf(c->name, sizeof c->name, "tokenizer.json: catastrophic Split regex");
        c->must_fail = 0;
        size_t n;
        char *t = rfile(src, &n), *o = malloc(n + 256);
        char *p = strstr(t, "\"pre_tokenizer\": null");
        size_t at = (size_t)(p - t), k = at;
        memcpy(o, t, at);
        k += (size_t)sprintf(o + k, "\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"(a+)+$\"}, "
                                    "\"behavior\": \"Isolated\", \"invert\": false}");
        size_t rest = at + strlen("\"pre_tokenizer\": null");
        memcpy(o + k, t + rest, n - rest);
        wfile(tj, o, k + n - rest);
        free(o), free(t);
        wtext(rows, "{\"text\": \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab\"}\n");
    } else {
        snprintf(c->name, sizeof c->name, "tokenizer.json: random edit %d", i);
        c->must_fail = 0;
        mutate_json_file(src, tj, r);
    }
    arg(c, "tokenize"), arg(c, "--tokenizer"), arg(c, "%s", dir), arg(c, "--input"), arg(c, "%s", rows);
    free(dir), free(tj), free(src), free(rows);
}

static void fam_tokbin(hcase *c, int i, lg_rng *r) {
    char *tb = cpath(c, "tok.bin");
    size_t n;
    char *t = rfile(g_l2ctok, &n);
    c->must_fail = 1;
    if (i < 6) {
        static const int32_t maxl[] = {0, -1, 65537};
        if (i < 3) {
            snprintf(c->name, sizeof c->name, "tokenizer.bin: max_token_length %d", (int)maxl[i]);
            memcpy(t, &maxl[i], 4);
        } else if (i == 3) {
            snprintf(c->name, sizeof c->name, "tokenizer.bin: token length -1");
            int32_t l = -1;
            memcpy(t + 8, &l, 4);
        } else if (i == 4) {
            snprintf(c->name, sizeof c->name, "tokenizer.bin: NaN score");
            float s = NAN;
            memcpy(t + 4, &s, 4);
        } else {
            snprintf(c->name, sizeof c->name, "tokenizer.bin: two tokens");
            n = 4 + 2 * (8 + 5);
        }
        wfile(tb, t, n);
    } else {
        snprintf(c->name, sizeof c->name, "tokenizer.bin: random edit %d", i);
        c->must_fail = 0;
        mutate_bin_file(g_l2ctok, tb, r, 64);
    }
    arg(c, "tokenize"), arg(c, "--tokenizer"), arg(c, "%s", tb), arg(c, "--text"), arg(c, "the cat sat on the mat");
    free(t), free(tb);
}

static void fam_gguf(hcase *c, int i, lg_rng *r) {
    char *g = cpath(c, "m.gguf");
    c->must_fail = 0;
    if (i == 0) { /* NaN in an F32 tensor */
        snprintf(c->name, sizeof c->name, "gguf: NaN in a float32 tensor");
        size_t n;
        char *t = rfile(g_gguf, &n);
        lg_gguf *gg;
        assert_int_equal(lg_gguf_open_mem(t, n, "x", &gg), 0);
        int done = 0;
        for (int k = 0; k < lg_gguf_n_tensors(gg) && !done; k++) {
            const lg_gguf_tensor *x = lg_gguf_tensor_at(gg, k);
            if (x->type != 0 || !strstr(x->name, ".weight")) continue; /* an F32 weight the model reads */
            float v = NAN;
            memcpy(t + ((const char *)x->data - t), &v, 4);
            done = 1;
        }
        lg_gguf_close(gg);
        if (!done) { /* no F32 weight in this fixture: a random edit instead */
            snprintf(c->name, sizeof c->name, "gguf: random edit %d", i);
            mutate_bin_file(g_gguf, g, r, 4096);
        } else {
            c->must_fail = 1;
            wfile(g, t, n);
        }
        free(t);
    } else {
        snprintf(c->name, sizeof c->name, "gguf: random edit %d", i);
        mutate_bin_file(g_gguf, g, r, 4096);
    }
    eval_args(c, g);
    free(g);
}

static void fam_llama2c(hcase *c, int i, lg_rng *r) {
    char *b = cpath(c, "m.bin");
    size_t n;
    char *t = rfile(g_l2c, &n);
    c->must_fail = 1;
    static const struct {
        const char *what;
        int field;
        int32_t v;
    } hs[] = {{"vocab INT32_MIN", 5, INT32_MIN}, {"dim 0", 0, 0},         {"heads 0", 3, 0},
              {"dim 2^30", 0, 1 << 30},         {"layers 2^30", 2, 1 << 30}, {"seq -5", 6, -5},
              {"kv heads 3", 4, 3},             {"hidden INT32_MAX", 1, INT32_MAX}};
    const int nh = (int)(sizeof hs / sizeof hs[0]);
    if (i < nh) {
        snprintf(c->name, sizeof c->name, "llama2.c: %s", hs[i].what);
        memcpy(t + 4 * hs[i].field, &hs[i].v, 4);
        wfile(b, t, n);
    } else if (i == nh) {
        snprintf(c->name, sizeof c->name, "llama2.c: NaN weight");
        float v = NAN;
        memcpy(t + 28 + 4 * 1000, &v, 4);
        wfile(b, t, n);
    } else if (i == nh + 1) {
        snprintf(c->name, sizeof c->name, "llama2.c: one byte short");
        wfile(b, t, n - 1);
    } else {
        snprintf(c->name, sizeof c->name, "llama2.c: random edit %d", i);
        c->must_fail = 0;
        mutate_bin_file(g_l2c, b, r, 28);
    }
    arg(c, "eval"), arg(c, "--model"), arg(c, "%s", b), arg(c, "--tokenizer"), arg(c, "%s", g_l2ctok);
    arg(c, "--data"), arg(c, "%s", g_data), arg(c, "--json");
    free(t), free(b);
}

static void fam_jsonl(hcase *c, int i, lg_rng *r) {
    char *d = cpath(c, "rows.jsonl");
    c->must_fail = 1;
    int skip = 0, train = i % 5 == 4;
    static const struct {
        const char *what, *rows;
    } cr[] = {
        {"NUL in a row", "{\"text\": \"the cat\"}\n{\"text\": \"the\\u0000 cat sat\"}\n"},
        {"raw NUL byte", NULL},
        {"repeated key", "{\"text\": \"the cat\"}\n{\"text\": \"the dog\", \"text\": \"a mat\"}\n"},
        {"repeated key in a chat message", "{\"messages\": [{\"role\": \"user\", \"role\": \"assistant\", \"content\": \"x\"}]}\n"},
        {"NUL in a prompt", "{\"prompt\": \"a\\u0000b\", \"completion\": \"the cat\"}\n"},
        {"invalid UTF-8", "{\"text\": \"the \xff cat\"}\n"},
        {"not an object", "[\"the cat\"]\n"},
        {"text is a number", "{\"text\": 12}\n"},
        {"prompt without completion", "{\"prompt\": \"the cat\"}\n"},
        {"empty file", ""},
        {"blank lines only", "\n\n  \n"},
        {"trailing garbage", "{\"text\": \"the cat\"} x\n"},
        {"chat without a template", "{\"messages\": [{\"role\": \"user\", \"content\": \"the\"}, {\"role\": \"assistant\", \"content\": \"cat\"}]}\n"},
        {"deep nesting", NULL},
        {"a directory", NULL},
        {"/dev/zero", NULL},
    };
    const int nc = (int)(sizeof cr / sizeof cr[0]);
    const char *data = d;
    if (i < nc) {
        snprintf(c->name, sizeof c->name, "jsonl: %s", cr[i].what);
        if (cr[i].rows) wtext(d, cr[i].rows);
        else if (i == 1) wfile(d, "{\"text\": \"the\0cat\"}\n", 20);
        else if (i == 13) {
            size_t n = 200000;
            char *t = malloc(2 * n + 32);
            size_t k = (size_t)sprintf(t, "{\"text\": ");
            memset(t + k, '[', n), k += n;
            memset(t + k, ']', n), k += n;
            k += (size_t)sprintf(t + k, "}\n");
            wfile(d, t, k);
            free(t);
        } else if (i == 14) mkdir(d, 0755);
        else data = "/dev/zero";
    } else if (i == nc) {
        snprintf(c->name, sizeof c->name, "jsonl: NUL row with --skip-bad (skipped, counted)");
        wtext(d, "{\"text\": \"the cat sat\"}\n{\"text\": \"the\\u0000cat\"}\n");
        skip = 1;
        c->must_fail = 0;
    } else {
        snprintf(c->name, sizeof c->name, "jsonl: random edit %d%s", i, train ? " (train)" : "");
        c->must_fail = 0;
        mutate_json_file(g_data, d, r);
    }
    if (train) {
        arg(c, "train"), arg(c, "--model"), arg(c, "%s", g_model), arg(c, "--data"), arg(c, "%s", data);
        arg(c, "--method"), arg(c, "lora"), arg(c, "--steps"), arg(c, "1"), arg(c, "--batch-size"), arg(c, "2");
        arg(c, "--seq-len"), arg(c, "16"), arg(c, "--out"), arg(c, "%s/run", c->dir);
    } else {
        arg(c, "eval"), arg(c, "--model"), arg(c, "%s", g_model), arg(c, "--data"), arg(c, "%s", data), arg(c, "--json");
    }
    if (skip) arg(c, "--skip-bad");
    free(d);
}

static void fam_adapter(hcase *c, int i, lg_rng *r) {
    char *a = cpath(c, "adapter"), *cfg = cpath(c, "adapter/adapter_config.json"),
         *st = cpath(c, "adapter/adapter_model.safetensors"), *scfg = pj(g_adapter, "adapter_config.json"),
         *sst = pj(g_adapter, "adapter_model.safetensors");
    mkdir(a, 0755);
    c->must_fail = 1;
    int cmd = 0; /* 0 eval, 1 generate, 2 merge */
    const char *bname = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";
    const char *aname = "base_model.model.model.layers.1.mlp.down_proj.lora_A.weight";
    if (i <= 2) {
        snprintf(c->name, sizeof c->name, "adapter: NaN in lora_B (%s)", i == 0 ? "eval" : i == 1 ? "generate" : "merge");
        link_into(g_adapter, "adapter_config.json", a);
        st_poke(sst, st, bname, 3, NAN);
        cmd = i;
    } else if (i == 3) {
        snprintf(c->name, sizeof c->name, "adapter: Inf in lora_A (generate)");
        link_into(g_adapter, "adapter_config.json", a);
        st_poke(sst, st, aname, 0, INFINITY);
        cmd = 1;
    } else if (i <= 9) {
        static const struct {
            const char *what, *key;
            double v;
        } k[] = {{"r 1e20", "r", 1e20}, {"lora_alpha 1e300", "lora_alpha", 1e300}, {"r 0", "r", 0},
                 {"r 3 (shapes say 4)", "r", 3}, {"lora_alpha 1e300 (merge)", "lora_alpha", 1e300},
                 {"r 2^31", "r", 2147483648.0}};
        snprintf(c->name, sizeof c->name, "adapter: %s", k[i - 4].what);
        link_into(g_adapter, "adapter_model.safetensors", a);
        setkv s = {k[i - 4].key, k[i - 4].v, NULL};
        json_edit(scfg, cfg, set_key, &s);
        cmd = i == 8 ? 2 : 1;
    } else if (i == 10) {
        snprintf(c->name, sizeof c->name, "adapter: adapter_config.json a directory");
        link_into(g_adapter, "adapter_model.safetensors", a);
        mkdir(cfg, 0755);
    } else if (i == 11) {
        snprintf(c->name, sizeof c->name, "adapter: repeated key");
        link_into(g_adapter, "adapter_model.safetensors", a);
        json_prepend_field(scfg, cfg, "\"r\": 8, ");
    } else if (i == 12) {
        snprintf(c->name, sizeof c->name, "adapter: NUL in target_modules");
        link_into(g_adapter, "adapter_model.safetensors", a);
        json_prepend_field(scfg, cfg, "\"target_modules\": [\"q_pr\\u0000oj\"], \"x\": 1, ");
        /* the original target_modules follows: a repeated key as well; either refusal is right */
    } else if (i == 13) {
        snprintf(c->name, sizeof c->name, "adapter: safetensors missing");
        link_into(g_adapter, "adapter_config.json", a);
    } else if (i == 14) {
        snprintf(c->name, sizeof c->name, "adapter: lora_B shape [1e9, 4]");
        link_into(g_adapter, "adapter_config.json", a);
        st_field f = {bname, "shape", "[1000000000, 4]"};
        st_edit(sst, st, st_set_field, &f);
    } else if (i == 15) {
        snprintf(c->name, sizeof c->name, "adapter: catastrophic target regex");
        c->must_fail = 0;
        link_into(g_adapter, "adapter_model.safetensors", a);
        setkv s = {"target_modules", 0, "(a|aa)+$"};
        json_edit(scfg, cfg, set_key, &s);
    } else {
        c->must_fail = 0;
        if (i % 2) {
            snprintf(c->name, sizeof c->name, "adapter: random edit %d of adapter_config.json", i);
            link_into(g_adapter, "adapter_model.safetensors", a);
            mutate_json_file(scfg, cfg, r);
        } else {
            snprintf(c->name, sizeof c->name, "adapter: random edit %d of adapter_model.safetensors", i);
            link_into(g_adapter, "adapter_config.json", a);
            mutate_bin_file(sst, st, r, 1024);
        }
        cmd = i % 3;
    }
    if (cmd == 0) {
        eval_args(c, g_model);
        arg(c, "--adapter"), arg(c, "%s", a);
    } else if (cmd == 1) {
        arg(c, "generate"), arg(c, "--model"), arg(c, "%s", g_model), arg(c, "--adapter"), arg(c, "%s", a);
        arg(c, "--prompt"), arg(c, "the cat"), arg(c, "--max-tokens"), arg(c, "8"), arg(c, "--temperature"), arg(c, "0");
    } else {
        arg(c, "merge"), arg(c, "--model"), arg(c, "%s", g_model), arg(c, "--adapter"), arg(c, "%s", a);
        arg(c, "--out"), arg(c, "%s/merged", c->dir);
    }
    free(a), free(cfg), free(st), free(scfg), free(sst);
}

static void resume_args(hcase *c, const char *run) {
    arg(c, "train"), arg(c, "--model"), arg(c, "%s", g_model), arg(c, "--data"), arg(c, "%s", g_data);
    for (size_t k = 0; k < sizeof CK_OPTS / sizeof CK_OPTS[0]; k++) arg(c, "%s", CK_OPTS[k]);
    arg(c, "--resume"), arg(c, "%s", run);
}

static void fam_checkpoint(hcase *c, int i, lg_rng *r) {
    char *run = cpath(c, "run"), *ck = cpath(c, "run/checkpoint"), *ts = cpath(c, "run/checkpoint/trainer_state.json");
    sh("cp -a '%s' '%s'", g_ck, run);
    c->must_fail = 1;
    if (i == 0) {
        snprintf(c->name, sizeof c->name, "checkpoint: RUNDIR/checkpoint.tmp.N is a link to another directory");
        sh("ln -s '%s' '%s/checkpoint.tmp.99999999'", g_victim, run);
    } else if (i == 1) {
        snprintf(c->name, sizeof c->name, "checkpoint: a link inside RUNDIR/checkpoint");
        sh("rm '%s/optimizer.safetensors' && ln -s '%s/keep.txt' '%s/optimizer.safetensors'", ck, g_victim, ck);
    } else if (i == 2) {
        snprintf(c->name, sizeof c->name, "checkpoint: a stranger inside RUNDIR/checkpoint");
        sh("echo x > '%s/notes.txt'", ck);
    } else if (i == 3) {
        snprintf(c->name, sizeof c->name, "checkpoint: RUNDIR/checkpoint.prev is a link");
        sh("ln -s '%s' '%s/checkpoint.prev'", g_victim, run);
    } else if (i == 4) {
        snprintf(c->name, sizeof c->name, "checkpoint: trainer_state.json repeated key");
        char *o = cpath(c, "ts.json");
        json_prepend_field(ts, o, "\"step\": 0, ");
        rename(o, ts);
        free(o);
    } else if (i == 5) {
        snprintf(c->name, sizeof c->name, "checkpoint: step 1e300");
        char *o = cpath(c, "ts.json");
        setkv s = {"step", 1e300, NULL};
        json_edit(ts, o, set_key, &s);
        rename(o, ts);
        free(o);
    } else if (i == 6) {
        snprintf(c->name, sizeof c->name, "checkpoint: NaN in the trainable tensors (checksum still right)");
        c->must_fail = 1;
        /* rewritten with a matching checksum would need the private hash: corrupting is enough */
        char *t = cpath(c, "run/checkpoint/trainable.safetensors");
        size_t n;
        char *d = rfile(t, &n);
        float v = NAN;
        memcpy(d + n - 4, &v, 4);
        wfile(t, d, n);
        free(d), free(t);
    } else if (i == 7) {
        snprintf(c->name, sizeof c->name, "checkpoint: state.bin truncated");
        char *t = cpath(c, "run/checkpoint/state.bin");
        if (truncate(t, 3) != 0) fail_msg("truncate");
        free(t);
    } else if (i == 8) {
        snprintf(c->name, sizeof c->name, "checkpoint: trainer_state.json a directory");
        unlink(ts);
        mkdir(ts, 0755);
    } else {
        c->must_fail = 0;
        static const char *const files[] = {"trainer_state.json", "trainable.safetensors", "optimizer.safetensors",
                                            "state.bin", "metrics.jsonl"};
        const char *f = files[i % 5];
        snprintf(c->name, sizeof c->name, "checkpoint: random edit %d of %s", i, f);
        char *p = pj(ck, f), *o = cpath(c, "edit.tmp");
        if (i % 5 == 0 || i % 5 == 4) mutate_json_file(p, o, r);
        else mutate_bin_file(p, o, r, 256);
        rename(o, p);
        free(p), free(o);
    }
    resume_args(c, run);
    free(run), free(ck), free(ts);
}

static void fam_output(hcase *c, int i, lg_rng *r) {
    (void)r;
    c->must_fail = 1;
    char *pred = cpath(c, "pred.jsonl");
    wtext(pred, KEPT); /* must survive a failed write */
    snprintf(c->keep, sizeof c->keep, "pred.jsonl");
    switch (i) {
    case 0: snprintf(c->name, sizeof c->name, "output: eval --json to a full disk"), eval_args(c, g_model), c->to_full = 1; break;
    case 1:
        snprintf(c->name, sizeof c->name, "output: eval (text) to a full disk");
        arg(c, "eval"), arg(c, "--model"), arg(c, "%s", g_model), arg(c, "--data"), arg(c, "%s", g_data), c->to_full = 1;
        break;
    case 2:
        snprintf(c->name, sizeof c->name, "output: generate to a full disk");
        arg(c, "generate"), arg(c, "--model"), arg(c, "%s", g_model), arg(c, "--prompt"), arg(c, "the cat"),
            arg(c, "--max-tokens"), arg(c, "20"), c->to_full = 1;
        break;
    case 3:
        snprintf(c->name, sizeof c->name, "output: tokenize to a full disk");
        arg(c, "tokenize"), arg(c, "--tokenizer"), arg(c, "%s", g_model), arg(c, "--input"), arg(c, "%s", g_data),
            c->to_full = 1;
        break;
    case 4:
    case 5:
        snprintf(c->name, sizeof c->name, "output: --predictions %s", i == 4 ? "/dev/full" : "on a full disk");
        arg(c, "eval"), arg(c, "--model"), arg(c, "%s", g_model), arg(c, "--task"), arg(c, "sst2"), arg(c, "--data");
        arg(c, "%s", g_sst2), arg(c, "--predictions");
        if (i == 4) arg(c, "/dev/full");
        else arg(c, "%s", pred), c->fsize = 300;
        break;
    case 6:
        snprintf(c->name, sizeof c->name, "output: --write-rows on a full disk");
        arg(c, "eval"), arg(c, "--task"), arg(c, "sst2"), arg(c, "--data"), arg(c, "%s", g_sst2), arg(c, "--write-rows");
        arg(c, "%s", pred), c->fsize = 60;
        break;
    case 7:
    case 8:
        snprintf(c->name, sizeof c->name, "output: train (%s) on a full disk", i == 7 ? "lora" : "lora-ga");
        arg(c, "train"), arg(c, "--model"), arg(c, "%s", g_model), arg(c, "--data"), arg(c, "%s", g_data);
        arg(c, "--method"), arg(c, i == 7 ? "lora" : "lora-ga"), arg(c, "--steps"), arg(c, "3"), arg(c, "--batch-size");
        arg(c, "2"), arg(c, "--seq-len"), arg(c, "16"), arg(c, "--ga-batches"), arg(c, "2"), arg(c, "--rank"), arg(c, "2");
        arg(c, "--out"), arg(c, "%s/run", c->dir), c->fsize = 200;
        snprintf(c->absent, sizeof c->absent, "run");
        break;
    case 9:
        snprintf(c->name, sizeof c->name, "output: merge on a full disk");
        arg(c, "merge"), arg(c, "--model"), arg(c, "%s", g_model), arg(c, "--adapter"), arg(c, "%s", g_adapter);
        arg(c, "--out"), arg(c, "%s/merged", c->dir), c->fsize = 4096;
        snprintf(c->absent, sizeof c->absent, "merged");
        break;
    case 10:
        snprintf(c->name, sizeof c->name, "output: --dump-logits on a full disk");
        eval_args(c, g_model), arg(c, "--dump-logits"), arg(c, "%s/logits.safetensors", c->dir), c->fsize = 4096;
        snprintf(c->absent, sizeof c->absent, "logits.safetensors");
        break;
    case 11:
        snprintf(c->name, sizeof c->name, "output: convert on a full disk");
        arg(c, "convert"), arg(c, "--from"), arg(c, "llama2c"), arg(c, "--model"), arg(c, "%s", g_l2c);
        arg(c, "--tokenizer"), arg(c, "%s", g_l2ctok), arg(c, "--out"), arg(c, "%s/conv", c->dir), c->fsize = 4096;
        snprintf(c->absent, sizeof c->absent, "conv");
        break;
    case 12:
        snprintf(c->name, sizeof c->name, "output: train --save-every on a full disk");
        arg(c, "train"), arg(c, "--model"), arg(c, "%s", g_model), arg(c, "--data"), arg(c, "%s", g_data);
        for (size_t k = 0; k < sizeof CK_OPTS / sizeof CK_OPTS[0]; k++) arg(c, "%s", CK_OPTS[k]);
        arg(c, "--out"), arg(c, "%s/run", c->dir), c->fsize = 20000;
        break;
    default:
        snprintf(c->name, sizeof c->name, "output: generate --stats to a full disk");
        arg(c, "generate"), arg(c, "--model"), arg(c, "%s", g_model), arg(c, "--prompt"), arg(c, "the"), arg(c, "--stats");
        c->to_full = 1;
    }
    free(pred);
}

static void fam_options(hcase *c, int i, lg_rng *r) {
    (void)r;
    c->must_fail = 1;
    static const struct {
        const char *what, *method, *opt, *val;
    } o[] = {{"full fine-tuning at lr 1e4", "full", "--lr", "1e4"},
             {"LoRA at lr 1e4", "lora", "--lr", "1e4"},
             {"LoRA-GA sketch k 3 < 2r", "lora-ga", "--ga-sketch-k", "3"},
             {"LoRA-GA gamma 0", "lora-ga", "--ga-gamma", "0"},
             {"LoRA-GA gamma -5", "lora-ga", "--ga-gamma", "-5"},
             {"LoRA-GA gamma nan", "lora-ga", "--ga-gamma", "nan"},
             {"LoRA-GA sketch k -1", "lora-ga", "--ga-sketch-k", "-1"},
             {"seq-len 10^6", "lora", "--seq-len", "1000000"},
             {"batch size 0", "lora", "--batch-size", "0"},
             {"LoRA-GA gamma inf", "lora-ga", "--ga-gamma", "inf"}};
    snprintf(c->name, sizeof c->name, "options: %s", o[i].what);
    arg(c, "train"), arg(c, "--model"), arg(c, "%s", g_model), arg(c, "--data"), arg(c, "%s", g_data);
    arg(c, "--method"), arg(c, "%s", o[i].method), arg(c, "--rank"), arg(c, "4"), arg(c, "--ga-batches"), arg(c, "2");
    arg(c, "--ga-mode"), arg(c, "sketch"), arg(c, "--steps"), arg(c, "8"), arg(c, "--batch-size"), arg(c, "4");
    arg(c, "--seq-len"), arg(c, "16"), arg(c, "%s", o[i].opt), arg(c, "%s", o[i].val);
    arg(c, "--out"), arg(c, "%s/run", c->dir);
}

/* The 50 MB cases: written here, run, and removed right away (c->big). */
static void fam_huge(hcase *c, int i, lg_rng *r) {
    (void)r;
    const size_t N = 50u << 20;
    c->big = 1;
    c->must_fail = 0;
    char *f = cpath(c, "big");
    FILE *o = NULL;
    if (i == 0 || i == 1) {
        snprintf(c->name, sizeof c->name, "50 MB: %s", i == 0 ? "one JSONL row of words (eval)" : "one JSONL word (train)");
        o = fopen(f, "w");
        fputs("{\"text\": \"", o);
        for (size_t k = 0; k < N / 16; k++) fputs(i == 0 ? "the cat sat on a" : "aaaaaaaaaaaaaaaa", o);
        fputs("\"}\n{\"text\": \"the cat\"}\n", o);
        fclose(o);
        char *d = cpath(c, "big.jsonl");
        rename(f, d);
        if (i == 0) {
            arg(c, "eval"), arg(c, "--model"), arg(c, "%s", g_model), arg(c, "--data"), arg(c, "%s", d), arg(c, "--json");
        } else {
            arg(c, "train"), arg(c, "--model"), arg(c, "%s", g_model), arg(c, "--data"), arg(c, "%s", d);
            arg(c, "--method"), arg(c, "lora"), arg(c, "--steps"), arg(c, "1"), arg(c, "--batch-size"), arg(c, "2");
            arg(c, "--seq-len"), arg(c, "16"), arg(c, "--out"), arg(c, "%s/run", c->dir);
        }
        free(d);
    } else if (i == 2 || i == 3) {
        const char *name = i == 2 ? "config.json" : "tokenizer.json";
        snprintf(c->name, sizeof c->name, "50 MB: %s with a huge extra field", name);
        char *m = model_copy(c, name), *dst = pj(m, name), *src = pj(g_model, name);
        size_t n;
        char *t = rfile(src, &n);
        o = fopen(dst, "w");
        fputs("{\"padding\": \"", o);
        for (size_t k = 0; k < N / 16; k++) fputs("0123456789abcdef", o);
        fputs("\",", o);
        fputs(strchr(t, '{') + 1, o);
        fclose(o);
        eval_args(c, m);
        free(t), free(m), free(dst), free(src);
    } else if (i == 4) {
        snprintf(c->name, sizeof c->name, "50 MB: adapter_config.json with a huge extra field");
        char *a = cpath(c, "adapter"), *dst = pj(a, "adapter_config.json"), *src = pj(g_adapter, "adapter_config.json");
        mkdir(a, 0755);
        link_into(g_adapter, "adapter_model.safetensors", a);
        size_t n;
        char *t = rfile(src, &n);
        o = fopen(dst, "w");
        fputs("{\"padding\": \"", o);
        for (size_t k = 0; k < N / 16; k++) fputs("0123456789abcdef", o);
        fputs("\",", o);
        fputs(strchr(t, '{') + 1, o);
        fclose(o);
        eval_args(c, g_model);
        arg(c, "--adapter"), arg(c, "%s", a);
        free(t), free(a), free(dst), free(src);
    } else {
        snprintf(c->name, sizeof c->name, "50 MB: a prompt/completion row of words (eval, text)");
        o = fopen(f, "w");
        fputs("{\"prompt\": \"", o);
        for (size_t k = 0; k < N / 32; k++) fputs("the cat sat on a", o);
        fputs("\", \"completion\": \"", o);
        for (size_t k = 0; k < N / 32; k++) fputs("the dog ran on a", o);
        fputs("\"}\n", o);
        fclose(o);
        char *d = cpath(c, "big.jsonl");
        rename(f, d);
        arg(c, "eval"), arg(c, "--model"), arg(c, "%s", g_model), arg(c, "--data"), arg(c, "%s", d), arg(c, "--json");
        c->must_fail = 1; /* the prompt alone fills the context: no loss token, "no usable examples" */
        free(d);
    }
    free(f);
}

static const struct {
    const char *name;
    void (*gen)(hcase *, int, lg_rng *);
    int n;
} FAMILIES[] = {
    {"config.json", fam_config, 57},  {"safetensors", fam_safetensors, 70}, {"tokenizer.json", fam_tokjson, 60},
    {"tokenizer.bin", fam_tokbin, 40}, {"gguf", fam_gguf, 60},               {"llama2.c", fam_llama2c, 45},
    {"jsonl", fam_jsonl, 80},          {"adapter", fam_adapter, 60},         {"checkpoint", fam_checkpoint, 50},
    {"output", fam_output, 14},        {"options", fam_options, 10},         {"50 MB", fam_huge, 6},
};
#define NFAM ((int)(sizeof FAMILIES / sizeof FAMILIES[0]))

/* ---- running and classifying ------------------------------------------------------------------- */

typedef struct {
    int active, which; /* which: 0 sanitised, 1 optimised */
    pid_t pid;
    double t0;
    hcase c;
    int cls[2];
    long rss_kb[2];
    int status[2];
    char err[2][1600]; /* the tail of each run's stderr (the directory is made anew between runs) */
    int fam, idx, num; /* family, variant in it, case number (its directory) */
    uint64_t seed;
} slot;

/* (Re)make a case's directory from its family, index and seed: the second run gets the same files. */
static void gen_case(slot *s, const char *root) {
    char cmd[1400];
    memset(&s->c, 0, sizeof s->c);
    snprintf(s->c.family, sizeof s->c.family, "%s", FAMILIES[s->fam].name);
    snprintf(s->c.dir, sizeof s->c.dir, "%s/%d", root, s->num);
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", s->c.dir, s->c.dir);
    if (system(cmd) != 0) fail_msg("%s", cmd);
    lg_rng r;
    lg_rng_seed(&r, s->seed);
    FAMILIES[s->fam].gen(&s->c, s->idx, &r);
}

static pid_t launch(hcase *c, int which) {
    char out[700], err[700];
    snprintf(out, sizeof out, "%s/stdout.%d", c->dir, which);
    snprintf(err, sizeof err, "%s/stderr.%d", c->dir, which);
    char *argv[80];
    int n = 0;
    argv[n++] = (char *)(which ? g_rel : g_san);
    for (size_t p = 0; p < c->argn && n < 78; p += strlen(c->argbuf + p) + 1) argv[n++] = c->argbuf + p;
    argv[n] = NULL;
    fflush(NULL);
    pid_t pid = fork();
    if (pid != 0) return pid;
    int fo = open(c->to_full ? "/dev/full" : out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int fe = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fo, 1), dup2(fe, 2);
    close(fo), close(fe);
    setpgid(0, 0);
    char asan[256];
    snprintf(asan, sizeof asan,
             "detect_leaks=1:allocator_may_return_null=1:max_allocation_size_mb=%d:hard_rss_limit_mb=%d:"
             "exitcode=99:abort_on_error=0:malloc_context_size=8",
             LIMIT_MB, LIMIT_MB);
    setenv("ASAN_OPTIONS", asan, 1);
    setenv("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1:exitcode=99", 1);
    setenv("OMP_NUM_THREADS", "1", 1);
    /* limits last: this forked test process runs under ASan, which needs its own address space */
    if (c->fsize) {
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit rl = {(rlim_t)c->fsize, (rlim_t)c->fsize};
        setrlimit(RLIMIT_FSIZE, &rl);
    }
    if (which) { /* the optimised build: a plain address-space limit */
        struct rlimit rl = {(rlim_t)4 << 30, (rlim_t)4 << 30};
        setrlimit(RLIMIT_AS, &rl);
    }
    execv(argv[0], argv);
    _exit(127);
}

static int classify(const hcase *c, int which, int status, int hung, long rss_kb, char *tail, size_t cap) {
    char path[700];
    snprintf(path, sizeof path, "%s/stderr.%d", c->dir, which);
    char *e = NULL;
    size_t n = 0;
    if (lg_read_file(path, &e, &n) != 0) e = calloc(1, 1), n = 0;
    snprintf(tail, cap, "%s", n >= cap ? e + n - (cap - 1) : e);
    int cls;
    if (hung) cls = C_HANG;
    else if (strstr(e, "out of memory allocating") || strstr(e, "hard rss limit") ||
             strstr(e, "allocation-size-too-big") || strstr(e, "requested allocation size") ||
             rss_kb > (long)LIMIT_MB * 1024)
        cls = C_HUGE;
    else if (!WIFEXITED(status) || strstr(e, "ERROR: AddressSanitizer") || strstr(e, "runtime error:") ||
             strstr(e, "ERROR: LeakSanitizer") || strstr(e, "Sanitizer"))
        cls = C_CRASH;
    else if (WEXITSTATUS(status) == 0) cls = c->must_fail ? C_WRONG0 : C_ACCEPTED;
    else if ((WEXITSTATUS(status) == 1 || WEXITSTATUS(status) == 2) && strstr(e, "loraga")) cls = C_CLEAN;
    else cls = C_CRASH; /* another status, or an error without a word */
    free(e);
    if (cls <= C_ACCEPTED && c->keep[0]) { /* a failed (or any) write must leave an existing file as it was */
        char *k = pj(c->dir, c->keep), *t = NULL;
        if (lg_read_file(k, &t, NULL) != 0 || strcmp(t, KEPT)) cls = C_LOST;
        free(k), free(t);
    }
    if (cls == C_CLEAN && c->absent[0]) { /* and a failed run leaves no output that looks finished */
        char *a = pj(c->dir, c->absent);
        if (lg_file_exists(a)) cls = C_LOST;
        free(a);
    }
    return cls;
}

static void report_bad(const slot *s, int which) {
    print_message("BAD [%s build] %s: %s (status %d, peak RSS %.0f MB)\n  args:", which ? "optimised" : "sanitised",
                  s->c.name, CLASS[s->cls[which]],
                  WIFEXITED(s->status[which]) ? WEXITSTATUS(s->status[which]) : -WTERMSIG(s->status[which]),
                  s->rss_kb[which] / 1024.0);
    for (size_t p = 0; p < s->c.argn; p += strlen(s->c.argbuf + p) + 1) print_message(" %s", s->c.argbuf + p);
    print_message("\n  stderr: %s\n", s->err[which]);
}

static void test_hostile_corpus(void **state) {
    (void)state;
    make_fixtures();
    const char *jv = getenv("LORAGA_HOSTILE_JOBS");
    int jobs = jv ? atoi(jv) : 2;
    if (jobs < 1 || jobs > 16) jobs = 2;
    char cases_root[600];
    snprintf(cases_root, sizeof cases_root, "%s/cases", g_tmp);
    mkdir(cases_root, 0755);
    int counts[NFAM][C_N], total[C_N], ncases = 0, nruns = 0, bad = 0;
    long max_rss[2] = {0, 0};
    char max_rss_case[2][160] = {"", ""};
    memset(counts, 0, sizeof counts), memset(total, 0, sizeof total);
    slot *sl = calloc((size_t)jobs, sizeof *sl);
    int fam = 0, idx = 0, running = 0;
    double t_start = lg_now();
    for (;;) {
        /* start cases while a slot is free (a 50 MB case runs alone) */
        int big_running = 0;
        for (int k = 0; k < jobs; k++) big_running |= sl[k].active && sl[k].c.big;
        for (int k = 0; k < jobs && fam < NFAM && !big_running; k++) {
            if (sl[k].active) continue;
            if (FAMILIES[fam].gen == fam_huge && running > 0) break;
            slot *s = &sl[k];
            memset(s, 0, sizeof *s);
            s->fam = fam, s->idx = idx, s->num = ncases;
            s->seed = 0x486f7374696c65ull + (uint64_t)ncases * 7919u;
            gen_case(s, cases_root);
            ncases++;
            if (++idx == FAMILIES[fam].n) fam++, idx = 0;
            s->active = 1;
            s->which = 0;
            s->t0 = lg_now();
            s->pid = launch(&s->c, 0);
            running++;
            if (s->c.big) break;
        }
        if (!running) break;
        int status;
        struct rusage ru;
        pid_t pid = wait4(-1, &status, WNOHANG, &ru);
        if (pid <= 0) {
            usleep(2000);
            for (int k = 0; k < jobs; k++) /* time limits */
                if (sl[k].active && lg_now() - sl[k].t0 > (sl[k].which ? REL_TIMEOUT : SAN_TIMEOUT) && sl[k].pid > 0) {
                    kill(-sl[k].pid, SIGKILL);
                    kill(sl[k].pid, SIGKILL);
                    sl[k].cls[sl[k].which] = C_HANG;
                    sl[k].pid = -sl[k].pid; /* marked: the next wait of it is the hang */
                }
            continue;
        }
        slot *s = NULL;
        for (int k = 0; k < jobs; k++)
            if (sl[k].active && (sl[k].pid == pid || sl[k].pid == -pid)) s = &sl[k];
        if (!s) continue;
        int w = s->which, hung = s->pid < 0;
        s->status[w] = status;
        s->rss_kb[w] = ru.ru_maxrss;
        s->cls[w] = classify(&s->c, w, status, hung, ru.ru_maxrss, s->err[w], sizeof s->err[w]);
        if (ru.ru_maxrss > max_rss[w]) {
            max_rss[w] = ru.ru_maxrss;
            snprintf(max_rss_case[w], sizeof max_rss_case[w], "%s", s->c.name);
        }
        /* then the optimised build on the same case, its files made anew: every crafted case and one
         * random mutation in four (the sanitised runs are the stricter test; the suite's time counts) */
        if (w == 0 && (!strstr(s->c.name, "random edit") || s->num % 4 == 0)) {
            gen_case(s, cases_root);
            s->which = 1;
            s->t0 = lg_now();
            s->pid = launch(&s->c, 1);
            continue;
        }
        if (getenv("LORAGA_HOSTILE_KEEP")) print_message("case %d [%s]: %s\n", s->num, CLASS[s->cls[0]], s->c.name);
        for (int k = 0; k <= w; k++) {
            nruns++;
            counts[s->fam][s->cls[k]]++;
            total[s->cls[k]]++;
            if (s->cls[k] > C_ACCEPTED) {
                report_bad(s, k);
                bad++;
            }
        }
        if (s->c.big || !getenv("LORAGA_HOSTILE_KEEP")) {
            char cmd[700];
            snprintf(cmd, sizeof cmd, "rm -rf '%s'", s->c.dir);
            if (system(cmd) != 0) fail_msg("%s", cmd);
        }
        s->active = 0;
        running--;
    }
    free(sl);
    print_message("hostile corpus: %d cases, %d runs (each case by the sanitised CLI, crafted ones and a quarter of the "
                  "random ones also by the optimised CLI) in %.0f s\n",
                  ncases, nruns, lg_now() - t_start);
    print_message("%-16s", "family");
    for (int k = 0; k < C_N; k++) print_message(" %12s", CLASS[k]);
    print_message("\n");
    for (int f = 0; f < NFAM; f++) {
        print_message("%-16s", FAMILIES[f].name);
        for (int k = 0; k < C_N; k++) print_message(" %12d", counts[f][k]);
        print_message("\n");
    }
    print_message("%-16s", "all runs");
    for (int k = 0; k < C_N; k++) print_message(" %12d", total[k]);
    print_message("\npeak RSS: sanitised %.0f MB (%s), optimised %.0f MB (%s)\n", max_rss[0] / 1024.0, max_rss_case[0],
                  max_rss[1] / 1024.0, max_rss_case[1]);
    assert_true(ncases >= 500);
    assert_int_equal(bad, 0);
}

/* ---- data safety ------------------------------------------------------------------------------- */

static int victim_intact(void) {
    char p[700];
    snprintf(p, sizeof p, "%s/keep.txt", g_victim);
    char *t;
    if (lg_read_file(p, &t, NULL) != 0) return 0;
    int ok = !strcmp(t, "precious\n");
    free(t);
    return ok;
}

static int run_cli(const char *bin, const char *fmt, ...) LG_PRINTF(2, 3);
static int run_cli(const char *bin, const char *fmt, ...) {
    char cmd[8192];
    int k = snprintf(cmd, sizeof cmd, "'%s' ", bin);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd + k, sizeof cmd - (size_t)k, fmt, ap);
    va_end(ap);
    char out[4096];
    return lg_test_run(cmd, out, sizeof out);
}

static void test_links_in_a_run_directory_lose_nothing(void **state) {
    (void)state;
    make_fixtures();
    char ckopts[512] = "";
    for (size_t i = 0; i < sizeof CK_OPTS / sizeof CK_OPTS[0]; i++)
        snprintf(ckopts + strlen(ckopts), sizeof ckopts - strlen(ckopts), " %s", CK_OPTS[i]);
    /* 1. a link among the run directory's entries: refused, the directory it points to untouched */
    static const char *const planted[] = {"checkpoint.tmp.99999999", "checkpoint.prev", "checkpoint.tmp.1"};
    for (int k = 0; k < 3; k++) {
        char run[700];
        snprintf(run, sizeof run, "%s/links%d", g_tmp, k);
        sh("rm -rf '%s' && cp -a '%s' '%s' && ln -s '%s' '%s/%s'", run, g_ck, run, g_victim, run, planted[k]);
        int rc = run_cli(g_rel, "train --model '%s' --data '%s' %s --resume '%s' 2>&1", g_model, g_data, ckopts, run);
        assert_int_not_equal(rc, 0);
        assert_true(victim_intact());
    }
    /* 2. a link inside the checkpoint: refused, its target untouched */
    char run[700];
    snprintf(run, sizeof run, "%s/links-in", g_tmp);
    sh("rm -rf '%s' && cp -a '%s' '%s' && rm '%s/checkpoint/state.bin' && ln -s '%s/keep.txt' '%s/checkpoint/state.bin'",
       run, g_ck, run, run, g_victim, run);
    assert_int_not_equal(run_cli(g_rel, "train --model '%s' --data '%s' %s --resume '%s' 2>&1", g_model, g_data, ckopts, run), 0);
    assert_true(victim_intact());
    /* 3. a killed run's RUNDIR.tmp.<pid> holding a link to the victim: removed on the next run, the
     * victim untouched; and the resumed run finishes */
    snprintf(run, sizeof run, "%s/stale", g_tmp);
    sh("rm -rf '%s' '%s'.tmp.* && cp -a '%s' '%s' && mkdir '%s.tmp.99999998' && ln -s '%s' '%s.tmp.99999998/inner' && "
       "echo x > '%s.tmp.99999998/metrics.jsonl'",
       run, run, g_ck, run, run, g_victim, run, run);
    assert_int_equal(run_cli(g_rel, "train --model '%s' --data '%s' %s --resume '%s' 2>&1", g_model, g_data, ckopts, run), 0);
    char stale[800];
    snprintf(stale, sizeof stale, "%s.tmp.99999998", run);
    assert_false(lg_file_exists(stale));
    assert_true(victim_intact());
    char *ad = pj(run, "adapter_model.safetensors");
    assert_true(lg_file_exists(ad));
    free(ad);
    /* 4. the same for a fresh run without checkpoints (lg_outdir_begin) */
    snprintf(run, sizeof run, "%s/fresh", g_tmp);
    sh("mkdir '%s.tmp.99999997' && ln -s '%s' '%s.tmp.99999997/inner'", run, g_victim, run);
    assert_int_equal(run_cli(g_rel, "train --model '%s' --data '%s' --method lora --steps 1 --batch-size 2 "
                                     "--seq-len 16 --out '%s' 2>&1", g_model, g_data, run), 0);
    snprintf(stale, sizeof stale, "%s.tmp.99999997", run);
    assert_false(lg_file_exists(stale));
    assert_true(victim_intact());
    /* 5. a link as the whole output of a fresh run is never written through */
    char out[700];
    snprintf(out, sizeof out, "%s/out-link", g_tmp);
    sh("ln -sfn '%s' '%s'", g_victim, out);
    assert_int_not_equal(run_cli(g_rel, "train --model '%s' --data '%s' --method lora --steps 1 --batch-size 2 "
                                         "--seq-len 16 --out '%s' 2>&1", g_model, g_data, out), 0);
    assert_true(victim_intact());
}

/* A learning rate that wrecks the model stops the run with a message (it used to finish with exit 0). */
static void test_divergence_stops(void **state) {
    (void)state;
    make_fixtures();
    char out[700];
    snprintf(out, sizeof out, "%s/diverge", g_tmp);
    char cmd[4096], txt[8192];
    snprintf(cmd, sizeof cmd,
             "'%s' train --model '%s' --data '%s' --method full --steps 20 --batch-size 4 --seq-len 16 --lr 1e4 "
             "--out '%s' 2>&1",
             g_rel, g_model, g_data, out);
    assert_int_equal(lg_test_run(cmd, txt, sizeof txt), 1);
    assert_non_null(strstr(txt, "training diverged"));
    assert_false(lg_file_exists(out));
    /* the same run at a sane rate finishes */
    snprintf(cmd, sizeof cmd,
             "'%s' train --model '%s' --data '%s' --method full --steps 6 --batch-size 4 --seq-len 16 --lr 1e-3 "
             "--out '%s' 2>&1",
             g_rel, g_model, g_data, out);
    assert_int_equal(lg_test_run(cmd, txt, sizeof txt), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_links_in_a_run_directory_lose_nothing),
        cmocka_unit_test(test_divergence_stops),
        cmocka_unit_test(test_hostile_corpus),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
