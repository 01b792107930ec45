/* cmd_export.c — `loraga export`: a model (+ adapter merged) as a llama.cpp GGUF, or a PEFT LoRA
 * adapter as a llama.cpp LoRA adapter GGUF (what `llama-cli --lora FILE` loads).
 *
 * Merged model (--to gguf): llama.cpp's architecture of the model (llama, qwen2, qwen3, gemma2,
 * gemma3, phi3: lg_gguf_tensor_name, the GGUF reader's conventions backwards: names, LLaMA's q/k rows
 * permuted back to llama.cpp's order as convert_hf_to_gguf.py's permute, Gemma's norms stored as
 * w + 1), the base GGUF's RoPE factor tensors (rope_freqs, rope_factors_*) carried over, 1-D
 * tensors F32, matrices in --dtype. The metadata and tokenizer come from the base model's own GGUF
 * (every key copied, general.file_type set to the new type); a base read from a Hugging Face
 * directory is refused for now (its tokenizer would have to be rebuilt as GGUF metadata).
 *
 * Adapter (--to gguf-lora), as llama.cpp's convert_lora_to_gguf.py writes it: general.type adapter,
 * adapter.type lora, adapter.lora.alpha; per adapted matrix blk.N.<name>.weight.lora_a (PEFT's A,
 * r x in: ne = [in, r]) and .lora_b (B, out x r: ne = [r, out]; rows permuted for q/k). llama.cpp
 * scales by alpha / r with r read from each lora_a, so alpha = s_first · r_first where s is PEFT's
 * scale (alpha / r, or alpha / sqrt(r) with rsLoRA: rsLoRA folds into alpha); a module whose
 * s · r differs (rank_pattern / alpha_pattern) has the ratio folded into its B. LoRA-GA / PiSSA
 * adapters (saved relative to the original weights at rank 2r) export as they are. DoRA and AdaLoRA
 * have no llama.cpp form and are refused. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/lora.h"
#include "cli.h"
#include "core/util.h"
#include "eval/adapter_set.h"
#include "io/gguf.h"
#include "io/gguf_write.h"
#include "model/model.h"

static const char *USAGE =
    "usage: loraga export --to gguf --model MODEL [--adapter ADIR] --out FILE.gguf [--dtype f32|f16|bf16|q8_0]\n"
    "       loraga export --to gguf-lora --model MODEL --adapter ADIR --out FILE.gguf\n"
    "gguf: the model with the adapter (if any) merged, for llama.cpp / Ollama; its metadata, tokenizer and chat\n"
    "template are those of MODEL, which must be a GGUF file (e.g. the one `convert --from gguf` started from).\n"
    "gguf-lora: the adapter in llama.cpp's LoRA format (llama-cli -m BASE.gguf --lora FILE.gguf).\n"
    "examples: loraga export --to gguf --model smol.Q4_1.gguf --adapter run --out smol-ft.gguf --dtype q8_0\n"
    "          loraga export --to gguf-lora --model smol.Q4_1.gguf --adapter run --out run-lora.gguf";

/* rows of an (heads*hd) x cols matrix from HF's rotate-half order to GGML's interleaved order:
 * GGUF row h*hd + 2i + s = HF row h*hd + s*hd/2 + i */
static void permute_rows(const float *src, float *dst, int heads, int hd, int64_t cols) {
    for (int h = 0; h < heads; h++)
        for (int i = 0; i < hd / 2; i++)
            for (int s = 0; s < 2; s++)
                memcpy(dst + ((int64_t)h * hd + 2 * i + s) * cols, src + ((int64_t)h * hd + s * hd / 2 + i) * cols,
                       (size_t)cols * sizeof(float));
}

static int parse_dtype(const char *s, uint32_t *type, uint32_t *ftype) {
    if (!s || !strcmp(s, "f32") || !strcmp(s, "float32")) return *type = LG_GGML_F32, *ftype = 0, 0;
    if (!strcmp(s, "f16") || !strcmp(s, "float16")) return *type = LG_GGML_F16, *ftype = 1, 0;
    if (!strcmp(s, "q8_0")) return *type = LG_GGML_Q8_0, *ftype = 7, 0;
    if (!strcmp(s, "bf16") || !strcmp(s, "bfloat16")) return *type = LG_GGML_BF16, *ftype = 32, 0;
    return lg_errorf("--dtype: f32, f16, bf16 or q8_0, not '%s'", s);
}

/* llama.cpp's architecture of the model, which the base GGUF (when there is one) must have. */
static const char *check_arch(const lg_config *c, const lg_gguf *src) {
    const char *arch = lg_gguf_arch_name(c);
    if (!arch) {
        lg_errorf("export to GGUF: %s", lg_last_error());
        return NULL;
    }
    const char *sa;
    size_t sl;
    if (src && lg_gguf_get_str(src, "general.architecture", &sa, &sl) == 0 &&
        (sl != strlen(arch) || memcmp(sa, arch, sl))) {
        lg_errorf("export to GGUF: the base GGUF's architecture is '%.*s', the model's '%s'", (int)LG_MIN(sl, 64), sa,
                  arch);
        return NULL;
    }
    return arch;
}

