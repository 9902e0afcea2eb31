"""Replica metrics (vLLM, legacy vLLM, SGLang, LoRA) and the metrics scraper:
real loopback replicas scraped through the test host, natively and in wasm,
driven by tests/plugins/scraper_plugin.py."""

import json
import socket
import threading
import time

import pytest

from ai_load_balancer import replica_metrics
from ai_load_balancer.replica_metrics import ReplicaMetrics
from tests.test_prometheus import IDLE, UNDER_LOAD, sample

CLUSTER = "outbound|8000||vllm.default.svc.cluster.local"
OVERRIDE = "x-gateway-destination-endpoint"
START_MS = 1_800_000_000_000


def vllm_text(waiting, running, usage, model="tiny"):
    return (f"# HELP vllm:num_requests_waiting Number of requests waiting.\n"
            f"# TYPE vllm:num_requests_waiting gauge\n"
            f'vllm:num_requests_waiting{{engine="0",model_name="{model}"}} {waiting}\n'
            f'vllm:num_requests_running{{engine="0",model_name="{model}"}} {running}\n'
            f'vllm:kv_cache_usage_perc{{engine="0",model_name="{model}"}} {usage}\n')


# --- replica_metrics -------------------------------------------------------------------------

def test_vllm_idle_sample():
    m = replica_metrics.from_text(sample(IDLE), 1234)
    # Its KV cache: num_gpu_blocks="16384" x block_size="128" tokens.
    assert m == ReplicaMetrics(0.0, 0.0, 0.0, frozenset(), frozenset(), 0, 1234,
                               cache_tokens=16384 * 128)


def test_vllm_under_load_sample():
    m = replica_metrics.from_text(sample(UNDER_LOAD).encode(), 99)
    assert (m.waiting, m.running, m.kv_cache_usage) == (3.0, 12.0, 0.9448818897637795)
    assert m.cache_tokens == 128 * 128  # --num-gpu-blocks-override 128
    # Three lora_requests_info samples: the newest (largest value) wins.
    assert m.active_adapters == m.waiting_adapters == frozenset({"adapterA", "adapterB"})
    assert m.max_adapters == 2 and m.scraped_at_ms == 99 and m.extra == ()


def test_legacy_gpu_cache_usage():
    legacy = ('vllm:num_requests_waiting{model_name="m"} 2\n'
              'vllm:num_requests_running{model_name="m"} 5\n'
              'vllm:gpu_cache_usage_perc{model_name="m"} 0.5\n')
    m = replica_metrics.from_text(legacy, 0)
    assert (m.waiting, m.running, m.kv_cache_usage) == (2.0, 5.0, 0.5)
    both = legacy + 'vllm:kv_cache_usage_perc{model_name="m"} 0.25\n'
    assert replica_metrics.from_text(both, 0).kv_cache_usage == 0.25  # the current name wins


def test_sglang():
    text = ("# TYPE sglang:num_queue_reqs gauge\n"
            'sglang:num_queue_reqs{model_name="qwen"} 7\n'
            'sglang:num_running_reqs{model_name="qwen"} 30\n'
            'sglang:token_usage{model_name="qwen"} 0.81\n'
            'sglang:gen_throughput{model_name="qwen"} 912.5\n')
    m = replica_metrics.from_text(text, 5, extra_names=("sglang:gen_throughput",))
    assert (m.waiting, m.running, m.kv_cache_usage) == (7.0, 30.0, 0.81)
    assert m.active_adapters == frozenset() and m.max_adapters == 0
    assert m.extra == (("sglang:gen_throughput", 912.5),)


def test_label_sets_are_summed_usage_is_the_max_and_bad_values_ignored():
    text = (vllm_text(2, 3, 0.5, "a") + vllm_text(1, 4, 0.75, "b")
            + 'vllm:num_requests_waiting{engine="1",model_name="a"} NaN\n'
            + 'vllm:num_requests_running{engine="1",model_name="a"} +Inf\n'
            + 'vllm:kv_cache_usage_perc{engine="1",model_name="a"} NaN\n')
    m = replica_metrics.from_text(text, 0)
    assert (m.waiting, m.running, m.kv_cache_usage) == (3.0, 7.0, 0.75)
    assert replica_metrics.from_text(vllm_text(0, 0, 1.7), 0).kv_cache_usage == 1.0
    assert replica_metrics.from_text(vllm_text(0, 0, -1), 0).kv_cache_usage == 0.0


