/* test_workflow.c — `loraga train` as a fine-tuning workflow (issue 16), end to end through the
 * command on the real stories260K (and SmolLM2 for chat templates when it is cached):
 *   - every data format trains exactly like the canonical rows it stands for (same losses);
 *   - --epochs, --val-data, --eval-every, --early-stop, --save-best, checkpoint-N/ with
 *     --save-total-limit, run.json, the tokenizer beside the adapter;
 *   - --adapter continues an adapter of every kind we save (a zero learning rate gives it back
 *     bit for bit; a real one lowers the loss on new data);
 *   - --targets in PEFT's forms, --config / --print-config, --version, and the Makefile's
 *     order-only dependency check;
 *   - each refusal names what is wrong. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "adapters/lora.h"
#include "adapters/targets.h"
#include "core/util.h"
#include "core/version.h"
#include "io/gguf.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "train/checkpoint.h"
#include "train/run_record.h"

static char *g_tmp; /* scratch directory */
static char *g_hf;  /* stories260K converted, NULL without ../shared/data */

static int sh(char *out, size_t cap, const char *fmt, ...) LG_PRINTF(3, 4);
static int sh(char *out, size_t cap, const char *fmt, ...) {
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    return lg_test_run(cmd, out, cap);
}

static char *tmp_path(const char *name) { return lg_path_join(g_tmp, name); }

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int setup(void **state) {
    (void)state;
    g_tmp = lg_test_tmpdir();
    if (!g_tmp) return -1;
    char *bin = lg_test_shared("llama2c_stories260K/stories260K.bin"),
         *tok = lg_test_shared("llama2c_stories260K/tok512.bin");
    if (bin && tok) {
        g_hf = tmp_path("hf");
        char out[4096];
        if (sh(out, sizeof out, "%s convert --from llama2c --model %s --tokenizer %s --out %s 2>&1", lg_test_bin(),
               bin, tok, g_hf) != 0) {
            fprintf(stderr, "convert failed: %s\n", out);
            return -1;
        }
    }
    free(bin), free(tok);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
    int rc = system(cmd);
    free(g_tmp), free(g_hf);
    return rc == 0 ? 0 : -1;
}

#define NEED_MODEL()                                                                                                   \
    do {                                                                                                               \
        if (!g_hf) {                                                                                                   \
            print_message("skipped: ../shared/data/llama2c_stories260K not found\n");                                  \
            skip();                                                                                                    \
        }                                                                                                              \
    } while (0)

/* "loss/grad_norm[/val_loss]" of every metrics line: what must agree between equivalent runs */
static char *losses(const char *run) {
    char *p = lg_path_join(run, "metrics.jsonl"), *text;
    assert_int_equal(lg_read_file(p, &text, NULL), 0);
    free(p);
    size_t cap = strlen(text) + 1, n = 0;
    char *out = calloc(cap, 1);
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        const char *keys[] = {"\"loss\": ", "\"grad_norm\": ", "\"val_loss\": "};
        for (int k = 0; k < 3; k++) {
            const char *v = strstr(line, keys[k]);
            if (!v) continue;
            v += strlen(keys[k]);
            size_t l = strcspn(v, ",}");
            n += (size_t)snprintf(out + n, cap - n, "%.*s/", (int)l, v);
        }
        n += (size_t)snprintf(out + n, cap - n, "\n");
    }
    free(text);
    return out;
}

static int count_lines(const char *s) {
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

static cJSON *read_json(const char *dir, const char *name) {
    char *p = lg_path_join(dir, name), *text;
    if (lg_read_file(p, &text, NULL) != 0) fail_msg("%s: %s", p, lg_last_error());
    cJSON *j = cJSON_Parse(text);
    assert_non_null(j);
    free(text), free(p);
    return j;
}

static double jnum(const cJSON *j, const char *path) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", path);
    const cJSON *c = j;
    for (char *k = strtok(buf, "."); k; k = strtok(NULL, ".")) c = cJSON_GetObjectItemCaseSensitive(c, k);
    if (!cJSON_IsNumber(c)) fail_msg("%s is not a number", path);
    return c->valuedouble;
}

static const char *jstr(const cJSON *j, const char *path) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", path);
    const cJSON *c = j;
    for (char *k = strtok(buf, "."); k; k = strtok(NULL, ".")) c = cJSON_GetObjectItemCaseSensitive(c, k);
    if (!cJSON_IsString(c)) fail_msg("%s is not a string", path);
    return c->valuestring;
}

static int same_file(const char *a, const char *b) {
    char *x, *y;
    size_t nx, ny;
    if (lg_read_file(a, &x, &nx) != 0) return 0;
    if (lg_read_file(b, &y, &ny) != 0) {
        free(x);
        return 0;
    }
    int same = nx == ny && memcmp(x, y, nx) == 0;
    free(x), free(y);
    return same;
}

/* The same tensors, names and shapes, equal values (-0 == 0: AdaLoRA's pruned ranks are signed zeros) */
static void assert_same_tensors(const char *a, const char *b) {
    lg_safetensors *x, *y;
    assert_int_equal(lg_st_open(a, &x), 0);
    assert_int_equal(lg_st_open(b, &y), 0);
    assert_int_equal(lg_st_count(x), lg_st_count(y));
    for (int i = 0; i < lg_st_count(x); i++) {
        const lg_st_tensor *t = lg_st_get(x, i);
        int64_t n = 1;
        for (int d = 0; d < t->ndim; d++) n *= t->shape[d];
        float *u = malloc((size_t)n * sizeof(float)), *v = malloc((size_t)n * sizeof(float));
        assert_int_equal(lg_st_read_f32(x, t->name, u, t->ndim, t->shape), 0);
        if (lg_st_read_f32(y, t->name, v, t->ndim, t->shape) != 0) fail_msg("%s: %s", b, lg_last_error());
        for (int64_t k = 0; k < n; k++)
            if (u[k] != v[k]) fail_msg("%s[%ld]: %.9g != %.9g", t->name, (long)k, u[k], v[k]);
        free(u), free(v);
    }
    lg_st_close(x), lg_st_close(y);
}

