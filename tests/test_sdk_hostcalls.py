"""Every SDK host call round-trips through the test host, native and in wasm,
driven by tests/plugins/probe_plugin.py."""

import json

from proxywasm import CONTINUE, PAUSE
from tests.host import resp

PROBE = "probe_plugin"


def probe(make_host, target="envoy", config=None, **options):
    return make_host(entry=PROBE, target=target, configuration=json.dumps(config or {}),
                     **options)


def run_op(host, op, *headers, end_of_stream=False):
    """Sends one request naming `op`; returns (context id, action)."""
    cid = host.init_http_context()
    action = host.call_on_request_headers(
        cid, [(":method", "GET"), (":path", "/"), (":authority", "svc"), ("x-probe-op", op),
              *headers], end_of_stream)
    return cid, action


def result(host, cid):
    return host.get_request_header(cid, "x-probe-result")


# --- shared data --------------------------------------------------------------------

def test_shared_data_cas_increment_is_shared_between_vms(make_host, shared_store):
    first = probe(make_host, shared=shared_store)
    second = probe(make_host, shared=shared_store)
    results = []
    for host in (first, second, first, second):
        cid, _ = run_op(host, "incr", ("x-probe-key", "hits"))
        results.append(result(host, cid))
    assert results == ["1", "2", "3", "4"]
    assert shared_store.data()[b"hits"] == b"4"
    cid, _ = run_op(second, "get", ("x-probe-key", "hits"))
    assert result(second, cid) == "4"


def test_shared_data_stale_cas_raises_cas_mismatch(make_host):
    host = probe(make_host)
    cid, _ = run_op(host, "stale-cas", ("x-probe-key", "k"))
    assert result(host, cid) == "CasMismatch:8;first"
    cid, _ = run_op(host, "get", ("x-probe-key", "never-set"))
    assert result(host, cid) == "absent"


# --- queues ---------------------------------------------------------------------------

def test_enqueue_wakes_the_owner_after_the_callback(make_host):
    host = probe(make_host)
    cid, action = run_op(host, "enqueue", ("x-probe-data", "hello"))
    assert action == CONTINUE
    queue_id, missing = result(host, cid).split(";")
    assert int(queue_id) > 0 and missing == "None"
    assert f"probe: queue {queue_id} gave ['hello']" in host.get_info_logs()


def test_a_queue_of_one_vm_is_fed_by_another(make_host, shared_store):
    first = probe(make_host, shared=shared_store)
    # The second VM registers the same queue name (same vm_id): same id, and the
    # last registration owns it, as in proxy-wasm-cpp-host.
    second = probe(make_host, shared=shared_store)
    cid, _ = run_op(first, "enqueue", ("x-probe-data", "from-first"))
    assert any("from-first" in m for m in second.get_info_logs()), second.logs_text()
    assert not any("from-first" in m for m in first.get_info_logs())
    assert shared_store.queue_items("", b"probe-queue") == []  # the owner drained it


# --- metrics -----------------------------------------------------------------------------

def test_metrics_counter_gauge_histogram(make_host):
    host = probe(make_host)
    for expected in ("1,40", "2,40"):
        cid, _ = run_op(host, "metrics")
        assert result(host, cid) == expected
    assert host.get_counter_metric("probe_requests") == 2
    assert host.get_gauge_metric("probe_gauge") == 40
    assert host.get_histogram_metric("probe_hist") == [7, 7]


def test_tick_period_and_ticks(make_host):
    host = probe(make_host, config={"tick_ms": 250})
    assert host.tick_period_ms == 250
    host.tick()
    host.tick()
    assert host.get_counter_metric("probe_ticks") == 2


# --- properties, time, configuration ----------------------------------------------------

