#!/usr/bin/python3
"""prep_data.py OUTDIR [N_TRAIN] [--tokenizer T --loraga BIN --mrpc-max-tokens N]
— the experiment's data, from ../shared/data (standard library only).

  sst2_train.jsonl  N_TRAIN (default 3000) SST-2 training sentences as prompt/completion rows, balanced
                    (half positive), sentences of >= 6 words (SST-2's train split is mostly short
                    phrases; dev is whole sentences), shuffled with a fixed seed.
  sst2_dev.jsonl    the dev sentences, same format (validation loss on the real dev set).
  sst2_dev_task.jsonl  the same dev sentences as {"sentence", "label"} rows, for
                    `loraga eval --task sst2` (accuracy by comparing the two completions).
  gsm8k_text.jsonl  the first 1500 GSM8K training problems as plain text rows {"text": "Question: Q\nAnswer: A"}
                    (calculator annotations <<...>> removed): an out-of-domain language-modelling task
                    for a model trained on children's stories.
  mrpc_train.jsonl  the MRPC training pairs as prompt/completion rows (the prompt of `loraga eval --task
                    mrpc`: "Sentence 1: {s1}\nSentence 2: {s2}\nQuestion: Do both sentences mean the
                    same thing?\nAnswer:" -> " yes" | " no"), in file order shuffled with a fixed seed,
                    natural label balance (about 2/3 "yes"); only pairs whose row (prompt + completion)
                    is at most --mrpc-max-tokens tokens long (default 190: with BOS and EOS it fits a
                    192-token sequence) with the model's tokenizer, counted by `BIN tokenize`; without
                    --tokenizer a character limit (MRPC_MAXC = 180) stands in for it.
  mrpc_dev.jsonl / mrpc_dev_task.jsonl  the dev pairs under the same limit, as prompt/completion rows
                    (dev loss) and as {"sentence1","sentence2","label"} rows (`loraga eval --task mrpc`).
Sentences longer than MAXC = 120 characters are left out of all three (558 of the 872 dev sentences
remain), so every row fits a 128-token sequence whole: the completion is never cut off.
Prompt wording = lm-evaluation-harness's SST-2 prompt (the same as `loraga eval --task sst2`):
  "{sentence}\\nQuestion: Is this sentence positive or negative?\\nAnswer:" -> " positive" | " negative"
"""
import json
import os
import random
import re
import subprocess
import sys

MAXC = 120  # sentence characters: with the 512-token tokenizer the whole row then fits 128 tokens
MRPC_MAXC = 180  # MRPC: both sentences' characters, when no tokenizer is given
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")


def sst2_rows(path):
    with open(path, encoding="utf-8") as f:
        head = f.readline().rstrip("\n").split("\t")
        si, li = head.index("sentence"), head.index("label")
        for line in f:
            p = line.rstrip("\n").split("\t")
            if len(p) > max(si, li):
                yield p[si].strip(), int(p[li])


def row(sentence, label):
    return {"prompt": f"{sentence}\nQuestion: Is this sentence positive or negative?\nAnswer:",
            "completion": " positive" if label == 1 else " negative"}


def mrpc_pairs(path):
    with open(path, encoding="utf-8-sig") as f:
        head = f.readline().rstrip("\n").split("\t")
        qi, ai, bi = head.index("Quality"), head.index("#1 String"), head.index("#2 String")
        for line in f:
            p = line.rstrip("\n").split("\t")
            if len(p) > max(qi, ai, bi):
                yield p[ai].strip(), p[bi].strip(), int(p[qi])


def mrpc_row(s1, s2, label):
    return {"prompt": f"Sentence 1: {s1}\nSentence 2: {s2}\nQuestion: Do both sentences mean the same thing?\nAnswer:",
            "completion": " yes" if label == 1 else " no"}


def token_counts(rows, loraga, tokenizer):
    """Token count of prompt + completion for each row, with `loraga tokenize` (no special tokens)."""
    inp = "".join(json.dumps({"text": r["prompt"] + r["completion"]}) + "\n" for r in rows)
    res = subprocess.run([loraga, "tokenize", "--tokenizer", tokenizer, "--input", "-"], input=inp,
                         capture_output=True, text=True, check=True)
    counts = [len(json.loads(l)) for l in res.stdout.splitlines() if l.strip()]
    if len(counts) != len(rows):
        sys.exit(f"prep_data.py: tokenize returned {len(counts)} rows for {len(rows)}")
    return counts


