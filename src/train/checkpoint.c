/* checkpoint.c — training checkpoints: atomic write, verified read, exact restore (see checkpoint.h). */
#include "train/checkpoint.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "adapters/lora.h"
#include "adapters/lora_io.h"
#include "core/util.h"
#include "io/safetensors.h"

#define CKPT_FORMAT "loraga-checkpoint"
#define CKPT_VERSION 1

static const char *const CKPT_FILES[] = {"trainable.safetensors", "optimizer.safetensors", "fixed.safetensors",
                                         "state.bin", "metrics.jsonl"};
enum { F_TRAINABLE, F_OPTIMIZER, F_FIXED, F_STATE, F_METRICS, F_COUNT };

/* ------------------------------------------------------------------------------------------ */
/* checksums                                                                                  */

static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
static inline uint64_t fmix(uint64_t z) {
    z ^= z >> 33;
    z *= 0xff51afd7ed558ccdULL;
    z ^= z >> 33;
    z *= 0xc4ceb9fe1a85ec53ULL;
    return z ^ (z >> 33);
}

/* Four independent multiply-rotate lanes over 32-byte blocks (fast on big weight files), the tail
 * folded byte by byte, all lanes and the length mixed at the end. Detects corruption, not attacks. */
uint64_t lg_ckpt_hash(const void *data, size_t n, uint64_t seed) {
    const uint64_t K1 = 0x9e3779b97f4a7c15ULL, K2 = 0xc2b2ae3d27d4eb4fULL;
    const unsigned char *p = data;
    uint64_t h[4] = {seed ^ K1, seed + K2, rotl64(seed, 17) ^ K2, ~seed};
    size_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int l = 0; l < 4; l++) {
            uint64_t w;
            memcpy(&w, p + i + 8 * l, 8);
            h[l] = rotl64(h[l] + w * K2, 31) * K1;
        }
    uint64_t t = 0;
    for (; i < n; i++) t = (t ^ p[i]) * 0x100000001b3ULL;
    uint64_t r = (uint64_t)n * K1 ^ t;
    for (int l = 0; l < 4; l++) r = rotl64(r ^ fmix(h[l]), 27) * K1 + K2;
    return fmix(r);
}

uint64_t lg_ckpt_model_id(lg_model *m) {
    uint64_t h = 0x6c67; /* "lg" */
    for (int i = 0; i < lg_model_n_params(m); i++) {
        const lg_param *p = lg_model_param(m, i);
        h = lg_ckpt_hash(p->name, strlen(p->name), h);
        h = lg_ckpt_hash(p->shape, sizeof p->shape, h);
        h = lg_ckpt_hash(p->data, (size_t)p->numel * sizeof(float), h);
    }
    return h;
}

static int file_hash(const char *path, uint64_t *hash, uint64_t *bytes) {
    struct stat st;
    if (stat(path, &st) != 0) return lg_errorf("%s: missing (%s)", path, strerror(errno));
    *bytes = (uint64_t)st.st_size;
    if (st.st_size == 0) {
        *hash = lg_ckpt_hash(NULL, 0, 0);
        return 0;
    }
    lg_mmap mm;
    if (lg_mmap_file(path, &mm) != 0) return -1;
    *hash = lg_ckpt_hash(mm.data, mm.size, 0);
    lg_munmap(&mm);
    return 0;
}

int lg_ckpt_file_id(const char *path, uint64_t *id) {
    uint64_t bytes;
    return file_hash(path, id, &bytes);
}

double lg_ckpt_float(float f) {
    char buf[32];
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)f);
        double d = strtod(buf, NULL);
        if ((float)d == f) return d;
    }
    return (double)f;
}

static void hex64(uint64_t v, char out[17]) { snprintf(out, 17, "%016" PRIx64, v); }

/* ------------------------------------------------------------------------------------------ */
/* small file-system helpers                                                                  */

static char *str_printf(const char *fmt, const char *a, long b) {
    size_t n = strlen(fmt) + strlen(a) + 32;
    char *s = lg_malloc(n);
    snprintf(s, n, fmt, a, b);
    return s;
}

static char *join_name(const char *mod, const char *suffix) {
    size_t n = strlen(mod) + strlen(suffix) + 1;
    char *s = lg_malloc(n);
    snprintf(s, n, "%s%s", mod, suffix);
    return s;
}

