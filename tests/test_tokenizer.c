/* test_tokenizer.c — tokenizers against reference ids:
 *  - llama.cpp's 47 test vectors for GPT-2 (tokenizer.json) and LLaMA-2 SPM (tokenizer.bin);
 *  - tests/golden/tokenizer_golden.jsonl, made by scripts/tokenizer_golden.py with Hugging Face
 *    `tokenizers`: GPT-2, Mistral, pipeline variants (tests/golden/tokenizer_variants.json) and
 *    the tokenizer.json files our save_hf wrote from llama2.c tokenizer.bin files;
 *  - round trips, invalid UTF-8, load errors, save_hf. */
#include "testutil.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/util.h"
#include "tokenizer/tokenizer.h"

#define GOLDEN "tests/golden/tokenizer_golden.jsonl"
#define VARIANTS "tests/golden/tokenizer_variants.json"

static lg_tokenizer *load_shared(const char *rel) {
    char *p = lg_test_shared(rel);
    if (!p) return NULL;
    lg_tokenizer *t = NULL;
    int rc = lg_tokenizer_load(p, &t);
    if (rc) print_message("load %s: %s\n", p, lg_last_error());
    free(p);
    assert_int_equal(rc, 0);
    return t;
}

/* ---- llama.cpp vectors ---------------------------------------------------------- */
static int run_vectors(lg_tokenizer *t, const char *inp_path, const char *out_path) {
    char *inp, *out;
    size_t ni, no;
    assert_int_equal(lg_read_file(inp_path, &inp, &ni), 0);
    assert_int_equal(lg_read_file(out_path, &out, &no), 0);
    const char *sep = "\n__ggml_vocab_test__\n";
    char *p = inp, *o = out;
    int ok = 0, total = 0;
    for (;;) {
        char *e = strstr(p, sep);
        size_t n = e ? (size_t)(e - p) : strlen(p);
        char *line = o, *le = strchr(o, '\n');
        if (le) *le = 0;
        o = le ? le + 1 : o + strlen(o);
        int *ids, nid;
        assert_int_equal(lg_tokenizer_encode(t, p, n, 0, &ids, &nid), 0);
        char buf[16384];
        size_t bl = 0;
        for (int i = 0; i < nid && bl < sizeof buf - 16; i++) bl += (size_t)snprintf(buf + bl, sizeof buf - bl, " %d", ids[i]);
        buf[bl] = 0;
        total++;
        if (!strcmp(buf, line)) ok++;
        else print_message("case %d (%.*s): got%s\n  expected%s\n", total, (int)LG_MIN(n, 40), p, buf, line);
        char *dec;
        size_t dl;
        assert_int_equal(lg_tokenizer_decode(t, ids, nid, &dec, &dl), 0);
        if (dl != n || memcmp(dec, p, n)) {
            print_message("case %d: decode does not give the input back: [%s]\n", total, dec);
            ok = -1000;
        }
        free(dec);
        free(ids);
        if (!e) break;
        p = e + strlen(sep);
    }
    print_message("%d/%d vectors match\n", ok, total);
    free(inp);
    free(out);
    assert_int_equal(total, 47);
    return ok;
}

static void test_vectors_gpt2(void **state) {
    (void)state;
    LG_REQUIRE_SHARED(inp, "tokenizer_test_vectors/ggml-vocab-gpt-2.gguf.inp");
    char *out = lg_test_shared("tokenizer_test_vectors/ggml-vocab-gpt-2.gguf.out");
    lg_tokenizer *t = load_shared("tokenizer_gpt2_bpe/tokenizer.json");
    assert_int_equal(run_vectors(t, inp, out), 47);
    lg_tokenizer_free(t);
    free(inp);
    free(out);
}

