/* safetensors.c — see safetensors.h.
 *
 * Reader: each file is mmapped; its header is parsed and validated completely at open
 * (so later reads cannot fail on a malformed entry), tensors are kept in header order
 * for lg_st_get and in a name-sorted pointer array for lg_st_find (bsearch).
 *
 * Dtypes: F32/F16/BF16/I32/I64 are accepted. Any other dtype (F64, I8, U8, BOOL, ...)
 * is refused at open with an error naming the tensor and the dtype: lg_st_tensor cannot
 * represent it, and silently skipping a tensor would surface later as a confusing
 * "tensor not found". */
#include "io/safetensors.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "core/json.h"
#include "core/util.h"

/* F32 data is memcpy'd straight from/to the file, which stores little-endian. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host"
#endif

#define ST_MAX_HEADER ((uint64_t)100 * 1024 * 1024)
/* JSON numbers are doubles: integers beyond 2^53 are not exact, so refuse them. */
#define ST_MAX_JSON_INT 9007199254740992.0

static const char *const g_dt_names[] = {"F32", "F16", "BF16", "I32", "I64"};
static const size_t g_dt_sizes[] = {4, 2, 2, 4, 8};
#define ST_NDT ((int)(sizeof g_dt_names / sizeof g_dt_names[0]))

const char *lg_dtype_name(lg_dtype t) {
    return ((int)t >= 0 && (int)t < ST_NDT) ? g_dt_names[t] : "?";
}
size_t lg_dtype_size(lg_dtype t) { return ((int)t >= 0 && (int)t < ST_NDT) ? g_dt_sizes[t] : 0; }

typedef struct {
    char *path;
    lg_mmap map;
} st_file;

struct lg_safetensors {
    st_file *files;
    int nfiles;
    lg_st_tensor *tensors; /* header order, file after file */
    int n, cap;
    const lg_st_tensor **sorted; /* by name */
    char **meta;                 /* key, value, key, value... of the first file */
    int nmeta;
};

/* ---- small helpers ------------------------------------------------------------ */