def test_lora_info():
    text = ('vllm:lora_requests_info{max_lora="4",running_lora_adapters="x, y",'
            'waiting_lora_adapters=""} 20\n'
            'vllm:lora_requests_info{max_lora="4",running_lora_adapters="old",'
            'waiting_lora_adapters="old"} 10\n')
    m = replica_metrics.from_text(text, 0)  # LoRA info alone is enough to know something
    assert m.active_adapters == frozenset({"x", "y"}) and m.waiting_adapters == frozenset()
    assert (m.max_adapters, m.waiting, m.running, m.kv_cache_usage) == (4, 0.0, 0.0, 0.0)
    odd = 'vllm:lora_requests_info{max_lora="many",running_lora_adapters="z"} 1\n'
    assert replica_metrics.from_text(odd, 0).max_adapters == 0


def test_extra_names_are_summed_in_the_order_asked():
    text = sample(UNDER_LOAD)
    m = replica_metrics.from_text(text, 0, extra_names=(
        "vllm:num_requests_waiting_by_reason", "absent:metric", "vllm:num_preemptions_total",
        "vllm:num_requests_waiting_by_reason"))
    names = [n for n, _ in m.extra]
    assert names == ["vllm:num_requests_waiting_by_reason", "vllm:num_preemptions_total"]
    assert m.extra[0][1] == 3.0  # capacity 3 + deferred 0


@pytest.mark.parametrize("text", ["", "hello world", "# HELP vllm:num_requests_waiting x\n",
                                  "process_cpu_seconds_total 4.5\n", b"\xff\xfe", None, 17,
                                  "vllm:num_requests_waiting{ 3\n"])
def test_no_known_metrics_is_none(text):
    assert replica_metrics.from_text(text, 0) is None


def test_json_round_trip():
    m = replica_metrics.from_text(sample(UNDER_LOAD), 123, ("vllm:num_preemptions_total",))
    encoded = replica_metrics.to_json(m)
    assert encoded[:3] == [3, 12, 0.9448818897637795]  # whole floats as ints: shorter
    assert replica_metrics.from_json(encoded) == m
    assert replica_metrics.from_json(json.dumps(encoded)) == m
    idle = replica_metrics.from_text(sample(IDLE), 5)
    assert replica_metrics.from_json(json.loads(json.dumps(replica_metrics.to_json(idle)))) == idle
    for bad in (None, [], [1, 2], "not json", {"a": 1}, [1, 2, 3, "", "", "x", 1, []]):
        assert replica_metrics.from_json(bad) is None


# --- the scraper, through the test host ----------------------------------------------------

class Clock:
    """A settable time for one or more hosts (host.now_ns)."""

    def __init__(self, ms=START_MS):
        self.ms = ms

    def __call__(self):
        return self.ms * 1_000_000

    def advance(self, ms):
        self.ms += ms


def address(server):
    return f"{server.address[0]}:{server.address[1]}"


def replicas(make_http_server, *texts):
    """One loopback replica per text, serving it at /metrics."""
    servers = []
    for i, text in enumerate(texts):
        server = make_http_server(f"replica{i}")
        server.route("/metrics", body=text.encode(),
                     headers=[("content-type", "text/plain; version=0.0.4")])
        servers.append(server)
    return servers


def start(make_host, endpoints, targets=None, clock=None, shared=None, target="envoy",
          **config):
    """A scraper plugin scraping `endpoints`; the cluster holds `targets`
    (default: the endpoints)."""
    clusters = {CLUSTER: list(targets if targets is not None else endpoints) or ["127.0.0.1:1"]}
    host = make_host(entry="scraper_plugin", target=target, clusters=clusters, shared=shared)
    host.now_ns = clock or Clock()
    config = {"cluster": CLUSTER, "endpoints": list(endpoints), "interval_ms": 1000,
              "timeout_ms": 1000, "staleness_ms": 5000, **config}
    assert host.start_plugin(json.dumps(config)), host.logs_text()
    return host


