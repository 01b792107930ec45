#!/bin/bash
# experiments/run.sh — the LoRA-GA paper's comparison at this machine's size, in one command.
#
#   experiments/run.sh [--quick] [--dry-run] [--out DIR] [--no-docs]
#
# Model: the real stories260K (llama2.c, ../shared/data/llama2c_stories260K) converted to a Hugging
# Face directory with `loraga convert --from llama2c`. Tasks:
#   sst2         SST-2 as prompt/completion (lm-evaluation-harness's prompt, " positive"/" negative"),
#                3000 training sentences, 10 % of them held out for the validation curve; the final
#                adapters are also scored on the real dev set (loss, accuracy: `loraga eval --task sst2`).
#   mrpc         MRPC as prompt/completion (`loraga eval --task mrpc`'s prompt, " yes"/" no"): the
#                training pairs whose row fits 190 tokens (1556 of 3667), 10 % held out; dev loss and
#                accuracy on the 168 dev pairs under the same limit.
#   tinystories  language modelling on the 100 TinyStories validation stories (packed, 20 % of the
#                stories held out): the model's own domain.
#   gsm8k-lm     language modelling on 1500 GSM8K problems with their worked answers (packed, 10 %
#                held out): text the model has never seen, so fine-tuning has something to learn. The
#                generative metric: exact match of the final number of a greedy answer on the first
#                GSM8K_N (100) test problems, GSM8K_MAX_TOKENS (256) tokens (`loraga eval --task gsm8k`).
# Methods: full FT, LoRA, rsLoRA, LoRA+, DoRA, PiSSA, AdaLoRA, LoRA-GA (the paper's recipe,
# `--method lora-ga`), all adapters at rank 8, alpha 16, on q,k,v,o,gate,up,down.
# Protocol: learning-rate sweep (LRS_<task>, 3-5 values, the same for every method) with seed 1; the
# best rate per method (final validation loss) is then run with seeds 2 and 3 too, and those runs
# (all seeds) are scored on the task's dev/test set. Every run writes metrics.jsonl (training loss
# per step, validation loss every EVAL_EVERY steps).
# Then experiments/analyse.py writes the tables (mean ± std over seeds, LoRA's steps to reach
# LoRA-GA's loss at step k) and the loss-curve pictures into docs/experiments.md and docs/img/.
#
# --dry-run prints the plan — every training and evaluation command, one line each, "[done]" where
# a finished run would be reused, "<best>" for the rate the sweep will choose — and runs nothing
# (no binary, model or data needed; what is missing is reported on "check:" lines); exits 0.
# JOBS processes run at once, one thread each (stories260K is far too small for 2 threads to pay).
# Runs already complete in DIR are reused, so an interrupted run.sh continues where it stopped.
# Environment: LORAGA (binary, default build/loraga, built if missing), JOBS (2), STEPS_<task> (100),
# LRS_<task> (task names with "_" for "-"), METHODS, SEEDS ("1 2 3"), TASKS, DATA (../shared/data),
# GSM8K_N, GSM8K_MAX_TOKENS.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HERE=$ROOT/experiments
PY=${PY:-python3}

train_cmd() { # task method lr seed rundir -> the training command in the array cmd
    local args steps_var=STEPS_${1//-/_}
    case $1 in
    sst2) args=(--data "$OUT/data/sst2_train.jsonl" --batch-size 16 --seq-len 128 --val-frac 0.1 --val-batches 8) ;;
    mrpc) args=(--data "$OUT/data/mrpc_train.jsonl" --batch-size 16 --seq-len 192 --val-frac 0.1 --val-batches 8) ;;
    tinystories) args=(--data "$DATA/tinystories_subset/validation_100.txt" --batch-size 8 --seq-len 128 --pack
                       --val-frac 0.2) ;;
    gsm8k-lm) args=(--data "$OUT/data/gsm8k_text.jsonl" --batch-size 8 --seq-len 128 --pack --val-frac 0.1
                    --val-batches 8) ;;
    *) echo "run.sh: unknown task $1" >&2; return 2 ;;
    esac
    cmd=("$LORAGA" train --model "$OUT/model" --method "$2" --lr "$3" --seed "$4" --steps "${!steps_var}"
         --eval-every "$EVAL_EVERY" "${args[@]}" --out "$5")
}

eval_cmds() { # task model-args... -> the dev/test evaluation commands in the arrays lmcmd, taskcmd
    local task=$1; shift
    lmcmd=() taskcmd=()
    case $task in
    sst2|mrpc) lmcmd=("$LORAGA" eval "$@" --data "$OUT/data/${task}_dev.jsonl" --json)
               taskcmd=("$LORAGA" eval "$@" --task "$task" --data "$OUT/data/${task}_dev_task.jsonl" --json) ;;
    gsm8k-lm) taskcmd=("$LORAGA" eval "$@" --task gsm8k --data "$DATA/gsm8k/test.jsonl" --limit "$GSM8K_N"
                       --max-tokens "$GSM8K_MAX_TOKENS" --json) ;;
    esac
}