static void fmt_shape(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t k = 0;
    k += (size_t)snprintf(buf + k, cap - k, "[");
    for (int i = 0; i < ndim && k < cap; i++)
        k += (size_t)snprintf(buf + k, cap - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (k < cap) snprintf(buf + k, cap - k, "]");
}

/* A JSON number that is a non-negative integer exactly representable in a double. */
static int json_uint(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return -1;
    double d = v->valuedouble;
    if (!(d >= 0.0) || d > ST_MAX_JSON_INT || d != floor(d)) return -1;
    *out = (uint64_t)d;
    return 0;
}

static int cmp_tensor_ptr(const void *a, const void *b) {
    const lg_st_tensor *x = *(const lg_st_tensor *const *)a, *y = *(const lg_st_tensor *const *)b;
    return strcmp(x->name, y->name);
}

typedef struct {
    uint64_t begin, end;
    const char *name;
} st_span;

static int cmp_span(const void *a, const void *b) {
    const st_span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return (x->end > y->end) - (x->end < y->end);
}

static const char *base_name(const char *p) {
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

/* ---- parsing one file --------------------------------------------------------- */

static int parse_metadata(lg_safetensors *st, const char *file, const cJSON *m, int keep) {
    if (!cJSON_IsObject(m)) return lg_errorf("%s: header: '__metadata__' is not an object", file);
    for (const cJSON *kv = m->child; kv; kv = kv->next) {
        if (!cJSON_IsString(kv) || !kv->valuestring)
            return lg_errorf("%s: header: __metadata__ value of '%s' is not a string", file,
                             kv->string ? kv->string : "");
    }
    if (!keep) return 0;
    for (const cJSON *kv = m->child; kv; kv = kv->next) {
        st->meta = lg_realloc(st->meta, sizeof(char *) * (size_t)(st->nmeta + 1) * 2);
        st->meta[2 * st->nmeta] = lg_strdup(kv->string ? kv->string : "");
        st->meta[2 * st->nmeta + 1] = lg_strdup(kv->valuestring);
        st->nmeta++;
    }
    return 0;
}

/* Validate one header entry and fill t (name not yet set). */
static int parse_entry(const char *file, const char *name, const cJSON *e, const uint8_t *data,
                       uint64_t data_size, lg_st_tensor *t, st_span *span) {
    if (!cJSON_IsObject(e)) return lg_errorf("%s: tensor '%s': entry is not a JSON object", file, name);

    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    if (!dt) return lg_errorf("%s: tensor '%s': missing 'dtype'", file, name);
    if (!cJSON_IsString(dt) || !dt->valuestring)
        return lg_errorf("%s: tensor '%s': 'dtype' is not a string", file, name);
    int dti = -1;
    for (int i = 0; i < ST_NDT; i++)
        if (strcmp(dt->valuestring, g_dt_names[i]) == 0) dti = i;
    if (dti < 0) {
        static const char *const known[] = {"F64", "F8_E4M3", "F8_E5M2", "I8",  "U8",
                                            "I16", "U16",     "U32",     "U64", "BOOL"};
        for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
            if (strcmp(dt->valuestring, known[i]) == 0)
                return lg_errorf("%s: tensor '%s': unsupported dtype '%s' (loraga reads F32, F16, "
                                 "BF16, I32, I64)",
                                 file, name, dt->valuestring);
        return lg_errorf("%s: tensor '%s': unknown dtype '%.64s'", file, name, dt->valuestring);
    }
    t->dtype = (lg_dtype)dti;

    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
    if (!sh) return lg_errorf("%s: tensor '%s': missing 'shape'", file, name);
    if (!cJSON_IsArray(sh)) return lg_errorf("%s: tensor '%s': 'shape' is not an array", file, name);
    int nd = cJSON_GetArraySize(sh);
    if (nd > LG_MAX_DIMS)
        return lg_errorf("%s: tensor '%s': shape has %d dimensions (at most %d supported)", file,
                         name, nd, LG_MAX_DIMS);
    t->ndim = nd;
    int64_t numel = 1;
    int i = 0;
    for (const cJSON *d = sh->child; d; d = d->next, i++) {
        uint64_t v;
        if (json_uint(d, &v) != 0) {
            if (cJSON_IsNumber(d) && d->valuedouble < 0)
                return lg_errorf("%s: tensor '%s': negative dimension %g in shape", file, name,
                                 d->valuedouble);
            return lg_errorf("%s: tensor '%s': shape dimension %d is not a non-negative integer",
                             file, name, i);
        }
        t->shape[i] = (int64_t)v;
        if (v != 0 && (uint64_t)numel > (uint64_t)INT64_MAX / v)
            return lg_errorf("%s: tensor '%s': shape element count overflows", file, name);
        numel *= (int64_t)v;
    }
    t->numel = numel;
    uint64_t dsz = g_dt_sizes[dti];
    if ((uint64_t)numel > UINT64_MAX / dsz)
        return lg_errorf("%s: tensor '%s': tensor byte size overflows", file, name);
    uint64_t need = (uint64_t)numel * dsz;

    const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!off) return lg_errorf("%s: tensor '%s': missing 'data_offsets'", file, name);
    uint64_t b, en;
    if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 || json_uint(off->child, &b) != 0 ||
        json_uint(off->child->next, &en) != 0)
        return lg_errorf("%s: tensor '%s': 'data_offsets' must be [begin, end] with non-negative "
                         "integers",
                         file, name);
    if (b > en)
        return lg_errorf("%s: tensor '%s': data_offsets [%llu, %llu] have begin > end", file, name,
                         (unsigned long long)b, (unsigned long long)en);
    if (en > data_size)
        return lg_errorf("%s: tensor '%s': data_offsets [%llu, %llu] out of range: data section "
                         "is %llu bytes (file truncated?)",
                         file, name, (unsigned long long)b, (unsigned long long)en,
                         (unsigned long long)data_size);
    if (en - b != need) {
        char s[128];
        fmt_shape(s, sizeof s, nd, t->shape);
        return lg_errorf("%s: tensor '%s': data_offsets span %llu bytes but shape %s x %s needs "
                         "%llu bytes",
                         file, name, (unsigned long long)(en - b), s, g_dt_names[dti],
                         (unsigned long long)need);
    }
    t->data = data + b;
    t->nbytes = (size_t)need;
    span->begin = b;
    span->end = en;
    return 0;
}

