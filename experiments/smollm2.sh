#!/bin/bash
# experiments/smollm2.sh [--dry-run] [--out DIR] [--no-docs] — the comparison of experiments/run.sh on
# SmolLM2-135M-Instruct (GGUF Q4_1 from scripts/fetch_smollm2.sh, converted with
# `loraga convert --from gguf`), cut down to about an hour on two CPU cores.
#
# Tasks (data from experiments/prep_data.py, the same rows as run.sh, filtered for this tokenizer):
#   sst2      prompt/completion, seq 64 (every row fits); dev: accuracy on the first DEV_LIMIT (100)
#             dev sentences (and their loss with DEV_LOSS=1: off by default, it costs as much again).
#   mrpc      prompt/completion, the pairs whose row fits 94 tokens (seq 96); dev: accuracy on the
#             first DEV_LIMIT dev pairs under the same limit (loss with DEV_LOSS=1).
#   gsm8k-lm  the GSM8K problems as packed text, seq 128; scored by exact match of greedy answers on
#             the first GSM8K_N (10) test problems, at most GSM8K_MAX_TOKENS (128) new tokens.
# Methods: all eight of run.sh (rank 8, alpha 16, q,k,v,o,gate,up,down). The model is 500x stories260K,
# so instead of run.sh's sweep × 3 seeds this is ONE seed and ONE rate per method (RATE_<method>,
# chosen from run.sh's stories260K sweep and a small LoRA / LoRA-GA pre-sweep on SST-2), plus extra
# rates for LoRA and LoRA-GA (EXTRA_<task>, "method:rate ...") so the two are compared at equal rates
# (3e-4, 1e-3; not GSM8K: time) and LoRA-GA at full fine-tuning's rate 3e-5 (all tasks; SST-2 also 1e-4).
# The extra runs come last (EXTRA_<task>="" cuts them). STEPS (30) updates of 8 rows,
# validation every 10 updates on 4 batches of held-out rows; LoRA-GA estimates its gradient on
# GA_BATCHES (16) batches of 2 rows (the paper and run.sh: 64).
# One run at a time, THREADS (2) threads, OMP_WAIT_POLICY=passive (a shared machine otherwise turns
# OpenMP's spin-waiting into a slowdown). Runs complete in DIR are reused (resumable). Results go to
# DIR (default build/experiments-smollm2); with docs, the block between the "smollm2" markers of
# docs/experiments.md is rewritten. --dry-run prints every command and runs nothing (exit 0).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-python3}
OUT=${OUT:-$ROOT/build/experiments-smollm2} DOCS=1 DRY=0
while [ $# -gt 0 ]; do
    case "$1" in
    --out) OUT=$2; shift 2 ;;
    --no-docs) DOCS=0; shift ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "smollm2.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
LORAGA=${LORAGA:-$ROOT/build/loraga}
DATA=${DATA:-$(cd "$ROOT/.." && pwd)/shared/data}
STEPS=${STEPS:-30} THREADS=${THREADS:-2} DEV_LIMIT=${DEV_LIMIT:-100} DEV_LOSS=${DEV_LOSS:-0}
GA_BATCHES=${GA_BATCHES:-16}
GSM8K_N=${GSM8K_N:-10} GSM8K_MAX_TOKENS=${GSM8K_MAX_TOKENS:-128}
TASKS=${TASKS:-sst2 mrpc gsm8k-lm}
METHODS=${METHODS:-full lora rslora loraplus dora pissa adalora lora-ga}
RATE_full=${RATE_full:-3e-5} RATE_lora=${RATE_lora:-1e-3} RATE_rslora=${RATE_rslora:-3e-4}
RATE_loraplus=${RATE_loraplus:-1e-4} RATE_dora=${RATE_dora:-1e-3} RATE_pissa=${RATE_pissa:-3e-4}
RATE_adalora=${RATE_adalora:-1e-3} RATE_lora_ga=${RATE_lora_ga:-3e-4}
EXTRA_sst2=${EXTRA_sst2-lora:3e-4 lora-ga:1e-3 lora-ga:3e-5 lora-ga:1e-4}
EXTRA_mrpc=${EXTRA_mrpc-lora:3e-4 lora-ga:1e-3 lora-ga:3e-5} EXTRA_gsm8k_lm=${EXTRA_gsm8k_lm-lora-ga:3e-5}
export OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS OMP_WAIT_POLICY=passive