/* SST-2 sentences as rows of each shape (json escaping only needs quotes and backslashes here) */
typedef enum { S_PC, S_ALPACA, S_ALPACA_ARRAY, S_CSV, S_TSV_RAW, S_TEXT, S_PC_RAW } shape;

static char *write_sst2(const char *name, shape k, int first, int count) {
    char *src = lg_test_shared("glue_SST-2/dev.tsv"), *text;
    assert_non_null(src);
    assert_int_equal(lg_read_file(src, &text, NULL), 0);
    char *path = tmp_path(name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    if (k == S_CSV) fputs("review,label\r\n", f);
    if (k == S_TSV_RAW) fputs("sentence\tlabel\n", f);
    if (k == S_ALPACA_ARRAY) fputs("[\n", f);
    char *save = NULL;
    int i = -1, written = 0;
    for (char *ln = strtok_r(text, "\n", &save); ln; ln = strtok_r(NULL, "\n", &save), i++) {
        if (i < first) continue;
        if (i >= first + count) break;
        char *tab = strchr(ln, '\t');
        if (!tab) continue;
        *tab = 0;
        const char *label = tab[1] == '1' ? "positive" : "negative";
        char esc[2048];
        size_t n = 0;
        for (char *c = ln; *c && n + 3 < sizeof esc; c++) {
            if (k == S_CSV ? *c == '"' : *c == '"' || *c == '\\') esc[n++] = k == S_CSV ? '"' : '\\';
            esc[n++] = *c;
        }
        esc[n] = 0;
        switch (k) {
        case S_PC:
            fprintf(f,
                    "{\"prompt\": \"Below is an instruction that describes a task, paired with an input that provides "
                    "further context. Write a response that appropriately completes the request.\\n\\n### "
                    "Instruction:\\nIs this review positive or negative?\\n\\n### Input:\\n%s\\n\\n### Response:\\n\", "
                    "\"completion\": \"%s\"}\n",
                    esc, label);
            break;
        case S_ALPACA:
        case S_ALPACA_ARRAY:
            fprintf(f, "%s{\"instruction\": \"Is this review positive or negative?\", \"input\": \"%s\", \"output\": "
                       "\"%s\"}\n",
                    k == S_ALPACA_ARRAY && written ? "," : "", esc, label);
            break;
        case S_CSV: fprintf(f, "\"%s\",%s\r\n", esc, label); break;
        case S_TSV_RAW: fprintf(f, "%s\t%s\n", ln, label); break;
        case S_TEXT: fprintf(f, "{\"text\": \"%s\"}\n", esc); break;
        case S_PC_RAW: fprintf(f, "{\"prompt\": \"%s\", \"completion\": \"%s\"}\n", esc, label); break;
        }
        written++;
    }
    if (k == S_ALPACA_ARRAY) fputs("]\n", f);
    fclose(f);
    free(text), free(src);
    return path;
}

#define TRAIN "OMP_NUM_THREADS=1 %s train --model %s --seq-len 96 --batch-size 4 --rank 4 --seed 3 "

/* ---- no data needed ------------------------------------------------------------------------ */

static void test_version_and_make(void **state) {
    (void)state;
    char out[8192];
    assert_int_equal(sh(out, sizeof out, "%s --version", lg_test_bin()), 0);
    char want[128];
    snprintf(want, sizeof want, "loraga %s (git ", LG_VERSION);
    if (strncmp(out, want, strlen(want))) fail_msg("--version printed: %s", out);
    /* compilation waits for the dependency check: with everything forced (-B) and nothing run
     * (-n), the check comes before the first compiler line, even when only an object is asked for */
    if (access("Makefile", R_OK) != 0) {
        print_message("skipped: no Makefile in the working directory\n");
        return;
    }
    static char plan[65536];
    assert_int_equal(sh(plan, sizeof plan,
                        "env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -n -B -j2 build/obj/src/core/util.o "
                        "build/san/src/core/util.o 2>&1"),
                     0);
    const char *dep = strstr(plan, "install-deps.sh"), *cc = strstr(plan, "-c src/core/util.c");
    if (!dep || !cc || dep > cc) fail_msg("the dependency check must come before compiling:\n%s", plan);
}

/* PEFT's three target forms on a tiny random LLaMA (2 layers, 7 linear layers each). */
static void test_targets_forms(void **state) {
    (void)state;
    lg_config c = lg_test_tiny_config(LG_ARCH_LLAMA, 32, 2);
    lg_model *m;
    assert_int_equal(lg_model_create(&c, NULL, 1, NULL, &m), 0);
    const struct {
        const char *spec;
        int n; /* layers selected; -1: refused */
        const char *msg;
    } cases[] = {
        {"q_proj,v_proj", 4, NULL},
        {"self_attn.q_proj", 2, NULL},
        {"model.layers.1.mlp.down_proj", 1, NULL},
        {"all-linear", 14, NULL},
        {".*\\.(q_proj|v_proj)", 4, NULL},
        {"model\\.layers\\.0\\..*", 7, NULL},
        {"q", -1, "'q' matches no linear layer of the model; its modules are: q_proj, k_proj, v_proj, o_proj, "
                  "gate_proj, up_proj, down_proj"},
        {"q_proj,attn", -1, "'attn' matches no"},
        {"layers\\.0", -1, "the regex 'layers\\.0' matches no"}, /* a regex must match the whole path */
        {"(q_proj", -1, "not a valid regular expression"},
        {" , ", -1, "no module names"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *t = NULL;
        int n = -1;
        int rc = lg_targets_resolve(m, cases[i].spec, &t, &n);
        if (cases[i].n < 0) {
            if (rc == 0) fail_msg("'%s' should be refused", cases[i].spec);
            if (!strstr(lg_last_error(), cases[i].msg))
                fail_msg("'%s': \"%s\" should say \"%s\"", cases[i].spec, lg_last_error(), cases[i].msg);
            continue;
        }
        if (rc) fail_msg("'%s': %s", cases[i].spec, lg_last_error());
        assert_int_equal(n, cases[i].n);
        /* attach selects exactly those layers */
        lg_lora_opts o;
        lg_lora_opts_default(&o);
        o.targets = t;
        lg_adapters *ad;
        assert_int_equal(lg_adapters_attach(m, &o, &ad), 0);
        assert_int_equal(lg_adapters_count(ad), cases[i].n);
        if (lg_targets_is_regex(cases[i].spec))
            for (int k = 0; k < lg_adapters_count(ad); k++) {
                const char *nm = lg_adapters_get(ad, k)->lin->name;
                int want = strstr(cases[i].spec, "q_proj") ? strstr(nm, "q_proj") || strstr(nm, "v_proj")
                                                            : !strncmp(nm, "model.layers.0.", 15);
                if (!want) fail_msg("'%s' selected %s", cases[i].spec, nm);
            }
        lg_adapters_free(ad);
        free(t);
    }
    lg_model_free(m);
}

/* base_model_name_or_path: the model's own name where it has a meaningful one, else its absolute path. */
static void test_base_model_name(void **state) {
    (void)state;
    char *d = tmp_path("named"), *cfg = lg_path_join(d, "config.json"), *abs = NULL, *n;
    assert_int_equal(lg_mkdir_p(d), 0);
    abs = realpath(d, NULL);
    const struct {
        const char *config, *want; /* want NULL: the directory's absolute path */
    } cases[] = {
        {"{\"_name_or_path\": \"HuggingFaceTB/SmolLM2-135M-Instruct\"}", "HuggingFaceTB/SmolLM2-135M-Instruct"},
        {"{\"_name_or_path\": \"gpt2\"}", "gpt2"},
        {"{\"_name_or_path\": \"/fsx/someone/checkpoints/run7\"}", NULL}, /* another machine's path */
        {"{\"_name_or_path\": \"\"}", NULL},
        {"{\"model_type\": \"llama\"}", NULL},
        {"not json", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_text(cfg, cases[i].config);
        n = lg_base_model_name(d);
        assert_string_equal(n, cases[i].want ? cases[i].want : abs);
        free(n);
    }
    /* a local path that exists here: made absolute */
    char conf[1200];
    snprintf(conf, sizeof conf, "{\"_name_or_path\": \"%s\"}", g_tmp);
    write_text(cfg, conf);
    n = lg_base_model_name(d);
    char *t = realpath(g_tmp, NULL);
    assert_string_equal(n, t);
    free(t), free(n);
    /* a file without a name (a llama2.c checkpoint): its absolute path */
    n = lg_base_model_name(cfg);
    t = realpath(cfg, NULL);
    assert_string_equal(n, t);
    free(t), free(n), free(abs), free(cfg), free(d);
}

/* --print-config writes what --config reads back; flags override the file; refusals name FILE:LINE. */
static void test_config_yaml(void **state) {
    (void)state;
    static char out[16384], again[16384];
    char *cfg = tmp_path("run.yaml");
    assert_int_equal(sh(out, sizeof out,
                        "%s train --model m --data d.jsonl --method lora-ga --epochs 2 --targets '.*\\.(q_proj|v_proj)' "
                        "--out r --print-config > %s",
                        lg_test_bin(), cfg),
                     0);
    char *text;
    assert_int_equal(lg_read_file(cfg, &text, NULL), 0);
    /* resolved: lora-ga's learning rate, steps decided by --epochs */
    assert_non_null(strstr(text, "\nlr: 5e-05\n"));
    assert_non_null(strstr(text, "\nsteps: null\n"));
    assert_non_null(strstr(text, "\nepochs: 2\n"));
    assert_non_null(strstr(text, "\ntargets: .*\\.(q_proj|v_proj)\n"));
    assert_int_equal(sh(again, sizeof again, "%s train --config %s --print-config", lg_test_bin(), cfg), 0);
    assert_string_equal(again, text);
    /* the command line wins; lists join with ','; '_' is '-' */
    char *c2 = tmp_path("list.yaml");
    write_text(c2, "model: m\nbatch_size: 2\ntargets: [q_proj, v_proj]\npack: yes\nlr: 1e-3\n");
    assert_int_equal(sh(out, sizeof out, "%s train --config %s --lr 2e-3 --print-config", lg_test_bin(), c2), 0);
    assert_non_null(strstr(out, "\nbatch-size: 2\n"));
    assert_non_null(strstr(out, "\ntargets: q_proj,v_proj\n"));
    assert_non_null(strstr(out, "\npack: true\n"));
    assert_non_null(strstr(out, "\nlr: 0.002\n"));
    const struct {
        const char *yaml, *msg;
    } bad[] = {
        {"model: m\nlerning_rate: 3\n", "bad.yaml:2: 'lerning_rate' is not an option"},
        {"model: m\nlr: abc\n", "bad.yaml:2: the value of 'lr' is not valid"},
        {"steps: 3\nsteps: 4\n", "bad.yaml:2: 'steps' is given twice"},
        {"model: [m\n", "bad.yaml:2: not valid YAML"},
        {"pack: maybe\n", "bad.yaml:1: 'pack' is a flag: true or false, not 'maybe'"},
        {"lora:\n  r: 8\n", "bad.yaml:2: 'lora': a nested mapping is not an option value"},
        {"config: other.yaml\n", "bad.yaml:1: 'config' is not allowed in a config file"},
        {"- lr\n", "bad.yaml:1: the configuration must be a mapping"},
    };
    char *b = tmp_path("bad.yaml");
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_text(b, bad[i].yaml);
        assert_int_equal(sh(out, sizeof out, "%s train --config %s --print-config 2>&1", lg_test_bin(), b), 1);
        if (!strstr(out, bad[i].msg)) fail_msg("'%s': expected \"%s\" in: %s", bad[i].yaml, bad[i].msg, out);
    }
    assert_int_equal(sh(out, sizeof out, "%s train --config %s/none.yaml 2>&1", lg_test_bin(), g_tmp), 1);
    assert_non_null(strstr(out, "none.yaml"));
    free(text), free(cfg), free(c2), free(b);
}

/* Option combinations refused before anything is loaded. */
static void test_option_refusals(void **state) {
    (void)state;
    const struct {
        const char *args, *msg;
    } bad[] = {
        {"--epochs 2 --steps 10", "--epochs and --steps: give one"},
        {"--epochs -1", "--epochs must be > 0"},
        {"--val-data v.jsonl --val-frac 0.1", "--val-data and --val-frac: give one"},
        {"--early-stop 2 --eval-every 5", "--early-stop needs validation data"},
        {"--save-best", "--save-best needs validation data"},
        {"--early-stop 2 --val-frac 0.1", "--early-stop needs --eval-every"},
        {"--save-total-limit 2", "give --save-every N"},
        {"--adapter a --rank 4", "--rank with --adapter: the adapter's own settings apply"},
        {"--adapter a --targets q_proj", "--targets with --adapter"},
        {"--adapter a --method lora-ga", "--method lora-ga would initialise a new one"},
        {"--format vicuna", "--format vicuna: expected text, prompt-completion"},
    };
    char out[4096];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = sh(out, sizeof out, "%s train --model m --data d.jsonl --out %s/never %s 2>&1", lg_test_bin(), g_tmp,
                    bad[i].args);
        assert_int_equal(rc, 1);
        if (!strstr(out, bad[i].msg)) fail_msg("%s: expected \"%s\" in: %s", bad[i].args, bad[i].msg, out);
    }
    char *never = tmp_path("never");
    assert_false(lg_file_exists(never));
    free(never);
}

/* ---- stories260K ------------------------------------------------------------------------------ */

/* Alpaca (JSONL and a JSON array), CSV with mapped columns and the prompt-completion rows they
 * stand for train identically: the same loss and gradient norm at every step. */
static void test_formats_train_alike(void **state) {
    (void)state;
    NEED_MODEL();
    char *pc = write_sst2("pc.jsonl", S_PC, 0, 40), *al = write_sst2("alpaca.jsonl", S_ALPACA, 0, 40),
         *arr = write_sst2("alpaca.json", S_ALPACA_ARRAY, 0, 40), *csv = write_sst2("reviews.csv", S_CSV, 0, 40);
    static char out[16384];
    const struct {
        const char *name, *data, *extra, *says;
    } runs[] = {
        {"f_pc", pc, "", "prompt-completion 40)"},
        {"f_alpaca", al, "", "(alpaca 40, with the Alpaca prompt)"},
        {"f_array", arr, "", "(alpaca 40, with the Alpaca prompt)"},
        {"f_csv", csv,
         "--input-field review --output-field label --instruction-field instr --format alpaca", NULL},
    };
    char *ref = NULL;
    for (int i = 0; i < 4; i++) {
        char *run = tmp_path(runs[i].name);
        const char *data = runs[i].data;
        char fixed[600];
        if (i == 3) { /* CSV: the instruction is a column too */
            char *p2 = tmp_path("reviews2.csv"), *text;
            assert_int_equal(lg_read_file(data, &text, NULL), 0);
            FILE *f = fopen(p2, "w");
            char *save = NULL;
            int first = 1;
            for (char *ln = strtok_r(text, "\n", &save); ln; ln = strtok_r(NULL, "\n", &save), first = 0)
                fprintf(f, "%s,%s\n", first ? "instr" : "Is this review positive or negative?", ln);
            fclose(f);
            free(text);
            snprintf(fixed, sizeof fixed, "%s", p2);
            data = fixed;
            free(p2);
        }
        /* the Alpaca prompt alone is ~130 tokens of stories260K's tokenizer */
        int rc = sh(out, sizeof out, TRAIN "--seq-len 256 --data %s %s --steps 4 --lr 3e-3 --out %s 2>&1", lg_test_bin(),
                    g_hf, data, runs[i].extra, run);
        if (rc) fail_msg("%s: %s", runs[i].name, out);
        if (runs[i].says && !strstr(out, runs[i].says)) fail_msg("%s: expected '%s' in: %s", runs[i].name, runs[i].says, out);
        char *l = losses(run);
        assert_int_equal(count_lines(l), 4);
        if (!ref) ref = l;
        else {
            if (strcmp(ref, l)) fail_msg("%s trains differently:\n%s\nvs prompt-completion:\n%s", runs[i].name, l, ref);
            free(l);
        }
        free(run);
    }
    print_message("alpaca, alpaca array, csv == prompt-completion:\n%s", ref);
    /* the raw GLUE TSV with its own column names: mapped, or refused naming its columns */
    char *tsv = write_sst2("sst2.tsv", S_TSV_RAW, 0, 40), *run = tmp_path("f_tsv");
    assert_int_equal(sh(out, sizeof out, TRAIN "--data %s --steps 2 --out %s 2>&1", lg_test_bin(), g_hf, tsv, run), 1);
    assert_non_null(strstr(out, "sst2.tsv:2: the row has none of the accepted shapes (its keys: \"sentence\", \"label\")"));
    assert_false(lg_file_exists(run));
    int rc = sh(out, sizeof out, TRAIN "--data %s --prompt-field sentence --completion-field label --steps 2 --out %s 2>&1",
                lg_test_bin(), g_hf, tsv, run);
    if (rc) fail_msg("%s", out);
    assert_non_null(strstr(out, "data "));
    assert_non_null(strstr(out, "40 rows read (prompt-completion 40)"));
    /* eval reads it the same way: the same loss as the JSONL rows it stands for */
    char *raw = write_sst2("sst2_pc.jsonl", S_PC_RAW, 0, 40);
    static char e1[4096], e2[4096];
    assert_int_equal(sh(e1, sizeof e1, "%s eval --model %s --data %s --prompt-field sentence --completion-field label "
                                       "--json", lg_test_bin(), g_hf, tsv), 0);
    assert_int_equal(sh(e2, sizeof e2, "%s eval --model %s --data %s --json", lg_test_bin(), g_hf, raw), 0);
    char *s1 = strstr(e1, ", \"seconds\""), *s2 = strstr(e2, ", \"seconds\""); /* all but the time */
    assert_non_null(s1);
    assert_non_null(s2);
    *s1 = *s2 = 0;
    assert_string_equal(e1, e2);
    free(raw);
    free(ref), free(pc), free(al), free(arr), free(csv), free(tsv), free(run);
}

/* --targets through the command: a regex selects by whole path; a name that matches nothing is
 * refused with the model's modules. */
static void test_targets_cli(void **state) {
    (void)state;
    NEED_MODEL();
    char *data = write_sst2("t_rows.jsonl", S_TEXT, 0, 16), *run = tmp_path("t_regex"), *never = tmp_path("t_never");
    static char out[16384];
    int rc = sh(out, sizeof out, TRAIN "--data %s --targets 'model\\.layers\\.0\\..*' --steps 1 --out %s 2>&1",
                lg_test_bin(), g_hf, data, run);
    if (rc) fail_msg("%s", out);
    assert_non_null(strstr(out, "lora: 7 adapted layers"));
    cJSON *ac = read_json(run, "adapter_config.json");
    const cJSON *tm = cJSON_GetObjectItemCaseSensitive(ac, "target_modules"), *e;
    assert_int_equal(cJSON_GetArraySize(tm), 7);
    cJSON_ArrayForEach(e, tm) assert_int_equal(strncmp(e->valuestring, "model.layers.0.", 15), 0);
    cJSON_Delete(ac);
    cJSON *rec = read_json(run, "run.json");
    assert_string_equal(jstr(rec, "options.targets"), "model\\.layers\\.0\\..*");
    cJSON_Delete(rec);
    assert_int_equal(sh(out, sizeof out, TRAIN "--data %s --targets q --steps 1 --out %s 2>&1", lg_test_bin(), g_hf,
                        data, never),
                     1);
    assert_non_null(strstr(out, "--targets: 'q' matches no linear layer of the model; its modules are: q_proj, k_proj"));
    assert_false(lg_file_exists(never));
    free(data), free(run), free(never);
}

/* --epochs, --val-data, --eval-every, --early-stop, --save-best, checkpoint-N/ + --save-total-limit,
 * run.json, the tokenizer beside the adapter. */
static void test_epochs_validation_snapshots(void **state) {
    (void)state;
    NEED_MODEL();
    char *train = write_sst2("e_train.jsonl", S_PC_RAW, 0, 60), *val = write_sst2("e_val.jsonl", S_PC_RAW, 100, 24);
    char *run = tmp_path("e_run");
    static char out[32768];
    /* lr 1e-2 overfits quickly: validation gets worse, and patience 2 stops the run */
    int rc = sh(out, sizeof out,
                TRAIN "--data %s --val-data %s --epochs 3 --lr 1e-2 --eval-every 3 --early-stop 2 --save-best "
                      "--save-every 4 --save-total-limit 2 --out %s 2>&1",
                lg_test_bin(), g_hf, train, val, run);
    if (rc) fail_msg("%s", out);
    const char *ep = strstr(out, "--epochs 3:");
    assert_non_null(ep);
    print_message("%.*s\n", (int)strcspn(ep, "\n"), ep);
    /* 60 rows -> 15 updates of 4 per epoch -> 45 steps */
    cJSON *rec = read_json(run, "run.json");
    long ntrain = (long)jnum(rec, "data.training_examples");
    long per_epoch = (ntrain + 3) / 4;
    char want[256];
    snprintf(want, sizeof want, "--epochs 3: %ld training examples, 4 per update (batch 4 x accumulation 1): %ld updates "
                                "per epoch, %ld steps", ntrain, per_epoch, 3 * per_epoch);
    if (!strstr(out, want)) fail_msg("expected '%s' in: %s", want, out);
    assert_int_equal((long)jnum(rec, "options.steps"), 3 * per_epoch);
    /* the validation losses in metrics.jsonl decide: best step, and where patience ran out */
    char *mp = lg_path_join(run, "metrics.jsonl"), *mt;
    assert_int_equal(lg_read_file(mp, &mt, NULL), 0);
    double best = INFINITY;
    long best_step = 0, last_step = 0, bad = 0, stop = 0;
    for (char *line = strtok(mt, "\n"); line; line = strtok(NULL, "\n")) {
        last_step = atol(strstr(line, "\"step\": ") + 8);
        const char *v = strstr(line, "\"val_loss\": ");
        if (!v) continue;
        double vl = atof(v + 12);
        if (vl < best) best = vl, best_step = last_step, bad = 0;
        else if (++bad >= 2 && !stop) stop = last_step;
    }
    free(mt), free(mp);
    assert_true(stop > 0); /* the run did overfit */
    assert_int_equal(last_step, stop);
    assert_true(stop < 3 * per_epoch);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(rec, "result"), "early_stopped")));
    assert_int_equal((long)jnum(rec, "result.best_step"), best_step);
    assert_int_equal((long)jnum(rec, "result.steps"), stop);
    snprintf(want, sizeof want, "early stop after step %ld: the validation loss has not improved for 2 evaluations", stop);
    if (!strstr(out, want)) fail_msg("expected '%s' in: %s", want, out);
    /* best/: the adapter of the best step, its state saying so */
    char *bd = lg_path_join(run, "best");
    cJSON *bs = read_json(bd, "trainer_state.json");
    assert_int_equal((long)jnum(bs, "global_step"), best_step);
    assert_float_equal(jnum(bs, "eval_loss"), best, 1e-6 * best);
    cJSON_Delete(bs);
    /* checkpoint-N/: every 4 steps and the last, only the newest 2 kept */
    long expect[2] = {stop % 4 ? stop / 4 * 4 : stop - 4, stop};
    for (long s = 1; s <= stop; s++) {
        char name[64];
        snprintf(name, sizeof name, "checkpoint-%ld", s);
        char *p = lg_path_join(run, name);
        int kept = s == expect[0] || s == expect[1];
        if (lg_is_dir(p) != kept) fail_msg("%s: %s", name, kept ? "missing" : "should have been removed");
        if (kept) {
            cJSON *ts = read_json(p, "trainer_state.json");
            assert_int_equal((long)jnum(ts, "global_step"), s);
            cJSON_Delete(ts);
            char *ac = lg_path_join(p, "adapter_model.safetensors"), *tk = lg_path_join(p, "tokenizer.json");
            assert_true(lg_file_exists(ac) && lg_file_exists(tk));
            free(ac), free(tk);
        }
        free(p);
    }
    /* the final adapter is the last step's: the same as its checkpoint-N */
    char a[700], b[700];
    snprintf(a, sizeof a, "%s/adapter_model.safetensors", run);
    snprintf(b, sizeof b, "%s/checkpoint-%ld/adapter_model.safetensors", run, stop);
    assert_true(same_file(a, b));
    /* run.json: what a run needs to be redone */
    const char *need[] = {"tokenizer.json", "tokenizer_config.json", "adapter_config.json", "loss.svg"};
    for (int i = 0; i < 4; i++) {
        char *p = lg_path_join(run, need[i]);
        if (!lg_file_exists(p)) fail_msg("missing %s", p);
        free(p);
    }
    assert_string_equal(jstr(rec, "loraga_version"), LG_VERSION);
    assert_string_equal(jstr(rec, "git_commit"), lg_git_commit());
    assert_string_equal(jstr(rec, "precision"), "fp32");
    assert_true(jnum(rec, "threads") >= 1);
    assert_non_null(strstr(jstr(rec, "command"), "--early-stop 2 --save-best"));
    uint64_t id;
    assert_int_equal(lg_ckpt_file_id(train, &id), 0);
    snprintf(want, sizeof want, "%016lx", (unsigned long)id);
    assert_string_equal(jstr(rec, "data.checksum"), want);
    assert_int_equal(lg_ckpt_file_id(val, &id), 0);
    snprintf(want, sizeof want, "%016lx", (unsigned long)id);
    assert_string_equal(jstr(rec, "validation_data.checksum"), want);
    assert_int_equal(strlen(jstr(rec, "model.checksum")), 16);
    assert_float_equal(jnum(rec, "options.lr"), 1e-2, 1e-9);
    assert_string_equal(jstr(rec, "options.targets"), "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj");
    /* base_model_name_or_path: the converted directory has no _name_or_path: its absolute path */
    cJSON *ac = read_json(run, "adapter_config.json");
    char *abs = realpath(g_hf, NULL);
    assert_string_equal(jstr(ac, "base_model_name_or_path"), abs);
    free(abs);
    cJSON_Delete(ac);
    /* the best adapter is a working PEFT adapter: eval loads it */
    assert_int_equal(sh(out, sizeof out, "%s eval --model %s --adapter %s --data %s --json", lg_test_bin(), g_hf, bd, val), 0);
    assert_non_null(strstr(out, "\"loss\""));
    cJSON_Delete(rec);
    free(bd), free(train), free(val), free(run);
}

