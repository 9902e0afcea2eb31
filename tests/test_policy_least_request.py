"""global_least_request: exact in-flight counts across workers (embedded) and
across gateways (Redis), released however a stream ends, and failing open."""

import socket
import threading
import time


from proxywasm.context import CONTINUE, PAUSE
from tests.llm_traffic import (REPLICAS, clear_redis, decision, embedded_inflight, finish,
                               pinned, redis_calls, redis_inflight, send, start)


def test_embedded_counts_are_exact_across_workers_and_return_to_zero(make_host, shared_store):
    workers = [start(make_host, "global_least_request", shared=shared_store) for _ in range(2)]
    streams = []
    for i in range(200):  # 200 concurrent requests, alternating between two workers
        host = workers[i % 2]
        cid, action = send(host)
        assert action == CONTINUE
        streams.append((host, cid))
    assert embedded_inflight(workers[0]) == {r: 50 for r in REPLICAS}
    assert sorted({pinned(h, c) for h, c in streams}) == REPLICAS
    for i, (host, cid) in enumerate(streams):
        finish(host, cid, respond=i % 3 != 0)  # every third one is a client abort
    assert embedded_inflight(workers[0]) == {}


def test_least_busy_replica_wins(make_host):
    host = start(make_host, "global_least_request")
    held = [send(host)[0] for _ in range(4)]  # one on each replica
    finish(host, held[2])
    cid, _ = send(host)
    assert pinned(host, cid) == pinned(host, held[2])
    assert decision(host, cid)["reason"] == "least_request"


def test_max_request_count_answers_429(make_host):
    host = start(make_host, "global_least_request", maxRequestCount=1)
    for _ in REPLICAS:
        assert send(host)[1] == CONTINUE
    cid, action = send(host)
    assert action == PAUSE
    reply = host.get_sent_local_response(cid)
    assert reply.status_code == 429 and b"rate_limit_exceeded" in reply.body


def test_no_endpoints_leaves_the_service_lb_in_charge(make_host):
    host = start(make_host, "global_least_request", endpoints=[])
    cid, action = send(host)
    assert action == CONTINUE and pinned(host, cid) is None
    assert any("no usable replica" in m for m in host.get_logs())


def test_higress_uses_healthy_upstream_hosts_only(make_host):
    host = start(make_host, "global_least_request", target="higress")
    host.set_upstream_hosts([(REPLICAS[0], {"health_status": "Unhealthy"}),
                             (REPLICAS[1], {"health_status": "Healthy"})])
    assert {pinned(host, send(host)[0]) for _ in range(5)} == {REPLICAS[1]}


# --- Redis (higress build) -------------------------------------------------------------

def test_redis_counts_are_exact_and_released(make_host, redis_server):
    clear_redis(redis_server)
    gateways = [start(make_host, "global_least_request", target="higress",
                      redis_server=redis_server) for _ in range(2)]
    streams = []
    for i in range(200):
        host = gateways[i % 2]
        cid, action = send(host)
        assert action == PAUSE  # waiting on Redis
        streams.append((host, cid))
    for host in gateways:
        host.run_callouts()
    assert all(host.is_request_resumed(cid) for host, cid in streams)
    assert redis_inflight(redis_server) == {r: 50 for r in REPLICAS}
    assert decision(*streams[0])["state"] == "redis"
    for i, (host, cid) in enumerate(streams):
        finish(host, cid, respond=i % 4 != 0)
    for host in gateways:
        host.run_callouts()  # the releases
    assert redis_inflight(redis_server) == {}


def test_redis_down_falls_back_to_embedded_state(make_host, closed_port):
    host = start(make_host, "global_least_request", target="higress",
                 redis_address=("127.0.0.1", closed_port))
    streams = [send(host)[0] for _ in range(8)]
    host.run_callouts()
    for cid in streams:
        assert host.is_request_resumed(cid)
        assert pinned(host, cid) in REPLICAS
    assert embedded_inflight(host) == {r: 2 for r in REPLICAS}
    warnings = [m for m in host.get_logs() if "Redis unusable" in m]
    assert len(warnings) == 1  # rate limited, not one line per request


def test_killed_redis_mid_run_keeps_requests_flowing(make_host, redis_server, tmp_path):
    clear_redis(redis_server)
    host = start(make_host, "global_least_request", target="higress", redis_server=redis_server)
    first, _ = send(host)
    host.run_callouts()
    assert host.is_request_resumed(first)
    host.clusters[list(host.clusters)[0]] = [("127.0.0.1", 1)]  # Redis is gone
    second, _ = send(host)
    host.run_callouts()
    assert host.is_request_resumed(second) and pinned(host, second) in REPLICAS


class SilentServer:
    """Accepts connections and never answers: a hung Redis."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.address = self.sock.getsockname()
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self):
        self.sock.close()
        for conn in self.conns:
            conn.close()


def test_slow_redis_times_out_and_a_late_pick_is_released(make_host, redis_server):
    clear_redis(redis_server)
    host = start(make_host, "global_least_request", target="higress",
                 redis_server=redis_server, timeout=200)
    cid, action = send(host)
    assert action == PAUSE
    now = time.time_ns()
    host.now_ns = lambda: now + 300_000_000  # 300 ms later, Redis still silent
    host.tick()
    assert host.is_request_resumed(cid) and pinned(host, cid) in REPLICAS
    assert decision(host, cid)["state"] == "embedded"
    host.run_callouts()  # the late answer: counted in Redis for a request gone elsewhere
    host.run_callouts()  # ...and released at once
    assert redis_inflight(redis_server) == {}
    finish(host, cid)
    assert embedded_inflight(host) == {}


def test_client_abort_while_waiting_on_redis_leaks_nothing(make_host, redis_server):
    clear_redis(redis_server)
    host = start(make_host, "global_least_request", target="higress", redis_server=redis_server)
    cid, _ = send(host)
    finish(host, cid, respond=False)  # the client left before Redis answered
    host.run_callouts()
    host.run_callouts()
    assert redis_inflight(redis_server) == {}


def test_pick_script_is_sent_once_then_by_sha_even_after_a_flush(make_host, redis_server):
    clear_redis(redis_server)
    redis_server.command("CONFIG", "RESETSTAT")
    host = start(make_host, "global_least_request", target="higress", redis_server=redis_server)

    def one_request():
        cid, action = send(host)
        assert action == PAUSE
        host.run_callouts()
        assert host.is_request_resumed(cid)
        assert decision(host, cid)["state"] == "redis"
        finish(host, cid)
        host.run_callouts()  # the release

    for _ in range(5):
        one_request()
    assert (redis_calls(redis_server, "eval") - 5, redis_calls(redis_server, "evalsha")) == (1, 4)
    redis_server.command("SCRIPT", "FLUSH")  # as after a Redis restart: the script is gone
    one_request()  # NOSCRIPT, then the script again: still decided in Redis
    one_request()
    assert redis_calls(redis_server, "evalsha") == 4 + 2
    assert redis_calls(redis_server, "eval") - 7 == 2  # 7 releases; the pick script twice
    assert redis_inflight(redis_server) == {}
    assert not [m for m in host.get_logs() if "Redis unusable" in m]
