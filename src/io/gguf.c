/* gguf.c — see gguf.h. GGUF reader, dequantisation, llama weights, tokenizer from metadata. */
#include "io/gguf.h"

#include <cjson/cJSON.h>
#include <pthread.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

/* ---- ggml type table (block size in elements, bytes per block) --------------------------------
 * Every type ggml defines is listed so a file holding, say, Q4_K tensors still parses and its
 * offsets are checked; only the types lg_gguf_dequant handles can be read. */
typedef struct {
    const char *name;
    int blck, size;
} ggml_type_info;

static const ggml_type_info TYPES[] = {
    [0] = {"F32", 1, 4},        [1] = {"F16", 1, 2},        [2] = {"Q4_0", 32, 18},     [3] = {"Q4_1", 32, 20},
    [6] = {"Q5_0", 32, 22},     [7] = {"Q5_1", 32, 24},     [8] = {"Q8_0", 32, 34},     [9] = {"Q8_1", 32, 40},
    [10] = {"Q2_K", 256, 84},   [11] = {"Q3_K", 256, 110},  [12] = {"Q4_K", 256, 144},  [13] = {"Q5_K", 256, 176},
    [14] = {"Q6_K", 256, 210},  [15] = {"Q8_K", 256, 292},  [16] = {"IQ2_XXS", 256, 66}, [17] = {"IQ2_XS", 256, 74},
    [18] = {"IQ3_XXS", 256, 98}, [19] = {"IQ1_S", 256, 50}, [20] = {"IQ4_NL", 32, 18},  [21] = {"IQ3_S", 256, 110},
    [22] = {"IQ2_S", 256, 82},  [23] = {"IQ4_XS", 256, 136}, [24] = {"I8", 1, 1},       [25] = {"I16", 1, 2},
    [26] = {"I32", 1, 4},       [27] = {"I64", 1, 8},       [28] = {"F64", 1, 8},       [29] = {"IQ1_M", 256, 56},
    [30] = {"BF16", 1, 2},      [34] = {"TQ1_0", 256, 54},  [35] = {"TQ2_0", 256, 66},  [39] = {"MXFP4", 32, 17},
};
#define N_TYPES (sizeof TYPES / sizeof TYPES[0])

static const ggml_type_info *type_info(uint32_t t) { return t < N_TYPES && TYPES[t].name ? &TYPES[t] : NULL; }

const char *lg_ggml_type_name(uint32_t type) {
    static _Thread_local char buf[32];
    const ggml_type_info *ti = type_info(type);
    if (ti) return ti->name;
    snprintf(buf, sizeof buf, "type %u", type);
    return buf;
}

int lg_ggml_type_supported(uint32_t t) {
    return t == LG_GGML_F32 || t == LG_GGML_F16 || t == LG_GGML_BF16 || t == LG_GGML_Q8_0 || t == LG_GGML_Q4_0 ||
           t == LG_GGML_Q4_1 || t == LG_GGML_Q5_0 || t == LG_GGML_Q5_1 || (t >= LG_GGML_Q2_K && t <= LG_GGML_Q6_K);
}
#define SUPPORTED_TYPES "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K"

static const char *value_type_name(uint32_t t) {
    static const char *const n[] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"};
    return t < sizeof n / sizeof n[0] ? n[t] : "unknown";
}

/* ---- the parsed file -------------------------------------------------------------------------- */
typedef struct {
    char *key;
    uint32_t type;
    union {
        uint64_t u;
        int64_t i;
        double f;
    } v;           /* scalars (normalised: unsigned in u, signed in i, floats in f) */
    size_t off;    /* string: offset of its bytes; array: offset of its first element */
    uint64_t len;  /* string: byte length; array: element count */
    uint32_t atype;     /* array element type */
    size_t *elem;       /* arrays of strings: offset of each element's u64 length */
    size_t raw_a, raw_b; /* the encoded value (type word to its end), for copying it to another file */
} gg_kv;

struct lg_gguf {
    char *name;
    lg_mmap map; /* .data NULL when opened over memory */
    const uint8_t *p;
    size_t size;
    uint32_t version;
    size_t alignment, data_off;
    int n_kv, n_t;
    gg_kv *kv;
    int *kv_sorted; /* indices sorted by key */
    lg_gguf_tensor *t;
    int *t_sorted;  /* indices sorted by name */
};

/* cursor over the bytes; every read checks what is left */
typedef struct {
    const uint8_t *p;
    size_t size, pos;
    const char *name;
} cur;

static int need(cur *c, size_t n, const char *what) {
    if (n > c->size - c->pos)
        return lg_errorf("%s: truncated: %s needs %zu bytes at offset %zu but the file has %zu", c->name, what, n,
                         c->pos, c->size);
    return 0;
}
static int rd(cur *c, void *dst, size_t n, const char *what) {
    if (need(c, n, what)) return -1;
    memcpy(dst, c->p + c->pos, n); /* files are little-endian; so is every host we build on */
    c->pos += n;
    return 0;
}
static int rd_u32(cur *c, uint32_t *v, const char *what) { return rd(c, v, 4, what); }
static int rd_u64(cur *c, uint64_t *v, const char *what) { return rd(c, v, 8, what); }

/* string: u64 length + bytes; returns offset of the bytes */
static int rd_str(cur *c, size_t *off, uint64_t *len, const char *what) {
    if (rd_u64(c, len, what)) return -1;
    if (*len > c->size - c->pos)
        return lg_errorf("%s: %s at offset %zu has length %llu, beyond the end of the file (%zu bytes left)", c->name,
                         what, c->pos - 8, (unsigned long long)*len, c->size - c->pos);
    *off = c->pos;
    c->pos += (size_t)*len;
    return 0;
}

static size_t scalar_size(uint32_t t) {
    switch (t) {
    case LG_GGUF_U8: case LG_GGUF_I8: case LG_GGUF_BOOL: return 1;
    case LG_GGUF_U16: case LG_GGUF_I16: return 2;
    case LG_GGUF_U32: case LG_GGUF_I32: case LG_GGUF_F32: return 4;
    case LG_GGUF_U64: case LG_GGUF_I64: case LG_GGUF_F64: return 8;
    default: return 0;
    }
}

/* Smallest encoding of one value of type t (to bound counts by the bytes left before allocating). */
static size_t min_size(uint32_t t) { return t == LG_GGUF_STRING ? 8 : t == LG_GGUF_ARRAY ? 12 : scalar_size(t); }

static void read_scalar(const uint8_t *p, uint32_t t, gg_kv *kv) {
    uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32; float f32;
    switch (t) {
    case LG_GGUF_U8: case LG_GGUF_BOOL: memcpy(&u8, p, 1); kv->v.u = u8; break;
    case LG_GGUF_I8: memcpy(&i8, p, 1); kv->v.i = i8; break;
    case LG_GGUF_U16: memcpy(&u16, p, 2); kv->v.u = u16; break;
    case LG_GGUF_I16: memcpy(&i16, p, 2); kv->v.i = i16; break;
    case LG_GGUF_U32: memcpy(&u32, p, 4); kv->v.u = u32; break;
    case LG_GGUF_I32: memcpy(&i32, p, 4); kv->v.i = i32; break;
    case LG_GGUF_F32: memcpy(&f32, p, 4); kv->v.f = f32; break;
    case LG_GGUF_U64: memcpy(&kv->v.u, p, 8); break;
    case LG_GGUF_I64: memcpy(&kv->v.i, p, 8); break;
    case LG_GGUF_F64: memcpy(&kv->v.f, p, 8); break;
    default: break;
    }
}

/* Walk (and so validate) an array's elements; string arrays at depth 0 get an element index. */
static int skip_array(cur *c, uint32_t at, uint64_t n, int depth, size_t **elem, const char *key) {
    if (depth > 8) return lg_errorf("%s: key '%s': arrays nested deeper than 8", c->name, key);
    if (at > LG_GGUF_F64)
        return lg_errorf("%s: key '%s': array of unknown value type %u at offset %zu", c->name, key, at, c->pos - 12);
    size_t ms = min_size(at);
    if (n > (c->size - c->pos) / ms)
        return lg_errorf("%s: key '%s': array count %llu does not fit in the %zu bytes left at offset %zu", c->name,
                         key, (unsigned long long)n, c->size - c->pos, c->pos);
    if (at != LG_GGUF_STRING && at != LG_GGUF_ARRAY) {
        c->pos += (size_t)n * ms;
        return 0;
    }
    if (elem && at == LG_GGUF_STRING) *elem = lg_malloc((size_t)(n ? n : 1) * sizeof(size_t));
    for (uint64_t i = 0; i < n; i++) {
        if (at == LG_GGUF_STRING) {
            size_t off;
            uint64_t len;
            if (elem && *elem) (*elem)[i] = c->pos;
            if (rd_str(c, &off, &len, "array string")) return lg_errorf_prefix("key '%s' element %llu", key, (unsigned long long)i);
        } else {
            uint32_t t2;
            uint64_t n2;
            if (rd_u32(c, &t2, "nested array type") || rd_u64(c, &n2, "nested array count")) return -1;
            if (skip_array(c, t2, n2, depth + 1, NULL, key)) return -1;
        }
    }
    return 0;
}

static const char *cmp_base; /* qsort has no context argument; guarded by being set right before use */
static int kv_cmp(const void *a, const void *b) {
    const gg_kv *kv = (const gg_kv *)cmp_base;
    return strcmp(kv[*(const int *)a].key, kv[*(const int *)b].key);
}
static int t_cmp(const void *a, const void *b) {
    const lg_gguf_tensor *t = (const lg_gguf_tensor *)cmp_base;
    return strcmp(t[*(const int *)a].name, t[*(const int *)b].name);
}
static const lg_gguf_tensor *off_base;
static int off_cmp(const void *a, const void *b) {
    uint64_t x = off_base[*(const int *)a].offset, y = off_base[*(const int *)b].offset;
    return x < y ? -1 : x > y;
}

/* a key / tensor name copied as a C string: embedded NULs would make two names look alike */
static char *dup_name(cur *c, size_t off, uint64_t len, const char *what) {
    if (memchr(c->p + off, 0, (size_t)len)) {
        lg_errorf("%s: %s at offset %zu contains a NUL byte", c->name, what, off);
        return NULL;
    }
    char *s = lg_malloc((size_t)len + 1);
    memcpy(s, c->p + off, (size_t)len);
    s[len] = 0;
    return s;
}

