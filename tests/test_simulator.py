"""The simulated vLLM fleet (sim/): API shape, metrics, prefix reuse, queueing, scale.

Fast (a few seconds): replicas run in-process on a background event loop, with
profiles shrunk or sped up where a test needs load.
"""

import json
import os
import subprocess
import sys
import threading
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from sim import client, engine as engine_mod, profiles, tokenizer  # noqa: E402
from sim.fleet import Fleet  # noqa: E402

SAMPLE = "/work/shared/samples/vllm-0.32-cpu-metrics-under-load.txt"
SAMPLE_FALLBACK = os.path.join(ROOT, "tests", "fixtures", "vllm-0.32-cpu-metrics-under-load.txt")

REAL_NAMES = [
    "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
    "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
    "vllm:lora_requests_info", "vllm:cache_config_info",
    "vllm:time_to_first_token_seconds_bucket", "vllm:time_to_first_token_seconds_count",
    "vllm:time_to_first_token_seconds_sum", "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
]


def parse(text):
    """{name: [(labels, value)]} with the plugin's parser when there is one."""
    try:
        sys.path.insert(0, os.path.join(ROOT, "plugin"))
        from proxywasm import prometheus
        parsed = prometheus.parse(text)
        if isinstance(parsed, dict):
            return parsed
    except ImportError:
        pass
    finally:
        sys.path.remove(os.path.join(ROOT, "plugin"))
    out = {}
    for name, labels, value in client.parse_metrics(text):
        out.setdefault(name, []).append((labels, value))
    return out


def scrape(address):
    status, _, body = client.request(address, "GET", "/metrics")
    assert status == 200
    return parse(body.decode())


def value(parsed, name, **labels):
    return sum(v for sample_labels, v in parsed.get(name, [])
               if all(sample_labels.get(k) == str(x) for k, x in labels.items()))


@pytest.fixture(scope="module")
def fleet():
    with Fleet.start(2, "vllm-cpu-tiny", lora_adapters=("adapterA", "adapterB"),
                     max_loras=1) as f:
        yield f


def chat(messages_text):
    return [{"role": "system", "content": "You are a simulated assistant."},
            {"role": "user", "content": messages_text}]


# --- the OpenAI API -----------------------------------------------------------------

def test_chat_completion_not_streamed(fleet):
    status, headers, body = client.post_json(
        fleet.addresses[0], "/v1/chat/completions",
        {"model": "tiny", "messages": chat("hello there"), "max_tokens": 5})
    assert status == 200
    assert headers["x-replica"] == "r0"
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["completion_tokens"] == 5
    assert usage["prompt_tokens"] == len(tokenizer.encode(
        tokenizer.render_chat(chat("hello there"))))
    assert usage["total_tokens"] == usage["prompt_tokens"] + 5
    # the generated text tokenizes back to the generated tokens
    assert tokenizer.count(body["choices"][0]["message"]["content"]) == 5


def test_chat_completion_streamed_with_usage(fleet):
    result = client.chat_stream(fleet.addresses[1], "tiny", chat("stream please"),
                                max_tokens=6)
    assert result["status"] == 200
    assert result["replica"] == "r1"
    assert result["finish_reason"] == "length"
    assert result["usage"]["completion_tokens"] == 6
    assert tokenizer.count(result["text"]) == 6
    assert result["ttft_s"] is not None and len(result["itl_s"]) == 5


def test_completions_stream_and_not(fleet):
    address = fleet.addresses[0]
    status, headers, body = client.post_json(
        address, "/v1/completions", {"model": "tiny", "prompt": "Once upon a time",
                                     "max_tokens": 4})
    assert status == 200 and headers["x-replica"] == "r0"
    assert body["object"] == "text_completion"
    assert body["usage"]["completion_tokens"] == 4
    assert body["usage"]["prompt_tokens"] == 1 + tokenizer.count("Once upon a time")

    status, headers, raw = client.request(
        address, "POST", "/v1/completions",
        {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 3, "stream": True})
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    events = [line[len("data: "):] for line in raw.decode().split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) == 3  # no usage chunk without stream_options.include_usage
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_models_health_and_errors(fleet):
    address = fleet.addresses[0]
    status, headers, body = client.request(address, "GET", "/health")
    assert status == 200 and headers["x-replica"] == "r0"
    assert client.models(address) == ["tiny", "adapterA", "adapterB"]
    status, _, body = client.post_json(address, "/v1/completions",
                                       {"model": "nope", "prompt": "x", "max_tokens": 1})
    assert status == 404 and body["error"]["type"] == "NotFoundError"
    status, _, body = client.post_json(address, "/v1/completions",
                                       {"model": "tiny", "prompt": "x", "max_tokens": 10 ** 6})
    assert status == 400 and body["error"]["param"] == "max_tokens"


