/* cmd_bench.c — `loraga bench`: tokens/s, GFLOP/s and peak RSS of the engine on the configurations
 * of ../shared/bench/torch_lora_bench.py (same shapes, same FLOP formulas), so the two can run
 * side by side. Benchmarks, not tests: nothing here asserts a speed. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "core/util.h"
#include "model/model.h"
#include "train/train.h"

static const char *USAGE = "usage: loraga bench --config tiny|small --mode fwd|full [--threads N] [--steps N] [--json]";

typedef struct {
    const char *name;
    int vocab, dim, layers, heads, kv, ffn, seq, batch;
} bench_cfg;

static const bench_cfg CONFIGS[] = {
    {"small", 32000, 512, 8, 8, 8, 1376, 256, 4},
    {"tiny", 512, 64, 5, 8, 4, 172, 256, 8},
};

/* FLOPs per token, exactly as torch_lora_bench.py counts them. */
static double flops_per_token(const bench_cfg *c, const char *mode, int r) {
    double d = c->dim, L = c->layers, f = c->ffn, T = c->seq, V = c->vocab;
    double kvd = (double)c->kv * c->dim / c->heads;
    double n_blk = L * (2 * d * d + 2 * d * kvd + 3 * d * f), n_mm = n_blk + V * d;
    double attn_fwd = L * 4 * T * d;
    double lora_fwd = !strcmp(mode, "lora") ? L * 2 * r * (4 * d + 2 * kvd + 3 * (d + f)) : 0;
    double fwd = 2 * n_mm + attn_fwd + lora_fwd;
    if (!strcmp(mode, "fwd")) return fwd;
    if (!strcmp(mode, "lora")) return 2 * n_mm * 2 + 3 * attn_fwd + 3 * lora_fwd;
    if (!strcmp(mode, "full")) return 6 * n_mm + 3 * attn_fwd;
    return 4 * n_mm + 2 * n_blk + 3 * attn_fwd; /* loraga */
}

