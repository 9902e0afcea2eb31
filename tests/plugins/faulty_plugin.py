"""A test plugin that raises on purpose, to prove the SDK's exception boundary.

Configuration (JSON): {"raise_in": "<callback>", "cluster": "<cluster for callouts>"}
where <callback> is one of on_configure, on_request_headers, on_request_body,
on_response_headers, http_call_response, on_log, or "" for none. Every callback
that runs without raising adds its name to the response header x-faulty-ran.
With raise_in == "http_call_response" the request is paused in its headers while
a callout to `cluster` runs, and the callout's callback raises.
"""

import json

from proxywasm import CONTINUE, PAUSE, HttpContext, RootContext, hostcalls, set_root_context


class Boom(RuntimeError):
    """Raised on purpose."""


class FaultyRoot(RootContext):
    raise_in = ""
    cluster = ""

    def on_configure(self, configuration):
        config = json.loads(configuration or b"{}")
        self.raise_in = config.get("raise_in", "")
        self.cluster = config.get("cluster", "")
        if self.raise_in == "on_configure":
            raise Boom("on_configure (on purpose)")
        return True

    def new_http_context(self, context_id):
        return FaultyStream(context_id, self)


class FaultyStream(HttpContext):
    def __init__(self, context_id, root):
        super().__init__(context_id, root)
        self.ran = []

    def _step(self, name):
        if self.root.raise_in == name:
            raise Boom(f"{name} (on purpose)")
        self.ran.append(name)

    def on_request_headers(self, num_headers, end_of_stream):
        self._step("on_request_headers")
        if self.root.raise_in == "http_call_response":
            self.http_call(self.root.cluster, [(":method", "GET"), (":path", "/"),
                                               (":authority", self.root.cluster)],
                           b"", 2000, self._on_callout)
            return PAUSE
        return CONTINUE

    def _on_callout(self, num_headers, body_size, num_trailers):
        self._step("http_call_response")
        self.resume_request()

    def on_request_body(self, body_size, end_of_stream):
        self._step("on_request_body")
        return super().on_request_body(body_size, end_of_stream)  # stays paused for a callout

    def on_response_headers(self, num_headers, end_of_stream):
        self._step("on_response_headers")
        hostcalls.replace_header(hostcalls.RESPONSE_HEADERS, "x-faulty-ran", ",".join(self.ran))
        return CONTINUE

    def on_log(self):
        self._step("on_log")


set_root_context(FaultyRoot)
