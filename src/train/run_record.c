/* run_record.c — see run_record.h. */
#include "train/run_record.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/util.h"
#include "core/version.h"
#include "io/gguf.h"
#include "train/checkpoint.h"

/* ---- run.json ----------------------------------------------------------------------------- */

static char *abs_path(const char *p) {
    char buf[PATH_MAX];
    return realpath(p, buf) ? lg_strdup(buf) : lg_strdup(p);
}

static void append(char **s, size_t *len, size_t *cap, const char *a, size_t n) {
    if (*len + n + 1 > *cap) *s = lg_realloc(*s, *cap = (*len + n + 1) * 2);
    memcpy(*s + *len, a, n);
    *len += n;
    (*s)[*len] = 0;
}

/* argv as one line a shell reads back word for word */
static char *shell_line(int argc, char **argv) {
    size_t len = 0, cap = 64;
    char *s = lg_malloc(cap);
    append(&s, &len, &cap, "loraga", 6);
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        append(&s, &len, &cap, " ", 1);
        int plain = *a != 0;
        for (const char *c = a; *c; c++)
            plain &= (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
                     strchr("-_./=:,+@%", *c) != NULL;
        if (plain) {
            append(&s, &len, &cap, a, strlen(a));
            continue;
        }
        append(&s, &len, &cap, "'", 1);
        for (const char *c = a; *c; c++)
            if (*c == '\'') append(&s, &len, &cap, "'\\''", 4);
            else append(&s, &len, &cap, c, 1);
        append(&s, &len, &cap, "'", 1);
    }
    return s;
}

cJSON *lg_run_record_new(int argc, char **argv, const char *precision) {
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "loraga_version", LG_VERSION);
    cJSON_AddStringToObject(r, "git_commit", lg_git_commit());
    char *line = shell_line(argc, argv);
    cJSON_AddStringToObject(r, "command", line);
    free(line);
    cJSON *a = cJSON_AddArrayToObject(r, "argv");
    cJSON_AddItemToArray(a, cJSON_CreateString("loraga"));
    for (int i = 0; i < argc; i++) cJSON_AddItemToArray(a, cJSON_CreateString(argv[i]));
    char cwd[PATH_MAX];
    if (getcwd(cwd, sizeof cwd)) cJSON_AddStringToObject(r, "cwd", cwd);
    time_t now = time(NULL);
    struct tm tm;
    char ts[32];
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&now, &tm));
    cJSON_AddStringToObject(r, "started", ts);
    cJSON_AddStringToObject(r, "precision", precision);
    cJSON_AddNumberToObject(r, "threads", omp_get_max_threads());
    return r;
}

int lg_run_record_file(cJSON *rec, const char *key, const char *path) {
    uint64_t id;
    if (lg_ckpt_file_id(path, &id) != 0) return -1;
    char hx[17], *ap = abs_path(path);
    snprintf(hx, sizeof hx, "%016" PRIx64, id);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "path", ap);
    cJSON_AddStringToObject(o, "checksum", hx);
    cJSON_DeleteItemFromObjectCaseSensitive(rec, key);
    cJSON_AddItemToObject(rec, key, o);
    free(ap);
    return 0;
}

int lg_run_record_write(const cJSON *rec, const char *dir) {
    char *txt = cJSON_Print(rec), *p = lg_path_join(dir, "run.json");
    size_t n = strlen(txt);
    txt = lg_realloc(txt, n + 2);
    txt[n] = '\n';
    int rc = lg_write_file_atomic(p, txt, n + 1);
    free(txt), free(p);
    return rc;
}

/* ---- base_model_name_or_path ------------------------------------------------------------ */

/* "owner/name" or a bare "gpt2": what the Hub resolves */
static int hub_id(const char *s) {
    int slashes = 0;
    if (!*s || *s == '/' || *s == '.' || s[strlen(s) - 1] == '/') return 0;
    for (const char *c = s; *c; c++) {
        if (*c == '/') slashes++;
        else if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
                   strchr("-_.", *c)))
            return 0;
    }
    return slashes <= 1;
}

char *lg_base_model_name(const char *model) {
    char *name = NULL;
    if (lg_is_dir(model)) {
        char *cfg = lg_path_join(model, "config.json"), *txt;
        size_t n;
        if (lg_read_file(cfg, &txt, &n) == 0) {
            cJSON *j = cJSON_ParseWithLength(txt, n);
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "_name_or_path");
            /* a path of the machine that saved it means nothing here */
            if (cJSON_IsString(v) && lg_is_dir(v->valuestring)) name = abs_path(v->valuestring);
            else if (cJSON_IsString(v) && hub_id(v->valuestring) && !lg_file_exists(v->valuestring))
                name = lg_strdup(v->valuestring);
            cJSON_Delete(j);
            free(txt);
        }
        lg_clear_error();
        free(cfg);
    } else if (lg_gguf_is_gguf(model)) {
        lg_gguf *g;
        const char *s;
        size_t n;
        if (lg_gguf_open(model, &g) == 0) {
            if (lg_gguf_get_str(g, "general.name", &s, &n) == 0 && n > 0) {
                name = lg_malloc(n + 1);
                memcpy(name, s, n);
                name[n] = 0;
            }
            lg_gguf_close(g);
        }
        lg_clear_error();
    }
    return name ? name : abs_path(model);
}