evaluate() { # OUTFILE task model-args...: {"lm": ..., "task": ...} from the dev/test evaluation
    local f=$1 task=$2 lm= acc=
    shift 2
    [ -s "$f" ] && return 0
    eval_cmds "$task" "$@"
    [ ${#lmcmd[@]} -gt 0 ] && lm=$(OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 "${lmcmd[@]}" 2>/dev/null | tail -1)
    [ ${#taskcmd[@]} -gt 0 ] && acc=$(OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 "${taskcmd[@]}" 2>/dev/null | tail -1)
    printf '{"lm": %s, "task": %s}\n' "${lm:-null}" "${acc:-null}" > "$f"
}

if [ "${1:-}" = --one ]; then # internal: one training run (called through xargs)
    shift
    task=$1 method=$2 lr=$3 seed=$4
    run=$OUT/runs/$task/$method/lr${lr}_s$seed
    [ -s "$run/metrics.jsonl" ] && exit 0
    rm -rf "$run".tmp.* "$run"
    mkdir -p "$(dirname "$run")"
    train_cmd "$task" "$method" "$lr" "$seed" "$run"
    SECONDS=0
    if OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 "${cmd[@]}" > "$run.log" 2>&1; then
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

QUICK=0 DOCS=1 DRY=0
OUT=${OUT:-$ROOT/build/experiments}
while [ $# -gt 0 ]; do
    case "$1" in
    --quick) QUICK=1; shift ;;
    --dry-run) DRY=1; shift ;;
    --out) OUT=$2; shift 2 ;;
    --no-docs) DOCS=0; shift ;;
    -h|--help) sed -n '2,36p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
export OUT
export DATA=${DATA:-$(cd "$ROOT/.." && pwd)/shared/data}
export LORAGA=${LORAGA:-$ROOT/build/loraga}
export EVAL_EVERY=${EVAL_EVERY:-20}
export STEPS_sst2=${STEPS_sst2:-100} STEPS_mrpc=${STEPS_mrpc:-100} STEPS_tinystories=${STEPS_tinystories:-100}
export STEPS_gsm8k_lm=${STEPS_gsm8k_lm:-100}
export GSM8K_N=${GSM8K_N:-100} GSM8K_MAX_TOKENS=${GSM8K_MAX_TOKENS:-256}
LRS_sst2=${LRS_sst2:-3e-4 1e-3 3e-3 1e-2}
LRS_mrpc=${LRS_mrpc:-3e-4 1e-3 3e-3}
LRS_tinystories=${LRS_tinystories:-1e-5 3e-5 1e-4 3e-4 1e-3}
LRS_gsm8k_lm=${LRS_gsm8k_lm:-1e-4 3e-4 1e-3 3e-3 1e-2}
METHODS=${METHODS:-full lora rslora loraplus dora pissa adalora lora-ga}
SEEDS=${SEEDS:-1 2 3}
TASKS=${TASKS:-sst2 mrpc tinystories gsm8k-lm}
JOBS=${JOBS:-2}
if [ $QUICK = 1 ]; then # smoke test: a few steps, one rate, one seed
    export STEPS_sst2=10 STEPS_mrpc=10 STEPS_tinystories=10 STEPS_gsm8k_lm=10 EVAL_EVERY=5 GSM8K_N=5 GSM8K_MAX_TOKENS=32
    LRS_sst2=1e-3 LRS_mrpc=1e-3 LRS_tinystories=3e-4 LRS_gsm8k_lm=1e-3 SEEDS=1
    OUT=$OUT-quick
    export OUT
