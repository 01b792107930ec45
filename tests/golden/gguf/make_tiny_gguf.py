#!/usr/bin/env python3
"""Writes tests/golden/gguf/tiny_llama.gguf (< 100 KB), the offline fixture of tests/test_gguf.c.

    python tests/golden/gguf/make_tiny_gguf.py tests/golden/gguf/tiny_llama.gguf

Needs numpy, torch, transformers and gguf (pip). The file is written by the `gguf` package (the
llama.cpp project's own Python writer), so our reader is checked against an independent writer:

* a tiny LLaMA (2 layers, dim 64, 4 heads / 2 kv heads, FFN 96, vocab 289, tied embeddings) whose
  tensors use every type we dequantise: F32 norms, Q8_0, Q4_0, Q4_1, F16, BF16 matrices. The
  q/k rows are permuted as llama.cpp's convert_hf_to_gguf.py does for LLaMA
  (reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2)).
* reference logits "ref.logits" [T, V] for token ids "ref.ids", computed by transformers'
  LlamaForCausalLM holding the dequantised weights (float32, eager attention). The script then
  loads the written file with transformers' own GGUF loader (which undoes the permutation its own
  way) and checks it reproduces those logits: the fixture follows llama.cpp's convention.
* for each quantised type a small tensor "deq.<TYPE>" and "deq.<TYPE>.ref" (F32) holding the
  gguf package's dequantisation of it, compared bit for bit by the test.
* a byte-level BPE vocabulary (tokenizer.ggml.model gpt2, pre "smollm", 3 control tokens) with
  the ids transformers' GGUF tokenizer gives for a few strings ("test.tok.<i>.text" / ".ids"),
  SmolLM2's chat template, and a key of every metadata value type (including nested arrays and
  64-bit integers) with known values; general.alignment 64.
"""
import os
import sys
import tempfile

import numpy as np
import torch
import gguf
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

CHAT_TEMPLATE = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                 "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                 "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                 "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                 "{% endif %}")
TOK_TESTS = ["hello world", "the cat sat on the mat", "  two  spaces\nnew line", "digits 12345 and 7",
             "<|im_start|>user\nhi there<|im_end|>\n", "Ünïcödé ✓"]


def byte_alphabet():
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def vocab():
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    alpha = byte_alphabet()
    base = [alpha[b] for b in range(256)]
    pairs = ["Ġ t", "h e", "Ġt he", "Ġ a", "i n", "e r", "o n", "Ġ s", "a t", "Ġ c", "Ġc at", "Ġs at", "Ġ o",
             "Ġo n", "Ġ m", "Ġm at", "l l", "e ll", "h ell", "hell o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d",
             "Ġ Ġ", "Ċ Ċ", "s p", "a c", "e s"]
    merged = [p.replace(" ", "") for p in pairs]
    tokens = specials + base + merged
    assert len(set(tokens)) == len(tokens)
    types = [3] * len(specials) + [1] * (len(tokens) - len(specials))
    return tokens, types, pairs


