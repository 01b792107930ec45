#!/usr/bin/env python3
"""peft_interop.py - Hugging Face PEFT as the reference client for loraga's adapters.

Reference tooling only (tests/test_interop.c runs it from a venv made by scripts/peft/venv.sh);
loraga never needs Python.

  make-adapters BASE OUT KIND...     write adapters with PEFT itself (random, nonzero lora_B):
                                     KIND in lora-patterns, rslora, dora, gpt2-lora, gpt2-dora
                                     -> OUT/<KIND>/ (adapter_config.json + adapter_model.safetensors)
  compare BASE ADAPTER DUMP [...]    load BASE with transformers and ADAPTER with
                                     PeftModel.from_pretrained, run the ids stored in DUMP (written by
                                     `loraga eval --dump-logits`) and compare the logits with loraga's;
                                     several ADAPTER DUMP pairs may follow BASE. Prints one JSON line
                                     per pair; exit status 1 if any differs by more than --rtol.
  reference BASE ADAPTER OUT.safetensors --ids 1,2,3 [--ids ...]
                                     PEFT's logits in float64 for the given ids.
  golden MODELS OUT                  the committed fixtures tests/golden/peft/<model>__<kind>/:
                                     PEFT-written adapters on the tiny models of MODELS
                                     (tests/golden/models) and PEFT's float64 logits on the ids of
                                     each model's reference.json (reference.safetensors).

Agreement: max |ours - peft| / max(1, max |peft|) over all positions and vocabulary entries
(relative to the logit scale, so near-zero logits do not blow the ratio up). adapter_effect is
max |peft - peft without the adapter| on the same scale: the check means something only when it
is well above the agreement.
"""
import argparse
import json
import os
import sys

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GPT2_TARGETS = ["c_attn", "c_proj", "c_fc"]


def kind_config(kind):
    """The LoraConfig of each adapter kind the tests exercise."""
    if kind == "lora-patterns":  # per-module ranks and alphas; the first matching key wins in PEFT
        return LoraConfig(r=4, lora_alpha=8, target_modules=LLAMA_TARGETS,
                          rank_pattern={"layers.1.self_attn.q_proj": 2, "down_proj": 6},
                          alpha_pattern={"v_proj": 3, "layers.0.mlp.up_proj": 20}, init_lora_weights=False)
    if kind == "rslora":
        return LoraConfig(r=4, lora_alpha=8, target_modules=LLAMA_TARGETS, use_rslora=True, init_lora_weights=False)
    if kind == "dora":
        return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], use_dora=True,
                          rank_pattern={"down_proj": 2}, init_lora_weights=False)
    if kind == "gpt2-lora":
        return LoraConfig(r=4, lora_alpha=8, target_modules=GPT2_TARGETS, fan_in_fan_out=True,
                          rank_pattern={"mlp.c_proj": 2}, init_lora_weights=False)
    if kind == "gpt2-dora":
        return LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True, use_dora=True,
                          init_lora_weights=False)
    raise SystemExit(f"unknown adapter kind {kind}")


def load_base(path, dtype=torch.float32):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.eval()
    return model


def make_adapters(base, out, kinds):
    for i, kind in enumerate(kinds):
        torch.manual_seed(1234 + i)
        model = get_peft_model(load_base(base), kind_config(kind))
        with torch.no_grad():  # nonzero and well away from PEFT's own init, so every tensor matters
            for name, p in model.named_parameters():
                if "lora_A" in name or "lora_B" in name:
                    p.copy_(torch.randn_like(p) * 0.1)
                elif "lora_magnitude_vector" in name:
                    p.mul_(1.0 + 0.1 * torch.randn_like(p))
        d = os.path.join(out, kind)
        model.save_pretrained(d)
        print(f"wrote {d}", file=sys.stderr)


def peft_model(base, adapter, dtype=torch.float32):
    model = PeftModel.from_pretrained(load_base(base, dtype), adapter)
    model.eval()
    return model


def read_dump(path):
    with safe_open(path, "pt") as f:
        keys = set(f.keys())
        docs = sorted(int(k.split(".")[1]) for k in keys if k.startswith("ids."))
        return [(f.get_tensor(f"ids.{d}").round().long(), f.get_tensor(f"logits.{d}")) for d in docs]


