#!/usr/bin/python3
"""analyse.py — tables and loss-curve pictures from experiments/run.sh's runs (standard library only).

  analyse.py OUT [--docs docs/experiments.md] [--img DIR] [--marker NAME] [--prefix P] [--model NAME]
                                                            tables (Markdown) and SVG pictures
  analyse.py --best-lr OUT TASK METHOD                      print the rate run.sh keeps for METHOD

OUT/runs/TASK/METHOD/lr<LR>_s<SEED>/metrics.jsonl holds one line per update (step, loss, ...) and
val_loss on evaluation steps. With --docs, the generated block replaces what lies between
"<!-- NAME:begin -->" and "<!-- NAME:end -->" in that file (NAME = --marker, default "results"; the
rest is hand-written). --prefix is put before the pictures' file names.

Definitions used in the tables:
  final validation loss   val_loss at the last step (the held-out split of the training file).
  best rate               the rate whose first-seed run has the lowest final validation loss.
  smoothed training loss  trailing mean over the last w updates (fewer at the start; w = 3 for SST-2,
                          10 for the language-modelling tasks), per seed; all methods of one seed see
                          the same batches in the same order.
  steps to target         for each seed: the target is the lowest smoothed training loss LoRA-GA has
                          reached by step k; the answer is the first step at which METHOD's smoothed
                          training loss is <= that target (same seed, both at their best rate);
                          "> N" when never within the run.
"""
import json
import math
import os
import re
import sys
from statistics import mean, stdev

METHODS = ["full", "lora", "rslora", "loraplus", "dora", "pissa", "adalora", "lora-ga"]
LABEL = {"full": "full FT", "lora": "LoRA", "rslora": "rsLoRA", "loraplus": "LoRA+", "dora": "DoRA",
         "pissa": "PiSSA", "adalora": "AdaLoRA", "lora-ga": "LoRA-GA"}
COLOR = {"full": "#000000", "lora": "#1f77b4", "rslora": "#17becf", "loraplus": "#2ca02c", "dora": "#9467bd",
         "pissa": "#8c564b", "adalora": "#e377c2", "lora-ga": "#d62728"}
SMOOTH = {"sst2": 3, "mrpc": 3}  # trailing-mean window per task (updates); other tasks: SMOOTH_LM
SMOOTH_LM = 10         # language modelling: batch-to-batch noise is large next to 100 steps' progress
TASK_ORDER = ["sst2", "mrpc", "tinystories", "gsm8k-lm"]
TASK_SHORT = {"sst2": "SST-2", "mrpc": "MRPC", "tinystories": "TinyStories", "gsm8k-lm": "GSM8K"}
TASK_TITLE = {"sst2": "SST-2 (prompt/completion)", "mrpc": "MRPC (prompt/completion)",
              "tinystories": "TinyStories (language modelling)",
              "gsm8k-lm": "GSM8K: problems as text (language modelling), scored by exact match"}
# the task metric of each task, read from dev_eval.json's "task" object: (key, column title)
METRIC = {"sst2": ("accuracy", "dev accuracy"), "mrpc": ("accuracy", "dev accuracy"),
          "gsm8k-lm": ("exact_match", "GSM8K exact match")}
LOGY = ("sst2", "mrpc")  # tasks whose loss curves are drawn on a log scale


# ---------------------------------------------------------------------------------------------
# reading

