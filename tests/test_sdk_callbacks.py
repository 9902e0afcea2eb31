"""Callbacks a plugin leaves at the SDK's default are answered by the host side
(the shim in wasm) without entering Python; callbacks it overrides still run.
A streamed answer is hundreds of response-body chunks: each one entering the VM
cost Envoy ~20 us of CPU."""

import json

from proxywasm import CONTINUE
from tests.llm_traffic import embedded_inflight

ANSWERED_BY_HOST = ["proxy_on_request_body", "proxy_on_response_headers",
                    "proxy_on_response_body", "proxy_on_response_trailers", "proxy_on_done",
                    "proxy_on_log"]
CHUNKS = [b"data: {\"n\": %d}\n\n" % i for i in range(5)]


def answered_without_python(host, make_host):
    """The callbacks the VM answers without Python: the shim's start-up line in wasm,
    the dispatcher's handler table natively."""
    if make_host.mode == "wasm":
        lines = [m for m in host.get_debug_logs() if "answered without python:" in m]
        assert len(lines) == 1, host.logs_text()
        return lines[0].split("answered without python:")[1].split()
    return host.plugin.answered_without_python()


def stream_answer(host):
    """One request whose answer comes in CHUNKS; every callback's action checked."""
    cid = host.init_http_context()
    assert host.call_on_request_headers(cid, [(":method", "POST"), (":path", "/v1/x"),
                                              (":authority", "svc")], False) == CONTINUE
    assert host.call_on_request_body(cid, b'{"prompt": "hi"}', True) == CONTINUE
    assert host.call_on_response_headers(cid, [(":status", "200")], False) == CONTINUE
    for i, chunk in enumerate(CHUNKS):
        assert host.call_on_response_body(cid, chunk, i == len(CHUNKS) - 1) == CONTINUE
    host.complete_http_context(cid)
    return cid


def test_load_balancer_leaves_the_response_and_the_end_to_the_host(make_host):
    host = make_host(configuration=json.dumps({"lb_policy": "round_robin", "lb_config": {
        "endpoints": ["10.0.0.1:80", "10.0.0.2:80"]}}))
    assert answered_without_python(host, make_host) == ANSWERED_BY_HOST
    for _ in range(3):
        stream_answer(host)
    assert host.get_error_logs() == [], host.logs_text()


def test_an_overridden_response_body_still_runs_for_every_chunk(make_host):
    host = make_host(entry="chunk_plugin", configuration=b"")
    assert answered_without_python(host, make_host) == ["proxy_on_request_body",
                                                        "proxy_on_response_headers",
                                                        "proxy_on_response_trailers",
                                                        "proxy_on_done"]
    stream_answer(host)
    assert f"chunks={len(CHUNKS)} last_size={len(CHUNKS[-1])}" in host.logs_text()


def test_want_once_brings_one_streams_first_chunk_only_into_python(make_host):
    host = make_host(entry="once_plugin", configuration=b"")
    assert "proxy_on_response_body" in answered_without_python(host, make_host)
    for once in (True, False, True):
        cid = host.init_http_context()
        headers = [(":method", "GET"), (":path", "/"), (":authority", "svc")]
        host.call_on_request_headers(cid, headers + ([("x-once", "1")] if once else []), True)
        host.call_on_response_headers(cid, [(":status", "200")], False)
        for i, chunk in enumerate(CHUNKS):
            assert host.call_on_response_body(cid, chunk, i == len(CHUNKS) - 1) == CONTINUE
        host.complete_http_context(cid)
        assert f"stream {cid}: chunks={1 if once else 0}" in host.logs_text()
    # A stream that asked and got no answer body: forgotten with its context.
    cid = host.init_http_context()
    host.call_on_request_headers(cid, [(":method", "GET"), (":path", "/"),
                                       (":authority", "svc"), ("x-once", "1")], True)
    host.complete_http_context(cid)
    assert f"stream {cid}: chunks=0" in host.logs_text()
    assert host.get_error_logs() == [], host.logs_text()


