"""The VM links no Python compiler: the source the standard library compiles
at import was compiled by the build, and anything else raises SystemError with
a message that says so. Natively the same plugin runs with CPython's compiler."""

import json


def test_generated_code_runs_and_new_source_is_refused_clearly(make_host):
    host = make_host(entry="no_compiler_plugin", configuration=b"")
    cid = host.init_http_context()
    host.call_on_request_headers(cid, [(":method", "GET"), (":path", "/"),
                                       (":authority", "svc")], True)
    answer = json.loads(host.get_sent_local_response(cid).body)
    assert answer["dataclass"] == ["Point(x=1, y=5)", True, True]
    assert answer["namedtuple"] == [["left", 3], ["right", 4]]
    assert answer["mangled"] == ["_Ham__spam"]
    for action in ("compile", "exec", "eval"):
        if make_host.mode == "wasm":
            assert "this VM has no Python compiler" in answer[action], answer
        else:
            assert answer[action] is None  # CPython compiles
