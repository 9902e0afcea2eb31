"""In the VM, the standard modules the plugin imports but does not use (inspect,
and ast, dis and tokenize under it) do not run at start: per VM that is
about 0.65 MB of heap and their start-up time. They still work when used."""

import json

import pytest

from tests.llm_traffic import plugin_config


def deferred(host, path):
    cid = host.init_http_context()
    host.call_on_request_headers(cid, [(":method", "GET"), (":path", path),
                                       (":authority", "svc")], True)
    answer = host.get_sent_local_response(cid)
    host.complete_http_context(cid)
    return json.loads(answer.body)


@pytest.mark.parametrize("host_mode", ["wasm"], indirect=True)  # the shim installs it
def test_unused_standard_modules_run_only_when_used(make_host):
    host = make_host(entry="deferred_stdlib_plugin", configuration=plugin_config("prefix_cache"))
    before = deferred(host, "/deferred")
    assert before["ran"] == {"ast": False, "dis": False, "inspect": False, "tokenize": False}
    used = deferred(host, "/deferred?use")
    assert used["signature"].startswith("(obj, *, skipkeys=False, ensure_ascii=True, ")
    assert used["ran"]["inspect"] and used["ran"]["ast"] and used["ran"]["dis"]
    assert host.get_error_logs() == [], host.logs_text()
