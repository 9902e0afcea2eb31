#!/usr/bin/env bash
# The demo: sets up, builds the plugin, then runs a short routing benchmark in a real
# Envoy: Envoy's own round robin / least request vs the plugin's prefix_cache vs an
# oracle, on 8 simulated vLLM replicas (a few minutes); prints TTFT and hit rate.
#   scripts/demo.sh                 simulated replicas
#   scripts/demo.sh --real-vllm     two real vLLM CPU replicas (vllm_replicas/, ~2.5 GB once)
# More options: .venv/bin/python bench/run.py --help
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/python -c 'import matplotlib' 2>/dev/null || .venv/bin/python -m pip install -q -e '.[bench]'
for arg in "$@"; do
    if [ "$arg" = "--real-vllm" ]; then vllm_replicas/setup.sh; fi
done
.venv/bin/python build/make.py --target envoy
exec .venv/bin/python envoy-test/demo.py "$@"
