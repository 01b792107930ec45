#!/bin/bash
# bench/compare.sh [--rounds N] [--out DIR] [CONFIG...] — loraga vs the PyTorch peer, side by side.
#
# For each CONFIG (default: tiny small) and mode (fwd, full, lora, loraga) it runs, back to back,
#   build/loraga bench --config C --mode M --threads T --json      (T = 2; tiny also 1; precision auto)
#   build/loraga bench ... --precision bf16 (and fp32)             (fwd/full/lora, 2 threads: both precisions)
#   ../shared/bench/run_peer.sh C M                                  (best of PyTorch's set-ups, bf16 autocast included)
# then, for lora, the memory options (--base-dtype bf16, and with --recompute), and, for loraga, the
# three estimation memory modes (all / serial / sketch) in separate processes
# so each peak RSS is that mode's own. Everything is repeated --rounds times (default 2), pair by
# pair, because the machine is noisy; the table shows the best round of each side, the ratio of
# those and the spread of the per-round ratios. Raw JSON lines go to DIR/results.jsonl (default: a
# new folder under /tmp). Nothing here is a test: no threshold fails the script.
#
# With a real model directory in MODEL (default: SmolLM2-135M-Instruct as `make demo` caches it, when
# there), also `loraga bench --model MODEL --mode lora` (4 x 128 tokens, r 8 on all linear layers) in
# both precisions against transformers + PEFT (../shared/bench/peft_bench.py, fp32 and bf16 autocast).
#
# Environment: LORAGA (default build/loraga), PEER (default ../shared/bench/run_peer.sh),
# MODES (default "fwd full lora loraga"), MODEL (a model directory, or "none"),
# PEER_PY (a Python with torch, transformers, peft; default: ../shared/bench/peer_venv.sh's).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=2 OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) break ;;
    esac
done
CONFIGS=${*:-tiny small}
MODES=${MODES:-fwd full lora loraga}
LORAGA=${LORAGA:-build/loraga}
PEER=${PEER:-../shared/bench/run_peer.sh}
PY=/usr/bin/python3
[ -x "$LORAGA" ] || { echo "compare.sh: $LORAGA not built (run make)" >&2; exit 1; }
[ -x "$PEER" ] || { echo "compare.sh: $PEER not found (the PyTorch peer lives in ../shared/bench)" >&2; exit 1; }
OUT=${OUT:-$(mktemp -d /tmp/loraga-compare.XXXXXX)}
mkdir -p "$OUT"
RES=$OUT/results.jsonl
: > "$RES"

# one JSON line from a command, tagged with who/round/threads; a failure is recorded, not fatal
record() { # who round threads cmd...
    local who=$1 round=$2 thr=$3; shift 3
    local line
    if line=$("$@" 2>>"$OUT/stderr.log" | tail -n 1) && [ -n "$line" ]; then
        echo "$line" | $PY -c "import sys,json; r=json.loads(sys.stdin.read()); r.update(who='$who', round=$round, req_threads=$thr); print(json.dumps(r))" >> "$RES"
    else
        echo "{\"who\": \"$who\", \"round\": $round, \"req_threads\": $thr, \"failed\": \"$*\"}" >> "$RES"
    fi
    echo "  [$who r$round t$thr] $(tail -n 1 "$RES" | cut -c1-160)" >&2
}

echo "compare.sh: $(date -u +%FT%TZ) on $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), load $(cut -d' ' -f1-3 /proc/loadavg); results in $OUT" >&2
for round in $(seq 1 "$ROUNDS"); do
    for c in $CONFIGS; do
        THREADS="2"; [ "$c" = tiny ] && THREADS="2 1"
        for m in $MODES; do
            echo "round $round: $c $m (load $(cut -d' ' -f1 /proc/loadavg))" >&2
            for t in $THREADS; do
                record loraga "$round" "$t" "$LORAGA" bench --config "$c" --mode "$m" --threads "$t" --json
            done
            if [ "$m" != loraga ]; then # both precisions explicitly (auto is one of them)
                for p in fp32 bf16; do
                    record "loraga-$p" "$round" 2 "$LORAGA" bench --config "$c" --mode "$m" --precision "$p" --threads 2 --json
                done
            fi
            record torch "$round" 0 "$PEER" "$c" "$m"
            if [ "$m" = lora ]; then # the memory options: bf16 frozen base, and with recomputation
                record loraga-bf16 "$round" 2 "$LORAGA" bench --config "$c" --mode lora --base-dtype bf16 --threads 2 --json
                record loraga-bf16-recompute "$round" 2 "$LORAGA" bench --config "$c" --mode lora --base-dtype bf16 --recompute --threads 2 --json
            fi
            if [ "$m" = loraga ]; then
                for gm in serial sketch; do
                    for t in $THREADS; do
                        record "loraga-$gm" "$round" "$t" "$LORAGA" bench --config "$c" --mode loraga --ga-mode "$gm" --ga-reps 1 --threads "$t" --json
                    done
                done
            fi
        done
    done
done
# the real model: loraga (both precisions) vs transformers + PEFT (fp32 and bf16 autocast)
MODEL=${MODEL:-$(ls -d "${LORAGA_CACHE:-$HOME/.cache/loraga}"/smollm2-hf-* 2>/dev/null | head -n 1)}
if [ -n "$MODEL" ] && [ "$MODEL" != none ] && [ -d "$MODEL" ]; then
    PEER_PY=${PEER_PY:-$(../shared/bench/peer_venv.sh 2>/dev/null || true)}
    for round in $(seq 1 "$ROUNDS"); do
        echo "round $round: model $MODEL (load $(cut -d' ' -f1 /proc/loadavg))" >&2
        for p in fp32 bf16; do
            record "model-loraga-$p" "$round" 2 "$LORAGA" bench --model "$MODEL" --mode lora --batch-size 4 --seq-len 128 --precision "$p" --threads 2 --json
        done
        if [ -n "$PEER_PY" ]; then
            for ac in no bf16; do
                record "model-peft-$ac" "$round" 2 sh -c "'$PEER_PY' ../shared/bench/peft_bench.py '$MODEL' --mode lora --autocast $ac --threads 2 | sed -n 's/^RESULT //p'"
            done
        fi
    done
fi
$PY bench/compare_table.py "$RES"
echo "raw results: $RES" >&2