fi
if [ $DRY = 1 ]; then # the plan, nothing run
    echo "plan: experiments/run.sh$([ $QUICK = 1 ] && echo ' --quick') into $OUT; tasks [$TASKS]; methods [$METHODS]; seeds [$SEEDS]; JOBS=$JOBS"
    for t in $TASKS; do v=LRS_${t//-/_} st=STEPS_${t//-/_}; echo "plan: $t: rates [${!v}], ${!st} steps, eval every $EVAL_EVERY"; done
    [ -x "$LORAGA" ] && echo "check: binary $LORAGA ok" || echo "check: binary $LORAGA missing (would be built with make)"
    [ -d "$DATA/llama2c_stories260K" ] && echo "check: data $DATA ok" || echo "check: data $DATA/llama2c_stories260K missing (a real run stops here)"
    [ -s "$OUT/model/config.json" ] && echo "check: model $OUT/model converted" ||
        echo "prepare: $LORAGA convert --from llama2c --model $DATA/llama2c_stories260K/stories260K.bin --out $OUT/model"
    [ -s "$OUT/data/mrpc_train.jsonl" ] && echo "check: data rows in $OUT/data" ||
        echo "prepare: $PY $HERE/prep_data.py $OUT/data --tokenizer $OUT/model --loraga $LORAGA"
    first_seed=${SEEDS%% *}
    for task in $TASKS; do
        lrs_var=LRS_${task//-/_}
        train_cmd "$task" x 0 0 x || exit 2
        for m in $METHODS; do
            for lr in ${!lrs_var}; do
                run=$OUT/runs/$task/$m/lr${lr}_s$first_seed
                train_cmd "$task" "$m" "$lr" "$first_seed" "$run"
                echo "train $task $m lr=$lr seed=$first_seed$([ -s "$run/metrics.jsonl" ] && echo ' [done]'): ${cmd[*]}"
            done
            for s in $SEEDS; do
                [ "$s" = "$first_seed" ] && continue
                train_cmd "$task" "$m" "<best>" "$s" "$OUT/runs/$task/$m/lr<best>_s$s"
                echo "train $task $m lr=<best> seed=$s: ${cmd[*]}"
            done
        done
        case $task in sst2|mrpc|gsm8k-lm) ;; *) continue ;; esac
        eval_cmds "$task" --model "$OUT/model"
        for c in lmcmd taskcmd; do declare -n a=$c; [ ${#a[@]} -gt 0 ] && echo "eval $task base: ${a[*]}"; done
        for m in $METHODS; do for s in $SEEDS; do
            run=$OUT/runs/$task/$m/lr'<best>'_s$s
            if [ "$m" = full ]; then eval_cmds "$task" --model "$run"; else eval_cmds "$task" --model "$OUT/model" --adapter "$run"; fi
            for c in lmcmd taskcmd; do declare -n a=$c; [ ${#a[@]} -gt 0 ] && echo "eval $task $m lr=<best> seed=$s: ${a[*]}"; done
        done; done
    done
    echo "analyse: $PY $HERE/analyse.py $OUT$([ $DOCS = 1 ] && [ $QUICK = 0 ] && echo " --docs $ROOT/docs/experiments.md --img $ROOT/docs/img" || echo " --img $OUT/img")"
    exit 0
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
    echo "tasks: $TASKS; steps: sst2 $STEPS_sst2, mrpc $STEPS_mrpc, tinystories $STEPS_tinystories, gsm8k-lm $STEPS_gsm8k_lm; eval every $EVAL_EVERY; GSM8K exact match on the first $GSM8K_N test problems, $GSM8K_MAX_TOKENS tokens"
    echo "lrs: sst2 [$LRS_sst2], mrpc [$LRS_mrpc], tinystories [$LRS_tinystories], gsm8k-lm [$LRS_gsm8k_lm]; seeds [$SEEDS]"
} >> "$OUT/setup.txt"

# the model and the data
if [ ! -s "$OUT/model/config.json" ]; then
    rm -rf "$OUT/model"
    "$LORAGA" convert --from llama2c --model "$DATA/llama2c_stories260K/stories260K.bin" --out "$OUT/model" >&2
fi
[ -s "$OUT/data/mrpc_train.jsonl" ] || $PY "$HERE/prep_data.py" "$OUT/data" --tokenizer "$OUT/model" --loraga "$LORAGA"

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

# the best-rate runs (all seeds) on the task's dev set (SST-2, MRPC: loss and accuracy) or test
# problems (GSM8K: exact match of greedy answers), and the base model for reference
export -f eval_cmds evaluate
for task in $TASKS; do
    case $task in sst2|mrpc|gsm8k-lm) ;; *) continue ;; esac
    echo "== $task: dev/test evaluation of the best-rate runs" >&2
    base=$OUT/base_${task}_eval.json
    [ $task = sst2 ] && base=$OUT/base_dev_eval.json # the name the first runs used
    evaluate "$base" "$task" --model "$OUT/model"
    for m in $METHODS; do
        lr=$(best_lr "$task" "$m")
        for s in $SEEDS; do echo "$task $m $lr $s"; done
    done | xargs -r -P "$JOBS" -L 1 bash -c '
        run=$OUT/runs/$0/$1/lr${2}_s$3
        [ -s "$run/metrics.jsonl" ] || exit 0
        if [ "$1" = full ]; then evaluate "$run/dev_eval.json" "$0" --model "$run"
        else evaluate "$run/dev_eval.json" "$0" --model "$OUT/model" --adapter "$run"; fi'
done

echo "== analysis" >&2
echo "wall: $(( $(date +%s) - T0 )) s (load at end $(cut -d' ' -f1-3 /proc/loadavg))" >> "$OUT/setup.txt"
if [ $DOCS = 1 ] && [ $QUICK = 0 ]; then
    $PY "$HERE/analyse.py" "$OUT" --docs "$ROOT/docs/experiments.md" --img "$ROOT/docs/img"
else
    $PY "$HERE/analyse.py" "$OUT" --img "$OUT/img"
fi
echo "done in $(( $(date +%s) - T0 )) s; runs in $OUT/runs" >&2
nf=$(find "$OUT/runs" -name failed.json 2>/dev/null | wc -l)
[ "$nf" = 0 ] || echo "run.sh: $nf run(s) failed (their .log next to them); running the same command again retries them" >&2
