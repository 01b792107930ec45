/* gguf_write.h — write GGUF version 3 files (llama.cpp's format; the layout is described in
 * gguf.h): metadata key/values, then tensor infos, then the tensor data, each tensor aligned to 32
 * bytes. The file is written to "<path>.tmp.<pid>" and renamed into place at the end.
 * Tensors are given as float32 and stored as F32, F16, BF16 or Q8_0 (Q8_0 exactly as ggml's
 * quantize_row_q8_0_ref: d = max|x| / 127 rounded to f16, q = round(x / d)). */
#ifndef LG_GGUF_WRITE_H
#define LG_GGUF_WRITE_H

#include <stddef.h>
#include <stdint.h>

#include "io/gguf.h"

typedef struct lg_gguf_writer lg_gguf_writer;

lg_gguf_writer *lg_gguf_writer_new(void);
void lg_gguf_writer_free(lg_gguf_writer *w);

void lg_gguf_w_str(lg_gguf_writer *w, const char *key, const char *s);
void lg_gguf_w_u32(lg_gguf_writer *w, const char *key, uint32_t v);
void lg_gguf_w_f32(lg_gguf_writer *w, const char *key, float v);
void lg_gguf_w_bool(lg_gguf_writer *w, const char *key, int v);
/* key/value i of an open file, copied as it is (a key already written is not written twice) */
void lg_gguf_w_copy(lg_gguf_writer *w, const lg_gguf *g, int i);
int lg_gguf_w_has(const lg_gguf_writer *w, const char *key);

/* A tensor of ne[0] x ne[1] (ne[0] innermost = row length; ne[1] = 1 for vectors) from float32
 * data (copied and converted now). type: LG_GGML_F32, F16, BF16 or Q8_0 (ne[0] % 32 == 0). */
int lg_gguf_w_tensor(lg_gguf_writer *w, const char *name, int n_dims, const int64_t *ne, uint32_t type,
                     const float *data);

int lg_gguf_w_save(lg_gguf_writer *w, const char *path);

/* ggml's reference Q8_0 quantisation of n values (n % 32 == 0) into n / 32 blocks of 34 bytes. */
void lg_gguf_quantize_q8_0(const float *x, uint8_t *out, int64_t n);

#endif
