/* util.h — errors, checked allocation and file I/O, half-precision conversion, RNG.
 *
 * Error convention used across loraga: a function that can fail returns int
 * (0 = ok, -1 = error) and records a message with lg_errorf(); the caller either
 * returns -1 upward (optionally adding context with lg_errorf_prefix) or prints
 * lg_last_error(). Messages name what is wrong and where (file, line, tensor...). */
#ifndef LG_UTIL_H
#define LG_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* ---- errors ---------------------------------------------------------------- */
#if defined(__GNUC__)
#define LG_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define LG_PRINTF(a, b)
#endif
int lg_errorf(const char *fmt, ...) LG_PRINTF(1, 2);        /* set message, return -1 */
int lg_errorf_prefix(const char *fmt, ...) LG_PRINTF(1, 2); /* "<prefix>: <old message>", return -1 */
const char *lg_last_error(void);
void lg_clear_error(void);

/* ---- allocation (out of memory is fatal: prints and exits 1) ----------------- */
void *lg_malloc(size_t n);
void *lg_calloc(size_t n, size_t size);
void *lg_realloc(void *p, size_t n);
char *lg_strdup(const char *s);
void *lg_aligned_alloc(size_t n); /* 64-byte aligned, zeroed; free with lg_aligned_free */
void lg_aligned_free(void *p);

/* ---- files ----------------------------------------------------------------- */
/* Read a whole regular file (adds a terminating NUL after len bytes). A directory, device or
 * pipe, or a file over LG_READ_FILE_MAX bytes, is refused with a message. */
#define LG_READ_FILE_MAX ((uint64_t)2 << 30)
int lg_read_file(const char *path, char **data, size_t *len);
/* Write to "<path>.tmp.<pid>" then rename over path: a crash never leaves half a file. */
int lg_write_file_atomic(const char *path, const void *data, size_t len);
/* The same for output written piece by piece: open creates "<path>.tmp.<pid>" (f), commit checks
 * every write, closes and renames into place (on any error removes the temporary, leaving an
 * existing path untouched, and says so), abort removes it. A path that is a device or a pipe
 * (/dev/stdout, /dev/null) is written directly: renaming over it would replace the device. */
typedef struct {
    FILE *f;
    char *tmp, *path;
} lg_afile;
int lg_afile_open(lg_afile *a, const char *path);
int lg_afile_commit(lg_afile *a);
void lg_afile_abort(lg_afile *a);
int lg_file_exists(const char *path);
int lg_is_dir(const char *path);
int lg_mkdir_p(const char *path);
/* path join into a fresh string */
char *lg_path_join(const char *dir, const char *name);
char *lg_path_parent(const char *path);                           /* "a/b/" -> "a", "b" -> "." */
const char *lg_path_base(const char *path, char *buf, size_t cap); /* "a/b/" -> "b" (in buf) */
int lg_is_symlink(const char *path);                              /* lstat: the path itself is a link */
/* Remove a file or directory tree without ever following a symbolic link (a link is unlinked,
 * what it points to is untouched). */
void lg_remove_tree(const char *path);
/* Remove "<path>.tmp.<pid>" siblings whose process no longer exists (a killed run's leftovers). */
void lg_remove_stale_tmp(const char *path);

typedef struct {
    void *data;
    size_t size;
} lg_mmap;
int lg_mmap_file(const char *path, lg_mmap *m); /* read-only, private */
void lg_munmap(lg_mmap *m);

/* ---- half precision ---------------------------------------------------------- */
float lg_bf16_to_f32(uint16_t h);
uint16_t lg_f32_to_bf16(float f); /* round to nearest even, NaN preserved */
float lg_f16_to_f32(uint16_t h);
uint16_t lg_f32_to_f16(float f); /* round to nearest even */

/* ---- RNG: xoshiro256** seeded by splitmix64, deterministic across platforms -- */
typedef struct {
    uint64_t s[4];
} lg_rng;
void lg_rng_seed(lg_rng *r, uint64_t seed);
uint64_t lg_rng_u64(lg_rng *r);
float lg_rng_uniform(lg_rng *r); /* [0,1) */
float lg_rng_normal(lg_rng *r);  /* N(0,1), Box-Muller */

/* ---- misc -------------------------------------------------------------------- */
double lg_now(void); /* monotonic seconds */
/* Index of the first NaN or infinity in x[0, n), or -1: what readers check weights with. */
int64_t lg_first_nonfinite(const float *x, int64_t n);
long lg_peak_rss_kb(void);
#define LG_MIN(a, b) ((a) < (b) ? (a) : (b))
#define LG_MAX(a, b) ((a) > (b) ? (a) : (b))
#define LG_UNUSED(x) ((void)(x))

#endif

/* ---- output directories ---------------------------------------------------------------------
 * Outputs are built in "<out>.tmp.<pid>" and renamed into place at the end, so an interrupted
 * run never leaves a half-written directory and never touches an existing one. */
/* Refuses an existing non-empty `out`; removes dead runs' "<out>.tmp.<pid>"; creates and returns
 * the temporary directory. */
char *lg_outdir_begin(const char *out);
/* Renames tmp to out (removing an empty `out` first); frees tmp. */
int lg_outdir_commit(char *tmp, const char *out);
/* Removes tmp and everything in it (links are removed, never followed); frees tmp. */
void lg_outdir_abort(char *tmp);