def test_properties_round_trip(make_host):
    host = probe(make_host)
    host.set_property(("xds", "cluster_name"), "outbound|80||llm.svc")
    cid, _ = run_op(host, "property")
    # As measured in Envoy 1.40: a one-segment path set by the plugin reads back,
    # a two-segment one does not; plugin_name is the filter's config name.
    assert result(host, cid) == "outbound|80||llm.svc;one-segment;None;None;ai-load-balancer"
    assert host.get_filter_state(cid, ["probe_state"]) == b"one-segment"
    assert host.get_filter_state(cid, ["probe", "state"]) == b"two-segments"
    assert host.get_property(("probe_state",)) is None  # filter state is per stream


def test_time_log_level_and_vm_configuration(make_host):
    host = make_host(entry=PROBE, log_level=1)
    assert host.start_plugin(b"{}", vm_configuration=b"vm-config-bytes")
    host.now_ns = lambda: 1_700_000_000_123_456_789
    cid, _ = run_op(host, "env")
    assert result(host, cid) == "1700000000123456789;1;vm-config-bytes"


def test_foreign_functions(make_host):
    host = probe(make_host)
    cid, _ = run_op(host, "foreign")
    assert result(host, cid) == "True;True;NotFound"


# --- headers, bodies, trailers, local responses ------------------------------------------

def test_header_map_calls(make_host):
    host = probe(make_host)
    cid, _ = run_op(host, "headers", ("x-probe-remove-me", "1"), ("X-Mixed-Case", "v"))
    headers = host.get_current_request_headers(cid)
    assert result(host, cid) == "6"
    assert [v for k, v in headers if k == "x-probe-added"] == ["a", "b"]
    assert "x-probe-remove-me" not in dict(headers)
    assert dict(headers)["x-mixed-case"] == "v"
    host.call_on_response_headers(cid, [(":status", "200")])
    assert host.get_current_response_headers(cid) == [(":status", "200"),
                                                      ("x-probe-seen", "headers")]


def test_maps_are_out_of_reach_once_let_through(make_host):
    # As measured in Envoy 1.40: after on_request_headers returns CONTINUE the
    # request headers answer BadArgument; on_log reads them (and the response's).
    host = probe(make_host)
    cid, action = run_op(host, "late")
    assert action == CONTINUE
    assert host.call_on_request_body(cid, b"hello", True) == CONTINUE
    assert host.call_on_response_headers(cid, [(":status", "200")]) == CONTINUE
    assert host.get_response_header(cid, "x-probe-late") == "BadArgument"
    host.complete_http_context(cid)
    assert host.get_info_logs()[-2:] == ["probe: body saw x-probe-op=BadArgument",
                                         "probe: on_log saw x-probe-op=late :status=200"]


def test_set_header_map_replaces_everything(make_host):
    host = probe(make_host)
    cid, _ = run_op(host, "set-headers", ("x-a", "one"))
    assert host.get_current_request_headers(cid) == [("x-probe-op", "SET-HEADERS"),
                                                     ("x-a", "ONE")]


def test_body_is_buffered_then_rewritten(make_host):
    host = probe(make_host)
    cid, action = run_op(host, "upper-body")
    assert action == PAUSE
    assert host.call_on_request_body(cid, b"hello ", False) == 3  # StopAllIterationAndBuffer
    assert result(host, cid) is None
    assert host.call_on_request_body(cid, b"world", True) == CONTINUE
    assert result(host, cid) == "11:hello world"
    assert host.get_current_request_body(cid) == b"HELLO WORLD"
    assert host.is_request_resumed(cid)


def test_body_chunks_let_through_are_gone_from_the_buffer(make_host):
    host = probe(make_host)
    cid, _ = run_op(host, "none")
    assert host.call_on_request_body(cid, b"abc", False) == CONTINUE
    assert host.call_on_request_body(cid, b"def", True) == CONTINUE
    assert host.get_current_request_body(cid) == b"abcdef"


def test_trailers(make_host):
    host = probe(make_host)
    cid, _ = run_op(host, "none")
    assert host.call_on_request_trailers(cid, [("grpc-status", "0"), ("x-t", "1")]) == CONTINUE
    assert host.get_current_request_trailers(cid) == [("grpc-status", "0"), ("x-t", "1"),
                                                      ("x-probe-trailers", "2")]


