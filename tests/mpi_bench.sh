#!/bin/bash
# mpi_bench.sh — data-parallel scaling of `loraga train` on this machine (docs/mpi.md):
# P=1 with T threads against P ranks with T/P threads each, same global batch, for LoRA and
# full fine-tuning, plus the bytes all-reduced per update. Not part of `make test`.
#
#   tests/mpi_bench.sh [P=2] [THREADS=2] [STEPS=12]
#
# The model is random, shaped like `loraga bench --config small` (dim 512, 8 layers, MLP 1376,
# vocab 32000, 58M parameters), written by python3 (stdlib only) into a temporary directory;
# the tokenizer and rows are stories260K's and tinystories_subset from ../shared/data.
set -euo pipefail
cd "$(dirname "$0")/.."
P=${1:-2}
TH=${2:-2}
STEPS=${3:-12}
BIN=${LORAGA_BIN:-build/loraga}
SHARED=${LORAGA_SHARED:-../shared/data}
DATA=$SHARED/tinystories_subset/validation_100.txt
[ -f "$DATA" ] || { echo "skipped: $DATA not found"; exit 0; }
command -v mpirun >/dev/null || { echo "skipped: mpirun not found"; exit 0; }
ldd "$BIN" | grep libmpi >/dev/null || { echo "skipped: $BIN built without MPI"; exit 0; }
MPIRUN="mpirun --oversubscribe --bind-to none"
[ "$(id -u)" = 0 ] && MPIRUN="$MPIRUN --allow-run-as-root"

W=$(mktemp -d /tmp/loraga-mpibench-XXXXXX)
trap 'rm -rf "$W"' EXIT
"$BIN" convert --from llama2c --model "$SHARED/llama2c_stories260K/stories260K.bin" --out "$W/tok" >/dev/null 2>&1
python3 - "$W/small" <<'EOF'
import array, json, os, random, struct, sys
out = sys.argv[1]; os.makedirs(out)
C, F, L, H, V = 512, 1376, 8, 8, 32000
cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": V, "hidden_size": C,
       "intermediate_size": F, "num_hidden_layers": L, "num_attention_heads": H, "num_key_value_heads": H,
       "max_position_embeddings": 1024, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
       "tie_word_embeddings": False, "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2}
json.dump(cfg, open(os.path.join(out, "config.json"), "w"))
shapes = [("model.embed_tokens.weight", [V, C])]
for l in range(L):
    p = f"model.layers.{l}."
    shapes += [(p + "input_layernorm.weight", [C]), (p + "post_attention_layernorm.weight", [C])]
    shapes += [(p + f"self_attn.{n}_proj.weight", [C, C]) for n in "qkvo"]
    shapes += [(p + "mlp.gate_proj.weight", [F, C]), (p + "mlp.up_proj.weight", [F, C]), (p + "mlp.down_proj.weight", [C, F])]
shapes += [("model.norm.weight", [C]), ("lm_head.weight", [V, C])]
rng = random.Random(0)
pool = array.array("f", (rng.gauss(0, 0.02) for _ in range(1 << 20))).tobytes()  # tiled: speed over variety
header, off = {}, 0
for name, sh in shapes:
    n = 1
    for d in sh: n *= d
    header[name] = {"dtype": "F32", "shape": sh, "data_offsets": [off, off + 4 * n]}; off += 4 * n
h = json.dumps(header).encode(); h += b" " * (-len(h) % 8)
with open(os.path.join(out, "model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(h))); f.write(h)
    for name, sh in shapes:
        n = 1
        for d in sh: n *= d
        if len(sh) == 1: f.write(array.array("f", [1.0] * n).tobytes()); continue
        left, k = 4 * n, rng.randrange(1 << 20) * 4
        while left:
            chunk = pool[k % len(pool):][:left]; f.write(chunk); left -= len(chunk); k = 0
EOF

COMMON=(--model "$W/small" --tokenizer "$W/tok" --data "$DATA" --steps "$STEPS" --batch-size 8 --seq-len 128 --lr 1e-4)
# seconds per update: the fastest update after the first (the machine may be shared: the minimum
# is the estimate least disturbed by other work); the elapsed field is cumulative
per_step() { python3 -c "
import json,sys
e=[json.loads(l)['elapsed'] for l in open(sys.argv[1])]
print('%.3f' % min(b-a for a,b in zip(e,e[1:])))" "$1/metrics.jsonl"; }
run() { # NAME P THREADS METHOD-ARGS...
    local name=$1 p=$2 th=$3; shift 3
    if [ "$p" = 1 ]; then OMP_NUM_THREADS=$th "$BIN" train "${COMMON[@]}" --out "$W/$name" "$@" >"$W/$name.log" 2>&1
    else OMP_NUM_THREADS=$th $MPIRUN -np "$p" "$BIN" train "${COMMON[@]}" --out "$W/$name" "$@" >"$W/$name.log" 2>&1; fi
    grep -h "all-reduced per update" "$W/$name.log" | sed 's/^/    /' || true
    per_step "$W/$name"
}
# The all-reduce alone (a barrier first, so no waiting for a slower rank is counted), for the
# gradient sizes of the table in docs/mpi.md.
if command -v mpicc >/dev/null; then
    cat > "$W/ar.c" <<'EOF'
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    for (int i = 1; i < argc; i++) {
        long n = atol(argv[i]) / 4;
        float *x = calloc((size_t)n, 4);
        double best = 1e9;
        for (int rep = 0; rep < 5; rep++) {
            MPI_Barrier(MPI_COMM_WORLD);
            double t = MPI_Wtime();
            MPI_Allreduce(MPI_IN_PLACE, x, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
            t = MPI_Wtime() - t;
            if (t < best) best = t;
        }
        if (!rank) printf("    all-reduce of %8.2f MB: %8.2f ms\n", n * 4 / 1e6, best * 1e3);
        free(x);
    }
    MPI_Finalize();
    return 0;
}
EOF
    mpicc -O2 -o "$W/ar" "$W/ar.c"
    echo "MPI_Allreduce alone, P=$P on this machine (best of 5):"
    $MPIRUN -np "$P" "$W/ar" 184968 2498568 9768968 232000000 538060032
fi

printf "model: random 'small' (dim 512, 8 layers, 58M params), global batch 8 x 128 tokens, %s updates\n" "$STEPS"
for m in "lora --targets all-linear --rank 8" "full"; do
    set -- $m
    t11=$(run "s_$1" 1 1 --method $m | tail -1)            # one core
    t1=$(run "a_$1" 1 "$TH" --method $m | tail -1)         # all cores as threads
    tp=$(run "b_$1" "$P" $((TH / P > 0 ? TH / P : 1)) --method $m) # all cores as ranks
    echo "$tp" | head -n -1
    python3 -c "
t11, t1, tp, P, TH = $t11, $t1, $(echo "$tp" | tail -1), $P, $TH
print('%-5s s/update: P=1 x 1 thread %.3f | P=1 x %d threads %.3f | P=%d x %d threads %.3f' % ('$1', t11, TH, t1, P, max(1, TH // P), tp))
print('      P=%d vs one core: speed-up %.2f, efficiency %.0f%%; vs P=1 x %d threads: %.2fx' % (P, t11 / tp, 100 * t11 / tp / P, TH, t1 / tp))"
done