static int load_file(lg_safetensors *st, const char *path) {
    st->files = lg_realloc(st->files, sizeof(st_file) * (size_t)(st->nfiles + 1));
    st_file *f = &st->files[st->nfiles];
    f->path = lg_strdup(path);
    f->map.data = NULL;
    f->map.size = 0;
    st->nfiles++; /* registered before anything can fail, so close() frees it */
    const char *file = f->path;
    int first = st->nfiles == 1;

    if (lg_mmap_file(path, &f->map) != 0) return -1;
    const uint8_t *p = f->map.data;
    size_t size = f->map.size;
    if (size < 8)
        return lg_errorf("%s: file is %zu bytes, too short for a safetensors header length (8 bytes)",
                         file, size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | p[i];
    if (hlen > ST_MAX_HEADER)
        return lg_errorf("%s: header length %llu is absurd (limit %llu bytes): not a safetensors file?",
                         file, (unsigned long long)hlen, (unsigned long long)ST_MAX_HEADER);
    if (hlen > size - 8)
        return lg_errorf("%s: header length %llu exceeds the file size (%zu bytes; truncated?)", file,
                         (unsigned long long)hlen, size);
    if (hlen < 2) return lg_errorf("%s: header length %llu is too small for a JSON object", file,
                                   (unsigned long long)hlen);

    /* Parse a NUL-terminated copy: a parser overread then stays inside our buffer instead of
     * running off the end of the mapping (and ASan sees it in the fuzz test). */
    char *hdr = lg_malloc((size_t)hlen + 1);
    memcpy(hdr, p + 8, (size_t)hlen);
    hdr[hlen] = 0;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(hdr, (size_t)hlen, &end, 0);
    if (!root) {
        const char *e = cJSON_GetErrorPtr();
        size_t at = (e && e >= hdr && e <= hdr + hlen) ? (size_t)(e - hdr) : 0;
        free(hdr);
        return lg_errorf("%s: header is not valid JSON (error near byte %zu of %llu)", file, at,
                         (unsigned long long)hlen);
    }
    /* HF pads the header with spaces; anything else after the object is corruption. */
    for (const char *q = end ? end : hdr + hlen; q < hdr + hlen; q++) {
        if (*q != ' ' && *q != '\t' && *q != '\n' && *q != '\r' && *q != '\0') {
            size_t at = (size_t)(q - hdr);
            free(hdr);
            cJSON_Delete(root);
            return lg_errorf("%s: header has trailing bytes after the JSON object (offset %zu)", file,
                             at);
        }
    }
    free(hdr);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return lg_errorf("%s: header is not a JSON object", file);
    }

    const uint8_t *data = p + 8 + hlen;
    uint64_t data_size = size - 8 - hlen;
    int count = 0;
    for (const cJSON *e = root->child; e; e = e->next) count++;
    st_span *spans = lg_malloc(sizeof(st_span) * (size_t)(count ? count : 1));
    int ns = 0, rc = 0;
    for (const cJSON *e = root->child; e && rc == 0; e = e->next) {
        const char *name = e->string ? e->string : "";
        if (strcmp(name, "__metadata__") == 0) {
            rc = parse_metadata(st, file, e, first);
            continue;
        }
        lg_st_tensor t;
        memset(&t, 0, sizeof t);
        rc = parse_entry(file, name, e, data, data_size, &t, &spans[ns]);
        if (rc) break;
        t.name = lg_strdup(name);
        t.file = file;
        spans[ns++].name = t.name;
        if (st->n == st->cap) {
            st->cap = st->cap ? st->cap * 2 : 64;
            st->tensors = lg_realloc(st->tensors, sizeof(lg_st_tensor) * (size_t)st->cap);
        }
        st->tensors[st->n++] = t;
    }
    cJSON_Delete(root);
    if (rc == 0 && ns > 1) {
        /* Two tensors sharing bytes would alias silently: refuse. Empty tensors never overlap. */
        qsort(spans, (size_t)ns, sizeof(st_span), cmp_span);
        uint64_t max_end = 0;
        const char *max_name = NULL;
        for (int i = 0; i < ns && rc == 0; i++) {
            if (spans[i].begin == spans[i].end) continue;
            if (max_name && spans[i].begin < max_end)
                rc = lg_errorf("%s: tensor '%s': data_offsets [%llu, %llu] overlap tensor '%s'", file,
                               spans[i].name, (unsigned long long)spans[i].begin,
                               (unsigned long long)spans[i].end, max_name);
            if (spans[i].end > max_end) {
                max_end = spans[i].end;
                max_name = spans[i].name;
            }
        }
    }
    free(spans);
    return rc;
}

