#!/usr/bin/env python3
"""Side of bench/bench_tokenizer.c for the Rust implementation (PyPI `tokenizers`), and the
maker of the shared corpora. One thread (TOKENIZERS_PARALLELISM=false, RAYON_NUM_THREADS=1).

    python3 bench/bench_tokenizer.py --make-corpus /tmp/tokbench      # ascii.txt, mixed.txt
    python3 bench/bench_tokenizer.py /tmp/tokbench/ascii.txt /tmp/tokbench/mixed.txt

Each line of a corpus file is one document (encoded without special tokens); the time covers
encoding all lines, best of --repeat runs, reported as MB/s of UTF-8 input.
"""
import argparse
import json
import os
import sys
import time

os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["RAYON_RS_NUM_CPUS"] = "1"

SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")
TOKENIZERS = {
    "gpt2": "tokenizer_gpt2_bpe/tokenizer.json",
    "mistral": "tokenizer_mistral7b_hf/tokenizer.json",
}

MULTI = [
    "你好，世界！今天的天气很好，我们去公园散步吧。机器学习模型需要大量的数据。",
    "日本語のテキストです。カタカナとひらがなと漢字が混ざっています。",
    "한국어 텍스트입니다. 토크나이저 성능을 측정합니다.",
    "Привет, мир! Это тестовый текст на русском языке для токенизатора.",
    "Ελληνικά γράμματα και κείμενο για δοκιμή. Ünïcödé ăccénts: Führer café naïve résumé.",
    "🚀 launch 😶‍🌫️ fog 👨‍👩‍👧‍👦 family 🏳️‍🌈 flag 👍🏽 ok ✅ done 🦙🦙",
    "def f(x):\n    return {k: v**2 for k, v in x.items() if v > 0}  # comment",
    "    for (int i = 0; i < n; i++) {\t sum += a[i] * b[i]; }   // 1234567890",
    "مرحبا بالعالم، هذا نص تجريبي. हिन्दी भाषा का पाठ। ภาษาไทยสำหรับการทดสอบ",
    "∑ x² ≈ ∞ → ∀ε>0 ∃δ>0; €100 £50 ¥1000 — “quoted” ‘text’…",
]


def make_corpus(out_dir, target_mb=4.0):
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    with open(os.path.join(SHARED, "gsm8k", "train.jsonl"), encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            rows.append(r["question"].replace("\n", " "))
            rows.append(r["answer"].replace("\n", " "))
    with open(os.path.join(SHARED, "tinystories_subset", "validation_100.txt"), encoding="utf-8") as f:
        rows += [l.strip() for l in f if l.strip() and l.strip() != "<|endoftext|>"]
    target = int(target_mb * 1e6)
    for name in ("ascii", "mixed"):
        out, size, i = [], 0, 0
        while size < target:
            line = rows[i % len(rows)]
            if name == "mixed" and i % 2 == 1:
                line = MULTI[(i // 2) % len(MULTI)] + " " + line
            if name == "ascii":
                line = line.encode("ascii", "ignore").decode()
            out.append(line)
            size += len(line.encode()) + 1
            i += 1
        with open(os.path.join(out_dir, name + ".txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(out) + "\n")
        print(f"wrote {out_dir}/{name}.txt: {size / 1e6:.2f} MB, {len(out)} lines", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*")
    ap.add_argument("--make-corpus", metavar="DIR")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if args.make_corpus:
        make_corpus(args.make_corpus)
    if not args.files:
        return
    from tokenizers import Tokenizer
    import tokenizers
    for name, rel in TOKENIZERS.items():
        tok = Tokenizer.from_file(os.path.join(SHARED, rel))
        tok.no_truncation()
        for path in args.files:
            with open(path, encoding="utf-8") as f:
                lines = f.read().split("\n")
            nbytes = sum(len(l.encode()) for l in lines)
            best, ntok = 1e9, 0
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                enc = tok.encode_batch(lines, add_special_tokens=False)
                dt = time.perf_counter() - t0
                best = min(best, dt)
                ntok = sum(len(e.ids) for e in enc)
            print(f"rust-tokenizers {tokenizers.__version__} {name:8s} {os.path.basename(path):10s} "
                  f"{nbytes / 1e6:6.2f} MB {ntok:9d} tokens {nbytes / 1e6 / best:8.2f} MB/s")


if __name__ == "__main__":
    main()
