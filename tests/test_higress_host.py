"""The test host behaves as Higress's Envoy does for its host extensions
(proxy_redis_init / proxy_redis_call, proxy_get_upstream_hosts,
proxy_set_upstream_override_host; see tests/host/hostfunctions.py and
callouts.py for the sources), and the plugin copes with what a user meets on
Higress: a Redis cluster pushed after the plugin, Envoy's 3 ms write buffer,
NOAUTH after a cluster update, an older Higress without
proxy_get_upstream_hosts, degraded hosts and 64 KiB of metrics."""

import json

import pytest

from proxywasm import CONTINUE, PAUSE, headers
from tests.conftest import running_redis
from tests.host import resp
from tests.host.emulator import HostEmulator
from tests.host.model import (BAD_ARGUMENT, INTERNAL_FAILURE, METRICS_BODY_LIMIT, OK,
                              UNIMPLEMENTED, Stream, higress_host_info)
from tests.llm_traffic import (CLUSTER, REDIS_CLUSTER, REPLICAS, chat_body, clear_redis,
                               decision, embedded_inflight, finish, pinned, plugin_config,
                               redis_calls, redis_inflight, send, start)

PROBE = "probe_plugin"


# --- a redis-server that requires a password ------------------------------------------------

PASSWORD = "ailb-requirepass"


@pytest.fixture(scope="module")
def password_redis():
    yield from running_redis(requirepass=PASSWORD)


# --- the host itself (no plugin: host functions called directly) ----------------------------

def in_stream(host):
    """Makes a stream current, as during one of its callbacks."""
    host.streams[2] = Stream(2)
    host._current = 2


def test_redis_init_is_per_base_cluster_replaces_and_ignores_an_identical_repeat():
    host = HostEmulator("higress")
    assert host.proxy_redis_init(b"redis?db=1", b"", b"pw", 500) == BAD_ARGUMENT  # not pushed yet
    host.add_cluster("redis", ("127.0.0.1", 6379))
    assert host.proxy_redis_init(b"redis?db=1", b"", b"pw", 500) == OK
    assert host.redis_client_state("redis") == (True, ("", "pw", 500, (("db", "1"),)), 1)
    assert host.proxy_redis_init(b"redis?db=1", b"", b"pw", 500) == OK  # same: a no-op
    assert host.redis_client_state("redis")[2] == 1
    assert host.proxy_redis_init(b"redis?db=2", b"u", b"pw", 500) == OK  # replaces it
    assert host.redis_client_state("redis") == (True, ("u", "pw", 500, (("db", "2"),)), 2)
    assert host.proxy_redis_init(b"redis?db=x", b"", b"", 1) == OK  # only the base is checked
    host.update_cluster("redis")  # a CDS update: a new, uninitialised client
    assert host.redis_client_state("redis") is None


def test_redis_call_needs_no_init_and_small_commands_wait_in_the_write_buffer():
    host = HostEmulator("higress", clusters={"redis": ("127.0.0.1", 6379)})
    assert host.proxy_redis_call(b"nope", b"x") == (BAD_ARGUMENT, 0)
    small = resp.command("PING")
    status, first = host.proxy_redis_call(b"redis?db=5", small)
    assert (status, first) == (OK, 7)  # cpp-host: Redis tokens are 3 mod 4, from 7
    assert host.redis_client_state("redis") == (False, ("", "", 1000, ()), 0)  # defaults
    _, second = host.proxy_redis_call(b"redis", small)
    assert second == 11
    a, b = host.pending
    assert a.flush_at == b.flush_at == pytest.approx(a.called_at + 0.003)  # one timer
    host.proxy_redis_call(b"redis", resp.command("SET", "k", "v" * 1100))  # buffer full
    a, b, c = host.pending
    assert a.flush_at == b.flush_at == c.flush_at == c.called_at  # all go out at once
    host.proxy_redis_init(b"redis?max_buffer_size_before_flush=0", b"", b"", 1000)
    host.proxy_redis_call(b"redis", small)
    assert host.pending[-1].flush_at == host.pending[-1].called_at  # buffering disabled
    host.add_cluster("empty", [])
    assert host.proxy_redis_call(b"empty", small) == (INTERNAL_FAILURE, 0)  # no host to send to