static void remove_tree(const char *path) { lg_outdir_abort(lg_strdup(path)); }

/* Flush a file or directory to the disk, so that the rename that publishes it is durable. */
static int sync_path(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return lg_errorf("%s: cannot open to sync: %s", path, strerror(errno));
    int rc = fsync(fd);
    close(fd);
    if (rc != 0 && errno != EINVAL) return lg_errorf("%s: fsync failed: %s", path, strerror(errno));
    return 0;
}

static char *parent_dir(const char *path) {
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

static const char *base_name(const char *path, char *buf, size_t cap) {
    snprintf(buf, cap, "%s", path);
    size_t n = strlen(buf);
    while (n > 1 && buf[n - 1] == '/') buf[--n] = 0;
    char *s = strrchr(buf, '/');
    return s ? s + 1 : buf;
}

/* Publish tmp as dir: an atomic exchange when dir exists (Linux renameat2), then drop the old one.
 * Without exchange support: dir -> dir.prev, tmp -> dir, remove dir.prev (a resume of the run
 * directory also looks at checkpoint.prev, so no window loses the last checkpoint). */
static int publish_dir(const char *tmp, const char *dir) {
    if (!lg_file_exists(dir)) {
        if (rename(tmp, dir) != 0) return lg_errorf("%s: cannot rename into place: %s", dir, strerror(errno));
        return 0;
    }
#ifdef RENAME_EXCHANGE
    if (renameat2(AT_FDCWD, tmp, AT_FDCWD, dir, RENAME_EXCHANGE) == 0) {
        remove_tree(tmp); /* now the previous checkpoint */
        return 0;
    }
#endif
    char *prev = join_name(dir, ".prev");
    remove_tree(prev);
    int rc = 0;
    if (rename(dir, prev) != 0) rc = lg_errorf("%s: cannot move aside: %s", dir, strerror(errno));
    else if (rename(tmp, dir) != 0) {
        rc = lg_errorf("%s: cannot rename into place: %s", dir, strerror(errno));
        rename(prev, dir);
    } else {
        remove_tree(prev);
    }
    free(prev);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* writing                                                                                    */

static int write_tensors(const char *path, const char *const *names, float *const *data, const int64_t *n, int count) {
    lg_st_item *items = lg_calloc((size_t)(count > 0 ? count : 1), sizeof *items);
    for (int i = 0; i < count; i++)
        items[i] = (lg_st_item){.name = names[i], .dtype = LG_DT_F32, .ndim = 1, .shape = {n[i]}, .data = data[i]};
    lg_st_meta meta[] = {{"format", CKPT_FORMAT}};
    int rc = lg_st_write(path, items, count, meta, 1);
    free(items);
    return rc;
}

static char *tensor_name(const lg_opt_tensor *t, int i, const char *suffix) {
    char buf[64];
    const char *base = t->name;
    if (!base) {
        snprintf(buf, sizeof buf, "tensor.%d", i);
        base = buf;
    }
    size_t n = strlen(base) + strlen(suffix) + 1;
    char *s = lg_malloc(n);
    snprintf(s, n, "%s%s", base, suffix);
    return s;
}

static int all_finite(const float *x, int64_t n) {
    int ok = 1;
    for (int64_t i = 0; i < n; i++) ok &= isfinite(x[i]) != 0;
    return ok;
}

int lg_ckpt_write(const char *dir, const lg_ckpt_progress *p, const lg_opt_tensor *t, int n, const lg_ckpt_spec *spec,
                  const char *config_json, const char *metrics_path, lg_ckpt_cache *cache) {
    /* a checkpoint must be a state worth resuming from: refuse non-finite values */
    for (int i = 0; i < n; i++)
        if (!all_finite(t[i].data, t[i].n) || !all_finite(t[i].m, t[i].n) || !all_finite(t[i].v, t[i].n))
            return lg_errorf("step %ld: %s (or its AdamW moments) holds non-finite values after the update; "
                             "not writing a checkpoint",
                             p->step, t[i].name ? t[i].name : "a trainable tensor");
    char *tmp = str_printf("%s.tmp.%ld", dir, (long)getpid());
    remove_tree(tmp); /* a leftover of an earlier failed write */
    if (lg_mkdir_p(tmp) != 0) {
        free(tmp);
        return -1;
    }
    char *paths[F_COUNT] = {0};
    for (int f = 0; f < F_COUNT; f++) paths[f] = lg_path_join(tmp, CKPT_FILES[f]);
    int have[F_COUNT] = {1, 1, spec && spec->n_fixed > 0, spec && spec->state_bytes, metrics_path != NULL};
    uint64_t hash[F_COUNT] = {0}, bytes[F_COUNT] = {0};
    int rc = -1;

    { /* trainable and optimizer */
        int cnt = n > 0 ? n : 1;
        char **names = lg_calloc((size_t)cnt * 2, sizeof(char *));
        float **data = lg_calloc((size_t)cnt * 2, sizeof(float *));
        int64_t *len = lg_calloc((size_t)cnt * 2, sizeof(int64_t));
        for (int i = 0; i < n; i++) {
            names[i] = tensor_name(&t[i], i, "");
            data[i] = t[i].data;
            len[i] = t[i].n;
        }
        int wrc = write_tensors(paths[F_TRAINABLE], (const char *const *)names, data, len, n);
        for (int i = 0; i < n; i++) free(names[i]);
        for (int i = 0; i < n; i++) {
            names[2 * i] = tensor_name(&t[i], i, ".exp_avg");
            names[2 * i + 1] = tensor_name(&t[i], i, ".exp_avg_sq");
            data[2 * i] = t[i].m;
            data[2 * i + 1] = t[i].v;
            len[2 * i] = len[2 * i + 1] = t[i].n;
        }
        if (wrc == 0) wrc = write_tensors(paths[F_OPTIMIZER], (const char *const *)names, data, len, 2 * n);
        for (int i = 0; i < 2 * n; i++) free(names[i]);
        free(names), free(data), free(len);
        if (wrc != 0) goto out;
    }
    if (have[F_FIXED]) {
        char *prev = lg_path_join(dir, CKPT_FILES[F_FIXED]);
        int linked = cache && cache->fixed_written && link(prev, paths[F_FIXED]) == 0;
        free(prev);
        if (linked) {
            hash[F_FIXED] = cache->fixed_hash;
            bytes[F_FIXED] = cache->fixed_bytes;
        } else {
            const char **names = lg_calloc((size_t)spec->n_fixed, sizeof(char *));
            float **data = lg_calloc((size_t)spec->n_fixed, sizeof(float *));
            int64_t *len = lg_calloc((size_t)spec->n_fixed, sizeof(int64_t));
            for (int i = 0; i < spec->n_fixed; i++) {
                names[i] = spec->fixed[i].name;
                data[i] = spec->fixed[i].data;
                len[i] = spec->fixed[i].n;
            }
            int wrc = write_tensors(paths[F_FIXED], names, data, len, spec->n_fixed);
            free(names), free(data), free(len);
            if (wrc != 0) goto out;
            if (file_hash(paths[F_FIXED], &hash[F_FIXED], &bytes[F_FIXED]) != 0) goto out;
            if (cache) {
                cache->fixed_written = 1;
                cache->fixed_hash = hash[F_FIXED];
                cache->fixed_bytes = bytes[F_FIXED];
            }
        }
    }
    if (have[F_STATE]) {
        size_t nb = spec->state_bytes(spec->state_ud);
        void *buf = lg_malloc(nb ? nb : 1);
        spec->state_save(spec->state_ud, buf);
        int wrc = lg_write_file_atomic(paths[F_STATE], buf, nb);
        free(buf);
        if (wrc != 0) goto out;
    }
    if (have[F_METRICS]) {
        char *text;
        size_t len;
        if (lg_read_file(metrics_path, &text, &len) != 0) goto out;
        int wrc = lg_write_file_atomic(paths[F_METRICS], text, len);
        free(text);
        if (wrc != 0) goto out;
    }
    for (int f = 0; f < F_COUNT; f++)
        if (have[f] && f != F_FIXED && file_hash(paths[f], &hash[f], &bytes[f]) != 0) goto out;

    {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "format", CKPT_FORMAT);
        cJSON_AddNumberToObject(j, "version", CKPT_VERSION);
        cJSON_AddNumberToObject(j, "step", (double)p->step);
        cJSON_AddNumberToObject(j, "total_steps", (double)p->total_steps);
        cJSON_AddNumberToObject(j, "micro_batches", (double)p->micro_batches);
        cJSON_AddNumberToObject(j, "adam_step", (double)p->adam_step);
        cJSON_AddNumberToObject(j, "elapsed", p->elapsed);
        if (isfinite(p->first_loss)) cJSON_AddNumberToObject(j, "first_loss", (double)p->first_loss);
        cJSON_AddNumberToObject(j, "trainable_tensors", n);
        cJSON_AddNumberToObject(j, "fixed_tensors", spec ? spec->n_fixed : 0);
        cJSON *cfg = cJSON_Parse(config_json ? config_json : "{}");
        if (!cfg) cfg = cJSON_CreateObject();
        cJSON_AddItemToObject(j, "config", cfg);
        cJSON *files = cJSON_AddObjectToObject(j, "files");
        for (int f = 0; f < F_COUNT; f++) {
            if (!have[f]) continue;
            char hx[17];
            hex64(hash[f], hx);
            cJSON *e = cJSON_AddObjectToObject(files, CKPT_FILES[f]);
            cJSON_AddNumberToObject(e, "bytes", (double)bytes[f]);
            cJSON_AddStringToObject(e, "checksum", hx);
        }
        char *txt = cJSON_Print(j);
        cJSON_Delete(j);
        char *sp = lg_path_join(tmp, "trainer_state.json");
        int wrc = lg_write_file_atomic(sp, txt, strlen(txt));
        if (wrc == 0) wrc = sync_path(sp);
        free(sp);
        free(txt);
        if (wrc != 0) goto out;
    }
    for (int f = 0; f < F_COUNT; f++)
        if (have[f] && sync_path(paths[f]) != 0) goto out;
    if (sync_path(tmp) != 0 || publish_dir(tmp, dir) != 0) goto out;
    {
        char *parent = parent_dir(dir);
        sync_path(parent); /* best effort: the rename itself is already atomic */
        free(parent);
    }
    rc = 0;
out:
    if (rc != 0) {
        lg_errorf_prefix("step %ld: writing the checkpoint %s failed (the previous one is kept)", p->step, dir);
        remove_tree(tmp);
    }
    for (int f = 0; f < F_COUNT; f++) free(paths[f]);
    free(tmp);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* reading                                                                                    */

struct lg_ckpt {
    char *dir;
    cJSON *state;
    const cJSON *config;
    lg_ckpt_progress p;
    long n_trainable, n_fixed;
    int have[F_COUNT];
    char *metrics;
    size_t metrics_len;
};

void lg_ckpt_close(lg_ckpt *c) {
    if (!c) return;
    free(c->dir);
    cJSON_Delete(c->state);
    free(c->metrics);
    free(c);
}

static int num_field(const cJSON *j, const char *key, double *v, const char *path) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(j, key);
    if (!cJSON_IsNumber(x)) return lg_errorf("%s: field \"%s\" missing or not a number", path, key);
    *v = x->valuedouble;
    return 0;
}

int lg_ckpt_open(const char *dir, lg_ckpt **out) {
    *out = NULL;
    char *sp = lg_path_join(dir, "trainer_state.json"), *txt = NULL;
    if (lg_read_file(sp, &txt, NULL) != 0) {
        free(sp);
        return lg_errorf_prefix("not a checkpoint");
    }
    lg_ckpt *c = lg_calloc(1, sizeof *c);
    c->dir = lg_strdup(dir);
    c->state = cJSON_Parse(txt);
    free(txt);
    int rc = -1;
    if (!c->state || !cJSON_IsObject(c->state)) {
        lg_errorf("%s: not valid JSON", sp);
        goto out;
    }
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(c->state, "format");
    double v[8] = {0};
    if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, CKPT_FORMAT)) {
        lg_errorf("%s: not a loraga checkpoint (\"format\" is not \"%s\")", sp, CKPT_FORMAT);
        goto out;
    }
    if (num_field(c->state, "version", &v[0], sp) != 0) goto out;
    if (v[0] != CKPT_VERSION) {
        lg_errorf("%s: checkpoint version %g is not supported (this build reads %d)", sp, v[0], CKPT_VERSION);
        goto out;
    }
    if (num_field(c->state, "step", &v[1], sp) || num_field(c->state, "total_steps", &v[2], sp) ||
        num_field(c->state, "micro_batches", &v[3], sp) || num_field(c->state, "adam_step", &v[4], sp) ||
        num_field(c->state, "elapsed", &v[5], sp) || num_field(c->state, "trainable_tensors", &v[6], sp) ||
        num_field(c->state, "fixed_tensors", &v[7], sp))
        goto out;
    for (int i = 1; i < 8; i++)
        if (!(v[i] >= 0 && v[i] < 9e15 && (i == 5 || v[i] == floor(v[i])))) {
            lg_errorf("%s: a counter is out of range or not an integer", sp);
            goto out;
        }
    c->p.step = (long)v[1];
    c->p.total_steps = (long)v[2];
    c->p.micro_batches = (long)v[3];
    c->p.adam_step = (long)v[4];
    c->p.elapsed = v[5];
    c->n_trainable = (long)v[6];
    c->n_fixed = (long)v[7];
    const cJSON *fl = cJSON_GetObjectItemCaseSensitive(c->state, "first_loss");
    c->p.first_loss = cJSON_IsNumber(fl) ? (float)fl->valuedouble : NAN;
    c->config = cJSON_GetObjectItemCaseSensitive(c->state, "config");
    if (!cJSON_IsObject(c->config)) {
        lg_errorf("%s: \"config\" missing", sp);
        goto out;
    }
    const cJSON *files = cJSON_GetObjectItemCaseSensitive(c->state, "files");
    if (!cJSON_IsObject(files)) {
        lg_errorf("%s: \"files\" missing", sp);
        goto out;
    }
    for (int f = 0; f < F_COUNT; f++) {
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(files, CKPT_FILES[f]);
        if (!e) {
            if (f == F_TRAINABLE || f == F_OPTIMIZER) {
                lg_errorf("%s: lists no %s", sp, CKPT_FILES[f]);
                goto out;
            }
            continue;
        }
        const cJSON *cs = cJSON_GetObjectItemCaseSensitive(e, "checksum");
        double want_bytes;
        if (num_field(e, "bytes", &want_bytes, sp) != 0 || !cJSON_IsString(cs)) {
            lg_errorf("%s: entry of %s lacks bytes or checksum", sp, CKPT_FILES[f]);
            goto out;
        }
        char *fp = lg_path_join(dir, CKPT_FILES[f]);
        uint64_t h, nb;
        char hx[17];
        int frc = file_hash(fp, &h, &nb);
        if (frc == 0) hex64(h, hx);
        if (frc == 0 && (double)nb != want_bytes)
            frc = lg_errorf("%s: %" PRIu64 " bytes, the checkpoint recorded %.0f (truncated?)", fp, nb, want_bytes);
        else if (frc == 0 && strcmp(hx, cs->valuestring))
            frc = lg_errorf("%s: checksum %s differs from the recorded %s (corrupted)", fp, hx, cs->valuestring);
        if (frc == 0 && f == F_METRICS && lg_read_file(fp, &c->metrics, &c->metrics_len) != 0) frc = -1;
        free(fp);
        if (frc != 0) goto out;
        c->have[f] = 1;
    }
    if ((c->n_fixed > 0) != c->have[F_FIXED]) {
        lg_errorf("%s: fixed_tensors and fixed.safetensors disagree", sp);
        goto out;
    }
    rc = 0;