/* A resumed run keeps checkpoint-N/ of its first leg and its best so far. */
static void test_snapshots_survive_resume(void **state) {
    (void)state;
    NEED_MODEL();
    char *train = write_sst2("r_train.jsonl", S_PC_RAW, 0, 40), *val = write_sst2("r_val.jsonl", S_PC_RAW, 100, 12);
    char *run = tmp_path("r_run");
    static char out[16384];
    const char *common = TRAIN "--data %s --val-data %s --steps 8 --lr 3e-3 --eval-every 2 --save-best --save-every 2 ";
    char fmt[512];
    snprintf(fmt, sizeof fmt, "%s--stop-after 4 --out %%s 2>&1", common);
    int rc = sh(out, sizeof out, fmt, lg_test_bin(), g_hf, train, val, run);
    if (rc) fail_msg("%s", out);
    char *c4 = lg_path_join(run, "checkpoint-4");
    assert_true(lg_is_dir(c4));
    snprintf(fmt, sizeof fmt, "%s--resume %%s 2>&1", common);
    rc = sh(out, sizeof out, fmt, lg_test_bin(), g_hf, train, val, run);
    if (rc) fail_msg("%s", out);
    for (int s = 2; s <= 8; s += 2) {
        char name[64];
        snprintf(name, sizeof name, "checkpoint-%d", s);
        char *p = lg_path_join(run, name);
        if (!lg_is_dir(p)) fail_msg("%s missing after the resume", name);
        free(p);
    }
    cJSON *rec = read_json(run, "run.json");
    assert_int_equal((long)jnum(rec, "result.resumed_from"), 4);
    cJSON *bs = read_json(run, "best/trainer_state.json");
    assert_int_equal((long)jnum(bs, "global_step"), (long)jnum(rec, "result.best_step"));
    cJSON_Delete(bs), cJSON_Delete(rec);
    free(c4), free(train), free(val), free(run);
}

