"""The Prometheus text reader (proxywasm.prometheus): both vLLM samples, the
format's corners, malformed input; and the same parse inside the .wasm."""

import json
import math
import os
import random
import time

import pytest

from proxywasm import prometheus

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
IDLE = "vllm-0.32-cpu-metrics-idle.txt"
UNDER_LOAD = "vllm-0.32-cpu-metrics-under-load.txt"
VLLM_NAMES = {"vllm:num_requests_waiting", "vllm:num_requests_running",
              "vllm:kv_cache_usage_perc", "vllm:lora_requests_info"}


def sample(name):
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as f:
        return f.read()


def sample_lines(text):
    return [line for line in text.split("\n") if line and not line.startswith("#")]


# --- the vLLM samples -----------------------------------------------------------------

def test_idle_sample():
    found = prometheus.parse(sample(IDLE), VLLM_NAMES)
    labels = {"engine": "0", "model_name": "tiny"}
    assert found == {
        "vllm:num_requests_waiting": [(labels, 0.0)],
        "vllm:num_requests_running": [(labels, 0.0)],
        "vllm:kv_cache_usage_perc": [(labels, 0.0)],
    }  # idle: no vllm:lora_requests_info sample at all


def test_under_load_sample():
    found = prometheus.parse(sample(UNDER_LOAD), VLLM_NAMES)
    labels = {"engine": "0", "model_name": "tiny"}
    assert found["vllm:num_requests_waiting"] == [(labels, 3.0)]
    assert found["vllm:num_requests_running"] == [(labels, 12.0)]
    assert found["vllm:kv_cache_usage_perc"] == [(labels, 0.9448818897637795)]
    assert found["vllm:lora_requests_info"] == [
        ({"max_lora": "2", "running_lora_adapters": "adapterA",
          "waiting_lora_adapters": "adapterA"}, 1.795247653013981e+09),
        ({"max_lora": "2", "running_lora_adapters": "adapterA,adapterB",
          "waiting_lora_adapters": "adapterA,adapterB"}, 1.7952476537707763e+09),
        ({"max_lora": "2", "running_lora_adapters": "", "waiting_lora_adapters": ""},
         1.7952476400376637e+09),
    ]


@pytest.mark.parametrize("name", [IDLE, UNDER_LOAD])
def test_whole_sample_parses_and_wanted_agrees(name):
    text = sample(name)
    found = prometheus.parse(text)
    # Every sample line of vLLM's output is well-formed.
    assert sum(len(s) for s in found.values()) == len(sample_lines(text))
    cache_info = found["vllm:cache_config_info"][0][0]
    assert cache_info["block_size"] == "128" and cache_info["kv_cache_dtype_skip_layers"] == "[]"
    # The wanted path (line starts found with str.find) gives the same samples.
    for metric, samples in found.items():
        assert prometheus.parse(text, {metric}) == {metric: samples}, metric
    assert prometheus.parse(text, set(found)) == found


def test_a_longer_name_is_not_the_wanted_one():
    text = sample(UNDER_LOAD)
    waiting = prometheus.parse(text, {"vllm:num_requests_waiting"})["vllm:num_requests_waiting"]
    assert len(waiting) == 1  # not vllm:num_requests_waiting_by_reason
    by_reason = prometheus.parse(text, {"vllm:num_requests_waiting_by_reason"})
    assert [s[0]["reason"] for s in by_reason["vllm:num_requests_waiting_by_reason"]] == [
        "capacity", "deferred"]
    assert prometheus.parse(text, {"vllm:num_requests", "vllm", ""}) == {}


# --- the format -------------------------------------------------------------------------

def test_label_escapes():
    text = ('m{path="C:\\\\dir\\\\",msg="say \\"hi\\"\\nbye",empty="",odd="a\\\\\\"b"} 1\n'
            'm{q="\\\\"} 2\n')
    for wanted in (None, {"m"}):
        assert prometheus.parse(text, wanted) == {"m": [
            ({"path": "C:\\dir\\", "msg": 'say "hi"\nbye', "empty": "", "odd": 'a\\"b'}, 1.0),
            ({"q": "\\"}, 2.0)]}


def test_label_set_spacing_and_trailing_comma():
    text = 'm{ a = "1" , b="x y}",} 5\nm{} 6\nm 7\n'
    assert prometheus.parse(text) == {"m": [({"a": "1", "b": "x y}"}, 5.0), ({}, 6.0),
                                            ({}, 7.0)]}


def test_special_values_timestamps_tabs_and_crlf():
    text = ("a NaN\r\nb +Inf\r\nc -Inf 1700000000000\r\nd\t1.5e-3\t42\r\n"
            "e{x=\"1\"}\t-0.25\ne 1e+09\n# EOF")
    found = prometheus.parse(text)
    assert math.isnan(found["a"][0][1])
    assert found["b"] == [({}, math.inf)] and found["c"] == [({}, -math.inf)]
    assert found["d"] == [({}, 0.0015)]
    assert found["e"] == [({"x": "1"}, -0.25), ({}, 1e9)]
    assert prometheus.parse(text, {"a", "c", "e"})["e"] == found["e"]