static void test_vectors_llama_spm(void **state) {
    (void)state;
    LG_REQUIRE_SHARED(inp, "tokenizer_test_vectors/ggml-vocab-llama-spm.gguf.inp");
    char *out = lg_test_shared("tokenizer_test_vectors/ggml-vocab-llama-spm.gguf.out");
    lg_tokenizer *t = load_shared("tokenizer_llama2_llama2c/tokenizer.bin");
    assert_int_equal(run_vectors(t, inp, out), 47);
    lg_tokenizer_free(t);
    free(inp);
    free(out);
}

/* ---- golden ids from HF tokenizers ------------------------------------------------ */
typedef struct {
    char name[64];
    lg_tokenizer *t;  /* as the golden names it */
    lg_tokenizer *t2; /* for llama2.c ones: the tokenizer.json our save_hf wrote, reloaded */
} named_tok;

static char *build_variant(const cJSON *v, char **base_json_path) {
    const char *base = cJSON_GetObjectItem(v, "base")->valuestring;
    const char *rel = !strcmp(base, "gpt2") ? "tokenizer_gpt2_bpe/tokenizer.json" : "tokenizer_mistral7b_hf/tokenizer.json";
    char *p = lg_test_shared(rel);
    char *txt;
    size_t n;
    assert_int_equal(lg_read_file(p, &txt, &n), 0);
    *base_json_path = p;
    cJSON *j = cJSON_ParseWithLength(txt, n);
    free(txt);
    assert_non_null(j);
    const cJSON *x;
    cJSON_ArrayForEach(x, cJSON_GetObjectItem(v, "set")) {
        cJSON_DeleteItemFromObjectCaseSensitive(j, x->string);
        cJSON_AddItemToObject(j, x->string, cJSON_Duplicate(x, 1));
    }
    cJSON *model = cJSON_GetObjectItem(j, "model");
    cJSON_ArrayForEach(x, cJSON_GetObjectItem(v, "model_set")) {
        cJSON_DeleteItemFromObjectCaseSensitive(model, x->string);
        cJSON_AddItemToObject(model, x->string, cJSON_Duplicate(x, 1));
    }
    cJSON *added = cJSON_GetObjectItem(j, "added_tokens");
    cJSON_ArrayForEach(x, cJSON_GetObjectItem(v, "added_tokens_append")) cJSON_AddItemToArray(added, cJSON_Duplicate(x, 1));
    if (cJSON_IsTrue(cJSON_GetObjectItem(v, "merges_as_pairs"))) {
        cJSON *merges = cJSON_GetObjectItem(model, "merges"), *pairs = cJSON_CreateArray();
        cJSON_ArrayForEach(x, merges) {
            char *s = lg_strdup(x->valuestring), *sp = strchr(s, ' ');
            assert_non_null(sp);
            *sp = 0;
            const char *ab[2] = {s, sp + 1};
            cJSON_AddItemToArray(pairs, cJSON_CreateStringArray(ab, 2));
            free(s);
        }
        cJSON_ReplaceItemInObjectCaseSensitive(model, "merges", pairs);
    }
    char *out = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return out;
}

static named_tok *get_tok(named_tok *toks, int *nt, const char *name, const cJSON *variants) {
    for (int i = 0; i < *nt; i++)
        if (!strcmp(toks[i].name, name)) return &toks[i];
    named_tok *r = &toks[(*nt)++];
    memset(r, 0, sizeof *r);
    snprintf(r->name, sizeof r->name, "%s", name);
    const cJSON *v = cJSON_GetObjectItem(variants, name);
    if (!strcmp(name, "gpt2")) r->t = load_shared("tokenizer_gpt2_bpe/tokenizer.json");
    else if (!strcmp(name, "mistral")) r->t = load_shared("tokenizer_mistral7b_hf/tokenizer.json");
    else if (!strcmp(name, "tok512") || !strcmp(name, "llama2")) {
        r->t = load_shared(!strcmp(name, "tok512") ? "llama2c_stories260K/tok512.bin" : "tokenizer_llama2_llama2c/tokenizer.bin");
        char *dir = lg_test_tmpdir();
        assert_int_equal(lg_tokenizer_save_hf(r->t, dir), 0);
        int rc = lg_tokenizer_load(dir, &r->t2);
        if (rc) print_message("reload of saved %s: %s\n", name, lg_last_error());
        assert_int_equal(rc, 0);
        char cmd[600];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        assert_int_equal(system(cmd), 0);
        free(dir);
    } else if (v) {
        char *base = NULL;
        char *json = build_variant(v, &base);
        int rc = lg_tokenizer_load_json_mem(json, strlen(json), NULL, 0, name, &r->t);
        if (rc) print_message("variant %s: %s\n", name, lg_last_error());
        assert_int_equal(rc, 0);
        free(json);
        free(base);
    } else {
        fail_msg("golden names an unknown tokenizer %s", name);
    }
    return r;
}

