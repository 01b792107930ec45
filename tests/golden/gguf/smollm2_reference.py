#!/usr/bin/env python3
"""Reference numbers for tests/test_gguf.c, made by Hugging Face transformers from the same GGUF file.

    python tests/golden/gguf/smollm2_reference.py GGUF [CONVERTED_HF_DIR] > tests/golden/gguf/smollm2_reference.json

Needs torch, transformers and gguf (pip). transformers reads the GGUF itself
(from_pretrained(dir, gguf_file=...)): it dequantises Q4_1/Q8_0 with the gguf package and undoes
llama.cpp's q/k permutation with its own code, so it is a check independent of ours. Prints JSON:
  tokenizer: ids of a varied corpus (no special tokens added),
  loss: ids of a fixed text and the mean next-token NLL over it (float32, eager attention),
  logits: a few logits of that forward (position, token, value),
  chat: ids of apply_chat_template on a messages row (no generation prompt) and the greedy
        continuation (ids, text) of a question with the generation prompt.
With CONVERTED_HF_DIR (loraga convert --from gguf output) it also loads that directory with
transformers and reports on stderr the largest logit difference against the GGUF path.
"""
import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

CORPUS = [
    "Hello world",
    "The capital of France is Paris.",
    "  leading spaces and trailing   ",
    "line one\nline two\n\n\nthree newlines\ttab",
    "Numbers: 0 7 42 1234567890 3.14159 -17 1e10 2024-05-01",
    "Prices $1,299.99 and 50% off!!! #deal @shop",
    "naïve café résumé Über straße",
    "日本語のテキストと中文文本，还有한국어",
    "Emoji: 😀🎉👍🏽 and flags 🇫🇷",
    "def f(x):\n    return x ** 2  # square\n",
    "<|im_start|>user\nhi<|im_end|>\n",
    "don't won't it's we'll they're I'm you've",
    "a" * 50 + " " + "ab" * 20,
    "Mixed CASE words ThisIsCamelCase snake_case kebab-case",
    "\u00a0non-breaking\u2003em space\u200bzero width",
    "",
]

TEXT = ("The quick brown fox jumps over the lazy dog. Machine learning models are trained on large "
        "amounts of text, and they learn to predict the next word in a sentence. "
        "In 1969, astronauts first walked on the Moon.")

MESSAGES = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "2+2 equals 4."},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": "3+3 equals 6."},
]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def extra_corpus():
    """Real text when ../shared/data is there (GSM8K word problems, SST-2 reviews); the texts are
    recorded in the JSON, so the test does not need the files."""
    out = []
    root = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "shared", "data")
    g = os.path.join(root, "gsm8k", "test.jsonl")
    if os.path.exists(g):
        with open(g) as f:
            for i, line in enumerate(f):
                if i >= 12:
                    break
                r = json.loads(line)
                out.append(r["question"] + "\n" + r["answer"])
    s = os.path.join(root, "glue_SST-2", "dev.tsv")
    if os.path.exists(s):
        with open(s) as f:
            out += [line.split("\t")[0] for line in list(f)[1:13]]
    return out


def main():
    gguf = os.path.abspath(sys.argv[1])
    conv = sys.argv[2] if len(sys.argv) > 2 else None
    torch.manual_seed(0)
    d, f = os.path.split(gguf)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    out = {"source": "transformers %s from %s" % (__import__("transformers").__version__, f)}
    corpus = CORPUS + extra_corpus()
    out["tokenizer"] = [{"text": s, "ids": tok(s, add_special_tokens=False)["input_ids"]} for s in corpus]
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = model(x).logits[0].double()
    nll = torch.nn.functional.cross_entropy(logits[:-1], x[0, 1:], reduction="mean")
    out["loss"] = {"text": TEXT, "ids": ids, "loss": nll.item()}
    probes = [(0, ids[1]), (5, 100), (len(ids) // 2, ids[len(ids) // 2 + 1]), (len(ids) - 1, 49151)]
    out["logits"] = [{"pos": p, "token": t, "value": logits[p, t].item()} for p, t in probes]
    chat_ids = tok.apply_chat_template(MESSAGES, tokenize=True, add_generation_prompt=False)
    if isinstance(chat_ids, dict) or hasattr(chat_ids, "keys"):
        chat_ids = chat_ids["input_ids"]
    q = tok.apply_chat_template(QUESTION, tokenize=True, add_generation_prompt=True)
    if isinstance(q, dict) or hasattr(q, "keys"):
        q = q["input_ids"]
    with torch.no_grad():
        g = model.generate(torch.tensor([q]), max_new_tokens=24, do_sample=False)[0, len(q):].tolist()
    out["chat"] = {"messages": MESSAGES, "ids": list(chat_ids),
                   "text": tok.apply_chat_template(MESSAGES, tokenize=False),
                   "question": QUESTION, "prompt_ids": list(q), "greedy_ids": g, "greedy_text": tok.decode(g)}
    if conv:
        m2 = AutoModelForCausalLM.from_pretrained(conv, dtype=torch.float32, attn_implementation="eager")
        t2 = AutoTokenizer.from_pretrained(conv)
        with torch.no_grad():
            l2 = m2(x).logits[0].double()
        diff = (l2 - logits).abs().max().item()
        same_tok = all(t2(s, add_special_tokens=False)["input_ids"] == r["ids"]
                       for s, r in zip(corpus, out["tokenizer"]))
        same_chat = list(t2.apply_chat_template(MESSAGES, tokenize=False)) == list(out["chat"]["text"])
        print("converted dir vs GGUF in transformers: max |logit diff| = %.3g, tokenizer ids equal: %s, "
              "chat template text equal: %s" % (diff, same_tok, same_chat), file=sys.stderr)
    json.dump(out, sys.stdout, ensure_ascii=False, indent=1)
    print()


if __name__ == "__main__":
    main()
