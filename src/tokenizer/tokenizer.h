/* tokenizer.h — text <-> token ids, matching Hugging Face `tokenizers` exactly.
 *
 * Supported inputs (lg_tokenizer_load):
 *   - a Hugging Face tokenizer.json with a BPE model, both flavours found in real models:
 *       byte-level (GPT-2, LLaMA-3, Qwen2, SmolLM: ByteLevel / Split-regex / Digits
 *       pre-tokenizers, ByteLevel decoder) and SentencePiece-style (LLaMA-2, TinyLlama,
 *       Mistral: Prepend+Replace normalizer or Metaspace pre-tokenizer, byte_fallback <0xNN>);
 *       NFC normalizer; added / special tokens; merges as "a b" strings or ["a","b"] pairs;
 *       ignore_merges. Components we do not implement are refused at load, by name.
 *     tokenizer_config.json next to it (if present) gives bos/eos and add_bos_token/add_eos_token.
 *   - a model directory holding tokenizer.json (+ tokenizer_config.json), or tokenizer.bin;
 *   - a llama2.c tokenizer.bin (score-ranked SentencePiece BPE, dummy-prefix space,
 *     byte fallback at id = byte + 3, bos 1, eos 2).
 * See docs/tokenizer.md for the exact semantics and known limits.
 *
 * A loaded tokenizer is immutable apart from an internal, mutex-guarded word cache: any
 * number of threads may encode / decode with the same tokenizer at once. */
#ifndef LG_TOKENIZER_H
#define LG_TOKENIZER_H

#include <stddef.h>

typedef struct lg_tokenizer lg_tokenizer;

/* path: tokenizer.json | a directory with tokenizer.json or tokenizer.bin | tokenizer.bin.
 * 0 on success; -1 with lg_last_error() naming the file and the problem. */
int lg_tokenizer_load(const char *path, lg_tokenizer **out);
/* The same from memory: the contents of a tokenizer.json and (optionally, may be NULL) of a
 * tokenizer_config.json. `name` is used in error messages. */
int lg_tokenizer_load_json_mem(const char *json, size_t len, const char *config_json, size_t config_len,
                               const char *name, lg_tokenizer **out);
/* The same from the bytes of a llama2.c tokenizer.bin. */
int lg_tokenizer_load_llama2c_mem(const void *data, size_t len, const char *name, lg_tokenizer **out);
/* A score-ranked SentencePiece BPE (what llama2.c's tokenizer.bin and GGUF "llama" vocabularies
 * hold) from its pieces: piece i is pieces[i] (lens[i] bytes, "▁" or ' ' for spaces), with score
 * scores[i]; "<0xNN>" pieces are byte-fallback tokens; ids listed as bos/eos/unk (-1 if none)
 * are special (never produced from text, skipped when decoding). */
int lg_tokenizer_from_spm(int n, const char *const *pieces, const int *lens, const float *scores, int unk, int bos,
                          int eos, lg_tokenizer **out);
void lg_tokenizer_free(lg_tokenizer *t);

/* text: len bytes of UTF-8 (invalid UTF-8 -> -1 with the byte offset in the message; HF cannot
 * represent such text either). add_special: add what the tokenizer's post-processor adds for a
 * single sequence (BOS for LLaMA-style, nothing for GPT-2), as HF `tokenizer(text)` does with
 * add_special_tokens=True. Added/special tokens in the text are always matched (as HF does).
 * *ids is malloc'd (caller frees; never NULL on success, even when *n == 0). */
int lg_tokenizer_encode(const lg_tokenizer *t, const char *text, size_t len, int add_special, int **ids, int *n);
/* The first max_tokens ids of lg_tokenizer_encode(text, add_special 0) (all of them when there are
 * fewer; max_tokens < 0: all), tokenising only as much of a long text as that takes: a prefix of the
 * text is accepted once its first max_tokens ids equal those of a prefix twice as long (a cut can
 * only change the tokens next to it). Memory and time then follow max_tokens, not the text. */
int lg_tokenizer_encode_prefix(const lg_tokenizer *t, const char *text, size_t len, int max_tokens, int **ids, int *n);

/* decode flags */
#define LG_DECODE_KEEP_SPECIAL 1 /* keep special tokens (default: skipped, as `tokenizers` does) */
#define LG_DECODE_RAW_BYTES 2    /* do not replace invalid UTF-8 by U+FFFD (token-by-token streaming) */
/* ids -> text, skipping special tokens, invalid UTF-8 replaced by U+FFFD exactly as HF
 * `tokenizers` Tokenizer.decode(ids) does. Out-of-range ids -> -1. *text is malloc'd and
 * NUL-terminated (caller frees); *len excludes the NUL (len may be NULL). */
int lg_tokenizer_decode(const lg_tokenizer *t, const int *ids, int n, char **text, size_t *len);
int lg_tokenizer_decode_ex(const lg_tokenizer *t, const int *ids, int n, int flags, char **text, size_t *len);

int lg_tokenizer_vocab_size(const lg_tokenizer *t); /* number of ids: max id + 1 */
int lg_tokenizer_bos(const lg_tokenizer *t);        /* -1 if none */
int lg_tokenizer_eos(const lg_tokenizer *t);        /* -1 if none */
int lg_tokenizer_pad(const lg_tokenizer *t);        /* pad token, else eos, else 0 */
int lg_tokenizer_is_special(const lg_tokenizer *t, int id);
/* Token string as stored in the vocabulary (e.g. "Ġthe", "▁the", "<0x0A>"); NULL if out of range. */
const char *lg_tokenizer_id_to_piece(const lg_tokenizer *t, int id);
/* Id of a vocabulary / added token string, -1 if absent. */
int lg_tokenizer_piece_to_id(const lg_tokenizer *t, const char *piece);

/* Write tokenizer.json + tokenizer_config.json into dir (created if missing; files written
 * atomically) so that Hugging Face `tokenizers` / transformers produce the same ids. A tokenizer
 * loaded from tokenizer.json is written back as it was read; a llama2.c / SentencePiece-score
 * tokenizer is converted to a BPE tokenizer.json (merges ordered by the merged piece's score,
 * LLaMA-2 style normalizer, byte fallback, ByteFallback/Fuse/Strip decoder, BOS template). */
int lg_tokenizer_save_hf(const lg_tokenizer *t, const char *dir);

/* Offset of the first invalid byte, or len if s[0..len) is valid UTF-8 (no overlongs,
 * surrogates or code points above U+10FFFF). */
size_t lg_utf8_check(const char *s, size_t len);

#endif