def test_send_local_response(make_host):
    host = probe(make_host)
    cid, action = run_op(host, "local")
    assert action == PAUSE
    local = host.get_sent_local_response(cid)
    assert local.status_code == 418
    assert local.body == b"probe says no"
    assert local.headers == [("x-probe", "teapot")]
    assert local.details == "probe_denied"
    # As in Envoy, the local reply then runs through this plugin's response callbacks.
    assert host.get_current_response_headers(cid) == [
        (":status", "418"), ("x-probe", "teapot"), ("content-length", "13"),
        ("content-type", "text/plain"), ("x-probe-seen", "local")]
    assert host.get_current_response_body(cid) == b"probe says no"
    host.complete_http_context(cid)


# --- HTTP callouts to a real loopback server ---------------------------------------------

def test_http_call_to_a_real_server(make_host, http_server):
    host = probe(make_host, config={"cluster": "backend"},
                 clusters={"backend": http_server.address})
    cid, action = run_op(host, "http")
    assert action == PAUSE
    assert [c.cluster for c in host.pending] == ["backend"]
    assert http_server.requests == []  # nothing goes out before run_callouts
    assert host.run_callouts() == 1
    assert host.is_request_resumed(cid)
    method, path, headers, body = http_server.requests[0]
    assert (method, path, body) == ("POST", "/echo", b"ping")
    assert headers["host"] == "backend" and headers["x-probe-call"] == "1"
    num_headers, status, size, echoed = result(host, cid).split(":", 3)
    assert status == "200" and int(num_headers) >= 2
    assert json.loads(echoed)["server"] == "backend" and int(size) == len(echoed)


def test_http_call_follows_the_override_header(make_host, make_http_server):
    first, second = make_http_server("first"), make_http_server("second")
    host = probe(make_host, config={"cluster": "backend"},
                 clusters={"backend": [first.address, second.address]})
    target = f"{second.address[0]}:{second.address[1]}"
    cid, _ = run_op(host, "http", ("x-probe-target", f"10.9.9.9:1,{target}"))
    host.run_callouts()
    assert first.requests == [] and len(second.requests) == 1
    assert second.requests[0][2]["x-gateway-destination-endpoint"] == f"10.9.9.9:1,{target}"
    assert json.loads(result(host, cid).split(":", 3)[3])["server"] == "second"


def test_http_call_override_outside_the_cluster_falls_back(make_host, http_server):
    host = probe(make_host, config={"cluster": "backend"},
                 clusters={"backend": http_server.address})
    cid, _ = run_op(host, "http", ("x-probe-target", "127.0.0.1:1"))
    host.run_callouts()
    assert len(http_server.requests) == 1  # Envoy: unknown override -> fallback policy
    assert result(host, cid).split(":")[1] == "200"


def test_http_call_error_status_is_a_response(make_host, http_server):
    http_server.route("/missing", status=404, body=b"nope")
    host = probe(make_host, config={"cluster": "backend"},
                 clusters={"backend": http_server.address})
    cid, _ = run_op(host, "http", ("x-probe-path", "/missing"))
    host.run_callouts()
    assert result(host, cid).split(":")[1:] == ["404", "4", "nope"]


def test_http_call_connection_refused_is_a_503_from_envoy(make_host, closed_port):
    host = probe(make_host, config={"cluster": "backend"},
                 clusters={"backend": ("127.0.0.1", closed_port)})
    cid, _ = run_op(host, "http")
    assert host.run_callouts() == 1
    # Measured in Envoy 1.40: the router's local reply, delivered as a response.
    assert result(host, cid) == ("3:503:98:upstream connect error or disconnect/reset before "
                                 "headers. reset reason: remote connection failure")
    assert host.get_request_header(cid, "x-probe-call-headers") == \
        ":status=503,content-length=98,content-type=text/plain"
    assert host.get_request_header(cid, "x-probe-status") == "0:"
    assert host.is_request_resumed(cid)


