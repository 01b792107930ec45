#!/bin/bash
# experiments/run.sh — the LoRA-GA paper's comparison at this machine's size, in one command.
#
#   experiments/run.sh [--quick] [--out DIR] [--no-docs]
#
# Model: the real stories260K (llama2.c, ../shared/data/llama2c_stories260K) converted to a Hugging
# Face directory with `loraga convert --from llama2c`. Tasks:
#   sst2         SST-2 as prompt/completion (lm-evaluation-harness's prompt, " positive"/" negative"),
#                3000 training sentences, 10 % of them held out for the validation curve; the final
#                adapters are also scored on the real dev set when `loraga eval --adapter` exists.
#   tinystories  language modelling on the 100 TinyStories validation stories (packed, 20 % of the
#                stories held out): the model's own domain.
#   gsm8k-lm     language modelling on 1500 GSM8K problems with their worked answers (packed, 10 %
#                held out): text the model has never seen, so fine-tuning has something to learn.
# Methods: full FT, LoRA, rsLoRA, LoRA+, DoRA, PiSSA, AdaLoRA, LoRA-GA (the paper's recipe,
# `--method lora-ga`), all adapters at rank 8, alpha 16, on q,k,v,o,gate,up,down.
# Protocol: learning-rate sweep (LRS_<task>, 4-5 values, the same for every method) with seed 1; the
# best rate per method (final validation loss) is then run with seeds 2 and 3 too. Every run writes
# metrics.jsonl (training loss per step, validation loss every EVAL_EVERY steps).
# Then experiments/analyse.py writes the tables (mean ± std over seeds, LoRA's steps to reach
# LoRA-GA's loss at step k) and the loss-curve pictures into docs/experiments.md and docs/img/.
#
# JOBS processes run at once, one thread each (stories260K is far too small for 2 threads to pay).
# Runs already complete in DIR are reused, so an interrupted run.sh continues where it stopped.
# Environment: LORAGA (binary, default build/loraga, built if missing), JOBS (2), STEPS_<task> (100),
# LRS_<task> (task names with "_" for "-"), METHODS, SEEDS ("1 2 3"), TASKS, DATA (../shared/data).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HERE=$ROOT/experiments
PY=${PY:-python3}

if [ "${1:-}" = --one ]; then # internal: one training run (called through xargs)
    shift
    task=$1 method=$2 lr=$3 seed=$4
    run=$OUT/runs/$task/$method/lr${lr}_s$seed
    [ -s "$run/metrics.jsonl" ] && exit 0
    rm -rf "$run".tmp.* "$run"
    mkdir -p "$(dirname "$run")"
    case $task in
    sst2) args=(--data "$OUT/data/sst2_train.jsonl" --batch-size 16 --seq-len 128 --val-frac 0.1 --val-batches 8) ;;
    tinystories) args=(--data "$DATA/tinystories_subset/validation_100.txt" --batch-size 8 --seq-len 128 --pack
                       --val-frac 0.2) ;;
    gsm8k-lm) args=(--data "$OUT/data/gsm8k_text.jsonl" --batch-size 8 --seq-len 128 --pack --val-frac 0.1
                    --val-batches 8) ;;
    esac
    steps_var=STEPS_${task//-/_}
    SECONDS=0
    if OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 "$LORAGA" train --model "$OUT/model" --method "$method" --lr "$lr" \
        --seed "$seed" --steps "${!steps_var}" --eval-every "$EVAL_EVERY" "${args[@]}" --out "$run" \
        > "$run.log" 2>&1; then
        times > "$run.times" # this shell's, then its children's (the training run's) CPU time
        cpu=$(tail -1 "$run.times" | awk '{print $1" user "$2" sys"}') && rm -f "$run.times"
        echo "{\"wall_s\": $SECONDS, \"cpu\": \"$cpu\"}" > "$run/time.json"
        echo "$task $method lr $lr seed $seed: $(grep -o 'loss [0-9.]* -> [0-9.]*.*' "$run.log" | head -1) (${SECONDS}s wall, $cpu)" >&2
    else
        echo "$task $method lr $lr seed $seed: FAILED (see $run.log)" >&2
        mkdir -p "$run" && echo '{"failed": true}' > "$run/failed.json" && tail -3 "$run.log" >&2
    fi
    exit 0
fi

QUICK=0 DOCS=1
OUT=${OUT:-$ROOT/build/experiments}
while [ $# -gt 0 ]; do
    case "$1" in
    --quick) QUICK=1; shift ;;
    --out) OUT=$2; shift 2 ;;
    --no-docs) DOCS=0; shift ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
export OUT
export DATA=${DATA:-$(cd "$ROOT/.." && pwd)/shared/data}
export LORAGA=${LORAGA:-$ROOT/build/loraga}
export EVAL_EVERY=${EVAL_EVERY:-20}
export STEPS_sst2=${STEPS_sst2:-100} STEPS_tinystories=${STEPS_tinystories:-100} STEPS_gsm8k_lm=${STEPS_gsm8k_lm:-100}
LRS_sst2=${LRS_sst2:-3e-4 1e-3 3e-3 1e-2}
LRS_tinystories=${LRS_tinystories:-1e-5 3e-5 1e-4 3e-4 1e-3}
LRS_gsm8k_lm=${LRS_gsm8k_lm:-1e-4 3e-4 1e-3 3e-3 1e-2}
METHODS=${METHODS:-full lora rslora loraplus dora pissa adalora lora-ga}
SEEDS=${SEEDS:-1 2 3}
TASKS=${TASKS:-sst2 tinystories gsm8k-lm}
JOBS=${JOBS:-2}
if [ $QUICK = 1 ]; then # smoke test: a few steps, one rate, one seed
    export STEPS_sst2=10 STEPS_tinystories=10 STEPS_gsm8k_lm=10 EVAL_EVERY=5
    LRS_sst2=1e-3 LRS_tinystories=3e-4 LRS_gsm8k_lm=1e-3 SEEDS=1
    OUT=$OUT-quick
    export OUT
