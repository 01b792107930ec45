/* train.c — the training loop: batches -> forward -> backward -> clip -> AdamW, with metrics. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "core/util.h"
#include "dist/dist.h"
#include "train/checkpoint.h"
#include "train/train.h"

void lg_train_opts_default(lg_train_opts *o) {
    memset(o, 0, sizeof *o);
    o->steps = 100;
    o->batch_size = 4;
    o->seq_len = 128;
    o->grad_accum = 1;
    o->lr = 1e-4f;
    o->beta1 = 0.9f;
    o->beta2 = 0.999f;
    o->eps = 1e-8f;
    o->clip = 1.0f;
    o->sched = LG_SCHED_CONSTANT;
}

static void batch_alloc(lg_batch *b, int B, int T) {
    b->B = B;
    b->T = T;
    b->inputs = lg_calloc((size_t)B * T, sizeof(int));
    b->targets = lg_calloc((size_t)B * T, sizeof(int));
    b->weight = lg_calloc((size_t)B * T, sizeof(float));
}
static void batch_free(lg_batch *b) {
    free(b->inputs);
    free(b->targets);
    free(b->weight);
}

/* Evaluation runs on the inference plan: no dropout, no adapter counters advanced, so evaluating
 * (or not) never changes the training that follows. */
static int eval_batches(lg_model *m, lg_batch_fn next, void *ud, int split, int nb, lg_batch *b, double *loss,
                        double *tokens) {
    int rows; /* dist: this rank evaluates its rows of each global batch; the sums are reduced */
    lg_dist_rows(b->B, NULL, &rows);
    if (lg_model_plan(m, rows, b->T, 0) != 0) return -1;
    double acc[2] = {0, 0}; /* sum(w * loss), sum(w) */
    for (int i = 0; i < nb; i++) {
        if (next(ud, split, i, b) != 0) return -1;
        lg_batch lb;
        lg_dist_shard(b, &lb);
        double w;
        float l = lg_model_forward(m, &lb, &w);
        if (w > 0) {
            acc[0] += (double)l * w;
            acc[1] += w;
        }
    }
    lg_dist_allreduce_sum_f64(acc, 2);
    double sum = acc[0], wsum = acc[1];
    *loss = wsum > 0 ? sum / wsum : NAN;
    if (tokens) *tokens = wsum;
    return 0;
}

int lg_evaluate(lg_model *m, lg_batch_fn next, void *ud, int split, int nb, int B, int T, double *loss,
                double *tokens) {
    lg_batch b;
    batch_alloc(&b, B, T);
    int rc = eval_batches(m, next, ud, split, nb, &b, loss, tokens);
    batch_free(&b);
    return rc;
}

static void add_if_absent(cJSON *j, const char *key, cJSON *v) {
    if (cJSON_GetObjectItemCaseSensitive(j, key)) cJSON_Delete(v);
    else cJSON_AddItemToObject(j, key, v);
}

/* The caller's resume-relevant options plus the loop's own. Everything that changes the sequence
 * of updates is here; what does not (eval cadence, recomputation, threads) is not. */
static char *loop_config(const lg_train_opts *o) {
    const char *cj = o->ckpt && o->ckpt->config_json ? o->ckpt->config_json : "{}";
    cJSON *j = cJSON_Parse(cj);
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        lg_errorf("checkpoint options are not a JSON object: %.80s", cj);
        return NULL;
    }
    static const char *const sched[] = {"constant", "linear", "cosine"};
    add_if_absent(j, "--batch-size", cJSON_CreateNumber(o->batch_size));
    add_if_absent(j, "--seq-len", cJSON_CreateNumber(o->seq_len));
    add_if_absent(j, "--grad-accum", cJSON_CreateNumber(o->grad_accum));
    add_if_absent(j, "--lr", cJSON_CreateNumber(lg_ckpt_float(o->lr)));
    add_if_absent(j, "--schedule", cJSON_CreateString(sched[o->sched]));
    add_if_absent(j, "--warmup", cJSON_CreateNumber((double)o->warmup));
    /* a decaying schedule depends on the total; a constant one may be extended on resume */
    if (o->sched != LG_SCHED_CONSTANT) add_if_absent(j, "--steps", cJSON_CreateNumber((double)o->steps));
    add_if_absent(j, "--weight-decay", cJSON_CreateNumber(lg_ckpt_float(o->weight_decay)));
    add_if_absent(j, "--clip", cJSON_CreateNumber(lg_ckpt_float(o->clip)));
    add_if_absent(j, "adamw betas",
                  cJSON_CreateDoubleArray((const double[]){lg_ckpt_float(o->beta1), lg_ckpt_float(o->beta2)}, 2));
    add_if_absent(j, "adamw eps", cJSON_CreateNumber(lg_ckpt_float(o->eps)));
    char *txt = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return txt;
}

/* Appends "; the last good checkpoint ..." to the current error message. */
static void note_checkpoint(const lg_train_opts *o, const lg_train_result *res) {
    if (!o->ckpt_dir) return;
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", lg_last_error());
    if (res->last_ckpt_step > 0)
        lg_errorf("%s; the last good checkpoint (step %ld) is kept in %s", msg, res->last_ckpt_step, o->ckpt_dir);
    else
        lg_errorf("%s; no checkpoint had been written yet", msg);
}

