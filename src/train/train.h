/* train.h — the optimizer, learning-rate schedules and the training loop.
 *
 * The loop knows nothing about which method is trained: it is handed the list of trainable
 * tensors (full fine-tuning: every model parameter; LoRA: the adapter matrices) and a
 * batch source. Progress and metrics leave through a callback, not globals. */
#ifndef LG_TRAIN_H
#define LG_TRAIN_H

#include <stdint.h>
#include <stdio.h>

#include "data/batch.h"
#include "model/model.h"

/* One trainable tensor with its AdamW state. */
typedef struct {
    const char *name;
    float *data, *grad;
    float *m, *v;     /* AdamW moments, allocated by lg_adamw_init */
    int64_t n;
    float lr_mult;    /* LoRA+: B gets lambda x the base rate */
    float weight_decay;
} lg_opt_tensor;

typedef struct {
    int n;
    lg_opt_tensor *t;
    float beta1, beta2, eps;
    long step;        /* completed updates (for bias correction) */
} lg_adamw;

void lg_adamw_init(lg_adamw *o, lg_opt_tensor *t, int n, float beta1, float beta2, float eps);
void lg_adamw_free(lg_adamw *o);
void lg_adamw_step(lg_adamw *o, float lr); /* decoupled weight decay, bias-corrected */
/* sqrt(sum of squared gradients) over all tensors (double accumulation). */
double lg_grad_norm(const lg_opt_tensor *t, int n);
void lg_grad_scale(lg_opt_tensor *t, int n, float s);
void lg_grad_zero(lg_opt_tensor *t, int n);

typedef enum { LG_SCHED_CONSTANT = 0, LG_SCHED_LINEAR = 1, LG_SCHED_COSINE = 2 } lg_sched_kind;
/* lr at update `step` (0-based): linear warmup over `warmup` updates, then decay to 0 over the
 * remaining ones (HF transformers' get_*_schedule_with_warmup semantics). */
float lg_lr_at(lg_sched_kind k, float lr, long step, long warmup, long total);
int lg_sched_parse(const char *s, lg_sched_kind *k);

/* What the loop reports after each update (and after each evaluation). */
typedef struct {
    long step, steps;
    float loss, lr, grad_norm;
    float val_loss;   /* NaN when not evaluated at this step */
    double tokens_per_s, elapsed;
} lg_progress;

/* Fills batch number `index` (0, 1, 2, ... across epochs) of a split: 0 train (shuffled per epoch),
 * 1 validation, 2 train in file order (LoRA-GA estimation) -- the LG_SPLIT_* values of data.h.
 * Returns 0, or -1 with a message. */
typedef int (*lg_batch_fn)(void *ud, int split, long index, lg_batch *b);

/* A tensor a checkpoint restores although it does not train: PiSSA's and LoRA-GA's offset base
 * weights and their A0, B0 (the init is never re-run on resume). */
typedef struct {
    const char *name;
    float *data;
    int64_t n;
} lg_ckpt_tensor;

/* What a checkpoint holds beyond the trainable tensors, their AdamW moments and the loop's
 * counters (steps, micro-batches consumed, elapsed time, metrics so far). */
typedef struct {
    /* Options a resume must match, as a flat JSON object whose keys name them ("--rank": 8,
     * "data checksum": "...", ...). The loop adds its own (batch size, seq len, lr, schedule...). */
    const char *config_json;
    const lg_ckpt_tensor *fixed;
    int n_fixed;
    /* Opaque state (adapters: dropout counters, AdaLoRA scores and masks); NULL: none. */
    size_t (*state_bytes)(void *ud);
    void (*state_save)(void *ud, void *dst);
    int (*state_load)(void *ud, const void *src, size_t n);
    void *state_ud;
    void *owned; /* helper-allocated storage (lg_ckpt_spec_free) */
} lg_ckpt_spec;