static int parse(lg_gguf *g) {
    cur c = {g->p, g->size, 0, g->name};
    if (g->size < 4 || memcmp(g->p, "GGUF", 4))
        return lg_errorf("%s: not a GGUF file (bad magic: expected \"GGUF\")", g->name);
    c.pos = 4;
    if (rd_u32(&c, &g->version, "version")) return -1;
    if (g->version == 0x02000000u || g->version == 0x03000000u)
        return lg_errorf("%s: big-endian GGUF files are not supported", g->name);
    if (g->version == 1) return lg_errorf("%s: GGUF version 1 is not supported (only versions 2 and 3)", g->name);
    if (g->version != 2 && g->version != 3)
        return lg_errorf("%s: unsupported GGUF version %u (only versions 2 and 3)", g->name, g->version);
    uint64_t nt, nkv;
    if (rd_u64(&c, &nt, "tensor count") || rd_u64(&c, &nkv, "key/value count")) return -1;
    if (nkv > (c.size - c.pos) / 12 || nkv > INT32_MAX)
        return lg_errorf("%s: key/value count %llu is impossible for a file of %zu bytes", g->name,
                         (unsigned long long)nkv, g->size);
    g->kv = lg_calloc((size_t)(nkv ? nkv : 1), sizeof(gg_kv));
    g->alignment = 32;
    for (uint64_t i = 0; i < nkv; i++) {
        gg_kv *kv = &g->kv[i];
        size_t koff;
        uint64_t klen;
        if (rd_str(&c, &koff, &klen, "metadata key")) return lg_errorf_prefix("key/value %llu", (unsigned long long)i);
        if (!(kv->key = dup_name(&c, koff, klen, "metadata key"))) return -1;
        g->n_kv = (int)i + 1;
        kv->raw_a = c.pos;
        if (rd_u32(&c, &kv->type, "value type")) return -1;
        if (kv->type > LG_GGUF_F64)
            return lg_errorf("%s: key '%s' has unknown value type %u", g->name, kv->key, kv->type);
        if (kv->type == LG_GGUF_STRING) {
            if (rd_str(&c, &kv->off, &kv->len, "string value")) return lg_errorf_prefix("key '%s'", kv->key);
        } else if (kv->type == LG_GGUF_ARRAY) {
            if (rd_u32(&c, &kv->atype, "array type") || rd_u64(&c, &kv->len, "array count")) return -1;
            kv->off = c.pos;
            if (skip_array(&c, kv->atype, kv->len, 0, &kv->elem, kv->key)) return -1;
        } else {
            size_t n = scalar_size(kv->type);
            if (need(&c, n, "scalar value")) return lg_errorf_prefix("key '%s'", kv->key);
            read_scalar(c.p + c.pos, kv->type, kv);
            c.pos += n;
        }
        kv->raw_b = c.pos;
    }
    /* keys sorted once: duplicates found and lookups by binary search */
    g->kv_sorted = lg_malloc((size_t)(g->n_kv ? g->n_kv : 1) * sizeof(int));
    for (int i = 0; i < g->n_kv; i++) g->kv_sorted[i] = i;
    cmp_base = (const char *)g->kv;
    qsort(g->kv_sorted, (size_t)g->n_kv, sizeof(int), kv_cmp);
    for (int i = 1; i < g->n_kv; i++)
        if (!strcmp(g->kv[g->kv_sorted[i]].key, g->kv[g->kv_sorted[i - 1]].key))
            return lg_errorf("%s: duplicate metadata key '%s'", g->name, g->kv[g->kv_sorted[i]].key);
    int ai = lg_gguf_find_kv(g, "general.alignment");
    if (ai >= 0) {
        const gg_kv *a = &g->kv[ai];
        if (a->type != LG_GGUF_U32)
            return lg_errorf("%s: general.alignment has type %s, expected u32", g->name, value_type_name(a->type));
        if (a->v.u == 0 || (a->v.u & (a->v.u - 1)))
            return lg_errorf("%s: general.alignment %llu is not a power of two", g->name, (unsigned long long)a->v.u);
        g->alignment = (size_t)a->v.u;
    }
    /* tensor infos: at least name length 8 + n_dims 4 + one dim 8 + type 4 + offset 8 bytes each */
    if (nt > (c.size - c.pos) / 32 || nt > INT32_MAX)
        return lg_errorf("%s: tensor count %llu is impossible for a file of %zu bytes", g->name,
                         (unsigned long long)nt, g->size);
    g->t = lg_calloc((size_t)(nt ? nt : 1), sizeof(lg_gguf_tensor));
    for (uint64_t i = 0; i < nt; i++) {
        lg_gguf_tensor *t = &g->t[i];
        size_t noff;
        uint64_t nlen;
        if (rd_str(&c, &noff, &nlen, "tensor name")) return lg_errorf_prefix("tensor info %llu", (unsigned long long)i);
        if (!(t->name = dup_name(&c, noff, nlen, "tensor name"))) return -1;
        g->n_t = (int)i + 1;
        uint32_t nd;
        if (rd_u32(&c, &nd, "tensor n_dims")) return -1;
        if (nd < 1 || nd > 4) return lg_errorf("%s: tensor '%s' has %u dimensions (1 to 4 allowed)", g->name, t->name, nd);
        t->n_dims = (int)nd;
        t->numel = 1;
        for (int d = 0; d < 4; d++) t->ne[d] = 1;
        for (uint32_t d = 0; d < nd; d++) {
            uint64_t ne;
            if (rd_u64(&c, &ne, "tensor dimension")) return -1;
            if (ne > (uint64_t)INT64_MAX)
                return lg_errorf("%s: tensor '%s' dimension %u is %llu, too large", g->name, t->name, d,
                                 (unsigned long long)ne);
            if (ne && (uint64_t)t->numel > (uint64_t)INT64_MAX / ne)
                return lg_errorf("%s: tensor '%s' element count overflows", g->name, t->name);
            t->ne[d] = (int64_t)ne;
            t->numel *= (int64_t)ne;
        }
        if (rd_u32(&c, &t->type, "tensor type") || rd_u64(&c, &t->offset, "tensor offset")) return -1;
        const ggml_type_info *ti = type_info(t->type);
        if (!ti) return lg_errorf("%s: tensor '%s' has unknown ggml type %u", g->name, t->name, t->type);
        if (t->ne[0] % ti->blck)
            return lg_errorf("%s: tensor '%s' row length %lld is not a multiple of the %s block size %d", g->name,
                             t->name, (long long)t->ne[0], ti->name, ti->blck);
        uint64_t blocks = (uint64_t)t->numel / (uint64_t)ti->blck;
        if (blocks > (uint64_t)(SIZE_MAX / 2) / (uint64_t)ti->size)
            return lg_errorf("%s: tensor '%s' byte size overflows", g->name, t->name);
        t->nbytes = (size_t)(blocks * (uint64_t)ti->size);
        if (t->offset % g->alignment)
            return lg_errorf("%s: tensor '%s' offset %llu is not a multiple of the alignment %zu", g->name, t->name,
                             (unsigned long long)t->offset, g->alignment);
    }
    /* data section: after the infos, padded to the alignment */
    size_t pad = (g->alignment - c.pos % g->alignment) % g->alignment;
    g->data_off = c.pos + pad;
    size_t avail = g->data_off <= g->size ? g->size - g->data_off : 0;
    for (int i = 0; i < g->n_t; i++) {
        lg_gguf_tensor *t = &g->t[i];
        if (t->offset > avail || t->nbytes > avail - t->offset)
            return lg_errorf("%s: tensor '%s' data [%llu, %llu) is outside the data section (%zu bytes at offset %zu)%s",
                             g->name, t->name, (unsigned long long)t->offset,
                             (unsigned long long)t->offset + (unsigned long long)t->nbytes, avail, g->data_off,
                             " — file truncated?");
        t->data = g->p + g->data_off + t->offset;
    }
    g->t_sorted = lg_malloc((size_t)(g->n_t ? g->n_t : 1) * sizeof(int));
    for (int i = 0; i < g->n_t; i++) g->t_sorted[i] = i;
    cmp_base = (const char *)g->t;
    qsort(g->t_sorted, (size_t)g->n_t, sizeof(int), t_cmp);
    for (int i = 1; i < g->n_t; i++)
        if (!strcmp(g->t[g->t_sorted[i]].name, g->t[g->t_sorted[i - 1]].name))
            return lg_errorf("%s: duplicate tensor name '%s'", g->name, g->t[g->t_sorted[i]].name);
    /* overlapping data would mean a corrupt (or hostile) offset table */
    int *by_off = lg_malloc((size_t)(g->n_t ? g->n_t : 1) * sizeof(int));
    for (int i = 0; i < g->n_t; i++) by_off[i] = i;
    off_base = g->t;
    qsort(by_off, (size_t)g->n_t, sizeof(int), off_cmp);
    int rc = 0;
    for (int i = 1; i < g->n_t && !rc; i++) {
        const lg_gguf_tensor *a = &g->t[by_off[i - 1]], *b = &g->t[by_off[i]];
        if (a->nbytes && b->nbytes && a->offset + a->nbytes > b->offset)
            rc = lg_errorf("%s: tensors '%s' and '%s' overlap in the data section", g->name, a->name, b->name);
    }
    free(by_off);
    return rc;
}

static int open_common(lg_gguf *g, lg_gguf **out) {
    /* the comparators above use file-scope state: one parse at a time */
    static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&mu);
    int rc = parse(g);
    pthread_mutex_unlock(&mu);
    if (rc) {
        lg_gguf_close(g);
        return -1;
    }
    *out = g;
    return 0;
}

int lg_gguf_open_mem(const void *data, size_t size, const char *name, lg_gguf **out) {
    *out = NULL;
    lg_gguf *g = lg_calloc(1, sizeof *g);
    g->name = lg_strdup(name ? name : "gguf");
    g->p = data;
    g->size = data ? size : 0;
    return open_common(g, out);
}

int lg_gguf_open(const char *path, lg_gguf **out) {
    *out = NULL;
    lg_gguf *g = lg_calloc(1, sizeof *g);
    g->name = lg_strdup(path);
    if (lg_mmap_file(path, &g->map) != 0) {
        lg_gguf_close(g);
        return -1;
    }
    g->p = g->map.data;
    g->size = g->map.size;
    return open_common(g, out);
}

