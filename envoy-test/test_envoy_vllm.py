"""End-to-end against real vLLM: two vLLM 0.32 CPU replicas (vllm_replicas/: the
real scheduler, paged KV cache, automatic prefix caching and /metrics, serving a
tiny random Llama) behind a real Envoy 1.40 with the built plugin.

The replicas take ~30 s to start and ~2 GB of memory each; scripts/test.sh
installs them (vllm_replicas/setup.sh). Run by hand without that install, these
tests are skipped with the command to run.
"""

import http.client
import json
import os
import time
from contextlib import contextmanager

import pytest

import envoy_harness as harness
from sim import client
from vllm_replicas import start as vllm_start

pytestmark = pytest.mark.skipif(
    not os.path.exists(os.path.join(vllm_start.DEFAULT_VENV, ".ready")),
    reason="real vLLM not installed (vllm_replicas/setup.sh did not finish: scripts/test.sh "
           "runs it and says why when it cannot)")

MODEL = "tiny"
HITS = "vllm:prefix_cache_hits_total"
QUERIES = "vllm:prefix_cache_queries_total"
KV_USAGE = "vllm:kv_cache_usage_perc"
RUNNING = "vllm:num_requests_running"


@pytest.fixture(scope="module")
def vllm():
    with vllm_start.VllmReplicas.start(2) as replicas:
        yield replicas


def plugin_envoy(module_envoys, endpoints, wasm, policy, **fields):
    plugin_config = harness.plugin_config(policy, endpoints, debugHeader=True, **fields)
    config = harness.EnvoyConfig.simple(endpoints, wasm_path=wasm,
                                        plugin_config=plugin_config, concurrency=2)
    envoy = module_envoys(config)
    envoy.wait_for_log(f"configured, lb_policy={policy}", count=3)
    return f"127.0.0.1:{envoy.port}"


def counter(endpoints, name):
    return sum(client.metric_value(client.metrics(e), name) for e in endpoints)


def chat(gateway, messages, max_tokens=16):
    """One streamed chat through the gateway: (answer text, usage, decision)."""
    r = client.chat_stream(gateway, MODEL, messages, max_tokens=max_tokens, timeout=60)
    assert r["status"] == 200, r
    assert r["finish_reason"] and r["usage"]["completion_tokens"] >= 1, (r, r["headers"])
    return r["text"], r["usage"], harness.decision(r["headers"])


def test_prefix_cache_keeps_each_conversation_on_its_kv_cache(vllm, module_envoys,
                                                              production_wasm):
    gateway = plugin_envoy(module_envoys, vllm.endpoints, production_wasm, "prefix_cache")
    hits, queries = counter(vllm.endpoints, HITS), counter(vllm.endpoints, QUERIES)
    users = {u: [{"role": "system", "content": "You answer briefly."},
                 {"role": "user", "content": client.words(700, seed=f"user-{u}-{time.time()}")}]
             for u in range(4)}
    routes = {u: [] for u in users}
    later_prompt_tokens = 0
    for turn in range(3):
        for u, messages in users.items():
            text, usage, decision = chat(gateway, messages)
            routes[u].append(decision)
            if turn:
                later_prompt_tokens += usage["prompt_tokens"]
            messages += [{"role": "assistant", "content": text},
                         {"role": "user", "content": client.words(60, seed=f"{u}-{turn}")}]
    seen = {u: [(d["address"], d["reason"], d["matched_blocks"]) for d in decisions]
            for u, decisions in routes.items()}
    for _u, decisions in routes.items():
        assert all(d["address"] in vllm.endpoints for d in decisions), seen
        assert {d["address"] for d in decisions} == {decisions[0]["address"]}, seen
        assert [d["reason"] for d in decisions[1:]] == ["prefix_match", "prefix_match"], seen
    # The replicas' own counters: later turns found most of their prompt cached
    # (vLLM caches whole 128-token blocks; the first turns find nothing).
    hit_tokens = counter(vllm.endpoints, HITS) - hits
    assert hit_tokens >= 0.6 * later_prompt_tokens, (hit_tokens, later_prompt_tokens)
    assert counter(vllm.endpoints, QUERIES) - queries > later_prompt_tokens


@contextmanager
def long_generations(endpoint, count, prompt_words=300, max_tokens=3500):
    """`count` requests generating for a long time on one replica (tens of
    seconds on any CPU this runs on), sent directly (not through the gateway)
    and not streamed, so that the replica's API server has little to do
    meanwhile; closing their connections aborts them."""
    connections = []
    try:
        for i in range(count):
            body = {"model": MODEL, "max_tokens": max_tokens, "ignore_eos": True,
                    "messages": [{"role": "user",
                                  "content": client.words(prompt_words, seed=f"busy-{i}")}]}
            conn = http.client.HTTPConnection(*client.split(endpoint), timeout=60)
            conn.request("POST", "/v1/chat/completions", json.dumps(body).encode(),
                         {"content-type": "application/json"})
            connections.append(conn)
        deadline = time.monotonic() + 30
        while client.metric_value(client.metrics(endpoint), RUNNING) < count:
            assert time.monotonic() < deadline, "the long generations did not start"
            time.sleep(0.1)
        yield
    finally:
        for conn in connections:
            conn.close()


def load(endpoints):
    """{endpoint: (running, KV-cache usage)} as the replicas report them now."""
    found = {}
    for e in endpoints:
        text = client.metrics(e)
        found[e] = (client.metric_value(text, RUNNING), client.metric_value(text, KV_USAGE))
    return found


def test_least_busy_routes_by_the_metrics_vllm_serves(vllm, module_envoys, production_wasm):
    gateway = plugin_envoy(module_envoys, vllm.endpoints, production_wasm, "least_busy",
                           metricsCluster="backend", scrapeInterval=200, scrapeTimeout=3000)
    busy, idle = vllm.endpoints
    seen = []
    with long_generations(busy, 2):
        before = load(vllm.endpoints)
        assert before[busy][1] > before[idle][1], before
        time.sleep(1.5)  # a few scrapes
        for i in range(8):
            decision = chat(gateway, [{"role": "user", "content": f"question {i}"}],
                            max_tokens=4)[2]
            seen.append((decision["address"], decision["reason"], load(vllm.endpoints)))
        # The premise: the busy replica was busy through every decision.
        assert load(vllm.endpoints)[busy][0] == 2, ("the long generations ended early", seen)
    assert [address for address, _, _ in seen] == [idle] * 8, (busy, idle, seen)
    assert {reason for _, reason, _ in seen} == {"least_busy_default"}, seen