def test_upstream_hosts_and_override_host_answer_as_higress():
    host = HostEmulator("higress")
    host.set_upstream_hosts([("10.0.0.1:8000", {"health_status": "Degraded",
                                                "metrics": "m 1\n" + "#" * 70000}),
                             ("[::1]:80", {})])
    assert host.proxy_get_upstream_hosts() == (OK, b"")  # root context: an empty list, Ok
    assert host.proxy_set_upstream_override_host(b"10.9.9.9:1") == OK  # a silent no-op
    in_stream(host)
    status, data = host.proxy_get_upstream_hosts()
    assert status == OK
    (first, info), (second, bare) = headers.decode(data)
    assert (first, second) == ("10.0.0.1:8000", "[::1]:80")
    assert bare == '{\n"health_status": "Healthy"\n}'  # nlohmann dump(0), no empty metrics
    assert info.startswith('{\n"health_status": "Degraded",\n"metrics": "m 1\\n###')
    assert len(json.loads(info)["metrics"]) == METRICS_BODY_LIMIT  # the probe body cap
    assert host.proxy_set_upstream_override_host(b"10.9.9.9:1") == OK  # unknown: still Ok
    assert host.get_override_host(2) == "10.9.9.9:1"
    with pytest.raises(ValueError):
        host.set_upstream_hosts([("10.0.0.1:8000", {"health_status": "healthy"})])
    # A cut inside a UTF-8 sequence makes Envoy's JSON dump throw.
    assert higress_host_info("Healthy", b"x" * (METRICS_BODY_LIMIT - 1) + "é".encode()) \
        == '{"error": "Failed to get host info"}'
    older = HostEmulator("higress", unimplemented={"proxy_get_upstream_hosts"})
    in_stream(older)
    assert older.proxy_get_upstream_hosts() == (UNIMPLEMENTED, b"")


# --- Redis replies through the SDK (probe plugin, native and wasm) ------------------------

def redis_op(host, *args):
    cid = host.init_http_context()
    action = host.call_on_request_headers(cid, [
        (":method", "GET"), (":path", "/"), (":authority", "svc"), ("x-probe-op", "redis"),
        ("x-probe-redis", json.dumps(args))], False)
    assert action == PAUSE
    assert host.run_callouts() == 1
    status, reply = host.get_request_header(cid, "x-probe-result").split(":")
    return int(status), bytes.fromhex(reply)


def test_auth_is_fire_and_forget_so_login_errors_are_ordinary_replies(make_host, password_redis):
    host = make_host(entry=PROBE, target="higress", clusters={"redis": password_redis.address},
                     configuration=json.dumps({"redis_cluster": "redis"}))  # init: no login
    status, reply = redis_op(host, "PING")
    assert status == 0 and reply.startswith(b"-NOAUTH")  # a reply, not a network error
    host.update_cluster("redis")  # a new client nobody initialised: the call still goes out
    status, reply = redis_op(host, "PING")
    assert status == 0 and reply.startswith(b"-NOAUTH")
    assert host.redis_client_state("redis")[0] is False
    assert host.proxy_redis_init(b"redis", b"", b"wrong", 1000) == OK  # a wrong password...
    status, reply = redis_op(host, "PING")  # ...is silent until the next command
    assert status == 0 and reply.startswith(b"-NOAUTH")
    assert host.proxy_redis_init(b"redis", b"", PASSWORD.encode(), 1000) == OK
    assert redis_op(host, "PING") == (0, b"+PONG\r\n")
    callout = host.answered[-1][0]
    assert callout.delivered_at >= callout.flush_at > callout.called_at  # held 3 ms


# --- what the plugin does on Higress -----------------------------------------------------------

