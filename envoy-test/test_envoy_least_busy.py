"""End-to-end: least_busy in a real Envoy 1.40 (--concurrency 2). The plugin
scrapes each replica's /metrics itself (an elected VM, http_call pinned to the
replica through the override_host policy) and routes by the queue it reads."""

import json
import time

import pytest

import envoy_harness as harness

CHAT = json.dumps({"model": "base", "messages": [{"role": "user", "content": "hi"}]}).encode()


def metrics_handler(replica, request):
    """/metrics answers the replica's current `waiting` (set by the test)."""
    if request.path != "/metrics":
        return None
    if replica.behaviour.headers.get("x-metrics-hang"):
        time.sleep(3)
    waiting = replica.behaviour.headers.get("x-waiting", "0")
    text = (f'vllm:num_requests_waiting{{engine="0",model_name="base"}} {waiting}\n'
            f'vllm:num_requests_running{{engine="0",model_name="base"}} 1\n'
            f'vllm:kv_cache_usage_perc{{engine="0",model_name="base"}} 0.1\n')
    return 200, {"content-type": "text/plain"}, text.encode()


def set_waiting(replica, waiting):
    replica.behaviour.headers = {**replica.behaviour.headers, "x-waiting": str(waiting)}


@pytest.fixture(scope="module")
def fleet():
    with harness.ReplicaSet.start(3, handler=metrics_handler) as replicas:
        yield replicas


@pytest.fixture(scope="module")
def busy_envoy(module_envoys, fleet, production_wasm):
    plugin_config = {"lb_policy": "least_busy", "lb_config": {
        "endpoints": fleet.endpoints, "debugHeader": True, "metricsCluster": "backend",
        "scrapeInterval": 200, "scrapeTimeout": 500, "metricsStaleness": 3000}}
    config = harness.EnvoyConfig.simple(fleet.endpoints, wasm_path=production_wasm,
                                        plugin_config=plugin_config, concurrency=2)
    envoy = module_envoys(config)
    envoy.wait_for_log("configured, lb_policy=least_busy", count=3)
    return envoy


def routed(envoy, attempts=40):
    """The replica names of `attempts` chat requests (a new connection each)."""
    names = []
    for _ in range(attempts):
        client = harness.Client(envoy.port)
        response = client.post("/v1/chat/completions", CHAT, {"content-type": "application/json"})
        client.close()
        assert response.status == 200
        names.append(response.replica)
    return names


def wait_until(check, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def test_least_queued_replica_takes_the_traffic(busy_envoy, fleet):
    for replica, waiting in zip(fleet.replicas, [30, 0, 40]):
        set_waiting(replica, waiting)
    assert wait_until(lambda: set(routed(busy_envoy, 5)) == {"r1"})
    assert set(routed(busy_envoy)) == {"r1"}
    set_waiting(fleet.replicas[1], 50)  # the queue moves to r1: the traffic leaves it
    set_waiting(fleet.replicas[0], 0)
    assert wait_until(lambda: set(routed(busy_envoy, 5)) == {"r0"})


def test_scrapes_reach_each_replica_and_only_one_vm_scrapes(busy_envoy, fleet):
    before = [sum(1 for r in list(rep.requests) if r.path == "/metrics") for rep in fleet.replicas]
    time.sleep(2.0)
    after = [sum(1 for r in list(rep.requests) if r.path == "/metrics") for rep in fleet.replicas]
    per_replica = [a - b for a, b in zip(after, before)]
    # 2 s at one scrape per 200 ms from ONE VM (3 VMs tick): about 10, never ~30.
    assert all(5 <= n <= 14 for n in per_replica), per_replica


def test_a_hung_metrics_endpoint_does_not_stall_requests(busy_envoy, fleet):
    for replica, waiting in zip(fleet.replicas, [0, 0, 0]):
        set_waiting(replica, waiting)
    hung = fleet.replicas[2]
    hung.behaviour.headers = {**hung.behaviour.headers, "x-metrics-hang": "1"}
    try:
        started = time.monotonic()
        names = routed(busy_envoy, 20)
        assert time.monotonic() - started < 5  # requests never wait for scrapes
        assert wait_until(lambda: "r2" not in routed(busy_envoy, 10))  # left out once stale
    finally:
        hung.behaviour.headers = {k: v for k, v in hung.behaviour.headers.items()
                                  if k != "x-metrics-hang"}
    assert set(names) <= {"r0", "r1", "r2"}
