/* gguf.h — read llama.cpp's GGUF files (versions 2 and 3, little-endian).
 *
 * Format: "GGUF", u32 version, u64 tensor count, u64 key/value count; the key/values
 * (string key, u32 value type, value); the tensor infos (string name, u32 n_dims, u64 ne[n_dims]
 * innermost first, u32 ggml type, u64 offset into the data section); padding to
 * `general.alignment` (default 32); the data section. Strings are u64 length + bytes.
 *
 * Everything is validated when the file is opened (counts against the bytes left, string lengths,
 * value and tensor types, dims and their product, block multiples, tensor offsets aligned, inside
 * the file and not overlapping, duplicate keys / names): a bad file is a message naming the file
 * and the problem and -1, never a crash; accessors may then trust what they read.
 *
 * Tensor data types dequantised to float32: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and the
 * K-quants Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, exactly as ggml / gguf-py do (tests against gguf-py on
 * real blocks). Other ggml types are parsed (their sizes are known) but reading them is an error
 * naming the type.
 *
 * Architectures llama, qwen2, qwen3, gemma2, gemma3 and phi3 are exposed as an lg_weight_src under
 * Hugging Face tensor names, with what llama.cpp's converter changed undone (LLaMA's q/k row
 * permutation, Gemma's norm weights stored as 1 + w; see gguf.c), so the model uses rope_style HALF
 * and is exactly what transformers builds from the checkpoint the file was converted from. What
 * llama.cpp keeps implicit is taken as llama.cpp takes it (Gemma's attention scale, Gemma 3's
 * sliding pattern and local RoPE base). See docs/gguf.md and docs/models-architectures.md. */
#ifndef LG_GGUF_H
#define LG_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "model/model.h"
#include "tokenizer/tokenizer.h"

/* metadata value types (GGUF spec numbering) */
enum {
    LG_GGUF_U8 = 0, LG_GGUF_I8 = 1, LG_GGUF_U16 = 2, LG_GGUF_I16 = 3, LG_GGUF_U32 = 4, LG_GGUF_I32 = 5,
    LG_GGUF_F32 = 6, LG_GGUF_BOOL = 7, LG_GGUF_STRING = 8, LG_GGUF_ARRAY = 9, LG_GGUF_U64 = 10,
    LG_GGUF_I64 = 11, LG_GGUF_F64 = 12
};

/* ggml tensor types we dequantise (ggml numbering) */
enum {
    LG_GGML_F32 = 0, LG_GGML_F16 = 1, LG_GGML_Q4_0 = 2, LG_GGML_Q4_1 = 3, LG_GGML_Q5_0 = 6, LG_GGML_Q5_1 = 7,
    LG_GGML_Q8_0 = 8, LG_GGML_Q2_K = 10, LG_GGML_Q3_K = 11, LG_GGML_Q4_K = 12, LG_GGML_Q5_K = 13, LG_GGML_Q6_K = 14,
    LG_GGML_BF16 = 30
};

typedef struct lg_gguf lg_gguf;

typedef struct {
    const char *name;  /* NUL-terminated */
    int n_dims;        /* 1..4 */
    int64_t ne[4];     /* elements per dim, innermost (row length) first; unused dims are 1 */
    int64_t numel;
    uint32_t type;     /* ggml type */
    uint64_t offset;   /* from the start of the data section */
    size_t nbytes;
    const void *data;  /* into the file */
} lg_gguf_tensor;

/* Open (mmap) and validate. */
int lg_gguf_open(const char *path, lg_gguf **out);
/* The same over bytes in memory (not copied: they must outlive the handle); name is for messages. */
int lg_gguf_open_mem(const void *data, size_t size, const char *name, lg_gguf **out);
void lg_gguf_close(lg_gguf *g);
/* 1 if the file starts with the GGUF magic (cheap: reads 4 bytes), else 0. */
int lg_gguf_is_gguf(const char *path);

uint32_t lg_gguf_version(const lg_gguf *g);
const char *lg_gguf_name(const lg_gguf *g); /* the path given at open */
size_t lg_gguf_alignment(const lg_gguf *g);
size_t lg_gguf_data_offset(const lg_gguf *g); /* file offset of the data section */

/* ---- metadata ---- */
int lg_gguf_n_kv(const lg_gguf *g);
const char *lg_gguf_kv_key(const lg_gguf *g, int i);
int lg_gguf_kv_type(const lg_gguf *g, int i);
int lg_gguf_find_kv(const lg_gguf *g, const char *key); /* index or -1 */
/* The value of key/value i as encoded in the file (u32 type, then the value), for copying it. */
int lg_gguf_kv_raw(const lg_gguf *g, int i, const void **p, size_t *n);
/* Typed getters: 0 on success; 1 if the key is absent (nothing set, no error); -1 with a message
 * naming file and key if present with a type that does not fit. get_int accepts every integer
 * type (and bool), get_float every numeric type. */
