/* stories260k_convert.c — helper of check_stories260k.py (not built by make, not CI).
 *
 *   stories260k_convert MODEL.bin OUTDIR [IDS.txt]
 *
 * Loads a llama2.c checkpoint with lg_model_load, writes a Hugging Face directory with
 * lg_model_save_hf (float32). With IDS.txt (whitespace-separated token ids, one sequence),
 * prints loraga's mean next-token loss on it, through the .bin and through OUTDIR:
 *   loss_bin <x>
 *   loss_hf <y>  */
#include <stdio.h>
#include <stdlib.h>

#include "core/util.h"
#include "model/model.h"

static double loss_of(const char *path, const int *ids, int n) {
    lg_model *m;
    if (lg_model_load(path, &m) != 0) {
        fprintf(stderr, "%s\n", lg_last_error());
        exit(1);
    }
    lg_batch b = {1, n, calloc((size_t)n, sizeof(int)), calloc((size_t)n, sizeof(int)),
                  calloc((size_t)n, sizeof(float))};
    for (int t = 0; t < n; t++) {
        b.inputs[t] = ids[t];
        b.targets[t] = t + 1 < n ? ids[t + 1] : 0;
        b.weight[t] = t + 1 < n ? 1.0f : 0.0f; /* the last position predicts nothing */
    }
    double w, loss = -1;
    if (lg_model_plan(m, 1, n, 0) == 0) loss = lg_model_forward(m, &b, &w);
    free(b.inputs);
    free(b.targets);
    free(b.weight);
    lg_model_free(m);
    return loss;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL.bin OUTDIR [IDS.txt]\n", argv[0]);
        return 2;
    }
    lg_model *m;
    if (lg_model_load(argv[1], &m) != 0 || lg_model_save_hf(m, argv[2], "float32") != 0) {
        fprintf(stderr, "%s\n", lg_last_error());
        return 1;
    }
    lg_model_free(m);
    if (argc < 4) return 0;
    FILE *f = fopen(argv[3], "r");
    if (!f) {
        perror(argv[3]);
        return 1;
    }
    int ids[4096], n = 0;
    while (n < 4096 && fscanf(f, "%d", &ids[n]) == 1) n++;
    fclose(f);
    printf("loss_bin %.9g\nloss_hf %.9g\n", loss_of(argv[1], ids, n), loss_of(argv[2], ids, n));
    return 0;
}
