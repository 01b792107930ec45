#!/bin/bash
# experiments/smollm2.sh [--out DIR] [--no-docs] — a small LoRA / LoRA-GA / full fine-tuning run on
# SmolLM2-135M-Instruct (GGUF Q4_1 from scripts/fetch_smollm2.sh, converted with
# `loraga convert --from gguf`), on the same SST-2 data as experiments/run.sh.
#
# The model is 500× stories260K, so this is one seed: LoRA and LoRA-GA at each of RATES (1e-4 3e-4
# 1e-3), full fine-tuning at RATE_FULL (3e-5); STEPS (40) updates of 8 rows, validation every 10
# updates on 32 held-out rows, then the dev-set loss and accuracy (the first DEV_LIMIT = 200 dev
# sentences for the accuracy). One run at a time, THREADS (2) threads, OMP_WAIT_POLICY=passive so that
# a shared machine does not turn OpenMP's spin-waiting into a slowdown. Results go to DIR (default
# build/experiments-smollm2); with docs, the block between the "smollm2" markers of
# docs/experiments.md is rewritten. About 25 minutes on two quiet cores.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-python3}
OUT=$ROOT/build/experiments-smollm2 DOCS=1
while [ $# -gt 0 ]; do
    case "$1" in
    --out) OUT=$2; shift 2 ;;
    --no-docs) DOCS=0; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "smollm2.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
LORAGA=${LORAGA:-$ROOT/build/loraga}
DATA=${DATA:-$(cd "$ROOT/.." && pwd)/shared/data}
STEPS=${STEPS:-40} THREADS=${THREADS:-2} DEV_LIMIT=${DEV_LIMIT:-200}
RATES=${RATES:-1e-4 3e-4 1e-3} RATE_FULL=${RATE_FULL:-3e-5}
export OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS OMP_WAIT_POLICY=passive
[ -x "$LORAGA" ] || make -C "$ROOT" build/loraga >&2
mkdir -p "$OUT"
T0=$(date +%s)
{
    echo "date: $(date -u +%FT%TZ)"
    echo "machine: $(nproc) CPUs, load at start $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "command: experiments/smollm2.sh (STEPS=$STEPS, THREADS=$THREADS, rates adapters $RATES, full $RATE_FULL)"
} >> "$OUT/setup.txt"

if [ ! -s "$OUT/model/config.json" ]; then
    gguf=$(sh "$ROOT/scripts/fetch_smollm2.sh")
    rm -rf "$OUT/model"
    "$LORAGA" convert --from gguf --model "$gguf" --out "$OUT/model" >&2
fi
[ -s "$OUT/data/sst2_train.jsonl" ] || DATA=$DATA LORAGA_DATA=$DATA $PY "$ROOT/experiments/prep_data.py" "$OUT/data"

evaluate() { # OUTFILE model-args...
    local f=$1; shift
    [ -s "$f" ] && return 0
    local lm acc
    lm=$("$LORAGA" eval "$@" --data "$OUT/data/sst2_dev.jsonl" --json | tail -1)
    acc=$("$LORAGA" eval "$@" --task sst2 --data "$OUT/data/sst2_dev_task.jsonl" --limit "$DEV_LIMIT" --json | tail -1)
    printf '{"lm": %s, "task": %s}\n' "${lm:-null}" "${acc:-null}" > "$f"
}

echo "== base model on dev" >&2
evaluate "$OUT/base_dev_eval.json" --model "$OUT/model"
specs=()
for lr in $RATES; do specs+=("lora $lr" "lora-ga $lr"); done
specs+=("full $RATE_FULL")
for spec in "${specs[@]}"; do
    set -- $spec
    method=$1 lr=$2 run=$OUT/runs/sst2/$1/lr$2_s1
    if [ ! -s "$run/metrics.jsonl" ]; then
        rm -rf "$run" "$run".tmp.*
        mkdir -p "$(dirname "$run")"
        echo "== $method lr $lr" >&2
        SECONDS=0
        "$LORAGA" train --model "$OUT/model" --method "$method" --lr "$lr" --seed 1 --steps "$STEPS" \
            --data "$OUT/data/sst2_train.jsonl" --batch-size 8 --seq-len 72 --val-frac 0.1 --val-batches 4 \
            --eval-every 10 --out "$run" > "$run.log" 2>&1 || { tail -5 "$run.log" >&2; exit 1; }
        echo "{\"wall_s\": $SECONDS}" > "$run/time.json"
        grep -E "LoRA-GA:|trained" "$run.log" >&2 || true
    fi
    if [ "$method" = full ]; then
        evaluate "$run/dev_eval.json" --model "$run"
    else
        evaluate "$run/dev_eval.json" --model "$OUT/model" --adapter "$run"
    fi
done
echo "wall: $(( $(date +%s) - T0 )) s (load at end $(cut -d' ' -f1-3 /proc/loadavg))" >> "$OUT/setup.txt"
if [ $DOCS = 1 ]; then
    $PY "$ROOT/experiments/analyse.py" "$OUT" --docs "$ROOT/docs/experiments.md" --img "$ROOT/docs/img" \
        --marker smollm2 --prefix smollm2_
else
    $PY "$ROOT/experiments/analyse.py" "$OUT" --img "$OUT/img" --prefix smollm2_
fi