int lg_train(lg_model *m, lg_opt_tensor *t, int n, const lg_train_opts *o, lg_batch_fn next, void *ud,
             lg_train_result *res) {
    memset(res, 0, sizeof *res);
    res->first_loss = res->last_loss = res->last_val_loss = NAN;
    if (o->steps <= 0 || o->batch_size <= 0 || o->seq_len <= 1 || o->grad_accum <= 0)
        return lg_errorf("training needs steps, batch size, grad accumulation > 0 and seq len > 1");
    if (o->save_every < 0 || o->stop_after < 0) return lg_errorf("save_every and stop_after must be >= 0");
    const int mode = o->recompute ? LG_PLAN_RECOMPUTE : 1;
    /* dist (docs/mpi.md): batch_size is the global batch; this rank computes `rows` of it and
     * rank 0 alone writes metrics, progress and checkpoints */
    const int root = lg_dist_rank() == 0;
    int rows;
    lg_dist_rows(o->batch_size, NULL, &rows);
    if (rows < 1)
        return lg_errorf("--batch-size %d is smaller than the %d ranks: each rank needs a row of the global batch",
                         o->batch_size, lg_dist_size());
    if (lg_model_plan(m, rows, o->seq_len, mode) != 0) return -1;
    lg_adamw opt;
    lg_adamw_init(&opt, t, n, o->beta1, o->beta2, o->eps);
    lg_batch b;
    batch_alloc(&b, o->batch_size, o->seq_len);
    FILE *mf = NULL;
    char *cfg = NULL;
    lg_ckpt *ck = NULL;
    lg_ckpt_cache cache = {0};
    long start = 0, bi = 0; /* bi: micro-batches consumed, the data position */
    int in_loop = 0;
    double elapsed0 = 0;
    if ((o->ckpt_dir || o->resume_dir) && !(cfg = loop_config(o))) goto fail;
    if (o->resume_dir) {
        lg_ckpt_progress cp;
        if (lg_ckpt_open(o->resume_dir, &ck) != 0 || lg_ckpt_check_config(ck, cfg) != 0) goto fail;
        if (lg_ckpt_step(ck) >= o->steps) {
            lg_errorf("resume from %s: the checkpoint is at step %ld; %ld steps leave nothing to train", o->resume_dir,
                      lg_ckpt_step(ck), o->steps);
            goto fail;
        }
        if (lg_ckpt_restore(ck, t, n, o->ckpt, &cp) != 0) goto fail;
        start = cp.step;
        bi = cp.micro_batches;
        opt.step = cp.adam_step;
        elapsed0 = cp.elapsed;
        res->first_loss = cp.first_loss;
        res->resumed_from = res->last_ckpt_step = res->steps_done = start;
    }
    if (o->metrics_path && root) {
        if (!(mf = fopen(o->metrics_path, "w"))) {
            lg_errorf("%s: cannot create metrics file", o->metrics_path);
            goto fail;
        }
        size_t len;
        const char *prev = ck ? lg_ckpt_metrics(ck, &len) : "";
        if (ck && len && fwrite(prev, 1, len, mf) != len) {
            lg_errorf("%s: write failed", o->metrics_path);
            goto fail;
        }
    }
    lg_ckpt_close(ck);
    ck = NULL;
    double t0 = lg_now() - elapsed0;
    in_loop = 1;
    for (long step = start; step < o->steps; step++) {
        double ts = lg_now();
        lg_grad_zero(t, n);
        /* parameters that are trainable but not in t (none today) would need zeroing too */
        double loss_sum = 0;
        for (int a = 0; a < o->grad_accum; a++) {
            if (next(ud, 0, bi++, &b) != 0) goto fail;
            /* dist: this rank's rows; W is the whole batch's weight (= w for one process), so the
             * ranks' gradients and losses sum to the single-process mean over the global batch */
            lg_batch lb;
            double W = lg_dist_shard(&b, &lb), w;
            float l = lg_model_forward(m, &lb, &w);
            if (lg_dist_size() == 1) W = w; /* one process: exactly as without dist */
            if (!(W > 0)) continue;         /* nothing to predict in this micro-batch */
            if (w > 0 && !isfinite(l)) {
                lg_errorf("step %ld: loss is %f (non-finite); stopping. Lower the learning rate or check the data",
                          step + 1, l);
                goto fail;
            }
            /* each micro-batch's mean loss weighs 1/grad_accum in the update */
            lg_model_backward(m, &lb, (float)(1.0 / (W * o->grad_accum)));
            if (w > 0) loss_sum += l * (w / W);
        }
        lg_dist_allreduce_grads(t, n); /* dist: sum the ranks' shares (no-op for one process) */
        lg_dist_allreduce_sum_f64(&loss_sum, 1);
        float loss = (float)(loss_sum / o->grad_accum);
        if (o->after_backward && o->after_backward(step, o->after_backward_ud) != 0) goto fail;
        double gn = lg_grad_clip(t, n, o->clip); /* the norm before clipping, as reported */
        if (!isfinite(gn)) {
            lg_errorf("step %ld: gradient norm is non-finite; stopping before the update", step + 1);
            goto fail;
        }
        float lr = lg_lr_at(o->sched, o->lr, step, o->warmup, o->steps);
        lg_adamw_step(&opt, lr);
        double now = lg_now();
        lg_progress p = {.step = step + 1,
                         .steps = o->steps,
                         .loss = loss,
                         .lr = lr,
                         .grad_norm = (float)gn,
                         .val_loss = NAN,
                         .tokens_per_s = (double)o->batch_size * o->seq_len * o->grad_accum / (now - ts),
                         .elapsed = now - t0};
        if (step == 0) res->first_loss = loss;
        res->last_loss = loss;
        int last = step + 1 == o->steps;
        int stop = !last && o->stop_after > 0 && step + 1 >= o->stop_after;
        if (o->val_batches > 0 && ((o->eval_every > 0 && (step + 1) % o->eval_every == 0) || last)) {
            double vl;
            if (eval_batches(m, next, ud, 1, o->val_batches, &b, &vl, NULL) != 0) goto fail;
            if (lg_model_plan(m, rows, o->seq_len, mode) != 0) goto fail;
            p.val_loss = (float)vl;
            res->last_val_loss = (float)vl;
        }
        if (mf) {
            /* %.9g: a float's exact value, so that resumed and straight runs compare bit for bit */
            fprintf(mf, "{\"step\": %ld, \"loss\": %.9g, \"lr\": %.6g, \"grad_norm\": %.9g, \"tokens_per_s\": %.1f, "
                        "\"elapsed\": %.3f",
                    p.step, p.loss, p.lr, p.grad_norm, p.tokens_per_s, p.elapsed);
            if (!isnan(p.val_loss)) fprintf(mf, ", \"val_loss\": %.9g", p.val_loss);
            fprintf(mf, ", \"precision\": \"%s\"}\n", lg_precision_name(lg_model_ops(m)->precision));
            fflush(mf);
        }
        if (o->on_progress && root) o->on_progress(&p, o->progress_ud);
        res->steps_done = step + 1;
        int end = o->after_step ? o->after_step(&p, o->after_step_ud) : 0;
        if (end < 0) goto fail;
        if (end > 0 && !last) res->ended_early = 1, last = 1;
        if (o->ckpt_dir && ((o->save_every > 0 && (step + 1) % o->save_every == 0) || last || stop)) {
            lg_ckpt_progress cp = {step + 1, o->steps, bi, opt.step, lg_now() - t0, res->first_loss};
            if (root && lg_ckpt_write(o->ckpt_dir, &cp, t, n, o->ckpt, cfg, o->metrics_path, &cache) != 0) goto fail;
            res->last_ckpt_step = step + 1;
        }
        if (stop && !last) {
            res->stopped = 1;
            break;
        }
        if (res->ended_early) break;
    }
    res->elapsed = lg_now() - t0;
    if (lg_dist_check_same(t, n) != 0) goto fail; /* dist: every rank must have taken the same steps */
    if (mf) fclose(mf);
    free(cfg);
    batch_free(&b);
    lg_adamw_free(&opt);
    return 0;
fail:
    if (in_loop) note_checkpoint(o, res);
    lg_ckpt_close(ck);
    if (mf) fclose(mf);
    free(cfg);
    batch_free(&b);
    lg_adamw_free(&opt);
    return -1;
}

