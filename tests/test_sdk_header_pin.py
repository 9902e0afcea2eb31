"""The `header` policy of ai_load_balancer.main, native and in wasm: a request
header names the endpoint; the plugin pins the request to it the way the target
host understands (Envoy: the override_host header; Higress: the host call)."""

import pytest

from proxywasm import CONTINUE

OVERRIDE = "x-gateway-destination-endpoint"
CONFIG = b'{"lb_policy": "header"}'


def request(*extra):
    return [(":method", "POST"), (":path", "/v1/chat/completions"), (":authority", "llm"),
            ("content-type", "application/json"), *extra]


def values(pairs, name):
    return [v for k, v in pairs if k == name]


def test_envoy_pins_with_the_override_header(make_host):
    host = make_host(target="envoy", configuration=CONFIG)
    cid = host.init_http_context()
    action = host.call_on_request_headers(cid, request(("x-ailb-endpoint", "10.0.0.1:80")))
    assert action == CONTINUE
    headers = host.get_current_request_headers(cid)
    assert values(headers, OVERRIDE) == ["10.0.0.1:80"]
    assert host.get_override_host(cid) is None
    host.complete_http_context(cid)
    assert host.get_error_logs() == []


def test_higress_pins_with_the_host_call_and_no_header(make_host):
    host = make_host(target="higress", configuration=CONFIG)
    cid = host.init_http_context()
    action = host.call_on_request_headers(cid, request(("x-ailb-endpoint", " 10.0.0.1:80 ")))
    assert action == CONTINUE
    assert host.get_override_host(cid) == "10.0.0.1:80"
    assert values(host.get_current_request_headers(cid), OVERRIDE) == []
    host.complete_http_context(cid)


@pytest.mark.parametrize("target", ["envoy", "higress"])
def test_a_client_sent_override_header_is_removed(make_host, target):
    host = make_host(target=target, configuration=CONFIG)
    cid = host.init_http_context()
    host.call_on_request_headers(cid, request((OVERRIDE, "6.6.6.6:6666"),
                                              ("X-Gateway-Destination-Endpoint", "7.7.7.7:7")))
    headers = host.get_current_request_headers(cid)
    assert values(headers, OVERRIDE) == []
    assert host.get_override_host(cid) is None
    # The rest of the request is untouched.
    assert headers == request()


def test_a_client_override_is_replaced_by_the_pinned_endpoint(make_host):
    host = make_host(target="envoy", configuration=CONFIG)
    cid = host.init_http_context()
    host.call_on_request_headers(cid, request((OVERRIDE, "6.6.6.6:6666"),
                                              ("x-ailb-endpoint", "10.0.0.2:8000")))
    assert values(host.get_current_request_headers(cid), OVERRIDE) == ["10.0.0.2:8000"]


def test_the_header_name_is_configurable(make_host):
    host = make_host(configuration=b'{"lb_policy": "header", "lb_config": {"header": "X-Pin"}}')
    cid = host.init_http_context()
    host.call_on_request_headers(cid, request(("x-pin", "10.0.0.3:80"),
                                              ("x-ailb-endpoint", "10.0.0.9:80")))
    assert values(host.get_current_request_headers(cid), OVERRIDE) == ["10.0.0.3:80"]


def test_many_streams_in_one_vm(make_host):
    host = make_host(configuration=CONFIG)
    cids = [host.init_http_context() for _ in range(5)]
    for i, cid in enumerate(cids):
        host.call_on_request_headers(cid, request(("x-ailb-endpoint", f"10.0.0.{i}:80")))
    for i, cid in enumerate(cids):
        assert values(host.get_current_request_headers(cid), OVERRIDE) == [f"10.0.0.{i}:80"]
        host.complete_http_context(cid)


@pytest.mark.parametrize("configuration, field", [
    (b'{"lb_policy": "nope"}', "lb_policy"),
    (b'{"lb_policy": "header", "lb_config": []}', "lb_config"),
    (b'{"lb_policy": "header", "lb_config": {"header": ""}}', "lb_config.header"),
    (b'{"lb_config": {"header": "x-replica"}}', "lb_policy: required"),
    (b'{"lb_policy": ', "JSON"),
    (b"lb_policy: header", "JSON"),
], ids=["unknown-policy", "lb_config-not-object", "empty-header", "no-policy", "truncated-json",
         "yaml"])
def test_an_invalid_configuration_is_rejected_and_named(make_host, configuration, field):
    host = make_host()
    assert host.start_plugin(configuration) is False
    errors = host.get_error_logs()
    assert len(errors) == 1, host.logs_text()
    assert "invalid configuration" in errors[0] and field in errors[0]