def read_run(path):
    mf = os.path.join(path, "metrics.jsonl")
    if not os.path.exists(mf):
        return None
    loss, val = {}, {}
    with open(mf) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            if "loss" in r and r["loss"] is not None:
                loss[r["step"]] = float(r["loss"])
            if r.get("val_loss") is not None:
                val[r["step"]] = float(r["val_loss"])
    if not loss:
        return None
    steps = max(loss)
    run = {"loss": [loss.get(s, float("nan")) for s in range(1, steps + 1)], "val": val, "steps": steps}
    run["final_val"] = val[max(val)] if val else float("nan")
    tf = os.path.join(path, "time.json")
    if os.path.exists(tf):
        try:
            with open(tf) as f:
                t = json.load(f)
            if "cpu" in t:  # "0m7.616s user 0m0.059s sys"
                mm = re.findall(r"(\d+)m([\d.]+)s", t["cpu"])
                if mm:
                    run["cpu_s"] = sum(int(a) * 60 + float(b) for a, b in mm)
        except ValueError:
            pass
    dev = os.path.join(path, "dev_eval.json")
    if os.path.exists(dev):
        try:
            with open(dev) as f:
                run["dev"] = json.load(f)
        except ValueError:
            pass
    return run


def load(out):
    """{task: {method: {lr_string: {seed: run}}}}"""
    res = {}
    base = os.path.join(out, "runs")
    if not os.path.isdir(base):
        return res
    for task in sorted(os.listdir(base)):
        for method in sorted(os.listdir(os.path.join(base, task))):
            d = os.path.join(base, task, method)
            if not os.path.isdir(d):
                continue
            for name in os.listdir(d):
                m = re.fullmatch(r"lr(.+)_s(\d+)", name)
                if not m:
                    continue
                run = read_run(os.path.join(d, name))
                if run is None:
                    run = {"failed": True, "final_val": float("inf"), "loss": [], "val": {}, "steps": 0}
                res.setdefault(task, {}).setdefault(method, {}).setdefault(m.group(1), {})[int(m.group(2))] = run
    return res


def finite(x):
    return x is not None and not math.isnan(x) and not math.isinf(x)


def best_lr(runs_by_lr):
    """The rate whose first-seed run ends with the lowest validation loss."""
    first = min(s for lr in runs_by_lr.values() for s in lr)
    cands = [(r[first]["final_val"] if finite(r[first]["final_val"]) else float("inf"), float(lr), lr)
             for lr, r in runs_by_lr.items() if first in r]
    return min(cands)[2]


def smooth(xs, w):
    out = []
    for i in range(len(xs)):
        win = [x for x in xs[max(0, i - w + 1): i + 1] if finite(x)]
        out.append(mean(win) if win else float("nan"))
    return out


def ms(xs, nd=3):
    xs = [x for x in xs if finite(x)]
    if not xs:
        return "–"
    if len(xs) == 1:
        return f"{xs[0]:.{nd}f}"
    return f"{mean(xs):.{nd}f} ± {stdev(xs):.{nd}f}"


# ---------------------------------------------------------------------------------------------
# SVG line charts

def nice_ticks(lo, hi, n=5):
    span = hi - lo
    if span <= 0:
        return [lo]
    step = 10 ** math.floor(math.log10(span / n))
    for m in (1, 2, 2.5, 5, 10):
        if span / (step * m) <= n:
            step *= m
            break
    t = math.ceil(lo / step) * step
    out = []
    while t <= hi + 1e-12:
        out.append(round(t, 10))
        t += step
    return out


