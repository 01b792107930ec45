#!/usr/bin/env bash
# venv.sh — print the path of a Python that has torch, transformers, peft and safetensors,
# creating a cached virtual environment when none is usable. Used by tests/test_interop.c;
# never a runtime dependency of loraga.
#
# Order: $LORAGA_PYTHON (if it imports the four packages), else the cached venv
# ${LORAGA_VENV:-~/.cache/loraga/venv} (created with `python3 -m venv` + pip when missing).
# torch comes from PyTorch's CPU wheel index (${LORAGA_TORCH_INDEX}), a ~200 MB download
# instead of the multi-GB CUDA build that plain PyPI serves on Linux, when that index is reachable.
# Exit status: 0 and the python path on stdout; 3 when the venv cannot be created (no python3,
# no venv module, or pip could not reach the index); the reason is on stderr.
set -u
check() { "$1" -c 'import torch, transformers, peft, safetensors' >/dev/null 2>&1; }

if [ -n "${LORAGA_PYTHON:-}" ]; then
    if check "$LORAGA_PYTHON"; then echo "$LORAGA_PYTHON"; exit 0; fi
    echo "venv.sh: LORAGA_PYTHON=$LORAGA_PYTHON lacks torch/transformers/peft/safetensors; using the cached venv" >&2
fi
VENV="${LORAGA_VENV:-$HOME/.cache/loraga/venv}"
# .complete is written last: a venv from an interrupted install is rebuilt, never trusted.
if [ -f "$VENV/.complete" ] && check "$VENV/bin/python"; then echo "$VENV/bin/python"; exit 0; fi

command -v python3 >/dev/null 2>&1 || { echo "venv.sh: python3 not found" >&2; exit 3; }
rm -rf "$VENV"
mkdir -p "$(dirname "$VENV")"
python3 -m venv "$VENV" >&2 || { echo "venv.sh: python3 -m venv failed (python3-venv missing?)" >&2; exit 3; }
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check --timeout 30 --retries 2 -q)
TORCH_INDEX="${LORAGA_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
echo "venv.sh: creating $VENV (torch CPU wheel, transformers, peft, safetensors; a few minutes)..." >&2
# The CPU index first; where it is not reachable, plain PyPI (the CUDA build: several GB).
if ! "${PIP[@]}" install --index-url "$TORCH_INDEX" torch >&2; then
    echo "venv.sh: $TORCH_INDEX not reachable; installing torch from PyPI instead (large download)" >&2
    "${PIP[@]}" install torch >&2 || { echo "venv.sh: pip install torch failed (PyPI not reachable?)" >&2; exit 3; }
fi
"${PIP[@]}" install transformers peft safetensors numpy >&2 ||
    { echo "venv.sh: pip install transformers peft safetensors failed (PyPI not reachable?)" >&2; exit 3; }
check "$VENV/bin/python" || { echo "venv.sh: the new venv cannot import the packages" >&2; exit 3; }
touch "$VENV/.complete"
echo "$VENV/bin/python"
