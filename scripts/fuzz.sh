#!/bin/bash
# fuzz.sh SECONDS TARGET... — run each libFuzzer target (built by `make fuzz`) for SECONDS, from a
# corpus in build/fuzz/corpus/NAME seeded with the test fixtures, under a 1.5 GB RSS limit.
# Findings are written as build/fuzz/NAME-crash-*, -leak-*, -oom-*, -timeout-*; exit 1 if any.
set -u
secs=$1
shift
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bad=0

# seed NAME FILE [PREFIX_BYTE_IN_OCTAL]: copy a fixture into the corpus, with a leading byte if given
seed() {
    local dir=build/fuzz/corpus/$1 f=$2
    [ -f "$f" ] || return 0
    mkdir -p "$dir"
    if [ $# -ge 3 ]; then { printf "\\$3"; cat "$f"; } > "$dir/seed-$(basename "$f")-$3"
    else cp "$f" "$dir/seed-$(basename "$f")"; fi
}

# safetensors + config: 2 bytes of config length (little endian), config.json, model.safetensors
for m in tests/golden/models/*/; do
    c=$m/config.json s=$m/model.safetensors
    [ -f "$c" ] && [ -f "$s" ] || continue
    n=$(stat -c %s "$c")
    mkdir -p build/fuzz/corpus/fuzz_safetensors
    { printf "\\$(printf %03o $((n & 255)))\\$(printf %03o $((n >> 8)))"; cat "$c" "$s"; } \
        > "build/fuzz/corpus/fuzz_safetensors/seed-$(basename "$m")"
done
seed fuzz_gguf tests/golden/gguf/tiny_llama.gguf
seed fuzz_tokenizer ../shared/data/llama2c_stories260K/tok512.bin 001
mkdir -p build/fuzz/corpus/fuzz_tokenizer
{ printf '\000'; cat <<'EOF'
{"version": "1.0", "added_tokens": [{"id": 0, "content": "<s>", "special": true, "normalized": false}],
 "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"},
   {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
 "pre_tokenizer": null, "decoder": {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
 "model": {"type": "BPE", "byte_fallback": true, "vocab": {"<s>": 0, "\u2581": 1, "a": 2, "b": 3, "\u2581a": 4,
   "ab": 5, "<0x0A>": 6}, "merges": ["\u2581 a", "a b"]}}
EOF
} > build/fuzz/corpus/fuzz_tokenizer/seed-spm.json
for f in demo/train.jsonl demo/heldout.jsonl; do seed fuzz_jsonl "$f" 001; seed fuzz_jsonl "$f" 041; done

for bin in "$@"; do
    name=$(basename "$bin")
    mkdir -p "build/fuzz/corpus/$name"
    echo "== $name: ${secs}s"
    OMP_NUM_THREADS=1 "$bin" -max_total_time="$secs" -rss_limit_mb=1536 -malloc_limit_mb=1536 -timeout=30 \
        -max_len=65536 -print_final_stats=1 -artifact_prefix="build/fuzz/$name-" "build/fuzz/corpus/$name" \
        > "build/fuzz/$name.log" 2>&1
    rc=$?
    grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "build/fuzz/$name.log" | sed 's/^/   /'
    if [ $rc -ne 0 ]; then
        echo "   FAILED (exit $rc): see build/fuzz/$name.log and build/fuzz/$name-*"
        bad=1
    fi
done
exit $bad