def op(host, name, *headers):
    cid = host.init_http_context()
    host.call_on_request_headers(cid, [(":method", "GET"), (":path", "/"), (":authority", "t"),
                                       ("x-scraper-op", name), *headers], True)
    reply = host.get_sent_local_response(cid)
    assert reply is not None and reply.status_code == 200, host.logs_text()
    return json.loads(reply.body)


def snapshot(host):
    return {a: replica_metrics.from_json(m) for a, m in op(host, "snapshot").items()}


def status(host):
    return op(host, "status")


def scrape(host):
    """One tick and every callout it started, answered for real."""
    host.tick()
    return host.run_callouts()


def test_fresh_metrics_appear_and_update(make_host, make_http_server):
    servers = replicas(make_http_server, sample(IDLE), sample(UNDER_LOAD))
    endpoints = [address(s) for s in servers]
    clock = Clock()
    host = start(make_host, endpoints, clock=clock)
    assert snapshot(host) == {}
    assert scrape(host) == 2
    for server, endpoint in zip(servers, endpoints):
        (method, path, headers, _), = server.requests
        assert (method, path) == ("GET", "/metrics")
        assert headers[OVERRIDE] == endpoint and headers["host"] == endpoint
    seen = snapshot(host)
    assert (seen[endpoints[0]].waiting, seen[endpoints[0]].running) == (0.0, 0.0)
    assert (seen[endpoints[1]].waiting, seen[endpoints[1]].running) == (3.0, 12.0)
    assert seen[endpoints[1]].max_adapters == 2
    assert seen[endpoints[0]].scraped_at_ms == START_MS

    servers[0].route("/metrics", body=vllm_text(9, 4, 0.5).encode())
    clock.advance(400)
    assert scrape(host) == 0  # not due before the interval
    clock.advance(600)
    assert scrape(host) == 2
    seen = snapshot(host)
    assert (seen[endpoints[0]].waiting, seen[endpoints[0]].kv_cache_usage) == (9.0, 0.5)
    assert seen[endpoints[0]].scraped_at_ms == START_MS + 1000
    assert seen[endpoints[1]].running == 12.0


def test_failed_replicas_are_excluded_until_they_recover(make_host, make_http_server,
                                                         closed_port):
    good, flaky, garbage = replicas(make_http_server, vllm_text(1, 2, 0.1),
                                    vllm_text(3, 4, 0.2), "<html>not metrics</html>")
    dead = f"127.0.0.1:{closed_port}"
    endpoints = [address(good), address(flaky), address(garbage), dead]
    clock = Clock()
    host = start(make_host, endpoints, clock=clock)
    scrape(host)
    assert set(snapshot(host)) == {address(good), address(flaky)}
    shared = status(host)
    assert shared[dead][:2] == [None, 1] and shared[dead][2] == START_MS  # 503 from Envoy
    assert shared[address(garbage)][:2] == [None, 1]

    flaky.route("/metrics", status=500, body=b"internal error")
    clock.advance(1000)
    scrape(host)
    assert set(snapshot(host)) == {address(good)}
    metrics, failures, failed_at = status(host)[address(flaky)]
    # The last good metrics are kept, but the failure since excludes them.
    assert replica_metrics.from_json(metrics).waiting == 3.0
    assert (failures, failed_at) == (1, START_MS + 1000)
    assert status(host)[dead][1] == 2  # consecutive failures

    clock.advance(1000)
    scrape(host)
    assert status(host)[address(flaky)][1] == 2
    flaky.route("/metrics", body=vllm_text(5, 6, 0.3).encode())
    clock.advance(1000)
    scrape(host)
    assert snapshot(host)[address(flaky)].waiting == 5.0
    assert status(host)[address(flaky)][1:] == [0, START_MS + 2000]
    warnings = [m for m in host.get_warn_logs() if dead in m]
    assert len(warnings) == 1  # rate limited: one line, not one per scrape


def test_broken_response_and_refused_call_are_failures(make_host, make_http_server):
    good, cut = replicas(make_http_server, vllm_text(1, 1, 0.1), vllm_text(2, 2, 0.2))
    cut.route("/metrics", body=b"vllm:num_requests_waiting 1\n", content_length=5000)
    host = start(make_host, [address(good), address(cut)])
    scrape(host)  # mid-body: Envoy's onHttpCallFailure, no headers
    assert set(snapshot(host)) == {address(good)}
    assert status(host)[address(cut)][1] == 1

    unknown = start(make_host, [address(good)], cluster="no-such-cluster")
    unknown.tick()  # Envoy refuses the call at once: recorded, nothing raised
    assert unknown.pending == [] and status(unknown)[address(good)][1] == 1
    assert not unknown.get_error_logs()


