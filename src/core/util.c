/* util.c — see util.h. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static _Thread_local char g_err[2048];

int lg_errorf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    va_end(ap);
    return -1;
}

int lg_errorf_prefix(const char *fmt, ...) {
    char pre[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof pre, fmt, ap);
    va_end(ap);
    size_t np = strlen(pre), no = strlen(g_err);
    if (np + 2 >= sizeof g_err) return -1;
    if (np + 2 + no >= sizeof g_err) no = sizeof g_err - np - 3;
    memmove(g_err + np + 2, g_err, no); /* "<prefix>: <old message>" */
    g_err[np + 2 + no] = 0;
    memcpy(g_err, pre, np);
    g_err[np] = ':';
    g_err[np + 1] = ' ';
    return -1;
}

const char *lg_last_error(void) { return g_err[0] ? g_err : "unknown error"; }
void lg_clear_error(void) { g_err[0] = 0; }

static void oom(size_t n) {
    fprintf(stderr, "loraga: error: out of memory allocating %zu bytes\n", n);
    exit(1);
}

void *lg_malloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) oom(n);
    return p;
}
void *lg_calloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) oom(n * size);
    return p;
}
void *lg_realloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) oom(n);
    return q;
}
char *lg_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = lg_malloc(n);
    memcpy(d, s, n);
    return d;
}
void *lg_aligned_alloc(size_t n) {
    void *p = NULL;
    size_t sz = (n + 63) & ~(size_t)63;
    if (posix_memalign(&p, 64, sz ? sz : 64) != 0) oom(n);
    memset(p, 0, sz ? sz : 64);
    return p;
}
void lg_aligned_free(void *p) { free(p); }

int lg_read_file(const char *path, char **data, size_t *len) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return lg_errorf("%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    /* a directory or a device reports no usable size (ftell gave 2^63 for a directory) */
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        int dir = fstat(fd, &st) == 0 && S_ISDIR(st.st_mode);
        close(fd);
        return lg_errorf("%s: not a regular file%s", path, dir ? " (a directory)" : "");
    }
    if ((uint64_t)st.st_size > LG_READ_FILE_MAX) {
        close(fd);
        return lg_errorf("%s: %lld bytes is larger than the %llu bytes loraga reads into memory at once", path,
                         (long long)st.st_size, (unsigned long long)LG_READ_FILE_MAX);
    }
    size_t n = (size_t)st.st_size, got = 0;
    char *buf = lg_malloc(n + 1);
    while (got < n) {
        ssize_t k = read(fd, buf + got, n - got);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break; /* the file shrank under us, or a read error */
        got += (size_t)k;
    }
    close(fd);
    if (got != n) {
        free(buf);
        return lg_errorf("%s: read error (%zu of %zu bytes)", path, got, n);
    }
    buf[n] = 0;
    *data = buf;
    if (len) *len = n;
    return 0;
}

/* ---- atomic output files ---- */
int lg_afile_open(lg_afile *a, const char *path) {
    memset(a, 0, sizeof *a);
    struct stat st;
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) {
        /* a device or a pipe (/dev/stdout, /dev/null): written directly, never renamed over */
        if (!(a->f = fopen(path, "wb"))) return lg_errorf("%s: cannot write: %s", path, strerror(errno));
        a->path = lg_strdup(path);
        return 0;
    }
    lg_remove_stale_tmp(path);
    size_t n = strlen(path) + 32;
    a->tmp = lg_malloc(n);
    snprintf(a->tmp, n, "%s.tmp.%d", path, (int)getpid());
    a->path = lg_strdup(path);
    if (!(a->f = fopen(a->tmp, "wb"))) {
        lg_errorf("%s: cannot create: %s", a->tmp, strerror(errno));
        free(a->tmp), free(a->path);
        memset(a, 0, sizeof *a);
        return -1;
    }
    return 0;
}