void lg_gguf_close(lg_gguf *g) {
    if (!g) return;
    for (int i = 0; i < g->n_kv; i++) {
        free(g->kv[i].key);
        free(g->kv[i].elem);
    }
    for (int i = 0; i < g->n_t; i++) free((char *)g->t[i].name);
    free(g->kv);
    free(g->t);
    free(g->kv_sorted);
    free(g->t_sorted);
    lg_munmap(&g->map);
    free(g->name);
    free(g);
}

int lg_gguf_is_gguf(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    char m[4];
    int ok = fread(m, 1, 4, f) == 4 && !memcmp(m, "GGUF", 4);
    fclose(f);
    return ok;
}

uint32_t lg_gguf_version(const lg_gguf *g) { return g->version; }
const char *lg_gguf_name(const lg_gguf *g) { return g->name; }
size_t lg_gguf_alignment(const lg_gguf *g) { return g->alignment; }
size_t lg_gguf_data_offset(const lg_gguf *g) { return g->data_off; }

/* ---- metadata access ------------------------------------------------------------------------- */
int lg_gguf_n_kv(const lg_gguf *g) { return g->n_kv; }
int lg_gguf_kv_raw(const lg_gguf *g, int i, const void **p, size_t *n) {
    if (i < 0 || i >= g->n_kv) return -1;
    *p = g->p + g->kv[i].raw_a;
    *n = g->kv[i].raw_b - g->kv[i].raw_a;
    return 0;
}
const char *lg_gguf_kv_key(const lg_gguf *g, int i) { return i >= 0 && i < g->n_kv ? g->kv[i].key : NULL; }
int lg_gguf_kv_type(const lg_gguf *g, int i) { return i >= 0 && i < g->n_kv ? (int)g->kv[i].type : -1; }

int lg_gguf_find_kv(const lg_gguf *g, const char *key) {
    int lo = 0, hi = g->n_kv - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2, k = g->kv_sorted[mid];
        int c = strcmp(g->kv[k].key, key);
        if (!c) return k;
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return -1;
}

static int is_int_type(uint32_t t) {
    return t == LG_GGUF_U8 || t == LG_GGUF_I8 || t == LG_GGUF_U16 || t == LG_GGUF_I16 || t == LG_GGUF_U32 ||
           t == LG_GGUF_I32 || t == LG_GGUF_U64 || t == LG_GGUF_I64 || t == LG_GGUF_BOOL;
}
static int is_signed(uint32_t t) { return t == LG_GGUF_I8 || t == LG_GGUF_I16 || t == LG_GGUF_I32 || t == LG_GGUF_I64; }
static int is_float(uint32_t t) { return t == LG_GGUF_F32 || t == LG_GGUF_F64; }

static const gg_kv *getkv(const lg_gguf *g, const char *key) {
    int i = lg_gguf_find_kv(g, key);
    return i < 0 ? NULL : &g->kv[i];
}
static int wrong_type(const lg_gguf *g, const gg_kv *kv, const char *want) {
    return lg_errorf("%s: metadata '%s' has type %s, expected %s", g->name, kv->key, value_type_name(kv->type), want);
}

int lg_gguf_get_int(const lg_gguf *g, const char *key, int64_t *v) {
    const gg_kv *kv = getkv(g, key);
    if (!kv) return 1;
    if (!is_int_type(kv->type)) return wrong_type(g, kv, "an integer");
    if (is_signed(kv->type)) *v = kv->v.i;
    else if (kv->v.u > (uint64_t)INT64_MAX)
        return lg_errorf("%s: metadata '%s' = %llu is too large", g->name, key, (unsigned long long)kv->v.u);
    else *v = (int64_t)kv->v.u;
    return 0;
}

int lg_gguf_get_float(const lg_gguf *g, const char *key, double *v) {
    const gg_kv *kv = getkv(g, key);
    if (!kv) return 1;
    if (is_float(kv->type)) *v = kv->v.f;
    else if (is_int_type(kv->type)) *v = is_signed(kv->type) ? (double)kv->v.i : (double)kv->v.u;
    else return wrong_type(g, kv, "a number");
    return 0;
}

int lg_gguf_get_bool(const lg_gguf *g, const char *key, int *v) {
    const gg_kv *kv = getkv(g, key);
    if (!kv) return 1;
    if (kv->type != LG_GGUF_BOOL) return wrong_type(g, kv, "bool");
    *v = kv->v.u != 0;
    return 0;
}

int lg_gguf_get_str(const lg_gguf *g, const char *key, const char **s, size_t *len) {
    const gg_kv *kv = getkv(g, key);
    if (!kv) return 1;
    if (kv->type != LG_GGUF_STRING) return wrong_type(g, kv, "string");
    *s = (const char *)g->p + kv->off;
    *len = (size_t)kv->len;
    return 0;
}

int lg_gguf_get_arr(const lg_gguf *g, const char *key, int *elem_type, uint64_t *n) {
    const gg_kv *kv = getkv(g, key);
    if (!kv) return 1;
    if (kv->type != LG_GGUF_ARRAY) return wrong_type(g, kv, "array");
    *elem_type = (int)kv->atype;
    *n = kv->len;
    return 0;
}

int lg_gguf_arr_str(const lg_gguf *g, const char *key, uint64_t i, const char **s, size_t *len) {
    const gg_kv *kv = getkv(g, key);
    if (!kv || kv->type != LG_GGUF_ARRAY || kv->atype != LG_GGUF_STRING || i >= kv->len) return -1;
    uint64_t l;
    memcpy(&l, g->p + kv->elem[i], 8);
    *s = (const char *)g->p + kv->elem[i] + 8;
    *len = (size_t)l;
    return 0;
}

int lg_gguf_arr_num(const lg_gguf *g, const char *key, uint64_t i, double *v) {
    const gg_kv *kv = getkv(g, key);
    if (!kv || kv->type != LG_GGUF_ARRAY || i >= kv->len) return -1;
    size_t sz = scalar_size(kv->atype);
    if (!sz) return -1;
    gg_kv tmp;
    read_scalar(g->p + kv->off + (size_t)i * sz, kv->atype, &tmp);
    *v = is_float(kv->atype) ? tmp.v.f : is_signed(kv->atype) ? (double)tmp.v.i : (double)tmp.v.u;
    return 0;
}

/* ---- tensors ----------------------------------------------------------------------------------- */
int lg_gguf_n_tensors(const lg_gguf *g) { return g->n_t; }
const lg_gguf_tensor *lg_gguf_tensor_at(const lg_gguf *g, int i) { return i >= 0 && i < g->n_t ? &g->t[i] : NULL; }

const lg_gguf_tensor *lg_gguf_find_tensor(const lg_gguf *g, const char *name) {
    int lo = 0, hi = g->n_t - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2, k = g->t_sorted[mid];
        int c = strcmp(g->t[k].name, name);
        if (!c) return &g->t[k];
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return NULL;
}

static inline float half(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return lg_f16_to_f32(h);
}

/* ggml block layouts: Q8_0 = f16 d + 32 int8, x = d*q. Q4_0 = f16 d + 16 bytes; byte j holds
 * element j in its low nibble and element j+16 in its high nibble; x = d*(q-8). Q4_1 = f16 d,
 * f16 m + 16 bytes as Q4_0; x = d*q + m (product rounded before the add, as ggml does). */