/* Build the name index; duplicate names (within a file or across shards) are an error. */
static int build_index(lg_safetensors *st) {
    st->sorted = lg_malloc(sizeof(*st->sorted) * (size_t)(st->n ? st->n : 1));
    for (int i = 0; i < st->n; i++) st->sorted[i] = &st->tensors[i];
    qsort(st->sorted, (size_t)st->n, sizeof(*st->sorted), cmp_tensor_ptr);
    for (int i = 1; i < st->n; i++) {
        const lg_st_tensor *a = st->sorted[i - 1], *b = st->sorted[i];
        if (strcmp(a->name, b->name) != 0) continue;
        if (a->file == b->file) return lg_errorf("%s: tensor '%s': duplicate name", a->file, a->name);
        return lg_errorf("%s: tensor '%s': duplicate name, also in %s", b->file, b->name, a->file);
    }
    return 0;
}

static int cmp_str_ptr(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int open_index(lg_safetensors *st, const char *ipath) {
    char *text = NULL;
    size_t len = 0;
    if (lg_read_file(ipath, &text, &len) != 0) return -1;
    cJSON *root = lg_json_parse(text, len, "byte");
    free(text);
    if (!root) return lg_errorf_prefix("%s", ipath);
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    int rc = 0;
    if (!cJSON_IsObject(root) || !cJSON_IsObject(wm) || !wm->child) {
        cJSON_Delete(root);
        return lg_errorf("%s: missing or empty 'weight_map' object", ipath);
    }
    /* unique shard names, sorted so the first shard (metadata source) is -00001- */
    int nw = cJSON_GetArraySize(wm), nsh = 0;
    const char **shards = lg_malloc(sizeof(char *) * (size_t)nw);
    for (const cJSON *e = wm->child; e; e = e->next) {
        const char *tn = e->string ? e->string : "";
        if (!cJSON_IsString(e) || !e->valuestring || !e->valuestring[0]) {
            rc = lg_errorf("%s: tensor '%s': weight_map value is not a file name", ipath, tn);
            break;
        }
        /* shards live next to the index; a path could escape the model directory */
        if (strchr(e->valuestring, '/') || strcmp(e->valuestring, "..") == 0) {
            rc = lg_errorf("%s: tensor '%s': shard '%s' is not a plain file name", ipath, tn,
                           e->valuestring);
            break;
        }
        shards[nsh++] = e->valuestring;
    }
    if (rc == 0) {
        qsort(shards, (size_t)nsh, sizeof(char *), cmp_str_ptr);
        int u = 0;
        for (int i = 0; i < nsh; i++)
            if (u == 0 || strcmp(shards[u - 1], shards[i]) != 0) shards[u++] = shards[i];
        nsh = u;
    }
    /* directory of the index */
    const char *slash = strrchr(ipath, '/');
    char *dir = slash ? lg_strdup(ipath) : lg_strdup(".");
    if (slash) dir[slash - ipath] = 0;
    if (slash == ipath) strcpy(dir, "/");
    for (int i = 0; i < nsh && rc == 0; i++) {
        char *sp = lg_path_join(dir, shards[i]);
        if (!lg_file_exists(sp))
            rc = lg_errorf("%s: shard '%s' named in weight_map does not exist (%s)", ipath, shards[i],
                           sp);
        else if (load_file(st, sp) != 0)
            rc = -1;
        free(sp);
    }
    free(dir);
    free(shards);
    if (rc == 0) rc = build_index(st);
    for (const cJSON *e = wm->child; e && rc == 0; e = e->next) {
        const lg_st_tensor *t = lg_st_find(st, e->string);
        if (!t)
            rc = lg_errorf("%s: tensor '%s': listed in weight_map for shard '%s' but not found there",
                           ipath, e->string, e->valuestring);
        else if (strcmp(base_name(t->file), e->valuestring) != 0)
            rc = lg_errorf("%s: tensor '%s': weight_map says shard '%s' but it is in %s", ipath,
                           e->string, e->valuestring, t->file);
    }
    cJSON_Delete(root);
    return rc;
}

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

int lg_st_open(const char *path, lg_safetensors **out) {
    *out = NULL;
    if (!path || !*path) return lg_errorf("safetensors: empty path");
    lg_safetensors *st = lg_calloc(1, sizeof *st);
    int rc;
    if (lg_is_dir(path)) {
        char *single = lg_path_join(path, "model.safetensors");
        char *index = lg_path_join(path, "model.safetensors.index.json");
        if (lg_file_exists(single))
            rc = load_file(st, single) != 0 ? -1 : build_index(st);
        else if (lg_file_exists(index))
            rc = open_index(st, index);
        else
            rc = lg_errorf("%s: directory has neither model.safetensors nor "
                           "model.safetensors.index.json",
                           path);
        free(single);
        free(index);
    } else if (ends_with(path, ".json")) {
        rc = open_index(st, path);
    } else {
        rc = load_file(st, path) != 0 ? -1 : build_index(st);
    }
    if (rc != 0) {
        lg_st_close(st);
        return -1;
    }
    *out = st;
    return 0;
}

void lg_st_close(lg_safetensors *st) {
    if (!st) return;
    for (int i = 0; i < st->n; i++) free((char *)st->tensors[i].name);
    free(st->tensors);
    free(st->sorted);
    for (int i = 0; i < st->nfiles; i++) {
        lg_munmap(&st->files[i].map);
        free(st->files[i].path);
    }
    free(st->files);
    for (int i = 0; i < 2 * st->nmeta; i++) free(st->meta[i]);
    free(st->meta);
    free(st);
}

int lg_st_count(const lg_safetensors *st) { return st ? st->n : 0; }

const lg_st_tensor *lg_st_get(const lg_safetensors *st, int i) {
    return (st && i >= 0 && i < st->n) ? &st->tensors[i] : NULL;
}

const lg_st_tensor *lg_st_find(const lg_safetensors *st, const char *name) {
    if (!st || !name || !st->sorted) return NULL;
    lg_st_tensor key;
    memset(&key, 0, sizeof key);
    key.name = name;
    const lg_st_tensor *kp = &key;
    const lg_st_tensor **r = bsearch(&kp, st->sorted, (size_t)st->n, sizeof(*st->sorted),
                                     cmp_tensor_ptr);
    return r ? *r : NULL;
}

const char *lg_st_metadata(const lg_safetensors *st, const char *key) {
    if (!st || !key) return NULL;
    for (int i = 0; i < st->nmeta; i++)
        if (strcmp(st->meta[2 * i], key) == 0) return st->meta[2 * i + 1];
    return NULL;
}

int lg_st_read_f32(const lg_safetensors *st, const char *name, float *dst, int ndim,
                   const int64_t *shape) {
    const lg_st_tensor *t = lg_st_find(st, name);
    if (!t) {
        const char *where = (st && st->nfiles > 0) ? st->files[0].path : "safetensors";
        return lg_errorf("%s: tensor '%s' not found%s", where, name ? name : "(null)",
                         st && st->nfiles > 1 ? " in any shard" : "");
    }
    int same = ndim == t->ndim && ndim >= 0 && ndim <= LG_MAX_DIMS && (ndim == 0 || shape);
    for (int i = 0; same && i < ndim; i++) same = shape[i] == t->shape[i];
    if (!same) {
        char a[128], b[128];
        fmt_shape(a, sizeof a, t->ndim, t->shape);
        if (ndim < 0 || ndim > 16 || (ndim > 0 && !shape))
            snprintf(b, sizeof b, "(%d dims)", ndim);
        else
            fmt_shape(b, sizeof b, ndim, shape);
        return lg_errorf("%s: tensor '%s': shape %s in file but expected %s", t->file, t->name, a, b);
    }
    const uint8_t *src = t->data;
    size_t n = (size_t)t->numel;
    if (n && !dst) return lg_errorf("%s: tensor '%s': NULL destination", t->file, t->name);
    switch (t->dtype) {
    case LG_DT_F32:
        if (n) memcpy(dst, src, n * sizeof(float));
        break;
    case LG_DT_F16: /* bytes, not uint16_t loads: the data may be unaligned */
        for (size_t i = 0; i < n; i++)
            dst[i] = lg_f16_to_f32((uint16_t)(src[2 * i] | (src[2 * i + 1] << 8)));
        break;
    case LG_DT_BF16:
        for (size_t i = 0; i < n; i++)
            dst[i] = lg_bf16_to_f32((uint16_t)(src[2 * i] | (src[2 * i + 1] << 8)));
        break;
    default:
        return lg_errorf("%s: tensor '%s': dtype %s is an integer type, cannot read as float32",
                         t->file, t->name, lg_dtype_name(t->dtype));
    }
    /* weights, adapters and saved states are computed with: a NaN or an infinity would spread
     * silently through every output */
    int64_t bad = lg_first_nonfinite(dst, (int64_t)n);
    if (bad >= 0)
        return lg_errorf("%s: tensor '%s' holds a non-finite value (%g at element %lld); refusing it", t->file,
                         t->name, (double)dst[bad], (long long)bad);
    return 0;
}

/* ---- writing ------------------------------------------------------------------ */

static int cmp_item_name(const void *a, const void *b) {
    return strcmp((*(const lg_st_item *const *)a)->name, (*(const lg_st_item *const *)b)->name);
}

static int check_items(const char *path, const lg_st_item *items, int n, const lg_st_meta *meta,
                       int nmeta, uint64_t *nbytes) {
    if (n < 0 || nmeta < 0 || (n > 0 && !items) || (nmeta > 0 && !meta))
        return lg_errorf("%s: invalid tensor/metadata list", path);
    for (int i = 0; i < nmeta; i++)
        if (!meta[i].key || !meta[i].value)
            return lg_errorf("%s: metadata entry %d has a NULL key or value", path, i);
    for (int i = 0; i < n; i++) {
        const lg_st_item *it = &items[i];
        const char *nm = it->name ? it->name : "(null)";
        if (!it->name || !it->name[0] || strcmp(it->name, "__metadata__") == 0)
            return lg_errorf("%s: tensor %d: invalid name '%s'", path, i, nm);
        if (it->dtype != LG_DT_F32 && it->dtype != LG_DT_F16 && it->dtype != LG_DT_BF16)
            return lg_errorf("%s: tensor '%s': can only write F32, F16 or BF16, not %s", path, nm,
                             lg_dtype_name(it->dtype));
        if (it->ndim < 0 || it->ndim > LG_MAX_DIMS)
            return lg_errorf("%s: tensor '%s': %d dimensions (0..%d allowed)", path, nm, it->ndim,
                             LG_MAX_DIMS);
        uint64_t numel = 1;
        for (int d = 0; d < it->ndim; d++) {
            if (it->shape[d] < 0)
                return lg_errorf("%s: tensor '%s': negative dimension %lld", path, nm,
                                 (long long)it->shape[d]);
            if (it->shape[d] && numel > (uint64_t)(ST_MAX_JSON_INT / 8) / (uint64_t)it->shape[d])
                return lg_errorf("%s: tensor '%s': too many elements", path, nm);
            numel *= (uint64_t)it->shape[d];
        }
        if (numel && !it->data) return lg_errorf("%s: tensor '%s': data is NULL", path, nm);
        nbytes[i] = numel * lg_dtype_size(it->dtype);
    }
    if (n > 1) {
        const lg_st_item **s = lg_malloc(sizeof(*s) * (size_t)n);
        for (int i = 0; i < n; i++) s[i] = &items[i];
        qsort(s, (size_t)n, sizeof(*s), cmp_item_name);
        int rc = 0;
        for (int i = 1; i < n && rc == 0; i++)
            if (strcmp(s[i - 1]->name, s[i]->name) == 0)
                rc = lg_errorf("%s: tensor '%s': duplicate name", path, s[i]->name);
        free(s);
        if (rc) return rc;
    }
    return 0;
}

/* Header JSON, space-padded so that 8 + its length is a multiple of 8 (as HF writes it). */
static char *build_header(const lg_st_item *items, int n, const lg_st_meta *meta, int nmeta,
                          const uint64_t *nbytes, size_t *hlen) {
    cJSON *root = cJSON_CreateObject();
    if (!root) return NULL;
    int ok = 1;
    if (nmeta > 0) {
        cJSON *m = cJSON_AddObjectToObject(root, "__metadata__");
        ok = m != NULL;
        for (int i = 0; ok && i < nmeta; i++)
            ok = cJSON_AddStringToObject(m, meta[i].key, meta[i].value) != NULL;
    }
    uint64_t off = 0;
    for (int i = 0; ok && i < n; i++) {
        cJSON *e = cJSON_AddObjectToObject(root, items[i].name);
        cJSON *sh = e ? cJSON_AddArrayToObject(e, "shape") : NULL;
        cJSON *of = e ? cJSON_AddArrayToObject(e, "data_offsets") : NULL;
        ok = e && sh && of && cJSON_AddStringToObject(e, "dtype", lg_dtype_name(items[i].dtype));
        for (int d = 0; ok && d < items[i].ndim; d++) {
            cJSON *v = cJSON_CreateNumber((double)items[i].shape[d]);
            ok = v && cJSON_AddItemToArray(sh, v);
        }
        cJSON *b = ok ? cJSON_CreateNumber((double)off) : NULL;
        ok = b && cJSON_AddItemToArray(of, b);
        off += nbytes[i];
        cJSON *en = ok ? cJSON_CreateNumber((double)off) : NULL;
        ok = en && cJSON_AddItemToArray(of, en);
    }
    char *js = ok ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!js) return NULL;
    size_t len = strlen(js);
    size_t pad = (8 - (8 + len) % 8) % 8;
    char *h = lg_malloc(len + pad + 1);
    memcpy(h, js, len);
    memset(h + len, ' ', pad);
    h[len + pad] = 0;
    cJSON_free(js);
    *hlen = len + pad;
    return h;
}

