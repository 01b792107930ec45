#!/usr/bin/env python3
"""Generate tests/golden/tokenizer_golden.jsonl: reference token ids from Hugging Face's own
implementation (the PyPI package `tokenizers`) for loraga's tokenizer tests.

CI does not run this; it compares against the committed output. To regenerate:

    python3 -m venv /tmp/venv-tok && /tmp/venv-tok/bin/pip install tokenizers
    # tokenizer.json files that loraga wrote from llama2.c tokenizer.bin files
    # (lg_tokenizer_save_hf; see docs/tokenizer.md), verified against our tokenizer.bin path:
    /tmp/venv-tok/bin/python scripts/tokenizer_golden.py \
        --extra tok512=/tmp/hf_tok512/tokenizer.json --extra llama2=/tmp/hf_llama2/tokenizer.json

Also writes tests/golden/tokenizer_variants.json (see VARIANTS).

Each output line: {"tokenizer": NAME, "text": STR, "ids": [...], "ids_special": [...],
"decoded": STR, "decoded_special": STR}
  ids          = tokenizer.encode(text, add_special_tokens=False).ids
  ids_special  = tokenizer.encode(text, add_special_tokens=True).ids
  decoded      = tokenizer.decode(ids)          (skip_special_tokens=True, the default)
  decoded_special = tokenizer.decode(ids_special)
NAME is the key in TOKENIZERS below (paths relative to ../shared/data) or an --extra name.
"""
import argparse
import json
import os
import sys

from tokenizers import Tokenizer

TOKENIZERS = {
    "gpt2": "tokenizer_gpt2_bpe/tokenizer.json",
    "mistral": "tokenizer_mistral7b_hf/tokenizer.json",
}

LONG_PARAGRAPH = (
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
    "One day, she saw a big, red ball.  She ran to it and kicked it as hard as she could!\n\n"
    "\"Wow,\" said her friend Tom. \"That was 25 meters, maybe 30!\"\n"
)

CORPUS = [
    # empty and whitespace runs
    "", " ", "  ", "   ", "\t", "\t\t\tx", "\n", "\n\n", "\n\n\n", " \n \n", "\r\n", "a\r\nb",
    "          x", " " * 20 + "y", "x" + " " * 17, "a\n\n\nb", "a \n b", "\t \n\t",
    # plain words
    "Hello world", " Hello world", "Hello  world", "Hello   ", "HELLO World!", "hello,world",
    "I'm you're they'll it's DON'T we've I'd", "'s 'S 'll", "supercalifragilisticexpialidocious",
    "a" * 300, "ab" * 200,
    # digits
    "1234567890", "3.14159", "1,000,000", "12 345 6789", "٣٤٥ ٠١٢", "①②③", "x1y22z333",
    # CJK and other scripts
    "你好，世界！", "日本語のテキストです。カタカナ", "한국어 텍스트입니다", "ภาษาไทย", "हिन्दी भाषा",
    "нещо на Български", "Ελληνικά γράμματα", "עברית", "العربية", "កាន់តែពិសេសអាច",
    # accents, combining marks
    "Führer café naïve résumé", "e\u0301 a\u0300 (combining)", "Ångström ﬁ ﬂ",
    # NFC: decomposed / reordered marks, Hangul jamo, singletons, composition exclusions
    "a\u0328\u0301 o\u0301\u0328 A\u030a\u0301", "\u1100\u1161\u11a8 \u1100\u1161", "\u212b \u2126 \u0958",
    "\u0b47\u0b3e \u1e0d\u0307 q\u0307\u0323", "\u00e9\u0301\u0301",
    # emoji, ZWJ sequences, flags, modifiers
    "🦙", "🦙🦙 llama", "👨\u200d👩\u200d👧\u200d👦 family", "🏳️\u200d🌈", "😶\u200d🌫️", "👍🏽 ok",
    "🇫🇷🇩🇪", "🚀 (normal) 😶‍🌫️ (multiple emojis concatenated) ✅ (only emoji that has its own token)",
    # unusual whitespace and controls
    "\u00a0nbsp", "a\u0085b", "x\u2003y", "p\u180eq", "ideo\u3000space", "zero\u200bwidth", "\x01\x02\x7f",
    "line\u2028sep", "\ufeffbom",
    # code
    "def f(x):\n    return x**2  # square\n",
    "int main(void) { return 0; }",
    "for (i = 0; i < n; i++) {\n\tsum += a[i];\n}",
    "if (a && b || !c) { x->y = z[0]; }",
    "https://example.com/path?q=1&r=2#frag",
    "!!!???... ------ ==== ####",
    # math / symbols
    "∑ x² ≈ ∞ → ∀ε>0", "€100 £50 ¥1000 $5.99",
    # markers that look like tokenizer internals
    "▁already ▁marked", "<0x41> <0x0A>", "Ġhello", "\u0100\u0120",
    # special / added tokens inside text
    "<|endoftext|>", "Hello<|endoftext|>world", " <|endoftext|> x", "<s>Hello</s>", " <s> x", "<unk>",
    "a</s>b", "<s><s>",
    # private use / astral
    "\U000f0000 \U0010fffd",
    LONG_PARAGRAPH,
    LONG_PARAGRAPH * 3,
]

