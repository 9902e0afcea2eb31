"""lb_policy endpoint_hash (Higress's session affinity, PR #3967): a session key
is bound to the replica that answered it and stays there while that replica
is usable, also when replicas join. Embedded and Redis state, both targets,
native and wasm."""

import pytest

from ai_load_balancer import config
from proxywasm import resp
from tests.llm_traffic import CLUSTER, REPLICAS, clear_redis, pinned, start

KEY = "x-mse-consumer"


def request(host, session, served, status="200"):
    """One request of `session`, answered by `served` (the replica Envoy's
    load balancing chose when the plugin pinned none); returns where the
    plugin pinned it."""
    cid = host.init_http_context()
    headers = [(":method", "GET"), (":path", "/v1/models"), (":authority", "vllm")]
    if session is not None:
        headers.append((KEY, session))
    host.call_on_request_headers(cid, headers, end_of_stream=True)
    host.run_callouts()
    where = pinned(host, cid)
    host.set_property(["upstream", "address"], where or served, context_id=cid)
    host.call_on_response_headers(cid, [(":status", status)], end_of_stream=True)
    host.complete_http_context(cid)
    host.run_callouts()
    return where


def decisions(host, label):
    return host.get_counter_metric(f"ailb.decisions.endpoint_hash.{label}") or 0


# --- configuration ---------------------------------------------------------------------

def test_the_higress_pull_requests_example_config_is_accepted():
    cfg, warnings = config.parse_doc({"lb_type": "endpoint", "lb_policy": "endpoint_hash",
                                      "lb_config": {"hash_header": "X-MSE-Consumer",
                                                    "stickyTimeout": "60",
                                                    "serviceFQDN": "redis.static",
                                                    "servicePort": 6379, "username": "default",
                                                    "password": "123456"}})
    assert warnings == []
    assert (cfg.hash_key, cfg.sticky_ttl_s) == (("header", "x-mse-consumer"), 3600)
    assert cfg.redis.cluster == "outbound|6379||redis.static"


def test_fields_it_does_not_read_warn_and_a_zero_timeout_is_an_error():
    _, warnings = config.parse_doc({"lb_policy": "endpoint_hash", "lb_config": {
        "picker": "random", "hashKey": {"header": "x-session-id"}}})
    assert [w.split(":")[0] for w in warnings] == ["lb_config.hashKey", "lb_config.picker"]
    with pytest.raises(config.ConfigError, match=r"^lb_config\.stickyTimeout: "):
        config.parse_doc({"lb_policy": "endpoint_hash", "lb_config": {"stickyTimeout": 0}})


# --- embedded -------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["envoy", "higress"])
def test_a_new_session_is_placed_by_the_service_then_stays_on_its_replica(make_host, target):
    host = start(make_host, "endpoint_hash", target=target)
    homes = {f"user-{i}": REPLICAS[i % 4] for i in range(12)}
    assert [request(host, s, home) for s, home in homes.items()] == [None] * 12
    again = {s: request(host, s, "10.9.9.9:1") for s in homes}
    assert again == homes  # each pinned to the replica that answered it first
    assert (decisions(host, "new"), decisions(host, "sticky")) == (12, 12)
    assert request(host, None, REPLICAS[0]) is None  # no key: the service decides
    assert decisions(host, "no_key") == 1
    assert host.get_error_logs() == []


def test_sessions_stay_when_a_replica_joins_and_move_when_theirs_is_gone(make_host):
    host = start(make_host, "endpoint_hash", target="higress")
    homes = {f"user-{i}": REPLICAS[i % 4] for i in range(20)}
    for session, home in homes.items():
        request(host, session, home)
    host.set_upstream_hosts([(r, {"health_status": "Healthy"})
                             for r in REPLICAS + ["10.0.0.5:8000"]])
    assert {s: request(host, s, "10.0.0.5:8000") for s in homes} == homes
    gone = REPLICAS[0]
    host.set_upstream_hosts([(r, {"health_status": "Unhealthy" if r == gone else "Healthy"})
                             for r in REPLICAS])
    moved = [s for s, home in homes.items() if home == gone]
    assert [request(host, s, REPLICAS[1]) for s in moved] == [None] * len(moved)
    assert decisions(host, "moved") == len(moved)
    assert [request(host, s, "10.9.9.9:1") for s in moved] == [REPLICAS[1]] * len(moved)


def test_a_failed_answer_does_not_bind(make_host):
    host = start(make_host, "endpoint_hash")
    request(host, "alice", REPLICAS[2], status="503")
    assert request(host, "alice", REPLICAS[3]) is None  # still new: placed again
    assert request(host, "alice", REPLICAS[0]) == REPLICAS[3]


# --- Redis ------------------------------------------------------------------------------

def test_redis_binds_a_session_for_every_gateway(make_host, redis_server):
    clear_redis(redis_server)
    one, two = (start(make_host, "endpoint_hash", target="higress", redis_server=redis_server,
                      stickyTimeout=2) for _ in range(2))
    assert request(one, "alice", REPLICAS[1]) is None
    assert request(two, "alice", REPLICAS[2]) == REPLICAS[1]  # the other gateway knows it
    keys = resp.reply(redis_server.command("KEYS", f"ailb:{{{CLUSTER}}}:s:*"))
    assert len(keys) == 1 and b"alice" not in keys[0]  # named by a hash, not the key
    assert resp.reply(redis_server.command("GET", keys[0])) == REPLICAS[1].encode()
    assert 60 < resp.reply(redis_server.command("TTL", keys[0])) <= 120
    assert decisions(two, "sticky") == 1
    assert one.get_error_logs() == two.get_error_logs() == []


def test_without_redis_sessions_stick_on_the_gateways_own_table(make_host):
    host = start(make_host, "endpoint_hash", target="higress",
                 redis_address=("127.0.0.1", 1), timeout=50)
    assert request(host, "bob", REPLICAS[3]) is None
    assert request(host, "bob", REPLICAS[0]) == REPLICAS[3]
    assert "deciding on the gateway's own state" in host.logs_text()
    assert host.get_error_logs() == []
