/* run_record.h — what a run directory says about itself, and the snapshots it keeps.
 *
 * RUNDIR/run.json: the loraga version and git commit, the command line, every option as resolved,
 * the model's and the data's checksums (lg_ckpt_model_id / lg_ckpt_file_id, the identities a
 * --resume checks), precision and threads; at the end the result (steps, losses, best step).
 *
 * Snapshots, written during the run (lg_run_tracker, the training loop's after_step hook):
 *   RUNDIR/checkpoint-N/  the result at update N (an adapter, or a full model, with the tokenizer)
 *                         and trainer_state.json, every save_every updates and at the end; only
 *                         the newest save_total_limit of them are kept
 *   RUNDIR/best/          the same at the lowest validation loss so far
 * Each is built in NAME.tmp.<pid> and renamed into place: never half written. Early stopping ends
 * the run when the validation loss has not improved for `patience` evaluations in a row (as
 * transformers' EarlyStoppingCallback). RUNDIR/checkpoint/ (checkpoint.h) stays the exact-resume
 * state; checkpoint-N/ are deployable results, not resume points. */
#ifndef LG_RUN_RECORD_H
#define LG_RUN_RECORD_H

#include <cjson/cJSON.h>

#include "train/train.h"

/* A fresh record: version, git commit, command line (argv[0..argc) as given, and as one shell-quoted
 * string), start time (UTC), threads, precision. */
cJSON *lg_run_record_new(int argc, char **argv, const char *precision);
/* rec[key] = {"path": absolute path, "checksum": 16 hex digits}; -1 if the file cannot be read. */
int lg_run_record_file(cJSON *rec, const char *key, const char *path);
/* RUNDIR/run.json, atomically. */
int lg_run_record_write(const cJSON *rec, const char *dir);

/* base_model_name_or_path for an adapter trained on `model`: the model's own name where it has one
 * (config.json "_name_or_path" when it is a hub id or a path that exists here; a GGUF's
 * general.name), else the model's absolute path. Fresh string. */
char *lg_base_model_name(const char *model);

/* Writes the result (adapter or model, and tokenizer) into an existing empty directory. */
typedef int (*lg_save_fn)(const char *dir, void *ud);

typedef struct {
    const char *dir;       /* where snapshots go: RUNDIR itself when it holds a checkpoint, else its temp dir */
    long save_every;       /* checkpoint-N/ every N updates and at the end (0: none) */
    int save_total_limit;  /* keep the newest N checkpoint-N/ (0: all) */
    int save_best;         /* keep best/ */
    int patience;          /* early stopping: evaluations without improvement (0: off) */
    int write;             /* this process writes (rank 0) */
    lg_save_fn save;
    void *save_ud;
    /* state */
    float best_val;        /* NaN: none yet */
    long best_step;
    int bad_evals;         /* evaluations since the last improvement */
    long stopped_at;       /* early stop: the step (0: none) */
} lg_run_tracker;

/* Zeroes the state; picks up best/trainer_state.json of an earlier leg of the run (a resume). */
void lg_run_tracker_init(lg_run_tracker *t);
/* The lg_train_opts.after_step hook (ud: the tracker). */
int lg_run_after_step(const lg_progress *p, void *ud);
/* Writes NAME (a snapshot) of t->dir now: trainer_state.json holds step and the losses given. */
int lg_run_snapshot(lg_run_tracker *t, const char *name, long step, float loss, float val_loss);

#endif
