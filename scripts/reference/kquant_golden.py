#!/usr/bin/env python3
"""kquant_golden.py — real quantised blocks and gguf-py's dequantisation of them.

    PY=$(scripts/peft/venv.sh); $PY scripts/reference/kquant_golden.py > tests/golden/gguf/kquants.json

SmolLM2-135M-Instruct (scripts/fetch_smollm2.sh) is exported to F32 GGUF by `build/loraga export
--to gguf`, then quantised by llama.cpp's own llama-quantize (scripts/build_llama_cpp.sh) to each
type; from each file the first blocks of a tensor of that type are taken as they are (hex) with the
values gguf-py (vendored in the same llama.cpp tree, gguf/quants.py) dequantises them to, as float32
bit patterns. tests/test_gguf.c (test_kquants_equal_gguf_py) requires loraga's lg_gguf_dequant to
give the same bits.
"""
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TYPES = ["Q2_K", "Q3_K_S", "Q4_K_S", "Q5_K_S", "Q6_K", "Q5_0", "Q5_1", "Q4_0", "Q8_0"]


def main():
    src = subprocess.check_output([os.path.join(ROOT, "scripts", "build_llama_cpp.sh"), "--source"]).decode().strip()
    bin_ = subprocess.check_output([os.path.join(ROOT, "scripts", "build_llama_cpp.sh")]).decode().strip()
    smol = subprocess.check_output([os.path.join(ROOT, "scripts", "fetch_smollm2.sh")]).decode().strip()
    sys.path.insert(0, os.path.join(src, "gguf-py"))
    import numpy as np
    import gguf
    from gguf import quants

    out = {"source": "SmolLM2-135M-Instruct exported to F32 by loraga, quantised by llama.cpp 0.3.36 llama-quantize; "
                     "values: gguf-py quants.dequantize", "blocks": []}
    with tempfile.TemporaryDirectory() as d:
        base = os.path.join(d, "base.gguf")
        subprocess.check_call([os.path.join(ROOT, "build", "loraga"), "export", "--to", "gguf", "--model", smol,
                               "--out", base], stderr=subprocess.DEVNULL)
        seen = set()
        for qt in TYPES:
            q = os.path.join(d, qt + ".gguf")
            # SmolLM2's rows of 576 are no multiple of 256: llama-quantize falls back for those, so the
            # 2-bit type is asked for explicitly on ffn_down (rows of 1536)
            extra = ["--tensor-type", "ffn_down=q2_k"] if qt == "Q2_K" else []
            subprocess.check_call([os.path.join(bin_, "llama-quantize")] + extra + [base, q, qt, "2"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            r = gguf.GGUFReader(q)
            for t in r.tensors:
                name = t.tensor_type.name
                if name in seen or name in ("F32", "F16", "BF16"):
                    continue
                seen.add(name)
                bs, ts = gguf.GGML_QUANT_SIZES[t.tensor_type]
                nblk = 2
                raw = np.asarray(t.data).reshape(-1).view(np.uint8)[: nblk * ts]
                vals = quants.dequantize(raw.reshape(nblk, ts), t.tensor_type).reshape(-1).astype(np.float32)
                out["blocks"].append({"type": name, "ggml_type": int(t.tensor_type), "tensor": t.name,
                                      "file_type": qt, "n": int(nblk * bs), "hex": raw.tobytes().hex(),
                                      "f32_bits": [int(x) for x in vals.view(np.uint32)]})
    out["blocks"].sort(key=lambda b: b["ggml_type"])
    json.dump(out, sys.stdout, indent=0)
    sys.stdout.write("\n")
    print("types: " + ", ".join(b["type"] for b in out["blocks"]), file=sys.stderr)


if __name__ == "__main__":
    main()