/* --adapter continues every kind of adapter we save: with lr 0 the adapter comes back bit for bit
 * (nothing lost on the way in or out); with a real rate it learns the new data. */
static void test_adapter_continues(void **state) {
    (void)state;
    NEED_MODEL();
    char *a = write_sst2("a_first.jsonl", S_PC_RAW, 0, 40), *b = write_sst2("a_new.jsonl", S_TEXT, 200, 40);
    static char out[16384];
    /* the kinds of adapter we save: plain (lora, rslora, loraplus), DoRA, relative to the original
     * base at rank 2r (lora-ga, pissa), AdaLoRA folded into plain LoRA */
    const char *methods[] = {"lora", "dora", "lora-ga", "adalora"};
    for (int i = 0; i < 4; i++) {
        char first[600], same[600], more[600];
        snprintf(first, sizeof first, "%s/ad_%s", g_tmp, methods[i]);
        snprintf(same, sizeof same, "%s/ad_%s_lr0", g_tmp, methods[i]);
        snprintf(more, sizeof more, "%s/ad_%s_more", g_tmp, methods[i]);
        int rc = sh(out, sizeof out, TRAIN "--data %s --method %s --steps 3 --lr 3e-3 --ga-batches 2 --target-r 2 --out %s 2>&1",
                    lg_test_bin(), g_hf, a, methods[i], first);
        if (rc) fail_msg("%s: %s", methods[i], out);
        rc = sh(out, sizeof out, "OMP_NUM_THREADS=1 %s train --model %s --adapter %s --data %s --steps 1 --lr 0 "
                                 "--batch-size 2 --seq-len 64 --out %s 2>&1",
                lg_test_bin(), g_hf, first, b, same);
        if (rc) fail_msg("%s --adapter: %s", methods[i], out);
        assert_non_null(strstr(out, "continuing the adapter"));
        char x[700], y[700];
        snprintf(x, sizeof x, "%s/adapter_model.safetensors", first);
        snprintf(y, sizeof y, "%s/adapter_model.safetensors", same);
        assert_same_tensors(x, y);
        cJSON *c1 = read_json(first, "adapter_config.json"), *c2 = read_json(same, "adapter_config.json");
        assert_int_equal((int)jnum(c1, "r"), (int)jnum(c2, "r"));
        assert_float_equal(jnum(c1, "lora_alpha"), jnum(c2, "lora_alpha"), 1e-6 * jnum(c1, "lora_alpha"));
        cJSON_Delete(c1), cJSON_Delete(c2);
        /* on the new data it keeps learning: lower held-out... here, training-data loss than before */
        rc = sh(out, sizeof out, "OMP_NUM_THREADS=1 %s train --model %s --adapter %s --data %s --steps 5 --lr 3e-3 "
                                 "--batch-size 4 --seq-len 64 --out %s 2>&1",
                lg_test_bin(), g_hf, first, b, more);
        if (rc) fail_msg("%s --adapter: %s", methods[i], out);
        static char e1[4096], e2[4096];
        assert_int_equal(sh(e1, sizeof e1, "%s eval --model %s --adapter %s --data %s --json", lg_test_bin(), g_hf, first, b), 0);
        assert_int_equal(sh(e2, sizeof e2, "%s eval --model %s --adapter %s --data %s --json", lg_test_bin(), g_hf, more, b), 0);
        double l1 = atof(strstr(e1, "\"loss\": ") + 8), l2 = atof(strstr(e2, "\"loss\": ") + 8);
        print_message("--adapter %-8s: loss on the new data %.4f -> %.4f after 5 more steps\n", methods[i], l1, l2);
        assert_true(l2 < l1);
    }
    /* refusals */
    char *never = tmp_path("ad_never");
    assert_int_equal(sh(out, sizeof out, "%s train --model %s --data %s --adapter %s/nowhere --steps 1 --out %s 2>&1",
                        lg_test_bin(), g_hf, b, g_tmp, never),
                     1);
    assert_non_null(strstr(out, "nowhere/adapter_config.json"));
    assert_int_equal(sh(out, sizeof out, "%s train --model %s --data %s --adapter %s/ad_lora --method dora --steps 1 --out %s 2>&1",
                        lg_test_bin(), g_hf, b, g_tmp, never), 1);
    assert_non_null(strstr(out, "use_dora false"));
    assert_false(lg_file_exists(never));
    free(never), free(a), free(b);
}