def permute(w, n_head):
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute: HF rotate-half rows -> interleaved."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def main():
    out = sys.argv[1]
    rng = np.random.default_rng(1234)
    tokens, types, merges = vocab()
    V, C, F, L, H, KV, T = len(tokens), 64, 96, 2, 4, 2, 8
    cfg = LlamaConfig(vocab_size=V, hidden_size=C, intermediate_size=F, num_hidden_layers=L,
                      num_attention_heads=H, num_key_value_heads=KV, max_position_embeddings=64,
                      rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=1,
                      eos_token_id=2, attn_implementation="eager")
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).float().eval()
    # tensor -> (gguf name, type); types vary by layer so every block type reaches the model
    plan = {"model.embed_tokens.weight": ("token_embd.weight", Q.Q8_0), "model.norm.weight": ("output_norm.weight", Q.F32)}
    per_layer = [
        {"q_proj": Q.Q4_1, "k_proj": Q.Q4_0, "v_proj": Q.F16, "o_proj": Q.BF16, "gate_proj": Q.Q4_1, "up_proj": Q.Q4_0,
         "down_proj": Q.Q4_0},
        {"q_proj": Q.Q8_0, "k_proj": Q.F16, "v_proj": Q.Q4_1, "o_proj": Q.Q4_0, "gate_proj": Q.Q4_0, "up_proj": Q.Q4_1,
         "down_proj": Q.Q4_1},
    ]
    gname = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
             "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
    for l in range(L):
        plan[f"model.layers.{l}.input_layernorm.weight"] = (f"blk.{l}.attn_norm.weight", Q.F32)
        plan[f"model.layers.{l}.post_attention_layernorm.weight"] = (f"blk.{l}.ffn_norm.weight", Q.F32)
        for k, qt in per_layer[l].items():
            sub = "self_attn" if k.endswith("_proj") and k[0] in "qkvo" else "mlp"
            plan[f"model.layers.{l}.{sub}.{k}.weight"] = (f"blk.{l}.{gname[k]}.weight", qt)
    sd = model.state_dict()
    # the tensors: quantised for the file, dequantised into the reference model
    tensors = []
    for hf, (gn, qt) in plan.items():
        x = sd[hf].numpy().astype(np.float32)
        if x.ndim == 2:  # larger than the 0.02 init so the logits are far from uniform
            x = (rng.standard_normal(x.shape) * 0.3).astype(np.float32)
        else:
            x = (1.0 + 0.2 * rng.standard_normal(x.shape)).astype(np.float32)
        if hf.endswith("q_proj.weight"):
            xg = permute(x, H)
        elif hf.endswith("k_proj.weight"):
            xg = permute(x, KV)
        else:
            xg = x
        qd = quantize(xg, qt)
        tensors.append((gn, qd, qt))
        dq = dequantize(qd, qt).reshape(xg.shape)
        if hf.endswith("q_proj.weight") or hf.endswith("k_proj.weight"):  # undo, for the HF model
            n = H if "q_proj" in hf else KV
            dq = dq.reshape(n, dq.shape[0] // n // 2, 2, dq.shape[1]).swapaxes(1, 2).reshape(dq.shape)
        sd[hf] = torch.from_numpy(np.ascontiguousarray(dq))
    model.load_state_dict(sd, strict=False)
    model.tie_weights()
    ids = rng.integers(0, V, size=T).tolist()
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].float().numpy()
    n_model = len(tensors)
    tensors.append(("ref.logits", ref, Q.F32))
    tensors.append(("ref.ids", np.array(ids, dtype=np.int32), Q.I32))
    for qt in (Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.F16, Q.BF16):
        x = (rng.standard_normal((2, 64)) * 3).astype(np.float32)
        x[0, :32] += 5.0  # an offset block: Q4_1's m matters
        qd = quantize(x, qt)
        tensors.append((f"deq.{qt.name}", qd, qt))
        tensors.append((f"deq.{qt.name}.ref", dequantize(qd, qt).reshape(x.shape).astype(np.float32), Q.F32))
    V_ = gguf.GGUFValueType

    def write(path, goldens, extra):
        w = gguf.GGUFWriter(path, "llama")
        w.add_custom_alignment(64)
        w.add_name("loraga tiny llama fixture")
        w.add_block_count(L)
        w.add_context_length(64)
        w.add_embedding_length(C)
        w.add_feed_forward_length(F)
        w.add_head_count(H)
        w.add_head_count_kv(KV)
        w.add_rope_freq_base(10000.0)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_rope_dimension_count(C // H)
        w.add_vocab_size(V)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("smollm")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        w.add_pad_token_id(2)
        w.add_add_bos_token(False)
        w.add_chat_template(CHAT_TEMPLATE)
        if extra:  # every value type; transformers' reader cannot take the nested array
            for key, val, vt in [("test.u8", 200, V_.UINT8), ("test.i8", -100, V_.INT8), ("test.u16", 60000, V_.UINT16),
                                 ("test.i16", -30000, V_.INT16), ("test.u32", 4000000000, V_.UINT32),
                                 ("test.i32", -2000000000, V_.INT32), ("test.f32", 1.5, V_.FLOAT32),
                                 ("test.bool", True, V_.BOOL), ("test.u64", 2**40 + 7, V_.UINT64),
                                 ("test.i64", -(2**40) - 7, V_.INT64), ("test.f64", 0.1, V_.FLOAT64),
                                 ("test.str", "héllo", V_.STRING)]:
                w.add_key_value(key, val, vt)
            w.add_array("test.arr_str", ["a", "", "ünï"])
            w.add_key_value("test.arr_f32", [0.5, -2.0], V_.ARRAY, sub_type=V_.FLOAT32)
            w.add_array("test.arr_nested", [[1, 2], [3]])
        for i, (s, tids) in enumerate(goldens):
            w.add_string(f"test.tok.{i}.text", s)
            w.add_key_value(f"test.tok.{i}.ids", tids, V_.ARRAY, sub_type=V_.INT32)
        for gn, data, qt in tensors if extra else tensors[:n_model]:
            w.add_tensor(gn, data, raw_dtype=qt if qt not in (Q.F32, Q.F16, Q.I32) else None)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    # transformers reads a first version: its logits must be the reference model's, and its
    # tokenizer gives the goldens
    tmpdir = tempfile.mkdtemp()
    write(os.path.join(tmpdir, "t.gguf"), [], False)
    tok = AutoTokenizer.from_pretrained(tmpdir, gguf_file="t.gguf")
    m2 = AutoModelForCausalLM.from_pretrained(tmpdir, gguf_file="t.gguf", dtype=torch.float32,
                                              attn_implementation="eager").eval()
    with torch.no_grad():
        l2 = m2(torch.tensor([ids])).logits[0].float().numpy()
    diff = float(np.abs(l2 - ref).max())
    print(f"transformers' GGUF loader vs reference model: max |logit diff| = {diff:.3g}", file=sys.stderr)
    assert diff < 1e-4, diff
    goldens = [(s, tok(s, add_special_tokens=False)["input_ids"]) for s in TOK_TESTS]
    write(out, goldens, True)
    print(f"{out}: {os.path.getsize(out)} bytes; tokenizer goldens: {goldens}", file=sys.stderr)


if __name__ == "__main__":
    main()
