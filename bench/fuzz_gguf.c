/* fuzz_gguf.c — libFuzzer target for the GGUF reader (not built in CI; see docs/gguf.md).
 * The input is a GGUF file. A file that opens must survive: every metadata accessor on every key
 * (all array elements), dequantising every tensor of a supported type, the llama config + weight
 * source (and a model built from it when it is small), and the tokenizer built from its metadata. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "io/gguf.h"
#include "model/model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    lg_gguf *g;
    if (lg_gguf_open_mem(data, size, "fuzz.gguf", &g)) return 0;
    for (int i = 0; i < lg_gguf_n_kv(g); i++) {
        const char *key = lg_gguf_kv_key(g, i), *s;
        size_t n;
        int64_t v;
        double f;
        int b, et;
        uint64_t cnt;
        lg_gguf_get_int(g, key, &v);
        lg_gguf_get_float(g, key, &f);
        lg_gguf_get_bool(g, key, &b);
        if (lg_gguf_get_str(g, key, &s, &n) == 0 && n) (void)s[n - 1];
        if (lg_gguf_get_arr(g, key, &et, &cnt) == 0)
            for (uint64_t k = 0; k < cnt && k < 100000; k++) {
                if (lg_gguf_arr_str(g, key, k, &s, &n) == 0 && n) (void)s[n - 1];
                lg_gguf_arr_num(g, key, k, &f);
            }
    }
    for (int i = 0; i < lg_gguf_n_tensors(g); i++) {
        const lg_gguf_tensor *t = lg_gguf_tensor_at(g, i);
        if (t->numel > (1 << 20)) continue;
        float *x = malloc((size_t)(t->numel ? t->numel : 1) * sizeof(float));
        lg_gguf_read_f32(g, t, x);
        free(x);
    }
    lg_config c;
    lg_weight_src src;
    if (lg_gguf_model_from(g, &c, &src) == 0) {
        /* building allocates the whole model: only for small configs */
        int64_t est = (int64_t)c.vocab_size * c.dim * 2 +
                      (int64_t)c.n_layers * ((int64_t)c.dim * c.n_heads * c.head_dim * 4 + (int64_t)c.dim * c.hidden_dim * 3);
        if (est < (1 << 22) && c.max_seq <= 4096) {
            lg_model *m;
            if (lg_model_create(&c, &src, 0, NULL, &m) == 0) lg_model_free(m);
        }
        lg_gguf_model_close(&src);
    }
    lg_tokenizer *t;
    if (lg_gguf_tokenizer_from(g, &t) == 0) {
        int *ids, n;
        if (lg_tokenizer_encode(t, "Hello world 123 <|im_start|>", 28, 1, &ids, &n) == 0) {
            char *txt;
            if (lg_tokenizer_decode(t, ids, n, &txt, NULL) == 0) free(txt);
            free(ids);
        }
        lg_tokenizer_free(t);
    }
    lg_gguf_close(g);
    return 0;
}