def fits(pairs, opts):
    rows = [mrpc_row(*p) for p in pairs]
    if opts.get("tokenizer"):
        counts = token_counts(rows, opts["loraga"], opts["tokenizer"])
        return [p for p, c in zip(pairs, counts) if c <= opts["mrpc_max_tokens"]]
    return [p for p in pairs if len(p[0]) + len(p[1]) <= MRPC_MAXC]


def write_mrpc(out, data, opts):
    train = fits(list(mrpc_pairs(os.path.join(data, "glue_MRPC", "train.tsv"))), opts)
    random.Random(4321).shuffle(train)
    with open(os.path.join(out, "mrpc_train.jsonl"), "w", encoding="utf-8") as f:
        for p in train:
            f.write(json.dumps(mrpc_row(*p)) + "\n")
    dev = fits(list(mrpc_pairs(os.path.join(data, "glue_MRPC", "dev.tsv"))), opts)
    with open(os.path.join(out, "mrpc_dev.jsonl"), "w", encoding="utf-8") as f, \
            open(os.path.join(out, "mrpc_dev_task.jsonl"), "w", encoding="utf-8") as g:
        for a, b, l in dev:
            f.write(json.dumps(mrpc_row(a, b, l)) + "\n")
            g.write(json.dumps({"sentence1": a, "sentence2": b, "label": l}) + "\n")
    npos = sum(1 for p in train if p[2] == 1)
    print(f"mrpc: {len(train)} train rows ({npos} yes), {len(dev)} dev rows ({sum(1 for p in dev if p[2] == 1)} yes)"
          f" under {'%d tokens' % opts['mrpc_max_tokens'] if opts.get('tokenizer') else '%d characters' % MRPC_MAXC}",
          file=sys.stderr)


def main():
    args, opts = [], {"mrpc_max_tokens": 190, "loraga": "loraga"}
    it = iter(sys.argv[1:])
    for a in it:
        if a in ("--tokenizer", "--loraga", "--mrpc-max-tokens"):
            opts[a[2:].replace("-", "_")] = next(it)
        else:
            args.append(a)
    opts["mrpc_max_tokens"] = int(opts["mrpc_max_tokens"])
    out = args[0]
    n = int(args[1]) if len(args) > 1 else 3000
    data = os.environ.get("LORAGA_DATA", DATA)
    os.makedirs(out, exist_ok=True)
    train = [(s, l) for s, l in sst2_rows(os.path.join(data, "glue_SST-2", "train.tsv")) if len(s.split()) >= 6 and len(s) <= MAXC]
    rng = random.Random(1234)
    rng.shuffle(train)
    pos = [x for x in train if x[1] == 1][: n // 2]
    neg = [x for x in train if x[1] == 0][: n - n // 2]
    sel = pos + neg
    rng.shuffle(sel)
    with open(os.path.join(out, "sst2_train.jsonl"), "w", encoding="utf-8") as f:
        for s, l in sel:
            f.write(json.dumps(row(s, l)) + "\n")
    dev = [(s, l) for s, l in sst2_rows(os.path.join(data, "glue_SST-2", "dev.tsv")) if len(s) <= MAXC]
    with open(os.path.join(out, "sst2_dev.jsonl"), "w", encoding="utf-8") as f:
        for s, l in dev:
            f.write(json.dumps(row(s, l)) + "\n")
    with open(os.path.join(out, "sst2_dev_task.jsonl"), "w", encoding="utf-8") as f:
        for s, l in dev:
            f.write(json.dumps({"sentence": s, "label": l}) + "\n")
    with open(os.path.join(data, "gsm8k", "train.jsonl"), encoding="utf-8") as f, \
            open(os.path.join(out, "gsm8k_text.jsonl"), "w", encoding="utf-8") as g:
        for i, line in enumerate(f):
            if i == 1500:
                break
            r = json.loads(line)
            text = f"Question: {r['question']}\nAnswer: {re.sub(r'<<[^>]*>>', '', r['answer'])}"
            g.write(json.dumps({"text": text}) + "\n")
    write_mrpc(out, data, opts)
    print(f"sst2: {len(sel)} train rows ({len(pos)} positive), {len(dev)} dev rows", file=sys.stderr)


if __name__ == "__main__":
    main()
