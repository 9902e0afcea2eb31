"""least_busy through the plugin's filter: replicas serve metrics text the test
controls; the plugin scrapes them (timer + http_call, for real) and routes by them."""

import json
import os


from proxywasm.context import CONTINUE, PAUSE
from tests.llm_traffic import CLUSTER, chat_body, decision, finish, pinned, send

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def vllm_metrics(waiting, usage=0.1, running=1, adapters="", max_lora=4):
    text = (f'vllm:num_requests_waiting{{engine="0",model_name="base"}} {waiting}\n'
            f'vllm:num_requests_running{{engine="0",model_name="base"}} {running}\n'
            f'vllm:kv_cache_usage_perc{{engine="0",model_name="base"}} {usage}\n')
    if adapters is not None:
        text += (f'vllm:lora_requests_info{{max_lora="{max_lora}",running_lora_adapters='
                 f'"{adapters}",waiting_lora_adapters=""}} 1.7e9\n')
    return text.encode()


class Fleet:
    """Loopback replicas whose /metrics answers what the test sets."""

    def __init__(self, make_http_server, count):
        self.servers = [make_http_server(f"r{i}") for i in range(count)]
        self.addresses = [f"{s.address[0]}:{s.address[1]}" for s in self.servers]

    def set(self, index, body, status=200, delay_s=0):
        self.servers[index].route("/metrics", status=status, body=body, delay_s=delay_s)


def start(make_host, fleet, **fields):
    host = make_host(clusters={CLUSTER: [tuple(s.address) for s in fleet.servers]})
    host.set_property(["xds", "cluster_name"], CLUSTER.encode())
    config = {"lb_policy": "least_busy", "lb_config": {
        "endpoints": fleet.addresses, "debugHeader": True, "metricsCluster": CLUSTER,
        "scrapeInterval": 100, "scrapeTimeout": 300, "metricsStaleness": 2000, **fields}}
    assert host.start_plugin(json.dumps(config).encode()), host.logs_text()
    return host


def scrape(host):
    """One scrape round: time moves past the interval, the timer fires, the
    replicas answer."""
    clock = host.now_ns
    host.now_ns = lambda: clock() + 200_000_000
    host.tick()
    host.run_callouts()
    host.tick()  # writes a round whose last answer came back


def route(host, body):
    cid, action = send(host, body)
    d = decision(host, cid)
    finish(host, cid)
    return action, d


def test_least_queued_replica_wins(make_host, make_http_server):
    fleet = Fleet(make_http_server, 3)
    for i, waiting in enumerate([20, 0, 30]):  # GIE keeps a band: keep it clear-cut
        fleet.set(i, vllm_metrics(waiting))
    host = start(make_host, fleet)
    scrape(host)
    action, d = route(host, chat_body("hello", model="base"))
    assert action == CONTINUE and d["address"] == fleet.addresses[1]
    assert d["reason"] == "least_busy_default" and d["state"] == "metrics"
    fleet.set(1, vllm_metrics(40))  # the metrics move: so does the choice
    fleet.set(0, vllm_metrics(0))
    scrape(host)
    assert route(host, chat_body("hello", model="base"))[1]["address"] == fleet.addresses[0]


def test_real_vllm_samples(make_host, make_http_server):
    fleet = Fleet(make_http_server, 2)
    with open(os.path.join(FIXTURES, "vllm-0.32-cpu-metrics-under-load.txt"), "rb") as f:
        fleet.set(0, f.read())
    with open(os.path.join(FIXTURES, "vllm-0.32-cpu-metrics-idle.txt"), "rb") as f:
        fleet.set(1, f.read())
    host = start(make_host, fleet)
    scrape(host)
    assert route(host, chat_body("hi"))[1]["address"] == fleet.addresses[1]


def test_lora_affinity(make_host, make_http_server):
    fleet = Fleet(make_http_server, 3)
    fleet.set(0, vllm_metrics(0, adapters=""))
    fleet.set(1, vllm_metrics(2, adapters="sql-lora"))
    fleet.set(2, vllm_metrics(0, adapters=""))
    host = start(make_host, fleet)
    scrape(host)
    assert route(host, chat_body("SELECT", model="sql-lora"))[1]["address"] == fleet.addresses[1]