def svg_chart(series, path, title, xlabel, ylabel, logy=False, xmax=None):
    """series: [(label, color, [(x, y), ...], dashed)]"""
    W, H, L, R, T, B = 760, 440, 70, 170, 40, 50
    pts = [(x, y) for _, _, s, _ in series for x, y in s if finite(y) and (not logy or y > 0)]
    if not pts:
        return
    x0, x1 = 0, xmax or max(x for x, _ in pts)
    ys = [y for _, y in pts]
    if logy:
        y0, y1 = math.log10(min(ys)), math.log10(max(ys))
        pad = 0.04 * (y1 - y0 or 1)
        y0, y1 = y0 - pad, y1 + pad
    else:
        y0, y1 = min(ys), max(ys)
        pad = 0.05 * (y1 - y0 or 1)
        y0, y1 = y0 - pad, y1 + pad

    def X(x):
        return L + (x - x0) / (x1 - x0 or 1) * (W - L - R)

    def Y(y):
        v = math.log10(y) if logy else y
        return T + (1 - (v - y0) / (y1 - y0 or 1)) * (H - T - B)

    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
         f'font-family="sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{L}" y="22" font-size="14" font-weight="bold">{esc(title)}</text>']
    # axes and grid
    for t in nice_ticks(x0, x1, 8):
        o.append(f'<line x1="{X(t):.1f}" y1="{T}" x2="{X(t):.1f}" y2="{H - B}" stroke="#eee"/>')
        o.append(f'<text x="{X(t):.1f}" y="{H - B + 16}" text-anchor="middle">{t:g}</text>')
    if logy:
        yt = []
        mult = (1, 2, 5) if y1 - y0 > 1 else (1, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8)
        for e in range(math.floor(y0), math.ceil(y1) + 1):
            for m in mult:
                v = m * 10 ** e
                if y0 <= math.log10(v) <= y1:
                    yt.append(v)
    else:
        yt = nice_ticks(y0, y1, 6)
    for t in yt:
        o.append(f'<line x1="{L}" y1="{Y(t):.1f}" x2="{W - R}" y2="{Y(t):.1f}" stroke="#eee"/>')
        o.append(f'<text x="{L - 6}" y="{Y(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
    o.append(f'<rect x="{L}" y="{T}" width="{W - L - R}" height="{H - T - B}" fill="none" stroke="#444"/>')
    o.append(f'<text x="{(L + W - R) / 2}" y="{H - 12}" text-anchor="middle">{esc(xlabel)}</text>')
    o.append(f'<text x="16" y="{(T + H - B) / 2}" text-anchor="middle" '
             f'transform="rotate(-90 16 {(T + H - B) / 2})">{esc(ylabel)}</text>')
    for i, (label, color, s, dashed) in enumerate(series):
        s = [(x, y) for x, y in s if finite(y) and (not logy or y > 0) and x <= x1]
        if not s:
            continue
        d = " ".join(f"{'M' if j == 0 else 'L'}{X(x):.1f},{Y(y):.1f}" for j, (x, y) in enumerate(s))
        dash = ' stroke-dasharray="5,3"' if dashed else ""
        wdt = 2.2 if label.startswith("LoRA-GA") or label == "LoRA" else 1.4
        o.append(f'<path d="{d}" fill="none" stroke="{color}" stroke-width="{wdt}"{dash}/>')
        if len(s) < 15:
            for x, y in s:
                o.append(f'<circle cx="{X(x):.1f}" cy="{Y(y):.1f}" r="2.5" fill="{color}"/>')
        ly = T + 10 + i * 18
        o.append(f'<line x1="{W - R + 12}" y1="{ly}" x2="{W - R + 36}" y2="{ly}" stroke="{color}" '
                 f'stroke-width="{wdt}"{dash}/>')
        o.append(f'<text x="{W - R + 42}" y="{ly + 4}">{esc(label)}</text>')
    o.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(o) + "\n")


def esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# ---------------------------------------------------------------------------------------------
# tables

def steps_to(loss_s, target):
    for i, v in enumerate(loss_s):
        if finite(v) and v <= target:
            return i + 1
    return None


