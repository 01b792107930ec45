#!/usr/bin/env python3
"""demo.py — the training half of `make demo`, driven by scripts/demo.sh (read that first).

Given a Hugging Face model directory and the task in demo/ (country -> one-line JSON answer), it
runs, with the loraga CLI only:

  1. the base model: held-out loss and greedy answers to the held-out questions ("before");
  2. LoRA-GA (gradient estimate -> SVD init -> training) and plain LoRA on the same budget;
  3. held-out loss and answers with each adapter ("after");
  4. the report: a table, before/after examples, compare.svg, summary.md / summary.json.

Everything is written under --out. Standard library only (Python 3.7+).
"""
import argparse
import concurrent.futures
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
import unicodedata

METHODS = [("lora", "LoRA"), ("lora-ga", "LoRA-GA")]
COLORS = {"base": "#888888", "lora": "#1f77b4", "lora-ga": "#d62728"}
_print_lock = threading.Lock()


def say(*a):
    with _print_lock:
        print(*a, flush=True)


def fmt_s(s):
    return "%.1f s" % s if s < 120 else "%d min %02d s" % (s // 60, s % 60)


# ---------------------------------------------------------------------------------------- data

def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(l) for l in f if l.strip()]


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def qa(row):
    """(question, answer, country, capital) of a demo chat row."""
    m = row["messages"]
    q = next(x["content"] for x in m if x["role"] == "user")
    a = next(x["content"] for x in m if x["role"] == "assistant")
    o = json.loads(a)
    return q, a, o["country"], o["capital"]


def plain_prompt(q):
    return "Q: %s\nA:" % q


def to_plain_rows(rows):
    """Chat rows -> prompt/completion rows, for models without a chat template (stories260K)."""
    out = []
    for r in rows:
        q, a, _, _ = qa(r)
        out.append({"prompt": plain_prompt(q), "completion": " " + a})
    return out


def chatml_system(model_dir):
    """The default system turn of a ChatML template (SmolLM2 adds one when the row has none)."""
    try:
        with open(os.path.join(model_dir, "tokenizer_config.json"), encoding="utf-8") as f:
            tpl = json.load(f).get("chat_template") or ""
    except (OSError, ValueError):
        return None
    if "<|im_start|>" not in tpl:
        return None
    m = re.search(r"<\|im_start\|>system(?:\n|\\n)(.*?)<\|im_end\|>", tpl, re.S)
    return m.group(1) if m and "messages[0]" in tpl else ""


def chat_prompt(system, q):
    head = "<|im_start|>system\n%s<|im_end|>\n" % system if system else ""
    return head + "<|im_start|>user\n%s<|im_end|>\n<|im_start|>assistant\n" % q


def norm(s):
    s = unicodedata.normalize("NFKD", s)
    return "".join(c for c in s if not unicodedata.combining(c)).lower()


KEYS = ["country", "answer", "capital"]


def same_country(a, b):
    """Peru = Perú, Netherlands = The Netherlands."""
    a, b = norm(a).strip(), norm(b).strip()
    a, b = (x[4:] if x.startswith("the ") else x for x in (a, b))
    return a == b


def score(answer, country, capital):
    """(json_format, capital_right, exact):
    json_format: the whole answer is one line of JSON with the keys country, answer, capital (in
      this order, string values) and the asked country (same_country: Peru = Perú, Netherlands = The Netherlands);
    capital_right: the right capital appears anywhere in the answer, whatever its form;
    exact: both, and the "capital" field is the right capital."""
    a = answer.strip()
    ok, field = False, None
    if "\n" not in a:
        try:
            o = json.loads(a)
            ok = (isinstance(o, dict) and list(o) == KEYS and all(isinstance(o[k], str) for k in KEYS)
                  and same_country(o["country"], country))
            field = o["capital"] if ok else None
        except ValueError:
            ok = False
    right = norm(capital) in norm(a)
    return ok, right, bool(ok and norm(field).strip() == norm(capital))


# ---------------------------------------------------------------------------------- the CLI

