#!/usr/bin/env bash
# The test command: sets up, builds both targets, runs every test (unit, native
# and wasm plugin tests, and the end-to-end tests in a real Envoy).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/python build/make.py
exec .venv/bin/python -m pytest "$@"