static int write_item(FILE *f, const lg_st_item *it, uint64_t nbytes) {
    size_t n = (size_t)(nbytes / lg_dtype_size(it->dtype));
    if (n == 0) return 0; /* data may be NULL for an empty tensor */
    if (it->dtype == LG_DT_F32) return fwrite(it->data, sizeof(float), n, f) == n ? 0 : -1;
    /* convert in chunks: no second copy of a large model in memory */
    uint16_t buf[8192];
    for (size_t i = 0; i < n;) {
        size_t k = LG_MIN(n - i, sizeof buf / sizeof buf[0]);
        for (size_t j = 0; j < k; j++)
            buf[j] = it->dtype == LG_DT_F16 ? lg_f32_to_f16(it->data[i + j])
                                            : lg_f32_to_bf16(it->data[i + j]);
        if (fwrite(buf, sizeof(uint16_t), k, f) != k) return -1;
        i += k;
    }
    return 0;
}

int lg_st_write(const char *path, const lg_st_item *items, int n, const lg_st_meta *meta, int nmeta) {
    if (!path || !*path) return lg_errorf("safetensors: empty output path");
    uint64_t *nbytes = lg_calloc((size_t)(n > 0 ? n : 1), sizeof(uint64_t));
    if (check_items(path, items, n, meta, nmeta, nbytes) != 0) {
        free(nbytes);
        return -1;
    }
    size_t hlen = 0;
    char *hdr = build_header(items, n, meta, nmeta, nbytes, &hlen);
    if (!hdr) {
        free(nbytes);
        return lg_errorf("%s: cannot build the header (out of memory)", path);
    }
    size_t tl = strlen(path) + 32;
    char *tmp = lg_malloc(tl);
    snprintf(tmp, tl, "%s.tmp.%d", path, (int)getpid());
    int rc = 0;
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        rc = lg_errorf("%s: cannot create: %s", tmp, strerror(errno));
    } else {
        uint8_t lenb[8];
        for (int i = 0; i < 8; i++) lenb[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
        int bad = fwrite(lenb, 1, 8, f) != 8 || fwrite(hdr, 1, hlen, f) != hlen;
        for (int i = 0; !bad && i < n; i++) bad = write_item(f, &items[i], nbytes[i]) != 0;
        int err = bad ? errno : 0;
        bad |= fflush(f) != 0;
        bad |= fsync(fileno(f)) != 0;
        if (bad && !err) err = errno;
        bad |= fclose(f) != 0;
        if (bad && !err) err = errno;
        if (bad)
            rc = lg_errorf("%s: write failed: %s", tmp, err ? strerror(err) : "I/O error (disk full?)");
        else if (rename(tmp, path) != 0)
            rc = lg_errorf("%s: cannot rename %s into place: %s", path, tmp, strerror(errno));
        if (rc) unlink(tmp);
    }
    free(tmp);
    free(hdr);
    free(nbytes);
    return rc;
}