train_cmd() { # task method lr rundir -> the training command in the array cmd
    local args
    case $1 in
    sst2) args=(--data "$OUT/data/sst2_train.jsonl" --seq-len 64) ;;
    mrpc) args=(--data "$OUT/data/mrpc_train.jsonl" --seq-len 96) ;;
    gsm8k-lm) args=(--data "$OUT/data/gsm8k_text.jsonl" --seq-len 128 --pack) ;;
    *) echo "smollm2.sh: unknown task $1" >&2; return 2 ;;
    esac
    [ "$2" = lora-ga ] && args+=(--ga-batches "$GA_BATCHES")
    cmd=("$LORAGA" train --model "$OUT/model" --method "$2" --lr "$3" --seed 1 --steps "$STEPS" --batch-size 8
         --val-frac 0.1 --val-batches 4 --eval-every 10 "${args[@]}" --out "$4")
}

eval_cmds() { # task model-args... -> arrays lmcmd, taskcmd
    local task=$1; shift
    lmcmd=() taskcmd=()
    case $task in
    sst2|mrpc) [ "$DEV_LOSS" = 1 ] && lmcmd=("$LORAGA" eval "$@" --data "$OUT/data/${task}_dev_first.jsonl" --json)
               taskcmd=("$LORAGA" eval "$@" --task "$task" --data "$OUT/data/${task}_dev_task.jsonl" --limit "$DEV_LIMIT" --json) ;;
    gsm8k-lm) taskcmd=("$LORAGA" eval "$@" --task gsm8k --data "$DATA/gsm8k/test.jsonl" --limit "$GSM8K_N"
                       --max-tokens "$GSM8K_MAX_TOKENS" --json) ;;
    esac
}