int lg_gguf_dequant(uint32_t type, const void *src, float *dst, int64_t n) {
    const uint8_t *s = src;
    switch (type) {
    case LG_GGML_F32:
        memcpy(dst, s, (size_t)n * 4);
        return 0;
    case LG_GGML_F16:
        for (int64_t i = 0; i < n; i++) dst[i] = half(s + 2 * i);
        return 0;
    case LG_GGML_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            dst[i] = lg_bf16_to_f32(h);
        }
        return 0;
    case LG_GGML_Q8_0:
        for (int64_t b = 0; b < n / 32; b++, s += 34, dst += 32) {
            float d = half(s);
            for (int j = 0; j < 32; j++) dst[j] = d * (float)(int8_t)s[2 + j];
        }
        return 0;
    case LG_GGML_Q4_0:
        for (int64_t b = 0; b < n / 32; b++, s += 18, dst += 32) {
            float d = half(s);
            for (int j = 0; j < 16; j++) {
                dst[j] = d * (float)((s[2 + j] & 0x0F) - 8);
                dst[j + 16] = d * (float)((s[2 + j] >> 4) - 8);
            }
        }
        return 0;
    case LG_GGML_Q4_1:
        for (int64_t b = 0; b < n / 32; b++, s += 20, dst += 32) {
            float d = half(s), m = half(s + 2);
            for (int j = 0; j < 16; j++) {
                float lo = d * (float)(s[4 + j] & 0x0F), hi = d * (float)(s[4 + j] >> 4);
                dst[j] = lo + m;
                dst[j + 16] = hi + m;
            }
        }
        return 0;
    case LG_GGML_Q5_0:
    case LG_GGML_Q5_1: {
        const int one = type == LG_GGML_Q5_1, bs = one ? 24 : 22, qo = one ? 8 : 6;
        for (int64_t b = 0; b < n / 32; b++, s += bs, dst += 32) {
            float d = half(s), m = one ? half(s + 2) : 0.0f;
            uint32_t qh;
            memcpy(&qh, s + qo - 4, 4);
            for (int j = 0; j < 16; j++) {
                int x0 = (s[qo + j] & 0x0F) | (((qh >> j) << 4) & 0x10), x1 = (s[qo + j] >> 4) | ((qh >> (j + 12)) & 0x10);
                if (one) {
                    float lo = (float)x0 * d, hi = (float)x1 * d;
                    dst[j] = lo + m, dst[j + 16] = hi + m;
                } else {
                    dst[j] = (float)(x0 - 16) * d, dst[j + 16] = (float)(x1 - 16) * d;
                }
            }
        }
        return 0;
    }
    /* K-quants: super-blocks of 256 (ggml-quants.c dequantize_row_q*_K, products rounded before
     * the subtraction, as ggml and gguf-py compute them) */
    case LG_GGML_Q2_K:
        for (int64_t b = 0; b < n / 256; b++, s += 84) {
            const uint8_t *sc = s, *q = s + 16;
            float d = half(s + 80), mn = half(s + 82);
            int is = 0;
            for (int h = 0; h < 256; h += 128, q += 32)
                for (int shift = 0; shift < 8; shift += 2)
                    for (int k = 0; k < 2; k++) {
                        uint8_t c = sc[is++];
                        float dl = d * (float)(c & 0xF), ml = mn * (float)(c >> 4);
                        for (int l = 0; l < 16; l++) {
                            float v = dl * (float)((q[l + 16 * k] >> shift) & 3);
                            *dst++ = v - ml;
                        }
                    }
        }
        return 0;
    case LG_GGML_Q3_K:
        for (int64_t b = 0; b < n / 256; b++, s += 110) {
            const uint8_t *hm = s, *q = s + 32, *raw = s + 96;
            float d = half(s + 108);
            uint32_t aux[4];
            memcpy(aux, raw, 12);
            uint32_t tmp = aux[2];
            const uint32_t k1 = 0x03030303, k2 = 0x0f0f0f0f;
            aux[2] = ((aux[0] >> 4) & k2) | (((tmp >> 4) & k1) << 4);
            aux[3] = ((aux[1] >> 4) & k2) | (((tmp >> 6) & k1) << 4);
            aux[0] = (aux[0] & k2) | (((tmp >> 0) & k1) << 4);
            aux[1] = (aux[1] & k2) | (((tmp >> 2) & k1) << 4);
            int8_t scales[16];
            memcpy(scales, aux, 16);
            int is = 0;
            uint8_t m = 1;
            for (int h = 0; h < 256; h += 128, q += 32)
                for (int shift = 0; shift < 8; shift += 2, m <<= 1)
                    for (int k = 0; k < 2; k++) {
                        float dl = d * (float)(scales[is++] - 32);
                        for (int l = 0; l < 16; l++)
                            *dst++ = dl * (float)(((q[l + 16 * k] >> shift) & 3) - ((hm[l + 16 * k] & m) ? 0 : 4));
                    }
        }
        return 0;
    case LG_GGML_Q4_K:
    case LG_GGML_Q5_K: {
        const int five = type == LG_GGML_Q5_K, bs = five ? 176 : 144;
        for (int64_t b = 0; b < n / 256; b++, s += bs) {
            float d = half(s), mn = half(s + 2);
            const uint8_t *sc = s + 4, *qh = s + 16, *q = s + (five ? 48 : 16);
            uint8_t u1 = 1, u2 = 2;
            for (int j = 0, is = 0; j < 256; j += 64, is += 2, q += 32, u1 <<= 2, u2 <<= 2) {
                uint8_t scl[2], mnl[2];
                for (int k = 0; k < 2; k++) {
                    int jj = is + k;
                    if (jj < 4) scl[k] = sc[jj] & 63, mnl[k] = sc[jj + 4] & 63;
                    else
                        scl[k] = (uint8_t)((sc[jj + 4] & 0xF) | ((sc[jj - 4] >> 6) << 4)),
                        mnl[k] = (uint8_t)((sc[jj + 4] >> 4) | ((sc[jj] >> 6) << 4));
                }
                float d1 = d * (float)scl[0], m1 = mn * (float)mnl[0], d2 = d * (float)scl[1], m2 = mn * (float)mnl[1];
                for (int l = 0; l < 32; l++) {
                    float v = d1 * (float)((q[l] & 0xF) + (five && (qh[l] & u1) ? 16 : 0));
                    *dst++ = v - m1;
                }
                for (int l = 0; l < 32; l++) {
                    float v = d2 * (float)((q[l] >> 4) + (five && (qh[l] & u2) ? 16 : 0));
                    *dst++ = v - m2;
                }
            }
        }
        return 0;
    }
    case LG_GGML_Q6_K:
        for (int64_t b = 0; b < n / 256; b++, s += 210) {
            const uint8_t *ql = s, *qh = s + 128;
            const int8_t *sc = (const int8_t *)(s + 192);
            float d = half(s + 208);
            for (int h = 0; h < 256; h += 128, dst += 128, ql += 64, qh += 32, sc += 8)
                for (int l = 0; l < 32; l++) {
                    int is = l / 16;
                    int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                    int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                    int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                    int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                    dst[l] = d * (float)sc[is] * (float)q1;
                    dst[l + 32] = d * (float)sc[is + 2] * (float)q2;
                    dst[l + 64] = d * (float)sc[is + 4] * (float)q3;
                    dst[l + 96] = d * (float)sc[is + 6] * (float)q4;
                }
        }
        return 0;
    default:
        return lg_errorf("cannot dequantise ggml type %s (supported: " SUPPORTED_TYPES ")", lg_ggml_type_name(type));
    }
}

static size_t row_bytes(const lg_gguf_tensor *t) {
    const ggml_type_info *ti = type_info(t->type);
    return (size_t)(t->ne[0] / ti->blck) * (size_t)ti->size;
}

int lg_gguf_read_f32(const lg_gguf *g, const lg_gguf_tensor *t, float *dst) {
    if (!lg_ggml_type_supported(t->type))
        return lg_errorf("%s: tensor '%s' has type %s, which loraga cannot dequantise (supported: " SUPPORTED_TYPES ")",
                         g->name, t->name, lg_ggml_type_name(t->type));
    int64_t rows = t->ne[0] ? t->numel / t->ne[0] : 0;
    size_t rb = row_bytes(t);
    const uint8_t *base = t->data;
#pragma omp parallel for schedule(static) if (t->numel > (1 << 16))
    for (int64_t r = 0; r < rows; r++) lg_gguf_dequant(t->type, base + (size_t)r * rb, dst + r * t->ne[0], t->ne[0]);
    return 0;
}

/* ---- architectures -> the decoder ------------------------------------------------------------- */
/* llama.cpp's architectures and what they are in Hugging Face's terms. */
static const char *const GG_ARCH[][2] = {
    {"llama", "llama"},   {"qwen2", "qwen2"},         {"qwen3", "qwen3"},
    {"gemma2", "gemma2"}, {"gemma3", "gemma3_text"}, {"phi3", "phi3"},
};

typedef struct {
    lg_gguf *g;
    int owned;
    int n_heads, n_kv_heads, head_dim;
    int permute_qk;  /* llama: the converter permuted q/k rows (and biases) to interleaved RoPE order */
    int norm_plus1;  /* Gemma: the converter stored norm weights as 1 + w */
    int post_norms;  /* Gemma 2/3: post_attention_layernorm is the attention output's norm */
} gm_ctx;

/* HF name -> GGUF name; *perm_heads > 0 when llama.cpp permuted the rows (q: n_heads, k: n_kv_heads). */
static int map_name(const gm_ctx *c, const char *hf, char *out, size_t cap, int *perm_heads) {
    *perm_heads = 0;
    static const char *const top[][2] = {
        {"model.embed_tokens.weight", "token_embd.weight"},
        {"model.norm.weight", "output_norm.weight"},
        {"lm_head.weight", "output.weight"},
    };
    for (size_t i = 0; i < sizeof top / sizeof top[0]; i++)
        if (!strcmp(hf, top[i][0])) return snprintf(out, cap, "%s", top[i][1]), 0;
    /* modules (weight and bias alike); the post-attention norm is Gemma's attention output norm,
     * LLaMA's pre-MLP norm */
    static const char *const layer[][2] = {
        {"input_layernorm", "attn_norm"},
        {"self_attn.q_proj", "attn_q"},
        {"self_attn.k_proj", "attn_k"},
        {"self_attn.v_proj", "attn_v"},
        {"self_attn.o_proj", "attn_output"},
        {"self_attn.qkv_proj", "attn_qkv"},
        {"self_attn.q_norm", "attn_q_norm"},
        {"self_attn.k_norm", "attn_k_norm"},
        {"post_attention_layernorm", "ffn_norm"},
        {"pre_feedforward_layernorm", "ffn_norm"},
        {"post_feedforward_layernorm", "post_ffw_norm"},
        {"mlp.gate_proj", "ffn_gate"},
        {"mlp.up_proj", "ffn_up"},
        {"mlp.gate_up_proj", "ffn_up"}, /* Phi-3: one tensor of 2F rows, gate first, as HF */
        {"mlp.down_proj", "ffn_down"},
    };
    const char *pre = "model.layers.";
    if (strncmp(hf, pre, strlen(pre))) return -1;
    const char *p = hf + strlen(pre);
    char *end;
    long l = strtol(p, &end, 10);
    if (end == p || *end != '.' || l < 0 || l > 100000) return -1;
    const char *mod = end + 1, *suf = strrchr(mod, '.');
    if (!suf || (strcmp(suf, ".weight") && strcmp(suf, ".bias"))) return -1;
    const size_t ml = (size_t)(suf - mod);
    for (size_t i = 0; i < sizeof layer / sizeof layer[0]; i++)
        if (strlen(layer[i][0]) == ml && !strncmp(mod, layer[i][0], ml)) {
            const char *g = layer[i][1];
            if (i == 8 && c->post_norms) g = "post_attention_norm";
            snprintf(out, cap, "blk.%ld.%s%s", l, g, suf);
            if (c->permute_qk && i == 1) *perm_heads = c->n_heads;
            if (c->permute_qk && i == 2) *perm_heads = c->n_kv_heads;
            return 0;
        }
    return -1;
}