def summary(res):
    """One table, every method × task: the task metric and the final validation loss at the best rate."""
    tasks = [t for t in TASK_ORDER if t in res] + [t for t in res if t not in TASK_ORDER]
    methods = [m for m in METHODS if any(m in res[t] for t in tasks)]
    if not tasks or not methods:
        return []
    head, sep = ["method"], ["---"]
    for t in tasks:
        if t in METRIC:
            head.append(f"{TASK_SHORT.get(t, t)} {METRIC[t][1].replace('GSM8K ', '')}")
            sep.append("---")
        head.append(f"{TASK_SHORT.get(t, t)} final val loss")
        sep.append("---")
    md = ["### Summary\n",
          "Each method at its best rate (lowest first-seed final validation loss), mean ± std over seeds. "
          "Task metric: dev accuracy for SST-2 and MRPC, exact match (strict / flexible) of greedy answers "
          "on GSM8K test problems for the model fine-tuned on GSM8K text; loss: the held-out split of the "
          "training data. The per-task sections below have the sweeps, steps to LoRA-GA's loss and the curves.\n",
          "| " + " | ".join(head) + " |", "|" + "|".join(sep) + "|"]
    for m in methods:
        cells = [LABEL.get(m, m)]
        for t in tasks:
            runs = []
            if m in res[t]:
                runs = [r for r in res[t][m][best_lr(res[t][m])].values() if not r.get("failed")]
            if t in METRIC:
                cells.append(metric_cell(t, runs) if any("dev" in r for r in runs) else "–")
            cells.append(ms([r["final_val"] for r in runs]))
        md.append("| " + " | ".join(cells) + " |")
    md.append("")
    # steps to a target loss: LoRA-GA's at step k
    ts = [t for t in tasks if "lora-ga" in res[t]]
    if ts:
        ks = {}
        for t in ts:
            ga = res[t]["lora-ga"][best_lr(res[t]["lora-ga"])]
            n = min([r["steps"] for r in ga.values() if not r.get("failed")] or [0])
            ks[t] = 20 if n >= 50 else 10
        md.append("Steps to the target loss — the training loss LoRA-GA has reached by step k (k in the column "
                  "title; trailing mean as in the task sections; mean ± std over seeds, ratio = steps / k, "
                  "\"> N\" = not within the run):\n")
        md.append("| method | " + " | ".join(f"{TASK_SHORT.get(t, t)} (k = {ks[t]})" for t in ts) + " |")
        md.append("|---|" + "---|" * len(ts))
        for m in methods:
            if m == "lora-ga":
                continue
            cells = [steps_cell(res[t], m, ks[t], SMOOTH.get(t, SMOOTH_LM)) if m in res[t] else "–" for t in ts]
            md.append(f"| {LABEL.get(m, m)} | " + " | ".join(cells) + " |")
        md.append("")
    return md


def steps_cell(R, m, k, w):
    """Steps METHOD (best rate) needs to reach LoRA-GA's (best rate) smoothed training loss at step k."""
    ga = R["lora-ga"][best_lr(R["lora-ga"])]
    runs = R[m][best_lr(R[m])]
    ns, miss, nsteps = [], 0, 0
    for s, g in ga.items():
        if g.get("failed") or s not in runs or runs[s].get("failed") or len(g["loss"]) < k:
            continue
        target = min(smooth(g["loss"], w)[:k])
        nsteps = len(runs[s]["loss"])
        n = steps_to(smooth(runs[s]["loss"], w), target)
        if n is None:
            miss += 1
        else:
            ns.append(n)
    if not ns:
        return f"> {nsteps}" if miss else "–"
    c = ms(ns, 1) + f" ({mean(ns) / k:.1f}×)"
    return c + (f", {miss} seed(s) > {nsteps}" if miss else "")


