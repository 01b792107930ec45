/* gguf_write.c — see gguf_write.h. */
#include "io/gguf_write.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/util.h"

typedef struct {
    char *name;
    int n_dims;
    int64_t ne[4];
    uint32_t type;
    uint8_t *data;
    size_t nbytes;
} wtensor;

struct lg_gguf_writer {
    uint8_t *kv; /* encoded key/values */
    size_t kv_n, kv_cap;
    int n_kv;
    char **keys;
    wtensor *t;
    int n_t, t_cap;
};

lg_gguf_writer *lg_gguf_writer_new(void) { return lg_calloc(1, sizeof(lg_gguf_writer)); }

void lg_gguf_writer_free(lg_gguf_writer *w) {
    if (!w) return;
    free(w->kv);
    for (int i = 0; i < w->n_kv; i++) free(w->keys[i]);
    free(w->keys);
    for (int i = 0; i < w->n_t; i++) free(w->t[i].name), free(w->t[i].data);
    free(w->t);
    free(w);
}

static void put(lg_gguf_writer *w, const void *p, size_t n) {
    if (w->kv_n + n > w->kv_cap) {
        w->kv_cap = (w->kv_n + n) * 2 + 256;
        w->kv = lg_realloc(w->kv, w->kv_cap);
    }
    memcpy(w->kv + w->kv_n, p, n);
    w->kv_n += n;
}
static void put_u32(lg_gguf_writer *w, uint32_t v) { put(w, &v, 4); }
static void put_str(lg_gguf_writer *w, const char *s, size_t n) {
    uint64_t l = n;
    put(w, &l, 8);
    put(w, s, n);
}

int lg_gguf_w_has(const lg_gguf_writer *w, const char *key) {
    for (int i = 0; i < w->n_kv; i++)
        if (!strcmp(w->keys[i], key)) return 1;
    return 0;
}
static int key(lg_gguf_writer *w, const char *k) {
    if (lg_gguf_w_has(w, k)) return 0;
    w->keys = lg_realloc(w->keys, (size_t)(w->n_kv + 1) * sizeof(char *));
    w->keys[w->n_kv++] = lg_strdup(k);
    put_str(w, k, strlen(k));
    return 1;
}

void lg_gguf_w_str(lg_gguf_writer *w, const char *k, const char *s) {
    if (!key(w, k)) return;
    put_u32(w, LG_GGUF_STRING);
    put_str(w, s, strlen(s));
}
void lg_gguf_w_u32(lg_gguf_writer *w, const char *k, uint32_t v) {
    if (!key(w, k)) return;
    put_u32(w, LG_GGUF_U32);
    put_u32(w, v);
}
void lg_gguf_w_f32(lg_gguf_writer *w, const char *k, float v) {
    if (!key(w, k)) return;
    put_u32(w, LG_GGUF_F32);
    put(w, &v, 4);
}
void lg_gguf_w_bool(lg_gguf_writer *w, const char *k, int v) {
    if (!key(w, k)) return;
    put_u32(w, LG_GGUF_BOOL);
    uint8_t b = (uint8_t)!!v;
    put(w, &b, 1);
}
void lg_gguf_w_copy(lg_gguf_writer *w, const lg_gguf *g, int i) {
    const void *p;
    size_t n;
    if (lg_gguf_kv_raw(g, i, &p, &n) || !key(w, lg_gguf_kv_key(g, i))) return;
    put(w, p, n);
}

void lg_gguf_quantize_q8_0(const float *x, uint8_t *out, int64_t n) {
    for (int64_t b = 0; b < n / 32; b++, x += 32, out += 34) {
        float amax = 0;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
        uint16_t h = lg_f32_to_f16(d);
        memcpy(out, &h, 2);
        for (int j = 0; j < 32; j++) out[2 + j] = (uint8_t)(int8_t)roundf(x[j] * id);
    }
}