fi
[ -d "$DATA/llama2c_stories260K" ] || { echo "run.sh: $DATA/llama2c_stories260K not found (set DATA)" >&2; exit 1; }
[ -x "$LORAGA" ] || make -C "$ROOT" build/loraga >&2
mkdir -p "$OUT"
T0=$(date +%s)
{   # appended: a resumed run.sh adds its own lines
    echo "date: $(date -u +%FT%TZ)"
    echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load at start $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo none)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "command: experiments/run.sh $([ $QUICK = 1 ] && echo --quick) (JOBS=$JOBS, one thread each)"
    echo "tasks: $TASKS; steps: sst2 $STEPS_sst2, tinystories $STEPS_tinystories, gsm8k-lm $STEPS_gsm8k_lm; eval every $EVAL_EVERY"
    echo "lrs: sst2 [$LRS_sst2], tinystories [$LRS_tinystories], gsm8k-lm [$LRS_gsm8k_lm]; seeds [$SEEDS]"
} >> "$OUT/setup.txt"

# the model and the data
if [ ! -s "$OUT/model/config.json" ]; then
    rm -rf "$OUT/model"
    "$LORAGA" convert --from llama2c --model "$DATA/llama2c_stories260K/stories260K.bin" --out "$OUT/model" >&2
fi
[ -s "$OUT/data/gsm8k_text.jsonl" ] || $PY "$HERE/prep_data.py" "$OUT/data"

best_lr() { # task method -> the rate whose seed-1 run ended with the lowest validation loss
    $PY "$HERE/analyse.py" --best-lr "$OUT" "$1" "$2"
}

for task in $TASKS; do
    lrs_var=LRS_${task//-/_}
    first_seed=${SEEDS%% *}
    echo "== $task: learning-rate sweep (seed $first_seed)" >&2
    for m in $METHODS; do for lr in ${!lrs_var}; do echo "$task $m $lr $first_seed"; done; done |
        xargs -r -P "$JOBS" -L 1 bash "$0" --one
    echo "== $task: the best rate of each method, the other seeds" >&2
    for m in $METHODS; do
        lr=$(best_lr "$task" "$m")
        for s in $SEEDS; do [ "$s" = "$first_seed" ] || echo "$task $m $lr $s"; done
    done | xargs -r -P "$JOBS" -L 1 bash "$0" --one
done

# the final adapters on the real SST-2 dev set, when `loraga eval` can apply an adapter
if [[ " $TASKS " == *" sst2 "* ]] && "$LORAGA" eval --help 2>&1 | grep -q -- --adapter; then
    echo "== sst2: dev-set loss and accuracy of the best-rate runs" >&2
    if [ ! -s "$OUT/base_dev_eval.json" ]; then # the base model, for reference
        lm=$(OMP_NUM_THREADS=1 "$LORAGA" eval --model "$OUT/model" --data "$OUT/data/sst2_dev.jsonl" --json | tail -1)
        acc=$(OMP_NUM_THREADS=1 "$LORAGA" eval --model "$OUT/model" --task sst2 --data "$OUT/data/sst2_dev_task.jsonl" --json | tail -1)
        printf '{"lm": %s, "task": %s}\n' "${lm:-null}" "${acc:-null}" > "$OUT/base_dev_eval.json"
    fi
    for m in $METHODS; do
        lr=$(best_lr sst2 "$m")
        for s in $SEEDS; do echo "$m $lr $s"; done
    done | xargs -r -P "$JOBS" -L 1 bash -c '
        run=$OUT/runs/sst2/$0/lr${1}_s$2
        [ -s "$run/dev_eval.json" ] || [ ! -s "$run/metrics.jsonl" ] && exit 0
        if [ "$0" = full ]; then mdl=(--model "$run"); else mdl=(--model "$OUT/model" --adapter "$run"); fi
        export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
        lm=$("$LORAGA" eval "${mdl[@]}" --data "$OUT/data/sst2_dev.jsonl" --json 2>/dev/null | tail -1)
        acc=$("$LORAGA" eval "${mdl[@]}" --task sst2 --data "$OUT/data/sst2_dev_task.jsonl" --json 2>/dev/null | tail -1)
        printf "{\"lm\": %s, \"task\": %s}\n" "${lm:-null}" "${acc:-null}" > "$run/dev_eval.json"'
fi

echo "== analysis" >&2
echo "wall: $(( $(date +%s) - T0 )) s (load at end $(cut -d' ' -f1-3 /proc/loadavg))" >> "$OUT/setup.txt"
if [ $DOCS = 1 ] && [ $QUICK = 0 ]; then
    $PY "$HERE/analyse.py" "$OUT" --docs "$ROOT/docs/experiments.md" --img "$ROOT/docs/img"
else
    $PY "$HERE/analyse.py" "$OUT" --img "$OUT/img"
fi
echo "done in $(( $(date +%s) - T0 )) s; runs in $OUT/runs" >&2
