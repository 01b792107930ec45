/* fuzz_jsonl.c — libFuzzer target for the data readers (JSONL and .txt; not built in CI).
 * Byte 0 picks the format and options; the rest is the file. Uses a tiny in-memory
 * character tokenizer. A data set that loads must fill batches without crashing. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/data.h"

static lg_tokenizer *tok(void) {
    static lg_tokenizer *t;
    if (t) return t;
    char json[8192];
    size_t n = (size_t)snprintf(json, sizeof json,
                                "{\"added_tokens\":[{\"id\":1,\"content\":\"<s>\",\"special\":true,\"normalized\":false},"
                                "{\"id\":2,\"content\":\"</s>\",\"special\":true,\"normalized\":false}],"
                                "\"model\":{\"type\":\"BPE\",\"byte_fallback\":true,\"vocab\":{\"<s>\":1,\"</s>\":2");
    for (int b = 0; b < 256; b++) n += (size_t)snprintf(json + n, sizeof json - n, ",\"<0x%02X>\":%d", b, 300 + b);
    for (int c = 'a'; c <= 'z'; c++) n += (size_t)snprintf(json + n, sizeof json - n, ",\"%c\":%d", c, c);
    n += (size_t)snprintf(json + n, sizeof json - n, ",\"ab\":600},\"merges\":[\"a b\"]}}");
    if (lg_tokenizer_load_json_mem(json, n, "{\"bos_token\":\"<s>\",\"eos_token\":\"</s>\"}", 38, "t", &t)) abort();
    return t;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    uint8_t c = data[0];
    lg_data_opts o;
    memset(&o, 0, sizeof o);
    o.max_len = 2 + (c >> 4);
    o.pack = (c >> 1) & 1;
    o.add_bos = (c >> 2) & 1;
    o.add_eos = (c >> 3) & 1;
    o.skip_bad = (c >> 3) & 1;
    o.val_frac = (c & 0x30) ? 0.25f : 0.0f;
    o.seed = c;
    lg_dataset *d;
    if (lg_dataset_load_mem("fuzz", (const char *)data + 1, size - 1, c & 1, tok(), &o, &d)) return 0;
    int in[3 * 8], tg[3 * 8];
    float w[3 * 8];
    lg_batch b = {3, 8, in, tg, w};
    for (int s = 0; s < 3; s++)
        for (long f = 0; f < 10; f += 3) lg_dataset_fill_batch(d, s, f, &b);
    lg_dataset_free(d);
    return 0;
}
