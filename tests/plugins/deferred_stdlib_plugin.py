"""The load balancer, plus an answer to GET /deferred: which of the standard
modules lazy_stdlib defers have run so far (JSON {name: ran}), after the path
/deferred?use asks for inspect.signature first."""

import json
import sys

import ai_load_balancer.main  # noqa: F401  registers the plugin
from lazy_stdlib import DEFERRED
from proxywasm import dispatcher, hostcalls

_headers = dispatcher.proxy_on_request_headers


def proxy_on_request_headers(context_id, num_headers, end_of_stream):
    path = hostcalls.get_header(hostcalls.REQUEST_HEADERS, ":path") or ""
    if not path.startswith("/deferred"):
        return _headers(context_id, num_headers, end_of_stream)
    signature = str(sys.modules["inspect"].signature(json.dumps)) if "use" in path else ""
    ran = {name: name in sys.modules and not hasattr(type(sys.modules[name]), "__getattr__")
           for name in sorted(DEFERRED)}
    hostcalls.send_local_response(200, json.dumps({"ran": ran, "signature": signature}), [], "")
    return 1


dispatcher.proxy_on_request_headers = proxy_on_request_headers