out:
    free(sp);
    if (rc != 0) {
        lg_ckpt_close(c);
        return -1;
    }
    *out = c;
    return 0;
}

long lg_ckpt_step(const lg_ckpt *c) { return c->p.step; }
long lg_ckpt_micro_batches(const lg_ckpt *c) { return c->p.micro_batches; }

const char *lg_ckpt_metrics(const lg_ckpt *c, size_t *len) {
    if (len) *len = c->metrics ? c->metrics_len : 0;
    return c->metrics ? c->metrics : "";
}

int lg_ckpt_check_config(const lg_ckpt *c, const char *config_json) {
    cJSON *now = cJSON_Parse(config_json ? config_json : "{}");
    if (!cJSON_IsObject(now)) {
        cJSON_Delete(now);
        return lg_errorf("resume: the run's options are not a JSON object (internal error)");
    }
    int rc = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, now) {
        const cJSON *old = cJSON_GetObjectItemCaseSensitive(c->config, e->string);
        if (old && cJSON_Compare(old, e, 1)) continue;
        char *vn = cJSON_PrintUnformatted(e), *vo = old ? cJSON_PrintUnformatted(old) : NULL;
        if (old)
            rc = lg_errorf("resume from %s: option %s differs: the checkpoint has %s, this run %s", c->dir, e->string,
                           vo, vn);
        else
            rc = lg_errorf("resume from %s: option %s (%s in this run) is not in the checkpoint", c->dir, e->string,
                           vn);
        free(vn), free(vo);
        break;
    }
    if (rc == 0)
        cJSON_ArrayForEach(e, c->config) {
            if (cJSON_GetObjectItemCaseSensitive(now, e->string)) continue;
            char *vo = cJSON_PrintUnformatted(e);
            rc = lg_errorf("resume from %s: option %s is %s in the checkpoint but not set in this run", c->dir,
                           e->string, vo);
            free(vo);
            break;
        }
    cJSON_Delete(now);
    return rc;
}

