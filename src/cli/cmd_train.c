/* cmd_train.c — `loraga train`: full fine-tuning, the LoRA family and LoRA-GA on JSONL / text. */
#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "adapters/lora.h"
#include "adapters/lora_io.h"
#include "adapters/targets.h"
#include "cli.h"
#include "config_yaml.h"
#include "data_opts.h"
#include "core/util.h"
#include "data/data.h"
#include "dist/dist.h"
#include "loraga/loraga.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"
#include "train/checkpoint.h"
#include "train/run_record.h"
#include "train/train.h"

static const char *USAGE =
    "usage: loraga train --model DIR --data ROWS.jsonl --method METHOD --out RUNDIR [options]\n"
    "       loraga train --config run.yaml [options]   (the same keys as the options; options override it)\n"
    "METHOD: full | lora | rslora | loraplus | dora | pissa | adalora | lora-ga\n"
    "RUNDIR receives the result (full: a Hugging Face model directory; the others: a PEFT adapter,\n"
    "relative to the ORIGINAL base model) with the tokenizer, metrics.jsonl, loss.svg and run.json (every\n"
    "option as resolved, the command line, version, checksums); checkpoint-N/ and best/ with --save-every\n"
    "and --save-best.\n"
    "Data (--data, --val-data): .jsonl/.json rows {\"text\"}, {\"prompt\",\"completion\"} (strings or message\n"
    "lists), {\"messages\"}, ShareGPT {\"conversations\"}, Alpaca {\"instruction\",\"input\",\"output\"}, or one\n"
    "JSON array of them; .csv/.tsv with a header naming the columns; other files: plain text.\n"
    "lora-ga is the paper's recipe: gradient-aligned init (ArB2r, stable scale, gamma 16) with rsLoRA\n"
    "scaling on all linear layers, r 8, alpha 16, estimated on the first 64 x 2 rows in file order;\n"
    "its paper uses the learning rate of full fine-tuning (e.g. 5e-5), smaller than LoRA's usual 1e-4..1e-3.\n"
    "\n"
    "example (make demo runs this on SmolLM2-135M-Instruct; README.md):\n"
    "  loraga train --model smol --data demo/train.jsonl --method lora-ga --steps 20 --batch-size 4 \\\n"
    "      --seq-len 88 --lr 5e-5 --ga-batches 4 --ga-batch-size 4 --out run-ga";

typedef struct {
    lg_dataset *d;
    int B;       /* training batch */
    int ga_B;    /* LoRA-GA estimation batch */
    int n_train; /* rows in the train split (file-order wrap-around) */
    lg_dataset *val; /* --val-data (NULL: d's validation split) */
} batch_src;

static int next_batch(void *ud, int split, long index, lg_batch *b) {
    batch_src *s = ud;
    long first;
    if (split == LG_SPLIT_TRAIN_FILE) /* estimation: the first N x B rows, wrapping if fewer */
        first = s->n_train ? (index * s->ga_B) % s->n_train : 0;
    else
        first = index * s->B;
    if (split == LG_SPLIT_VAL && s->val) /* a validation file: all of it, in file order */
        return lg_dataset_fill_batch(s->val, LG_SPLIT_TRAIN_FILE, first, b) < 0 ? -1 : 0;
    return lg_dataset_fill_batch(s->d, split, first, b) < 0 ? -1 : 0;
}

static int want_none(const lg_param *p, void *ud) {
    (void)p, (void)ud;
    return 0;
}

static int adalora_hook(long step, void *ud) {
    lg_adalora_step(ud, step);
    return 0;
}

static void ga_progress(const char *phase, long done, long total, void *ud) {
    (void)ud;
    int tty = isatty(2);
    if (tty) {
        fprintf(stderr, "\rLoRA-GA %s %ld/%ld", phase, done, total);
        if (done == total) fprintf(stderr, "\n");
    } else if (done == total || done % LG_MAX(1, total / 8) == 0) {
        fprintf(stderr, "LoRA-GA %s %ld/%ld\n", phase, done, total);
    }
}

static lg_yaml_cfg *g_yaml; /* --config's strings, which the options point to */

/* What RUNDIR and its snapshots hold: the adapter (or the full model) and the tokenizer. */
typedef struct {
    lg_model *m;
    lg_adapters *ad; /* NULL: full fine-tuning */
    const lg_tokenizer *t;
    const char *base_name, *dtype;
} result_src;

static int save_result(const char *dir, void *ud) {
    result_src *r = ud;
    if (r->ad ? lg_adapters_save_peft(r->ad, dir, r->base_name) : lg_model_save_hf(r->m, dir, r->dtype)) return -1;
    return lg_tokenizer_save_hf(r->t, dir);
}

/* index of option `name` in the table (it is there) */
static int opt_index(const lg_opt *opts, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (!strcmp(opts[i].name, name)) return i;
    return -1;
}

/* The rules between the workflow's options, before anything is loaded; the lr default per method. */
static int train_workflow_check(const lg_opt *opts, int nopts, const unsigned char *given, lg_train_opts *o,
                                const char *method, const char *adapter_dir, float epochs, int early_stop,
                                int save_best, const char *val_data, float val_frac, int save_total_limit,
                                int save_every) {
#define G(name) given[opt_index(opts, nopts, name)]
    if (!G("--lr") && !strcmp(method, "lora-ga")) o->lr = 5e-5f; /* its paper uses full fine-tuning's rates */
    if (epochs != 0 && G("--steps"))
        return lg_errorf("--epochs and --steps: give one of them (--epochs sets the number of steps)");
    if (!(epochs >= 0 && epochs < 1e6f)) return lg_errorf("--epochs must be > 0 (0: use --steps)");
    if (early_stop < 0 || save_total_limit < 0) return lg_errorf("--early-stop and --save-total-limit must be >= 0");
    if (val_data && val_frac > 0) return lg_errorf("--val-data and --val-frac: give one of them");
    if ((early_stop || save_best) && !val_data && !(val_frac > 0))
        return lg_errorf("--%s needs validation data: --val-data FILE or --val-frac X",
                         early_stop ? "early-stop" : "save-best");
    if (early_stop && o->eval_every <= 0)
        return lg_errorf("--early-stop needs --eval-every N: the evaluations whose losses it compares");
    if (save_total_limit && save_every <= 0)
        return lg_errorf("--save-total-limit limits the checkpoint-N/ directories of --save-every; give --save-every N");
    if (adapter_dir) {
        static const char *const own[] = {"--rank", "--alpha", "--targets", "--dropout", "--rslora", "--dora", "--init",
                                          "--save-init"};
        for (int i = 0; i < 8; i++)
            if (G(own[i]))
                return lg_errorf("%s with --adapter: the adapter's own settings apply (adapter_config.json); drop %s",
                                 own[i], own[i]);
        if (strcmp(method, "lora") && strcmp(method, "rslora") && strcmp(method, "dora") && strcmp(method, "loraplus"))
            return lg_errorf("--adapter continues an adapter as LoRA; --method %s would initialise a new one (use "
                             "lora, or loraplus for LoRA+'s learning rates)",
                             method);
    }
    return 0;
#undef G
}

