"""The classic policies, health checks, failover, all-down behaviour and the
plugin's stats, through the plugin's filter in the test host (both modes)."""

import collections
import json

import pytest

from proxywasm.context import CONTINUE, PAUSE
from tests.llm_traffic import (CLUSTER, REPLICAS, chat_body, embedded_inflight,
                               fallbacks, finish, pinned, send, start)


def spread(host, requests, headers=()):
    seen = collections.Counter()
    for _ in range(requests):
        cid = host.init_http_context()
        host.call_on_request_headers(cid, [(":method", "GET"), (":path", "/v1/models"),
                                           *headers], end_of_stream=True)
        seen[pinned(host, cid)] += 1
        finish(host, cid)
    return seen


def test_weighted_round_robin_keeps_ratios_over_6000_requests(make_host):
    weights = {REPLICAS[0]: 3, REPLICAS[1]: 2, REPLICAS[2]: 1}
    host = start(make_host, "weighted_round_robin", endpoints=REPLICAS[:3], weights=weights)
    seen = spread(host, 6000)
    for address, weight in weights.items():
        assert abs(seen[address] / 6000 - weight / 6) <= 0.02
    first = [pinned(host, send(host)[0]) for _ in range(6)]
    assert first.count(REPLICAS[0]) == 3 and first[:2] != [REPLICAS[0]] * 2  # smooth


def test_round_robin_and_random_cover_every_replica(make_host):
    assert spread(start(make_host, "round_robin"), 400) == {r: 100 for r in REPLICAS}
    randomly = spread(start(make_host, "random"), 400)
    assert set(randomly) == set(REPLICAS) and min(randomly.values()) > 50


def test_least_connections_counts_in_flight(make_host):
    host = start(make_host, "least_connections")
    held = [send(host)[0] for _ in range(8)]
    assert embedded_inflight(host) == {r: 2 for r in REPLICAS}
    for cid in held:
        finish(host, cid)
    assert embedded_inflight(host) == {}


def test_consistent_hash_sticks_by_header_and_spills_a_heavy_key(make_host):
    host = start(make_host, "consistent_hash", hashKey={"header": "x-session-id"},
                 hashLoadFactor=1.25)
    homes = {f"s{i}": spread(host, 3, [("x-session-id", f"s{i}")]) for i in range(40)}
    assert all(len(seen) == 1 for seen in homes.values())  # one replica per session
    assert len({next(iter(seen)) for seen in homes.values()}) == 4
    held = [send_with(host, "heavy") for _ in range(8)]  # one heavy session, held open
    per_replica = collections.Counter(pinned(host, cid) for cid in held)
    assert len(per_replica) > 1 and max(per_replica.values()) <= 3  # ceil(1.25 * 8 / 4)


def send_with(host, session):
    cid = host.init_http_context()
    host.call_on_request_headers(cid, [(":method", "GET"), (":path", "/"),
                                       ("x-session-id", session)], end_of_stream=True)
    return cid


def test_consistent_hash_by_body_field(make_host):
    host = start(make_host, "consistent_hash", hashKey={"bodyField": "user"})
    def home(user):
        cid, _ = send(host, json.dumps({"model": "m", "user": user, "prompt": "x"}).encode())
        address = pinned(host, cid)
        finish(host, cid)
        return address
    assert len({home("alice") for _ in range(5)}) == 1
    assert len({home(f"user-{i}") for i in range(30)}) > 1


def test_failover_fallbacks_follow_the_primary(make_host):
    host = start(make_host, "global_least_request", failoverEndpoints=2)
    cid, _ = send(host)
    rest = fallbacks(host, cid)
    assert len(rest) == 2 and pinned(host, cid) not in rest and set(rest) <= set(REPLICAS)
    host = start(make_host, "global_least_request", failoverEndpoints=0)
    assert fallbacks(host, send(host)[0]) == []


# --- health ----------------------------------------------------------------------------------