static int gm_has(void *ctx, const char *name) {
    gm_ctx *c = ctx;
    char gn[160];
    int ph;
    return map_name(c, name, gn, sizeof gn, &ph) == 0 && lg_gguf_find_tensor(c->g, gn) != NULL;
}

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* weights are computed with: a NaN or an infinity (also from a quantisation block's scale) is refused */
static int check_finite(const lg_gguf *g, const char *gn, const float *x, int64_t n) {
    int64_t bad = lg_first_nonfinite(x, n);
    if (bad < 0) return 0;
    return lg_errorf("%s: tensor '%s' holds a non-finite value (%g at element %lld); refusing it", g->name, gn,
                     (double)x[bad], (long long)bad);
}

/* llama.cpp's converter reorders the rows of each q/k head from Hugging Face's rotate-half layout
 * (pairs i, i + hd/2) to Meta's interleaved one (pairs 2i, 2i+1): GGUF row h*hd + 2i + s holds HF
 * row h*hd + s*hd/2 + i. Reading it back that way gives exactly the HF weights (rope_style HALF).
 * Gemma's norms come back as w from the 1 + w the converter stored. */
static int gm_read(void *ctx, const char *name, float *dst, int ndim, const int64_t *shape) {
    gm_ctx *c = ctx;
    lg_gguf *g = c->g;
    char gn[160];
    int ph;
    if (map_name(c, name, gn, sizeof gn, &ph)) return lg_errorf("%s: no GGUF tensor for '%s'", g->name, name);
    const lg_gguf_tensor *t = lg_gguf_find_tensor(g, gn);
    if (!t) return lg_errorf("%s: no tensor '%s' (for %s)", g->name, gn, name);
    int64_t want_rows = ndim > 1 ? shape[0] : 1, want_cols = ndim > 1 ? shape[1] : shape[0];
    int64_t rows = t->ne[1] * t->ne[2] * t->ne[3];
    int tdims = t->ne[3] > 1 ? 4 : t->ne[2] > 1 ? 3 : t->ne[1] > 1 ? 2 : 1;
    if (t->ne[0] != want_cols || rows != want_rows || tdims > ndim)
        return lg_errorf("%s: tensor '%s' has shape [%lld, %lld] (ne = %lld x %lld), expected [%lld, %lld] for %s",
                         g->name, gn, (long long)rows, (long long)t->ne[0], (long long)t->ne[0], (long long)rows,
                         (long long)want_rows, (long long)want_cols, name);
    if (!lg_ggml_type_supported(t->type))
        return lg_errorf("%s: tensor '%s' has type %s, which loraga cannot dequantise (supported: " SUPPORTED_TYPES ")",
                         g->name, gn, lg_ggml_type_name(t->type));
    if (c->norm_plus1 && ends_with(name, "norm.weight")) {
        if (lg_gguf_read_f32(g, t, dst) != 0) return -1;
        for (int64_t i = 0; i < t->numel; i++) dst[i] -= 1.0f;
        return check_finite(g, gn, dst, t->numel);
    }
    if (!ph) {
        if (lg_gguf_read_f32(g, t, dst) != 0) return -1;
        return check_finite(g, gn, dst, t->numel);
    }
    const int64_t n = ndim > 1 ? rows : t->ne[0]; /* permuted rows: a weight's rows, a bias's entries */
    int hd = (int)(n / ph);
    if (hd * ph != n || hd % 2)
        return lg_errorf("%s: tensor '%s' has %lld rows, not %d heads of an even size", g->name, gn, (long long)n, ph);
    if (ndim == 1) { /* a bias: permute its entries */
        float *tmp = lg_malloc((size_t)n * sizeof(float));
        if (lg_gguf_read_f32(g, t, tmp) != 0) return free(tmp), -1;
        for (int64_t r = 0; r < n; r++) {
            int64_t h = r / hd, j = r % hd, s = j / (hd / 2), i = j % (hd / 2);
            dst[r] = tmp[h * hd + 2 * i + s];
        }
        free(tmp);
        return check_finite(g, gn, dst, n);
    }
    size_t rb = row_bytes(t);
    const uint8_t *base = t->data;
    const int64_t cols = t->ne[0];
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        int64_t h = r / hd, j = r % hd, s = j / (hd / 2), i = j % (hd / 2);
        int64_t src = h * hd + 2 * i + s;
        lg_gguf_dequant(t->type, base + (size_t)src * rb, dst + r * cols, cols);
    }
    return check_finite(g, gn, dst, t->numel);
}

void lg_gguf_model_close(lg_weight_src *src) {
    gm_ctx *c = src->ctx;
    if (!c) return;
    if (c->owned) lg_gguf_close(c->g);
    free(c);
    src->ctx = NULL;
}

/* an integer key that must fit a positive int */
static int get_pos(const lg_gguf *g, const char *key, int required, int dflt, int *out) {
    int64_t v;
    int rc = lg_gguf_get_int(g, key, &v);
    if (rc < 0) return -1;
    if (rc > 0) {
        if (required) return lg_errorf("%s: metadata '%s' is missing", g->name, key);
        *out = dflt;
        return 0;
    }
    if (v <= 0 || v > (1 << 30)) return lg_errorf("%s: metadata '%s' = %lld is out of range", g->name, key, (long long)v);
    *out = (int)v;
    return 0;
}

/* "<arch>.<rest>" */
static const char *akey(const char *arch, const char *rest) {
    static _Thread_local char k[128];
    snprintf(k, sizeof k, "%s.%s", arch, rest);
    return k;
}

/* A small F32-readable tensor of exactly n values (RoPE factors) into dst; 1 if absent. */
static int read_small(const lg_gguf *g, const char *name, int n, float *dst) {
    const lg_gguf_tensor *t = lg_gguf_find_tensor(g, name);
    if (!t) return 1;
    if (t->numel != n) return lg_errorf("%s: tensor '%s' has %lld values, expected head_dim / 2 = %d", g->name, name,
                                        (long long)t->numel, n);
    if (!lg_ggml_type_supported(t->type))
        return lg_errorf("%s: tensor '%s' has type %s", g->name, name, lg_ggml_type_name(t->type));
    return lg_gguf_read_f32(g, t, dst);
}

/* The sliding-window layers: <arch>.attention.sliding_window_pattern as a per-layer array (bool or
 * number), or a period n (layer l slides unless l % n == n - 1), else the default period. */
static int swa_pattern(const lg_gguf *g, const char *arch, int period, lg_config *c) {
    const char *key = akey(arch, "attention.sliding_window_pattern");
    int et;
    uint64_t n;
    int rc = lg_gguf_get_arr(g, key, &et, &n);
    if (rc < 0) return -1;
    if (rc == 0) {
        if (n != (uint64_t)c->n_layers)
            return lg_errorf("%s: %s has %llu entries for %d layers", g->name, key, (unsigned long long)n, c->n_layers);
        for (int l = 0; l < c->n_layers; l++) {
            double v;
            if (lg_gguf_arr_num(g, key, (uint64_t)l, &v) != 0) return lg_errorf("%s: %s must hold numbers", g->name, key);
            c->swa_layers[l] = v != 0;
        }
        return 0;
    }
    if (get_pos(g, key, 0, period, &period)) return -1;
    for (int l = 0; l < c->n_layers; l++) c->swa_layers[l] = l % period < period - 1;
    return 0;
}