def higress_gateway(make_host, redis=None, **options):
    """A higress-build gateway whose Redis cluster may not be pushed yet."""
    host = make_host(target="higress", **options)
    host.set_property(["xds", "cluster_name"], CLUSTER.encode())
    host.set_upstream_hosts([(r, {"health_status": "Healthy"}) for r in REPLICAS])
    if redis is not None:
        host.add_cluster(REDIS_CLUSTER, redis.address)
    return host


def redis_round(host, cid):
    """Lets Redis answer a paused request; True when Redis decided it."""
    host.run_callouts()
    assert host.is_request_resumed(cid) and pinned(host, cid) in REPLICAS
    return decision(host, cid)["state"] == "redis"


def test_redis_cluster_pushed_after_the_plugin_is_used_once_it_arrives(make_host, redis_server):
    clear_redis(redis_server)
    host = higress_gateway(make_host)  # CDS has not pushed the Redis cluster to this worker
    assert host.start_plugin(plugin_config("global_least_request", "higress", redis=3000))
    cids = []
    for _ in range(6):
        cid, action = send(host)
        assert action == CONTINUE and pinned(host, cid) in REPLICAS  # decided locally
        cids.append(cid)
    host.tick()
    warnings = [m for m in host.get_warn_logs() if "not usable yet" in m]
    assert len(warnings) == 1, host.logs_text()  # one line, not one per request
    for cid in cids:
        finish(host, cid)
    assert embedded_inflight(host) == {}

    redis_server.command("CONFIG", "RESETSTAT")
    host.add_cluster(REDIS_CLUSTER, redis_server.address)
    cid, action = send(host)
    assert action == PAUSE  # asking Redis now
    host.run_callouts()
    assert host.is_request_resumed(cid) and redis_inflight(redis_server) == {pinned(host, cid): 1}
    assert decision(host, cid)["state"] == "redis"
    assert redis_calls(redis_server, "eval") == 1  # the pick script
    finish(host, cid)
    host.run_callouts()  # the release
    assert redis_inflight(redis_server) == {}


def test_redis_counts_are_exact_with_envoys_write_buffer(make_host, redis_server):
    clear_redis(redis_server)
    gateways = [start(make_host, "global_least_request", target="higress",
                      redis_server=redis_server) for _ in range(2)]
    for host in gateways:  # one request each first: from then on the pick goes by SHA
        cid, _ = send(host)
        assert redis_round(host, cid)
        finish(host, cid)
        host.run_callouts()
    streams = []
    for i in range(50):  # 50 in flight over 4 replicas, across both gateways
        host = gateways[i % 2]
        cid, action = send(host)
        assert action == PAUSE
        streams.append((host, cid))
    for host in gateways:
        host.run_callouts()
    assert all(host.is_request_resumed(cid) for host, cid in streams)
    assert sorted(redis_inflight(redis_server).values()) == [12, 12, 13, 13]
    assert all(decision(host, cid)["state"] == "redis" for host, cid in streams)
    for i, (host, cid) in enumerate(streams):
        finish(host, cid, respond=i % 5 != 0)
    for host in gateways:
        host.run_callouts()
    assert redis_inflight(redis_server) == {}
    answered = [c for host in gateways for c, _ in host.answered if c.kind == "redis"]
    assert all(c.delivered_at >= c.flush_at for c in answered)  # never before the flush
    held = [c for c in answered if c.flush_at > c.called_at]
    assert held and all(c.flush_at - c.called_at <= 0.0031 for c in held)


