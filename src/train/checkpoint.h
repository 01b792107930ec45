/* checkpoint.h — training checkpoints and exact resume.
 *
 * A checkpoint is a directory, RUNDIR/checkpoint:
 *   trainer_state.json     step, micro-batches consumed, AdamW step, elapsed time, first loss, the
 *                          options a resume must match ("config") and a checksum of every file below
 *   trainable.safetensors  the trainable tensors by name (F32, bit-exact)
 *   optimizer.safetensors  their AdamW moments, NAME.exp_avg and NAME.exp_avg_sq
 *   fixed.safetensors      (if any) tensors restored but not trained: offset base weights, A0, B0
 *   state.bin              (if any) opaque state: adapter dropout counters, AdaLoRA scores and masks
 *   metrics.jsonl          the metrics lines up to this step
 * It is built in RUNDIR/checkpoint.tmp.<pid> and swapped in with one atomic rename exchange, so a
 * crash at any moment leaves either the previous checkpoint or the new one, never a mixture. */
#ifndef LG_CHECKPOINT_H
#define LG_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "model/model.h"
#include "train/train.h"

struct lg_adapters;

typedef struct lg_ckpt lg_ckpt;

/* path: a checkpoint directory or a run directory holding checkpoint/. Fresh strings; *run_dir is
 * NULL when the checkpoint is not named "checkpoint" inside a run directory. */
int lg_ckpt_resolve(const char *path, char **ckpt_dir, char **run_dir);
/* Parses trainer_state.json and verifies every file's size and checksum (errors name the file). */
int lg_ckpt_open(const char *dir, lg_ckpt **out);
void lg_ckpt_close(lg_ckpt *c);
long lg_ckpt_step(const lg_ckpt *c);
long lg_ckpt_micro_batches(const lg_ckpt *c);
/* 0 when the options equal the checkpoint's; else an error naming the first option that differs
 * or is present on one side only. */
int lg_ckpt_check_config(const lg_ckpt *c, const char *config_json);

/* The loop's counters, as saved and restored. */
typedef struct {
    long step, total_steps, micro_batches, adam_step;
    double elapsed;
    float first_loss;
} lg_ckpt_progress;

/* Cross-checkpoint memory of one run: fixed tensors never change, so after the first write the
 * next checkpoints hard-link the previous fixed.safetensors instead of writing it again. */
typedef struct {
    int fixed_written;
    uint64_t fixed_hash;
    uint64_t fixed_bytes;
} lg_ckpt_cache;

/* Writes a checkpoint of t[0..n) (data, m, v), spec's tensors and state, the counters, config_json
 * and a copy of metrics_path (NULL: none) to dir, atomically. */
int lg_ckpt_write(const char *dir, const lg_ckpt_progress *p, const lg_opt_tensor *t, int n, const lg_ckpt_spec *spec,
                  const char *config_json, const char *metrics_path, lg_ckpt_cache *cache);
/* Restores t (data, m, v; the moments must be allocated), spec's tensors and state, and the
 * counters. The checkpoint must hold exactly these tensors. */
int lg_ckpt_restore(const lg_ckpt *c, lg_opt_tensor *t, int n, const lg_ckpt_spec *spec, lg_ckpt_progress *p);
/* The metrics lines saved with the checkpoint ("" when none). */
const char *lg_ckpt_metrics(const lg_ckpt *c, size_t *len);

/* What adapters need in a checkpoint: their state blob and, with offset_init (PiSSA, LoRA-GA: the
 * base weight was offset at init), each adapted layer's base weight, A0 and B0 as fixed tensors.
 * A0/B0 are allocated when missing (a resume that skips the init). spec->config_json is left to
 * the caller. Free with lg_ckpt_spec_free. */
int lg_ckpt_adapter_spec(struct lg_adapters *a, int offset_init, lg_ckpt_spec *spec);
void lg_ckpt_spec_free(lg_ckpt_spec *spec);

/* Identities that a resume checks: a 64-bit checksum (not cryptographic) of bytes, of a model's
 * parameters as loaded (names, shapes, values) and of a file's contents. */
uint64_t lg_ckpt_hash(const void *p, size_t n, uint64_t seed);
uint64_t lg_ckpt_model_id(lg_model *m);
int lg_ckpt_file_id(const char *path, uint64_t *id);

/* A float option as the shortest decimal that reads back as the same float, for the options JSON
 * (0.1 rather than 0.10000000149011612; equal floats still compare equal). */
double lg_ckpt_float(float f);

/* The run directory of a checkpointing run: out itself holds checkpoint/ during the run, the
 * other outputs are built in "<out>.tmp.<pid>" as usual. begin accepts a missing or empty out, or
 * one holding only the checkpoint that resume_ckpt (may be NULL) names; commit moves the
 * checkpoint in with the outputs and renames the whole into place. */
char *lg_ckpt_outdir_begin(const char *out, const char *resume_ckpt);
int lg_ckpt_outdir_commit(char *tmp, const char *out);

#endif