typedef struct {
    long steps;            /* optimizer updates */
    int batch_size, seq_len, grad_accum;
    float lr, weight_decay, beta1, beta2, eps, clip; /* clip <= 0: none */
    long warmup;
    lg_sched_kind sched;
    int eval_every;        /* 0: only at the end when val_batches > 0 */
    int val_batches;       /* batches of the validation split per evaluation (0: none) */
    const char *metrics_path; /* metrics.jsonl (NULL: none) */
    void (*on_progress)(const lg_progress *p, void *ud);
    void *progress_ud;
    /* Called after the gradients of an update are complete, before clipping and the optimizer
     * step (AdaLoRA's regulariser and rank allocation). Non-zero return stops training. */
    int (*after_backward)(long step, void *ud);
    void *after_backward_ud;
    /* Activation recomputation: keep only each layer's input in forward and replay the layer in
     * backward (same gradients, one more forward per layer, less activation memory). */
    int recompute;
    /* Checkpoints (checkpoint.h): written atomically to ckpt_dir every save_every updates, at
     * stop_after and at the end; NULL: none. A non-finite loss, gradient or parameter stops the
     * run without touching the last good checkpoint. */
    const char *ckpt_dir;
    long save_every;
    long stop_after;       /* > 0: stop after this update (of `steps`), as a job time limit would */
    const char *resume_dir; /* continue from this checkpoint (NULL: from scratch) */
    const lg_ckpt_spec *ckpt; /* NULL: trainable tensors only */
    /* Called after each update and its evaluation, before its checkpoint, on every rank
     * (p->val_loss is NaN unless it evaluated): 0 goes on, 1 ends the run here as finished (early
     * stopping; that step is checkpointed as the last), -1 fails it. The caller's snapshots,
     * best-result tracking and patience live there (run_record.h). */
    int (*after_step)(const lg_progress *p, void *ud);
    void *after_step_ud;
} lg_train_opts;

void lg_train_opts_default(lg_train_opts *o);

typedef struct {
    float first_loss, last_loss, last_val_loss;
    long steps_done;      /* the last completed update (counting from 0 of the whole run) */
    long resumed_from;    /* the checkpoint's step (0: fresh start) */
    int stopped;          /* stopped at stop_after, before `steps` */
    int ended_early;      /* after_step ended the run before `steps` (early stopping) */
    long last_ckpt_step;  /* the step of the last checkpoint written or resumed from (0: none) */
    double elapsed;
} lg_train_result;

/* Trains `t` (whose grad pointers the model's backward fills) for o->steps updates; with
 * o->resume_dir, restores t, the moments, o->ckpt's tensors and state, and continues from the
 * checkpoint's step with the same batches (the data position is the micro-batch count).
 * A non-finite loss or gradient stops the run with a message naming the step (returns -1). */
int lg_train(lg_model *m, lg_opt_tensor *t, int n, const lg_train_opts *o, lg_batch_fn next, void *ud,
             lg_train_result *res);

/* Mean loss over `nb` batches of a split (weighted by predicted tokens). */
int lg_evaluate(lg_model *m, lg_batch_fn next, void *ud, int split, int nb, int B, int T, double *loss,
                double *tokens);

/* Progress display: a bar on a terminal, plain lines otherwise (stderr). */
void lg_progress_print(const lg_progress *p, void *ud);

/* Global-norm clipping: returns the norm before clipping; scales the gradients by
 * max_norm / (norm + 1e-6) when norm > max_norm > 0 (torch.nn.utils.clip_grad_norm_). */
double lg_grad_clip(lg_opt_tensor *t, int n, float max_norm);

/* Activation recomputation is a mode of the model's activation plan (model.c); declared here
 * next to its only user, the training loop. lg_model_plan(m, B, T, LG_PLAN_RECOMPUTE). */
#ifndef LG_PLAN_RECOMPUTE
#define LG_PLAN_RECOMPUTE 2
#endif
/* Bytes of activation memory the model's current plan uses (forward activations, logits and
 * backward scratch). */
int64_t lg_model_activation_bytes(const lg_model *m);

/* Loss-curve picture (SVG) from a metrics.jsonl file. */
int lg_plot_loss_svg(const char *metrics_jsonl, const char *svg_path, const char *title);

#endif