# --- /metrics -----------------------------------------------------------------------

def test_metrics_have_vllm_names_and_label_sets(fleet):
    address = fleet.addresses[1]
    client.post_json(address, "/v1/completions",
                     {"model": "adapterA", "prompt": "lora request", "max_tokens": 2})
    parsed = scrape(address)
    for name in REAL_NAMES:
        assert name in parsed, name
    base = {"engine": "0", "model_name": "tiny"}
    assert parsed["vllm:num_requests_running"][0][0] == base
    config = parsed["vllm:cache_config_info"][0][0]
    assert config["block_size"] == "128" and config["num_gpu_blocks"] == "256"
    lora = parsed["vllm:lora_requests_info"]
    assert set(lora[0][0]) == {"running_lora_adapters", "waiting_lora_adapters", "max_lora"}
    assert any(info["running_lora_adapters"] == "adapterA" and info["max_lora"] == "1"
               for info, _ in lora)
    assert all(v > 1e9 for _, v in lora)  # a wall-clock timestamp, as vLLM sets it
    assert value(parsed, "vllm:time_to_first_token_seconds_count") >= 1

    # Every sample the simulator exposes exists in real vLLM 0.32 with the same label names.
    sample_path = SAMPLE if os.path.exists(SAMPLE) else SAMPLE_FALLBACK
    if not os.path.exists(sample_path):
        pytest.skip("no vLLM metrics sample on this machine")
    with open(sample_path) as f:
        real = parse(f.read())
    for name, samples in parsed.items():
        assert name in real, name
        real_label_sets = {frozenset(sample_labels) for sample_labels, _ in real[name]}
        for labels, _ in samples:
            assert frozenset(labels) in real_label_sets, (name, labels)


# --- the engine model ---------------------------------------------------------------

def test_prefix_reuse_lowers_ttft_and_counts_hits(fleet):
    address = fleet.addresses[0]
    long_prompt = client.words(1600, seed=42)  # ~2000 tokens
    before = scrape(address)
    cold = client.chat_stream(address, "tiny", chat(long_prompt), max_tokens=2)
    mid = scrape(address)
    warm = client.chat_stream(address, "tiny", chat(long_prompt), max_tokens=2)
    after = scrape(address)
    prompt_tokens = cold["usage"]["prompt_tokens"]
    assert prompt_tokens > 1500
    assert warm["ttft_s"] < cold["ttft_s"] / 3, (cold["ttft_s"], warm["ttft_s"])
    hits = "vllm:prefix_cache_hits_total"
    assert value(mid, hits) == value(before, hits)
    # every full 128-token block but the one holding the last token
    assert value(after, hits) - value(mid, hits) == (prompt_tokens - 1) // 128 * 128
    queries = "vllm:prefix_cache_queries_total"
    assert value(after, queries) - value(mid, queries) == prompt_tokens


def test_waiting_grows_when_kv_blocks_run_out():
    # 24 blocks of 128 tokens; each request needs 9 (1000 + 100 tokens): 2 fit at once.
    with Fleet.start(1, "vllm-cpu-tiny", num_blocks=24, max_model_len=3072,
                     time_scale=0.25) as fleet:
        address = fleet.addresses[0]
        results = []
        threads = [threading.Thread(target=lambda i=i: results.append(client.chat_stream(
            address, "tiny", chat(client.words(800, seed=i)), max_tokens=100)))
            for i in range(6)]
        for t in threads:
            t.start()
        seen_waiting, seen_running, seen_usage = 0, 0, 0
        deadline = time.monotonic() + 10
        while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
            m = scrape(address)
            seen_waiting = max(seen_waiting, value(m, "vllm:num_requests_waiting"))
            seen_running = max(seen_running, value(m, "vllm:num_requests_running"))
            seen_usage = max(seen_usage, value(m, "vllm:kv_cache_usage_perc"))
            time.sleep(0.01)
        for t in threads:
            t.join(10)
        assert seen_waiting > 0
        assert seen_running < 6  # never all of them at once: the rest queue
        assert seen_usage > 0.7
        assert len(results) == 6 and all(r["usage"]["completion_tokens"] == 100
                                         for r in results)
        m = scrape(address)
        assert value(m, "vllm:num_requests_waiting") == 0
        assert value(m, "vllm:request_success_total", finished_reason="length") == 6


