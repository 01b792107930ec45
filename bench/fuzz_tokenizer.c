/* fuzz_tokenizer.c — libFuzzer target for the tokenizer readers (not built in CI):
 * input byte 0 selects tokenizer.json (even) or llama2.c tokenizer.bin (odd); the rest is the
 * file. A tokenizer that loads must then encode and decode text (part of the input) without
 * crashing. Build and run: see docs/tokenizer.md. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    lg_tokenizer *t = NULL;
    int rc = (data[0] & 1) ? lg_tokenizer_load_llama2c_mem(data + 1, size - 1, "fuzz.bin", &t)
                           : lg_tokenizer_load_json_mem((const char *)data + 1, size - 1, NULL, 0, "fuzz.json", &t);
    if (rc) return 0;
    static const char *texts[] = {"Hello world", " a  b\n\n\tc 123 ", "你好🦙", "<s>x</s>", ""};
    for (int k = 0; k < 6; k++) {
        const char *s = k < 5 ? texts[k] : (const char *)data + 1;
        size_t n = k < 5 ? strlen(texts[k]) : (size - 1 > 256 ? 256 : size - 1);
        if (k == 5 && lg_utf8_check(s, n) != n) n = lg_utf8_check(s, n);
        int *ids, m;
        if (lg_tokenizer_encode(t, s, n, k & 1, &ids, &m) == 0) {
            char *out;
            size_t ol;
            if (lg_tokenizer_decode_ex(t, ids, m, LG_DECODE_KEEP_SPECIAL, &out, &ol) == 0) free(out);
            free(ids);
        }
    }
    lg_tokenizer_free(t);
    return 0;
}