int lg_gguf_model_from(lg_gguf *g, lg_config *cfg, lg_weight_src *src) {
    memset(src, 0, sizeof *src);
    memset(cfg, 0, sizeof *cfg);
    const char *arch_s;
    size_t alen;
    int rc = lg_gguf_get_str(g, "general.architecture", &arch_s, &alen);
    if (rc) return rc < 0 ? -1 : lg_errorf("%s: metadata 'general.architecture' is missing", g->name);
    const char *arch = NULL;
    for (size_t i = 0; i < sizeof GG_ARCH / sizeof GG_ARCH[0]; i++)
        if (alen == strlen(GG_ARCH[i][0]) && !memcmp(arch_s, GG_ARCH[i][0], alen)) {
            arch = GG_ARCH[i][0];
            snprintf(cfg->model_type, sizeof cfg->model_type, "%s", GG_ARCH[i][1]);
        }
    if (!arch)
        return lg_errorf("%s: architecture '%.*s' is not supported (llama, qwen2, qwen3, gemma2, gemma3, phi3)", g->name,
                         (int)LG_MIN(alen, 64), arch_s);
    const int llama = !strcmp(arch, "llama"), qwen3 = !strcmp(arch, "qwen3");
    const int gemma2 = !strcmp(arch, "gemma2"), gemma3 = !strcmp(arch, "gemma3"), gemma = gemma2 || gemma3;
    const int phi3 = !strcmp(arch, "phi3");
    cfg->arch = LG_ARCH_LLAMA;
    if (get_pos(g, akey(arch, "block_count"), 1, 0, &cfg->n_layers) ||
        get_pos(g, akey(arch, "embedding_length"), 1, 0, &cfg->dim) ||
        get_pos(g, akey(arch, "feed_forward_length"), 1, 0, &cfg->hidden_dim) ||
        get_pos(g, akey(arch, "attention.head_count"), 1, 0, &cfg->n_heads) ||
        get_pos(g, akey(arch, "attention.head_count_kv"), 0, cfg->n_heads, &cfg->n_kv_heads) ||
        get_pos(g, akey(arch, "context_length"), 1, 0, &cfg->max_seq))
        return -1;
    if (cfg->n_layers > LG_MAX_LAYERS)
        return lg_errorf("%s: %d layers is more than %d", g->name, cfg->n_layers, LG_MAX_LAYERS);
    int kl = 0, vl = 0, rd = 0;
    if (get_pos(g, akey(arch, "attention.key_length"), 0, 0, &kl) ||
        get_pos(g, akey(arch, "attention.value_length"), 0, 0, &vl) ||
        get_pos(g, akey(arch, "rope.dimension_count"), 0, 0, &rd))
        return -1;
    int64_t experts = 0;
    if (lg_gguf_get_int(g, akey(arch, "expert_count"), &experts) < 0) return -1;
    if (experts > 0)
        return lg_errorf("%s: mixture-of-experts %s (%lld experts) is not supported", g->name, arch, (long long)experts);
    cfg->head_dim = kl ? kl : cfg->dim / cfg->n_heads;
    if (vl && vl != cfg->head_dim)
        return lg_errorf("%s: attention value_length %d differs from key_length %d (not supported)", g->name, vl, cfg->head_dim);
    if (rd && rd != cfg->head_dim)
        return lg_errorf("%s: rope.dimension_count %d differs from the head size %d (partial rotary is not supported)",
                         g->name, rd, cfg->head_dim);
    double eps = 1e-5, theta = 10000.0;
    if (lg_gguf_get_float(g, akey(arch, "attention.layer_norm_rms_epsilon"), &eps) < 0 ||
        lg_gguf_get_float(g, akey(arch, "rope.freq_base"), &theta) < 0)
        return -1;
    if (!(eps > 0 && eps < 1) || !(theta > 0 && theta < 1e12))
        return lg_errorf("%s: rms epsilon %g or rope freq_base %g out of range", g->name, eps, theta);
    cfg->norm_eps = (float)eps;
    cfg->rope_theta = (float)theta;
    cfg->rope_style = LG_ROPE_HALF; /* llama's q/k rows are un-permuted on read; the others are NEOX */

    /* RoPE scaling: linear (factor), llama3's factors (rope_freqs), Phi-3's LongRoPE */
    lg_rope_scaling *rs = &cfg->rope_scaling;
    const int half = cfg->head_dim / 2;
    if (half > LG_ROPE_MAX_HALF) return lg_errorf("%s: head size %d too large", g->name, cfg->head_dim);
    const char *st;
    size_t stl;
    rc = lg_gguf_get_str(g, akey(arch, "rope.scaling.type"), &st, &stl);
    if (rc < 0) return -1;
    if (rc == 0 && stl == 6 && !memcmp(st, "linear", 6)) {
        double f = 1.0;
        if (lg_gguf_get_float(g, akey(arch, "rope.scaling.factor"), &f) < 0) return -1;
        if (!(f >= 1.0 && f < 1e6)) return lg_errorf("%s: rope scaling factor %g out of range", g->name, f);
        if (f > 1.0) rs->type = LG_ROPE_LINEAR, rs->factor = (float)f;
    } else if (rc == 0 && !(stl == 4 && !memcmp(st, "none", 4)) && !(phi3 && stl == 8 && !memcmp(st, "longrope", 8))) {
        return lg_errorf("%s: rope scaling '%.*s' is not supported (linear, llama3 factors, Phi-3 longrope)", g->name,
                         (int)LG_MIN(stl, 64), st);
    }
    rc = read_small(g, "rope_freqs.weight", half, rs->short_factor);
    if (rc < 0) return -1;
    if (rc == 0) {
        if (rs->type != LG_ROPE_DEFAULT) return lg_errorf("%s: rope_freqs together with rope scaling", g->name);
        rs->type = LG_ROPE_FACTORS, rs->n_factors = half;
    }
    if (phi3) {
        int r1 = read_small(g, "rope_factors_short.weight", half, rs->short_factor);
        int r2 = r1 < 0 ? -1 : read_small(g, "rope_factors_long.weight", half, rs->long_factor);
        if (r1 < 0 || r2 < 0) return -1;
        if (r1 != r2) return lg_errorf("%s: rope_factors_short and rope_factors_long must come together", g->name);
        if (r1 == 0) {
            double af = 0;
            rs->type = LG_ROPE_LONGROPE, rs->n_factors = half;
            if (get_pos(g, akey(arch, "rope.scaling.original_context_length"), 1, 0, &rs->original_max) ||
                lg_gguf_get_float(g, akey(arch, "rope.scaling.attn_factor"), &af) < 0)
                return -1;
            rs->attn_factor = (float)af;
            rs->factor = (float)cfg->max_seq / (float)rs->original_max;
        }
    }

    /* architecture switches; Gemma's attention scale is llama.cpp's rule (1/sqrt(head_dim), the
     * 27B models 1/sqrt(dim / heads)), which is what their query_pre_attn_scalar holds */
    cfg->qkv_bias = lg_gguf_find_tensor(g, "blk.0.attn_q.bias") != NULL;
    cfg->o_bias = lg_gguf_find_tensor(g, "blk.0.attn_output.bias") != NULL;
    cfg->mlp_bias = lg_gguf_find_tensor(g, "blk.0.ffn_down.bias") != NULL;
    cfg->qk_norm = qwen3 || gemma3;
    cfg->fused_qkv = cfg->fused_gate_up = phi3;
    int window = 0;
    if (get_pos(g, akey(arch, "attention.sliding_window"), 0, gemma2 ? 4096 : 0, &window)) {
        int64_t w0; /* phi3 writes 0 for none, which get_pos refuses */
        if (lg_gguf_get_int(g, akey(arch, "attention.sliding_window"), &w0) != 0 || w0 != 0) return -1;
        window = 0;
    }
    if (gemma) {
        cfg->mlp_act = LG_MLP_GEGLU;
        cfg->gemma_norms = cfg->post_norms = 1;
        cfg->embed_scale = (float)sqrt((double)cfg->dim);
        const int big = (gemma2 && cfg->n_layers == 46) || (gemma3 && cfg->n_layers == 62);
        cfg->attn_scale = (float)(1.0 / sqrt((double)(big ? cfg->dim / cfg->n_heads : cfg->head_dim)));
        double fc = gemma2 ? 30.0 : 0.0, ac = gemma2 ? 50.0 : 0.0;
        if (lg_gguf_get_float(g, akey(arch, "final_logit_softcapping"), &fc) < 0 ||
            (gemma2 && lg_gguf_get_float(g, akey(arch, "attn_logit_softcapping"), &ac) < 0))
            return -1;
        cfg->final_softcap = (float)fc;
        cfg->attn_softcap = (float)ac;
        if (window > 0 && swa_pattern(g, arch, gemma2 ? 2 : 6, cfg) != 0) return -1;
        double local = gemma3 ? 10000.0 : theta;
        if (lg_gguf_get_float(g, akey(arch, "rope.freq_base_swa"), &local) < 0) return -1;
        if (gemma3 || local != theta) cfg->rope_theta_local = (float)local;
    } else if (window > 0) { /* Mistral (as llama), Phi-3: every layer */
        for (int l = 0; l < cfg->n_layers; l++) cfg->swa_layers[l] = 1;
    }
    cfg->sliding_window = window;

    const lg_gguf_tensor *emb = lg_gguf_find_tensor(g, "token_embd.weight");
    if (!emb) return lg_errorf("%s: no tensor 'token_embd.weight'", g->name);
    if (emb->ne[0] != cfg->dim || emb->n_dims != 2 || emb->ne[1] <= 0 || emb->ne[1] > (1 << 30))
        return lg_errorf("%s: token_embd.weight has ne [%lld, %lld], expected [%d, vocab]", g->name,
                         (long long)emb->ne[0], (long long)emb->ne[1], cfg->dim);
    int vocab = (int)emb->ne[1];
    if (get_pos(g, akey(arch, "vocab_size"), 0, vocab, &cfg->vocab_size)) return -1;
    if (cfg->vocab_size != vocab)
        return lg_errorf("%s: %s.vocab_size %d but token_embd.weight has %d rows", g->name, arch, cfg->vocab_size, vocab);
    cfg->tied_embeddings = lg_gguf_find_tensor(g, "output.weight") == NULL;
    int64_t v;
    cfg->bos_id = lg_gguf_get_int(g, "tokenizer.ggml.bos_token_id", &v) == 0 && v < vocab ? (int)v : -1;
    cfg->eos_id = lg_gguf_get_int(g, "tokenizer.ggml.eos_token_id", &v) == 0 && v < vocab ? (int)v : -1;
    cfg->pad_id = lg_gguf_get_int(g, "tokenizer.ggml.padding_token_id", &v) == 0 && v < vocab ? (int)v : -1;
    /* dtype to write back: the matrices' own when they are all F16 (or all BF16), else float32 */
    int n16 = 0, nb16 = 0, nmat = 0;
    for (int i = 0; i < g->n_t; i++) {
        if (g->t[i].n_dims < 2) continue;
        nmat++;
        n16 += g->t[i].type == LG_GGML_F16;
        nb16 += g->t[i].type == LG_GGML_BF16;
    }
    snprintf(cfg->torch_dtype, sizeof cfg->torch_dtype, "%s",
             nmat && n16 == nmat ? "float16" : nmat && nb16 == nmat ? "bfloat16" : "float32");
    if (lg_config_validate(cfg) != 0) return lg_errorf_prefix("%s", g->name);
    if (cfg->head_dim % 2) return lg_errorf("%s: head size %d is odd", g->name, cfg->head_dim);
    gm_ctx *c = lg_calloc(1, sizeof *c);
    c->g = g;
    c->n_heads = cfg->n_heads;
    c->n_kv_heads = cfg->n_kv_heads;
    c->head_dim = cfg->head_dim;
    c->permute_qk = llama;
    c->norm_plus1 = gemma;
    c->post_norms = cfg->post_norms;
    src->ctx = c;
    src->read = gm_read;
    src->has = gm_has;
    return 0;
}

const char *lg_gguf_arch_name(const lg_config *c) {
    if (c->arch == LG_ARCH_LLAMA && (!strcmp(c->model_type, "mistral") || !c->model_type[0])) return "llama";
    for (size_t i = 0; i < sizeof GG_ARCH / sizeof GG_ARCH[0]; i++)
        if (c->arch == LG_ARCH_LLAMA && !strcmp(c->model_type, GG_ARCH[i][1])) return GG_ARCH[i][0];
    lg_errorf("model_type \"%s\" has no GGUF architecture here", c->model_type);
    return NULL;
}

int lg_gguf_tensor_name(const lg_config *c, const char *hf, char *out, size_t cap, int *perm_heads, int *plus1) {
    const char *arch = lg_gguf_arch_name(c);
    if (!arch) return -1;
    const gm_ctx ctx = {.n_heads = c->n_heads, .n_kv_heads = c->n_kv_heads, .head_dim = c->head_dim,
                        .permute_qk = !strcmp(arch, "llama"), .norm_plus1 = c->gemma_norms, .post_norms = c->post_norms};
    if (map_name(&ctx, hf, out, cap, perm_heads) != 0) return -1;
    *plus1 = ctx.norm_plus1 && ends_with(hf, "norm.weight");
    return 0;
}

int lg_gguf_model_open(const char *path, lg_config *cfg, lg_weight_src *src) {
    memset(src, 0, sizeof *src);
    lg_gguf *g;
    if (lg_gguf_open(path, &g) != 0) return -1;
    if (lg_gguf_model_from(g, cfg, src) != 0) {
        lg_gguf_close(g);
        return -1;
    }
    ((gm_ctx *)src->ctx)->owned = 1;
    return 0;
}

/* ---- tokenizer from metadata ---------------------------------------------------------------------- */
static char *cstr(const char *s, size_t n) {
    char *r = lg_malloc(n + 1);
    memcpy(r, s, n);
    r[n] = 0;
    return r;
}

/* GPT-2's byte -> code point map: printable Latin-1 bytes stand for themselves, the rest are
 * moved to 256 + k in byte order. */
static void byte_alphabet(uint32_t cp[256]) {
    int k = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        cp[b] = printable ? (uint32_t)b : (uint32_t)(256 + k++);
    }
}

/* 1 if every code point of s is in the byte alphabet (so s is already a byte-level spelling) */
static int in_alphabet(const char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        uint32_t cp;
        int len;
        if (c < 0x80) cp = c, len = 1;
        else if (c >= 0xC2 && c < 0xE0 && i + 1 < n && (s[i + 1] & 0xC0) == 0x80)
            cp = ((uint32_t)(c & 0x1F) << 6) | (s[i + 1] & 0x3F), len = 2;
        else return 0; /* the alphabet lies below U+0144: 2-byte sequences at most */
        if (!((cp >= 33 && cp <= 126) || (cp >= 161 && cp <= 172) || (cp >= 174 && cp <= 323))) return 0;
        i += (size_t)len;
    }
    return 1;
}