def test_engine_lru_eviction_preemption_and_lora_deferral():
    p = profiles.get("vllm-cpu-tiny", num_blocks=8, block_size=4, max_model_len=32,
                     max_num_batched_tokens=64, lora_adapters=("a", "b"), max_loras=1)
    e = engine_mod.Engine(p)

    def run(now=0.0, steps=200):
        for _ in range(steps):
            if not e.has_work():
                return
            e.complete(e.schedule(now), now)

    # A 9-token prompt fills 2 blocks (cached when it ends) and touches a third.
    first = engine_mod.SimRequest("1", list(range(9)), 1, 0.0)
    e.add(first)
    run()
    assert first.finish_reason == "length" and len(e.pool.cached) == 2
    again = engine_mod.SimRequest("2", list(range(9)), 1, 0.0)
    e.add(again)
    run()
    assert again.cached_tokens == 8
    # Filling the cache with other prompts evicts those blocks (LRU).
    for i in range(4):
        e.add(engine_mod.SimRequest(f"x{i}", [100 + i * 10 + k for k in range(9)], 1, 0.0))
        run()
    third = engine_mod.SimRequest("3", list(range(9)), 1, 0.0)
    e.add(third)
    run()
    assert third.cached_tokens == 0 and e.pool.evictions > 0

    # Two long decodes that together outgrow 8 blocks: one is preempted, both finish.
    a = engine_mod.SimRequest("a", [1, 2, 3], 18, 0.0)
    b = engine_mod.SimRequest("b", [4, 5, 6], 18, 0.0)
    e.add(a)
    e.add(b)
    run()
    assert a.num_output == b.num_output == 18
    assert e.stats.preemptions >= 1

    # With one LoRA slot, a request for another adapter waits (deferred).
    la = engine_mod.SimRequest("la", [7, 8, 9], 5, 0.0, lora="a")
    lb = engine_mod.SimRequest("lb", [7, 8, 9], 5, 0.0, lora="b")
    e.add(la)
    e.add(lb)
    step = e.schedule(0.0)
    assert [r.id for r, _ in step.items] == ["la"] and lb.deferred
    assert e.num_waiting_deferred() == 1
    e.complete(step, 0.0)
    run()
    assert la.num_output == lb.num_output == 5
    assert e.pool.num_free() == 8  # nothing leaked


def test_step_time_model_matches_profile():
    p = profiles.get("a100-7b")
    e = engine_mod.Engine(p)
    e.add(engine_mod.SimRequest("1", list(range(2000)), 1, 0.0))
    step = e.schedule(0.0)
    assert step.prefill_tokens == 2000
    assert e.step_seconds(step) == pytest.approx(p.prefill_seconds(2000))
    assert 0.1 < e.step_seconds(step) < 0.3  # a 2k prompt on an A100: 100-300 ms


# --- scale and the command line -----------------------------------------------------

def test_sixteen_replicas_in_one_process():
    start = time.monotonic()
    with Fleet.start(16, "a100-7b", time_scale=0.1) as fleet:
        assert len(set(fleet.addresses)) == 16
        seen = set()
        for address in fleet.addresses:
            status, headers, body = client.post_json(
                address, "/v1/chat/completions",
                {"model": "meta-llama/Llama-2-7b-hf", "messages": chat("hi"), "max_tokens": 2})
            assert status == 200
            seen.add(headers["x-replica"])
        assert seen == {f"r{i}" for i in range(16)}
    assert time.monotonic() - start < 10


def test_command_line_writes_ports_file(tmp_path):
    ports = tmp_path / "ports.json"
    proc = subprocess.Popen([sys.executable, "-m", "sim.fleet", "--replicas", "3",
                             "--profile", "a10-7b", "--ports-file", str(ports), "--stdin",
                             "--set", "num_blocks=400"],
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        info = json.loads(line)
        assert json.loads(ports.read_text())["endpoints"] == info["endpoints"]
        assert len(info["endpoints"]) == 3 and info["profile"] == "a10-7b"
        m = scrape(info["endpoints"][2])
        assert m["vllm:cache_config_info"][0][0]["num_gpu_blocks"] == "400"
    finally:
        proc.stdin.close()
        proc.wait(10)
    assert proc.returncode == 0
    assert not ports.exists()