def test_http_call_timeout_is_a_504_from_envoy(make_host, http_server):
    http_server.route("/slow", delay_s=1.0)
    host = probe(make_host, config={"cluster": "backend"},
                 clusters={"backend": http_server.address})
    cid, _ = run_op(host, "http", ("x-probe-path", "/slow"), ("x-probe-timeout", "100"))
    host.run_callouts()
    assert result(host, cid) == "3:504:24:upstream request timeout"
    method, path, headers, body = http_server.requests[0]
    assert headers["x-envoy-expected-rq-timeout-ms"] == "100"


def test_http_call_broken_mid_body_is_a_failure(make_host, http_server):
    http_server.route("/cut", body=b"0123456789", content_length=100)
    host = probe(make_host, config={"cluster": "backend"},
                 clusters={"backend": http_server.address})
    cid, _ = run_op(host, "http", ("x-probe-path", "/cut"))
    host.run_callouts()
    # Envoy's onHttpCallFailure: no headers, no body; proxy_get_status says why.
    assert result(host, cid) == "0:None:0:"
    assert host.get_request_header(cid, "x-probe-status") == "11:reset"  # BrokenConnection
    assert host.is_request_resumed(cid)
    cid, _ = run_op(host, "http")
    host.run_callouts()
    assert result(host, cid).split(":")[1] == "200"
    assert host.get_request_header(cid, "x-probe-status") == "11:"  # Envoy keeps the code


def test_http_call_to_an_unknown_cluster_fails_at_once(make_host):
    host = probe(make_host)
    cid, _ = run_op(host, "bad-call")
    assert result(host, cid) == "HostError:2"  # BadArgument, as Envoy answers
    assert host.pending == []


def test_http_call_answer_injected_without_network(make_host):
    host = probe(make_host, config={"cluster": "backend"}, clusters={"backend": ("0.0.0.0", 9)})
    cid, _ = run_op(host, "http")
    [callout] = host.pending
    host.call_on_http_call_response(callout.token, [(":status", "503")], b"busy")
    assert result(host, cid) == "1:503:4:busy"
    assert host.pending == []


# --- Higress-only calls --------------------------------------------------------------------

def test_higress_functions_absent_in_envoy_target(make_host):
    host = probe(make_host, target="envoy")
    cid, _ = run_op(host, "has")
    assert result(host, cid) == ("proxy_get_upstream_hosts=0,proxy_set_upstream_override_host=0,"
                                 "proxy_redis_init=0,proxy_redis_call=0")


def test_higress_functions_present_in_higress_target(make_host):
    host = probe(make_host, target="higress")
    cid, _ = run_op(host, "has")
    assert result(host, cid) == ("proxy_get_upstream_hosts=1,proxy_set_upstream_override_host=1,"
                                 "proxy_redis_init=1,proxy_redis_call=1")


def test_upstream_hosts(make_host):
    host = probe(make_host, target="higress")
    cid, _ = run_op(host, "upstream-hosts")
    assert result(host, cid) == ""  # none known: the SDK reads NotFound as []
    host.set_upstream_hosts([("10.0.0.1:8000", '{"healthy": true}'),
                             ("10.0.0.2:8000", '{"healthy": false}')])
    cid, _ = run_op(host, "upstream-hosts")
    assert result(host, cid) == "10.0.0.1:8000=True;10.0.0.2:8000=False"


# --- stream control, contexts, VMs -------------------------------------------------------

def test_close_stream_is_recorded(make_host):
    host = probe(make_host)
    cid, _ = run_op(host, "close")
    assert host.get_close_records(cid) == [0]


def test_effective_context_must_exist(make_host):
    host = probe(make_host)
    cid, _ = run_op(host, "bad-effective-context")
    assert result(host, cid) == "2"  # BadArgument


def test_each_host_is_a_fresh_vm(make_host):
    first, second = probe(make_host), probe(make_host)
    for _ in range(3):
        cid, _ = run_op(first, "vm-count")
    assert result(first, cid) == "3"
    cid, _ = run_op(second, "vm-count")
    assert result(second, cid) == "1"
    cid, _ = run_op(first, "vm-count")
    assert result(first, cid) == "4"
    first.stop_plugin()
    assert first.get_error_logs() == [] and second.get_error_logs() == []


