#!/usr/bin/env python3
"""hf_to_gguf.py — convert a (tiny, tokenizer-less) Hugging Face model directory to GGUF with
llama.cpp's own converter, convert_hf_to_gguf.py, from the source tree vendored in the PyPI sdist
of llama-cpp-python. Reference tooling for tests/golden only.

  hf_to_gguf.py MODEL_DIR OUT.gguf [--outtype f32]

The tiny models of make_tiny_models.py have no tokenizer, which the converter insists on: every
model class's set_vocab is replaced by a placeholder vocabulary of vocab_size tokens (single
characters and one merge, enough for llama.cpp to tokenise text of those characters), and a tokenizer.json listing as many tokens is provided for the
converters that count the real vocabulary (Gemma 3). Everything else — tensor names, the q/k
row permutation of LLaMA, Gemma's norm + 1, RoPE factor tensors, metadata keys — is the
converter's own.

The llama.cpp tree: $LLAMA_CPP_SRC, else ~/.cache/loraga/llama_cpp_python-*/vendor/llama.cpp
(after `pip download --no-deps llama-cpp-python` and unpacking the sdist there).
"""
import glob
import json
import os
import shutil
import string
import sys
import tempfile


def llama_cpp_src():
    d = os.environ.get("LLAMA_CPP_SRC")
    if d:
        return d
    found = sorted(glob.glob(os.path.expanduser("~/.cache/loraga/llama_cpp_python-*/vendor/llama.cpp")))
    if not found:
        raise SystemExit("llama.cpp source not found: set LLAMA_CPP_SRC or unpack the llama-cpp-python sdist under "
                         "~/.cache/loraga")
    return found[-1]


def convert(model_dir, out, outtype="f32"):
    src = llama_cpp_src()
    sys.path.insert(0, src)
    sys.path.insert(1, os.path.join(src, "gguf-py"))
    import convert_hf_to_gguf as C  # noqa: E402  (its main() is not run on import)
    from conversion import base  # noqa: E402

    def placeholder_vocab(self):
        # one printable character per token and a merge or two ("a b" -> "ab", the last tokens): a byte-level
        # BPE vocabulary llama.cpp loads and tokenises with, so that llama.cpp itself can run the model
        # on text made of these characters (tests/test_archs.c)
        n = self.hparams["vocab_size"]
        chars = string.ascii_letters + string.digits + "".join(c for c in map(chr, range(33, 127)) if not c.isalnum())
        k = max(1, n - len(chars))  # merged tokens "ab", "cd", ... fill what single characters cannot
        assert k <= 26, n
        pairs = [(string.ascii_lowercase[2 * i], string.ascii_lowercase[2 * i + 1]) for i in range(k)]
        tokens = list(chars[:n - k]) + [a + b for a, b in pairs]
        self.gguf_writer.add_tokenizer_model("gpt2")
        self.gguf_writer.add_tokenizer_pre("default")
        self.gguf_writer.add_token_list(tokens)
        self.gguf_writer.add_token_types([1] * n)
        self.gguf_writer.add_token_merges([f"{a} {b}" for a, b in pairs])
        self.gguf_writer.add_add_bos_token(False)

    # model classes are imported when the converter looks them up: patch the one it gets
    get_class = C.get_model_class

    def patched(*a, **kw):
        cls = get_class(*a, **kw)
        cls.set_vocab = placeholder_vocab
        return cls

    C.get_model_class = patched

    with tempfile.TemporaryDirectory() as tmp:
        for f in os.listdir(model_dir):
            if f.endswith((".json", ".safetensors")) and f != "reference.json":
                shutil.copy(os.path.join(model_dir, f), tmp)
        with open(os.path.join(tmp, "config.json")) as f:
            n = json.load(f)["vocab_size"]
        with open(os.path.join(tmp, "tokenizer.json"), "w") as f:
            json.dump({"model": {"type": "BPE", "vocab": {f"<t{i}>": i for i in range(n)}, "merges": []},
                       "added_tokens": []}, f)
        sys.argv = ["convert_hf_to_gguf.py", tmp, "--outfile", out, "--outtype", outtype]
        C.main()


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    convert(sys.argv[1], sys.argv[2], sys.argv[4] if len(sys.argv) > 4 and sys.argv[3] == "--outtype" else "f32")
