/* batch.h — one training/eval batch as the model consumes it. */
#ifndef LG_BATCH_H
#define LG_BATCH_H

/* B sequences of T positions, row-major (b*T + t).
 * inputs[b,t]  : token id fed at position t
 * targets[b,t] : token to predict at position t (the next token)
 * weight[b,t]  : loss weight of that prediction: 1 for tokens that count, 0 for padding,
 *                prompt tokens, and the last position. The loss of a batch is
 *                sum(weight * nll) / sum(weight). */
typedef struct {
    int B, T;
    int *inputs;
    int *targets;
    float *weight;
} lg_batch;

#endif