/* ---- progress display ---- */
void lg_progress_print(const lg_progress *p, void *ud) {
    (void)ud;
    static int tty = -1;
    if (tty < 0) tty = isatty(2);
    if (tty) {
        int width = 30, fill = (int)(width * (double)p->step / (double)p->steps);
        char bar[64];
        for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
        bar[width] = 0;
        double eta = p->step ? p->elapsed / p->step * (p->steps - p->step) : 0;
        fprintf(stderr, "\r[%s] %ld/%ld loss %.4f lr %.2e gnorm %.3f %.0f tok/s eta %.0fs", bar, p->step, p->steps,
                p->loss, p->lr, p->grad_norm, p->tokens_per_s, eta);
        if (!isnan(p->val_loss)) fprintf(stderr, " val %.4f", p->val_loss);
        if (p->step == p->steps || !isnan(p->val_loss)) fprintf(stderr, "\n");
    } else {
        long every = p->steps >= 50 ? p->steps / 20 : 1;
        if (p->step % every == 0 || p->step == p->steps || p->step == 1 || !isnan(p->val_loss)) {
            fprintf(stderr, "step %ld/%ld loss %.4f lr %.2e grad_norm %.3f tokens/s %.0f elapsed %.1fs", p->step,
                    p->steps, p->loss, p->lr, p->grad_norm, p->tokens_per_s, p->elapsed);
            if (!isnan(p->val_loss)) fprintf(stderr, " val_loss %.4f", p->val_loss);
            fprintf(stderr, "\n");
        }
    }
}