static int read_into(const lg_safetensors *st, const char *what, const char *name, float *dst, int64_t n) {
    int64_t shape[1] = {n};
    if (!lg_st_find(st, name)) return lg_errorf("the checkpoint's %s has no tensor %s", what, name);
    return lg_st_read_f32(st, name, dst, 1, shape);
}

int lg_ckpt_restore(const lg_ckpt *c, lg_opt_tensor *t, int n, const lg_ckpt_spec *spec, lg_ckpt_progress *p) {
    const int nfix = spec ? spec->n_fixed : 0;
    if (c->n_trainable != n)
        return lg_errorf("resume from %s: the checkpoint holds %ld trainable tensors, this run has %d (other method, "
                         "targets or model?)",
                         c->dir, c->n_trainable, n);
    if (c->n_fixed != nfix)
        return lg_errorf("resume from %s: the checkpoint holds %ld fixed tensors (offset base weights, A0, B0), this "
                         "run expects %d",
                         c->dir, c->n_fixed, nfix);
    if ((spec && spec->state_bytes) != c->have[F_STATE])
        return lg_errorf("resume from %s: the checkpoint %s adapter state, this run %s", c->dir,
                         c->have[F_STATE] ? "has" : "has no", c->have[F_STATE] ? "has none" : "needs it");
    lg_safetensors *st[3] = {0};
    int rc = -1;
    for (int f = 0; f < 3; f++) {
        if (!c->have[f]) continue;
        char *fp = lg_path_join(c->dir, CKPT_FILES[f]);
        int orc = lg_st_open(fp, &st[f]);
        free(fp);
        if (orc != 0) goto out;
    }
    if (lg_st_count(st[F_TRAINABLE]) != n || lg_st_count(st[F_OPTIMIZER]) != 2 * n ||
        (nfix && lg_st_count(st[F_FIXED]) != nfix)) {
        lg_errorf("resume from %s: tensor counts in the files disagree with trainer_state.json", c->dir);
        goto out;
    }
    for (int i = 0; i < n; i++) {
        char *nm = tensor_name(&t[i], i, ""), *nmm = tensor_name(&t[i], i, ".exp_avg"),
             *nmv = tensor_name(&t[i], i, ".exp_avg_sq");
        int r = read_into(st[F_TRAINABLE], "trainable tensors", nm, t[i].data, t[i].n);
        if (r == 0) r = read_into(st[F_OPTIMIZER], "optimizer state", nmm, t[i].m, t[i].n);
        if (r == 0) r = read_into(st[F_OPTIMIZER], "optimizer state", nmv, t[i].v, t[i].n);
        free(nm), free(nmm), free(nmv);
        if (r != 0) goto out;
    }
    for (int i = 0; i < nfix; i++)
        if (read_into(st[F_FIXED], "fixed tensors", spec->fixed[i].name, spec->fixed[i].data, spec->fixed[i].n) != 0)
            goto out;
    if (spec && spec->state_bytes) {
        char *fp = lg_path_join(c->dir, CKPT_FILES[F_STATE]), *blob;
        size_t len;
        int r = lg_read_file(fp, &blob, &len);
        free(fp);
        if (r == 0) {
            r = spec->state_load(spec->state_ud, blob, len);
            free(blob);
        }
        if (r != 0) goto out;
    }
    *p = c->p;
    rc = 0;
out:
    for (int f = 0; f < 3; f++) lg_st_close(st[f]);
    if (rc != 0) lg_errorf_prefix("resume from %s", c->dir);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* locating a checkpoint and the run directory                                                */

static int is_ckpt_dir(const char *dir) {
    char *sp = lg_path_join(dir, "trainer_state.json");
    int ok = lg_file_exists(sp);
    free(sp);
    return ok;
}

int lg_ckpt_resolve(const char *path, char **ckpt_dir, char **run_dir) {
    *ckpt_dir = *run_dir = NULL;
    char buf[PATH_MAX];
    if (is_ckpt_dir(path)) {
        *ckpt_dir = lg_strdup(path);
        if (!strcmp(base_name(path, buf, sizeof buf), "checkpoint")) *run_dir = parent_dir(path);
        return 0;
    }
    /* a run directory: its checkpoint, or the previous one kept aside during a non-atomic swap */
    static const char *const names[] = {"checkpoint", "checkpoint.prev"};
    for (int i = 0; i < 2; i++) {
        char *c = lg_path_join(path, names[i]);
        if (is_ckpt_dir(c)) {
            *ckpt_dir = c;
            *run_dir = lg_strdup(path);
            return 0;
        }
        free(c);
    }
    return lg_errorf("--resume %s: no checkpoint there (expected %s/trainer_state.json or %s/checkpoint/)", path, path,
                     path);
}

/* The snapshots of a run (run_record.h): checkpoint-N/ and best/, and (with a '.') their unfinished
 * ".tmp."/".old." copies. */
static int snapshot_entry(const char *name) {
    const char *p = NULL;
    if (!strncmp(name, "checkpoint-", 11) && name[11] >= '0' && name[11] <= '9')
        for (p = name + 11; *p >= '0' && *p <= '9'; p++) {}
    else if (!strncmp(name, "best", 4))
        p = name + 4;
    return p && (!*p || !strncmp(p, ".tmp.", 5) || !strncmp(p, ".old.", 5));
}

/* Entries of a run directory that belong to its checkpoint (and snapshots). */
static int ckpt_entry(const char *name) {
    return !strcmp(name, "checkpoint") || !strcmp(name, "checkpoint.prev") || !strncmp(name, "checkpoint.tmp.", 15) ||
           snapshot_entry(name);
}

static int same_dir(const char *a, const char *b) {
    struct stat sa, sb;
    return a && b && stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

char *lg_ckpt_outdir_begin(const char *out, const char *resume_ckpt) {
    if (lg_file_exists(out) && !lg_is_dir(out)) {
        lg_errorf("%s: exists and is not a directory", out);
        return NULL;
    }
    if (lg_is_dir(out)) {
        DIR *d = opendir(out);
        if (!d) {
            lg_errorf("%s: cannot list: %s", out, strerror(errno));
            return NULL;
        }
        int foreign = 0, ckpt = 0;
        struct dirent *e;
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            if (ckpt_entry(e->d_name)) ckpt = 1;
            else foreign = 1;
        }
        closedir(d);
        int ours = 0;
        if (ckpt && !foreign && resume_ckpt) {
            char *c1 = lg_path_join(out, "checkpoint"), *c2 = lg_path_join(out, "checkpoint.prev");
            ours = same_dir(c1, resume_ckpt) || same_dir(c2, resume_ckpt);
            free(c1), free(c2);
        }
        if (foreign || (ckpt && !ours)) {
            lg_errorf("%s: already exists and is not an empty directory; choose another output or remove it%s", out,
                      ckpt && !foreign ? " (it holds a checkpoint: continue it with --resume)" : "");
            return NULL;
        }
        /* leftovers of an interrupted checkpoint write are garbage */
        d = opendir(out);
        while (d && (e = readdir(d)))
            if (!strncmp(e->d_name, "checkpoint.tmp.", 15) || (snapshot_entry(e->d_name) && strchr(e->d_name, '.'))) {
                char *p = lg_path_join(out, e->d_name);
                remove_tree(p);
                free(p);
            }
        if (d) closedir(d);
    }
    if (lg_mkdir_p(out) != 0) return NULL;
    char *tmp = str_printf("%s.tmp.%ld", out, (long)getpid());
    if (lg_mkdir_p(tmp) != 0) {
        free(tmp);
        return NULL;
    }
    return tmp;
}

int lg_ckpt_outdir_commit(char *tmp, const char *out) {
    char *ck = lg_path_join(out, "checkpoint"), *ck_in = lg_path_join(tmp, "checkpoint");
    int moved = lg_is_dir(ck) && rename(ck, ck_in) == 0;
    int rc = 0;
    DIR *d = opendir(out);
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (ckpt_entry(e->d_name)) {
            char *p = lg_path_join(out, e->d_name);
            if (snapshot_entry(e->d_name) && !strchr(e->d_name, '.')) { /* finished snapshots join the outputs */
                char *q = lg_path_join(tmp, e->d_name);
                if (!lg_file_exists(q)) rename(p, q); /* if this fails, out stays non-empty: the commit fails */
                free(q);
            } else {
                remove_tree(p);
            }
            free(p);
        }
    if (d) closedir(d);
    rmdir(out);
    if (rename(tmp, out) != 0) {
        rc = lg_errorf("%s: cannot move output into place: %s", out, strerror(errno));
        /* keep the checkpoint where a resume looks for it */
        if (moved && lg_mkdir_p(out) == 0) rename(ck_in, ck);
    }
    free(ck), free(ck_in);
    free(tmp);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* adapters                                                                                   */

typedef struct {
    lg_ckpt_tensor *fixed;
    char **names;
    int n;
} spec_store;

static size_t ad_state_bytes(void *ud) { return lg_adapters_state_bytes(ud); }
static void ad_state_save(void *ud, void *dst) { lg_adapters_state_save(ud, dst); }
static int ad_state_load(void *ud, const void *src, size_t n) { return lg_adapters_state_load(ud, src, n); }

int lg_ckpt_adapter_spec(struct lg_adapters *a, int offset_init, lg_ckpt_spec *spec) {
    memset(spec, 0, sizeof *spec);
    spec->state_bytes = ad_state_bytes;
    spec->state_save = ad_state_save;
    spec->state_load = ad_state_load;
    spec->state_ud = a;
    if (!offset_init) return 0;
    const int na = lg_adapters_count(a);
    spec_store *s = lg_calloc(1, sizeof *s);
    s->fixed = lg_calloc((size_t)(3 * na > 0 ? 3 * na : 1), sizeof *s->fixed);
    s->names = lg_calloc((size_t)(3 * na > 0 ? 3 * na : 1), sizeof(char *));
    for (int i = 0; i < na; i++) {
        lg_lora *l = lg_adapters_get(a, i);
        /* the same allocator as the adapters' own init: lg_adapters_free releases them */
        if (!l->A0) l->A0 = lg_calloc((size_t)l->r * l->in, sizeof(float));
        if (!l->B0) l->B0 = lg_calloc((size_t)l->out * l->r, sizeof(float));
        s->names[s->n] = lg_strdup(l->lin->w->name);
        s->fixed[s->n] = (lg_ckpt_tensor){s->names[s->n], l->lin->w->data, l->lin->w->numel};
        s->n++;
        s->names[s->n] = join_name(l->lin->name, ".lora_A0");
        s->fixed[s->n] = (lg_ckpt_tensor){s->names[s->n], l->A0, (int64_t)l->r * l->in};
        s->n++;
        s->names[s->n] = join_name(l->lin->name, ".lora_B0");
        s->fixed[s->n] = (lg_ckpt_tensor){s->names[s->n], l->B0, (int64_t)l->out * l->r};
        s->n++;
    }
    spec->fixed = s->fixed;
    spec->n_fixed = s->n;
    spec->owned = s;
    return 0;
}

void lg_ckpt_spec_free(lg_ckpt_spec *spec) {
    spec_store *s = spec->owned;
    if (s) {
        for (int i = 0; i < s->n; i++) free(s->names[i]);
        free(s->names);
        free(s->fixed);
        free(s);
    }
    memset(spec, 0, sizeof *spec);
}