int lg_gguf_w_tensor(lg_gguf_writer *w, const char *name, int n_dims, const int64_t *ne, uint32_t type,
                     const float *data) {
    int64_t n = 1;
    for (int i = 0; i < n_dims; i++) n *= ne[i];
    size_t nb;
    switch (type) {
    case LG_GGML_F32: nb = (size_t)n * 4; break;
    case LG_GGML_F16:
    case LG_GGML_BF16: nb = (size_t)n * 2; break;
    case LG_GGML_Q8_0:
        if (ne[0] % 32) return lg_errorf("tensor '%s': row length %lld is not a multiple of 32 (Q8_0)", name, (long long)ne[0]);
        nb = (size_t)(n / 32) * 34;
        break;
    default: return lg_errorf("tensor '%s': cannot write ggml type %s", name, lg_ggml_type_name(type));
    }
    if (w->n_t == w->t_cap) {
        w->t_cap = w->t_cap ? w->t_cap * 2 : 64;
        w->t = lg_realloc(w->t, (size_t)w->t_cap * sizeof *w->t);
    }
    wtensor *t = &w->t[w->n_t++];
    memset(t, 0, sizeof *t);
    t->name = lg_strdup(name);
    t->n_dims = n_dims;
    for (int i = 0; i < 4; i++) t->ne[i] = i < n_dims ? ne[i] : 1;
    t->type = type;
    t->nbytes = nb;
    t->data = lg_malloc(nb ? nb : 1);
    if (type == LG_GGML_F32) memcpy(t->data, data, nb);
    else if (type == LG_GGML_F16 || type == LG_GGML_BF16) {
        uint16_t *o = (uint16_t *)t->data;
        for (int64_t i = 0; i < n; i++) o[i] = type == LG_GGML_F16 ? lg_f32_to_f16(data[i]) : lg_f32_to_bf16(data[i]);
    } else {
        lg_gguf_quantize_q8_0(data, t->data, n);
    }
    return 0;
}

static size_t pad_to(size_t x, size_t a) { return (x + a - 1) / a * a; }

int lg_gguf_w_save(lg_gguf_writer *w, const char *path) {
    char *tmp = lg_malloc(strlen(path) + 32);
    sprintf(tmp, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        lg_errorf("%s: cannot create: %s", tmp, strerror(errno));
        free(tmp);
        return -1;
    }
    const size_t align = 32;
    int ok = 1;
#define W(p, n) ok &= fwrite((p), 1, (n), f) == (n)
    uint32_t magic = 0x46554747u, ver = 3; /* "GGUF" little-endian */
    uint64_t nt = (uint64_t)w->n_t, nkv = (uint64_t)w->n_kv;
    W(&magic, 4);
    W(&ver, 4);
    W(&nt, 8);
    W(&nkv, 8);
    if (w->kv_n) W(w->kv, w->kv_n);
    size_t off = 0, pos = 24 + w->kv_n;
    for (int i = 0; i < w->n_t; i++) {
        wtensor *t = &w->t[i];
        uint64_t l = strlen(t->name);
        uint32_t nd = (uint32_t)t->n_dims;
        W(&l, 8);
        W(t->name, l);
        W(&nd, 4);
        for (int d = 0; d < t->n_dims; d++) {
            uint64_t e = (uint64_t)t->ne[d];
            W(&e, 8);
        }
        W(&t->type, 4);
        uint64_t o = off;
        W(&o, 8);
        pos += 8 + l + 4 + 8 * (size_t)t->n_dims + 4 + 8;
        off = pad_to(off + t->nbytes, align);
    }
    static const uint8_t zeros[64] = {0};
    size_t pad = pad_to(pos, align) - pos;
    W(zeros, pad);
    for (int i = 0; i < w->n_t; i++) {
        W(w->t[i].data, w->t[i].nbytes);
        size_t p2 = pad_to(w->t[i].nbytes, align) - w->t[i].nbytes;
        W(zeros, p2);
    }
#undef W
    if (fclose(f) != 0) ok = 0;
    if (!ok || rename(tmp, path) != 0) {
        lg_errorf("%s: write failed: %s", path, strerror(errno));
        remove(tmp);
        free(tmp);
        return -1;
    }
    free(tmp);
    return 0;
}