def test_comments_and_blank_lines_are_skipped():
    text = ("# HELP m the m metric\n# TYPE m gauge\n\n#m 99\n  \nm 1\n"
            "# HELP other mentions m 5 here\n")
    assert prometheus.parse(text) == {"m": [({}, 1.0)]}
    assert prometheus.parse(text, {"m"}) == {"m": [({}, 1.0)]}


def test_first_and_last_lines_without_newlines():
    assert prometheus.parse("m 1", {"m"}) == {"m": [({}, 1.0)]}
    assert prometheus.parse("m 1\nn 2", {"n", "m"}) == {"m": [({}, 1.0)], "n": [({}, 2.0)]}


def test_malformed_lines_are_skipped():
    bad = [
        "m", "m ", "m{a=\"1\"}", "m abc", "m 1 2 3", "m 1_000", "m{a=\"1} 2",
        "m{a=1} 2", "m{a=\"1\"b=\"2\"} 3", "m{=\"1\"} 2", "m{a:b=\"1\"} 2", "m{a=\"1\" 2",
        "9m 1", "m-x 1", "{a=\"1\"} 2", "m 1 notatime", "m{a=\"1\",,", "\x00 1", "m\u00e9 1",
    ]
    text = "\n".join(["m{ok=\"first\"} 1"] + bad + ["m{ok=\"last\"} 2"])
    expected = {"m": [({"ok": "first"}, 1.0), ({"ok": "last"}, 2.0)]}
    assert prometheus.parse(text) == expected
    assert prometheus.parse(text, {"m"}) == expected


def test_bytes_and_odd_inputs():
    assert prometheus.parse(b"m 1\n", {"m"}) == {"m": [({}, 1.0)]}
    assert prometheus.parse(b"m{a=\"\xff\"} 1\n") == {"m": [({"a": "\ufffd"}, 1.0)]}
    assert prometheus.parse(None) == {} and prometheus.parse(42, {"m"}) == {}
    assert prometheus.parse("", {"m"}) == {} and prometheus.parse("\n\n\n") == {}
    assert prometheus.parse("m 1", {None, 3, "m"}) == {"m": [({}, 1.0)]}


def test_never_raises_on_mangled_text():
    text = sample(UNDER_LOAD)
    rng = random.Random(7)
    alphabet = '{}="\\ \n#,\tx1.e+'
    for _ in range(300):
        chars = list(text[rng.randrange(len(text)):][:rng.randrange(1, 400)])
        for _ in range(rng.randrange(1, 20)):
            chars[rng.randrange(len(chars))] = rng.choice(alphabet)
        mangled = "".join(chars)
        prometheus.parse(mangled)
        prometheus.parse(mangled, VLLM_NAMES)


# --- in the .wasm ---------------------------------------------------------------------------

def parse_in_plugin(host, text, wanted=None, repeat=1):
    """(parse result as JSON text, seconds the request body callback took)."""
    cid = host.init_http_context()
    headers = [(":method", "POST"), (":path", "/"), (":authority", "t"),
               ("x-scraper-op", "prometheus"), ("x-repeat", str(repeat))]
    if wanted is not None:
        headers.append(("x-wanted", ",".join(sorted(wanted))))
    host.call_on_request_headers(cid, headers, False)
    started = time.perf_counter()
    host.call_on_request_body(cid, text.encode(), True)
    elapsed = time.perf_counter() - started
    reply = host.get_sent_local_response(cid)
    assert reply is not None and reply.status_code == 200, host.logs_text()
    return reply.body.decode(), elapsed


def native_json(found):
    return json.dumps({n: [[labels, v] for labels, v in s] for n, s in found.items()},
                      sort_keys=True)


@pytest.mark.parametrize("wanted", [None, VLLM_NAMES], ids=["all", "wanted"])
def test_plugin_parse_matches_native(make_host, wanted):
    host = make_host(entry="scraper_plugin", configuration=b"{}")
    for name in (IDLE, UNDER_LOAD):
        text = sample(name)
        body, _ = parse_in_plugin(host, text, wanted)
        assert body == native_json(prometheus.parse(text, wanted))
    text = 'a NaN\nb{x="q\\"\\n"} -Inf\nbroken{ 1\n'
    body, _ = parse_in_plugin(host, text)
    assert body == native_json(prometheus.parse(text))


def test_parse_cost_of_the_vllm_sample(make_host):
    """Parse time of the ~52 KB under-load sample (the wanted vLLM names, and
    every line), as the host sees the callback: printed for the record."""
    host = make_host(entry="scraper_plugin", configuration=b"{}")
    text = sample(UNDER_LOAD)
    parse_in_plugin(host, text, VLLM_NAMES)  # warm up
    repeat = 50
    _, base = parse_in_plugin(host, text, VLLM_NAMES, repeat=1)
    _, wanted = parse_in_plugin(host, text, VLLM_NAMES, repeat=repeat + 1)
    _, every = parse_in_plugin(host, text, None, repeat=11)
    _, every_base = parse_in_plugin(host, text, None, repeat=1)
    per_wanted_us = (wanted - base) / repeat * 1e6
    per_all_us = (every - every_base) / 10 * 1e6
    print(f"\n[{make_host.mode}] prometheus.parse of {len(text)} bytes: "
          f"{per_wanted_us:.0f} us for the 4 vLLM names, {per_all_us:.0f} us for all "
          f"{len(sample_lines(text))} samples")
    assert per_wanted_us < 20_000
