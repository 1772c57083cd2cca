#!/usr/bin/env bash
# The prepared GPU check (docs/gpu.md, "The prepared GPU check"): run as is on one H100/H200 with
# Python 3.12 and a CUDA torch, no network, no megatron-core and no Transformer Engine needed.
#
#   bash tools/gpu_check.sh                 install from .gpu_wheels (offline), then the check
#   bash tools/gpu_check.sh --cpu-smoke     the same parts at the smallest size on CPU/gloo, in the
#                                           environment already installed (no install step)
#   GPU_CHECK_CPU_SMOKE=1 bash tools/gpu_check.sh      the same as --cpu-smoke
# Other flags go to tools/gpu_check.py (--json PATH, --budget-s SECONDS, --work DIR).
#
# Settings (environment):
#   PYTHON=python3        the interpreter with the CUDA torch (default: python, else python3)
#   GPU_CHECK_WHEELS=.gpu_wheels   the wheel folder, filled on a machine with network by the
#                         `pip download` line in docs/gpu.md
#   OUT=DIR               the JSON goes to $OUT/gpu_check.json (else ./gpu_check.json)
#
# The install never touches torch: pip installs from the folder only (--no-index), the folder holds
# no torch, and the installed torch is pinned as a constraint, so a package that wanted another torch
# fails the install instead of replacing it.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

PYTHON=${PYTHON:-$(command -v python || command -v python3 || echo python3)}
WHEELS=${GPU_CHECK_WHEELS:-.gpu_wheels}
SMOKE=${GPU_CHECK_CPU_SMOKE:-0}
for arg in "$@"; do
    if [[ "$arg" == "--cpu-smoke" ]]; then SMOKE=1; fi
done
say() { echo "gpu_check.sh: $*"; }
fail() { echo "gpu_check.sh: $*" >&2; exit 2; }

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
    fail "$PYTHON cannot import torch: set PYTHON to the interpreter that has the CUDA torch"
fi

if [[ "$SMOKE" == 1 ]]; then
    say "CPU smoke run: no install, the environment as it is"
    export GPU_CHECK_CPU_SMOKE=1
    exec "$PYTHON" tools/gpu_check.py "$@"
fi

# Stop at once without a GPU: every part below needs CUDA.
if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    fail "no CUDA device visible to $PYTHON (torch.cuda.is_available() is False): run on a GPU machine, or pass --cpu-smoke"
fi

# ---- install, offline, from the wheel folder ------------------------------------------------
START=$SECONDS
TORCH_VERSION=$("$PYTHON" -c "import torch; print(torch.__version__)")
# What the project needs besides torch (setup.py install_requires) + pytest for tests/gpu + setuptools
# for the editable install without build isolation (a bare Python 3.12 venv has no setuptools).
NEEDED=("megatron-core>=0.16.1,<0.20" "psutil" "numpy" "tokenizers>=0.20,<1" "pytest>=8.0" "setuptools>=64")
if [[ -d "$WHEELS" ]] && compgen -G "$WHEELS/*.whl" >/dev/null; then
    "$PYTHON" -m pip --version >/dev/null 2>&1 || fail "$PYTHON has no pip: install it (python -m ensurepip) or set PYTHON"
    say "installing ${NEEDED[*]} from $WHEELS (offline; torch $TORCH_VERSION stays)"
    CONSTRAINTS=$(mktemp)
    echo "torch==$TORCH_VERSION" > "$CONSTRAINTS"
    LOG=$(mktemp)
    if ! "$PYTHON" -m pip install --no-index --find-links "$WHEELS" -c "$CONSTRAINTS" "${NEEDED[@]}" >"$LOG" 2>&1; then
        tail -n 15 "$LOG" >&2
        if grep -q externally-managed-environment "$LOG"; then
            fail "this Python refuses pip installs (PEP 668): use a venv that sees its torch (python -m venv --system-site-packages V) or set PIP_BREAK_SYSTEM_PACKAGES=1"
        fi
        fail "pip could not install from $WHEELS (above): refill it with the pip download line of docs/gpu.md, \"The prepared GPU check\""
    fi
    # The project itself, without dependencies and without a build environment from the network.
    if ! "$PYTHON" -m pip install --no-index --no-deps --no-build-isolation -e . >"$LOG" 2>&1; then
        tail -n 15 "$LOG" >&2
        fail "pip install --no-deps -e . failed (above)"
    fi
    rm -f "$CONSTRAINTS" "$LOG"
    INSTALL_RESULT=pass
    INSTALL_DETAIL="from $WHEELS, offline"
elif "$PYTHON" -c "import megatron.core, tokenizers, psutil, pytest, megatron_ponder" 2>/dev/null; then
    say "no wheel folder $WHEELS: using the packages already installed"
    INSTALL_RESULT=skip
    INSTALL_DETAIL="no $WHEELS; packages already installed"
else
    fail "no wheel folder $WHEELS and megatron-core/tokenizers/pytest are not installed: fill $WHEELS on a machine with network using the pip download line in docs/gpu.md (\"The prepared GPU check\") and copy it here"
fi
# What the check will run on, recorded in its JSON (torch must be the version found before).
FIGURES=$("$PYTHON" - "$TORCH_VERSION" "$((SECONDS - START))" <<'EOF'
import json, sys
from importlib.metadata import version
import torch
if torch.__version__ != sys.argv[1]:
    sys.exit(f"torch changed from {sys.argv[1]} to {torch.__version__} during the install")
print(json.dumps({"megatron-core": version("megatron-core"), "torch": torch.__version__, "seconds": int(sys.argv[2])}))
EOF
) || fail "the install left torch or megatron-core unusable (above)"
say "installed: $FIGURES"

exec "$PYTHON" tools/gpu_check.py --install "$INSTALL_RESULT|$INSTALL_DETAIL|$FIGURES" "$@"
