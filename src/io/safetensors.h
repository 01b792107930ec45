/* safetensors.h — read (mmap) and write Hugging Face safetensors, single or sharded.
 *
 * Format: u64 little-endian header length N, N bytes of JSON
 *   {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
 *    "__metadata__": {"k": "v"}}
 * then the data section; offsets are relative to its start. Every reader check
 * (truncation, bad JSON, offsets out of range or overlapping, size != shape x dtype,
 * unknown dtype) ends in a clear message naming file and tensor, never a crash. */
#ifndef LG_SAFETENSORS_H
#define LG_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

typedef enum { LG_DT_F32 = 0, LG_DT_F16 = 1, LG_DT_BF16 = 2, LG_DT_I32 = 3, LG_DT_I64 = 4 } lg_dtype;

const char *lg_dtype_name(lg_dtype t);   /* "F32", "F16", ... */
size_t lg_dtype_size(lg_dtype t);

#define LG_MAX_DIMS 4
typedef struct {
    const char *name;
    lg_dtype dtype;
    int ndim;
    int64_t shape[LG_MAX_DIMS];
    int64_t numel;
    const void *data; /* points into the mmapped file */
    size_t nbytes;
    const char *file; /* shard path, for messages */
} lg_st_tensor;

typedef struct lg_safetensors lg_safetensors; /* opaque: one file or a set of shards */

/* path: a .safetensors file, or a directory holding model.safetensors or
 * model.safetensors.index.json (+ its shards), or an index.json file. */
int lg_st_open(const char *path, lg_safetensors **out);
void lg_st_close(lg_safetensors *st);
int lg_st_count(const lg_safetensors *st);
const lg_st_tensor *lg_st_get(const lg_safetensors *st, int i);
const lg_st_tensor *lg_st_find(const lg_safetensors *st, const char *name); /* NULL if absent */
/* value of a __metadata__ key in the (first) file, or NULL */
const char *lg_st_metadata(const lg_safetensors *st, const char *key);

/* Copy a tensor as float32 into dst, checking its shape equals shape[0..ndim) exactly
 * (error names the tensor, the file, and both shapes). Integer dtypes are refused. */
int lg_st_read_f32(const lg_safetensors *st, const char *name, float *dst, int ndim,
                   const int64_t *shape);

/* Writing: each item's data is float32 in memory and is stored converted to `dtype`
 * (F32, F16 or BF16, round to nearest even). Tensors are written in the given order.
 * The file is written to a temporary name and renamed (never a half-written file). */
typedef struct {
    const char *name;
    lg_dtype dtype;
    int ndim;
    int64_t shape[LG_MAX_DIMS];
    const float *data;
} lg_st_item;
typedef struct {
    const char *key, *value;
} lg_st_meta;
int lg_st_write(const char *path, const lg_st_item *items, int n, const lg_st_meta *meta, int nmeta);

#endif

/* Streaming writer for files too big to hold at once (LoRA-GA's gradient cache): the header is
 * written from the items' names, dtypes and shapes (data ignored) at begin; then each tensor's
 * float32 data is appended in item order with put; commit renames the finished file into place,
 * abort removes it. */
typedef struct lg_st_writer lg_st_writer;
int lg_st_writer_begin(const char *path, const lg_st_item *items, int n, const lg_st_meta *meta, int nmeta,
                       lg_st_writer **out);
int lg_st_writer_put(lg_st_writer *w, const float *data); /* the next tensor, in item order */
int lg_st_writer_commit(lg_st_writer *w);
void lg_st_writer_abort(lg_st_writer *w);