int lg_gguf_get_int(const lg_gguf *g, const char *key, int64_t *v);
int lg_gguf_get_float(const lg_gguf *g, const char *key, double *v);
int lg_gguf_get_bool(const lg_gguf *g, const char *key, int *v);
/* String value: not NUL-terminated in the file, so a length is returned with the pointer. */
int lg_gguf_get_str(const lg_gguf *g, const char *key, const char **s, size_t *len);
/* Arrays: element type and count (nested arrays report LG_GGUF_ARRAY and cannot be read). */
int lg_gguf_get_arr(const lg_gguf *g, const char *key, int *elem_type, uint64_t *n);
/* Element i of an array of strings / of numbers (any numeric or bool element type). Index and key
 * must be valid (checked with lg_gguf_get_arr): these return -1 without a message otherwise. */
int lg_gguf_arr_str(const lg_gguf *g, const char *key, uint64_t i, const char **s, size_t *len);
int lg_gguf_arr_num(const lg_gguf *g, const char *key, uint64_t i, double *v);

/* ---- tensors ---- */
int lg_gguf_n_tensors(const lg_gguf *g);
const lg_gguf_tensor *lg_gguf_tensor_at(const lg_gguf *g, int i);
const lg_gguf_tensor *lg_gguf_find_tensor(const lg_gguf *g, const char *name); /* NULL if absent */
/* "Q4_1", "F32", ... or "type 77" for numbers ggml does not define (static or thread-local). */
const char *lg_ggml_type_name(uint32_t type);
/* 1 if lg_gguf_dequant handles the type. */
int lg_ggml_type_supported(uint32_t type);
/* Dequantise n elements (a multiple of the type's block size) from src to dst. -1 with a message
 * naming the type when unsupported. */
int lg_gguf_dequant(uint32_t type, const void *src, float *dst, int64_t n);
/* Whole tensor as float32 (numel floats), in file order. */
int lg_gguf_read_f32(const lg_gguf *g, const lg_gguf_tensor *t, float *dst);

/* ---- architectures -> the decoder ---- */
/* Config + weight source under HF names (src->ctx owned; close with lg_gguf_model_close).
 * Refuses other architectures, unsupported rope scaling, partial rotary, MoE, by name. */
int lg_gguf_model_open(const char *path, lg_config *c, lg_weight_src *src);
void lg_gguf_model_close(lg_weight_src *src);
/* Same, from an already open file (the handle stays the caller's; it must outlive src). */
int lg_gguf_model_from(lg_gguf *g, lg_config *c, lg_weight_src *src);
/* For writers (export), the reader's conventions in the other direction: llama.cpp's architecture
 * name for the model ("llama" for llama/mistral, "qwen2", "qwen3", "gemma2", "gemma3", "phi3"; NULL
 * with a message for others), and the GGUF name of Hugging Face tensor `hf` (0; -1 when it has
 * none), with *perm_heads > 0 when llama.cpp stores its rows permuted to interleaved RoPE order
 * (LLaMA's q/k weights and biases: heads of the q or k projection) and *plus1 when it stores w + 1
 * (Gemma's norm weights). */
const char *lg_gguf_arch_name(const lg_config *c);
int lg_gguf_tensor_name(const lg_config *c, const char *hf, char *out, size_t cap, int *perm_heads, int *plus1);

/* ---- tokenizer and chat template from the metadata ---- */
/* tokenizer.ggml.model "gpt2" (byte-level BPE: tokens, merges, token types, pre-tokenizer named by
 * tokenizer.ggml.pre) or "llama" (SentencePiece: tokens, scores). */
int lg_gguf_tokenizer(const char *path, lg_tokenizer **out);
int lg_gguf_tokenizer_from(const lg_gguf *g, lg_tokenizer **out);
/* tokenizer.chat_template as a fresh NUL-terminated string, or *out = NULL if the file has none. */
int lg_gguf_chat_template(const char *path, char **out);
/* lg_tokenizer_save_hf(t, dir), then add the GGUF's chat template to dir/tokenizer_config.json
 * when it is not there yet (the SentencePiece path writes its config without one). */
int lg_gguf_save_tokenizer(const lg_gguf *g, const lg_tokenizer *t, const char *dir);

#endif
