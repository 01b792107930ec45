#!/bin/sh
# build_llama_cpp.sh [--check] — build llama.cpp's own tools (llama-perplexity, llama-completion,
# llama-tokenize, llama-quantize) once from the source vendored in the PyPI sdist llama-cpp-python, and cache them
# outside the repository. Prints the folder holding the binaries on stdout (messages on stderr).
#
#   cache: ${LORAGA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/loraga}/llama.cpp-<version>/bin
#
# Used by tests/test_gguf_export.c (llama.cpp's perplexity on our exported GGUFs) and by
# scripts/reference/chat_templates.py (the real chat templates in models/templates/*.jinja).
# Idempotent: a finished build (marked by .complete) is reused as is. The sdist is fetched with
# `pip download --no-deps --no-binary :all:` (77 MB) and checked against its sha256.
# --check: print the folder if the build is there, exit 77 otherwise (never downloads or builds).
# --source: fetch and unpack the sdist only; print the llama.cpp source folder (its models/templates
#   and models/ggml-vocab-*.gguf, gguf-py) — what scripts/reference/*.py read.
# The build is CPU only, GGML_NATIVE=OFF (a native build segfaulted on this machine), -j${JOBS:-2},
# nice -n 10: about 15-25 minutes on 2 shared cores.
set -eu

VERSION=0.3.36
SDIST=llama_cpp_python-$VERSION.tar.gz
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e

die() { echo "build_llama_cpp: $*" >&2; exit 1; }

CACHE=${LORAGA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/loraga}
SRC=$CACHE/llama_cpp_python-$VERSION
OUT=$CACHE/llama.cpp-$VERSION
BIN=$OUT/bin

if [ "${1:-}" != "--source" ] && [ -f "$OUT/.complete" ] && [ -x "$BIN/llama-quantize" ]; then
    echo "$BIN"
    exit 0
fi
if [ "${1:-}" = "--check" ]; then
    echo "build_llama_cpp: no build in $OUT (run scripts/build_llama_cpp.sh)" >&2
    exit 77
fi

command -v cmake >/dev/null 2>&1 || die "cmake is needed (apt-get install cmake)"
command -v g++ >/dev/null 2>&1 || die "g++ is needed (apt-get install g++)"
mkdir -p "$CACHE/dl" || die "cannot create $CACHE/dl"

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

# ---- the source: the sdist, verified, unpacked once
if [ ! -f "$SRC/.unpacked" ]; then
    if [ ! -f "$CACHE/dl/$SDIST" ] || [ "$(sha_of "$CACHE/dl/$SDIST")" != "$SDIST_SHA256" ]; then
        rm -f "$CACHE/dl/$SDIST"
        echo "build_llama_cpp: pip download llama-cpp-python==$VERSION (77 MB)" >&2
        PIP_DISABLE_PIP_VERSION_CHECK=1 python3 -m pip download --no-deps --no-binary :all: \
            --timeout 30 --retries 2 -d "$CACHE/dl" "llama-cpp-python==$VERSION" >&2 ||
            die "pip download llama-cpp-python==$VERSION failed (no network or no PyPI?)"
    fi
    [ "$(sha_of "$CACHE/dl/$SDIST")" = "$SDIST_SHA256" ] || die "$SDIST: wrong sha256"
    rm -rf "$SRC"
    tar xzf "$CACHE/dl/$SDIST" -C "$CACHE" || die "cannot unpack $SDIST"
    touch "$SRC/.unpacked"
fi
LLAMA=$SRC/vendor/llama.cpp
[ -f "$LLAMA/CMakeLists.txt" ] || die "$LLAMA has no CMakeLists.txt"
if [ "${1:-}" = "--source" ]; then echo "$LLAMA"; exit 0; fi

# ---- the build (one at a time: a lock in the cache)
exec 9>"$CACHE/.llama-build.lock"
if command -v flock >/dev/null 2>&1; then flock 9; fi
if [ -f "$OUT/.complete" ] && [ -x "$BIN/llama-quantize" ]; then echo "$BIN"; exit 0; fi

echo "build_llama_cpp: building llama.cpp tools in $OUT/build (takes a while)" >&2
mkdir -p "$OUT/build" "$BIN"
nice -n 10 cmake -S "$LLAMA" -B "$OUT/build" -G "Unix Makefiles" \
    -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
    -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_OPENMP=ON -DGGML_CCACHE=OFF \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF >&2 ||
    die "cmake configure failed (log above)"
nice -n 10 cmake --build "$OUT/build" -j"${JOBS:-2}" \
    --target llama-perplexity llama-completion llama-tokenize llama-quantize >&2 || die "build failed (log above)"
for t in llama-perplexity llama-completion llama-tokenize llama-quantize; do
    f=$(find "$OUT/build" -type f -name "$t" -perm -u+x | head -n 1)
    [ -n "$f" ] || die "$t was not built"
    cp -f "$f" "$BIN/$t"
done
touch "$OUT/.complete"
echo "build_llama_cpp: ok" >&2
echo "$BIN"