static int ids_equal(const cJSON *arr, const int *ids, int n) {
    if (cJSON_GetArraySize(arr) != n) return 0;
    int i = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, arr) if ((int)x->valuedouble != ids[i++]) return 0;
    return 1;
}

static int check_row(const lg_tokenizer *t, const char *tname, const cJSON *row, int check_decode) {
    const char *text = cJSON_GetObjectItem(row, "text")->valuestring;
    int bad = 0;
    for (int sp = 0; sp < 2; sp++) {
        int *ids, n;
        if (lg_tokenizer_encode(t, text, strlen(text), sp, &ids, &n)) {
            print_message("%s: encode failed: %s\n", tname, lg_last_error());
            return 1;
        }
        const cJSON *want = cJSON_GetObjectItem(row, sp ? "ids_special" : "ids");
        if (!ids_equal(want, ids, n)) {
            char *w = cJSON_PrintUnformatted(want);
            print_message("%s special=%d text=\"%.60s\": got %d ids, expected %s\n", tname, sp, text, n, w);
            for (int i = 0; i < n && i < 40; i++) print_message(" %d", ids[i]);
            print_message("\n");
            free(w);
            bad++;
        }
        if (check_decode) {
            char *dec;
            size_t dl;
            const char *wd = cJSON_GetObjectItem(row, sp ? "decoded_special" : "decoded")->valuestring;
            const cJSON *wids = cJSON_GetObjectItem(row, sp ? "ids_special" : "ids");
            int m = cJSON_GetArraySize(wids), k = 0;
            int *gi = lg_malloc(sizeof(int) * (size_t)(m + 1));
            const cJSON *x;
            cJSON_ArrayForEach(x, wids) gi[k++] = (int)x->valuedouble;
            assert_int_equal(lg_tokenizer_decode(t, gi, m, &dec, &dl), 0);
            if (dl != strlen(wd) || memcmp(dec, wd, dl)) {
                print_message("%s decode(special=%d) of \"%.60s\": got \"%s\" expected \"%s\"\n", tname, sp, text, dec, wd);
                bad++;
            }
            free(dec);
            free(gi);
        }
        free(ids);
    }
    return bad;
}

static void test_golden(void **state) {
    (void)state;
    LG_REQUIRE_SHARED(dummy, "tokenizer_gpt2_bpe/tokenizer.json");
    free(dummy);
    char *vtxt, *gtxt;
    size_t vn, gn;
    assert_int_equal(lg_read_file(VARIANTS, &vtxt, &vn), 0);
    assert_int_equal(lg_read_file(GOLDEN, &gtxt, &gn), 0);
    cJSON *variants = cJSON_ParseWithLength(vtxt, vn);
    assert_non_null(variants);
    named_tok toks[64];
    int nt = 0, rows = 0, bad = 0, saved_rows = 0;
    for (char *line = gtxt; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        cJSON *row = cJSON_Parse(line);
        assert_non_null(row);
        const char *name = cJSON_GetObjectItem(row, "tokenizer")->valuestring;
        named_tok *nt_ = get_tok(toks, &nt, name, variants);
        bad += check_row(nt_->t, name, row, 1);
        if (nt_->t2) {
            char n2[80];
            snprintf(n2, sizeof n2, "%s (saved tokenizer.json)", name);
            bad += check_row(nt_->t2, n2, row, 1);
            saved_rows++;
        }
        rows++;
        cJSON_Delete(row);
        line = nl ? nl + 1 : NULL;
    }
    print_message("golden: %d rows over %d tokenizers (+%d through saved tokenizer.json), %d mismatches\n", rows, nt,
                  saved_rows, bad);
    for (int i = 0; i < nt; i++) {
        lg_tokenizer_free(toks[i].t);
        lg_tokenizer_free(toks[i].t2);
    }
    cJSON_Delete(variants);
    free(vtxt);
    free(gtxt);
    assert_true(rows > 1000);
    assert_int_equal(bad, 0);
}