/* A model parameter under its GGUF name, in llama.cpp's row order and offset: *d (numel floats) to free. */
static int gguf_param(const lg_config *c, lg_param *p, char *gname, size_t cap, float **d) {
    int perm, plus1;
    if (lg_gguf_tensor_name(c, p->name, gname, cap, &perm, &plus1) != 0)
        return lg_errorf("export: parameter '%s' has no GGUF name", p->name);
    *d = lg_malloc((size_t)p->numel * sizeof(float));
    lg_param_read_f32(p, *d);
    if (perm) { /* q/k weights (rows) or biases (entries) */
        float *q = lg_malloc((size_t)p->numel * sizeof(float));
        permute_rows(*d, q, perm, c->head_dim, p->ndim == 2 ? p->shape[1] : 1);
        free(*d);
        *d = q;
    }
    if (plus1)
        for (int64_t i = 0; i < p->numel; i++) (*d)[i] += 1.0f;
    return 0;
}

static int export_model(lg_model *m, lg_gguf *src, const char *dtype, const char *out) {
    const lg_config *c = lg_model_config(m);
    uint32_t type, ftype;
    const char *arch;
    if (parse_dtype(dtype, &type, &ftype) || !(arch = check_arch(c, src))) return -1;
    lg_gguf_writer *w = lg_gguf_writer_new();
    lg_gguf_w_str(w, "general.architecture", arch);
    lg_gguf_w_u32(w, "general.file_type", ftype);
    lg_gguf_w_u32(w, "general.quantization_version", 2);
    for (int i = 0; i < lg_gguf_n_kv(src); i++) {
        const char *k = lg_gguf_kv_key(src, i);
        if (!strcmp(k, "general.alignment")) continue;
        lg_gguf_w_copy(w, src, i);
    }
    int rc = 0;
    for (int i = 0; i < lg_model_n_params(m) && !rc; i++) {
        lg_param *p = lg_model_param(m, i);
        char gname[160];
        float *d = NULL;
        if ((rc = gguf_param(c, p, gname, sizeof gname, &d)) != 0) break;
        int64_t ne[2] = {p->ndim == 2 ? p->shape[1] : p->numel, p->ndim == 2 ? p->shape[0] : 1};
        uint32_t tt = p->ndim == 2 && (type != LG_GGML_Q8_0 || ne[0] % 32 == 0) ? type : LG_GGML_F32;
        rc = lg_gguf_w_tensor(w, gname, p->ndim == 2 ? 2 : 1, ne, tt, d);
        free(d);
    }
    /* RoPE frequency factors are no parameters: the base GGUF's, as they are */
    static const char *const extra[] = {"rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight"};
    for (size_t i = 0; i < sizeof extra / sizeof extra[0] && !rc; i++) {
        const lg_gguf_tensor *t = lg_gguf_find_tensor(src, extra[i]);
        if (!t) continue;
        float *d = lg_malloc((size_t)t->numel * sizeof(float));
        rc = lg_gguf_read_f32(src, t, d);
        if (!rc) rc = lg_gguf_w_tensor(w, extra[i], 1, &t->numel, LG_GGML_F32, d);
        free(d);
    }
    if (!rc) rc = lg_gguf_w_save(w, out);
    lg_gguf_writer_free(w);
    return rc;
}

