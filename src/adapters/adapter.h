/* adapter.h — the hook through which LoRA-family adapters attach to a linear layer.
 *
 * The decoder calls these around every base GEMM of a linear layer that has an adapter:
 *   forward:  y = adapted(x)   (y already holds x W^T + b; LoRA adds s·(x A^T) B^T, DoRA also rescales)
 *   backward: called before the base GEMM's backward; accumulates the adapter's parameter
 *             gradients and its own path's dx, and returns the upstream gradient the base
 *             path must use (dy itself, or for DoRA dy scaled by mag/||W + sBA||).
 * Each adapter kind implements the vtable; the decoder knows nothing else about them. */
#ifndef LG_ADAPTER_H
#define LG_ADAPTER_H

struct lg_linear;

typedef struct lg_adapter lg_adapter;

typedef struct {
    const char *kind;
    void (*forward)(lg_adapter *a, const struct lg_linear *l, float *y, const float *x, int N, int training);
    const float *(*backward)(lg_adapter *a, const struct lg_linear *l, float *dx, const float *dy, const float *x,
                             int N);
} lg_adapter_vt;

/* Every adapter struct starts with this header. */
struct lg_adapter {
    const lg_adapter_vt *vt;
};

static inline void lg_adapter_forward(lg_adapter *a, const struct lg_linear *l, float *y, const float *x, int N,
                                      int training) {
    a->vt->forward(a, l, y, x, N, training);
}
static inline const float *lg_adapter_backward(lg_adapter *a, const struct lg_linear *l, float *dx, const float *dy,
                                               const float *x, int N) {
    return a->vt->backward(a, l, dx, dy, x, N);
}

#endif