class Fleet:
    def __init__(self, make_http_server, count):
        self.servers = [make_http_server(f"r{i}") for i in range(count)]
        self.addresses = [f"{s.address[0]}:{s.address[1]}" for s in self.servers]


def health_host(make_host, fleet, **health):
    host = make_host(clusters={CLUSTER: [tuple(s.address) for s in fleet.servers]})
    host.set_property(["xds", "cluster_name"], CLUSTER.encode())
    config = {"lb_policy": "round_robin", "lb_config": {
        "endpoints": fleet.addresses, "healthCheck": {"interval": 100, "timeout": 300,
                                                      **health}}}
    assert host.start_plugin(json.dumps(config).encode()), host.logs_text()
    return host


def probe_round(host, advance_ms=150):
    """Time moves on, the timer fires, the probes are answered."""
    clock = host.now_ns
    host.now_ns = lambda: clock() + advance_ms * 1_000_000
    host.tick()
    host.run_callouts()


def test_a_killed_replica_is_removed_then_returns(make_host, make_http_server):
    fleet = Fleet(make_http_server, 3)
    host = health_host(make_host, fleet)
    send(host)  # the first request teaches the plugin its cluster
    fleet.servers[1].route("/health", status=500)
    for _ in range(2):
        probe_round(host)
    assert fleet.addresses[1] in spread(host, 30)  # 2 failures < unhealthyThreshold 3
    probe_round(host)
    assert fleet.addresses[1] not in spread(host, 30)
    assert sum("is unhealthy" in m for m in host.get_logs()) == 1
    fleet.servers[1].route("/health", status=200)
    probe_round(host)
    assert fleet.addresses[1] not in spread(host, 30)  # 1 success < healthyThreshold 2
    probe_round(host)
    assert fleet.addresses[1] in spread(host, 30)
    assert sum("is healthy" in m for m in host.get_logs()) == 1
    assert host.get_counter_metric(
        f"ailb.health.{fleet.addresses[1].replace('.', '_').replace(':', '_')}.unhealthy") == 1


def test_a_5xx_replica_is_ejected_passively_and_rejoins(make_host, make_http_server):
    fleet = Fleet(make_http_server, 2)
    host = health_host(make_host, fleet, consecutiveErrors=3, baseEjectionTime=1000)
    bad = fleet.addresses[0]
    for _ in range(12):  # requests to `bad` fail
        cid, _ = send(host)
        status = "503" if pinned(host, cid) == bad else "200"
        host.call_on_response_headers(cid, [(":status", status)], end_of_stream=True)
        host.complete_http_context(cid)
    assert bad not in spread(host, 20)
    assert any(f"endpoint {bad} is unhealthy: 3 failed requests" in m for m in host.get_logs())
    for _ in range(3):  # back-off over, probes pass: it rejoins through the active check
        probe_round(host, 600)
    assert bad in spread(host, 20)


def test_degraded_replicas_serve_only_when_nothing_healthy_is_left(make_host, make_http_server):
    fleet = Fleet(make_http_server, 2)
    host = health_host(make_host, fleet, unhealthyThreshold=1)
    send(host)
    fleet.servers[0].route("/health", status=429)   # up but overloaded
    probe_round(host)
    assert set(spread(host, 10)) == {fleet.addresses[1]}
    fleet.servers[1].route("/health", status=500)
    probe_round(host)
    assert set(spread(host, 10)) == {fleet.addresses[0]}


