#!/usr/bin/env python3
"""check_stories260k.py — the real stories260K through loraga's llama2.c -> HF converter,
checked against transformers. A one-off verification, not CI (needs torch + transformers).

  make build/libloraga.a
  /work/venv/bin/python scripts/reference/check_stories260k.py     # from the repo root

1. compiles scripts/reference/stories260k_convert.c against build/libloraga.a;
2. lg_model_load(stories260K.bin) + lg_model_save_hf(tmpdir, float32);
3. loads tmpdir with transformers' LlamaForCausalLM (no missing/unexpected weights allowed);
4. on two sequences — the greedy continuation of BOS (computed by transformers) and a
   TinyStories validation story tokenised with tok512.bin by a re-implementation of llama2.c's
   encode() — compares transformers' mean next-token loss with loraga's, through the .bin and
   through the converted directory. Exit status 1 if any relative difference exceeds 1e-5.
"""
import os
import re
import struct
import subprocess
import sys
import tempfile

import torch
import transformers
from transformers import LlamaForCausalLM

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DATA = os.environ.get("LORAGA_SHARED", os.path.join(ROOT, "..", "shared", "data"))
BIN = os.path.join(DATA, "llama2c_stories260K", "stories260K.bin")
TOK = os.path.join(DATA, "llama2c_stories260K", "tok512.bin")
STORIES = os.path.join(DATA, "tinystories_subset", "validation_100.txt")
RTOL = 1e-5


def make_var(name):
    return subprocess.run(["make", "-s", "--no-print-directory", "--eval", "print-%: ; @echo $($*)",
                           "print-" + name], cwd=ROOT, check=True, capture_output=True, text=True).stdout.split()


def build_helper(tmp):
    subprocess.run(["make", "-s", "build/libloraga.a"], cwd=ROOT, check=True)
    exe = os.path.join(tmp, "stories260k_convert")
    cmd = (["gcc", "-std=c11", "-O2", "-Wall", "-Wextra"] + make_var("CPPFLAGS") +
           ["-o", exe, "scripts/reference/stories260k_convert.c", "build/libloraga.a"] + make_var("LDLIBS"))
    subprocess.run(cmd, cwd=ROOT, check=True)
    return exe, " ".join(cmd)


def read_tok512(path):
    pieces, scores = [], []
    with open(path, "rb") as f:
        (_maxlen,) = struct.unpack("<i", f.read(4))
        for _ in range(512):
            score, n = struct.unpack("<fi", f.read(8))
            pieces.append(f.read(n))
            scores.append(score)
    return pieces, scores


def encode(text, pieces, scores):
    """llama2.c run.c encode(): BOS, dummy-prefix space, code points (byte fallback +3),
    then greedy merges of the best-scoring adjacent pair."""
    lookup = {p: i for i, p in enumerate(pieces)}
    toks = [1]
    body = [lookup[b" "]] if text else []
    for ch in text:
        b = ch.encode("utf-8")
        body.extend([lookup[b]] if b in lookup else [x + 3 for x in b])
    while True:
        best, best_i, best_id = -1e10, -1, -1
        for i in range(len(body) - 1):
            j = lookup.get(pieces[body[i]] + pieces[body[i + 1]])
            if j is not None and scores[j] > best:
                best, best_i, best_id = scores[j], i, j
        if best_i < 0:
            break
        body[best_i:best_i + 2] = [best_id]
    return toks + body


def decode(ids, pieces):
    """Text of ids: BOS dropped, byte tokens as bytes, the dummy-prefix space after BOS dropped."""
    out, prev = b"", None
    for i in ids:
        if i == 1:
            prev = i
            continue
        p = pieces[i]
        m = re.fullmatch(rb"<0x([0-9A-F]{2})>", p)
        if m:
            p = bytes([int(m.group(1), 16)])
        if prev == 1:
            p = p.lstrip(b" ")
        out += p
        prev = i
    return out.decode("utf-8", "replace")


def hf_loss(model, ids):
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = model(input_ids=x).logits
    lp = torch.log_softmax(logits.double(), -1)
    return -lp[0, :-1].gather(-1, x[0, 1:, None]).mean().item()


def main():
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    pieces, scores = read_tok512(TOK)
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        exe, compile_cmd = build_helper(tmp)
        hf_dir = os.path.join(tmp, "hf")
        subprocess.run([exe, BIN, hf_dir], check=True)
        m32, info = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, output_loading_info=True)
        assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
        m64 = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float64)
        m32.eval(), m64.eval()
        cfg = m32.config
        print(f"converted config: dim {cfg.hidden_size}, layers {cfg.num_hidden_layers}, heads "
              f"{cfg.num_attention_heads}/{cfg.num_key_value_heads}, vocab {cfg.vocab_size}, "
              f"rope {cfg.rope_parameters}, max_pos {cfg.max_position_embeddings}")

        # greedy continuation of BOS, by transformers
        ids = [1]
        with torch.no_grad():
            for _ in range(199):
                ids.append(int(m32(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
        greedy_text = decode(ids, pieces)
        print("greedy:", repr(greedy_text[:160]), "...")
        assert greedy_text.startswith("Once upon a time, there was a little girl named Lily. She loved to play "
                                      "outside in the park."), greedy_text[:200]

        docs = [d.strip() for d in open(STORIES, encoding="utf-8").read().split("<|endoftext|>")]
        story = docs[1]  # docs[0] starts mid-story in this subset
        story_ids = encode(story, pieces, scores)[:256]
        assert decode(story_ids, pieces) == story[:len(decode(story_ids, pieces))]

        rows = []
        for name, seq in (("greedy from BOS (200 tokens)", ids), ("TinyStories validation story 2 (256 tokens)",
                                                                   story_ids)):
            path = os.path.join(tmp, "ids.txt")
            with open(path, "w") as f:
                f.write(" ".join(map(str, seq)))
            out = subprocess.run([exe, BIN, hf_dir, path], check=True, capture_output=True, text=True).stdout
            lg = dict(line.split() for line in out.strip().splitlines())
            l_bin, l_hf = float(lg["loss_bin"]), float(lg["loss_hf"])
            t32, t64 = hf_loss(m32, seq), hf_loss(m64, seq)
            worst = max(abs(l_bin - t64), abs(l_hf - t64)) / t64
            ok &= worst <= RTOL
            rows.append((name, t64, t32, l_bin, l_hf, worst))
        print("\n| sequence | transformers fp64 | transformers fp32 | loraga (.bin) | loraga (converted dir) "
              "| max rel. diff |\n|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r[0]} | {r[1]:.7f} | {r[2]:.7f} | {r[3]:.7f} | {r[4]:.7f} | {r[5]:.1e} |")
        print(f"\nversions: torch {torch.__version__}, transformers {transformers.__version__}")
        print(f"helper built with: {compile_cmd}")
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