/* ---- round trips on random text ------------------------------------------------------ */
static void random_text(lg_rng *r, char *buf, size_t *len, size_t max) {
    static const uint32_t pool[] = {'a', 'b', 'e', 'z', 'Q', ' ', ' ', ' ', '\n', '\t', '0', '7', '.', ',', '\'', '!',
                                    0xE9, 0xFC, 0x4E2D, 0x6587, 0x1F999, 0x200D, 0x2764, 0xFE0F, 0x0301, 0x3000,
                                    0xA0, 0x85, 0x10FFFD, 0x1F600, 0x0E01, 0x0416};
    size_t n = 0;
    size_t want = lg_rng_u64(r) % max;
    while (n + 4 < want) {
        uint32_t cp = pool[lg_rng_u64(r) % (sizeof pool / sizeof pool[0])];
        n += (size_t)snprintf(buf + n, 5, "%s", "");
        char tmp[4];
        int k = 0;
        if (cp < 0x80) tmp[k++] = (char)cp;
        else if (cp < 0x800) tmp[k++] = (char)(0xC0 | (cp >> 6)), tmp[k++] = (char)(0x80 | (cp & 63));
        else if (cp < 0x10000)
            tmp[k++] = (char)(0xE0 | (cp >> 12)), tmp[k++] = (char)(0x80 | ((cp >> 6) & 63)), tmp[k++] = (char)(0x80 | (cp & 63));
        else
            tmp[k++] = (char)(0xF0 | (cp >> 18)), tmp[k++] = (char)(0x80 | ((cp >> 12) & 63)),
            tmp[k++] = (char)(0x80 | ((cp >> 6) & 63)), tmp[k++] = (char)(0x80 | (cp & 63));
        memcpy(buf + n, tmp, (size_t)k);
        n += (size_t)k;
    }
    *len = n;
}

static void roundtrip(const lg_tokenizer *t, const char *name) {
    lg_rng r;
    lg_rng_seed(&r, 1234);
    char buf[1100];
    for (int it = 0; it < 300; it++) {
        size_t n;
        random_text(&r, buf, &n, 1000);
        int *ids, m;
        assert_int_equal(lg_tokenizer_encode(t, buf, n, it & 1, &ids, &m), 0);
        char *dec;
        size_t dl;
        assert_int_equal(lg_tokenizer_decode(t, ids, m, &dec, &dl), 0);
        if (dl != n || memcmp(dec, buf, n)) fail_msg("%s: decode(encode(x)) != x for random text %d", name, it);
        free(dec);
        free(ids);
    }
}

static void test_roundtrip(void **state) {
    (void)state;
    LG_REQUIRE_SHARED(dummy, "tokenizer_gpt2_bpe/tokenizer.json");
    free(dummy);
    const char *paths[] = {"tokenizer_gpt2_bpe/tokenizer.json", "tokenizer_mistral7b_hf/tokenizer.json",
                           "llama2c_stories260K/tok512.bin", "tokenizer_llama2_llama2c/tokenizer.bin"};
    for (int i = 0; i < 4; i++) {
        lg_tokenizer *t = load_shared(paths[i]);
        roundtrip(t, paths[i]);
        lg_tokenizer_free(t);
    }
}

