#!/usr/bin/env python3
"""make_tiny_models.py — build tiny random Hugging Face models and their reference outputs.

Writes tests/golden/models/<name>/ (config.json, safetensors, reference.json) for the C test
tests/test_reference.c, which compares loraga's forward pass with transformers' without Python.
Models marked so also get
  lora/            a PEFT LoRA adapter (r 4, alpha 8, every linear layer, random nonzero A and B)
                   written by PEFT, and lora/grads.safetensors: transformers + PEFT's gradients of
                   the reference loss with respect to every lora_A / lora_B (float64, stored float32),
                   with the loss itself in reference.json ("lora_loss");
  model.gguf       the model converted by llama.cpp's own convert_hf_to_gguf.py (hf_to_gguf.py, F32),
                   which loraga must read back into the same logits.

  python3 -m venv /work/venv
  /work/venv/bin/pip install torch transformers safetensors peft tokenizers numpy
  /work/venv/bin/python scripts/reference/make_tiny_models.py           # from the repo root
  /work/venv/bin/python scripts/reference/make_tiny_models.py gemma2 phi3   # only these

Deterministic: fixed seeds, so re-running it reproduces the same files (up to library versions).

The reference is computed from the *saved* directory, reloaded with from_pretrained in float32
(bf16/f16 checkpoints are therefore upcast from the same rounded weights loraga reads), in
float64 (the recorded numbers) and float32 (recorded as a measure of torch's own fp32 error).
"""
import json
import math
import os
import shutil
import sys

import numpy
import safetensors
import tokenizers
import torch
import transformers
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import (AutoModelForCausalLM, Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM,
                          Gemma3TextConfig, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,
                          MistralConfig, MistralForCausalLM, Phi3Config, Phi3ForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_to_gguf  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "golden", "models")
B, T = 2, 12
LOGIT_POS = [(0, 0), (0, 5), (0, 11), (1, 0), (1, 5), (1, 11)]  # (row, position)


def versions():
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "safetensors": safetensors.__version__,
        "tokenizers": tokenizers.__version__,
        "numpy": numpy.__version__,
    }


