#!/usr/bin/env bash
# The test command: sets up, builds both targets, runs every test (unit, native
# and wasm plugin tests, and the end-to-end tests in a real Envoy, two of them
# against real vLLM replicas). AILB_SKIP_VLLM=1 skips installing vLLM (~90 s,
# 2.5 GB; its tests are then skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [ "${AILB_SKIP_VLLM:-0}" != 1 ]; then
    vllm_replicas/setup.sh
fi
.venv/bin/python build/make.py
exec .venv/bin/python -m pytest "$@"
