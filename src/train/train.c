/* train.c — the training loop: batches -> forward -> backward -> clip -> AdamW, with metrics. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/util.h"
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

int lg_evaluate(lg_model *m, lg_batch_fn next, void *ud, int split, int nb, int B, int T, double *loss,
                double *tokens) {
    lg_batch b;
    batch_alloc(&b, B, T);
    double sum = 0, wsum = 0;
    int rc = 0;
    for (int i = 0; i < nb; i++) {
        if (next(ud, split, i, &b) != 0) {
            rc = -1;
            break;
        }
        double w;
        float l = lg_model_forward(m, &b, &w);
        if (w > 0) {
            sum += (double)l * w;
            wsum += w;
        }
    }
    batch_free(&b);
    if (rc) return rc;
    *loss = wsum > 0 ? sum / wsum : NAN;
    if (tokens) *tokens = wsum;
    return 0;
}

int lg_train(lg_model *m, lg_opt_tensor *t, int n, const lg_train_opts *o, lg_batch_fn next, void *ud,
             lg_train_result *res) {
    memset(res, 0, sizeof *res);
    res->first_loss = res->last_loss = res->last_val_loss = NAN;
    if (o->steps <= 0 || o->batch_size <= 0 || o->seq_len <= 1 || o->grad_accum <= 0)
        return lg_errorf("training needs steps, batch size, grad accumulation > 0 and seq len > 1");
    if (lg_model_plan(m, o->batch_size, o->seq_len, 1) != 0) return -1;
    lg_adamw opt;
    lg_adamw_init(&opt, t, n, o->beta1, o->beta2, o->eps);
    lg_batch b;
    batch_alloc(&b, o->batch_size, o->seq_len);
    FILE *mf = NULL;
    if (o->metrics_path && !(mf = fopen(o->metrics_path, "w"))) {
        lg_errorf("%s: cannot create metrics file", o->metrics_path);
        goto fail;
    }
    double t0 = lg_now();
    long bi = 0;
    for (long step = 0; step < o->steps; step++) {
        double ts = lg_now();
        lg_grad_zero(t, n);
        /* parameters that are trainable but not in t (none today) would need zeroing too */
        double loss_sum = 0;
        for (int a = 0; a < o->grad_accum; a++) {
            if (next(ud, 0, bi++, &b) != 0) goto fail;
            double w;
            float l = lg_model_forward(m, &b, &w);
            if (!(w > 0)) continue; /* nothing to predict in this micro-batch */
            if (!isfinite(l)) {
                lg_errorf("step %ld: loss is %f (non-finite); stopping. Lower the learning rate or check the data",
                          step + 1, l);
                goto fail;
            }
            lg_model_backward(m, &b, (float)(1.0 / (w * o->grad_accum)));
            loss_sum += l;
        }
        float loss = (float)(loss_sum / o->grad_accum);
        if (o->after_backward && o->after_backward(step, o->after_backward_ud) != 0) goto fail;
        double gn = lg_grad_norm(t, n);
        if (!isfinite(gn)) {
            lg_errorf("step %ld: gradient norm is non-finite; stopping before the update", step + 1);
            goto fail;
        }
        if (o->clip > 0 && gn > o->clip) lg_grad_scale(t, n, (float)(o->clip / (gn + 1e-6)));
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
        if (o->val_batches > 0 && ((o->eval_every > 0 && (step + 1) % o->eval_every == 0) || last)) {
            double vl;
            if (lg_evaluate(m, next, ud, 1, o->val_batches, o->batch_size, o->seq_len, &vl, NULL) != 0) goto fail;
            lg_model_plan(m, o->batch_size, o->seq_len, 1);
            p.val_loss = (float)vl;
            res->last_val_loss = (float)vl;
        }
        if (mf) {
            fprintf(mf, "{\"step\": %ld, \"loss\": %.6f, \"lr\": %.6g, \"grad_norm\": %.6f, \"tokens_per_s\": %.1f, "
                        "\"elapsed\": %.3f",
                    p.step, p.loss, p.lr, p.grad_norm, p.tokens_per_s, p.elapsed);
            if (!isnan(p.val_loss)) fprintf(mf, ", \"val_loss\": %.6f", p.val_loss);
            fprintf(mf, "}\n");
            fflush(mf);
        }
        if (o->on_progress) o->on_progress(&p, o->progress_ud);
        res->steps_done = step + 1;
    }
    res->elapsed = lg_now() - t0;
    if (mf) fclose(mf);
    batch_free(&b);
    lg_adamw_free(&opt);
    return 0;
fail:
    if (mf) fclose(mf);
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