/* The command itself; cmd_train (at the end) wraps it in the MPI start and stop. */
static int train_main(int argc, char **argv) {
    const char *model = NULL, *data = NULL, *method = "lora", *out = NULL, *tokp = NULL, *sched = "constant",
               *dtype = NULL, *targets = NULL, *init = NULL, *base_dtype = NULL, *precision_s = "auto";
    const char *ga_mode = "all", *ga_dir = "ArB2r", *ga_scale = "stable", *ga_variant = "paper", *ga_cache = NULL;
    int no_eos = 0, add_eos = 0;
    int seed = 42, pack = 0, skip_bad = 0, rank = 8, use_rslora = 0, use_dora = 0, save_init = 0;
    float val_frac = 0.0f, alpha = 16.0f, dropout = 0.0f, loraplus = 0.0f, ga_gamma = 16.0f;
    int ga_batches = 64, ga_bs = 2, ga_k = 0, target_r = 4, tinit = -1, tfinal = -1, delta_t = 1;
    float orth_reg = 0.5f;
    size_t ga_mem = (size_t)1 << 30;
    /* checkpoint / resume / recomputation */
    const char *resume = NULL;
    int save_every = 0, stop_after = 0, recompute = 0;
    /* the workflow: epochs, validation file, early stopping, snapshots, continuing, configuration */
    const char *val_data = NULL, *adapter_dir = NULL, *config = NULL, *format = "auto";
    float epochs = 0.0f;
    int early_stop = 0, save_best = 0, save_total_limit = 0, print_config = 0;
    lg_field_map fm = {0};
    lg_train_opts o;
    lg_train_opts_default(&o);
    int steps = (int)o.steps, warmup = 0;
    lg_opt opts[] = {
        {"--model", LG_OPT_STR, &model, "required: Hugging Face model directory, GGUF file, or llama2.c .bin with --tokenizer"},
        {"--tokenizer", LG_OPT_STR, &tokp, "tokenizer (default: the model directory's)"},
        {"--data", LG_OPT_STR, &data,
         "required: training rows, .jsonl/.json/.csv/.tsv (shapes above) or plain text"},
        LG_DATA_FORMAT_OPTS(format, fm),
        {"--val-data", LG_OPT_STR, &val_data, "validation rows, a separate file (any --data format; default: none)"},
        {"--method", LG_OPT_STR, &method, "full|lora|rslora|loraplus|dora|pissa|adalora|lora-ga (default lora)"},
        {"--out", LG_OPT_STR, &out, "required: run directory (must not exist, or be empty)"},
        {"--steps", LG_OPT_INT, &steps, "optimizer updates (default 100, or what --epochs gives)"},
        {"--epochs", LG_OPT_FLOAT, &epochs,
         "passes over the training examples (may be fractional); sets --steps, printed at start (default 0: use "
         "--steps)"},
        {"--batch-size", LG_OPT_INT, &o.batch_size, "sequences per micro-batch (default 4)"},
        {"--seq-len", LG_OPT_INT, &o.seq_len, "tokens per sequence; longer rows are truncated (default 128)"},
        {"--grad-accum", LG_OPT_INT, &o.grad_accum, "micro-batches per update (default 1)"},
        {"--lr", LG_OPT_FLOAT, &o.lr, "peak learning rate (default 1e-4; lora-ga 5e-5)"},
        {"--schedule", LG_OPT_STR, &sched, "constant, linear or cosine (default constant)"},
        {"--warmup", LG_OPT_INT, &warmup, "linear warmup updates (default 0)"},
        {"--weight-decay", LG_OPT_FLOAT, &o.weight_decay, "AdamW decoupled weight decay (default 0)"},
        {"--clip", LG_OPT_FLOAT, &o.clip, "global gradient-norm clip, 0 = off (default 1.0)"},
        {"--seed", LG_OPT_INT, &seed, "seed for shuffling, initialisation, dropout (default 42)"},
        {"--val-frac", LG_OPT_FLOAT, &val_frac, "fraction of rows held out for validation (default 0)"},
        {"--eval-every", LG_OPT_INT, &o.eval_every, "validate every N updates (default: at the end)"},
        {"--early-stop", LG_OPT_INT, &early_stop,
         "stop when the validation loss has not improved for N evaluations in a row (default 0: off)"},
        {"--save-best", LG_OPT_FLAG, &save_best, "keep RUNDIR/best/: the result at the lowest validation loss"},
        {"--val-batches", LG_OPT_INT, &o.val_batches, "validation batches per evaluation (default: all)"},
        {"--pack", LG_OPT_FLAG, &pack, "pack rows into full sequences instead of padding"},
        {"--skip-bad", LG_OPT_FLAG, &skip_bad, "skip malformed rows (counted) instead of stopping"},
        {"--no-eos", LG_OPT_FLAG, &no_eos, "prompt/completion rows without the EOS appended by default (as TRL does)"},
        {"--add-eos", LG_OPT_FLAG, &add_eos, "end text rows with EOS (default: only when the tokenizer adds it)"},
        {"--dtype", LG_OPT_STR, &dtype, "full: dtype of the saved model (default: the input's)"},
        {"--precision", LG_OPT_STR, &precision_s,
         "linear layers in fp32, or bf16 (bf16 GEMM inputs, fp32 accumulation, fp32 master weights, optimizer, "
         "norms, softmax, loss); auto = bf16 where the CPU has bf16 units (AVX512-BF16/AMX), else fp32 "
         "(default auto)"},
        {"--base-dtype", LG_OPT_STR, &base_dtype,
         "adapters: storage of the frozen base weights, float32 or bfloat16 (half the memory) (default: bfloat16 "
         "with --precision bf16, else float32)"},
        /* adapters */
        {"--rank", LG_OPT_INT, &rank, "adapter rank r (default 8; AdaLoRA: the initial rank)"},
        {"--alpha", LG_OPT_FLOAT, &alpha, "adapter alpha (default 16)"},
        {"--dropout", LG_OPT_FLOAT, &dropout, "adapter dropout (default 0)"},
        {"--targets", LG_OPT_STR, &targets,
         "target modules as PEFT takes them: names a module path ends with (q_proj,v_proj), one regex that must "
         "match the whole path (.*\\.(q_proj|v_proj)), all-linear, or peft (PEFT's default for the model type); "
         "default: every attention and MLP projection (q,k,v,o,gate,up,down_proj; Phi-3 qkv,o,gate_up,down_proj; "
         "GPT-2 c_attn,c_proj,c_fc); lora-ga all-linear"},
        {"--init", LG_OPT_STR, &init, "LoRA init: kaiming (default, as PEFT) or gaussian"},
        {"--rslora", LG_OPT_FLAG, &use_rslora, "scale alpha/sqrt(r) instead of alpha/r"},
        {"--dora", LG_OPT_FLAG, &use_dora, "weight-decomposed adapters (DoRA); composes with lora-ga"},
        {"--loraplus-ratio", LG_OPT_FLOAT, &loraplus,
         "LoRA+: lr of B = ratio x lr of A (method loraplus: default 16; composes with lora-ga, dora...)"},
        {"--target-r", LG_OPT_INT, &target_r, "AdaLoRA: average rank kept at the end (default 4)"},
        {"--tinit", LG_OPT_INT, &tinit, "AdaLoRA: steps before pruning starts (default 10% of steps)"},
        {"--tfinal", LG_OPT_INT, &tfinal, "AdaLoRA: final steps at the target budget (default 20% of steps)"},
        {"--delta-t", LG_OPT_INT, &delta_t, "AdaLoRA: steps between rank reallocations (default 1)"},
        {"--orth-reg", LG_OPT_FLOAT, &orth_reg, "AdaLoRA: orthogonality regulariser weight (default 0.5)"},
        /* LoRA-GA */
        {"--ga-batches", LG_OPT_INT, &ga_batches, "LoRA-GA: estimation batches N (default 64)"},
        {"--ga-batch-size", LG_OPT_INT, &ga_bs, "LoRA-GA: sequences per estimation batch (default 2)"},
        {"--ga-mode", LG_OPT_STR, &ga_mode, "LoRA-GA memory mode: all | serial | sketch (default all)"},
        {"--ga-mem", LG_OPT_SIZE, &ga_mem, "LoRA-GA serial: gradient bytes held at once (default 1G)"},
        {"--ga-sketch-k", LG_OPT_INT, &ga_k, "LoRA-GA sketch width k (default 8r)"},
        {"--ga-direction", LG_OPT_STR, &ga_dir, "ArB2r (default) | A2rBr | ArBr | random"},
        {"--ga-scale", LG_OPT_STR, &ga_scale, "stable (default) | unit | gd | weight_svd"},
        {"--ga-gamma", LG_OPT_FLOAT, &ga_gamma, "LoRA-GA stable scale gamma (default 16)"},
        {"--ga-variant", LG_OPT_STR, &ga_variant, "paper (default) | peft (B0 scaled by singular values, as PEFT)"},
        {"--ga-cache", LG_OPT_STR, &ga_cache, "LoRA-GA gradient cache file, reused when it matches (default: none)"},
        {"--save-init", LG_OPT_FLAG, &save_init, "also write RUNDIR/init_lora_checkpoint/ (the adapter as initialised)"},
        {"--save-every", LG_OPT_INT, &save_every,
         "every N updates and at the end: RUNDIR/checkpoint-N/ (the result at step N) and RUNDIR/checkpoint/ (the "
         "exact-resume state), atomic (default 0: none)"},
        {"--save-total-limit", LG_OPT_INT, &save_total_limit, "keep only the newest N checkpoint-N/ (default 0: all)"},
        {"--adapter", LG_OPT_STR, &adapter_dir,
         "continue training this PEFT adapter (ours, any method, or PEFT's LoRA/DoRA) on new data, as LoRA "
         "(its r, alpha, targets, dropout, rsLoRA/DoRA); fresh optimizer (default: none)"},
        {"--resume", LG_OPT_STR, &resume,
         "continue from RUNDIR (or RUNDIR/checkpoint) to --steps, with the same options; --out defaults to RUNDIR (default: none)"},
        {"--stop-after", LG_OPT_INT, &stop_after, "stop after update N with a checkpoint, continue with --resume (default 0: run to --steps)"},
        {"--recompute", LG_OPT_FLAG, &recompute, "recompute each layer's activations in backward (less memory)"},
        {"--config", LG_OPT_STR, &config, "YAML file of options (keys: these options without --); flags override it"},
        {"--print-config", LG_OPT_FLAG, &print_config, "print the resolved options as YAML (a --config file) and exit"},
    };
    const int nopts = (int)(sizeof opts / sizeof opts[0]);
    unsigned char given[sizeof opts / sizeof opts[0]] = {0};
    const char *cfg_arg = lg_config_arg(argc, argv);
    int pr = 0;
    for (int i = 1; i < argc; i++) /* --help before anything else */
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) pr = 1;
    if (pr) {
        lg_print_opts(opts, nopts, USAGE);
        return 0;
    }
    /* the file first, so that the command line overrides it; its strings live until cmd_train returns */
    if (cfg_arg && lg_opts_load_yaml(cfg_arg, "train", opts, nopts, given, &g_yaml) != 0) return lg_cli_fail();
    pr = lg_parse_opts(argc, argv, opts, nopts, USAGE);
    if (pr) return pr > 0 ? 0 : 2;
    lg_opts_mark_given(argc, argv, opts, nopts, given);
    lg_row_format row_format;
    if (train_workflow_check(opts, nopts, given, &o, method, adapter_dir, epochs, early_stop, save_best, val_data,
                             val_frac, save_total_limit, save_every) != 0 ||
        lg_row_format_parse(format, &row_format) != 0)
        return lg_cli_fail();
    if (print_config) {
        static const char *const by_epochs[] = {"--steps", NULL};
        return lg_opts_print_yaml(stdout, opts, nopts,
                                  "loraga train --config FILE reads these options back; options on the command line "
                                  "override them",
                                  epochs > 0 ? by_epochs : NULL)
                   ? lg_cli_fail()
                   : 0;
    }
    char *ck_dir = NULL, *ck_run = NULL, *ck_out = NULL;
    if (resume) {
        if (lg_ckpt_resolve(resume, &ck_dir, &ck_run) != 0) return lg_cli_fail();
        if (!out) out = ck_run;
        if (save_init) {
            lg_errorf("--save-init: not with --resume (the first run wrote it; A0, B0 are in the checkpoint)");
            free(ck_dir), free(ck_run);
            return lg_cli_fail();
        }
    }
    if (save_every < 0 || stop_after < 0) {
        lg_errorf("--save-every and --stop-after must be >= 0");
        free(ck_dir), free(ck_run);
        return lg_cli_fail();
    }
    const int ckpt = resume || save_every > 0 || stop_after > 0; /* RUNDIR/checkpoint is live */
    if (!model || !data || !out) {
        free(ck_dir), free(ck_run);
        fprintf(stderr, "loraga train: --model, --data and --out are required (see --help)\n");
        return 2;
    }
    o.steps = steps;
    o.warmup = warmup;
    if (lg_sched_parse(sched, &o.sched) != 0) return lg_cli_fail();
    static const char *methods[] = {"full", "lora", "rslora", "loraplus", "dora", "pissa", "adalora", "lora-ga"};
    int mi = -1;
    for (int i = 0; i < 8; i++)
        if (!strcmp(method, methods[i])) mi = i;
    if (mi < 0) {
        lg_errorf("--method %s: expected one of full, lora, rslora, loraplus, dora, pissa, adalora, lora-ga", method);
        return lg_cli_fail();
    }
    int full = mi == 0, is_ga = mi == 7;
    if (val_frac < 0 || val_frac >= 1) {
        lg_errorf("--val-frac must be in [0, 1)");
        return lg_cli_fail();
    }
    if (!full && (rank < 1 || !(alpha > 0) || dropout < 0 || dropout >= 1)) {
        lg_errorf("--rank must be >= 1, --alpha > 0 and --dropout in [0, 1)");
        return lg_cli_fail();
    }
    lg_precision prec;
    if (lg_precision_parse(precision_s, &prec) != 0) {
        lg_errorf_prefix("--precision");
        free(ck_dir), free(ck_run);
        return lg_cli_fail();
    }
    prec = lg_precision_resolve(prec);
    /* bf16 compute rounds the weights to bf16 anyway: storing the frozen base so is free accuracy-wise,
     * except where a checkpoint must keep the offset base in float32 (PiSSA, LoRA-GA) */
    if (!base_dtype)
        base_dtype = prec == LG_PREC_BF16 && !full && !(ckpt && (mi == 5 || is_ga)) ? "bfloat16" : "float32";
    int base_bf16 = !strcmp(base_dtype, "bfloat16") || !strcmp(base_dtype, "bf16");
    if (!base_bf16 && strcmp(base_dtype, "float32") && strcmp(base_dtype, "f32")) {
        lg_errorf("--base-dtype %s: expected float32 or bfloat16", base_dtype);
        free(ck_dir), free(ck_run);
        return lg_cli_fail();
    }
    if (base_bf16 && full) {
        lg_errorf("--base-dtype bfloat16: full fine-tuning trains every weight, so none stays frozen; drop the "
                  "option or use an adapter method");
        free(ck_dir), free(ck_run);
        return lg_cli_fail();
    }
    if (base_bf16 && ckpt && (mi == 5 || is_ga)) { /* their checkpoint holds the offset W in float32 */
        lg_errorf("--base-dtype bfloat16 with --%s: not supported for %s (its checkpoint keeps the offset base "
                  "weights in float32); use --base-dtype float32",
                  resume ? "resume" : save_every > 0 ? "save-every" : "stop-after", method);
        free(ck_dir), free(ck_run);
        return lg_cli_fail();
    }
    lg_ga_opts go;
    lg_ga_opts_default(&go);
    if (is_ga && (lg_ga_parse_mode(ga_mode, &go.mode) || lg_ga_parse_direction(ga_dir, &go.direction) ||
                  lg_ga_parse_scale(ga_scale, &go.scale) || lg_ga_parse_variant(ga_variant, &go.variant))) {
        lg_errorf_prefix("LoRA-GA option");
        return lg_cli_fail();
    }

    lg_model *m = NULL;
    lg_tokenizer *t = NULL;
    lg_dataset *d = NULL, *vd = NULL;
    lg_adapters *ad = NULL;
    char *base_name = NULL, *resolved_targets = NULL;
    cJSON *rec = NULL; /* run.json */
    lg_opt_tensor *ot = NULL;
    char *tmp = NULL, *metrics = NULL;
    int rc = 1, nt = 0;
    const int root = lg_dist_rank() == 0; /* dist: only rank 0 writes RUNDIR; the others a scratch dir */
    lg_ckpt_spec spec = {0};
    cJSON *cfg = ckpt ? cJSON_CreateObject() : NULL; /* what a resume must match */
    const lg_model_opts model_opts = {prec};
    if (lg_model_load(model, &model_opts, &m) != 0) goto done;
    if (root) fprintf(stderr, "precision: %s\n", lg_ops_describe(lg_model_ops(m)));
    char model_hx[17]; /* identities, taken before any init offsets the weights */
    snprintf(model_hx, sizeof model_hx, "%016" PRIx64, lg_ckpt_model_id(m));
    base_name = lg_base_model_name(model);
    if (cfg) {
        uint64_t id;
        char hx[17];
        cJSON_AddStringToObject(cfg, "base model checksum", model_hx);
        if (lg_ckpt_file_id(data, &id) != 0) goto done;
        snprintf(hx, sizeof hx, "%016" PRIx64, id);
        cJSON_AddStringToObject(cfg, "data checksum", hx);
    }
    const lg_config *c = lg_model_config(m);
    if (o.seq_len > c->max_seq) {
        lg_errorf("--seq-len %d exceeds the model's maximum length %d", o.seq_len, c->max_seq);
        goto done;
    }
    if (lg_tokenizer_load(tokp ? tokp : model, &t) != 0) goto done;
    if (lg_tokenizer_vocab_size(t) > c->vocab_size) {
        lg_errorf("tokenizer has %d tokens but the model's vocab_size is %d", lg_tokenizer_vocab_size(t),
                  c->vocab_size);
        goto done;
    }
    lg_data_opts dopt = {0};
    dopt.max_len = o.seq_len;
    dopt.pack = pack;
    dopt.add_bos = lg_cli_tokenizer_adds_bos(t); /* BOS as the tokenizer itself would add it */
    char *chat_tpl = lg_cli_chat_template(model);
    dopt.chat_template = chat_tpl;
    dopt.skip_bad = skip_bad;
    dopt.no_eos = no_eos;
    dopt.add_eos = add_eos || lg_cli_tokenizer_adds_eos(t);
    dopt.val_frac = val_frac;
    dopt.seed = (uint64_t)seed;
    dopt.format = row_format;
    dopt.fields = fm;
    int dl = lg_dataset_load(data, t, &dopt, &d);
    if (dl == 0 && val_data) { /* the whole file is validation data */
        lg_data_opts vopt = dopt;
        vopt.val_frac = 0;
        dl = lg_dataset_load(val_data, t, &vopt, &vd);
    }
    free(chat_tpl);
    if (dl != 0) goto done;
    lg_data_stats st, vst;
    lg_dataset_stats(d, &st);
    lg_data_stats_print(stderr, "data", data, &st, o.seq_len);
    if (vd) {
        lg_dataset_stats(vd, &vst);
        lg_data_stats_print(stderr, "validation data", val_data, &vst, o.seq_len);
    }
    int nval = vd ? lg_dataset_count(vd, LG_SPLIT_TRAIN_FILE) : lg_dataset_count(d, LG_SPLIT_VAL);
    if (o.val_batches == 0 && nval > 0) o.val_batches = (nval + o.batch_size - 1) / o.batch_size;
    if (nval == 0) o.val_batches = 0;
    const int ntrain = lg_dataset_count(d, LG_SPLIT_TRAIN);
    if (epochs > 0) { /* as transformers' Trainer: updates per epoch = ceil(ceil(examples / batch) / accumulation) */
        long per_epoch = ((long)ntrain + o.batch_size - 1) / o.batch_size;
        per_epoch = (per_epoch + o.grad_accum - 1) / o.grad_accum;
        double want = ceil((double)epochs * (double)per_epoch);
        if (want > 2147483647.0) {
            lg_errorf("--epochs %g gives %.0f steps, too many", (double)epochs, want);
            goto done;
        }
        o.steps = steps = LG_MAX(1, (int)want);
        fprintf(stderr, "--epochs %g: %d training examples, %d per update (batch %d x accumulation %d): %ld updates per "
                        "epoch, %d steps\n",
                (double)epochs, ntrain, o.batch_size * o.grad_accum, o.batch_size, o.grad_accum, per_epoch, steps);
    }
    fprintf(stderr, "model %s: %lld parameters; data %s: %d training rows, %d validation rows\n", model,
            (long long)lg_model_numel(m), data, ntrain, nval);
    if (!(tmp = !root ? lg_dist_scratch_dir() : ckpt ? lg_ckpt_outdir_begin(out, ck_dir) : lg_outdir_begin(out)))
        goto done;
    if (lg_dist_size() > 1)
        fprintf(stderr, "data parallel: %d ranks over %s, each computing its share of the global batch of %d rows\n",
                lg_dist_size(), lg_dist_info(), o.batch_size);
    if (cfg) {
        cJSON_AddStringToObject(cfg, "--method", method);
        cJSON_AddStringToObject(cfg, "--precision", lg_precision_name(prec));
        cJSON_AddNumberToObject(cfg, "--seed", seed);
        cJSON_AddNumberToObject(cfg, "--val-frac", lg_ckpt_float(val_frac));
        cJSON_AddBoolToObject(cfg, "--pack", pack);
        cJSON_AddBoolToObject(cfg, "--skip-bad", skip_bad);
        cJSON_AddNumberToObject(cfg, "training rows", lg_dataset_count(d, LG_SPLIT_TRAIN));
        cJSON_AddNumberToObject(cfg, "validation rows", nval);
        if (row_format != LG_FMT_AUTO) cJSON_AddStringToObject(cfg, "--format", format);
        const struct {
            const char *opt, *v;
        } fmap[] = {{"--text-field", fm.text},           {"--prompt-field", fm.prompt},
                    {"--completion-field", fm.completion}, {"--messages-field", fm.messages},
                    {"--conversations-field", fm.conversations}, {"--instruction-field", fm.instruction},
                    {"--input-field", fm.input},         {"--output-field", fm.output},
                    {"--system-field", fm.system}}; /* the mapping decides what the rows mean */
        for (int i = 0; i < 9; i++)
            if (fmap[i].v) cJSON_AddStringToObject(cfg, fmap[i].opt, fmap[i].v);
        if (adapter_dir) {
            char *ap = lg_path_join(adapter_dir, "adapter_model.safetensors");
            uint64_t id;
            int arc = lg_ckpt_file_id(ap, &id);
            free(ap);
            if (arc != 0) goto done;
            char hx[17];
            snprintf(hx, sizeof hx, "%016" PRIx64, id);
            cJSON_AddStringToObject(cfg, "--adapter checksum", hx);
        }
        ck_out = lg_path_join(out, "checkpoint");
    }
    batch_src src = {d, o.batch_size, ga_bs, ntrain, vd};

    if (full) { /* every parameter trains */
        lg_model_set_trainable(m, NULL, NULL);
        nt = lg_model_n_params(m);
        ot = lg_calloc((size_t)nt, sizeof *ot);
        for (int i = 0; i < nt; i++) {
            lg_param *p = lg_model_param(m, i);
            /* no decay on norms and biases, as is customary */
            ot[i] = (lg_opt_tensor){p->name, p->data, p->grad, NULL, NULL, p->numel, 1.0f,
                                    p->ndim == 2 ? o.weight_decay : 0.0f};
        }
    } else {
        lg_model_set_trainable(m, want_none, NULL); /* the base is frozen: no dW anywhere */
        lg_lora_opts lo;
        lg_lora_opts_default(&lo);
        lo.r = rank;
        lo.alpha = alpha;
        lo.dropout = dropout;
        lo.seed = (uint64_t)seed;
        lo.use_rslora = use_rslora || mi == 2 || is_ga; /* the lora-ga preset uses rsLoRA scaling */
        lo.use_dora = use_dora || mi == 4;
        if (targets && !strcmp(targets, "peft")) {
            if (!(lo.targets = lg_config_peft_targets(c))) goto done;
        } else if (targets) {
            lo.targets = targets;
        } else if (is_ga) {
            lo.targets = "all-linear";
        } else {
            lo.targets = lg_config_default_targets(c);
        }
        lo.init = LG_INIT_KAIMING;
        if (init && !strcmp(init, "gaussian")) lo.init = LG_INIT_GAUSSIAN;
        else if (init && strcmp(init, "kaiming")) {
            lg_errorf("--init %s: expected kaiming or gaussian", init);
            goto done;
        }
        if (mi == 5) lo.init = resume ? LG_INIT_NONE : LG_INIT_PISSA; /* a resume restores W_res, A0, B0 */
        if (is_ga) lo.init = LG_INIT_NONE;
        if (mi == 6) {
            lo.init = LG_INIT_ADALORA;
            lo.adalora = 1;
            lo.target_r = target_r;
            lo.total_steps = o.steps;
            lo.tinit = tinit >= 0 ? tinit : o.steps / 10;
            lo.tfinal = tfinal >= 0 ? tfinal : o.steps / 5;
            lo.delta_t = delta_t;
            lo.orth_reg = orth_reg;
        }
        if ((is_ga || mi == 5) && dropout > 0)
            fprintf(stderr, "warning: --dropout %g with %s: the offset base assumes the adapter sees the whole input, "
                            "so dropout on the large initial A0, B0 adds noise the offset cannot cancel (the step-0 "
                            "loss rises); dropout 0 is recommended\n", dropout, method);
        int n_sel = 0;
        if (!adapter_dir) { /* PEFT's target forms; a regex becomes the list of the paths it selects */
            if (lg_targets_resolve(m, lo.targets, &resolved_targets, &n_sel) != 0) goto done;
            targets = lo.targets; /* as resolved, for run.json and the checkpoint */
            lo.targets = resolved_targets;
        }
        if (adapter_dir ? lg_adapters_load_peft(m, adapter_dir, &ad) : lg_adapters_attach(m, &lo, &ad)) goto done;
        if (adapter_dir) { /* its own settings; --method may only say what it already is */
            lo = *lg_adapters_opts(ad);
            if ((mi == 2 && !lo.use_rslora) || (mi == 4 && !lo.use_dora)) {
                lg_errorf("--method %s: %s/adapter_config.json has %s false", method, adapter_dir,
                          mi == 2 ? "use_rslora" : "use_dora");
                goto done;
            }
            rank = lo.r, alpha = lo.alpha, dropout = lo.dropout, use_rslora = lo.use_rslora, use_dora = lo.use_dora;
            targets = lo.targets;
            fprintf(stderr, "continuing the adapter %s: %d layers, r %d, alpha %g%s%s, dropout %g\n", adapter_dir,
                    lg_adapters_count(ad), lo.r, (double)lo.alpha, lo.use_rslora ? ", rsLoRA" : "",
                    lo.use_dora ? ", DoRA" : "", (double)lo.dropout);
        }
        if (cfg) {
            cJSON_AddNumberToObject(cfg, "--rank", lo.r);
            cJSON_AddNumberToObject(cfg, "--alpha", lg_ckpt_float(lo.alpha));
            cJSON_AddNumberToObject(cfg, "--dropout", lg_ckpt_float(lo.dropout));
            cJSON_AddStringToObject(cfg, "--targets", targets);
            cJSON_AddBoolToObject(cfg, "--rslora", lo.use_rslora);
            cJSON_AddBoolToObject(cfg, "--dora", lo.use_dora);
            cJSON_AddStringToObject(cfg, "--init", init ? init : "kaiming");
            if (mi == 3) cJSON_AddNumberToObject(cfg, "--loraplus-ratio", lg_ckpt_float(loraplus));
            if (mi == 6) { /* the rank-budget schedule depends on the total */
                cJSON_AddNumberToObject(cfg, "--steps", (double)lo.total_steps);
                cJSON_AddNumberToObject(cfg, "--target-r", lo.target_r);
                cJSON_AddNumberToObject(cfg, "--tinit", (double)lo.tinit);
                cJSON_AddNumberToObject(cfg, "--tfinal", (double)lo.tfinal);
                cJSON_AddNumberToObject(cfg, "--delta-t", (double)lo.delta_t);
                cJSON_AddNumberToObject(cfg, "--orth-reg", lg_ckpt_float(lo.orth_reg));
            }
            if (is_ga) {
                cJSON_AddNumberToObject(cfg, "--ga-batches", ga_batches);
                cJSON_AddNumberToObject(cfg, "--ga-batch-size", ga_bs);
                cJSON_AddStringToObject(cfg, "--ga-mode", ga_mode);
                cJSON_AddNumberToObject(cfg, "--ga-sketch-k", ga_k);
                cJSON_AddStringToObject(cfg, "--ga-direction", ga_dir);
                cJSON_AddStringToObject(cfg, "--ga-scale", ga_scale);
                cJSON_AddNumberToObject(cfg, "--ga-gamma", lg_ckpt_float(ga_gamma));
                cJSON_AddStringToObject(cfg, "--ga-variant", ga_variant);
            }
        }
        if (is_ga && resume) {
            fprintf(stderr, "LoRA-GA: resuming; the initialisation (A0, B0, offset W) comes from the checkpoint\n");
        } else if (is_ga) {
            go.batches = ga_batches;
            go.batch_size = ga_bs;
            go.seq_len = o.seq_len;
            go.mem_budget = ga_mem;
            go.sketch_k = ga_k;
            go.gamma = ga_gamma;
            go.cache_path = ga_cache;
            go.seed = (uint64_t)seed;
            go.progress = ga_progress;
            char *diag = lg_path_join(tmp, "loraga_diagnostics.jsonl");
            go.diag_path = root ? diag : NULL; /* dist: rank 0 writes the diagnostics */
            lg_ga_report rep;
            uint64_t comm0 = lg_dist_bytes_reduced();
            int grc = lg_loraga_init(m, ad, &go, next_batch, &src, &rep);
            free(diag);
            if (grc != 0) goto done;
            if (lg_dist_size() > 1) /* dist: G or the sketches, summed once */
                fprintf(stderr, "LoRA-GA: %.2f MB all-reduced\n", (lg_dist_bytes_reduced() - comm0) / 1e6);
            fprintf(stderr,
                    "LoRA-GA: %s; estimation %.1fs (%d pass%s, %.1f MB held), factorisation %.1fs, mean loss %.4f\n",
                    rep.from_cache ? "gradient from cache" : "gradient estimated", rep.estimate_seconds, rep.passes,
                    rep.passes == 1 ? "" : "es", rep.extra_bytes / 1048576.0, rep.factorise_seconds, rep.mean_loss);
            fprintf(stderr,
                    "LoRA-GA: top-2r directions hold %.1f%% of ||G||^2 on average (min %.1f%%); first-step "
                    "alignment error %.3f on average (max %.3f)%s; per layer in loraga_diagnostics.jsonl\n",
                    100 * rep.captured_mean, 100 * rep.captured_min, rep.align_err_mean, rep.align_err_max,
                    rep.estimated ? " -- estimated from the sketches, which can read better than the exact optimum"
                                  : "");
            if (rep.zero_gradient)
                fprintf(stderr, "LoRA-GA: %d adapted layer(s) had a zero gradient and are left out of these figures\n",
                        rep.zero_gradient);
        }
        if (save_init && root) {
            char *idir = lg_path_join(tmp, "init_lora_checkpoint");
            int src_rc = lg_mkdir_p(idir) || lg_adapters_save_peft_init(ad, idir, model);
            free(idir);
            if (src_rc) goto done;
        }
        if (base_bf16) /* the base is final now (PiSSA / LoRA-GA offsets applied) */
            fprintf(stderr, "base weights stored as bfloat16: %.1f MB saved\n",
                    lg_model_store_frozen_bf16(m) / 1048576.0);
        float ratio = loraplus > 0 ? loraplus : mi == 3 ? 16.0f : 1.0f;
        if (lg_adapters_opt_tensors(ad, ratio, &ot, &nt) != 0) goto done;
        if (mi == 6) {
            o.after_backward = adalora_hook;
            o.after_backward_ud = ad;
        }
        if (ckpt) lg_ckpt_adapter_spec(ad, mi == 5 || is_ga, &spec);
        fprintf(stderr, "%s: %d adapted layers, %lld trainable parameters\n", method, lg_adapters_count(ad),
                (long long)lg_adapters_numel(ad));
    }
    metrics = lg_path_join(tmp, "metrics.jsonl");
    o.metrics_path = metrics;
    o.on_progress = lg_progress_print;
    o.recompute = recompute;
    char *cfg_txt = NULL;
    if (ckpt) {
        cfg_txt = cJSON_PrintUnformatted(cfg);
        spec.config_json = cfg_txt;
        o.ckpt = &spec;
        o.ckpt_dir = ck_out;
        o.save_every = save_every;
        o.stop_after = stop_after;
        o.resume_dir = ck_dir;
    }
    /* snapshots, the best result, early stopping (run_record.h); in RUNDIR itself when it holds a checkpoint */
    result_src rsrc = {m, full ? NULL : ad, t, base_name, dtype};
    lg_run_tracker trk = {.dir = root && ckpt ? out : tmp, .save_every = save_every, .save_total_limit = save_total_limit,
                          .save_best = save_best, .patience = early_stop, .write = root, .save = save_result,
                          .save_ud = &rsrc};
    lg_run_tracker_init(&trk);
    if (save_every > 0 || save_best || early_stop) {
        o.after_step = lg_run_after_step;
        o.after_step_ud = &trk;
    }
    if (root) { /* run.json: every option as now resolved */
        if (init == NULL && !full) init = "kaiming";
        if (mi == 6) tinit = (int)lg_adapters_opts(ad)->tinit, tfinal = (int)lg_adapters_opts(ad)->tfinal;
        steps = (int)o.steps;
        rec = lg_run_record_new(argc, argv, lg_precision_name(prec));
        cJSON_AddItemToObject(rec, "options", lg_opts_to_json(opts, nopts));
        if (cfg_arg && lg_run_record_file(rec, "config_file", cfg_arg) != 0) goto done;
        cJSON *mo = cJSON_AddObjectToObject(rec, "model");
        char *mp = realpath(model, NULL);
        cJSON_AddStringToObject(mo, "path", mp ? mp : model);
        free(mp);
        cJSON_AddStringToObject(mo, "name", base_name);
        cJSON_AddStringToObject(mo, "checksum", model_hx);
        cJSON_AddNumberToObject(mo, "parameters", (double)lg_model_numel(m));
        if (lg_run_record_file(rec, "data", data) != 0) goto done;
        cJSON *dj = cJSON_GetObjectItemCaseSensitive(rec, "data");
        cJSON_AddNumberToObject(dj, "rows", (double)(st.rows + st.bad_rows));
        cJSON_AddNumberToObject(dj, "skipped", (double)(st.bad_rows + st.dropped));
        cJSON_AddNumberToObject(dj, "truncated", (double)st.truncated);
        cJSON_AddNumberToObject(dj, "training_examples", (double)ntrain);
        cJSON_AddNumberToObject(dj, "training_tokens", (double)st.tokens[0]);
        cJSON_AddNumberToObject(dj, "validation_examples", (double)nval);
        if (val_data && lg_run_record_file(rec, "validation_data", val_data) != 0) goto done;
        if (adapter_dir) {
            char *ap = lg_path_join(adapter_dir, "adapter_model.safetensors");
            int arc = lg_run_record_file(rec, "adapter", ap);
            free(ap);
            if (arc != 0) goto done;
        }
        if (!full) {
            cJSON_AddNumberToObject(rec, "adapted_layers", lg_adapters_count(ad));
            cJSON_AddNumberToObject(rec, "trainable_parameters", (double)lg_adapters_numel(ad));
        }
        if (lg_run_record_write(rec, tmp) != 0) goto done;
    }
    lg_train_result res;
    uint64_t comm0 = lg_dist_bytes_reduced();
    double csec0 = lg_dist_seconds();
    int trc = lg_train(m, ot, nt, &o, next_batch, &src, &res);
    free(cfg_txt);
    if (trc != 0) goto done;
    if (lg_dist_size() > 1 && root && res.steps_done > res.resumed_from) { /* dist: communication cost */
        double nu = (double)(res.steps_done - res.resumed_from);
        fprintf(stderr, "data parallel: %.3f MB all-reduced per update, %.1f ms per update in collectives\n",
                (lg_dist_bytes_reduced() - comm0) / 1e6 / nu, 1e3 * (lg_dist_seconds() - csec0) / nu);
    }
    if (!root) { /* dist: rank 0 reports and writes the outputs */
        rc = 0;
        goto done;
    }
    if (res.resumed_from) fprintf(stderr, "resumed from step %ld of %s\n", res.resumed_from, ck_dir);
    if (res.stopped) {
        fprintf(stderr, "stopped after step %ld (--stop-after) with a checkpoint in %s; continue with --resume %s\n",
                res.steps_done, ck_out, out);
        rc = 0;
        goto done;
    }
    if (res.ended_early)
        fprintf(stderr, "early stop after step %ld: the validation loss has not improved for %d evaluations (best %.4f "
                        "at step %ld)\n",
                res.steps_done, early_stop, trk.best_val, trk.best_step);
    fprintf(stderr, "trained %ld steps in %.1fs: loss %.4f -> %.4f", res.steps_done, res.elapsed, res.first_loss,
            res.last_loss);
    if (!isnan(res.last_val_loss)) fprintf(stderr, ", validation loss %.4f", res.last_val_loss);
    fprintf(stderr, "\n");
    if (save_best && !isnan(trk.best_val))
        fprintf(stderr, "best validation loss %.4f at step %ld: %s/best/\n", trk.best_val, trk.best_step, out);
    char title[128];
    snprintf(title, sizeof title, "loraga train --method %s", method);
    char *svg = lg_path_join(tmp, "loss.svg");
    int prc = lg_plot_loss_svg(metrics, svg, title);
    free(svg);
    if (prc != 0) goto done;
    if (save_result(tmp, &rsrc) != 0) goto done;
    cJSON *rj = cJSON_AddObjectToObject(rec, "result");
    cJSON_AddNumberToObject(rj, "steps", (double)res.steps_done);
    cJSON_AddNumberToObject(rj, "resumed_from", (double)res.resumed_from);
    cJSON_AddBoolToObject(rj, "early_stopped", res.ended_early);
    cJSON_AddNumberToObject(rj, "first_loss", lg_ckpt_float(res.first_loss));
    cJSON_AddNumberToObject(rj, "last_loss", lg_ckpt_float(res.last_loss));
    if (!isnan(res.last_val_loss)) cJSON_AddNumberToObject(rj, "last_val_loss", lg_ckpt_float(res.last_val_loss));
    if (!isnan(trk.best_val)) {
        cJSON_AddNumberToObject(rj, "best_val_loss", lg_ckpt_float(trk.best_val));
        cJSON_AddNumberToObject(rj, "best_step", (double)trk.best_step);
    }
    cJSON_AddNumberToObject(rj, "seconds", res.elapsed);
    if (lg_run_record_write(rec, tmp) != 0) goto done;
    if ((ckpt ? lg_ckpt_outdir_commit(tmp, out) : lg_outdir_commit(tmp, out)) != 0) {
        tmp = NULL;
        goto done;
    }
    tmp = NULL;
    fprintf(stderr, "wrote %s (%s, tokenizer, metrics.jsonl, loss.svg, run.json)\n", out,
            full ? "model.safetensors, config.json" : "adapter_model.safetensors, adapter_config.json");
    rc = 0;
