/* optim.c — AdamW (decoupled weight decay, as torch.optim.AdamW) and LR schedules. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "train/train.h"

void lg_adamw_init(lg_adamw *o, lg_opt_tensor *t, int n, float beta1, float beta2, float eps) {
    o->n = n;
    o->t = t;
    o->beta1 = beta1;
    o->beta2 = beta2;
    o->eps = eps;
    o->step = 0;
    for (int i = 0; i < n; i++) {
        t[i].m = lg_aligned_alloc((size_t)t[i].n * sizeof(float));
        t[i].v = lg_aligned_alloc((size_t)t[i].n * sizeof(float));
    }
}

void lg_adamw_free(lg_adamw *o) {
    for (int i = 0; i < o->n; i++) {
        lg_aligned_free(o->t[i].m);
        lg_aligned_free(o->t[i].v);
        o->t[i].m = o->t[i].v = NULL;
    }
}

void lg_adamw_step(lg_adamw *o, float lr) {
    o->step++;
    const double bc1 = 1.0 - pow(o->beta1, (double)o->step), bc2 = 1.0 - pow(o->beta2, (double)o->step);
    const float b1 = o->beta1, b2 = o->beta2, eps = o->eps;
    for (int i = 0; i < o->n; i++) {
        lg_opt_tensor *t = &o->t[i];
        const float a = lr * t->lr_mult, decay = 1.0f - a * t->weight_decay;
        const float step_size = (float)(a / bc1), inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2));
        float *w = t->data, *g = t->grad, *m = t->m, *v = t->v;
#pragma omp parallel for schedule(static) if (t->n > 65536)
        for (int64_t j = 0; j < t->n; j++) {
            m[j] = b1 * m[j] + (1 - b1) * g[j];
            v[j] = b2 * v[j] + (1 - b2) * g[j] * g[j];
            w[j] = w[j] * decay - step_size * m[j] / (sqrtf(v[j]) * inv_sqrt_bc2 + eps);
        }
    }
}

double lg_grad_norm(const lg_opt_tensor *t, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) {
        const float *g = t[i].grad;
        double si = 0;
#pragma omp parallel for reduction(+ : si) if (t[i].n > 65536)
        for (int64_t j = 0; j < t[i].n; j++) si += (double)g[j] * g[j];
        s += si;
    }
    return sqrt(s);
}

void lg_grad_scale(lg_opt_tensor *t, int n, float s) {
    for (int i = 0; i < n; i++)
        for (int64_t j = 0; j < t[i].n; j++) t[i].grad[j] *= s;
}

void lg_grad_zero(lg_opt_tensor *t, int n) {
    for (int i = 0; i < n; i++) memset(t[i].grad, 0, (size_t)t[i].n * sizeof(float));
}

float lg_lr_at(lg_sched_kind k, float lr, long step, long warmup, long total) {
    if (warmup > 0 && step < warmup) return lr * (float)(step + 1) / (float)warmup; /* no wasted lr-0 step */
    if (k == LG_SCHED_CONSTANT || total <= warmup) return lr;
    double p = (double)(step - warmup) / (double)(total - warmup); /* 0 .. 1 */
    if (p > 1) p = 1;
    if (k == LG_SCHED_LINEAR) return (float)(lr * (1.0 - p));
    return (float)(lr * 0.5 * (1.0 + cos(M_PI * p)));
}

int lg_sched_parse(const char *s, lg_sched_kind *k) {
    if (!strcmp(s, "constant")) *k = LG_SCHED_CONSTANT;
    else if (!strcmp(s, "linear")) *k = LG_SCHED_LINEAR;
    else if (!strcmp(s, "cosine")) *k = LG_SCHED_COSINE;
    else return lg_errorf("unknown schedule '%s' (constant, linear, cosine)", s);
    return 0;
}
