/* bench_tokenizer.c — encode throughput (MB/s of UTF-8 input, one thread) of loraga's
 * tokenizers, to compare with bench/bench_tokenizer.py (the Rust `tokenizers`) on the same
 * corpora. Each line of a corpus file is one document, encoded without special tokens; best of
 * 3 runs (the word cache is warm after the first, as it is for the Rust side's cache).
 *
 *   build/bench_tokenizer [--cold] CORPUS.txt...        (commands: docs/tokenizer.md)
 *
 * --cold: a fresh tokenizer (empty word cache) for every run. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "tokenizer/tokenizer.h"

static const char *const names[] = {"gpt2", "mistral", "llama2c-bin"};
static const char *const paths[] = {"tokenizer_gpt2_bpe/tokenizer.json", "tokenizer_mistral7b_hf/tokenizer.json",
                                    "tokenizer_llama2_llama2c/tokenizer.bin"};

int main(int argc, char **argv) {
    const char *shared = getenv("LORAGA_SHARED");
    if (!shared) shared = "../shared/data";
    int cold = 0, first = 1;
    if (argc > 1 && !strcmp(argv[1], "--cold")) cold = 1, first = 2;
    if (argc <= first) {
        fprintf(stderr, "usage: %s [--cold] CORPUS.txt...\n", argv[0]);
        return 2;
    }
    for (int k = 0; k < 3; k++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", shared, paths[k]);
        for (int f = first; f < argc; f++) {
            char *data;
            size_t len;
            if (lg_read_file(argv[f], &data, &len)) {
                fprintf(stderr, "%s\n", lg_last_error());
                return 1;
            }
            double best = 1e30;
            long ntok = 0;
            size_t nbytes = 0; /* without the newlines, as the Python side counts */
            lg_tokenizer *t = NULL;
            for (int rep = 0; rep < 3; rep++) {
                if (!t || cold) {
                    lg_tokenizer_free(t);
                    if (lg_tokenizer_load(path, &t)) {
                        fprintf(stderr, "%s\n", lg_last_error());
                        return 1;
                    }
                }
                double t0 = lg_now();
                ntok = 0;
                nbytes = 0;
                for (size_t pos = 0; pos < len;) {
                    const char *nl = memchr(data + pos, '\n', len - pos);
                    size_t n = nl ? (size_t)(nl - (data + pos)) : len - pos;
                    int *ids, m;
                    if (lg_tokenizer_encode(t, data + pos, n, 0, &ids, &m)) {
                        fprintf(stderr, "%s\n", lg_last_error());
                        return 1;
                    }
                    ntok += m;
                    nbytes += n;
                    free(ids);
                    pos += n + 1;
                }
                double dt = lg_now() - t0;
                if (dt < best) best = dt;
            }
            lg_tokenizer_free(t);
            const char *base = strrchr(argv[f], '/');
            printf("loraga %-12s %-10s %6.2f MB %9ld tokens %8.2f MB/s%s\n", names[k], base ? base + 1 : argv[f],
                   (double)nbytes / 1e6, ntok, (double)nbytes / 1e6 / best, cold ? " (cold cache)" : "");
            free(data);
        }
    }
    return 0;
}