done:
    if (rc) lg_cli_fail();
    if (ckpt && tmp && root) {
        lg_outdir_abort(tmp);
        rmdir(out); /* only when empty: no checkpoint was written */
    } else {
        lg_outdir_abort(tmp);
    }
    lg_ckpt_spec_free(&spec);
    cJSON_Delete(cfg);
    free(ck_dir), free(ck_run), free(ck_out);
    free(metrics);
    free(ot);
    lg_adapters_free(ad);
    lg_dataset_free(d);
    lg_dataset_free(vd);
    cJSON_Delete(rec);
    free(base_name), free(resolved_targets);
    lg_tokenizer_free(t);
    lg_model_free(m);
    return rc;
}

/* Data parallelism (docs/mpi.md): under mpirun every rank runs the whole command on its share of
 * each batch. A rank that fails must end the job: the others would wait for it forever. */
int cmd_train(int argc, char **argv) {
    if (lg_dist_init(&argc, &argv) != 0) return lg_cli_fail();
    lg_dist_quiet_others();
    int rc = train_main(argc, argv);
    lg_yaml_cfg_free(g_yaml);
    g_yaml = NULL;
    if (rc != 0 && lg_dist_size() > 1) lg_dist_abort(rc == 2 ? "invalid command line" : lg_last_error());
    lg_dist_finalize();
    return rc;
}
