/* tok_internal.h — data structures shared by the tokenizer sources (not a public API). */
#ifndef LG_TOK_INTERNAL_H
#define LG_TOK_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "tokenizer/tokenizer.h"

/* ---- UTF-8 ------------------------------------------------------------------ */
/* Length of the UTF-8 sequence starting with lead byte c (1 for bytes that are not leads). */
static inline int lg_utf8_len(unsigned char c) {
    return c < 0x80 ? 1 : c < 0xE0 ? (c < 0xC0 ? 1 : 2) : c < 0xF0 ? 3 : 4;
}
int lg_utf8_encode(uint32_t cp, char *out); /* returns bytes written (1..4) */
uint32_t lg_utf8_decode(const char *s, int *n);  /* s must be valid UTF-8 */

/* ---- growable byte / int buffers ----------------------------------------------- */
typedef struct {
    char *p;
    size_t n, cap;
} tk_buf;
void tk_buf_put(tk_buf *b, const void *s, size_t n);
static inline void tk_buf_putc(tk_buf *b, char c) {
    if (b->n + 1 > b->cap) tk_buf_put(b, &c, 1);
    else b->p[b->n++] = c;
}
typedef struct {
    int *p;
    size_t n, cap;
} tk_ivec;
void tk_ivec_push(tk_ivec *v, int x);

/* ---- string -> int hash map (keys copied into an arena) ------------------------- */
typedef struct {
    uint32_t *slot; /* index+1 into ent, 0 = empty */
    uint32_t cap;   /* power of two */
    struct tk_sent {
        uint64_t h;
        uint32_t off, len; /* into keys */
        int val;
    } *ent;
    uint32_t n, ent_cap;
    char *keys;
    size_t keys_n, keys_cap;
} tk_smap;
uint64_t tk_hash(const void *p, size_t n);
int tk_smap_get(const tk_smap *m, const char *k, size_t len); /* -1 if absent */
void tk_smap_put(tk_smap *m, const char *k, size_t len, int val); /* overwrite */
void tk_smap_free(tk_smap *m);

/* ---- (id, id) -> (rank, new id) merge map ---------------------------------------- */
typedef struct {
    uint64_t *key; /* UINT64_MAX = empty */
    int32_t *rank, *nid;
    uint32_t cap, n;
} tk_pmap;
static inline uint64_t tk_pkey(int a, int b) { return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b; }
int tk_pmap_get(const tk_pmap *m, int a, int b, int *rank, int *nid); /* 1 found */
void tk_pmap_put(tk_pmap *m, int a, int b, int rank, int nid);
void tk_pmap_free(tk_pmap *m);

/* ---- pipeline components ------------------------------------------------------- */
enum { NORM_PREPEND, NORM_REPLACE, NORM_NFC };
typedef struct {
    int type;
    char *a;
    size_t alen; /* prepend string / replace pattern (literal) */
    char *b;
    size_t blen; /* replace content */
    pcre2_code *re; /* Replace with a Regex pattern */
} tk_norm;

enum { PT_BYTELEVEL, PT_SPLIT, PT_DIGITS, PT_METASPACE, PT_WHITESPACE_SPLIT };
enum { SPLIT_REMOVED, SPLIT_ISOLATED, SPLIT_MERGED_PREV, SPLIT_MERGED_NEXT, SPLIT_CONTIGUOUS };
enum { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER };
typedef struct {
    int type;
    pcre2_code *re; /* ByteLevel(use_regex) / Split / Digits / WhitespaceSplit */
    int behavior, invert;
    int add_prefix_space; /* ByteLevel */
    char rep[8];
    int replen; /* Metaspace replacement */
    int prepend_scheme, split;
} tk_pretok;

enum { DEC_BYTELEVEL, DEC_REPLACE, DEC_BYTEFALLBACK, DEC_FUSE, DEC_STRIP, DEC_METASPACE };
typedef struct {
    int type;
    char *a, *b; /* Replace pattern / content */
    size_t alen, blen;
    uint32_t strip_ch; /* Strip content */
    int start, stop;   /* Strip */
    char rep[8];
    int replen, prepend_scheme; /* Metaspace */
} tk_dec;

typedef struct {
    char *content;
    size_t len;
    int id;
    unsigned special : 1, lstrip : 1, rstrip : 1, normalized : 1, single_word : 1;
    char *norm; /* normalized content (normalized tokens) */
    size_t norm_len;
} tk_added;

/* word cache: word bytes -> ids */
typedef struct {
    tk_smap map; /* value = offset into ids */
    tk_ivec ids; /* [count, id...] records */
    pthread_mutex_t mu;
} tk_cache;

enum { MODEL_BPE, MODEL_SPM_SCORE };

struct lg_tokenizer {
    int model;       /* MODEL_BPE (rank merges) or MODEL_SPM_SCORE (llama2.c / SentencePiece scores) */
    int n_ids;       /* max id + 1 */
    char **piece;    /* id -> token string (vocab form), NULL for holes */
    uint32_t *plen;
    unsigned char *special; /* id -> is special */
    tk_smap vocab;   /* model vocabulary string -> id */
    tk_smap pieces;  /* every id's string -> id (vocab + added) */
    /* BPE model */
    tk_pmap merges;
    int byte_fallback, fuse_unk, unk_id, ignore_merges;
    char *cont_prefix, *eow_suffix; /* NULL when absent / empty */
    int byte_tok[256];              /* <0xNN> ids, -1 if absent */
    int *cp_id;                     /* codepoint (< 0x10000) -> vocab id of that single char, -1 */
    /* SPM score model */
    float *score;
    unsigned char *mergeable; /* id may result from a merge (normal piece) */
    /* pipeline */
    tk_added *added;
    int n_added;
    int has_norm_added, has_raw_added;
    unsigned char added_first[2][256]; /* [normalized][first byte] -> some added token starts so */
    tk_norm *norms;
    int n_norms;
    tk_pretok *pretoks;
    int n_pretoks;
    tk_dec *decs;
    int n_decs;
    int *prefix, n_prefix, *suffix, n_suffix; /* post-processor ids for one sequence */
    int bos, eos, pad;
    /* source files, written back by save_hf */
    char *src_json, *src_config;
    size_t src_json_len, src_config_len;
    tk_cache cache;
};

/* components (tokenizer.c) */
int tk_finish(lg_tokenizer *t); /* derived tables after loading */
pcre2_code *tk_regex_compile(const char *pat, size_t len, int literal, const char *what);
void tk_free_parts(lg_tokenizer *t);
int tk_hf_load(lg_tokenizer *t, const char *json, size_t len, const char *cfg, size_t cfg_len, const char *name);
int tk_llama2c_setup(lg_tokenizer *t, int n, const char *const *pieces, const int *lens, const float *scores,
                     int unk, int bos, int eos);

/* BPE words (bpe.c). ws: per-call scratch. Appends ids of word w to out. */
typedef struct tk_bpe_ws tk_bpe_ws;
tk_bpe_ws *tk_bpe_ws_new(void);
void tk_bpe_ws_free(tk_bpe_ws *ws);
int tk_bpe_word(const lg_tokenizer *t, tk_bpe_ws *ws, const char *w, size_t len, tk_ivec *out);

#endif