def test_a_stream_waiting_for_its_body_enters_python_at_the_last_chunk(make_host):
    """wait_for_body: the chunks before the last are paused (buffered) by the
    host side; the last one, or the one that takes the body over the limit,
    enters Python. Without it every chunk does."""
    host = make_host(entry="body_wait_plugin", configuration=b"")
    chunk, pause = b"x" * 100, 1
    for limit, expected in ((None, 4), ("1000", 1), ("250", 2)):
        cid = host.init_http_context()
        headers = [(":method", "POST"), (":path", "/"), (":authority", "svc")]
        host.call_on_request_headers(cid, headers + ([("x-wait-limit", limit)] if limit else []),
                                     False)
        actions = [host.call_on_request_body(cid, chunk, i == 3) for i in range(4)]
        # Every chunk before the last is paused, whoever answered; the last goes on
        # (with limit 250 the third chunk, 300 bytes, entered Python and went on).
        assert actions == ([pause, pause, 0, 0] if limit == "250" else [pause] * 3 + [0])
        host.complete_http_context(cid)
        assert f"stream {cid}: body chunks={expected}" in host.logs_text(), host.logs_text()
    assert host.get_error_logs() == [], host.logs_text()


def test_request_body_enters_python_only_for_a_stream_paused_in_its_headers(make_host):
    """on_request_body on demand: a stream that went on from its headers has its
    body chunks answered by the host (Continue); one paused there has every
    chunk enter Python from then on (the SDK default keeps it paused), and once
    resumed they go on."""
    host = make_host(entry="paused_body_plugin", configuration=b"")
    assert "proxy_on_request_body" in answered_without_python(host, make_host)
    chunk, pause = b"x" * 10, 1
    for paused, expected, seen in ((False, [0, 0, 0, 0], 0), (True, [pause, 0, 0, 0], 4)):
        cid = host.init_http_context()
        headers = [(":method", "POST"), (":path", "/"), (":authority", "svc")]
        host.call_on_request_headers(cid, headers + ([("x-pause", "1")] if paused else []),
                                     False)
        # The plugin resumes the stream at the second chunk (as a callout's answer would).
        assert [host.call_on_request_body(cid, chunk, i == 3) for i in range(4)] == expected
        host.complete_http_context(cid)
        assert f"stream {cid}: body chunks={seen}" in host.logs_text(), host.logs_text()
    assert host.get_error_logs() == [], host.logs_text()


def test_a_hundred_streams_waiting_at_once_each_enter_python_at_their_last_chunk(make_host):
    """The shim's per-stream lists grow past their first 64 entries."""
    host = make_host(entry="body_wait_plugin", configuration=b"")
    headers = [(":method", "POST"), (":path", "/"), (":authority", "svc"),
               ("x-wait-limit", "1000")]
    streams = [host.init_http_context() for _ in range(100)]
    for cid in streams:
        host.call_on_request_headers(cid, headers, False)
        assert host.call_on_request_body(cid, b"x" * 10, False) == 1
    for cid in streams:
        assert host.call_on_request_body(cid, b"x" * 10, True) == 0
        host.complete_http_context(cid)
        assert f"stream {cid}: body chunks=1" in host.logs_text()
    assert host.get_error_logs() == [], host.logs_text()


def test_a_hundred_decided_streams_at_once_all_end_in_python(make_host):
    """Each decided stream's response headers and end enter Python once (the
    shim's once-list past 64 entries); every count is released."""
    host = make_host(configuration=json.dumps({"lb_policy": "least_connections", "lb_config": {
        "endpoints": ["10.0.0.1:80", "10.0.0.2:80"], "debugHeader": True}}))
    streams = [host.init_http_context() for _ in range(100)]
    for cid in streams:
        host.call_on_request_headers(cid, [(":method", "GET"), (":path", "/"),
                                           (":authority", "svc")], True)
    for cid in streams:
        host.call_on_response_headers(cid, [(":status", "200")], True)
        assert host.get_response_header(cid, "x-ailb-decision")  # entered Python
        host.complete_http_context(cid)
    assert embedded_inflight(host) == {}
    assert host.get_error_logs() == [], host.logs_text()