def analyse(out, img_dir, img_rel, prefix="", model="stories260K"):
    res = load(out)
    md = []
    setup = os.path.join(out, "setup.txt")
    if os.path.exists(setup):
        with open(setup) as f:
            lines = [l.strip() for l in f if l.strip()]
        dates = [l[6:] for l in lines if l.startswith("date: ")]
        walls = [int(l.split()[1]) for l in lines if l.startswith("wall: ")]
        last = {}
        for l in lines:
            k, _, v = l.partition(": ")
            last[k] = v
        cpu = []
        for t in res.values():
            for m in t.values():
                for lr in m.values():
                    for r in lr.values():
                        if r.get("cpu_s", 0) > 0:
                            cpu.append(r["cpu_s"])
        settings = "; ".join(x for x in (last.get("command"), last.get("tasks", last.get("steps")),
                                          ("rates " + last["lrs"]) if "lrs" in last else None) if x)
        md.append(f"Run: {dates[0] if dates else '?'} to {dates[-1] if dates else '?'} "
                  f"({len(dates)} invocation(s) of the script{', resumed' if len(dates) > 1 else ''}; "
                  f"{sum(walls)} s wall-clock in all) on {last.get('machine', '?').split(', load')[0]}; "
                  f"settings: {settings}."
                  + (f" CPU time of the {len(cpu)} runs that recorded it: {sum(cpu):.0f} s "
                     f"(median {sorted(cpu)[len(cpu) // 2]:.1f} s per run)." if cpu else "") + "\n")
    if img_dir:
        os.makedirs(img_dir, exist_ok=True)
    md += summary(res)
    for task in [t for t in TASK_ORDER if t in res] + [t for t in res if t not in TASK_ORDER]:
        R = res[task]
        w = SMOOTH.get(task, SMOOTH_LM)
        methods = [m for m in METHODS if m in R] + [m for m in R if m not in METHODS]
        best = {m: best_lr(R[m]) for m in methods}
        md.append(f"### {TASK_TITLE.get(task, task)}\n")
        # main table
        has_dev = any("dev" in r for m in methods for r in R[m][best[m]].values())
        has_lm = any(finite(dig(r.get("dev"), "lm", "loss")) for m in methods for r in R[m][best[m]].values())
        has_task = has_dev and task in METRIC
        head = ("| method | best lr | final val loss | Δ final val vs LoRA (paired by seed) | min val loss | "
                "final train loss (last 10 steps) |")
        sep = "|---|---|---|---|---|---|"
        if has_lm:
            head += " dev loss |"
            sep += "---|"
        if has_task:
            head += f" {METRIC[task][1]}{' (strict / flexible)' if task == 'gsm8k-lm' else ''} |"
            sep += "---|"
            if task in ("sst2", "mrpc"):
                head += " dev accuracy, byte-normalised | predicted yes/positive |"
                sep += "---|---|"
        md += [head, sep]
        for m in methods:
            runs = [r for r in R[m][best[m]].values() if not r.get("failed")]
            fv = [r["final_val"] for r in runs]
            mv = [min(r["val"].values()) for r in runs if r["val"]]
            ft = [mean([x for x in r["loss"][-10:] if finite(x)] or [float("nan")]) for r in runs]
            delta = "–"
            if "lora" in R and m != "lora":
                base = R["lora"][best["lora"]]
                d = [r["final_val"] - base[s]["final_val"] for s, r in R[m][best[m]].items()
                     if s in base and not r.get("failed") and not base[s].get("failed")]
                delta = ms(d, 4)
            row = f"| {LABEL.get(m, m)} | {best[m]} | {ms(fv)} | {delta} | {ms(mv)} | {ms(ft)} |"
            if has_lm:
                row += f" {ms([dig(r.get('dev'), 'lm', 'loss') for r in runs])} |"
            if has_task:
                row += f" {metric_cell(task, runs)} |"
                if task in ("sst2", "mrpc"):
                    pred = [r["dev"]["task"].get("predicted") for r in runs if isinstance(dig_obj(r.get("dev"), "task"), dict)]
                    pred = [p for p in pred if isinstance(p, list) and len(p) == 2 and sum(p)]
                    row += (f" {pct([dig(r.get('dev'), 'task', 'accuracy_norm') for r in runs])} |"
                            f" {ms([100 * p[1] / sum(p) for p in pred], 0)}{' %' if pred else ''} |")
            nfail = sum(1 for r in R[m][best[m]].values() if r.get("failed"))
            if nfail:
                row += f" ({nfail} failed)"
            md.append(row)
        nseeds = max(len(R[m][best[m]]) for m in methods)
        md.append(f"\nmean ± std over {nseeds} seeds at each method's best rate." if nseeds > 1 else
                  "\nOne seed at each method's best rate.")
        b = base_eval(out, task) if has_dev else None
        if b and task in ("sst2", "mrpc"):
            n = dig(b, "task", "examples")
            bl = dig(b, "lm", "loss")
            md.append(f"The base model (no fine-tuning) on the same {n:.0f} dev rows: "
                      + (f"loss {bl:.3f}, " if finite(bl) else "")
                      + f"accuracy {dig(b, 'task', 'accuracy') * 100:.1f} % (majority class "
                      f"{dig(b, 'task', 'majority_baseline') * 100:.1f} %).")
        if has_task and task == "gsm8k-lm":
            ex = [dig(r.get("dev"), "task", "examples") for m in methods for r in R[m][best[m]].values()]
            mt = [dig(r.get("dev"), "task", "max_tokens") for m in methods for r in R[m][best[m]].values()]
            ex, mt = [x for x in ex if finite(x)], [x for x in mt if finite(x)]
            line = (f"GSM8K exact match: greedy answers to the first {max(ex):.0f} GSM8K test problems "
                    f"(`loraga eval --task gsm8k`, at most {max(mt):.0f} new tokens), strict = the \"#### N\" "
                    f"number, flexible = the last number in the answer.") if ex and mt else ""
            if b:
                line += (f" The base model: {dig(b, 'task', 'exact_match') * 100:.1f} % / "
                         f"{dig(b, 'task', 'exact_match_flexible') * 100:.1f} %.")
            md.append(line)
        md.append("")
        # the sweep
        lrs = sorted({lr for m in methods for lr in R[m]}, key=float)
        if all(len(R[m]) >= 3 for m in methods):
            md.append("Learning-rate sweep (first seed, final validation loss; **bold** = kept):\n")
        else:
            md.append("The rates run (no full sweep: first seed, final validation loss; **bold** = kept):\n")
        md.append("| method | " + " | ".join(lrs) + " |")
        md.append("|---|" + "---|" * len(lrs))
        for m in methods:
            cells = []
            for lr in lrs:
                runs = R[m].get(lr, {})
                if not runs:
                    cells.append("")
                    continue
                r = runs[min(runs)]
                v = "failed" if r.get("failed") else (f"{r['final_val']:.4f}" if finite(r["final_val"]) else "diverged")
                cells.append(f"**{v}**" if lr == best[m] else v)
            md.append(f"| {LABEL.get(m, m)} | " + " | ".join(cells) + " |")
        md.append("")
        # headline: steps to reach LoRA-GA's loss at step k
        if "lora-ga" in R:
            ga = R["lora-ga"][best["lora-ga"]]
            nsteps = min(r["steps"] for r in ga.values() if not r.get("failed")) if ga else 0
            ks = [k for k in (5, 10, 20, 30, 50, 75, 100) if k <= nsteps]
            md.append(f"Steps each method needs to reach the training loss LoRA-GA has reached by step k "
                      f"({w}-step trailing mean; mean ± std over seeds; ratio = steps / k; every method at its "
                      f"best rate):\n")
            md.append("| method | " + " | ".join(f"k = {k}" for k in ks) + " |")
            md.append("|---|" + "---|" * len(ks))
            tgt = {}
            for s, r in ga.items():
                if not r.get("failed"):
                    ls = smooth(r["loss"], w)
                    tgt[s] = {k: min(ls[:k]) for k in ks}
            md.append("| LoRA-GA loss at k | " + " | ".join(ms([tgt[s][k] for s in tgt]) for k in ks) + " |")
            for m in methods:
                if m == "lora-ga":
                    continue
                cells = []
                for k in ks:
                    ns, miss = [], 0
                    for s, r in R[m][best[m]].items():
                        if s not in tgt or r.get("failed"):
                            continue
                        n = steps_to(smooth(r["loss"], w), tgt[s][k])
                        if n is None:
                            miss += 1
                        else:
                            ns.append(n)
                    if not ns:
                        cells.append(f"> {nsteps}")
                        continue
                    c = ms(ns, 1) + f" ({mean(ns) / k:.1f}×)"
                    if miss:
                        c += f", {miss} seed(s) > {nsteps}"
                    cells.append(c)
                md.append(f"| {LABEL.get(m, m)} | " + " | ".join(cells) + " |")
            md.append("")
        # LoRA vs LoRA-GA at equal rates (first seed): the sweep's runs
        if "lora-ga" in R and "lora" in R and set(R["lora"]) & set(R["lora-ga"]):
            common = sorted(set(R["lora"]) & set(R["lora-ga"]), key=float)
            first = min(s for lr in R["lora-ga"].values() for s in lr)
            kk = [k for k in (10, 30, 50) if k <= nsteps]
            md.append(f"LoRA vs LoRA-GA at equal learning rates (seed {first}): final validation loss, and the steps "
                      f"LoRA needs to reach the training loss LoRA-GA has reached by step k:\n")
            md.append("| lr | LoRA final val | LoRA-GA final val | " + " | ".join(f"k = {k}" for k in kk) + " |")
            md.append("|---|---|---|" + "---|" * len(kk))
            for lr in common:
                a, g = R["lora"][lr].get(first), R["lora-ga"][lr].get(first)
                if not a or not g or a.get("failed") or g.get("failed"):
                    continue
                la, lg = smooth(a["loss"], w), smooth(g["loss"], w)
                cells = []
                for k in kk:
                    n = steps_to(la, min(lg[:k]))
                    cells.append(f"> {len(la)}" if n is None else f"{n} ({n / k:.1f}×)")
                fa = f"{a['final_val']:.4f}" if finite(a["final_val"]) else "diverged"
                fg = f"{g['final_val']:.4f}" if finite(g["final_val"]) else "diverged"
                md.append(f"| {lr} | {fa} | {fg} | " + " | ".join(cells) + " |")
            md.append("")
        # pictures
        if img_dir:
            logy = task in LOGY
            series = []
            for m in methods:
                runs = [r for r in R[m][best[m]].values() if not r.get("failed")]
                if not runs:
                    continue
                n = min(len(r["loss"]) for r in runs)
                sm = [smooth(r["loss"], w) for r in runs]
                avg = [mean([x[i] for x in sm]) for i in range(n)]
                series.append((f"{LABEL.get(m, m)} ({best[m]})", COLOR.get(m, "#777"),
                               list(zip(range(1, n + 1), avg)), m in ("rslora", "pissa", "adalora")))
            f1 = f"{prefix}exp_{task}_train.svg"
            svg_chart(series, os.path.join(img_dir, f1), f"{model}, {TASK_TITLE.get(task, task)}: training loss",
                      "step", f"training loss ({w}-step mean, mean of seeds)" + (", log scale" if logy else ""),
                      logy=logy)
            f3 = f"{prefix}exp_{task}_train_first30.svg"
            svg_chart([(a, b, [p for p in c if p[0] <= 30], d) for a, b, c, d in series],
                      os.path.join(img_dir, f3), f"{model}, {TASK_SHORT.get(task, task)}: the first 30 steps",
                      "step", f"training loss ({w}-step mean)" + (", log scale" if logy else ""), logy=logy, xmax=30)
            series = []
            for m in methods:
                runs = [r for r in R[m][best[m]].values() if not r.get("failed") and r["val"]]
                if not runs:
                    continue
                steps = sorted(set.intersection(*[set(r["val"]) for r in runs]))
                series.append((f"{LABEL.get(m, m)} ({best[m]})", COLOR.get(m, "#777"),
                               [(s, mean([r["val"][s] for r in runs])) for s in steps],
                               m in ("rslora", "pissa", "adalora")))
            f2 = f"{prefix}exp_{task}_val.svg"
            svg_chart(series, os.path.join(img_dir, f2), f"{model}, {TASK_TITLE.get(task, task)}: validation loss",
                      "step", "validation loss (mean of seeds)")
            f4 = None
            if "lora-ga" in R and "lora" in R and set(R["lora"]) & set(R["lora-ga"]):
                first = min(s for lr in R["lora-ga"].values() for s in lr)
                palette = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02"]
                series = []
                for i, lr in enumerate(sorted(set(R["lora"]) & set(R["lora-ga"]), key=float)):
                    for m, dashed in (("lora", True), ("lora-ga", False)):
                        r = R[m][lr].get(first)
                        if r and not r.get("failed"):
                            ls = smooth(r["loss"], w)
                            series.append((f"{LABEL[m]} {lr}", palette[i % len(palette)],
                                           list(zip(range(1, len(ls) + 1), ls)), dashed))
                f4 = f"{prefix}exp_{task}_equal_lr.svg"
                svg_chart(series, os.path.join(img_dir, f4),
                          f"{model}, {TASK_SHORT.get(task, task)}: LoRA (dashed) vs LoRA-GA (solid) at equal rates",
                          "step", f"training loss ({w}-step mean, seed {first}), log scale", logy=True)
            md.append(f"![training loss]({img_rel}/{f1})\n![first 30 steps]({img_rel}/{f3})\n"
                      f"![validation loss]({img_rel}/{f2})\n")
            if f4:
                md.append(f"![equal rates]({img_rel}/{f4})\n")
    return "\n".join(md)


