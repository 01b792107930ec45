/* generate.h — inference with a key/value cache: incremental forward, sampling, generation and
 * streaming of the generated text.
 *
 * The cache holds, per layer, the keys (after RoPE) and values of every position seen so far, so
 * feeding one more token costs one row through each linear layer plus attention over the cached
 * positions: O(T) per token instead of recomputing the whole sequence. It runs on the model's
 * weights and calls the adapters attached to its linear layers (training = 0: no dropout), so a
 * model with LoRA/DoRA adapters generates exactly what the merged model does, up to rounding.
 *
 * The model's training activations are not touched: a cache may be used between training steps. */
#ifndef LG_GENERATE_H
#define LG_GENERATE_H

#include <stddef.h>
#include <stdint.h>

#include "core/util.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

typedef struct lg_kv lg_kv;

/* A cache for up to cap positions (cap <= the model's max_seq; 0 = max_seq). */
int lg_kv_create(lg_model *m, int cap, lg_kv **out);
void lg_kv_free(lg_kv *kv);
int lg_kv_len(const lg_kv *kv);       /* positions held */
int lg_kv_cap(const lg_kv *kv);
const int *lg_kv_ids(const lg_kv *kv); /* the token ids held, lg_kv_len of them */
/* Forget positions >= len (len <= lg_kv_len): the cache then continues from a shared prefix. */
void lg_kv_truncate(lg_kv *kv, int len);
/* Length of the longest common prefix of the held ids and ids[0..n). */
int lg_kv_common_prefix(const lg_kv *kv, const int *ids, int n);

/* Feed n tokens at positions len .. len+n-1. logits: NULL, or room for the logits of the last
 * token (all = 0: V floats) or of every fed token (all = 1: n x V). Long inputs are processed in
 * chunks (bounded scratch). Error when the cache would exceed its capacity or an id is out of
 * range. */
int lg_kv_feed(lg_kv *kv, const int *ids, int n, float *logits, int all);

/* ---- sampling -------------------------------------------------------------------------------- */

typedef struct {
    float temperature; /* <= 0: greedy (argmax, lowest id on ties) */
    int top_k;         /* keep the k most likely tokens; <= 0: all */
    float top_p;       /* keep the smallest set whose probability reaches top_p; >= 1: all */
} lg_sample_opts;

/* Pick a token from logits (V): temperature, then top-k, then top-p (Hugging Face's order),
 * then one uniform draw from rng. Deterministic given rng's state. scratch: NULL or 2*V ints
 * + V doubles reused between calls (lg_sampler_scratch_bytes). */
int lg_sample(const float *logits, int V, const lg_sample_opts *o, lg_rng *rng, void *scratch);
size_t lg_sampler_scratch_bytes(int V);

/* ---- generation ------------------------------------------------------------------------------ */

typedef struct {
    int max_tokens;     /* new tokens at most */
    lg_sample_opts sample;
    uint64_t seed;
    const int *stop_ids; /* generation ends when one of these is drawn (it is not output) */
    int n_stop;
} lg_gen_opts;

/* Called with each new token; return nonzero to stop after it. */
typedef int (*lg_gen_cb)(int id, void *ud);

typedef enum { LG_STOP_MAX_TOKENS = 0, LG_STOP_ID = 1, LG_STOP_CALLBACK = 2, LG_STOP_CONTEXT = 3 } lg_gen_stop;

typedef struct {
    int *ids;         /* the new tokens (malloc'd, never NULL on success; a stop id is not included) */
    int n;
    lg_gen_stop stop; /* why generation ended */
} lg_gen_result;

/* Generate from prompt[0..n) (n >= 1) with kv: the held prefix shared with the prompt is reused,
 * the rest of the prompt is fed, then tokens are drawn one at a time (the rng seeded with o->seed
 * at the start) until max_tokens, a stop id, the callback asks, or the cache is full. The cache
 * then holds the prompt and the new tokens (the last one may not have been fed). */
int lg_generate(lg_kv *kv, const int *prompt, int n, const lg_gen_opts *o, lg_gen_cb cb, void *ud,
                lg_gen_result *res);

/* ---- streaming text -------------------------------------------------------------------------- */

/* Turns generated tokens into text as they come. Each push decodes the context and the tokens so
 * far (raw bytes) and returns the part that became final: everything except a trailing UTF-8
 * sequence that is still incomplete, which waits for the next token (byte-fallback tokens split
 * characters). Invalid UTF-8 is replaced by U+FFFD (maximal subparts). The context (e.g. the
 * prompt) is decoded along so that decoders that depend on position (SentencePiece's leading-
 * space strip) give the same text as decoding everything at once; its own text is not returned. */
typedef struct lg_text_stream lg_text_stream;
lg_text_stream *lg_text_stream_new(const lg_tokenizer *t, const int *context, int n);
/* The new final text after adding id: *text (owned by the stream, valid until the next call) and
 * *len bytes (may be 0). -1 on a decode error (id out of range). */
int lg_text_stream_push(lg_text_stream *s, int id, const char **text, size_t *len);
/* The remaining text (an incomplete tail becomes U+FFFD). */
int lg_text_stream_finish(lg_text_stream *s, const char **text, size_t *len);
void lg_text_stream_free(lg_text_stream *s);

#endif
