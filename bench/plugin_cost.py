"""Python-side cost of one request, per policy and body size, in the test host.

    .venv/bin/python bench/plugin_cost.py [--requests 300] [--wasm PATH]

Runs the built envoy-target module (dist/) in wasmtime, and the same plugin
natively in CPython, through a whole request lifecycle (context create, request
headers, body, response headers, done/log/delete) with state embedded in
shared data; then what each response-body chunk of a streamed answer costs.
wasmtime is not V8, so absolute numbers differ from Envoy's;
bench/routing_quality.py measures Envoy's CPU per request.
"""

import argparse
import hashlib
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "plugin")]

from ai_load_balancer import replica_metrics  # noqa: E402
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


def least_busy_config(replicas):
    endpoints = [f"10.1.{i // 250}.{i % 250 + 1}:8000" for i in range(replicas)]
    return json.dumps({"lb_policy": "least_busy", "lb_config": {
        "endpoints": endpoints, "metricsCluster": "outbound|8000||vllm",
        "metricsStaleness": 3_600_000}}).encode(), endpoints


def scraped_table(endpoints):
    """The shared metrics table a scrape round would have written."""
    now_ms = time.time_ns() // 1_000_000
    table = {}
    for i, address in enumerate(endpoints):
        metrics = replica_metrics.ReplicaMetrics(float(i % 7), 3.0, 0.1 + (i % 5) / 10,
                                                 frozenset({"sql-lora"}) if i % 3 else
                                                 frozenset(), frozenset(), 4, now_ms)
        table[address] = [replica_metrics.to_json(metrics), 0, 0]
    return json.dumps(table)


def new_host(mode, wasm):
    host = HostEmulator(target="envoy")
    host.attach(NativePlugin(host, "ai_load_balancer.main") if mode == "native"
                else WasmPlugin(host, wasm))
    return host


def measure(mode, policy, body, requests, wasm=WASM):
    host = new_host(mode, wasm)
    host.set_property(["xds", "cluster_name"], b"outbound|8000||vllm")
    if policy.startswith("least_busy"):
        config, endpoints = least_busy_config(int(policy.split(":")[1]))
        config_id = hashlib.blake2b(config, digest_size=6).hexdigest()
        host.shared.set("", f"ailb:metrics:{config_id}".encode(),
                        scraped_table(endpoints).encode(), 0)
    else:
        config = plugin_config(policy, debugHeader=False)
    assert host.start_plugin(config), host.logs_text()
    for _ in range(20):  # warm up
        finish(host, send(host, body)[0])
    started = time.perf_counter()
    for _ in range(requests):
        finish(host, send(host, body)[0])
    per_request = (time.perf_counter() - started) / requests
    host.close()
    return per_request


def measure_chunks(mode, chunks, wasm=WASM):
    """Seconds per response-body chunk of a streamed answer (round_robin)."""
    host = new_host(mode, wasm)
    assert host.start_plugin(plugin_config("round_robin", debugHeader=False)), host.logs_text()
    cid = send(host, body_of(1024))[0]
    host.call_on_response_headers(cid, [(":status", "200")], end_of_stream=False)
    chunk = b'data: {"choices": [{"delta": {"content": " token"}}]}\n\n'
    started = time.perf_counter()
    for _ in range(chunks):
        host.call_on_response_body(cid, chunk, end_of_stream=False)
    per_chunk = (time.perf_counter() - started) / chunks
    host.call_on_response_body(cid, b"data: [DONE]\n\n", end_of_stream=True)
    host.complete_http_context(cid)
    host.close()
    return per_chunk


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--chunks", type=int, default=5000)
    parser.add_argument("--wasm", default=WASM, help="an envoy-target module (default: dist/)")
    args = parser.parse_args()
    cases = [("header", None), ("global_least_request", None),
             ("prefix_cache", body_of(1024)), ("prefix_cache", body_of(30 * 1024)),
             ("least_busy:8", body_of(1024)), ("least_busy:128", body_of(1024))]
    print("| policy | body | native us/request | wasm us/request |")
    print("|---|---:|---:|---:|")
    for policy, body in cases:
        native = measure("native", policy, body, args.requests)
        wasm = measure("wasm", policy, body, args.requests, args.wasm)
        size = f"{len(body) / 1024:.0f} KB" if body else "none"
        print(f"| {policy} | {size} | {native * 1e6:.0f} | {wasm * 1e6:.0f} |")
    native = measure_chunks("native", args.chunks)
    wasm = measure_chunks("wasm", args.chunks, args.wasm)
    print(f"| streamed answer, per response-body chunk | 56 B | {native * 1e6:.1f} "
          f"| {wasm * 1e6:.1f} |")


if __name__ == "__main__":
    main()