/* ---- streaming writer ----------------------------------------------------------- */

struct lg_st_writer {
    char *path, *tmp;
    FILE *f;
    lg_st_item *items;
    uint64_t *nbytes;
    int n, next;
};

int lg_st_writer_begin(const char *path, const lg_st_item *items, int n, const lg_st_meta *meta, int nmeta,
                       lg_st_writer **out) {
    *out = NULL;
    if (!path || !*path) return lg_errorf("safetensors: empty output path");
    lg_st_writer *w = lg_calloc(1, sizeof *w);
    w->n = n;
    w->items = lg_calloc((size_t)(n > 0 ? n : 1), sizeof *w->items);
    static const float dummy = 0;
    for (int i = 0; i < n; i++) {
        w->items[i] = items[i];
        w->items[i].data = &dummy; /* data arrives later through put */
    }
    w->nbytes = lg_calloc((size_t)(n > 0 ? n : 1), sizeof(uint64_t));
    w->path = lg_strdup(path);
    size_t tl = strlen(path) + 32;
    w->tmp = lg_malloc(tl);
    snprintf(w->tmp, tl, "%s.tmp.%d", path, (int)getpid());
    size_t hlen = 0;
    char *hdr = NULL;
    if (check_items(path, w->items, n, meta, nmeta, w->nbytes) != 0) goto fail;
    if (!(hdr = build_header(w->items, n, meta, nmeta, w->nbytes, &hlen))) {
        lg_errorf("%s: cannot build the header (out of memory)", path);
        goto fail;
    }
    if (!(w->f = fopen(w->tmp, "wb"))) {
        lg_errorf("%s: cannot create: %s", w->tmp, strerror(errno));
        goto fail;
    }
    uint8_t lenb[8];
    for (int i = 0; i < 8; i++) lenb[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    if (fwrite(lenb, 1, 8, w->f) != 8 || fwrite(hdr, 1, hlen, w->f) != hlen) {
        lg_errorf("%s: write failed: %s", w->tmp, strerror(errno));
        goto fail;
    }
    free(hdr);
    *out = w;
    return 0;
fail:
    free(hdr);
    lg_st_writer_abort(w);
    return -1;
}

int lg_st_writer_put(lg_st_writer *w, const float *data) {
    if (w->next >= w->n) return lg_errorf("%s: more tensors than announced", w->path);
    lg_st_item it = w->items[w->next];
    it.data = data;
    if (write_item(w->f, &it, w->nbytes[w->next]) != 0)
        return lg_errorf("%s: write failed: %s", w->tmp, strerror(errno));
    w->next++;
    return 0;
}

static void writer_free(lg_st_writer *w) {
    free(w->items);
    free(w->nbytes);
    free(w->path);
    free(w->tmp);
    free(w);
}

int lg_st_writer_commit(lg_st_writer *w) {
    int rc = 0;
    if (w->next != w->n) rc = lg_errorf("%s: %d of %d tensors written", w->path, w->next, w->n);
    int bad = fflush(w->f) != 0;
    bad |= fsync(fileno(w->f)) != 0;
    bad |= fclose(w->f) != 0;
    w->f = NULL;
    if (!rc && bad) rc = lg_errorf("%s: write failed (disk full?)", w->tmp);
    if (!rc && rename(w->tmp, w->path) != 0)
        rc = lg_errorf("%s: cannot rename %s into place: %s", w->path, w->tmp, strerror(errno));
    if (rc) unlink(w->tmp);
    writer_free(w);
    return rc;
}

void lg_st_writer_abort(lg_st_writer *w) {
    if (!w) return;
    if (w->f) fclose(w->f);
    unlink(w->tmp);
    writer_free(w);
}