class Demo:
    def __init__(self, a):
        self.a = a
        self.timings = []  # (phase, seconds)
        self.env1 = dict(os.environ, OMP_NUM_THREADS="1")
        self.envT = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
        os.makedirs(os.path.join(a.out, "logs"), exist_ok=True)
        os.makedirs(os.path.join(a.out, "eval"), exist_ok=True)

    def phase(self, name, t0):
        dt = time.time() - t0
        self.timings.append((name, dt))
        say("== %s: %s" % (name, fmt_s(dt)))

    def run_logged(self, cmd, log, env):
        """Runs cmd, echoing its output indented (progress) and keeping it in log."""
        with open(log, "w", encoding="utf-8") as lf:
            lf.write("$ " + " ".join(_q(c) for c in cmd) + "\n")
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                 universal_newlines=True, errors="replace")
            out = []
            for line in p.stdout:
                lf.write(line)
                lf.flush()
                out.append(line)
                say("   " + line.rstrip("\n"))
            rc = p.wait()
        if rc != 0:
            sys.exit("demo: command failed (exit %d), log in %s:\n  %s" % (rc, log, " ".join(_q(c) for c in cmd)))
        return "".join(out)

    def heldout_loss(self, adapter, tag):
        cmd = [self.a.bin, "eval", "--model", self.a.model, "--data", self.a.heldout_rows, "--json"]
        if adapter:
            cmd += ["--adapter", adapter]
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.envT,
                           universal_newlines=True)
        if p.returncode != 0:
            sys.exit("demo: %s failed:\n%s" % (" ".join(cmd), p.stderr))
        r = json.loads(p.stdout.strip().splitlines()[-1])
        with open(os.path.join(self.a.out, "eval", tag + ".heldout_loss.json"), "w") as f:
            json.dump(r, f)
            f.write("\n")
        say("   held-out loss (%s): %.4f over %d answer tokens" % (tag, r["loss"], r["tokens"]))
        return r["loss"]

    def answers(self, adapter, tag, label):
        """Greedy answers to the held-out questions, one `loraga generate` per question, run
        --workers at a time with one thread each (decoding one token at a time is bound by
        memory bandwidth, so parallel processes use 2 cores better than 2 threads)."""
        todo = self.questions
        res = [None] * len(todo)
        done = [0]

        def one(i):
            q, _, country, capital = todo[i]
            prompt = chat_prompt(self.system, q) if self.system is not None else plain_prompt(q)
            cmd = [self.a.bin, "generate", "--model", self.a.model, "--prompt", prompt, "--temperature", "0",
                   "--max-tokens", str(self.a.max_tokens), "--no-echo"]
            if adapter:
                cmd += ["--adapter", adapter]
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env1)
            if p.returncode != 0:
                raise RuntimeError("%s failed:\n%s" % (" ".join(cmd[:4]), p.stderr.decode("utf-8", "replace")))
            text = p.stdout.decode("utf-8", "replace").strip()
            if self.system is None:  # plain prompt: the answer is the first line
                text = text.split("\n")[0].strip()
            f, c, x = score(text, country, capital)
            res[i] = {"question": q, "country": country, "capital": capital, "answer": text,
                      "json_format": f, "capital_right": c, "exact": x}
            with _print_lock:
                done[0] += 1
                short = text.replace("\n", " | ")
                print("   [%s %2d/%d] %-12s %s %s" % (label, done[0], len(todo), country[:12], "JSON" if f else "  - ",
                                                   short[:80] + ("..." if len(short) > 80 else "")), flush=True)

        with concurrent.futures.ThreadPoolExecutor(max_workers=self.a.workers) as ex:
            for fut in [ex.submit(one, i) for i in range(len(todo))]:
                fut.result()
        write_jsonl(os.path.join(self.a.out, "eval", tag + ".answers.jsonl"), res)
        nf = sum(r["json_format"] for r in res)
        nc = sum(r["capital_right"] for r in res)
        nx = sum(r["exact"] for r in res)
        say("   %s: %d/%d answers in the JSON format, %d/%d name the right capital, %d/%d both"
            % (label, nf, len(res), nc, len(res), nx, len(res)))
        return res

    def train(self, method, lr):
        a = self.a
        run = os.path.join(a.out, method)
        cmd = [a.bin, "train", "--model", a.model, "--data", a.train_rows, "--method", method,
               "--steps", str(a.steps), "--batch-size", str(a.batch_size), "--seq-len", str(a.seq_len),
               "--lr", str(lr), "--rank", str(a.rank), "--seed", str(a.seed), "--out", run]
        if method == "lora-ga":
            cmd += ["--ga-batches", str(a.ga_batches), "--ga-batch-size", str(a.ga_batch_size)]
        say("   $ " + " ".join(_q(c) for c in cmd))
        out = self.run_logged(cmd, os.path.join(a.out, "logs", "train-%s.log" % method), self.envT)
        m = re.search(r"estimation ([0-9.]+)s .*factorisation ([0-9.]+)s", out)
        steps = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl")) if l.strip()]
        steps = [s for s in steps if "loss" in s and "step" in s and s.get("split", "train") == "train"]
        return {"run": run, "lr": lr, "cmd": cmd, "steps": steps,
                "ga_estimate_s": float(m.group(1)) if m else None,
                "ga_factorise_s": float(m.group(2)) if m else None}

    def go(self):
        a = self.a
        t_all = time.time()
        self.system = chatml_system(a.model)
        rows = read_jsonl(a.heldout)
        if a.n_heldout:
            rows = rows[:a.n_heldout]
        self.questions = [qa(r) for r in rows]
        # rows as the model takes them (chat rows as they are; plain prompt/completion otherwise)
        a.train_rows, a.heldout_rows = a.train, os.path.join(a.out, "eval", "heldout_rows.jsonl")
        if self.system is None:
            os.makedirs(os.path.join(a.out, "data"), exist_ok=True)
            a.train_rows = os.path.join(a.out, "data", "train_rows.jsonl")
            write_jsonl(a.train_rows, to_plain_rows(read_jsonl(a.train)))
            write_jsonl(a.heldout_rows, to_plain_rows(rows))
        else:
            write_jsonl(a.heldout_rows, rows)
        ntrain = len(read_jsonl(a.train))
        say("task: answer \"What is the capital of X?\" with one line of JSON, e.g.\n      %s" % self.questions[0][1])
        say("      %d training questions (%s), %d held-out questions on other countries (%s)"
            % (ntrain, a.train, len(rows), a.heldout))
        say("      prompt format: %s" % ("ChatML, the model's own template" if self.system is not None
                                          else "plain 'Q: ...\\nA:' (the model has no chat template)"))

        say("\n== [3/6] base model, before training: held-out loss and answers")
        t0 = time.time()
        base_loss = self.heldout_loss(None, "base")
        base_ans = self.answers(None, "base", "base")
        self.phase("base model: held-out loss + %d answers" % len(rows), t0)

        res = {}
        for i, (method, label) in enumerate(reversed(METHODS)):
            lr = a.lr_loraga if method == "lora-ga" else a.lr_lora
            what = ("gradient estimate on %d x %d rows, SVD init, %d steps" % (a.ga_batches, a.ga_batch_size, a.steps)
                    if method == "lora-ga" else "%d steps, the same batches" % a.steps)
            say("\n== [%d/6] %s: %s (lr %g)" % (4 + i, label, what, lr))
            t0 = time.time()
            r = self.train(method, lr)
            r["train_s"] = time.time() - t0
            r["heldout_loss"] = self.heldout_loss(r["run"], method)
            r["answers"] = self.answers(r["run"], method, label)
            r["seconds"] = time.time() - t0
            res[method] = r
            self.phase("%s: train %d steps + held-out loss + %d answers" % (label, a.steps, len(rows)), t0)

        say("\n== [6/6] report")
        t0 = time.time()
        self.report(base_loss, base_ans, res)
        self.phase("report", t0)
        self.timings_total = time.time() - t_all
        self.write_summary(base_loss, base_ans, res)

    # ------------------------------------------------------------------------------ report

    def loss_at(self, steps, k):
        for s in steps:
            if s["step"] == k:
                return s["loss"]
        return None

    def table(self, base_loss, base_ans, res):
        a = self.a
        ks = [k for k in (2, 3, 5, 10, 20, 50, 100) if k < a.steps][:4] + [a.steps]
        n = len(base_ans)
        head = (["method", "lr"] + ["train loss @%d" % k for k in ks]
                + ["steps to loss < %g" % a.target_loss, "held-out loss", "JSON format", "right capital", "both",
                   "train time"])
        rows = [["base model (no training)", "-"] + ["-"] * len(ks) + ["-"]
                + ["%.3f" % base_loss, "%d/%d" % (sum(r["json_format"] for r in base_ans), n),
                   "%d/%d" % (sum(r["capital_right"] for r in base_ans), n),
                   "%d/%d" % (sum(r["exact"] for r in base_ans), n), "-"]]
        for method, label in METHODS:
            r = res[method]
            ls = [self.loss_at(r["steps"], k) for k in ks]
            hit = next((s["step"] for s in r["steps"] if s["loss"] < a.target_loss), None)
            rows.append([label, "%g" % r["lr"]] + ["%.3f" % x if x is not None else "?" for x in ls]
                        + ["%d" % hit if hit else "> %d" % a.steps,
                           "%.3f" % r["heldout_loss"],
                           "%d/%d" % (sum(x["json_format"] for x in r["answers"]), n),
                           "%d/%d" % (sum(x["capital_right"] for x in r["answers"]), n),
                           "%d/%d" % (sum(x["exact"] for x in r["answers"]), n),
                           "%.0f s" % r["train_s"]])
        return head, rows

    def report(self, base_loss, base_ans, res):
        a = self.a
        head, rows = self.table(base_loss, base_ans, res)
        self.md_table = md_table(head, rows)
        say("")
        say(self.md_table)
        say("\n(train loss: the loss of that step's batch of %d rows, the same rows for both methods; train time "
            "includes loading the model and, for LoRA-GA, its gradient estimate and SVD)" % a.batch_size)
        ga = res["lora-ga"]
        if ga["ga_estimate_s"] is not None:
            say("LoRA-GA's extra work: gradient estimate %.1f s + factorisation %.1f s, included above."
                % (ga["ga_estimate_s"], ga["ga_factorise_s"]))
        # before / after
        ex = []
        say("\nBefore / after on held-out questions (greedy decoding):")
        for i in range(min(a.examples, len(base_ans))):
            b, g, l = base_ans[i], ga["answers"][i], res["lora"]["answers"][i]
            ex.append((b["question"], b["answer"], l["answer"], g["answer"]))
            say("  Q: %s" % b["question"])
            say("     base model : %s" % b["answer"].replace("\n", " | "))
            say("     + LoRA-GA  : %s" % g["answer"].replace("\n", " | "))
            say("     (+ LoRA    : %s)" % l["answer"].replace("\n", " | "))
        self.examples = ex
        svg = os.path.join(a.out, "compare.svg")
        with open(svg, "w", encoding="utf-8") as f:
            f.write(compare_svg(res, base_loss, base_ans, a))
        say("\nwrote %s (loss curves of both runs + held-out results)" % svg)

    def write_summary(self, base_loss, base_ans, res):
        a = self.a
        setup = []
        if a.timings and os.path.exists(a.timings):
            for line in open(a.timings, encoding="utf-8"):
                if "\t" in line:
                    n, s = line.rstrip("\n").split("\t", 1)
                    setup.append((n, float(s)))
        allt = setup + self.timings
        total = sum(s for _, s in allt)
        say("\nTime per phase (%d cores, load average %s at the start):" % (os.cpu_count() or 0, a.load))
        for n, s in allt:
            say("  %-62s %10s" % (n, fmt_s(s)))
        say("  %-62s %10s" % ("total", fmt_s(total)))
        if not a.quick:
            say("The budget is 5 minutes on 2 cores: this run took %s on %d cores%s. What fits: %d steps x %d "
                "rows x %d tokens per method, rank %d on every linear layer, LoRA-GA's gradient on %d rows, %d greedy "
                "answers; no learning-rate sweep, one seed."
                % (fmt_s(total), os.cpu_count() or 0,
                   " (over budget: a busy machine? load average %s at the start, %s at the end)"
                   % (a.load, _load()) if total > 300 else "",
                   a.steps, a.batch_size, a.seq_len, a.rank, a.ga_batches * a.ga_batch_size, 3 * len(base_ans)))
        train_tokens = a.steps * a.batch_size * a.seq_len
        summary = {
            "model": a.label, "model_dir": a.model, "quick": a.quick,
            "steps": a.steps, "batch_size": a.batch_size, "seq_len": a.seq_len, "rank": a.rank,
            "ga_batches": a.ga_batches, "ga_batch_size": a.ga_batch_size, "threads": a.threads,
            "heldout_questions": len(base_ans), "base": {"heldout_loss": base_loss,
                                                          "json_format": sum(r["json_format"] for r in base_ans),
                                                          "capital_right": sum(r["capital_right"] for r in base_ans),
                                                          "exact": sum(r["exact"] for r in base_ans)},
            "timings_s": {n: round(s, 2) for n, s in allt}, "total_s": round(total, 2),
        }
        for method, _ in METHODS:
            r = res[method]
            summary[method] = {"lr": r["lr"], "adapter": r["run"], "heldout_loss": r["heldout_loss"],
                               "json_format": sum(x["json_format"] for x in r["answers"]),
                               "capital_right": sum(x["capital_right"] for x in r["answers"]),
                               "exact": sum(x["exact"] for x in r["answers"]),
                               "train_loss": [[s["step"], s["loss"]] for s in r["steps"]],
                               "seconds": round(r["seconds"], 2), "command": r["cmd"],
                               "ga_estimate_s": r["ga_estimate_s"], "ga_factorise_s": r["ga_factorise_s"]}
        with open(os.path.join(a.out, "summary.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1, ensure_ascii=False)
            f.write("\n")
        lines = ["# loraga demo: %s learns to answer in one line of JSON" % a.label, "",
                 "Generated by `scripts/demo.sh%s` on %s (%d cores, load average %s at the start)."
                 % (" --quick" if a.quick else "", time.strftime("%Y-%m-%d %H:%M"), os.cpu_count() or 0, a.load), "",
                 "Budget, the same for both methods: %d steps x %d rows x %d tokens (%d token slots), rank %d on "
                 "every linear layer; LoRA-GA also estimates the gradient on %d x %d rows first."
                 % (a.steps, a.batch_size, a.seq_len, train_tokens, a.rank, a.ga_batches, a.ga_batch_size), "",
                 self.md_table, "",
                 "JSON format: the whole answer is one line `{\"country\": X, \"answer\": ..., \"capital\": Y}` "
                 "for the asked X. Right capital: the expected capital appears anywhere in the answer. Both: JSON "
                 "format and the `capital` field right. Greedy decoding, %d held-out countries that are not in "
                 "the training rows." % len(base_ans), "",
                 "![loss curves and held-out results](compare.svg)", "", "## Before / after", ""]
        for q, b, l, g in self.examples:
            lines += ["- **%s**" % q, "  - base model: `%s`" % b.replace("\n", " "),
                      "  - LoRA-GA: `%s`" % g.replace("\n", " "), "  - LoRA: `%s`" % l.replace("\n", " ")]
        lines += ["", "## Time per phase", "", "| phase | time |", "|---|---|"]
        lines += ["| %s | %s |" % (n, fmt_s(s)) for n, s in allt] + ["| **total** | **%s** |" % fmt_s(total), ""]
        lines += ["## Files", "",
                  "- `lora-ga/`, `lora/`: PEFT adapters (`adapter_model.safetensors`, `adapter_config.json`), "
                  "`metrics.jsonl`, `loss.svg`; `lora-ga/loraga_diagnostics.jsonl` (per-layer captured "
                  "gradient energy and first-step alignment error)",
                  "- `eval/`: held-out answers (`*.answers.jsonl`) and losses; `logs/`: the full output of "
                  "each training run", "- `compare.svg`: both loss curves and the held-out results", "",
                  "Try it: `build/loraga generate --model %s --adapter %s --temperature 0 --prompt "
                  "'<ChatML prompt>'`, or load the adapter with PEFT (README.md)." % (a.model, res["lora-ga"]["run"]), ""]
        with open(os.path.join(a.out, "summary.md"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines))
        say("\nwrote %s and summary.json" % os.path.join(a.out, "summary.md"))


def _load():
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except OSError:
        return "?"


def _q(s):
    return s if re.match(r"^[A-Za-z0-9_./=:+,-]+$", s) else "'" + s.replace("'", "'\\''") + "'"


def md_table(head, rows):
    w = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w[i]) for i, c in enumerate(r)) + " |"
    return "\n".join([line(head), "|" + "|".join("-" * (x + 2) for x in w) + "|"] + [line(r) for r in rows])


