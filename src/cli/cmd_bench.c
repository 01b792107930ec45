/* cmd_bench.c — `loraga bench`: tokens/s, GFLOP/s and peak RSS of the engine on the configurations
 * of ../shared/bench/torch_lora_bench.py (same shapes, same FLOP formulas, same LoRA set-up), so the
 * two can run side by side. Benchmarks, not tests: nothing here asserts a speed.
 *
 * Modes (one process each, so that the peak RSS is that mode's):
 *   fwd     forward only, no activations kept for backward;
 *   full    full fine-tuning step: forward, backward with every weight gradient, AdamW on all;
 *   lora    LoRA step: r 8, alpha 16 on q,k,v,o,gate,up,down, base frozen, AdamW on A and B;
 *   loraga  LoRA-GA estimation: the gradients of the 7 x layers target weights accumulated over
 *           --ga-batches batches (all / serial / sketch, --ga-mode), then the top-2r triplets by a
 *           randomised SVD with q = 4r and 4 power iterations (torch.svd_lowrank(q=4r, niter=4)).
 *           Done --ga-reps times (default 2, as the torch script) after an untimed warm-up; tokens/s
 *           is the median estimation batch. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/lora.h"
#include "cli.h"
#include "core/util.h"
#include "loraga/loraga.h"
#include "model/model.h"
#include "train/train.h"

static const char *USAGE =
    "usage: loraga bench --config tiny|small --mode fwd|full|lora|loraga [--precision P] [--threads N] [--steps N] [--json]\n"
    "       loraga bench --model DIR --mode fwd|full|lora [--batch-size 4] [--seq-len 128] [--precision P] [--json]\n"
    "       loraga-mode options: [--ga-batches 8] [--ga-mode all|serial|sketch] [--ga-mem BYTES] [--ga-sketch-k K]\n"
    "                            [--ga-reps 2]";

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

/* Practical ceiling: a linear layer's forward product on the model's biggest projection shape
 * (M tokens, K = dim in, N = FFN out), in this process, with a backend of precision p (bf16: the
 * weight stored as bf16, as a frozen base is). GFLOP/s, best of 5 after 2 untimed runs. */