static int export_lora(lg_model *m, lg_gguf *src, const char *out) {
    const lg_config *c = lg_model_config(m);
    const char *arch = check_arch(c, src);
    if (!arch) return -1;
    lg_gguf_writer *w = lg_gguf_writer_new();
    lg_gguf_w_str(w, "general.architecture", arch);
    lg_gguf_w_str(w, "general.type", "adapter");
    lg_gguf_w_str(w, "adapter.type", "lora");
    float alpha = 0;
    int rc = 0, n = 0;
    for (int i = 0; i < lg_model_n_linears(m) && !rc; i++) {
        lg_linear *l = lg_model_linear(m, i);
        if (!l->adapter) continue;
        const char *kind = l->adapter->vt->kind;
        if (strcmp(kind, "lora")) {
            rc = lg_errorf("export --to gguf-lora: module '%s' has a %s adapter, which llama.cpp's LoRA format cannot "
                           "hold (export the merged model with --to gguf instead)", l->name, kind);
            break;
        }
        lg_lora *a = (lg_lora *)l->adapter;
        char wname[160], gname[160];
        int qk, plus1; /* qk: heads of a q/k projection whose rows llama.cpp permutes */
        snprintf(wname, sizeof wname, "%s.weight", l->name);
        if (lg_gguf_tensor_name(c, wname, gname, sizeof gname, &qk, &plus1)) {
            rc = lg_errorf("export --to gguf-lora: module '%s' has no GGUF name", l->name);
            break;
        }
        gname[strlen(gname) - strlen(".weight")] = 0; /* blk.N.attn_q */
        float sr = a->scale * (float)a->r; /* llama.cpp applies alpha / r */
        if (n++ == 0) alpha = sr;
        float f = sr / alpha;
        float *B = lg_malloc((size_t)a->out * (size_t)a->r * sizeof(float));
        if (qk) permute_rows(a->B, B, qk, c->head_dim, a->r);
        else memcpy(B, a->B, (size_t)a->out * (size_t)a->r * sizeof(float));
        if (f != 1.0f)
            for (size_t k = 0; k < (size_t)a->out * (size_t)a->r; k++) B[k] *= f;
        char na[176], nb[176];
        snprintf(na, sizeof na, "%s.weight.lora_a", gname);
        snprintf(nb, sizeof nb, "%s.weight.lora_b", gname);
        int64_t nea[2] = {a->in, a->r}, neb[2] = {a->r, a->out};
        rc = lg_gguf_w_tensor(w, na, 2, nea, LG_GGML_F32, a->A);
        if (!rc) rc = lg_gguf_w_tensor(w, nb, 2, neb, LG_GGML_F32, B);
        free(B);
    }
    if (!rc && n == 0) rc = lg_errorf("export --to gguf-lora: the adapter adapts no linear layer");
    if (!rc) {
        lg_gguf_w_f32(w, "adapter.lora.alpha", alpha);
        rc = lg_gguf_w_save(w, out);
        if (!rc) fprintf(stderr, "%d adapted matrices, adapter.lora.alpha %g\n", n, (double)alpha);
    }
    lg_gguf_writer_free(w);
    return rc;
}

int cmd_export(int argc, char **argv) {
    const char *to = NULL, *model = NULL, *adapter = NULL, *out = NULL, *dtype = NULL;
    lg_opt opts[] = {
        {"--to", LG_OPT_STR, &to, "required: gguf (a merged model) or gguf-lora (the adapter, llama.cpp's format)"},
        {"--model", LG_OPT_STR, &model, "required: the base model (a GGUF file for --to gguf)"},
        {"--adapter", LG_OPT_STR, &adapter, "PEFT LoRA adapter directory (required for gguf-lora; merged for gguf)"},
        {"--out", LG_OPT_STR, &out, "required: the .gguf file to write (replaced atomically)"},
        {"--dtype", LG_OPT_STR, &dtype, "gguf: f32, f16, bf16 or q8_0 for the matrices (default f32; norms stay f32)"},
    };
    int pr = lg_parse_opts(argc, argv, opts, sizeof opts / sizeof opts[0], USAGE);
    if (pr) return pr > 0 ? 0 : 2;
    if (!to || !model || !out || (strcmp(to, "gguf") && strcmp(to, "gguf-lora"))) {
        fprintf(stderr, "loraga export: --to gguf|gguf-lora, --model and --out are required (see --help)\n");
        return 2;
    }
    int lora = !strcmp(to, "gguf-lora");
    if (lora && !adapter) {
        fprintf(stderr, "loraga export: --to gguf-lora needs --adapter\n");
        return 2;
    }
    if (lora && dtype) {
        fprintf(stderr, "loraga export: --dtype applies to --to gguf (the adapter is written in f32)\n");
        return 2;
    }
    lg_model *m = NULL;
    lg_adapter_set *ad = NULL;
    lg_gguf *src = NULL;
    int rc = 1;
    uint32_t ty, ft;
    if (!lora && parse_dtype(dtype, &ty, &ft)) goto done;
    int is_gguf = !lg_is_dir(model) && lg_gguf_is_gguf(model);
    if (!lora && !is_gguf) {
        lg_errorf("export --to gguf: --model must be a GGUF file (its metadata and tokenizer are carried over); "
                  "'%s' is not one", model);
        goto done;
    }
    if (is_gguf && lg_gguf_open(model, &src) != 0) goto done;
    if (lg_model_load(model, NULL, &m) != 0) goto done;
    if (adapter && lg_adapter_set_load(m, adapter, &ad) != 0) goto done;
    if (ad) fprintf(stderr, "adapter: %s\n", lg_adapter_set_describe(ad));
    if (lora) {
        if (export_lora(m, src, out) != 0) goto done;
    } else {
        if (ad) lg_adapter_set_merge_and_free(ad), ad = NULL;
        if (export_model(m, src, dtype, out) != 0) goto done;
    }
    fprintf(stderr, "wrote %s\n", out);
    rc = 0;
done:
    if (rc) lg_cli_fail();
    lg_adapter_set_free(ad);
    lg_model_free(m);
    lg_gguf_close(src);
    return rc;
}