int lg_afile_commit(lg_afile *a) {
    if (!a->f) return lg_errorf("internal error: output file not open");
    int bad = ferror(a->f) != 0, err = bad ? errno : 0;
    if (fflush(a->f) != 0 && !bad) bad = 1, err = errno;
    if (fclose(a->f) != 0 && !bad) bad = 1, err = errno;
    a->f = NULL;
    int rc = 0;
    if (bad) rc = lg_errorf("%s: write failed: %s (disk full?)%s", a->path, err ? strerror(err) : "stream error",
                            a->tmp ? "; nothing was written there" : "");
    else if (a->tmp && rename(a->tmp, a->path) != 0)
        rc = lg_errorf("%s: cannot rename into place: %s", a->path, strerror(errno));
    if (rc && a->tmp) unlink(a->tmp);
    free(a->tmp), free(a->path);
    a->tmp = a->path = NULL;
    return rc;
}

void lg_afile_abort(lg_afile *a) {
    if (a->f) fclose(a->f);
    if (a->tmp) unlink(a->tmp);
    free(a->tmp), free(a->path);
    memset(a, 0, sizeof *a);
}

int lg_write_file_atomic(const char *path, const void *data, size_t len) {
    lg_afile a;
    if (lg_afile_open(&a, path) != 0) return -1;
    if (len && fwrite(data, 1, len, a.f) != len) {
        int err = errno;
        lg_afile_abort(&a);
        return lg_errorf("%s: write failed: %s (disk full?); nothing was written there", path, strerror(err));
    }
    return lg_afile_commit(&a);
}

int lg_file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}
int lg_is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}
int lg_mkdir_p(const char *path) {
    char *p = lg_strdup(path);
    for (char *s = p + 1; *s; s++) {
        if (*s == '/') {
            *s = 0;
            if (mkdir(p, 0755) != 0 && errno != EEXIST) {
                lg_errorf("%s: cannot create directory: %s", p, strerror(errno));
                free(p);
                return -1;
            }
            *s = '/';
        }
    }
    if (mkdir(p, 0755) != 0 && errno != EEXIST) {
        lg_errorf("%s: cannot create directory: %s", p, strerror(errno));
        free(p);
        return -1;
    }
    free(p);
    if (!lg_is_dir(path)) return lg_errorf("%s: exists and is not a directory", path);
    return 0;
}
char *lg_path_join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *s = lg_malloc(n);
    snprintf(s, n, "%s/%s", dir, name);
    return s;
}

char *lg_path_parent(const char *path) {
    char *p = lg_strdup(path);
    size_t n = strlen(p);
    while (n > 1 && p[n - 1] == '/') p[--n] = 0;
    char *s = strrchr(p, '/');
    if (!s) {
        free(p);
        return lg_strdup(".");
    }
    if (s == p) s[1] = 0;
    else *s = 0;
    return p;
}

const char *lg_path_base(const char *path, char *buf, size_t cap) {
    snprintf(buf, cap, "%s", path);
    size_t n = strlen(buf);
    while (n > 1 && buf[n - 1] == '/') buf[--n] = 0;
    char *s = strrchr(buf, '/');
    return s ? s + 1 : buf;
}

int lg_is_symlink(const char *path) {
    struct stat st;
    return lstat(path, &st) == 0 && S_ISLNK(st.st_mode);
}

int lg_mmap_file(const char *path, lg_mmap *m) {
    m->data = NULL;
    m->size = 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return lg_errorf("%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return lg_errorf("%s: not a regular file", path);
    }
    m->size = (size_t)st.st_size;
    if (m->size == 0) {
        close(fd);
        return lg_errorf("%s: file is empty", path);
    }
    void *p = mmap(NULL, m->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return lg_errorf("%s: mmap failed: %s", path, strerror(errno));
    m->data = p;
    return 0;
}
void lg_munmap(lg_mmap *m) {
    if (m->data) munmap(m->data, m->size);
    m->data = NULL;
    m->size = 0;
}

/* ---- half precision ---- */
float lg_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
uint16_t lg_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
float lg_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400u));
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}
uint16_t lg_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);   /* NaN */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  /* overflow -> inf */
    if (a < 0x38800000u) {                                    /* subnormal or zero */
        if (a < 0x33000000u) return (uint16_t)sign;            /* < half of smallest subnormal */
        uint32_t man = (a & 0x7fffffu) | 0x800000u;
        int shift = 126 - (int)(a >> 23); /* 14..24 */
        uint32_t res = man >> (shift);
        uint32_t rem = man & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (res & 1u))) res++;
        return (uint16_t)(sign | res);
    }
    uint32_t res = ((a >> 13) - ((127 - 15) << 10));
    uint32_t rem = a & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (res & 1u))) res++;
    return (uint16_t)(sign | res);
}

