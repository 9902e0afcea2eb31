"""The README's demo: a short routing benchmark through the real Envoy 1.40 with
the built plugin: Envoy's own round robin and least request vs the plugin's
prefix_cache vs an oracle that knows every replica's KV cache, on a multi-round
QA workload. Prints TTFT and prefix-cache hit rate per policy.

    scripts/demo.sh                 (sets up and builds first; a few minutes)
    scripts/demo.sh --real-vllm     (two real vLLM CPU replicas instead of the simulator)
    .venv/bin/python envoy-test/demo.py [bench/run.py options]

It is `bench/run.py --demo` with the module scripts/demo.sh built
(dist/ai-load-balancer-envoy.wasm); the full report (Markdown table, TTFT CDF
and hit-rate plots) goes to bench/results/tmp/demo/ (demo-real/ with --real-vllm).
Every bench/run.py option works here too, e.g. --policies, --duration, --param.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WASM = os.path.join(ROOT, "dist", "ai-load-balancer-envoy.wasm")
sys.path.insert(0, ROOT)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--wasm" or a.startswith("--wasm=") for a in argv):
        if not os.path.exists(WASM):
            raise SystemExit(f"demo: {WASM} is missing; run scripts/demo.sh (it builds first)")
        argv += ["--wasm", WASM]
    from bench import run
    run.main(["--demo"] + argv)


if __name__ == "__main__":
    main()
