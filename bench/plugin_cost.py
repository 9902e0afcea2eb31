"""Python-side cost of one request, per policy and body size, in the test host.

    .venv/bin/python bench/plugin_cost.py [--requests 300]

Runs the built envoy-target module (dist/) in wasmtime, and the same plugin
natively in CPython, through a whole request lifecycle (context create, request
headers, body, response headers, done/log/delete) with state embedded in
shared data. wasmtime is not V8, so absolute numbers differ from Envoy's;
envoy-test/bench_policies.py measures Envoy's CPU per request.
"""

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "plugin")]

from tests.host.emulator import HostEmulator  # noqa: E402
from tests.host.native import NativePlugin  # noqa: E402
from tests.host.wasm import WasmPlugin  # noqa: E402
from tests.llm_traffic import chat_body, finish, plugin_config, send  # noqa: E402

WASM = os.path.join(ROOT, "dist", "ai-load-balancer-envoy.wasm")


def body_of(size):
    """A chat body of about `size` bytes: a system prompt and a few turns."""
    turn = "Tell me more about the history of distributed systems. " * 4
    turns = ["You are a helpful assistant. " * 10]
    while len(chat_body(*turns)) < size:
        turns.append(turn)
    return chat_body(*turns)


def measure(mode, policy, body, requests):
    host = HostEmulator(target="envoy")
    host.attach(NativePlugin(host, "ai_load_balancer.main") if mode == "native"
                else WasmPlugin(host, WASM))
    host.set_property(["xds", "cluster_name"], b"outbound|8000||vllm")
    assert host.start_plugin(plugin_config(policy, debugHeader=False))
    for _ in range(20):  # warm up
        finish(host, send(host, body)[0])
    started = time.perf_counter()
    for i in range(requests):
        finish(host, send(host, body)[0])
    per_request = (time.perf_counter() - started) / requests
    host.close()
    return per_request


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    cases = [("header", None), ("global_least_request", None),
             ("prefix_cache", body_of(1024)), ("prefix_cache", body_of(30 * 1024))]
    print(f"| policy | body | native us/request | wasm us/request |")
    print(f"|---|---:|---:|---:|")
    for policy, body in cases:
        native = measure("native", policy, body, args.requests)
        wasm = measure("wasm", policy, body, args.requests)
        size = f"{len(body) / 1024:.0f} KB" if body else "none"
        print(f"| {policy} | {size} | {native * 1e6:.0f} | {wasm * 1e6:.0f} |")


if __name__ == "__main__":
    main()