/* Chat shapes through the command on SmolLM2 (its own ChatML template): ShareGPT (in a JSON array)
 * and Alpaca rows give exactly the loss of the {"messages"} rows they stand for. */
static char *find_smollm2(void) {
    const char *env = getenv("LORAGA_SMOLLM2"), *home = getenv("HOME"), *xdg = getenv("XDG_CACHE_HOME");
    if (env && *env) return lg_file_exists(env) ? strdup(env) : NULL;
    char p[4096];
    if (xdg && *xdg) snprintf(p, sizeof p, "%s/loraga/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", xdg);
    else snprintf(p, sizeof p, "%s/.cache/loraga/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", home ? home : "/tmp");
    return lg_file_exists(p) ? strdup(p) : NULL;
}

static void test_chat_formats_smollm2(void **state) {
    (void)state;
    char *gguf = find_smollm2();
    if (!gguf) {
        print_message("skipped: SmolLM2-135M-Instruct not cached (scripts/fetch_smollm2.sh)\n");
        skip();
    }
    const char *files[][2] = {
        {"c_msgs.jsonl",
         "{\"messages\": [{\"role\": \"user\", \"content\": \"Capital of Peru?\"}, {\"role\": \"assistant\", "
         "\"content\": \"Lima.\"}]}\n{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": "
         "\"user\", \"content\": \"Capital of Chile?\\nOne word.\"}, {\"role\": \"assistant\", \"content\": "
         "\"Santiago.\"}]}\n"},
        {"c_sharegpt.json",
         "[{\"conversations\": [{\"from\": \"human\", \"value\": \"Capital of Peru?\"}, {\"from\": \"gpt\", \"value\": "
         "\"Lima.\"}]},\n {\"system\": \"Be brief.\", \"conversations\": [{\"from\": \"human\", \"value\": \"Capital of "
         "Chile?\\nOne word.\"}, {\"from\": \"gpt\", \"value\": \"Santiago.\"}]}]\n"},
        {"c_alpaca.jsonl",
         "{\"instruction\": \"Capital of Peru?\", \"output\": \"Lima.\"}\n{\"instruction\": \"Capital of Chile?\", "
         "\"input\": \"One word.\", \"output\": \"Santiago.\", \"system\": \"Be brief.\"}\n"},
    };
    static char out[16384];
    char *ref = NULL;
    for (int i = 0; i < 3; i++) { /* eval reads data as train does: the same loss over the same tokens */
        char *data = tmp_path(files[i][0]);
        write_text(data, files[i][1]);
        int rc = sh(out, sizeof out, "OMP_NUM_THREADS=2 %s eval --model %s --data %s --json 2>&1", lg_test_bin(), gguf, data);
        if (rc) fail_msg("%s: %s", files[i][0], out);
        char *sec = strstr(out, ", \"seconds\"");
        assert_non_null(sec);
        *sec = 0;
        if (!ref) ref = strdup(out);
        else if (strcmp(ref, out)) fail_msg("%s: %s vs the messages rows: %s", files[i][0], out, ref);
        free(data);
    }
    /* training on the Alpaca rows: rendered as chats; a GGUF's own name (general.name) is the base model */
    char *data = tmp_path(files[2][0]), *run = tmp_path("smol_alpaca");
    int rc = sh(out, sizeof out,
                "OMP_NUM_THREADS=2 %s train --model %s --data %s --targets q_proj --rank 2 --steps 1 --batch-size 2 "
                "--seq-len 48 --out %s 2>&1",
                lg_test_bin(), gguf, data, run);
    if (rc) fail_msg("%s", out);
    assert_non_null(strstr(out, "alpaca 2, as chats with the model's template"));
    assert_null(strstr(out, "truncated"));
    lg_gguf *g;
    const char *name;
    size_t nl;
    assert_int_equal(lg_gguf_open(gguf, &g), 0);
    assert_int_equal(lg_gguf_get_str(g, "general.name", &name, &nl), 0);
    cJSON *ac = read_json(run, "adapter_config.json");
    const char *bm = jstr(ac, "base_model_name_or_path");
    if (strlen(bm) != nl || memcmp(bm, name, nl)) fail_msg("base_model_name_or_path %s, general.name %.*s", bm, (int)nl, name);
    lg_gguf_close(g);
    cJSON_Delete(ac);
    free(data), free(run);
    print_message("messages == sharegpt == alpaca on SmolLM2: %s", ref);
    free(ref), free(gguf);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_version_and_make),
        cmocka_unit_test(test_targets_forms),
        cmocka_unit_test(test_base_model_name),
        cmocka_unit_test(test_config_yaml),
        cmocka_unit_test(test_option_refusals),
        cmocka_unit_test(test_formats_train_alike),
        cmocka_unit_test(test_targets_cli),
        cmocka_unit_test(test_epochs_validation_snapshots),
        cmocka_unit_test(test_snapshots_survive_resume),
        cmocka_unit_test(test_adapter_continues),
        cmocka_unit_test(test_chat_formats_smollm2),
    };
    return cmocka_run_group_tests_name("workflow", tests, setup, teardown);
}