def test_noauth_after_a_cluster_update_falls_back_then_logs_in_again(make_host, password_redis):
    clear_redis(password_redis)
    host = start(make_host, "global_least_request", target="higress",
                 redis_address=password_redis.address, password=PASSWORD)
    cid, _ = send(host)
    assert redis_round(host, cid)
    finish(host, cid)
    host.run_callouts()
    assert redis_inflight(password_redis) == {}

    host.update_cluster(REDIS_CLUSTER)  # CDS update: a new client that never logged in
    cid, action = send(host)
    assert action == PAUSE
    assert not redis_round(host, cid)  # NOAUTH: decided on the gateway's own state
    # An ordinary status-0 reply: -NOAUTH, or for a command of more than 10
    # arguments (the pick by SHA) Redis 6+'s protocol error, closing the connection.
    refused = [r for c, r in host.answered if isinstance(r, bytes) and (
        r.startswith(b"-NOAUTH") or b"unauthenticated" in r)]
    assert len(refused) == 1, host.answered
    assert host.redis_client_state(REDIS_CLUSTER)[:2] == (
        True, ("", PASSWORD, 3000, ()))  # the plugin initialised it again
    finish(host, cid)
    assert embedded_inflight(host) == {}

    cid, _ = send(host)
    assert redis_round(host, cid)  # logged in again: Redis decides
    assert redis_inflight(password_redis) == {pinned(host, cid): 1}
    finish(host, cid)
    host.run_callouts()
    assert redis_inflight(password_redis) == {}
    assert host.get_error_logs() == []


def test_an_older_higress_without_upstream_hosts_uses_the_configured_endpoints(make_host):
    host = make_host(target="higress", unimplemented={"proxy_get_upstream_hosts"})
    host.set_property(["xds", "cluster_name"], CLUSTER.encode())
    assert host.start_plugin(plugin_config("global_least_request", "higress",
                                           endpoints=REPLICAS))
    cids = [send(host)[0] for _ in range(5)]
    assert sorted({pinned(host, cid) for cid in cids}) == REPLICAS
    warnings = [m for m in host.get_warn_logs() if "cannot list upstream hosts" in m]
    assert len(warnings) == 1, host.logs_text()  # once per VM
    for cid in cids:
        finish(host, cid)
    assert embedded_inflight(host) == {}


def test_degraded_hosts_serve_only_when_no_healthy_one_is_left(make_host):
    host = start(make_host, "global_least_request", target="higress")
    host.set_upstream_hosts([(REPLICAS[0], {"health_status": "Unhealthy"}),
                             (REPLICAS[1], {"health_status": "Degraded"}),
                             (REPLICAS[2], {"health_status": "Healthy"}),
                             (REPLICAS[3], {})])  # no health status given: Healthy
    assert {pinned(host, send(host)[0]) for _ in range(6)} == {REPLICAS[2], REPLICAS[3]}
    host.set_upstream_hosts([(REPLICAS[0], {"health_status": "Unhealthy"}),
                             (REPLICAS[1], {"health_status": "Degraded"}),
                             (REPLICAS[2], {"health_status": "Unhealthy"})])
    assert {pinned(host, send(host)[0]) for _ in range(3)} == {REPLICAS[1]}
    host.set_upstream_hosts([(r, {"health_status": "Unhealthy"}) for r in REPLICAS])
    cid, action = send(host)
    assert action == CONTINUE and pinned(host, cid) is None  # the service's LB decides


def metrics_text(waiting, running=0):
    return (f"vllm:num_requests_waiting {waiting}\nvllm:num_requests_running {running}\n"
            f"vllm:kv_cache_usage_perc 0.1\n")


def test_metrics_past_64_kib_are_cut_by_the_host(make_host):
    padding = "# " + "p" * 98 + "\n"
    host = make_host(target="higress")
    host.set_property(["xds", "cluster_name"], CLUSTER.encode())
    host.set_upstream_hosts([
        # idle, then 100 KiB of comments: cut mid-line at 64 KiB, still readable
        (REPLICAS[0], {"health_status": "Healthy", "metrics": metrics_text(0) + padding * 1000}),
        (REPLICAS[1], {"health_status": "Healthy", "metrics": metrics_text(10, 8)}),  # busy
        # idle, but its samples come after 70 KiB of comments: the host drops them
        (REPLICAS[2], {"health_status": "Healthy", "metrics": padding * 700 + metrics_text(0)}),
    ])
    assert host.start_plugin(plugin_config("least_busy", "higress"))
    for _ in range(3):
        cid, action = send(host, chat_body("hello"))
        assert action == CONTINUE and pinned(host, cid) == REPLICAS[0], host.logs_text()
        finish(host, cid)