static void put_cp(char **p, size_t *n, uint32_t cp) {
    char *d = *p + *n;
    if (cp < 0x80) d[0] = (char)cp, *n += 1;
    else if (cp < 0x800) d[0] = (char)(0xC0 | (cp >> 6)), d[1] = (char)(0x80 | (cp & 0x3F)), *n += 2;
    else d[0] = (char)(0xE0 | (cp >> 12)), d[1] = (char)(0x80 | ((cp >> 6) & 0x3F)), d[2] = (char)(0x80 | (cp & 0x3F)), *n += 3;
}

/* The pre-tokenizer llama.cpp applies for a tokenizer.ggml.pre name, as tokenizer.json parts.
 * gpt2: GPT-2's regex (ByteLevel use_regex). smollm and its siblings: each digit split off, then
 * GPT-2's regex (llama.cpp's regex pair \p{N} + GPT-2, which is HF's Digits(individual) +
 * ByteLevel in SmolLM's own tokenizer.json). llama3 / qwen2 families: their split regex, then
 * ByteLevel without a regex. */
static const char *const LLAMA3_RE =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
    "\\s+(?!\\S)|\\s+";
static const char *const QWEN2_RE =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
    "\\s+(?!\\S)|\\s+";

static cJSON *bytelevel(int use_regex) {
    cJSON *b = cJSON_CreateObject();
    cJSON_AddStringToObject(b, "type", "ByteLevel");
    cJSON_AddBoolToObject(b, "add_prefix_space", 0);
    cJSON_AddBoolToObject(b, "trim_offsets", 1);
    cJSON_AddBoolToObject(b, "use_regex", use_regex);
    return b;
}

static cJSON *pretokenizer_for(const lg_gguf *g, const char *pre, size_t n) {
    static const char *const gpt2[] = {"gpt2", "gpt-2", "default", NULL};
    static const char *const digits[] = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", NULL};
    static const char *const llama3[] = {"llama3", "llama-v3", "llama-bpe", "smaug-bpe", "dbrx", "falcon3", NULL};
    static const char *const qwen2[] = {"qwen2", "deepseek-r1-qwen", NULL};
    char name[64];
    snprintf(name, sizeof name, "%.*s", (int)LG_MIN(n, sizeof name - 1), pre ? pre : "default");
    int kind = -1;
    const char *const *lists[] = {gpt2, digits, llama3, qwen2};
    for (int k = 0; k < 4 && kind < 0; k++)
        for (int i = 0; lists[k][i]; i++)
            if (!strcmp(name, lists[k][i])) kind = k;
    if (kind < 0) {
        lg_errorf("%s: tokenizer.ggml.pre '%s' is not supported (supported: gpt2, smollm, starcoder, refact, "
                  "command-r, codeshell, exaone, llama3, llama-bpe, smaug-bpe, dbrx, falcon3, qwen2)",
                  g->name, name);
        return NULL;
    }
    if (kind == 0) return bytelevel(1);
    cJSON *seq = cJSON_CreateObject(), *arr = cJSON_CreateArray(), *x = cJSON_CreateObject();
    cJSON_AddStringToObject(seq, "type", "Sequence");
    if (kind == 1) {
        cJSON_AddStringToObject(x, "type", "Digits");
        cJSON_AddBoolToObject(x, "individual_digits", 1);
    } else {
        cJSON_AddStringToObject(x, "type", "Split");
        cJSON *pat = cJSON_CreateObject();
        cJSON_AddStringToObject(pat, "Regex", kind == 2 ? LLAMA3_RE : QWEN2_RE);
        cJSON_AddItemToObject(x, "pattern", pat);
        cJSON_AddStringToObject(x, "behavior", "Isolated");
        cJSON_AddBoolToObject(x, "invert", 0);
    }
    cJSON_AddItemToArray(arr, x);
    cJSON_AddItemToArray(arr, bytelevel(kind == 1));
    cJSON_AddItemToObject(seq, "pretokenizers", arr);
    return seq;
}

/* token id from metadata, -1 when absent or out of range */
static int tok_id(const lg_gguf *g, const char *key, int n) {
    int64_t v;
    return lg_gguf_get_int(g, key, &v) == 0 && v >= 0 && v < n ? (int)v : -1;
}

static void add_token_str(cJSON *o, const char *key, const lg_gguf *g, int id) {
    const char *s = "";
    size_t n = 0;
    if (id < 0 || lg_gguf_arr_str(g, "tokenizer.ggml.tokens", (uint64_t)id, &s, &n)) return;
    char *c = cstr(s, n);
    cJSON_AddStringToObject(o, key, c);
    free(c);
}

static int valid_text(const char *s, size_t n) { return !memchr(s, 0, n) && lg_utf8_check(s, n) == n; }

static int gpt2_tokenizer(const lg_gguf *g, int n, lg_tokenizer **out) {
    const char *key = "tokenizer.ggml.tokens";
    int et, tt = -1;
    uint64_t nm = 0, ntt = 0;
    int has_merges = lg_gguf_get_arr(g, "tokenizer.ggml.merges", &et, &nm);
    if (has_merges < 0) return -1;
    if (has_merges == 0 && et != LG_GGUF_STRING)
        return lg_errorf("%s: tokenizer.ggml.merges is not an array of strings", g->name);
    int has_tt = lg_gguf_get_arr(g, "tokenizer.ggml.token_type", &tt, &ntt);
    if (has_tt < 0) return -1;
    if (has_tt == 0 && (ntt != (uint64_t)n || scalar_size((uint32_t)tt) == 0 || is_float((uint32_t)tt)))
        return lg_errorf("%s: tokenizer.ggml.token_type must be %d integers", g->name, n);
    const char *pre = NULL;
    size_t prelen = 0;
    if (lg_gguf_get_str(g, "tokenizer.ggml.pre", &pre, &prelen) < 0) return -1;
    cJSON *pt = pretokenizer_for(g, pre, prelen);
    if (!pt) return -1;
    uint32_t alpha[256];
    byte_alphabet(alpha);
    cJSON *root = cJSON_CreateObject(), *added = cJSON_CreateArray(), *model = cJSON_CreateObject();
    cJSON *vocab = cJSON_CreateObject(), *merges = cJSON_CreateArray();
    cJSON_AddStringToObject(root, "version", "1.0");
    cJSON_AddNullToObject(root, "truncation");
    cJSON_AddNullToObject(root, "padding");
    cJSON_AddItemToObject(root, "added_tokens", added);
    cJSON_AddNullToObject(root, "normalizer");
    cJSON_AddItemToObject(root, "pre_tokenizer", pt);
    char *buf = NULL;
    int rc = -1;
    for (int i = 0; i < n; i++) {
        const char *s = "";
        size_t len = 0;
        lg_gguf_arr_str(g, key, (uint64_t)i, &s, &len);
        double type = 1;
        if (has_tt == 0) lg_gguf_arr_num(g, "tokenizer.ggml.token_type", (uint64_t)i, &type);
        /* 3 = control, 4 = user-defined: matched whole in the text, as their raw string */
        if ((type == 3 || type == 4) && len) {
            if (!valid_text(s, len)) {
                lg_errorf("%s: token %d (type %g) is not valid UTF-8 text", g->name, i, type);
                goto done;
            }
            cJSON *a = cJSON_CreateObject();
            char *c = cstr(s, len);
            cJSON_AddNumberToObject(a, "id", i);
            cJSON_AddStringToObject(a, "content", c);
            free(c);
            cJSON_AddBoolToObject(a, "single_word", 0);
            cJSON_AddBoolToObject(a, "lstrip", 0);
            cJSON_AddBoolToObject(a, "rstrip", 0);
            cJSON_AddBoolToObject(a, "normalized", 0);
            cJSON_AddBoolToObject(a, "special", type == 3);
            cJSON_AddItemToArray(added, a);
        }
        /* the vocabulary is in the byte alphabet; a token stored raw is respelled (as transformers does) */
        free(buf);
        buf = lg_malloc(len * 2 + 1);
        size_t bn = 0;
        if (in_alphabet(s, len)) memcpy(buf, s, len), bn = len;
        else for (size_t k = 0; k < len; k++) put_cp(&buf, &bn, alpha[(unsigned char)s[k]]);
        buf[bn] = 0;
        if (bn) cJSON_AddItemToObject(vocab, buf, cJSON_CreateNumber(i)); /* "" cannot be produced: a hole */
    }
    for (uint64_t i = 0; i < nm; i++) {
        const char *s = "";
        size_t len = 0;
        lg_gguf_arr_str(g, "tokenizer.ggml.merges", i, &s, &len);
        if (!valid_text(s, len)) {
            lg_errorf("%s: merge %llu is not valid UTF-8 text", g->name, (unsigned long long)i);
            goto done;
        }
        char *c = cstr(s, len);
        cJSON_AddItemToArray(merges, cJSON_CreateString(c));
        free(c);
    }
    int add_bos = 0, add_eos = 0;
    if (lg_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &add_bos) < 0 ||
        lg_gguf_get_bool(g, "tokenizer.ggml.add_eos_token", &add_eos) < 0)
        goto done;
    int bos = tok_id(g, "tokenizer.ggml.bos_token_id", n), eos = tok_id(g, "tokenizer.ggml.eos_token_id", n);
    if ((add_bos && bos < 0) || (add_eos && eos < 0)) {
        lg_errorf("%s: add_%s_token is set but the file has no valid %s_token_id", g->name, add_bos && bos < 0 ? "bos" : "eos",
                  add_bos && bos < 0 ? "bos" : "eos");
        goto done;
    }
    if (add_bos || add_eos) { /* HF's TemplateProcessing: [BOS] $A [EOS] */
        cJSON *pp = cJSON_CreateObject(), *single = cJSON_CreateArray(), *sp = cJSON_CreateObject();
        cJSON_AddStringToObject(pp, "type", "TemplateProcessing");
        for (int w = 0; w < 3; w++) {
            int id = w == 0 ? (add_bos ? bos : -1) : w == 2 ? (add_eos ? eos : -1) : -2;
            if (id == -1) continue;
            cJSON *item = cJSON_CreateObject(), *inner = cJSON_CreateObject();
            if (id == -2) {
                cJSON_AddStringToObject(inner, "id", "A");
                cJSON_AddNumberToObject(inner, "type_id", 0);
                cJSON_AddItemToObject(item, "Sequence", inner);
            } else {
                const char *s = "";
                size_t len = 0;
                lg_gguf_arr_str(g, key, (uint64_t)id, &s, &len);
                char *c = cstr(s, len);
                cJSON_AddStringToObject(inner, "id", c);
                cJSON_AddNumberToObject(inner, "type_id", 0);
                cJSON_AddItemToObject(item, "SpecialToken", inner);
                cJSON *def = cJSON_CreateObject(), *ids = cJSON_CreateArray(), *toks = cJSON_CreateArray();
                cJSON_AddStringToObject(def, "id", c);
                cJSON_AddItemToArray(ids, cJSON_CreateNumber(id));
                cJSON_AddItemToArray(toks, cJSON_CreateString(c));
                cJSON_AddItemToObject(def, "ids", ids);
                cJSON_AddItemToObject(def, "tokens", toks);
                if (!cJSON_GetObjectItemCaseSensitive(sp, c)) cJSON_AddItemToObject(sp, c, def);
                else cJSON_Delete(def);
                free(c);
            }
            cJSON_AddItemToArray(single, item);
        }
        cJSON_AddItemToObject(pp, "single", single);
        cJSON_AddItemToObject(pp, "pair", cJSON_CreateArray());
        cJSON_AddItemToObject(pp, "special_tokens", sp);
        cJSON_AddItemToObject(root, "post_processor", pp);
    } else {
        cJSON_AddNullToObject(root, "post_processor");
    }
    cJSON *dec = bytelevel(1);
    cJSON_ReplaceItemInObject(dec, "add_prefix_space", cJSON_CreateBool(1));
    cJSON_AddItemToObject(root, "decoder", dec);
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddNullToObject(model, "dropout");
    cJSON_AddNullToObject(model, "unk_token");
    cJSON_AddNullToObject(model, "continuing_subword_prefix");
    cJSON_AddNullToObject(model, "end_of_word_suffix");
    cJSON_AddBoolToObject(model, "fuse_unk", 0);
    cJSON_AddBoolToObject(model, "byte_fallback", 0);
    cJSON_AddBoolToObject(model, "ignore_merges", 0);
    cJSON_AddItemToObject(model, "vocab", vocab);
    cJSON_AddItemToObject(model, "merges", merges);
    vocab = merges = NULL;
    cJSON_AddItemToObject(root, "model", model);
    model = NULL;
    /* tokenizer_config.json: what transformers reads for special tokens, flags and the template */
    cJSON *cfg = cJSON_CreateObject();
    cJSON_AddBoolToObject(cfg, "add_bos_token", add_bos);
    cJSON_AddBoolToObject(cfg, "add_eos_token", add_eos);
    cJSON_AddBoolToObject(cfg, "add_prefix_space", 0);
    add_token_str(cfg, "bos_token", g, bos);
    add_token_str(cfg, "eos_token", g, eos);
    add_token_str(cfg, "pad_token", g, tok_id(g, "tokenizer.ggml.padding_token_id", n));
    add_token_str(cfg, "unk_token", g, tok_id(g, "tokenizer.ggml.unknown_token_id", n));
    const char *ct;
    size_t ctn;
    if (lg_gguf_get_str(g, "tokenizer.chat_template", &ct, &ctn) == 0 && valid_text(ct, ctn)) {
        char *c = cstr(ct, ctn);
        cJSON_AddStringToObject(cfg, "chat_template", c);
        free(c);
    }
    cJSON_AddBoolToObject(cfg, "clean_up_tokenization_spaces", 0);
    int64_t ctx;
    if (lg_gguf_get_int(g, "llama.context_length", &ctx) == 0) cJSON_AddNumberToObject(cfg, "model_max_length", (double)ctx);
    cJSON_AddStringToObject(cfg, "tokenizer_class", "GPT2Tokenizer");
    char *js = cJSON_PrintUnformatted(root), *cs = cJSON_PrintUnformatted(cfg);
    cJSON_Delete(cfg);
    if (!js || !cs) {
        free(js);
        free(cs);
        lg_errorf("%s: could not build tokenizer.json", g->name);
        goto done;
    }
    char nm_[512];
    snprintf(nm_, sizeof nm_, "%s (tokenizer metadata)", g->name);
    rc = lg_tokenizer_load_json_mem(js, strlen(js), cs, strlen(cs), nm_, out);
    free(js);
    free(cs);
