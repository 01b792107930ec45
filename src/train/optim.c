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
        float *restrict w = t->data, *restrict m = t->m, *restrict v = t->v;
        const float *restrict g = t->grad;
#pragma omp parallel for simd schedule(static) if (t->n > 65536)
        for (int64_t j = 0; j < t->n; j++) {
            m[j] = b1 * m[j] + (1 - b1) * g[j];
            v[j] = b2 * v[j] + (1 - b2) * g[j] * g[j];
            w[j] = w[j] * decay - step_size * m[j] / (sqrtf(v[j]) * inv_sqrt_bc2 + eps);
        }
    }
}

/* Blocks whose size depends only on the tensor's length, summed in order: the norm (and so the
 * clipping and every later bit of training) is the same whatever the thread count and however the
 * threads finish, which an OpenMP reduction does not promise. */
#define NORM_BLOCKS 1024
double lg_grad_norm(const lg_opt_tensor *t, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) {
        const float *g = t[i].grad;
        const int64_t len = t[i].n, bs = LG_MAX((int64_t)16384, (len + NORM_BLOCKS - 1) / NORM_BLOCKS);
        const int nb = (int)((len + bs - 1) / bs);
        double part[NORM_BLOCKS];
#pragma omp parallel for schedule(static) if (nb > 1)
        for (int k = 0; k < nb; k++) {
            double acc = 0;
            for (int64_t j = (int64_t)k * bs, e = LG_MIN(len, j + bs); j < e; j++) acc += (double)g[j] * g[j];
            part[k] = acc;
        }
        for (int k = 0; k < nb; k++) s += part[k];
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

double lg_grad_clip(lg_opt_tensor *t, int n, float max_norm) {
    double gn = lg_grad_norm(t, n);
    if (max_norm > 0 && gn > max_norm) lg_grad_scale(t, n, (float)(max_norm / (gn + 1e-6)));
    return gn;
}