def compare(base, pairs, rtol):
    bad = 0
    for adapter, dump in pairs:
        model = peft_model(base, adapter)
        worst, scale, effect, n = 0.0, 1.0, 0.0, 0
        with torch.no_grad():
            for ids, ours in read_dump(dump):
                ref = model(input_ids=ids[None, :]).logits[0].float()
                with model.disable_adapter():  # how much the adapter changes the logits at all
                    plain = model(input_ids=ids[None, :]).logits[0].float()
                worst = max(worst, (ours - ref).abs().max().item())
                effect = max(effect, (ref - plain).abs().max().item())
                scale = max(scale, ref.abs().max().item())
                n += ids.numel()
        rel = worst / scale
        ok = rel <= rtol
        bad += not ok
        print(json.dumps({"adapter": adapter, "tokens": n, "max_abs_diff": worst, "logit_scale": scale,
                          "rel_diff": rel, "adapter_effect": effect / scale, "ok": ok}), flush=True)
    return 1 if bad else 0


def reference(base, adapter, out, id_lists):
    model = peft_model(base, adapter, torch.float64)
    tensors = {}
    with torch.no_grad():
        for i, ids in enumerate(id_lists):
            t = torch.tensor(ids, dtype=torch.long)
            tensors[f"ids.{i}"] = t.float()
            tensors[f"logits.{i}"] = model(input_ids=t[None, :]).logits[0].float()
    save_file(tensors, out, metadata={"format": "pt", "producer": "peft_interop.py reference (float64 forward)"})


GOLDEN = {"llama_gqa": ["lora-patterns", "rslora", "dora"], "gpt2": ["gpt2-lora", "gpt2-dora"]}


def golden(models, out):
    for model, kinds in GOLDEN.items():
        base = os.path.join(models, model)
        with open(os.path.join(base, "reference.json")) as f:
            ids = json.load(f)["ids"]
        tmp = os.path.join(out, "_tmp_" + model)
        make_adapters(base, tmp, kinds)
        for kind in kinds:
            d = os.path.join(out, f"{model}__{kind}")
            os.makedirs(d, exist_ok=True)
            for fn in ("adapter_config.json", "adapter_model.safetensors"):
                os.replace(os.path.join(tmp, kind, fn), os.path.join(d, fn))
            reference(base, d, os.path.join(d, "reference.safetensors"), ids)
            with open(os.path.join(d, "case.json"), "w") as f:
                json.dump({"base": model, "kind": kind, "made_by": "scripts/peft/peft_interop.py golden",
                           "versions": {"torch": torch.__version__, "peft": __import__("peft").__version__,
                                        "transformers": __import__("transformers").__version__}}, f, indent=1)
            for fn in os.listdir(os.path.join(tmp, kind)):
                os.remove(os.path.join(tmp, kind, fn))
            os.rmdir(os.path.join(tmp, kind))
        os.rmdir(tmp)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("make-adapters")
    a.add_argument("base")
    a.add_argument("out")
    a.add_argument("kinds", nargs="+")
    c = sub.add_parser("compare")
    c.add_argument("base")
    c.add_argument("pairs", nargs="+", help="ADAPTER DUMP [ADAPTER DUMP ...]")
    c.add_argument("--rtol", type=float, default=1e-4)
    r = sub.add_parser("reference")
    r.add_argument("base")
    r.add_argument("adapter")
    r.add_argument("out")
    r.add_argument("--ids", action="append", required=True, help="comma-separated token ids")
    g = sub.add_parser("golden")
    g.add_argument("models")
    g.add_argument("out")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    if args.cmd == "make-adapters":
        make_adapters(args.base, args.out, args.kinds)
    elif args.cmd == "compare":
        if len(args.pairs) % 2:
            raise SystemExit("compare: ADAPTER DUMP pairs expected")
        sys.exit(compare(args.base, list(zip(args.pairs[::2], args.pairs[1::2])), args.rtol))
    elif args.cmd == "golden":
        golden(args.models, args.out)
    else:
        reference(args.base, args.adapter, args.out, [[int(x) for x in s.split(",")] for s in args.ids])


if __name__ == "__main__":
    main()