/* Practical ceiling: cblas_sgemm on the model's biggest projection shape, in this process. */
static double sgemm_ceiling(const bench_cfg *c) {
    int M = c->batch * c->seq, N = c->ffn, K = c->dim;
    float *A = lg_aligned_alloc((size_t)M * K * 4), *B = lg_aligned_alloc((size_t)N * K * 4),
          *C = lg_aligned_alloc((size_t)M * N * 4);
    for (long i = 0; i < (long)M * K; i++) A[i] = (float)(i % 7) * 0.1f;
    for (long i = 0; i < (long)N * K; i++) B[i] = (float)(i % 5) * 0.1f;
    double best = 0;
    for (int rep = 0; rep < 7; rep++) {
        double t = lg_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, A, K, B, K, 0.0f, C, N);
        double dt = lg_now() - t;
        if (rep > 1) best = fmax(best, 2.0 * M * N * K / dt / 1e9);
    }
    lg_aligned_free(A);
    lg_aligned_free(B);
    lg_aligned_free(C);
    return best;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int cmd_bench(int argc, char **argv) {
    const char *config = "small", *mode = "fwd";
    int threads = 0, steps = 10, warmup = 3, json = 0;
    lg_opt opts[] = {
        {"--config", LG_OPT_STR, &config, "tiny or small (default small)"},
        {"--mode", LG_OPT_STR, &mode, "fwd or full (default fwd)"},
        {"--threads", LG_OPT_INT, &threads, "threads (default: OMP_NUM_THREADS or all cores)"},
        {"--steps", LG_OPT_INT, &steps, "timed steps (default 10)"},
        {"--warmup", LG_OPT_INT, &warmup, "untimed steps first (default 3)"},
        {"--json", LG_OPT_FLAG, &json, "print one JSON line"},
    };
    int pr = lg_parse_opts(argc, argv, opts, sizeof opts / sizeof opts[0], USAGE);
    if (pr) return pr > 0 ? 0 : 2;
    const bench_cfg *bc = NULL;
    for (size_t i = 0; i < sizeof CONFIGS / sizeof CONFIGS[0]; i++)
        if (!strcmp(config, CONFIGS[i].name)) bc = &CONFIGS[i];
    if (!bc) {
        lg_errorf("--config '%s': expected tiny or small", config);
        return lg_cli_fail();
    }
    if (strcmp(mode, "fwd") && strcmp(mode, "full")) {
        lg_errorf("--mode '%s': expected fwd or full (lora and loraga come with the adapters)", mode);
        return lg_cli_fail();
    }
    if (steps < 1 || warmup < 0) {
        lg_errorf("--steps must be >= 1 and --warmup >= 0");
        return lg_cli_fail();
    }
    if (threads > 0) {
        omp_set_num_threads(threads);
        openblas_set_num_threads(threads);
    }
    lg_config c;
    memset(&c, 0, sizeof c);
    c.arch = LG_ARCH_LLAMA;
    snprintf(c.model_type, sizeof c.model_type, "llama");
    snprintf(c.torch_dtype, sizeof c.torch_dtype, "float32");
    c.vocab_size = bc->vocab;
    c.dim = bc->dim;
    c.n_layers = bc->layers;
    c.n_heads = bc->heads;
    c.n_kv_heads = bc->kv;
    c.head_dim = bc->dim / bc->heads;
    c.hidden_dim = bc->ffn;
    c.max_seq = bc->seq;
    c.norm_eps = 1e-5f;
    c.rope_theta = 10000.0f;
    c.rope_style = LG_ROPE_INTERLEAVED; /* as the torch script */
    c.bos_id = c.eos_id = -1;
    double ceiling = sgemm_ceiling(bc);
    lg_model *m;
    if (lg_model_create(&c, NULL, 0, &m) != 0) return lg_cli_fail();
    double rss_model = lg_peak_rss_kb() / 1024.0;
    int B = bc->batch, T = bc->seq, full = !strcmp(mode, "full");
    lg_batch b = {B, T, lg_malloc((size_t)B * T * sizeof(int)), lg_malloc((size_t)B * T * sizeof(int)),
                  lg_malloc((size_t)B * T * sizeof(float))};
    lg_rng r;
    lg_rng_seed(&r, 0);
    for (int i = 0; i < B * T; i++) {
        b.inputs[i] = (int)(lg_rng_u64(&r) % (uint64_t)bc->vocab);
        b.targets[i] = (int)(lg_rng_u64(&r) % (uint64_t)bc->vocab);
        b.weight[i] = 1.0f;
    }
    lg_opt_tensor *ot = NULL;
    int nt = 0;
    lg_adamw opt;
    if (full) {
        lg_model_set_trainable(m, NULL, NULL);
        nt = lg_model_n_params(m);
        ot = lg_calloc((size_t)nt, sizeof *ot);
        for (int i = 0; i < nt; i++) {
            lg_param *p = lg_model_param(m, i);
            ot[i] = (lg_opt_tensor){p->name, p->data, p->grad, NULL, NULL, p->numel, 1.0f, 0.0f};
        }
        lg_adamw_init(&opt, ot, nt, 0.9f, 0.999f, 1e-8f);
    }
    lg_model_plan(m, B, T, full);
    double *times = lg_calloc((size_t)steps, sizeof(double));
    float loss = 0;
    for (int i = 0; i < warmup + steps; i++) {
        double t0 = lg_now(), w;
        loss = lg_model_forward(m, &b, &w);
        if (full) {
            lg_model_zero_grads(m);
            lg_model_backward(m, &b, (float)(1.0 / w));
            lg_adamw_step(&opt, 1e-4f);
        }
        if (i >= warmup) times[i - warmup] = lg_now() - t0;
    }
    qsort(times, (size_t)steps, sizeof(double), cmp_double);
    double med = times[steps / 2];
    double tps = B * T / med, gf = flops_per_token(bc, mode, 8) * B * T / med / 1e9;
    double rss = lg_peak_rss_kb() / 1024.0;
    if (json)
        printf("{\"config\": \"%s\", \"mode\": \"%s\", \"threads\": %d, \"tokens_per_step\": %d, \"step_s_median\": %.4f, "
               "\"step_s_min\": %.4f, \"tokens_per_s\": %.1f, \"gflops\": %.1f, \"mflop_per_token\": %.2f, "
               "\"peak_rss_mb\": %.1f, \"rss_after_model_mb\": %.1f, \"ceiling_gflops\": %.1f, \"loss_last\": %.4f}\n",
               config, mode, omp_get_max_threads(), B * T, med, times[0], tps, gf, flops_per_token(bc, mode, 8) / 1e6,
               rss, rss_model, ceiling, loss);
    else
        printf("%s %s: %.1f tokens/s, %.1f GFLOP/s (sgemm ceiling %.1f), step %.4f s, peak RSS %.1f MB\n", config, mode,
               tps, gf, ceiling, med, rss);
    free(times);
    if (full) lg_adamw_free(&opt);
    free(ot);
    free(b.inputs);
    free(b.targets);
    free(b.weight);
    lg_model_free(m);
    return 0;
}