/* ---- RNG ---- */
static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
void lg_rng_seed(lg_rng *r, uint64_t seed) {
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}
static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
uint64_t lg_rng_u64(lg_rng *r) {
    uint64_t *s = r->s;
    uint64_t res = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return res;
}
float lg_rng_uniform(lg_rng *r) { return (float)(lg_rng_u64(r) >> 40) * (1.0f / 16777216.0f); }
float lg_rng_normal(lg_rng *r) {
    double u1 = ((double)(lg_rng_u64(r) >> 11) + 1.0) * (1.0 / 9007199254740993.0);
    double u2 = (double)(lg_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

double lg_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
int64_t lg_first_nonfinite(const float *x, int64_t n) {
    int64_t bad = -1;
    for (int64_t i = 0; i < n && bad < 0; i += 4096) { /* blocks of a vectorisable test */
        int64_t e = LG_MIN(n, i + 4096);
        int ok = 1;
        for (int64_t k = i; k < e; k++) ok &= isfinite(x[k]) != 0;
        if (!ok)
            for (int64_t k = i; k < e && bad < 0; k++)
                if (!isfinite(x[k])) bad = k;
    }
    return bad;
}

long lg_peak_rss_kb(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

static int dir_is_empty(const char *path) {
    DIR *d = opendir(path);
    if (!d) return 0;
    struct dirent *e;
    int empty = 1;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) empty = 0;
    closedir(d);
    return empty;
}

char *lg_outdir_begin(const char *out) {
    if (lg_file_exists(out) && !(lg_is_dir(out) && dir_is_empty(out))) {
        lg_errorf("%s: already exists and is not an empty directory; choose another output or remove it", out);
        return NULL;
    }
    lg_remove_stale_tmp(out);
    size_t n = strlen(out) + 32;
    char *tmp = lg_malloc(n);
    snprintf(tmp, n, "%s.tmp.%d", out, (int)getpid());
    if (lg_mkdir_p(tmp) != 0) {
        free(tmp);
        return NULL;
    }
    return tmp;
}

/* Depth first, never following a symbolic link: a link is removed, not what it points to. */
static int remove_entry(const char *p, const struct stat *st, int type, struct FTW *ftw) {
    (void)st, (void)ftw;
    if (type == FTW_DP || type == FTW_DNR) rmdir(p);
    else unlink(p);
    return 0;
}

void lg_remove_tree(const char *path) {
    if (nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT) != 0 && lg_is_symlink(path)) unlink(path);
}

/* "<base>.tmp.<pid>" left by a process that no longer exists (killed before it could clean up). */
void lg_remove_stale_tmp(const char *path) {
    char buf[4096];
    char *dir = lg_path_parent(path);
    const char *base = lg_path_base(path, buf, sizeof buf);
    size_t bl = strlen(base);
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && bl && (e = readdir(d))) {
        const char *nm = e->d_name;
        if (strncmp(nm, base, bl) || strncmp(nm + bl, ".tmp.", 5)) continue;
        const char *digits = nm + bl + 5;
        char *end;
        errno = 0;
        long pid = strtol(digits, &end, 10);
        if (*digits < '0' || *digits > '9' || *end || errno || pid <= 0 || pid > INT32_MAX || pid == (long)getpid())
            continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue; /* alive (or not ours to judge) */
        char *p = lg_path_join(dir, nm);
        lg_remove_tree(p);
        free(p);
    }
    if (d) closedir(d);
    free(dir);
}

int lg_outdir_commit(char *tmp, const char *out) {
    if (lg_is_dir(out) && dir_is_empty(out)) rmdir(out);
    int rc = 0;
    if (rename(tmp, out) != 0) rc = lg_errorf("%s: cannot move output into place: %s", out, strerror(errno));
    free(tmp);
    return rc;
}

void lg_outdir_abort(char *tmp) {
    if (!tmp) return;
    lg_remove_tree(tmp);
    free(tmp);
}
