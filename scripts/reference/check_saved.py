#!/usr/bin/env python3
"""check_saved.py — transformers and PEFT as the clients of what loraga writes (tests/test_archs.c).

  check_saved.py BASE ADAPTER DUMP [BASE ADAPTER DUMP ...] [--rtol 1e-5]

BASE: a model directory (written by loraga's lg_model_save_hf, or a golden); ADAPTER: a PEFT adapter
directory (written by loraga) or "-" for none; DUMP: loraga's logits for some ids, a safetensors file
with "ids.<k>" (T) and "logits.<k>" (T x V). Each model is loaded by AutoModelForCausalLM (and
PeftModel) in float64 and run on the same ids. Prints one line per triple; exit status 1 if any
max |loraga - transformers| / max(1, max |transformers|) exceeds rtol.
"""
import sys
import warnings

import torch
import transformers
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForCausalLM


def main():
    warnings.filterwarnings("ignore", category=FutureWarning)
    args = sys.argv[1:]
    rtol = 1e-5
    if "--rtol" in args:
        i = args.index("--rtol")
        rtol = float(args[i + 1])
        del args[i:i + 2]
    if not args or len(args) % 3:
        raise SystemExit(__doc__)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    bad = 0
    for base, adapter, dump in zip(args[0::3], args[1::3], args[2::3]):
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float64)
        if adapter != "-":
            model = PeftModel.from_pretrained(model, adapter)
        model.eval()
        worst, scale = 0.0, 1.0
        with safe_open(dump, "pt") as f:
            docs = sorted(int(k.split(".")[1]) for k in f.keys() if k.startswith("ids."))
            for d in docs:
                ids = f.get_tensor(f"ids.{d}").round().long()[None, :]
                ours = f.get_tensor(f"logits.{d}").double()
                with torch.no_grad():
                    ref = model(input_ids=ids).logits[0]
                worst = max(worst, (ours - ref).abs().max().item())
                scale = max(scale, ref.abs().max().item())
        rel = worst / scale
        ok = rel <= rtol
        bad += not ok
        what = f"{type(model).__name__ if adapter == '-' else 'PEFT ' + type(model.base_model.model).__name__}"
        print(f"{'ok ' if ok else 'BAD'} {what:28s} {base if adapter == '-' else adapter}: rel diff {rel:.1e}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