evaluate() { # OUTFILE task model-args...
    local f=$1 task=$2 lm= acc=
    shift 2
    [ -s "$f" ] && return 0
    eval_cmds "$task" "$@"
    [ ${#lmcmd[@]} -gt 0 ] && lm=$("${lmcmd[@]}" 2>/dev/null | tail -1)
    [ ${#taskcmd[@]} -gt 0 ] && acc=$("${taskcmd[@]}" 2>/dev/null | tail -1)
    printf '{"lm": %s, "task": %s}\n' "${lm:-null}" "${acc:-null}" > "$f"
}

specs=() # "task method lr", the main rate of every method first, then the extra rates
for task in $TASKS; do
    for m in $METHODS; do v=RATE_${m//-/_}; specs+=("$task $m ${!v}"); done
done
for task in $TASKS; do
    v=EXTRA_${task//-/_}
    for e in ${!v}; do specs+=("$task ${e%%:*} ${e#*:}"); done
done

if [ $DRY = 1 ]; then
    echo "plan: experiments/smollm2.sh into $OUT; tasks [$TASKS]; methods [$METHODS]; seed 1; $STEPS steps; extra: sst2 [$EXTRA_sst2], mrpc [$EXTRA_mrpc], gsm8k-lm [$EXTRA_gsm8k_lm]"
    [ -x "$LORAGA" ] && echo "check: binary $LORAGA ok" || echo "check: binary $LORAGA missing (would be built with make)"
    [ -s "$OUT/model/config.json" ] && echo "check: model $OUT/model converted" ||
        echo "prepare: $LORAGA convert --from gguf --model \$(sh $ROOT/scripts/fetch_smollm2.sh) --out $OUT/model"
    [ -s "$OUT/data/mrpc_train.jsonl" ] && echo "check: data rows in $OUT/data" ||
        echo "prepare: $PY $ROOT/experiments/prep_data.py $OUT/data --tokenizer $OUT/model --loraga $LORAGA --mrpc-max-tokens 94"
    for task in $TASKS; do
        eval_cmds "$task" --model "$OUT/model"
        for c in lmcmd taskcmd; do declare -n a=$c; [ ${#a[@]} -gt 0 ] && echo "eval $task base: ${a[*]}"; done
    done
    for spec in "${specs[@]}"; do
        set -- $spec
        run=$OUT/runs/$1/$2/lr$3_s1
        train_cmd "$1" "$2" "$3" "$run" || exit 2
        echo "train $1 $2 lr=$3 seed=1$([ -s "$run/metrics.jsonl" ] && echo ' [done]'): ${cmd[*]}"
        if [ "$2" = full ]; then eval_cmds "$1" --model "$run"; else eval_cmds "$1" --model "$OUT/model" --adapter "$run"; fi
        for c in lmcmd taskcmd; do declare -n a=$c; [ ${#a[@]} -gt 0 ] && echo "eval $1 $2 lr=$3 seed=1: ${a[*]}"; done
    done
    echo "analyse: $PY $ROOT/experiments/analyse.py $OUT --prefix smollm2_ $([ $DOCS = 1 ] && echo "--docs $ROOT/docs/experiments.md --img $ROOT/docs/img --marker smollm2" || echo "--img $OUT/img")"
    exit 0
fi

[ -d "$DATA/gsm8k" ] || { echo "smollm2.sh: $DATA/gsm8k not found (set DATA)" >&2; exit 1; }
[ -x "$LORAGA" ] || make -C "$ROOT" build/loraga >&2
mkdir -p "$OUT"
T0=$(date +%s)
{
    echo "date: $(date -u +%FT%TZ)"
    echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load at start $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo none)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "command: experiments/smollm2.sh (THREADS=$THREADS, one run at a time)"
    echo "tasks: $TASKS; $STEPS steps of 8 rows, seed 1; LoRA-GA on $GA_BATCHES x 2 rows; dev: accuracy on the first $DEV_LIMIT rows$([ "$DEV_LOSS" = 1 ] && echo ' and their loss'); GSM8K exact match on the first $GSM8K_N test problems, $GSM8K_MAX_TOKENS tokens"
    echo "lrs: full $RATE_full, lora $RATE_lora, rslora $RATE_rslora, loraplus $RATE_loraplus, dora $RATE_dora, pissa $RATE_pissa, adalora $RATE_adalora, lora-ga $RATE_lora_ga; extra: sst2 [$EXTRA_sst2], mrpc [$EXTRA_mrpc], gsm8k-lm [$EXTRA_gsm8k_lm]"
} >> "$OUT/setup.txt"

if [ ! -s "$OUT/model/config.json" ]; then
    gguf=$(sh "$ROOT/scripts/fetch_smollm2.sh")
    rm -rf "$OUT/model"
    "$LORAGA" convert --from gguf --model "$gguf" --out "$OUT/model" >&2
fi
if [ ! -s "$OUT/data/mrpc_train.jsonl" ]; then
    LORAGA_DATA=$DATA $PY "$ROOT/experiments/prep_data.py" "$OUT/data" --tokenizer "$OUT/model" --loraga "$LORAGA" \
        --mrpc-max-tokens 94
    for t in sst2 mrpc; do head -n "$DEV_LIMIT" "$OUT/data/${t}_dev.jsonl" > "$OUT/data/${t}_dev_first.jsonl"; done
fi

for task in $TASKS; do
    echo "== base model, $task" >&2
    evaluate "$OUT/base_${task}_eval.json" "$task" --model "$OUT/model"
done
for spec in "${specs[@]}"; do
    set -- $spec
    task=$1 method=$2 lr=$3 run=$OUT/runs/$1/$2/lr$3_s1
    if [ ! -s "$run/metrics.jsonl" ]; then
        rm -rf "$run" "$run".tmp.*
        mkdir -p "$(dirname "$run")"
        echo "== $task $method lr $lr" >&2
        train_cmd "$task" "$method" "$lr" "$run"
        SECONDS=0
        if ! "${cmd[@]}" > "$run.log" 2>&1; then
            echo "$task $method lr $lr: FAILED (see $run.log)" >&2; tail -3 "$run.log" >&2
            mkdir -p "$run" && echo '{"failed": true}' > "$run/failed.json"
            continue
        fi
        echo "{\"wall_s\": $SECONDS}" > "$run/time.json"
        grep -E "LoRA-GA: gradient|trained" "$run.log" >&2 || true
    fi
    SECONDS=0
    if [ "$method" = full ]; then
        evaluate "$run/dev_eval.json" "$task" --model "$run"
    else
        evaluate "$run/dev_eval.json" "$task" --model "$OUT/model" --adapter "$run"
    fi
    [ $SECONDS -gt 1 ] && echo "   evaluated in ${SECONDS}s: $(cut -c1-200 "$run/dev_eval.json")" >&2
done
echo "wall: $(( $(date +%s) - T0 )) s (load at end $(cut -d' ' -f1-3 /proc/loadavg))" >> "$OUT/setup.txt"
if [ $DOCS = 1 ]; then
    $PY "$ROOT/experiments/analyse.py" "$OUT" --docs "$ROOT/docs/experiments.md" --img "$ROOT/docs/img" \
        --marker smollm2 --prefix smollm2_
else
    $PY "$ROOT/experiments/analyse.py" "$OUT" --img "$OUT/img" --prefix smollm2_
fi
echo "done in $(( $(date +%s) - T0 )) s; runs in $OUT/runs" >&2
