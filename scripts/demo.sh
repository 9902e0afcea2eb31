#!/usr/bin/env bash
# The demo: sets up, builds the plugin, runs it in Envoy in front of simulated replicas.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/python build/make.py --target envoy
exec .venv/bin/python envoy-test/demo.py "$@"