SPECIAL_STRINGS = ("<s>", "</s>", "<unk>", "<|endoftext|>")

# Texts for the added-token flags (lstrip / rstrip / single_word / normalized) of gpt2_added.
CORPUS += ["the <mask> sat", "a   <mask>b", "x [X]   y", "[X]\n\nz", "cat concat cat. cats cat",
           "<mask><mask> [X][X]"]

LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
             r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
            r"\s*[\r\n]+|\s+(?!\S)|\s+")


def bytelevel(prefix=False, regex=False):
    return {"type": "ByteLevel", "add_prefix_space": prefix, "trim_offsets": True, "use_regex": regex}


def split(pattern, behavior, invert=False, literal=False):
    return {"type": "Split", "pattern": {"String" if literal else "Regex": pattern}, "behavior": behavior,
            "invert": invert}


def seq(*p):
    return {"type": "Sequence", "pretokenizers": list(p)}


def metaspace(scheme, split_):
    return {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": scheme, "split": split_}


def metaspace_dec(scheme):
    return {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": scheme, "split": True}


# Variants of the two real tokenizers with other pipeline components (the pre-tokenizers of
# LLaMA-3, Qwen2, SmolLM, Metaspace...). Written to tests/golden/tokenizer_variants.json:
# {name: {"base": ..., "set": {top-level key: value}, "model_set": {...}, "added_tokens_append": [...]}}
VARIANTS = {
    "gpt2_llama3": {"base": "gpt2", "set": {"pre_tokenizer": seq(split(LLAMA3_RE, "Isolated"), bytelevel())},
                    "model_set": {"ignore_merges": True}},
    "gpt2_qwen2": {"base": "gpt2", "set": {"normalizer": {"type": "NFC"},
                                           "pre_tokenizer": seq(split(QWEN2_RE, "Isolated"), bytelevel())}},
    "gpt2_smollm": {"base": "gpt2", "set": {"pre_tokenizer": seq({"type": "Digits", "individual_digits": True},
                                                                 bytelevel(regex=True))}},
    "gpt2_digits_contig": {"base": "gpt2", "set": {"pre_tokenizer": seq({"type": "Digits", "individual_digits": False},
                                                                        bytelevel(regex=True))}},
    "gpt2_prefix": {"base": "gpt2", "set": {"pre_tokenizer": bytelevel(prefix=True, regex=True)}},
    "gpt2_split_prev": {"base": "gpt2", "set": {"pre_tokenizer": seq(split(r"\s+", "MergedWithPrevious"), bytelevel())}},
    "gpt2_split_next": {"base": "gpt2", "set": {"pre_tokenizer": seq(split(" ", "MergedWithNext", literal=True),
                                                                      bytelevel())}},
    "gpt2_split_contig": {"base": "gpt2", "set": {"pre_tokenizer": seq(split(r"[aeiou]", "Contiguous"), bytelevel())}},
    "gpt2_split_removed_inv": {"base": "gpt2", "set": {"pre_tokenizer": seq(split(r"\p{L}+", "Removed", invert=True),
                                                                             bytelevel())}},
    "gpt2_wsplit": {"base": "gpt2", "set": {"pre_tokenizer": seq({"type": "WhitespaceSplit"}, bytelevel())}},
    "gpt2_added": {"base": "gpt2", "added_tokens_append": [
        {"id": 50257, "content": "<mask>", "single_word": False, "lstrip": True, "rstrip": False,
         "normalized": False, "special": True},
        {"id": 50258, "content": "[X]", "single_word": False, "lstrip": False, "rstrip": True,
         "normalized": True, "special": False},
        {"id": 50259, "content": "cat", "single_word": True, "lstrip": False, "rstrip": False,
         "normalized": False, "special": False}]},
    "mistral_metaspace_first": {"base": "mistral", "set": {"normalizer": None,
                                                           "pre_tokenizer": metaspace("first", False),
                                                           "decoder": metaspace_dec("first")}},
    "mistral_metaspace_split": {"base": "mistral", "set": {"normalizer": None,
                                                           "pre_tokenizer": metaspace("always", True),
                                                           "decoder": metaspace_dec("always")}},
    "mistral_pairs": {"base": "mistral", "merges_as_pairs": True},
}


def make_variant(base_path, v):
    with open(base_path, encoding="utf-8") as f:
        j = json.load(f)
    for k, val in v.get("set", {}).items():
        j[k] = val
    for k, val in v.get("model_set", {}).items():
        j["model"][k] = val
    j["added_tokens"] = j.get("added_tokens", []) + v.get("added_tokens_append", [])
    if v.get("merges_as_pairs"):
        j["model"]["merges"] = [m.split(" ", 1) if isinstance(m, str) else m for m in j["model"]["merges"]]
    return Tokenizer.from_str(json.dumps(j))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "golden",
                                                  "tokenizer_golden.jsonl"))
    ap.add_argument("--extra", action="append", default=[], metavar="NAME=PATH",
                    help="another tokenizer.json (e.g. one loraga converted from tokenizer.bin); texts "
                         "containing special-token strings are left out for these")
    args = ap.parse_args()

    toks = [(name, Tokenizer.from_file(os.path.join(args.shared, rel)), False) for name, rel in TOKENIZERS.items()]
    for name, v in VARIANTS.items():
        toks.append((name, make_variant(os.path.join(args.shared, TOKENIZERS[v["base"]]), v), False))
    for e in args.extra:
        name, _, path = e.partition("=")
        toks.append((name, Tokenizer.from_file(path), True))
    vpath = os.path.join(os.path.dirname(args.out), "tokenizer_variants.json")
    with open(vpath, "w", encoding="utf-8") as f:
        json.dump(VARIANTS, f, ensure_ascii=False, indent=1)

    n = 0
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        for name, tok, extra in toks:
            tok.no_truncation()  # transformers ignores tokenizer.json's truncation too
            tok.no_padding()
            for text in CORPUS:
                if extra and any(s in text for s in SPECIAL_STRINGS):
                    continue
                ids = tok.encode(text, add_special_tokens=False).ids
                ids_sp = tok.encode(text, add_special_tokens=True).ids
                row = {
                    "tokenizer": name,
                    "text": text,
                    "ids": ids,
                    "ids_special": ids_sp,
                    "decoded": tok.decode(ids),
                    "decoded_special": tok.decode(ids_sp),
                }
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
    print(f"wrote {n} rows to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