def test_stale_metrics_are_excluded(make_host, make_http_server):
    servers = replicas(make_http_server, vllm_text(1, 1, 0.1), vllm_text(2, 2, 0.2))
    endpoints = [address(s) for s in servers]
    clock = Clock()
    host = start(make_host, endpoints, clock=clock, staleness_ms=3000)
    scrape(host)
    clock.advance(1000)
    host.tick()  # a round whose answer from replica 1 does not come (yet)
    first, second = sorted(host.pending, key=lambda c: dict(c.headers)[OVERRIDE] != endpoints[0])
    host.call_on_http_call_response(first.token, [(":status", "200")],
                                    vllm_text(7, 7, 0.7).encode())
    # The round is written when it is complete, or at the next tick.
    assert snapshot(host)[endpoints[0]].waiting == 1.0
    clock.advance(500)
    host.tick()
    assert snapshot(host)[endpoints[0]].waiting == 7.0
    assert host.pending == [second]  # no second call while one is in flight
    clock.ms = START_MS + 3000
    assert set(snapshot(host)) == set(endpoints)
    clock.ms = START_MS + 3001  # replica 1's metrics (from START) are 3001 ms old
    assert set(snapshot(host)) == {endpoints[0]}
    clock.ms = START_MS + 4001
    assert snapshot(host) == {}
    clock.ms = START_MS + 1000  # time read again at an earlier moment: fresh again
    assert set(snapshot(host)) == set(endpoints)


def test_hung_replica_times_out_without_blocking_or_piling_up(make_host, make_http_server,
                                                              hung_server):
    good, = replicas(make_http_server, vllm_text(1, 2, 0.3))
    hung = f"127.0.0.1:{hung_server.port}"
    endpoints = [address(good), hung]
    clock = Clock()
    host = start(make_host, endpoints, clock=clock, timeout_ms=300, interval_ms=200,
                 tick_ms=200)
    host.tick()
    for _ in range(5):  # later ticks while the scrapes are in flight
        clock.advance(200)
        host.tick()
    assert sorted(dict(c.headers)[OVERRIDE] for c in host.pending) == sorted(endpoints)
    started = time.monotonic()
    host.run_callouts()
    assert time.monotonic() - started < 5
    assert set(snapshot(host)) == {address(good)}
    assert status(host)[hung][1] == 1
    assert any("status 504" in m for m in host.get_warn_logs())
    assert hung_server.accepted >= 1
    clock.advance(200)
    assert scrape(host) == 2  # both scraped again on the next round


def test_only_the_lease_holder_scrapes_and_another_takes_over(make_host, make_http_server,
                                                              shared_store):
    servers = replicas(make_http_server, vllm_text(1, 1, 0.1), vllm_text(2, 2, 0.2))
    endpoints = [address(s) for s in servers]
    clock = Clock()
    first = start(make_host, endpoints, clock=clock, shared=shared_store)
    second = start(make_host, endpoints, clock=clock, shared=shared_store)
    for _round in range(3):
        first.tick()
        second.tick()
        assert (len(first.pending), len(second.pending)) == (2, 0)
        first.run_callouts()
        clock.advance(1000)
    assert op(first, "leader")["leader"] and not op(second, "leader")["leader"]
    # The other VM reads what the holder wrote.
    assert snapshot(second) == snapshot(first)
    assert snapshot(second)[endpoints[1]].waiting == 2.0

    servers[1].route("/metrics", body=vllm_text(8, 8, 0.8).encode())
    # The holder stops ticking (its VM stalled). Its last renewal, at START + 2000,
    # holds the lease for 3 intervals.
    for ms in (3000, 4000, 4999):
        clock.ms = START_MS + ms
        second.tick()
        assert second.pending == []
    clock.ms = START_MS + 5000
    second.tick()
    assert len(second.pending) == 2
    second.run_callouts()
    assert op(second, "leader")["leader"]
    assert snapshot(first)[endpoints[1]].waiting == 8.0
    # The old holder comes back: it sees the lease taken and does not scrape.
    first.tick()
    assert first.pending == [] and not op(first, "leader")["leader"]