@pytest.mark.parametrize("behaviour", ["service_lb", "503"])
def test_all_down_both_ways(make_host, make_http_server, behaviour):
    fleet = Fleet(make_http_server, 2)
    host = make_host(clusters={CLUSTER: [tuple(s.address) for s in fleet.servers]})
    host.set_property(["xds", "cluster_name"], CLUSTER.encode())
    assert host.start_plugin(json.dumps({"lb_policy": "round_robin", "lb_config": {
        "endpoints": fleet.addresses, "allDownBehavior": behaviour,
        "healthCheck": {"interval": 100, "unhealthyThreshold": 1}}}).encode())
    send(host)
    for server in fleet.servers:
        server.route("/health", status=500)
    probe_round(host)
    cid, action = send(host)
    if behaviour == "service_lb":
        assert action == CONTINUE and pinned(host, cid) is None
    else:
        reply = host.get_sent_local_response(cid)
        assert action == PAUSE and reply.status_code == 503
        assert json.loads(reply.body)["error"]["type"] == "service_unavailable"
    assert host.get_counter_metric("ailb.fallbacks.no_usable_replica") >= 1


def test_higress_health_status_is_respected(make_host):
    host = start(make_host, "round_robin", target="higress")
    host.set_upstream_hosts([(REPLICAS[0], {"health_status": "Unhealthy"}),
                             (REPLICAS[1], {"health_status": "Degraded"}),
                             (REPLICAS[2], {"health_status": "Healthy"})])
    assert {pinned(host, send(host)[0]) for _ in range(6)} == {REPLICAS[2]}
    host.set_upstream_hosts([(REPLICAS[0], {"health_status": "Unhealthy"}),
                             (REPLICAS[1], {"health_status": "Degraded"})])
    assert {pinned(host, send(host)[0]) for _ in range(6)} == {REPLICAS[1]}


def test_queue_depth_reads_a_json_status_endpoint(make_host, make_http_server):
    fleet = Fleet(make_http_server, 3)
    for server, depth in zip(fleet.servers, [5, 1, 9]):
        server.route("/status", body=json.dumps({"stats": {"queue": depth}}).encode())
    host = make_host(clusters={CLUSTER: [tuple(s.address) for s in fleet.servers]})
    host.set_property(["xds", "cluster_name"], CLUSTER.encode())
    assert host.start_plugin(json.dumps({"lb_policy": "queue_depth", "lb_config": {
        "endpoints": fleet.addresses, "queueField": "stats.queue", "metricsCluster": CLUSTER,
        "scrapeInterval": 100, "debugHeader": True}}).encode())
    probe_round(host)
    host.tick()
    cid, _ = send(host)
    assert pinned(host, cid) == fleet.addresses[1]


def test_decisions_are_counted_in_plugin_stats(make_host):
    host = start(make_host, "prefix_cache")
    body = chat_body("Stats are counted. " * 20)
    for _ in range(3):
        cid, _ = send(host, body)
        finish(host, cid)
    assert host.get_counter_metric("ailb.prefix.hits") == 2
    assert host.get_counter_metric("ailb.prefix.misses") == 1
    assert host.get_counter_metric("ailb.decisions.prefix_cache.prefix_match") == 2
    assert host.get_counter_metric("ailb.decisions.prefix_cache.least_load") == 1
    assert len(host.get_metric("ailb.decision_us").samples) == 3


def test_without_active_checks_ejection_repeats_with_a_growing_back_off(make_host):
    host = start(make_host, "round_robin", endpoints=REPLICAS[:2],
                 healthCheck={"enabled": False, "consecutiveErrors": 2, "baseEjectionTime": 1000})
    bad, now = REPLICAS[0], [host.now_ns()]
    host.now_ns = lambda: now[0]

    def traffic(requests):
        for _ in range(requests):
            cid, _ = send(host)
            failed = pinned(host, cid) == bad
            host.call_on_response_headers(cid, [(":status", "503" if failed else "200")],
                                          end_of_stream=True)
            host.complete_http_context(cid)

    traffic(6)
    assert any(f"{bad} is unhealthy: 2 failed requests in a row; ejected for 1000 ms" in m
               for m in host.get_logs())
    assert bad not in spread(host, 6)
    now[0] += 1_100_000_000  # the back-off is over: it rejoins by itself...
    traffic(6)
    assert any(f"{bad} is healthy: ejection over" in m for m in host.get_logs())
    assert any("ejected for 2000 ms" in m for m in host.get_logs())  # ...and a repeat doubles