/* ---- invalid UTF-8, specials, accessors ------------------------------------------- */
static void test_invalid_utf8_and_specials(void **state) {
    (void)state;
    LG_REQUIRE_SHARED(dummy, "tokenizer_gpt2_bpe/tokenizer.json");
    free(dummy);
    lg_tokenizer *g = load_shared("tokenizer_gpt2_bpe/tokenizer.json");
    lg_tokenizer *m = load_shared("tokenizer_mistral7b_hf");
    lg_tokenizer *l = load_shared("llama2c_stories260K/tok512.bin");
    const char *bad[] = {"ab\xC3", "\xFF", "a\xC0\x80", "\xED\xA0\x80", "x\xF4\x90\x80\x80", "ok\x80"};
    const size_t badpos[] = {2, 0, 1, 0, 1, 2};
    for (int i = 0; i < 6; i++) {
        lg_tokenizer *ts[3] = {g, m, l};
        for (int k = 0; k < 3; k++) {
            int *ids = (int *)1, n = 5;
            assert_int_equal(lg_tokenizer_encode(ts[k], bad[i], strlen(bad[i]), 0, &ids, &n), -1);
            assert_null(ids);
            assert_int_equal(n, 0);
            char want[64];
            snprintf(want, sizeof want, "at byte %zu", badpos[i]);
            assert_non_null(strstr(lg_last_error(), "invalid UTF-8"));
            assert_non_null(strstr(lg_last_error(), want));
        }
    }
    /* bos / eos */
    assert_int_equal(lg_tokenizer_bos(g), 50256);
    assert_int_equal(lg_tokenizer_eos(g), 50256);
    assert_int_equal(lg_tokenizer_vocab_size(g), 50257);
    assert_int_equal(lg_tokenizer_bos(m), 1);
    assert_int_equal(lg_tokenizer_eos(m), 2);
    assert_int_equal(lg_tokenizer_vocab_size(m), 32000);
    assert_int_equal(lg_tokenizer_bos(l), 1);
    assert_int_equal(lg_tokenizer_eos(l), 2);
    assert_int_equal(lg_tokenizer_vocab_size(l), 512);
    assert_string_equal(lg_tokenizer_id_to_piece(l, 1), "<s>");
    assert_int_equal(lg_tokenizer_piece_to_id(m, "\xE2\x96\x81Hello"), 22557);
    assert_true(lg_tokenizer_is_special(m, 1));
    assert_false(lg_tokenizer_is_special(m, 22557));
    /* add_special: BOS for LLaMA-style, nothing for GPT-2; empty text */
    int *ids, n;
    assert_int_equal(lg_tokenizer_encode(m, "", 0, 1, &ids, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 1);
    free(ids);
    assert_int_equal(lg_tokenizer_encode(g, "", 0, 1, &ids, &n), 0);
    assert_int_equal(n, 0);
    assert_non_null(ids);
    free(ids);
    assert_int_equal(lg_tokenizer_encode(l, "Once", 4, 1, &ids, &n), 0);
    assert_true(n >= 2);
    assert_int_equal(ids[0], 1);
    /* decode keeps or skips specials on request, rejects out-of-range ids */
    char *s;
    size_t sl;
    assert_int_equal(lg_tokenizer_decode(l, ids, n, &s, &sl), 0);
    assert_string_equal(s, "Once");
    free(s);
    free(ids);
    int eot[3] = {15496, 50256, 995};
    assert_int_equal(lg_tokenizer_decode(g, eot, 3, &s, &sl), 0);
    assert_string_equal(s, "Hello world");
    free(s);
    assert_int_equal(lg_tokenizer_decode_ex(g, eot, 3, LG_DECODE_KEEP_SPECIAL, &s, &sl), 0);
    assert_string_equal(s, "Hello<|endoftext|> world");
    free(s);
    int oob[1] = {50257};
    assert_int_equal(lg_tokenizer_decode(g, oob, 1, &s, &sl), -1);
    assert_non_null(strstr(lg_last_error(), "out of range"));
    /* raw bytes: a lone byte token decodes to the byte itself only when asked */
    int half[1] = {3 + 0xE4};
    assert_int_equal(lg_tokenizer_decode(l, half, 1, &s, &sl), 0);
    assert_string_equal(s, "\xEF\xBF\xBD");
    free(s);
    assert_int_equal(lg_tokenizer_decode_ex(l, half, 1, LG_DECODE_RAW_BYTES, &s, &sl), 0);
    assert_int_equal(sl, 1);
    assert_int_equal((unsigned char)s[0], 0xE4);
    free(s);
    lg_tokenizer_free(g);
    lg_tokenizer_free(m);
    lg_tokenizer_free(l);
}

/* ---- load errors --------------------------------------------------------------------- */
static void expect_json_error(const char *json, const char *needle) {
    lg_tokenizer *t = (lg_tokenizer *)1;
    assert_int_equal(lg_tokenizer_load_json_mem(json, strlen(json), NULL, 0, "x.json", &t), -1);
    assert_null(t);
    if (!strstr(lg_last_error(), needle)) fail_msg("error \"%s\" lacks \"%s\"", lg_last_error(), needle);
    assert_non_null(strstr(lg_last_error(), "x.json"));
}

#define MINI_MODEL "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[\"a b\"]}"

static void test_load_errors(void **state) {
    (void)state;
    expect_json_error("{\"model\":", "not valid JSON");
    expect_json_error("[1,2]", "not a JSON object");
    expect_json_error("{}", "no \"model\"");
    expect_json_error("{\"model\":{\"type\":\"Unigram\",\"vocab\":[]}}", "Unigram");
    expect_json_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"a c\"]}}", "not in the vocabulary");
    expect_json_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"a a\"]}}", "merged token");
    expect_json_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":-4}}}", "bad id");
    expect_json_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"aa\"]}}", "is not \"a b\"");
    expect_json_error("{" MINI_MODEL ",\"pre_tokenizer\":{\"type\":\"BertPreTokenizer\"}}", "BertPreTokenizer");
    expect_json_error("{" MINI_MODEL ",\"normalizer\":{\"type\":\"Lowercase\"}}", "Lowercase");
    expect_json_error("{" MINI_MODEL ",\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(\"},"
                      "\"behavior\":\"Isolated\"}}",
                      "does not compile");
    /* a minimal valid one works, merges as pairs too */
    const char *ok = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[[\"a\",\"b\"]]}}";
    lg_tokenizer *t;
    assert_int_equal(lg_tokenizer_load_json_mem(ok, strlen(ok), NULL, 0, "ok.json", &t), 0);
    int *ids, n;
    assert_int_equal(lg_tokenizer_encode(t, "abab", 4, 0, &ids, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], 2);
    assert_int_equal(ids[1], 2);
    free(ids);
    lg_tokenizer_free(t);
    /* tokenizer.bin: truncated / garbage */
    unsigned char bin[64] = {7, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 'a'};
    assert_int_equal(lg_tokenizer_load_llama2c_mem(bin, 13, "t.bin", &t), -1);
    assert_non_null(strstr(lg_last_error(), "t.bin"));
    assert_non_null(strstr(lg_last_error(), "bad length"));
    assert_int_equal(lg_tokenizer_load_llama2c_mem(bin, 6, "t.bin", &t), -1);
    assert_non_null(strstr(lg_last_error(), "truncated"));
    assert_int_equal(lg_tokenizer_load("/nonexistent/dir/tokenizer.json", &t), -1);
    assert_non_null(strstr(lg_last_error(), "/nonexistent/dir/tokenizer.json"));
    char *dir = lg_test_tmpdir();
    assert_int_equal(lg_tokenizer_load(dir, &t), -1);
    assert_non_null(strstr(lg_last_error(), "neither tokenizer.json nor tokenizer.bin"));
    rmdir(dir);
    free(dir);
}

/* ---- save_hf of a tokenizer.json tokenizer writes it back, loadable from the dir ---- */
static void test_save_hf_copy(void **state) {
    (void)state;
    LG_REQUIRE_SHARED(dummy, "tokenizer_mistral7b_hf/tokenizer.json");
    free(dummy);
    lg_tokenizer *m = load_shared("tokenizer_mistral7b_hf");
    char *dir = lg_test_tmpdir();
    assert_int_equal(lg_tokenizer_save_hf(m, dir), 0);
    lg_tokenizer *m2;
    assert_int_equal(lg_tokenizer_load(dir, &m2), 0);
    const char *txt = "Hello <s> world, 你好 🦙";
    int *a, na, *b, nb;
    assert_int_equal(lg_tokenizer_encode(m, txt, strlen(txt), 1, &a, &na), 0);
    assert_int_equal(lg_tokenizer_encode(m2, txt, strlen(txt), 1, &b, &nb), 0);
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, sizeof(int) * (size_t)na);
    assert_int_equal(lg_tokenizer_bos(m2), 1);
    free(a);
    free(b);
    lg_tokenizer_free(m);
    lg_tokenizer_free(m2);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
    free(dir);
}