/* ---- snapshots ---------------------------------------------------------------------------- */

void lg_run_tracker_init(lg_run_tracker *t) {
    t->best_val = NAN;
    t->best_step = 0;
    t->bad_evals = 0;
    t->stopped_at = 0;
    if (!t->dir || !t->save_best) return;
    char *p = lg_path_join(t->dir, "best/trainer_state.json"), *txt;
    size_t n;
    if (lg_file_exists(p) && lg_read_file(p, &txt, &n) == 0) { /* a resumed run: the best so far stands */
        cJSON *j = cJSON_ParseWithLength(txt, n);
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "eval_loss"), *s = cJSON_GetObjectItemCaseSensitive(j, "global_step");
        if (cJSON_IsNumber(v) && cJSON_IsNumber(s)) t->best_val = (float)v->valuedouble, t->best_step = (long)s->valuedouble;
        cJSON_Delete(j);
        free(txt);
    }
    lg_clear_error();
    free(p);
}

static char *suffixed(const char *path, const char *what) {
    size_t n = strlen(path) + 48;
    char *s = lg_malloc(n);
    snprintf(s, n, "%s.%s.%ld", path, what, (long)getpid());
    return s;
}

int lg_run_snapshot(lg_run_tracker *t, const char *name, long step, float loss, float val_loss) {
    if (!t->write) return 0;
    char *dst = lg_path_join(t->dir, name), *tmp = suffixed(dst, "tmp"), *old = suffixed(dst, "old");
    int rc = -1;
    lg_outdir_abort(lg_strdup(tmp)); /* a leftover of this pid */
    if (lg_mkdir_p(tmp) != 0 || t->save(tmp, t->save_ud) != 0) goto done;
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "global_step", (double)step);
    cJSON_AddNumberToObject(j, "train_loss", lg_ckpt_float(loss));
    if (!isnan(val_loss)) cJSON_AddNumberToObject(j, "eval_loss", lg_ckpt_float(val_loss));
    if (!isnan(t->best_val)) {
        cJSON_AddNumberToObject(j, "best_eval_loss", lg_ckpt_float(t->best_val));
        cJSON_AddNumberToObject(j, "best_global_step", (double)t->best_step);
    }
    char *txt = cJSON_Print(j), *sp = lg_path_join(tmp, "trainer_state.json");
    cJSON_Delete(j);
    int wrc = lg_write_file_atomic(sp, txt, strlen(txt));
    free(txt), free(sp);
    if (wrc) goto done;
    /* the previous snapshot of that name stays until the new one is in place */
    int had = lg_file_exists(dst);
    if (had && rename(dst, old) != 0) {
        lg_errorf("%s: cannot replace: %s", dst, strerror(errno));
        goto done;
    }
    if (rename(tmp, dst) != 0) {
        lg_errorf("%s: cannot move into place: %s", dst, strerror(errno));
        if (had) rename(old, dst);
        goto done;
    }
    if (had) lg_outdir_abort(lg_strdup(old));
    rc = 0;
done:
    if (rc) {
        lg_errorf_prefix("writing %s", dst);
        lg_outdir_abort(lg_strdup(tmp));
    }
    free(dst), free(tmp), free(old);
    return rc;
}

static int cmp_long(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

/* keep the newest t->save_total_limit checkpoint-N/ */
static void prune(lg_run_tracker *t) {
    if (t->save_total_limit <= 0 || !t->write) return;
    DIR *d = opendir(t->dir);
    if (!d) return;
    long *steps = NULL;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        const char *s = e->d_name;
        if (strncmp(s, "checkpoint-", 11) || !s[11]) continue;
        char *end;
        long v = strtol(s + 11, &end, 10);
        if (*end || s[11] < '0' || s[11] > '9') continue;
        steps = lg_realloc(steps, (size_t)(n + 1) * sizeof *steps);
        steps[n++] = v;
    }
    closedir(d);
    qsort(steps, (size_t)n, sizeof *steps, cmp_long);
    for (int i = 0; i + t->save_total_limit < n; i++) {
        char name[48];
        snprintf(name, sizeof name, "checkpoint-%ld", steps[i]);
        lg_outdir_abort(lg_path_join(t->dir, name));
    }
    free(steps);
}

int lg_run_after_step(const lg_progress *p, void *ud) {
    lg_run_tracker *t = ud;
    int end = 0;
    if (!isnan(p->val_loss)) {
        if (isnan(t->best_val) || p->val_loss < t->best_val) {
            t->best_val = p->val_loss;
            t->best_step = p->step;
            t->bad_evals = 0;
            if (t->save_best && lg_run_snapshot(t, "best", p->step, p->loss, p->val_loss) != 0) return -1;
        } else if (t->patience > 0 && ++t->bad_evals >= t->patience && p->step < p->steps) {
            end = 1;
            t->stopped_at = p->step;
        }
    }
    if (t->save_every > 0 && (p->step % t->save_every == 0 || p->step == p->steps || end)) {
        char name[48];
        snprintf(name, sizeof name, "checkpoint-%ld", p->step);
        if (lg_run_snapshot(t, name, p->step, p->loss, p->val_loss) != 0) return -1;
        prune(t);
    }
    return end;
}