static double gemm_ceiling(lg_precision p, int M, int N, int K) {
    lg_ops *o;
    if (lg_ops_create(p, &o) != 0) return 0;
    float *A = o->alloc(o, (size_t)M * K * 4), *B = o->alloc(o, (size_t)N * K * 4), *C = o->alloc(o, (size_t)M * N * 4);
    uint16_t *B16 = o->alloc(o, (size_t)N * K * 2);
    for (long i = 0; i < (long)M * K; i++) A[i] = (float)(i % 7) * 0.1f;
    for (long i = 0; i < (long)N * K; i++) B[i] = (float)(i % 5) * 0.1f;
    lg_round_bf16(B16, B, (long)N * K);
    const lg_weight w = p == LG_PREC_BF16 ? (lg_weight){NULL, B16, NULL} : lg_weight_f32(B);
    double best = 0;
    for (int rep = 0; rep < 7; rep++) {
        double t = lg_now();
        o->linear_forward(o, C, A, w, NULL, M, K, N);
        double dt = lg_now() - t;
        if (rep > 1) best = fmax(best, 2.0 * M * N * K / dt / 1e9);
    }
    o->free(o, A), o->free(o, B), o->free(o, C), o->free(o, B16);
    lg_ops_free(o);
    return best;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int want_none(const lg_param *p, void *ud) {
    (void)p, (void)ud;
    return 0;
}

/* LoRA-GA estimation batches: nb fixed random batches (as the torch script's list), by index. */
typedef struct {
    int nb;
    lg_batch *b;
    double *stamps; /* time after each estimation batch (progress callback) */
    long nstamps, cap;
} ga_src;

static int ga_next(void *ud, int split, long index, lg_batch *b) {
    ga_src *s = ud;
    (void)split;
    const lg_batch *src = &s->b[index % s->nb];
    size_t n = (size_t)b->B * b->T;
    memcpy(b->inputs, src->inputs, n * sizeof(int));
    memcpy(b->targets, src->targets, n * sizeof(int));
    memcpy(b->weight, src->weight, n * sizeof(float));
    return 0;
}

static void ga_progress(const char *phase, long done, long total, void *ud) {
    ga_src *s = ud;
    (void)done, (void)total;
    if (strcmp(phase, "estimate") || s->nstamps >= s->cap) return;
    s->stamps[s->nstamps++] = lg_now();
}

static void fill_random(lg_batch *b, int vocab, lg_rng *r) {
    for (int i = 0; i < b->B * b->T; i++) {
        b->inputs[i] = (int)(lg_rng_u64(r) % (uint64_t)vocab);
        b->targets[i] = (int)(lg_rng_u64(r) % (uint64_t)vocab);
        b->weight[i] = 1.0f;
    }
}

static lg_batch batch_alloc(int B, int T) {
    lg_batch b = {B, T, lg_malloc((size_t)B * T * sizeof(int)), lg_malloc((size_t)B * T * sizeof(int)),
                  lg_malloc((size_t)B * T * sizeof(float))};
    return b;
}

static void batch_free(lg_batch *b) { free(b->inputs), free(b->targets), free(b->weight); }

int cmd_bench(int argc, char **argv) {
    const char *config = "small", *mode = "fwd", *ga_mode_s = "all", *precision_s = "auto", *model_dir = NULL;
    int threads = 0, steps = 10, warmup = 3, json = 0, ga_batches = 8, ga_k = 0, rank = 8, ga_reps = 2;
    int recompute = 0, batch_size = 4, seq_len = 128;
    const char *base_dtype = NULL;
    size_t ga_mem = 0;
    lg_opt opts[] = {
        {"--config", LG_OPT_STR, &config, "tiny or small (default small)"},
        {"--model", LG_OPT_STR, &model_dir, "a real model (HF directory, .gguf, llama2.c .bin) instead of --config: "
                                            "random tokens, r 8 on all linear layers"},
        {"--batch-size", LG_OPT_INT, &batch_size, "--model: rows per step (default 4)"},
        {"--seq-len", LG_OPT_INT, &seq_len, "--model: tokens per row (default 128)"},
        {"--precision", LG_OPT_STR, &precision_s,
         "linear layers in fp32 or bf16 (bf16 inputs, fp32 accumulation); auto = bf16 where the CPU has bf16 "
         "units (default auto)"},
        {"--mode", LG_OPT_STR, &mode, "fwd, full, lora or loraga (default fwd)"},
        {"--threads", LG_OPT_INT, &threads, "threads (default: OMP_NUM_THREADS or all cores)"},
        {"--steps", LG_OPT_INT, &steps, "timed steps (default 10)"},
        {"--warmup", LG_OPT_INT, &warmup, "untimed steps first (default 3)"},
        {"--rank", LG_OPT_INT, &rank, "lora / loraga: rank r (default 8; alpha 16)"},
        {"--ga-batches", LG_OPT_INT, &ga_batches, "loraga: estimation batches (default 8, as the torch script)"},
        {"--ga-mode", LG_OPT_STR, &ga_mode_s, "loraga: all | serial | sketch (default all)"},
        {"--ga-mem", LG_OPT_SIZE, &ga_mem, "loraga serial: gradient bytes per group (default: one layer's targets)"},
        {"--ga-sketch-k", LG_OPT_INT, &ga_k, "loraga sketch: width k (default 8r)"},
        {"--ga-reps", LG_OPT_INT, &ga_reps, "loraga: timed repetitions of estimation + factorisation (default 2)"},
        {"--base-dtype", LG_OPT_STR, &base_dtype,
         "lora: frozen base weights stored as float32 or bfloat16 (default: bfloat16 with --precision bf16, else "
         "float32)"},
        {"--recompute", LG_OPT_FLAG, &recompute, "lora / full: keep only each layer's input, recompute in backward"},
        {"--json", LG_OPT_FLAG, &json, "print one JSON line"},
    };
    int pr = lg_parse_opts(argc, argv, opts, sizeof opts / sizeof opts[0], USAGE);
    if (pr) return pr > 0 ? 0 : 2;
    lg_precision prec;
    if (lg_precision_parse(precision_s, &prec) != 0) {
        lg_errorf_prefix("--precision");
        return lg_cli_fail();
    }
    prec = lg_precision_resolve(prec);
    const bench_cfg *bc = NULL;
    for (size_t i = 0; i < sizeof CONFIGS / sizeof CONFIGS[0]; i++)
        if (!strcmp(config, CONFIGS[i].name)) bc = &CONFIGS[i];
    if (!bc && !model_dir) {
        lg_errorf("--config '%s': expected tiny or small", config);
        return lg_cli_fail();
    }
    if (model_dir && (batch_size < 1 || seq_len < 2)) {
        lg_errorf("--batch-size must be >= 1 and --seq-len >= 2");
        return lg_cli_fail();
    }
    int is_fwd = !strcmp(mode, "fwd"), is_full = !strcmp(mode, "full"), is_lora = !strcmp(mode, "lora"),
        is_ga = !strcmp(mode, "loraga");
    if (!is_fwd && !is_full && !is_lora && !is_ga) {
        lg_errorf("--mode '%s': expected fwd, full, lora or loraga", mode);
        return lg_cli_fail();
    }
    if (steps < 1 || warmup < 0 || ga_batches < 1 || rank < 1 || ga_reps < 1 || ga_reps > 8) {
        lg_errorf("--steps, --ga-batches and --rank must be >= 1, --ga-reps 1..8, --warmup >= 0");
        return lg_cli_fail();
    }
    if (!base_dtype) base_dtype = prec == LG_PREC_BF16 && is_lora ? "bfloat16" : "float32";
    int base_bf16 = !strcmp(base_dtype, "bfloat16") || !strcmp(base_dtype, "bf16");
    if (!base_bf16 && strcmp(base_dtype, "float32")) {
        lg_errorf("--base-dtype '%s': expected float32 or bfloat16", base_dtype);
        return lg_cli_fail();
    }
    if ((base_bf16 && !is_lora) || (recompute && is_fwd) || (recompute && is_ga)) {
        lg_errorf("--base-dtype bfloat16 is for --mode lora, --recompute for lora and full");
        return lg_cli_fail();
    }
    lg_ga_opts go;
    lg_ga_opts_default(&go);
    if (is_ga && lg_ga_parse_mode(ga_mode_s, &go.mode) != 0) {
        lg_errorf_prefix("--ga-mode");
        return lg_cli_fail();
    }
    if (model_dir && is_ga) {
        lg_errorf("--mode loraga runs on --config shapes only");
        return lg_cli_fail();
    }
    lg_set_threads(threads);
    const lg_model_opts mo = {prec};
    lg_model *m = NULL;
    bench_cfg mc; /* --model: the shape of the real model */
    if (model_dir) {
        if (lg_model_load(model_dir, &mo, &m) != 0) return lg_cli_fail();
        const lg_config *k = lg_model_config(m);
        mc = (bench_cfg){"model", k->vocab_size, k->dim, k->n_layers, k->n_heads, k->n_kv_heads, k->hidden_dim,
                         seq_len, batch_size};
        if (seq_len > k->max_seq) {
            lg_errorf("--seq-len %d exceeds the model's maximum %d", seq_len, k->max_seq);
            lg_model_free(m);
            return lg_cli_fail();
        }
        bc = &mc;
        config = model_dir;
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
    const int cM = bc->batch * bc->seq, cN = bc->ffn, cK = bc->dim;
    const double ceil32 = gemm_ceiling(LG_PREC_FP32, cM, cN, cK);
    const double ceil16 = prec == LG_PREC_BF16 ? gemm_ceiling(LG_PREC_BF16, cM, cN, cK) : 0;
    const double ceiling = prec == LG_PREC_BF16 ? ceil16 : ceil32;
    if (!m && lg_model_create(&c, NULL, 0, &mo, &m) != 0) return lg_cli_fail();
    double rss_model = lg_peak_rss_kb() / 1024.0;
    int B = bc->batch, T = bc->seq, rc = 1;
    lg_rng r;
    lg_rng_seed(&r, 0);
    lg_batch b = batch_alloc(B, T);
    fill_random(&b, bc->vocab, &r);
    lg_opt_tensor *ot = NULL;
    int nt = 0, have_opt = 0;
    lg_adamw opt;
    lg_adapters *ad = NULL;
    double *times = NULL;
    long ntimes = 0;
    ga_src gs = {0};
    char extra[1024] = "";
    float loss = 0;
    if (is_full) {
        lg_model_set_trainable(m, NULL, NULL);
        nt = lg_model_n_params(m);
        ot = lg_calloc((size_t)nt, sizeof *ot);
        for (int i = 0; i < nt; i++) {
            lg_param *p = lg_model_param(m, i);
            ot[i] = (lg_opt_tensor){p->name, p->data, p->grad, NULL, NULL, p->numel, 1.0f, 0.0f};
        }
    } else if (is_lora || is_ga) {
        /* the torch script's set-up: r 8, alpha 16 (s = alpha / r), seven projections, base frozen */
        lg_model_set_trainable(m, want_none, NULL);
        lg_lora_opts lo;
        lg_lora_opts_default(&lo);
        lo.r = rank;
        lo.alpha = 16.0f;
        if (model_dir) lo.targets = "all-linear";
        lo.init = is_ga ? LG_INIT_NONE : LG_INIT_KAIMING;
        if (lg_adapters_attach(m, &lo, &ad) != 0) goto done;
        if (is_lora && lg_adapters_opt_tensors(ad, 1.0f, &ot, &nt) != 0) goto done;
        if (base_bf16) lg_model_store_frozen_bf16(m);
    }
    if (ot) {
        lg_adamw_init(&opt, ot, nt, 0.9f, 0.999f, 1e-8f);
        have_opt = 1;
    }

    if (!is_ga) {
        if (lg_model_plan(m, B, T, is_fwd ? 0 : recompute ? LG_PLAN_RECOMPUTE : 1) != 0) goto done;
        times = lg_calloc((size_t)steps, sizeof(double));
        for (int i = 0; i < warmup + steps; i++) {
            double t0 = lg_now(), w;
            loss = lg_model_forward(m, &b, &w);
            if (!is_fwd) {
                if (is_full) lg_model_zero_grads(m);
                else lg_adapters_zero_grads(ad);
                lg_model_backward(m, &b, (float)(1.0 / w));
                lg_adamw_step(&opt, 1e-4f);
            }
            if (i >= warmup) times[ntimes++] = lg_now() - t0;
        }
        if (is_lora)
            snprintf(extra, sizeof extra, ", \"trainable\": %lld, \"adapted_layers\": %d",
                     (long long)lg_adapters_numel(ad), lg_adapters_count(ad));
    } else {
        /* LoRA-GA estimation + factorisation, exactly the torch script's work: N fixed random
         * batches of B x T, gradients of every target weight, top-2r triplets with q = 4r, 4 power
         * iterations (lg_ga_svd, called by lg_loraga_init). Twice, after an untimed warm-up. */
        int64_t target_floats = 0, max_layer = 0, layer_floats = 0;
        int per_layer = lg_adapters_count(ad) / bc->layers;
        for (int i = 0; i < lg_adapters_count(ad); i++) {
            lg_lora *l = lg_adapters_get(ad, i);
            target_floats += (int64_t)l->in * l->out;
            layer_floats += (int64_t)l->in * l->out;
            if ((i + 1) % per_layer == 0) max_layer = LG_MAX(max_layer, layer_floats), layer_floats = 0;
        }
        gs.nb = ga_batches;
        gs.b = lg_calloc((size_t)ga_batches, sizeof(lg_batch));
        for (int i = 0; i < ga_batches; i++) {
            gs.b[i] = batch_alloc(B, T);
            fill_random(&gs.b[i], bc->vocab, &r);
        }
        gs.cap = (long)ga_batches * (lg_adapters_count(ad) + 1) + 16; /* serial: at most one pass per target */
        gs.stamps = lg_calloc((size_t)gs.cap, sizeof(double));
        go.batch_size = B;
        go.seq_len = T;
        go.mem_budget = ga_mem ? ga_mem : (size_t)max_layer * sizeof(float);
        go.sketch_k = ga_k;
        go.progress = ga_progress;
        go.progress_ud = &gs;
        go.seed = 0;
        lg_ga_report rep[8], wrep;
        if (warmup > 0) { /* untimed: first touch of every buffer, BLAS thread start-up */
            lg_ga_opts wo = go;
            wo.batches = LG_MIN(warmup, ga_batches);
            wo.progress = NULL;
            if (lg_loraga_init(m, ad, &wo, ga_next, &gs, &wrep) != 0) goto done;
        }
        go.batches = ga_batches;
        times = lg_calloc((size_t)gs.cap * ga_reps, sizeof(double));
        for (int rp = 0; rp < ga_reps; rp++) {
            gs.nstamps = 0;
            double t0 = lg_now();
            if (lg_loraga_init(m, ad, &go, ga_next, &gs, &rep[rp]) != 0) goto done;
            /* per-batch times from the progress stamps; the first batch of each pass includes the
             * pass's set-up (planning, hooks), as the torch script's first step includes its own */
            for (long i = 0; i < gs.nstamps; i++) times[ntimes++] = gs.stamps[i] - (i ? gs.stamps[i - 1] : t0);
        }
        const lg_ga_report *R = &rep[ga_reps - 1];
        loss = (float)R->mean_loss;
        char est[128] = "", fac[128] = "";
        for (int rp = 0; rp < ga_reps; rp++) {
            snprintf(est + strlen(est), sizeof est - strlen(est), "%s%.3f", rp ? ", " : "", rep[rp].estimate_seconds);
            snprintf(fac + strlen(fac), sizeof fac - strlen(fac), "%s%.3f", rp ? ", " : "", rep[rp].factorise_seconds);
        }
        snprintf(extra, sizeof extra,
                 ", \"ga_mode\": \"%s\", \"ga_batches\": %d, \"n_target_weights\": %d, \"target_params\": %lld, "
                 "\"ga_accum_s\": [%s], \"svd_lowrank_s\": [%s], \"passes\": %d, \"groups\": %d, "
                 "\"ga_mem_budget_mb\": %.1f, \"ga_extra_mb\": %.1f, \"targets_fp32_mb\": %.1f, \"sketch_k\": %d",
                 ga_mode_s, ga_batches, lg_adapters_count(ad), (long long)target_floats, est, fac, R->passes, R->groups,
                 go.mode == LG_GA_SERIAL ? go.mem_budget / 1048576.0 : 0.0, R->extra_bytes / 1048576.0,
                 target_floats * 4 / 1048576.0, go.mode == LG_GA_SKETCH ? (ga_k > 0 ? ga_k : 8 * rank) : 0);
    }
    qsort(times, (size_t)ntimes, sizeof(double), cmp_double);
    double med = times[ntimes / 2];
    double fpt = flops_per_token(bc, mode, rank);
    double tps = B * T / med, gf = fpt * B * T / med / 1e9;
    double rss = lg_peak_rss_kb() / 1024.0;
    if (json)
        printf("{\"config\": \"%s\", \"mode\": \"%s\", \"threads\": %d, \"tokens_per_step\": %d, \"n_timed\": %ld, "
               "\"step_s_median\": %.4f, \"step_s_min\": %.4f, \"step_s_max\": %.4f, \"tokens_per_s\": %.1f, "
               "\"gflops\": %.1f, \"mflop_per_token\": %.2f, \"peak_rss_mb\": %.1f, \"rss_after_model_mb\": %.1f, "
               "\"ceiling_gflops\": %.1f, \"share_of_ceiling\": %.3f, \"ceiling_fp32_gflops\": %.1f, "
               "\"share_of_fp32_ceiling\": %.3f, \"loss_last\": %.4f, \"base_dtype\": \"%s\", \"precision\": \"%s\", "
               "\"bf16_native\": %d, \"compute\": \"%s\", \"recompute\": %d%s}\n",
               config, mode, omp_get_max_threads(), B * T, ntimes, med, times[0], times[ntimes - 1], tps, gf,
               fpt / 1e6, rss, rss_model, ceiling, ceiling > 0 ? gf / ceiling : 0.0, ceil32,
               ceil32 > 0 ? gf / ceil32 : 0.0, loss, base_bf16 ? "bfloat16" : "float32", lg_precision_name(prec),
               lg_model_ops(m)->bf16_native, lg_ops_describe(lg_model_ops(m)), recompute, extra);
    else
        printf("%s %s (%s): %.1f tokens/s, %.1f GFLOP/s (ceiling %.1f: %.0f %%; fp32 ceiling %.1f), step %.4f s, "
               "peak RSS %.1f MB\n",
               config, mode, lg_ops_describe(lg_model_ops(m)), tps, gf, ceiling, ceiling > 0 ? 100 * gf / ceiling : 0.0,
               ceil32, med, rss);
    rc = 0;
done:
    if (rc) lg_cli_fail();
    free(times);
    if (have_opt) lg_adamw_free(&opt);
    free(ot);
    lg_adapters_free(ad);
    for (int i = 0; i < gs.nb && gs.b; i++) batch_free(&gs.b[i]);
    free(gs.b);
    free(gs.stamps);
    batch_free(&b);
    lg_model_free(m);
    return rc;
}