/* ---- CLI ------------------------------------------------------------------------------ */
static void test_cli_tokenize(void **state) {
    (void)state;
    LG_REQUIRE_SHARED(gpt2, "tokenizer_gpt2_bpe/tokenizer.json");
    char cmd[2048], out[8192];
    if (!lg_file_exists(lg_test_bin())) {
        print_message("skipped: %s not built\n", lg_test_bin());
        free(gpt2);
        skip();
    }
    snprintf(cmd, sizeof cmd, "%s tokenize --tokenizer %s --text 'Hello world' 2>&1", lg_test_bin(), gpt2);
    assert_int_equal(lg_test_run(cmd, out, sizeof out), 0);
    assert_string_equal(out, "[15496,995]\n");
    char *dir = lg_test_tmpdir();
    char rows[700];
    snprintf(rows, sizeof rows, "%s/rows.jsonl", dir);
    const char *content = "{\"text\":\"Hello world\"}\n{\"text\":\" Hello\"}\n\n{\"text\":\"\"}\n";
    assert_int_equal(lg_write_file_atomic(rows, content, strlen(content)), 0);
    snprintf(cmd, sizeof cmd, "%s tokenize --tokenizer %s --input %s 2>&1", lg_test_bin(), gpt2, rows);
    assert_int_equal(lg_test_run(cmd, out, sizeof out), 0);
    assert_string_equal(out, "[15496,995]\n[18435]\n[]\n");
    const char *bad = "{\"text\":\"ok\"}\n{\"txt\":\"no\"}\n";
    assert_int_equal(lg_write_file_atomic(rows, bad, strlen(bad)), 0);
    assert_int_equal(lg_test_run(cmd, out, sizeof out), 1);
    assert_non_null(strstr(out, "rows.jsonl:2:"));
    assert_non_null(strstr(out, "\"text\""));
    char *mis = lg_test_shared("tokenizer_mistral7b_hf");
    snprintf(cmd, sizeof cmd, "%s tokenize --tokenizer %s --add-special --text 'Hello' 2>&1", lg_test_bin(), mis);
    assert_int_equal(lg_test_run(cmd, out, sizeof out), 0);
    assert_string_equal(out, "[1,22557]\n");
    snprintf(cmd, sizeof cmd, "%s tokenize --tokenizer %s 2>&1", lg_test_bin(), mis);
    assert_int_not_equal(lg_test_run(cmd, out, sizeof out), 0);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
    free(dir);
    free(mis);
    free(gpt2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vectors_gpt2),
        cmocka_unit_test(test_vectors_llama_spm),
        cmocka_unit_test(test_golden),
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_invalid_utf8_and_specials),
        cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_save_hf_copy),
        cmocka_unit_test(test_cli_tokenize),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
