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
} lg_train_opts;

void lg_train_opts_default(lg_train_opts *o);

typedef struct {
    float first_loss, last_loss, last_val_loss;
    long steps_done;
    double elapsed;
} lg_train_result;

/* Trains `t` (whose grad pointers the model's backward fills) for o->steps updates.
 * A non-finite loss or gradient stops the run with a message naming the step (returns -1). */
int lg_train(lg_model *m, lg_opt_tensor *t, int n, const lg_train_opts *o, lg_batch_fn next, void *ud,
             lg_train_result *res);

/* Mean loss over `nb` batches of a split (weighted by predicted tokens). */
int lg_evaluate(lg_model *m, lg_batch_fn next, void *ud, int split, int nb, int B, int T, double *loss,
                double *tokens);

/* Progress display: a bar on a terminal, plain lines otherwise (stderr). */
void lg_progress_print(const lg_progress *p, void *ud);

/* Loss-curve picture (SVG) from a metrics.jsonl file. */
int lg_plot_loss_svg(const char *metrics_jsonl, const char *svg_path, const char *title);

#endif
