"""The SDK's exception boundary, native and in wasm: a plugin that raises never
traps the VM, logs a traceback, and lets the request go on untouched."""

import json

import pytest

from proxywasm import CONTINUE, PAUSE

RAISING_CALLBACKS = ["on_request_headers", "on_request_body", "on_response_headers",
                     "http_call_response", "on_log"]
# What x-faulty-ran says when the callback raised: the stream is passed through
# from the first failure on, so on_response_headers no longer runs.
RAN = {"": "on_request_headers,on_request_body,on_response_headers",
       "on_request_headers": None, "on_request_body": None, "on_response_headers": None,
       "http_call_response": None,
       "on_log": "on_request_headers,on_request_body,on_response_headers"}


def start(make_host, http_server, raise_in):
    host = make_host(entry="faulty_plugin", clusters={"backend": http_server.address})
    assert host.start_plugin(json.dumps({"raise_in": raise_in, "cluster": "backend"}))
    return host


def run_request(host, raise_in):
    """One whole request; returns its context id after checking every action."""
    cid = host.init_http_context()
    action = host.call_on_request_headers(cid, [(":method", "POST"), (":path", "/x"),
                                                (":authority", "svc")])
    if raise_in == "http_call_response":
        assert action == PAUSE
        assert not host.is_request_resumed(cid)
        assert host.run_callouts() == 1
        assert host.is_request_resumed(cid), host.logs_text()
    else:
        assert action == CONTINUE
    assert host.call_on_request_body(cid, b'{"prompt": "hi"}', True) == CONTINUE
    assert host.call_on_response_headers(cid, [(":status", "200")]) == CONTINUE
    assert host.get_sent_local_response(cid) is None
    host.complete_http_context(cid)
    return cid


def boom_logs(host, name):
    return [m for m in host.get_error_logs() if "Traceback" in m and "Boom" in m and name in m]


def test_no_fault_runs_every_callback(make_host, http_server):
    host = start(make_host, http_server, "")
    cid = run_request(host, "")
    assert dict(host.get_current_response_headers(cid))["x-faulty-ran"] == RAN[""]
    assert host.get_error_logs() == []


@pytest.mark.parametrize("raise_in", RAISING_CALLBACKS)
def test_a_raising_callback_fails_open_and_the_vm_keeps_serving(make_host, http_server,
                                                                raise_in):
    host = start(make_host, http_server, raise_in)
    for attempt in (1, 2):  # raise_in applies to every request: both fail open alike
        cid = run_request(host, raise_in)
        assert dict(host.get_current_response_headers(cid)).get("x-faulty-ran") == RAN[raise_in]
        assert len(boom_logs(host, raise_in)) == attempt, host.logs_text()
    if raise_in == "http_call_response":
        assert len(http_server.requests) == 2  # the callouts really went out
    error = boom_logs(host, raise_in)[0]
    assert error.startswith("plugin error in ")
    assert f"Boom: {raise_in} (on purpose)" in error
    assert "faulty_plugin.py" in error  # the traceback names the plugin's frames


def test_a_raising_on_configure_still_starts_and_passes_streams_through(make_host, http_server):
    host = start(make_host, http_server, "on_configure")
    [error] = boom_logs(host, "on_configure")
    assert "plugin error in on_configure" in error
    request = [(":method", "GET"), (":path", "/"), (":authority", "svc"), ("x-a", "1")]
    for _ in range(2):
        cid = host.init_http_context()
        assert host.call_on_request_headers(cid, request) == CONTINUE
        assert host.call_on_request_body(cid, b"body", True) == CONTINUE
        assert host.call_on_response_headers(cid, [(":status", "200")]) == CONTINUE
        host.complete_http_context(cid)
        assert host.get_current_request_headers(cid) == request
        assert host.get_current_response_headers(cid) == [(":status", "200")]
        assert host.get_current_request_body(cid) == b"body"
    assert len(host.get_error_logs()) == 1
