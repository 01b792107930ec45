#!/usr/bin/python3
"""prep_data.py OUTDIR [N_TRAIN] — the experiment's data, from ../shared/data (standard library only).

  sst2_train.jsonl  N_TRAIN (default 3000) SST-2 training sentences as prompt/completion rows, balanced
                    (half positive), sentences of >= 6 words (SST-2's train split is mostly short
                    phrases; dev is whole sentences), shuffled with a fixed seed.
  sst2_dev.jsonl    the dev sentences, same format (validation loss on the real dev set).
  sst2_dev_task.jsonl  the same dev sentences as {"sentence", "label"} rows, for
                    `loraga eval --task sst2` (accuracy by comparing the two completions).
  gsm8k_text.jsonl  the first 1500 GSM8K training problems as plain text rows {"text": "Question: Q\nAnswer: A"}
                    (calculator annotations <<...>> removed): an out-of-domain language-modelling task
                    for a model trained on children's stories.
Sentences longer than MAXC = 120 characters are left out of all three (558 of the 872 dev sentences
remain), so every row fits a 128-token sequence whole: the completion is never cut off.
Prompt wording = lm-evaluation-harness's SST-2 prompt (the same as `loraga eval --task sst2`):
  "{sentence}\\nQuestion: Is this sentence positive or negative?\\nAnswer:" -> " positive" | " negative"
"""
import json
import os
import random
import re
import sys

MAXC = 120  # sentence characters: with the 512-token tokenizer the whole row then fits 128 tokens
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


def main():
    out = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
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
    print(f"sst2: {len(sel)} train rows ({len(pos)} positive), {len(dev)} dev rows", file=sys.stderr)


if __name__ == "__main__":
    main()