def spread_init(model, seed):
    """Large random weights (std 0.2), norm scales 1 + 0.1 noise, nonzero biases: outputs far
    from uniform and every parameter visible in the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            is_norm = ("norm" in name or ".ln_" in name) and name.endswith("weight")
            if is_norm:
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.2 * noise)


def llama_cfg(**kw):
    base = dict(vocab_size=80, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
                bos_token_id=1, eos_token_id=2)
    base.update(kw)
    return base


def gpt2_cfg(**kw):
    base = dict(vocab_size=72, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                layer_norm_epsilon=1e-5, activation_function="gelu_new",
                bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    base.update(kw)
    return base


def gemma_cfg(**kw):
    base = dict(vocab_size=72, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, max_position_embeddings=64,
                rms_norm_eps=1e-6, sliding_window=4, bos_token_id=2, eos_token_id=1, pad_token_id=0,
                hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True)
    base.update(kw)
    return base


# name -> (model class, config class, config kwargs, save dtype, save kwargs, description)
MODELS = {
    "llama_gqa": (LlamaForCausalLM, LlamaConfig, llama_cfg(), torch.float32, {},
                  "LLaMA, 4 query heads / 2 KV heads (GQA), untied lm_head, float32"),
    "llama_tied_bf16": (LlamaForCausalLM, LlamaConfig,
                        llama_cfg(tie_word_embeddings=True, num_key_value_heads=4, rms_norm_eps=1e-6,
                                  attention_bias=True, mlp_bias=True),
                        torch.bfloat16, {},
                        "LLaMA, tied embeddings, MHA, attention_bias + mlp_bias, saved as bfloat16"),
    "qwen2": (Qwen2ForCausalLM, Qwen2Config,
              llama_cfg(vocab_size=96, hidden_size=24, intermediate_size=40, num_key_value_heads=2,
                        tie_word_embeddings=True, rms_norm_eps=1e-6, use_sliding_window=False),
              torch.float32, {}, "Qwen2, q/k/v biases (nonzero), tied, head_dim 6, float32"),
    "mistral_sharded": (MistralForCausalLM, MistralConfig,
                        llama_cfg(vocab_size=64, num_key_value_heads=1, head_dim=12, sliding_window=None),
                        torch.float32, {"max_shard_size": "40KB"},
                        "Mistral, MQA (1 KV head), head_dim 12 != hidden/heads, sharded float32"),
    "gpt2": (GPT2LMHeadModel, GPT2Config, gpt2_cfg(), torch.float32, {},
             "GPT-2, Conv1D, LayerNorm, learned positions, gelu_new, float32"),
    "gpt2_f16": (GPT2LMHeadModel, GPT2Config, gpt2_cfg(n_inner=48), torch.float16, {},
                 "GPT-2 with n_inner 48, saved as float16"),
    # Known mismatches (docs/reference.md): tests/test_reference.c reports them and skips
    # unless LORAGA_REFERENCE_STRICT=1. Smaller still, they only need to show the difference.
    "qwen2_theta1e6": (Qwen2ForCausalLM, Qwen2Config,
                       llama_cfg(vocab_size=64, hidden_size=16, intermediate_size=32, rope_theta=1e6,
                                 tie_word_embeddings=True, rms_norm_eps=1e-6, use_sliding_window=False),
                       torch.float32, {}, "Qwen2 with rope_theta 1e6 (the real Qwen2 value)"),
    "mistral_window4": (MistralForCausalLM, MistralConfig,
                        llama_cfg(vocab_size=64, hidden_size=16, intermediate_size=32, sliding_window=4,
                                  tie_word_embeddings=True),
                        torch.float32, {}, "Mistral with sliding_window 4 < T"),
    "gpt2_layer_scale": (GPT2LMHeadModel, GPT2Config,
                         gpt2_cfg(vocab_size=64, n_embd=16, n_inner=32, scale_attn_by_inverse_layer_idx=True),
                         torch.float32, {}, "GPT-2 with scale_attn_by_inverse_layer_idx"),
    # issue 15: the architectures users bring (seeds follow the order: append only)
    "llama3_tied": (LlamaForCausalLM, LlamaConfig,
                    llama_cfg(tie_word_embeddings=True, max_position_embeddings=128,
                              rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
                    torch.float32, {}, "Llama 3.x: rope_scaling llama3 (all three frequency bands), tied"),
    "qwen3": (Qwen3ForCausalLM, Qwen3Config,
              llama_cfg(head_dim=12, rope_theta=1e6, tie_word_embeddings=True, rms_norm_eps=1e-6,
                        attention_bias=False, use_sliding_window=False),
              torch.float32, {}, "Qwen3: per-head q/k RMSNorm, head_dim 12 != hidden/heads, no biases, tied"),
    "gemma2": (Gemma2ForCausalLM, Gemma2Config,
               gemma_cfg(final_logit_softcapping=5.0, attn_logit_softcapping=3.0),
               torch.float32, {}, "Gemma 2: GeGLU, (1+w) norms, pre/post norms, sqrt(d) embeddings, soft caps "
               "(attention 3, logits 5), window 4 on layers 0 and 2"),
    "gemma2_qpas": (Gemma2ForCausalLM, Gemma2Config,
                    gemma_cfg(hidden_size=16, intermediate_size=24, num_hidden_layers=2, head_dim=8,
                              query_pre_attn_scalar=24, final_logit_softcapping=None, attn_logit_softcapping=None,
                              tie_word_embeddings=False),
                    torch.float32, {}, "Gemma 2 with query_pre_attn_scalar 24 != head_dim, no caps, untied"),
    "gemma3_text": (Gemma3ForCausalLM, Gemma3TextConfig,
                    gemma_cfg(num_hidden_layers=6, final_logit_softcapping=5.0,
                              rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0,
                                                                  "rope_theta": 1e6},
                                               "sliding_attention": {"rope_type": "default",
                                                                     "rope_theta": 10000.0}}),
                    torch.float32, {}, "Gemma 3 (text): q/k norms, 5 sliding layers (window 4, base 1e4) and one "
                    "global (base 1e6, linear x4), logit cap 5"),
    "gemma3_layers": (Gemma3ForCausalLM, Gemma3TextConfig,
                      gemma_cfg(hidden_size=16, intermediate_size=24, num_hidden_layers=3, head_dim=8,
                                query_pre_attn_scalar=20, attn_logit_softcapping=2.0,
                                layer_types=["full_attention", "sliding_attention", "full_attention"],
                                rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                                 "sliding_attention": {"rope_type": "default",
                                                                       "rope_theta": 500.0}}),
                      torch.float32, {}, "Gemma 3 with explicit layer_types, local base 500, query_pre_attn_scalar 20, "
                      "an attn_logit_softcapping transformers ignores"),
    "phi3": (Phi3ForCausalLM, Phi3Config,
             llama_cfg(pad_token_id=0, sliding_window=6, original_max_position_embeddings=16,
                       rope_scaling={"rope_type": "longrope", "short_factor": [1.0, 1.3, 2.0, 3.5],
                                     "long_factor": [1.1, 1.5, 3.0, 6.0]}),
             torch.float32, {}, "Phi-3: fused qkv_proj and gate_up_proj, LongRoPE (short factors, attention "
             "factor from 64/16), sliding_window 6"),
    "qwen2_swa": (Qwen2ForCausalLM, Qwen2Config,
                  llama_cfg(vocab_size=64, hidden_size=16, intermediate_size=32, use_sliding_window=True,
                            sliding_window=5, max_window_layers=1, tie_word_embeddings=True),
                  torch.float32, {}, "Qwen2 with use_sliding_window: layers >= max_window_layers 1 see 5 keys"),
}

# the extra goldens: PEFT LoRA gradients, and a GGUF written by llama.cpp's converter (only where
# llama.cpp's format holds every feature of the model: Gemma's query_pre_attn_scalar = head_dim,
# Gemma 3's sliding pattern and local base are llama.cpp's defaults)
LORA = {"llama3_tied", "qwen3", "gemma2", "gemma3_text", "phi3", "qwen2_swa"}
GGUF = {"llama3_tied", "qwen3", "gemma2", "gemma3_text", "phi3", "qwen2"}

KEEP = {"config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json"}


def make_ids(vocab, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (B, T), generator=g)


def nll_loss(logits, ids):
    lp = torch.log_softmax(logits.double(), dim=-1)
    return -lp[:, :-1, :].gather(-1, ids[:, 1:, None])[..., 0].mean()


def lora_golden(d, ids, seed):
    """A PEFT LoRA on every linear layer, saved by PEFT; the loss and its gradients w.r.t. every
    lora_A / lora_B computed by transformers + PEFT in float64 from the float32 weights."""
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0,
                                            init_lora_weights=False))
    with torch.no_grad():  # nonzero B: every gradient path carries signal
        for n, p in model.named_parameters():
            if "lora_A" in n or "lora_B" in n:
                p.copy_(torch.randn_like(p) * 0.1)
    out = os.path.join(d, "lora")
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out)
    if os.path.exists(os.path.join(out, "README.md")):
        os.remove(os.path.join(out, "README.md"))
    with open(os.path.join(out, "adapter_config.json")) as f:  # no absolute path of this machine
        ac = json.load(f)
    ac["base_model_name_or_path"] = os.path.relpath(d, ROOT)
    with open(os.path.join(out, "adapter_config.json"), "w") as f:
        json.dump(ac, f, indent=2, sort_keys=True)
        f.write("\n")
    model = model.double()
    model.zero_grad()
    loss = nll_loss(model(input_ids=ids).logits, ids)
    loss.backward()
    grads = {}
    for n, p in model.named_parameters():
        if "lora_A" in n or "lora_B" in n:
            grads[n.replace(".default.", ".")] = p.grad.detach().float().contiguous()
    save_file(grads, os.path.join(out, "grads.safetensors"),
              metadata={"producer": "make_tiny_models.py (transformers + PEFT, float64)"})
    return loss.item(), len(grads)


def forward(model, ids):
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    lp = torch.log_softmax(logits.double(), dim=-1)
    nll = -lp[:, :-1, :].gather(-1, ids[:, 1:, None])[..., 0]  # position t predicts t+1
    return logits, nll.mean().item()


def build(name, seed):
    cls, cfg_cls, kw, dtype, save_kw, desc = MODELS[name]
    torch.manual_seed(seed)
    cfg = cfg_cls(**kw)
    model = cls(cfg).eval()
    spread_init(model, seed)
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    model.to(dtype).save_pretrained(d, safe_serialization=True, **save_kw)
    for f in os.listdir(d):
        if f not in KEEP and not (f.startswith("model-") and f.endswith(".safetensors")):
            os.remove(os.path.join(d, f))

    # The reference: the saved directory, as a user of transformers would load it.
    ref32 = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    ref64 = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float64).eval()
    ids = make_ids(cfg.vocab_size, 1000 + seed)
    logits64, loss64 = forward(ref64, ids)
    logits32, loss32 = forward(ref32, ids)
    sel = lambda lg: [[float(v) for v in lg[b, t].tolist()] for b, t in LOGIT_POS]
    rec = {
        "model": name,
        "description": desc,
        "architecture": type(ref64).__name__,
        "saved_dtype": str(dtype).replace("torch.", ""),
        "B": B, "T": T,
        "ids": ids.tolist(),
        "loss_definition": "mean over b, t<T-1 of -log softmax(logits[b,t])[ids[b,t+1]]",
        "loss": loss64,
        "loss_fp32": loss32,
        "logit_positions": [list(p) for p in LOGIT_POS],
        "logits": sel(logits64),
        "torch_fp32_vs_fp64_max_abs_logit_diff": (logits32.double() - logits64).abs().max().item(),
        "versions": versions(),
        "seed": seed,
    }
    # sanity: the HF loss helper agrees with the hand-made one
    with torch.no_grad():
        hf_loss = ref64(input_ids=ids, labels=ids).loss.item()
    assert math.isclose(hf_loss, loss64, rel_tol=1e-6), (hf_loss, loss64)  # HF's loss is fp32
    if name in LORA:
        rec["lora_loss"], n = lora_golden(d, ids, 5000 + seed)
        rec["lora_definition"] = ("PEFT LoraConfig(r=4, lora_alpha=8, target_modules='all-linear'), A and B ~ "
                                  "N(0, 0.1^2); loss as above; grads in lora/grads.safetensors")
        print(f"  lora: {n} tensors, loss {rec['lora_loss']:.6f}")
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump(rec, f, indent=1)
        f.write("\n")
    if name in GGUF:
        make_gguf(name)
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    print(f"{name:16s} {desc}\n  files {sorted(os.listdir(d))} {size/1024:.1f} KiB, "
          f"loss {loss64:.6f} (fp32 {loss32:.6f}), |logits| max {logits64.abs().max().item():.2f}, "
          f"torch fp32-fp64 {rec['torch_fp32_vs_fp64_max_abs_logit_diff']:.2e}")
    return size


def make_gguf(name):
    """model.gguf: the golden model as llama.cpp's converter writes it (F32)."""
    d = os.path.join(OUT, name)
    out = os.path.join(d, "model.gguf")
    import logging
    logging.disable(logging.INFO)
    hf_to_gguf.convert(d, out, "f32")
    logging.disable(logging.NOTSET)
    print(f"  gguf: {os.path.getsize(out)/1024:.1f} KiB")


def main():
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    os.makedirs(OUT, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    only = set(sys.argv[1:])
    unknown = only - set(MODELS)
    if unknown:
        raise SystemExit(f"unknown models {sorted(unknown)} (known: {list(MODELS)})")
    total = 0
    for i, name in enumerate(MODELS):
        if not only or name in only:
            total += build(name, seed=i + 1)
    print(f"total {total/1024:.1f} KiB; versions {versions()}")


if __name__ == "__main__":
    main()