# --- Redis callouts to a real redis-server (Higress) -----------------------------------------

def redis_probe(make_host, redis_server, cluster="redis", **config):
    return probe(make_host, target="higress",
                 config={"redis_cluster": cluster, **config},
                 clusters={"redis": redis_server.address})


def redis_op(host, *args):
    cid, action = run_op(host, "redis", ("x-probe-redis", json.dumps(args)))
    assert action == PAUSE
    assert host.run_callouts() == 1
    assert host.is_request_resumed(cid)
    status, reply = result(host, cid).split(":")
    return int(status), bytes.fromhex(reply)


def test_redis_incr(make_host, redis_server, request):
    key = f"ailb:test:{request.node.name}"
    redis_server.command("DEL", key)
    host = redis_probe(make_host, redis_server)
    assert redis_op(host, "INCR", key) == (0, b":1\r\n")
    assert redis_op(host, "INCRBY", key, "41") == (0, b":42\r\n")
    assert redis_server.command("GET", key) == b"$2\r\n42\r\n"


def test_redis_nested_and_large_replies(make_host, redis_server, request):
    key = f"ailb:test:{request.node.name}"
    big = "x" * 200_000
    redis_server.command("SET", key, big)
    host = redis_probe(make_host, redis_server)
    status, reply = redis_op(host, "GET", key)
    assert status == 0 and resp.parse(reply) == big.encode()
    status, reply = redis_op(host, "EVAL", "return {1, {2, {'three', {}}}, 'x'}", "0")
    assert status == 0 and resp.parse(reply) == [1, [2, [b"three", []]], b"x"]
    status, reply = redis_op(host, "NOSUCHCOMMAND")
    assert status == 0 and reply.startswith(b"-ERR")


def test_redis_auth_and_database(make_host, redis_server, request):
    key = f"ailb:test:{request.node.name}"
    redis_server.command("DEL", key, db=3)
    host = redis_probe(make_host, redis_server, cluster="redis?db=3",
                       redis_username=redis_server.USERNAME,
                       redis_password=redis_server.PASSWORD)
    assert redis_op(host, "SET", key, "in-db-3") == (0, b"+OK\r\n")
    assert redis_server.command("GET", key, db=3) == b"$7\r\nin-db-3\r\n"
    assert redis_server.command("EXISTS", key) == b":0\r\n"


def test_redis_wrong_password_is_silent(make_host, redis_server):
    # Higress ignores the AUTH reply (raw_client_impl.cc): the connection stays
    # the default user's, which on this server needs no password.
    host = redis_probe(make_host, redis_server, redis_username=redis_server.USERNAME,
                       redis_password="wrong")
    assert redis_op(host, "PING") == (0, b"+PONG\r\n")


def test_redis_unreachable_is_a_network_error(make_host, closed_port):
    host = probe(make_host, target="higress", config={"redis_cluster": "redis"},
                 clusters={"redis": ("127.0.0.1", closed_port)})
    assert redis_op(host, "PING") == (1, b"")


def test_redis_init_of_an_unknown_cluster_is_rejected(make_host, redis_server):
    host = make_host(entry=PROBE, target="higress", clusters={"redis": redis_server.address})
    # The probe's on_configure raises on the BadArgument: the SDK logs it and
    # keeps the VM up (configure still succeeds, streams pass through).
    assert host.start_plugin(json.dumps({"redis_cluster": "nope"}))
    assert any("BadArgument" in m for m in host.get_error_logs()), host.logs_text()


def test_redis_init_with_a_bad_db_is_accepted(make_host, redis_server):
    # Higress checks only the base cluster; its `SELECT x` fails silently.
    host = redis_probe(make_host, redis_server, cluster="redis?db=x")
    assert not host.get_error_logs(), host.logs_text()
    assert redis_op(host, "PING") == (0, b"+PONG\r\n")
