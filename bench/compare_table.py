#!/usr/bin/python3
"""compare_table.py RESULTS.jsonl — Markdown tables from bench/compare.sh's raw results.

Each side's figure is its best round (the machine is shared and noisy; both sides get the same
treatment, and run_peer.sh already keeps the best of PyTorch's set-ups). "spread" is the range of the
per-round ratios (loraga round i / PyTorch round i, run back to back). Standard library only."""
import json
import sys
from collections import defaultdict


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def torch_tps(r, threads):
    """PyTorch tokens/s at a thread count: the best of run_peer's candidates with that count."""
    c = [tps for tag, thr, tps in r.get("candidates", []) if thr == threads and tps]
    return max(c) if c else None


def fmt(x, nd=0):
    if x is None:
        return "–"
    return f"{x:,.{nd}f}"


def main():
    rows = [r for r in load(sys.argv[1]) if "failed" not in r]
    failed = [r for r in load(sys.argv[1]) if "failed" in r]
    ours = defaultdict(list)  # (who, config, mode, threads) -> [rows]
    peer = defaultdict(list)  # (config, mode) -> [rows]
    model = defaultdict(list)  # who -> [rows] (the real-model comparison)
    for r in rows:
        if r["who"] == "torch":
            peer[(r["config"], r["mode"])].append(r)
        elif r["who"].startswith("model-"):
            model[r["who"]].append(r)
        else:
            ours[(r["who"], r["config"], r["mode"], r["req_threads"])].append(r)
    configs = sorted({k[1] for k in ours}, key=lambda c: ["tiny", "small"].index(c) if c in ("tiny", "small") else 9)
    modes = ["fwd", "full", "lora", "loraga"]

    print("### Throughput (tokens/s; best round of each side; ratio = loraga / PyTorch at the same threads)\n")
    print("| config | mode | threads | loraga tok/s | PyTorch tok/s | ratio | per-round ratios | "
          "loraga GFLOP/s | share of GEMM ceiling | loraga peak RSS MB | PyTorch peak RSS MB | RSS ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for c in configs:
        for m in modes:
            for t in (2, 1):
                rs = ours.get(("loraga", c, m, t))
                if not rs:
                    continue
                pr = peer.get((c, m), [])
                best = max(rs, key=lambda r: r["tokens_per_s"])
                ptps = [torch_tps(p, t) for p in pr]
                ptps_ok = [x for x in ptps if x]
                pbest = max(ptps_ok) if ptps_ok else None
                ratios = []
                for r in rs:
                    for p in pr:
                        if p["round"] == r["round"] and torch_tps(p, t):
                            ratios.append(r["tokens_per_s"] / torch_tps(p, t))
                prss = min((p["peak_rss_mb"] for p in pr), default=None)
                ratio = best["tokens_per_s"] / pbest if pbest else None
                spread = f"{min(ratios):.2f}–{max(ratios):.2f}" if ratios else "–"
                print(f"| {c} | {m} | {t} | {fmt(best['tokens_per_s'])} | {fmt(pbest)} | "
                      f"{fmt(ratio, 2)}× | {spread} | {fmt(best['gflops'], 1)} | "
                      f"{best['gflops'] / best['ceiling_gflops'] * 100:.0f} % of {best['ceiling_gflops']:.0f} | "
                      f"{fmt(min(r['peak_rss_mb'] for r in rs))} | {fmt(prss)} | "
                      f"{fmt(min(r['peak_rss_mb'] for r in rs) / prss if prss else None, 2)} |")
    # best PyTorch over all set-ups, for the record (run_peer.sh's candidate tags: pypi, pypi-bf16,
    # pypi-1t, debian, debian-tuned, debian-1t)
    def setup(p):
        return f"{p.get('tag', '?')}, {p['threads']} thr, {p['tokens_per_s']:,.0f} tok/s"
    print("\nBest PyTorch set-up (run_peer.sh's pick, best round): " + "; ".join(
        f"{c} {m}: {setup(max(pr, key=lambda p: p['tokens_per_s']))}" for (c, m), pr in sorted(peer.items())))

    print("\n### Precision of the linear layers (2 threads; best round; ratio against PyTorch's best set-up)\n")
    print("| config | mode | precision | what computes | tok/s | vs PyTorch best | share of this precision's "
          "ceiling | share of the fp32 ceiling | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for c in configs:
        for m in modes:
            for p in ("fp32", "bf16"):
                rs = ours.get((f"loraga-{p}", c, m, 2))
                if not rs:
                    continue
                best = max(rs, key=lambda r: r["tokens_per_s"])
                pr = peer.get((c, m), [])
                pbest = max((x["tokens_per_s"] for x in pr), default=None)
                print(f"| {c} | {m} | {p} | {best.get('compute', '?')} | {fmt(best['tokens_per_s'])} | "
                      f"{fmt(best['tokens_per_s'] / pbest if pbest else None, 2)}× | "
                      f"{100 * best['share_of_ceiling']:.0f} % of {best['ceiling_gflops']:.0f} | "
                      f"{100 * best.get('share_of_fp32_ceiling', 0):.0f} % of {best.get('ceiling_fp32_gflops', 0):.0f} | "
                      f"{fmt(min(r['peak_rss_mb'] for r in rs))} |")

    if model:
        print("\n### A real model: LoRA step (r 8 on all linear layers, 4 x 128 random tokens, AdamW; best round)\n")
        print("| who | precision | tok/s | peak RSS MB |")
        print("|---|---|---|---|")
        for who in ("model-loraga-fp32", "model-loraga-bf16", "model-peft-no", "model-peft-bf16"):
            rs = model.get(who)
            if not rs:
                continue
            best = max(rs, key=lambda r: r["tokens_per_s"])
            name = "loraga" if "loraga" in who else "transformers + PEFT"
            prec = best.get("precision") or ("bf16 autocast" if who.endswith("bf16") else "fp32")
            print(f"| {name} | {prec} | {fmt(best['tokens_per_s'])} | {fmt(min(r['peak_rss_mb'] for r in rs))} |")
        lo = max((r["tokens_per_s"] for w in ("model-loraga-fp32", "model-loraga-bf16") for r in model.get(w, [])),
                 default=None)
        pe = max((r["tokens_per_s"] for w in ("model-peft-no", "model-peft-bf16") for r in model.get(w, [])),
                 default=None)
        if lo and pe:
            print(f"\nBest loraga / best transformers + PEFT: {lo / pe:.2f}×")

    print("\n### LoRA step memory options (2 threads; best round; RSS ratio against PyTorch's LoRA step)\n")
    print("| config | base storage | recomputation | tok/s | vs fp32 loraga | peak RSS MB | RSS / PyTorch |")
    print("|---|---|---|---|---|---|---|")
    for c in configs:
        base = ours.get(("loraga", c, "lora", 2))
        prss = min((p["peak_rss_mb"] for p in peer.get((c, "lora"), [])), default=None)
        for who, dt, rc in (("loraga", "float32", "no"), ("loraga-bf16", "bfloat16", "no"),
                            ("loraga-bf16-recompute", "bfloat16", "yes")):
            rs = ours.get((who, c, "lora", 2))
            if not rs:
                continue
            tps = max(r["tokens_per_s"] for r in rs)
            rss = min(r["peak_rss_mb"] for r in rs)
            rel = tps / max(r["tokens_per_s"] for r in base) if base else None
            print(f"| {c} | {dt} | {rc} | {fmt(tps)} | {fmt(rel, 2)}× | {fmt(rss)} | "
                  f"{fmt(rss / prss if prss else None, 2)} |")

    print("\n### LoRA step vs full fine-tuning step (step time ratio, best rounds; target ≤ 0.7)\n")
    print("| config | threads | loraga LoRA/full | PyTorch LoRA/full |")
    print("|---|---|---|---|")
    for c in configs:
        for t in (2, 1):
            lo, fu = ours.get(("loraga", c, "lora", t)), ours.get(("loraga", c, "full", t))
            if not lo or not fu:
                continue
            ours_r = min(r["step_s_median"] for r in lo) / min(r["step_s_median"] for r in fu)
            plo = [torch_tps(p, t) for p in peer.get((c, "lora"), [])]
            pfu = [torch_tps(p, t) for p in peer.get((c, "full"), [])]
            plo, pfu = [x for x in plo if x], [x for x in pfu if x]
            pr = max(pfu) / max(plo) if plo and pfu else None
            print(f"| {c} | {t} | {ours_r:.2f} | {fmt(pr, 2)} |")

    print("\n### LoRA-GA: estimation over the batches + factorisation (seconds, best of rounds × 2 repetitions)\n")
    print("| config | threads | who | ga mode | passes | estimation s | factorisation s | total s | "
          "speed-up vs PyTorch (total) | factorisation / estimation | total / one LoRA step | extra held MB | peak RSS MB | "
          "peak RSS − LoRA-step peak MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for c in configs:
        pr = peer.get((c, "loraga"), [])
        pt = None
        if pr:
            pa = min(min(p["ga_accum_s"]) for p in pr)
            ps = min(min(p["svd_lowrank_s"]) for p in pr)
            pt = pa + ps
        for t in (2, 1):
            lora_rows = ours.get(("loraga", c, "lora", t), [])
            lora_step = min((r["step_s_median"] for r in lora_rows), default=None)
            lora_rss = min((r["peak_rss_mb"] for r in lora_rows), default=None)
            for who in ("loraga", "loraga-serial", "loraga-sketch"):
                rs = ours.get((who, c, "loraga", t))
                if not rs:
                    continue
                est = min(min(r["ga_accum_s"]) for r in rs)
                fac = min(min(r["svd_lowrank_s"]) for r in rs)
                rss = min(r["peak_rss_mb"] for r in rs)
                r0 = rs[0]
                print(f"| {c} | {t} | loraga | {r0['ga_mode']} | {r0['passes']} | {est:.2f} | {fac:.3f} | "
                      f"{est + fac:.2f} | {fmt(pt / (est + fac) if pt else None, 2)}× | "
                      f"{fac / est * 100:.1f} % | {fmt((est + fac) / lora_step if lora_step else None, 1)} | "
                      f"{r0['ga_extra_mb']:.1f} | {rss:.0f} | {fmt(rss - lora_rss if lora_rss else None)} |")
        if pr:
            pa = min(min(p["ga_accum_s"]) for p in pr)
            ps = min(min(p["svd_lowrank_s"]) for p in pr)
            best = min(pr, key=lambda p: min(p["ga_accum_s"]))
            print(f"| {c} | {best['threads']} | PyTorch (best set-up) | all | 1 | {pa:.2f} | {ps:.3f} | "
                  f"{pa + ps:.2f} | 1× | {ps / pa * 100:.1f} % | – | – | {min(p['peak_rss_mb'] for p in pr):.0f} | – |")
    if failed:
        print("\nFailed runs: " + "; ".join(f"{r['who']} round {r['round']}: {r['failed']}" for r in failed))


if __name__ == "__main__":
    main()