done:
    free(buf);
    cJSON_Delete(root);
    cJSON_Delete(vocab);
    cJSON_Delete(merges);
    cJSON_Delete(model);
    return rc;
}

static int spm_tokenizer(const lg_gguf *g, int n, lg_tokenizer **out) {
    int et;
    uint64_t ns = 0;
    int has_scores = lg_gguf_get_arr(g, "tokenizer.ggml.scores", &et, &ns);
    if (has_scores < 0) return -1;
    if (has_scores == 0 && (ns != (uint64_t)n || et == LG_GGUF_STRING || et == LG_GGUF_ARRAY))
        return lg_errorf("%s: tokenizer.ggml.scores must be %d numbers", g->name, n);
    const char **pieces = lg_malloc((size_t)n * sizeof *pieces);
    int *lens = lg_malloc((size_t)n * sizeof *lens);
    float *scores = lg_calloc((size_t)n, sizeof *scores);
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        size_t len;
        lg_gguf_arr_str(g, "tokenizer.ggml.tokens", (uint64_t)i, &pieces[i], &len);
        if (len > (1 << 20)) rc = lg_errorf("%s: token %d is %zu bytes long", g->name, i, len);
        lens[i] = (int)len;
        double sc = 0;
        if (has_scores == 0) lg_gguf_arr_num(g, "tokenizer.ggml.scores", (uint64_t)i, &sc);
        scores[i] = (float)sc;
    }
    /* llama.cpp's defaults for SentencePiece vocabularies: unk 0, bos 1, eos 2 */
    int unk = lg_gguf_find_kv(g, "tokenizer.ggml.unknown_token_id") >= 0 ? tok_id(g, "tokenizer.ggml.unknown_token_id", n) : 0;
    int bos = lg_gguf_find_kv(g, "tokenizer.ggml.bos_token_id") >= 0 ? tok_id(g, "tokenizer.ggml.bos_token_id", n) : 1;
    int eos = lg_gguf_find_kv(g, "tokenizer.ggml.eos_token_id") >= 0 ? tok_id(g, "tokenizer.ggml.eos_token_id", n) : 2;
    if (!rc) rc = lg_tokenizer_from_spm(n, pieces, lens, scores, unk, bos < n ? bos : -1, eos < n ? eos : -1, out);
    if (rc) lg_errorf_prefix("%s", g->name);
    free(pieces);
    free(lens);
    free(scores);
    return rc;
}

int lg_gguf_tokenizer_from(const lg_gguf *g, lg_tokenizer **out) {
    *out = NULL;
    const char *model;
    size_t mlen;
    int rc = lg_gguf_get_str(g, "tokenizer.ggml.model", &model, &mlen);
    if (rc) return rc < 0 ? -1 : lg_errorf("%s: no tokenizer in the file (tokenizer.ggml.model is missing)", g->name);
    int et;
    uint64_t n;
    rc = lg_gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n);
    if (rc) return rc < 0 ? -1 : lg_errorf("%s: tokenizer.ggml.tokens is missing", g->name);
    if (et != LG_GGUF_STRING || n == 0 || n > (1 << 24))
        return lg_errorf("%s: tokenizer.ggml.tokens must be 1 to 2^24 strings (%llu of type %s)", g->name,
                         (unsigned long long)n, value_type_name((uint32_t)et));
    if (mlen == 4 && !memcmp(model, "gpt2", 4)) return gpt2_tokenizer(g, (int)n, out);
    if (mlen == 5 && !memcmp(model, "llama", 5)) return spm_tokenizer(g, (int)n, out);
    return lg_errorf("%s: tokenizer model '%.*s' is not supported (gpt2 or llama)", g->name, (int)LG_MIN(mlen, 64), model);
}

int lg_gguf_tokenizer(const char *path, lg_tokenizer **out) {
    *out = NULL;
    lg_gguf *g;
    if (lg_gguf_open(path, &g) != 0) return -1;
    int rc = lg_gguf_tokenizer_from(g, out);
    lg_gguf_close(g);
    return rc;
}

int lg_gguf_chat_template(const char *path, char **out) {
    *out = NULL;
    lg_gguf *g;
    if (lg_gguf_open(path, &g) != 0) return -1;
    const char *s = "";
    size_t n = 0;
    int rc = lg_gguf_get_str(g, "tokenizer.chat_template", &s, &n);
    if (rc == 0) *out = cstr(s, n);
    lg_gguf_close(g);
    return rc < 0 ? -1 : 0;
}

int lg_gguf_save_tokenizer(const lg_gguf *g, const lg_tokenizer *t, const char *dir) {
    if (lg_tokenizer_save_hf(t, dir) != 0) return -1;
    const char *s = NULL;
    size_t n = 0;
    int rc = lg_gguf_get_str(g, "tokenizer.chat_template", &s, &n);
    if (rc) return rc < 0 ? -1 : 0;
    if (!valid_text(s, n)) return lg_errorf("%s: tokenizer.chat_template is not valid UTF-8 text", g->name);
    char *path = lg_path_join(dir, "tokenizer_config.json"), *data = NULL;
    size_t len = 0;
    cJSON *cfg = NULL;
    rc = -1;
    if (lg_file_exists(path)) {
        if (lg_read_file(path, &data, &len) != 0) goto done;
        cfg = cJSON_ParseWithLength(data, len);
    } else {
        cfg = cJSON_CreateObject();
    }
    if (!cJSON_IsObject(cfg)) {
        lg_errorf("%s: not a JSON object", path);
        goto done;
    }
    if (!cJSON_GetObjectItemCaseSensitive(cfg, "chat_template")) {
        char *c = cstr(s, n);
        cJSON_AddStringToObject(cfg, "chat_template", c);
        free(c);
        char *js = cJSON_Print(cfg);
        rc = js ? lg_write_file_atomic(path, js, strlen(js)) : lg_errorf("%s: cannot print JSON", path);
        free(js);
    } else {
        rc = 0;
    }
done:
    cJSON_Delete(cfg);
    free(data);
    free(path);
    return rc;
}