def test_replicas_leaving_are_forgotten(make_host, make_http_server):
    servers = replicas(make_http_server, vllm_text(1, 1, 0.1), vllm_text(2, 2, 0.2))
    endpoints = [address(s) for s in servers]
    clock = Clock()
    host = start(make_host, endpoints, clock=clock)
    scrape(host)
    assert set(status(host)) == set(endpoints)
    op(host, "endpoints", ("x-endpoints", endpoints[0]))
    clock.advance(1000)
    assert scrape(host) == 1
    assert set(status(host)) == {endpoints[0]} and set(snapshot(host)) == {endpoints[0]}


def test_higress_metrics_from_upstream_hosts(make_host):
    host = start(make_host, [], target="higress")
    text = sample(UNDER_LOAD)
    host.set_upstream_hosts([
        ("10.0.0.1:8000", {"health_status": "Healthy", "metrics": text}),
        ("10.0.0.2:8000", {"health_status": "Healthy"}),
        ("10.0.0.3:8000", {"health_status": "Healthy", "metrics": "garbage"}),
        ("10.0.0.4:8000", "{not json"),
        ("10.0.0.5:8000", {"health_status": "Healthy", "metrics": sample(IDLE)}),
    ])
    seen = {a: replica_metrics.from_json(m) for a, m in op(host, "upstream").items()}
    assert set(seen) == {"10.0.0.1:8000", "10.0.0.5:8000"}
    assert (seen["10.0.0.1:8000"].waiting, seen["10.0.0.1:8000"].running) == (3.0, 12.0)
    assert seen["10.0.0.5:8000"].waiting == 0.0
    assert seen["10.0.0.1:8000"].scraped_at_ms == START_MS
    host.now_ns.advance(10_000)  # same text later: still current (the host refreshes it)
    again = {a: replica_metrics.from_json(m) for a, m in op(host, "upstream").items()}
    assert again["10.0.0.1:8000"].scraped_at_ms == START_MS + 10_000


def test_scrape_cost_per_callback(make_host):
    """Host-side time of one scrape answer (the 52 KB under-load sample: parse;
    the round's last answer also writes the shared table) and of snapshot() per
    request, with 32 replicas. Printed for the record."""
    endpoints = [f"10.0.{i}.1:8000" for i in range(32)]
    clock = Clock()
    host = start(make_host, endpoints, targets=["127.0.0.1:1"], clock=clock)
    body = sample(UNDER_LOAD).encode()
    answers, last_answers = [], []
    for _ in range(4):
        host.tick()
        assert len(host.pending) == 32
        for i, callout in enumerate(list(host.pending)):
            started = time.perf_counter()
            host.call_on_http_call_response(callout.token, [(":status", "200")], body)
            (answers if i < 31 else last_answers).append(time.perf_counter() - started)
        clock.advance(1000)
    per_call = {}
    for uncached in ("0", "1"):
        times = []
        for repeat in (1, 101):
            started = time.perf_counter()
            op(host, "snapshot", ("x-repeat", str(repeat)), ("x-uncached", uncached))
            times.append(time.perf_counter() - started)
        per_call[uncached] = (times[1] - times[0]) / 100 * 1e6
    answer_us = sorted(answers)[len(answers) // 2] * 1e6
    last_us = sorted(last_answers)[len(last_answers) // 2] * 1e6
    print(f"\n[{make_host.mode}] scrape answer ({len(body)} bytes): {answer_us:.0f} us, "
          f"{last_us:.0f} us for the round's last (writes 32 entries); snapshot() of 32: "
          f"{per_call['0']:.1f} us cached, {per_call['1']:.1f} us decoding")
    assert len(snapshot(host)) == 32 and snapshot(host)[endpoints[5]].running == 12.0
    assert answer_us < 50_000


# --- a replica that accepts and never answers ------------------------------------------------

class HungServer:
    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.conns = []
        self.stopped = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.conns.append(conn)  # read nothing, answer nothing

    def stop(self):
        self.stopped = True
        for conn in self.conns:
            conn.close()
        self.sock.close()


@pytest.fixture
def hung_server():
    server = HungServer()
    yield server
    server.stop()