def base_eval(out, task):
    for name in (f"base_{task}_eval.json",) + (("base_dev_eval.json",) if task == "sst2" else ()):
        f = os.path.join(out, name)
        if os.path.exists(f):
            try:
                with open(f) as fh:
                    return json.load(fh)
            except ValueError:
                return None
    return None


def pct(xs):
    xs = [x * 100 for x in xs if finite(x)]
    return ms(xs, 1) + " %" if xs else "–"


def metric_cell(task, runs):
    """The task metric over the runs, as "mean ± std %" (GSM8K: strict, then flexible)."""
    key = METRIC[task][0]
    cell = pct([dig(r.get("dev"), "task", key) for r in runs])
    if task == "gsm8k-lm":
        cell += " / " + pct([dig(r.get("dev"), "task", "exact_match_flexible") for r in runs])
    return cell


def dig_obj(d, key):
    return d.get(key) if isinstance(d, dict) else None


def dig(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return float("nan")
        d = d[k]
    try:
        return float(d)
    except (TypeError, ValueError):
        return float("nan")


def main():
    a = sys.argv[1:]
    if a and a[0] == "--best-lr":
        out, task, method = a[1:4]
        print(best_lr(load(out)[task][method]))
        return
    out = a[0]
    docs = a[a.index("--docs") + 1] if "--docs" in a else None
    img = a[a.index("--img") + 1] if "--img" in a else None
    rel = os.path.relpath(img, os.path.dirname(os.path.abspath(docs))) if (img and docs) else (img or ".")
    marker = a[a.index("--marker") + 1] if "--marker" in a else "results"
    prefix = a[a.index("--prefix") + 1] if "--prefix" in a else ""
    model = a[a.index("--model") + 1] if "--model" in a else ("SmolLM2-135M" if prefix.startswith("smollm2") else "stories260K")
    text = analyse(out, img, rel, prefix, model)
    if docs:
        begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
        old = open(docs).read() if os.path.exists(docs) else f"# Experiments\n\n{begin}\n{end}\n"
        if begin not in old:
            old += f"\n{begin}\n{end}\n"
        i, j = old.index(begin) + len(begin), old.index(end)
        with open(docs, "w") as f:
            f.write(old[:i] + "\n" + text + "\n" + old[j:])
        print(f"wrote {docs}", file=sys.stderr)
    else:
        print(text)


if __name__ == "__main__":
    main()