# ------------------------------------------------------------------------------- the picture

def compare_svg(res, base_loss, base_ans, a):
    W, H = 960, 410
    # left panel: training loss per step, both runs; held-out loss as dashed lines
    x0, y0, pw, ph = 70, 50, 520, 290
    steps = max(max(s["step"] for s in res[m]["steps"]) for m, _ in METHODS)
    ys = [s["loss"] for m, _ in METHODS for s in res[m]["steps"]] + [res[m]["heldout_loss"] for m, _ in METHODS]
    ymax = max(ys + [base_loss] + [1e-6]) * 1.05
    unit = 10 ** math.floor(math.log10(ymax))  # a round top, so the 5 ticks are round too
    ymax = next(k * unit for k in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10) if k * unit >= ymax)
    X = lambda s: x0 + (s - 1) / max(1, steps - 1) * pw
    Y = lambda v: y0 + ph - v / ymax * ph
    o = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
         'font-family="sans-serif" font-size="12">' % (W, H, W, H),
         '<rect width="100%" height="100%" fill="white"/>',
         '<text x="%d" y="24" font-size="15" font-weight="bold">%s: LoRA-GA vs LoRA, same budget '
         '(%d steps x %d rows, rank %d)</text>' % (x0, _esc(a.label), a.steps, a.batch_size, a.rank),
         '<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#333"/>' % (x0, y0, pw, ph)]
    for i in range(6):
        v = ymax * i / 5
        o.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#eee"/>' % (x0, x0 + pw, Y(v), Y(v)))
        o.append('<text x="%d" y="%.1f" text-anchor="end">%.2f</text>' % (x0 - 6, Y(v) + 4, v))
    every = next(d for d in (1, 2, 5, 10, 20, 25, 50, 100, 200, 500, 1000, 10 ** 9) if steps / d <= 10)
    for s in sorted({1, steps} | set(range(every, steps + 1, every))):
        if s != steps and steps - s < every / 2 and s != 1:
            continue
        o.append('<text x="%.1f" y="%d" text-anchor="middle">%d</text>' % (X(s), y0 + ph + 16, s))
    o.append('<text x="%d" y="%d" text-anchor="middle">step</text>' % (x0 + pw / 2, y0 + ph + 34))
    o.append('<text x="18" y="%d" transform="rotate(-90 18 %d)" text-anchor="middle">training loss '
             '(dashed: held-out loss at the end)</text>' % (y0 + ph / 2, y0 + ph / 2))
    o.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="%s" stroke-dasharray="2,3"/>'
             % (x0, x0 + pw, Y(base_loss), Y(base_loss), COLORS["base"]))
    o.append('<rect x="%d" y="%d" width="250" height="58" fill="white" fill-opacity="0.9" stroke="#ccc"/>'
             % (x0 + pw - 258, y0 + 6))
    ly = y0 + 22
    for m, label in METHODS:
        r = res[m]
        pts = " ".join("%.1f,%.1f" % (X(s["step"]), Y(s["loss"])) for s in r["steps"])
        o.append('<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>' % (COLORS[m], pts))
        o.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="%s" stroke-dasharray="6,4"/>'
                 % (x0, x0 + pw, Y(r["heldout_loss"]), Y(r["heldout_loss"]), COLORS[m]))
        o.append('<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="%s" stroke-width="2"/>'
                 % (x0 + pw - 250, x0 + pw - 225, ly - 4, ly - 4, COLORS[m]))
        o.append('<text x="%d" y="%d">%s, lr %g: held-out %.3f</text>'
                 % (x0 + pw - 220, ly, label, r["lr"], r["heldout_loss"]))
        ly += 16
    o.append('<text x="%d" y="%d" fill="%s">base model: held-out %.3f (dotted)</text>'
             % (x0 + pw - 250, ly, COLORS["base"], base_loss))
    # right panel: held-out answers (100% at 90% of the height, so the counts above the bars fit)
    bx, bw = 660, 270
    n = max(1, len(base_ans))
    groups = [("base", "base model", base_ans)] + [(m, l, res[m]["answers"]) for m, l in METHODS]
    H1 = ph * 0.9
    o.append('<text x="%d" y="%d" font-weight="bold">held-out answers (%d questions)</text>' % (bx, y0 - 8, len(base_ans)))
    o.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#333"/>' % (bx, y0, bw, ph))
    for i in range(5):
        v = i / 4
        yy = y0 + ph - v * H1
        o.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#eee"/>' % (bx, bx + bw, yy, yy))
        o.append('<text x="%d" y="%.1f" text-anchor="end">%d%%</text>' % (bx - 4, yy + 4, v * 100))
    gw = bw / len(groups)
    for gi, (m, label, ans) in enumerate(groups):
        bar = (gw - 16) / 3
        for k, (key, op) in enumerate((("json_format", "1"), ("capital_right", "0.5"), ("exact", "0.25"))):
            v = sum(r[key] for r in ans) / n
            x = bx + gi * gw + 8 + k * bar
            o.append('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s" fill-opacity="%s" stroke="%s"/>'
                     % (x, y0 + ph - v * H1, bar - 3, v * H1, COLORS[m], op, COLORS[m]))
            o.append('<text x="%.1f" y="%.1f" text-anchor="middle" font-size="11">%d</text>'
                     % (x + (bar - 3) / 2, y0 + ph - v * H1 - 3, sum(r[key] for r in ans)))
        o.append('<text x="%.1f" y="%d" text-anchor="middle">%s</text>' % (bx + gi * gw + gw / 2, y0 + ph + 16, label))
    o.append('<text x="%d" y="%d">bars: JSON format | right capital | both</text>' % (bx, y0 + ph + 34))
    o.append("</svg>\n")
    return "\n".join(o)


def _esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="the loraga binary")
    ap.add_argument("--model", required=True, help="Hugging Face model directory")
    ap.add_argument("--label", default="model", help="model name for the report")
    ap.add_argument("--train", required=True, help="training chat rows (JSONL)")
    ap.add_argument("--heldout", required=True, help="held-out chat rows (JSONL)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=88, help="the longest demo row is 82 tokens")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--lr-lora", type=float, default=1e-3)
    ap.add_argument("--lr-loraga", type=float, default=5e-5)
    ap.add_argument("--target-loss", type=float, default=0.5, help="for the steps-to-loss column")
    ap.add_argument("--ga-batches", type=int, default=4)
    ap.add_argument("--ga-batch-size", type=int, default=4)
    ap.add_argument("--n-heldout", type=int, default=0, help="0 = all")
    ap.add_argument("--max-tokens", type=int, default=48, help="the longest answer is ~36 tokens")
    ap.add_argument("--examples", type=int, default=4)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--timings", help="file of 'phase<TAB>seconds' lines from the setup phases")
    ap.add_argument("--load", default="?")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    try:
        Demo(a).go()
    except (RuntimeError, OSError, ValueError) as e:
        sys.exit("demo: %s" % e)


if __name__ == "__main__":
    main()