def test_sheddable_request_is_shed_when_saturated(make_host, make_http_server):
    fleet = Fleet(make_http_server, 2)
    fleet.set(0, vllm_metrics(9, usage=0.5))
    fleet.set(1, vllm_metrics(1, usage=0.95))
    host = start(make_host, fleet, criticalModels=["critical-model"])
    scrape(host)
    cid, action = send(host, chat_body("batch job", model="batch-model"))
    assert action == PAUSE
    reply = host.get_sent_local_response(cid)
    assert reply.status_code == 429 and json.loads(reply.body)["error"]["code"] == 429
    action, d = route(host, chat_body("urgent", model="critical-model"))
    assert action == CONTINUE and d["address"] in fleet.addresses


def test_stale_metrics_are_not_trusted(make_host, make_http_server):
    fleet = Fleet(make_http_server, 2)
    fleet.set(0, vllm_metrics(0))
    fleet.set(1, vllm_metrics(5))
    host = start(make_host, fleet)
    scrape(host)
    assert route(host, chat_body("x"))[1]["address"] == fleet.addresses[0]
    real_now = host.now_ns
    host.now_ns = lambda: real_now() + 10_000_000_000  # 10 s on, no scrape since
    cid, action = send(host, chat_body("x"))
    assert action == CONTINUE and pinned(host, cid) is None  # the service's LB decides
    assert any("no replica has fresh metrics" in m for m in host.get_logs())


def test_failed_and_hung_replicas_are_excluded_without_stalling(make_host, make_http_server):
    fleet = Fleet(make_http_server, 3)
    fleet.set(0, vllm_metrics(0), status=500)       # answers, but not metrics
    fleet.set(1, vllm_metrics(0), delay_s=1.0)       # hangs past scrapeTimeout
    fleet.set(2, vllm_metrics(20))                   # busy but healthy
    host = start(make_host, fleet)
    scrape(host)
    action, d = route(host, chat_body("x"))
    assert action == CONTINUE and d["address"] == fleet.addresses[2]


def test_weighted_profile_combines_prefix_and_load(make_host, make_http_server):
    fleet = Fleet(make_http_server, 2)
    fleet.set(0, vllm_metrics(1, usage=0.3))
    fleet.set(1, vllm_metrics(1, usage=0.3))
    host = start(make_host, fleet, metric_policy="weighted")
    scrape(host)
    document = "Shared contract text. " * 80
    first = route(host, chat_body(document, "q1"))[1]
    second = route(host, chat_body(document, "q2"))[1]
    assert second["address"] == first["address"] and int(second["matched_blocks"]) > 20


def test_least_by_target_metric(make_host, make_http_server):
    fleet = Fleet(make_http_server, 2)
    fleet.set(0, vllm_metrics(0, running=9))
    fleet.set(1, vllm_metrics(5, running=1))
    host = start(make_host, fleet, metric_policy="least",
                 target_metric="vllm:num_requests_running")
    scrape(host)
    assert route(host, chat_body("x"))[1]["address"] == fleet.addresses[1]


def test_higress_metrics_from_upstream_hosts(make_host):
    host = make_host(target="higress")
    host.set_property(["xds", "cluster_name"], CLUSTER.encode())
    host.set_upstream_hosts([
        ("10.0.0.1:8000", {"health_status": "Healthy", "metrics": vllm_metrics(8).decode()}),
        ("10.0.0.2:8000", {"health_status": "Healthy", "metrics": vllm_metrics(0).decode()}),
        ("10.0.0.3:8000", {"health_status": "Unhealthy", "metrics": vllm_metrics(0).decode()})])
    assert host.start_plugin(b'{"lb_policy": "least_busy", "lb_config": {"debugHeader": true}}')
    action, d = route(host, chat_body("x"))
    assert action == CONTINUE and d["address"] == "10.0.0.2:8000"
    assert host.get_override_host(send(host, chat_body("y"))[0]) == "10.0.0.2:8000"


def test_requests_between_two_scrapes_do_not_herd(make_host, make_http_server):
    fleet = Fleet(make_http_server, 4)
    for i in range(4):
        fleet.set(i, vllm_metrics(0, running=0))
    host = start(make_host, fleet)
    scrape(host)
    held = [send(host, chat_body(f"q{i}"))[0] for i in range(8)]  # no scrape meanwhile
    per_replica = {a: sum(pinned(host, c) == a for c in held) for a in fleet.addresses}
    assert sorted(per_replica.values()) == [2, 2, 2, 2]
    for cid in held:
        finish(host, cid)
    held = [send(host, chat_body("again"))[0] for _ in range(4)]
    assert len({pinned(host, c) for c in held}) == 4  # released counts: spread again
