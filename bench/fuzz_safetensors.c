/* fuzz_safetensors.c — libFuzzer target for a Hugging Face model directory: config.json and
 * model.safetensors together (`make fuzz` builds and runs it; docs/reliability.md).
 * Input: bytes 0-1 (little endian, modulo the rest) = the length of config.json, then config.json,
 * then model.safetensors; both are written into a scratch directory. Whatever opens must survive:
 * every tensor read as float32, and a model that loads runs a forward pass on a few tokens. The
 * loader checks the config's sizes against the weights before allocating, so libFuzzer's RSS limit
 * catches any allocation the files do not justify. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/util.h"
#include "io/safetensors.h"
#include "model/model.h"

static const char *scratch(void) {
    static char dir[64];
    if (!dir[0]) {
        snprintf(dir, sizeof dir, "/tmp/loraga-fuzz-st-XXXXXX");
        if (!mkdtemp(dir)) abort();
    }
    return dir;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    size_t cl = ((size_t)data[0] | (size_t)data[1] << 8) % (size - 1);
    const char *dir = scratch();
    char *cfg = lg_path_join(dir, "config.json"), *stp = lg_path_join(dir, "model.safetensors");
    if (lg_write_file_atomic(cfg, data + 2, cl) || lg_write_file_atomic(stp, data + 2 + cl, size - 2 - cl)) abort();
    lg_safetensors *st;
    if (lg_st_open(stp, &st) == 0) {
        for (int i = 0; i < lg_st_count(st); i++) {
            const lg_st_tensor *t = lg_st_get(st, i);
            if (t->numel > (1 << 20)) continue;
            float *x = malloc((size_t)(t->numel ? t->numel : 1) * sizeof(float));
            lg_st_read_f32(st, t->name, x, t->ndim, t->shape);
            free(x);
        }
        lg_st_close(st);
    }
    lg_model *m;
    if (lg_model_load(dir, NULL, &m) == 0) {
        const lg_config *c = lg_model_config(m);
        int T = c->max_seq < 4 ? c->max_seq : 4;
        int in[4], tg[4];
        float w[4];
        for (int i = 0; i < T; i++) in[i] = tg[i] = i % c->vocab_size, w[i] = 1.0f;
        lg_batch b = {1, T, in, tg, w};
        double ws;
        if (lg_model_numel(m) < (1 << 22)) lg_model_forward(m, &b, &ws);
        lg_model_free(m);
    }
    free(cfg), free(stp);
    return 0;
}
