"""Plugin-facing contexts with no-op defaults. Subclass and override.

A RootContext lives as long as the plugin configuration in one VM (one per
Envoy worker); it makes an HttpContext for every stream.
"""

from . import abi, callouts, hostcalls

# What on_request_headers / on_request_body / ... return.
CONTINUE = 0
PAUSE = 1  # StopIteration: hold the stream until resume_request()/resume_response()
CONTINUE_AND_END_STREAM = 2
STOP_ALL_AND_BUFFER = 3
STOP_ALL_AND_WATERMARK = 4


class Context:
    """What root and HTTP contexts share: their id and callouts."""

    def __init__(self, context_id):
        self.context_id = context_id

    def http_call(self, cluster, header_pairs, body, timeout_ms, on_response, for_stream=None):
        """Starts an HTTP callout. `on_response(num_headers, body_size, num_trailers)`
        later runs with this context effective. `for_stream`: the HttpContext
        paused until this answer (default: this context, if it is a stream);
        should `on_response` raise, the dispatcher resumes it. Returns the token."""
        token = hostcalls.http_call(cluster, header_pairs, body, (), timeout_ms)
        callouts.HTTP.expect(token, callouts.Callout(self, on_response,
                                                     self._waiting(for_stream)))
        return token

    def redis_call(self, cluster, query, on_reply, for_stream=None, timeout_ms=None,
                   on_timeout=None):
        """Sends RESP `query` (Higress only); `on_reply(status, reply_bytes)` runs
        later with this context effective. `for_stream` as for http_call. With
        `timeout_ms`, `on_timeout()` runs once, from a tick, with the stream
        effective, if no answer came by then (a late answer still reaches
        `on_reply`). Whichever of them raises, the waiting stream is resumed.
        Returns the token."""
        token = hostcalls.redis_call(cluster, query)
        deadline = None if timeout_ms is None else hostcalls.now_ns() // 1_000_000 + timeout_ms
        callouts.REDIS.expect(token, callouts.Callout(self, on_reply, self._waiting(for_stream),
                                                      deadline, on_timeout))
        return token

    def _waiting(self, for_stream):
        return for_stream if for_stream is not None else (
            self if isinstance(self, HttpContext) else None)


class HttpContext(Context):
    """One HTTP stream. Callbacks return an action (CONTINUE by default)."""

    # Overridden methods among on_request_body, on_response_headers,
    # on_response_body, on_response_trailers, on_done and on_log that the host
    # should still answer by itself until dispatcher.enable(method), want_once or
    # want_from_now (a stream paused in its request headers has its request body
    # enter Python from then on: the default keeps it paused):
    # a plugin that needs them only for some configurations pays nothing otherwise.
    on_demand = ()

    def __init__(self, context_id, root):
        super().__init__(context_id)
        self.root = root
        self.request_paused = False  # kept by the dispatcher and resume_request()

    def on_request_headers(self, num_headers, end_of_stream):
        return CONTINUE

    def on_request_body(self, body_size, end_of_stream):
        """Default: a request paused in its headers (waiting on a callout) stays paused."""
        return PAUSE if self.request_paused else CONTINUE

    def on_request_trailers(self, num_trailers):
        return PAUSE if self.request_paused else CONTINUE

    def on_response_headers(self, num_headers, end_of_stream):
        return CONTINUE

    def on_response_body(self, body_size, end_of_stream):
        return CONTINUE

    def on_response_trailers(self, num_trailers):
        return CONTINUE

    def on_done(self):
        """The stream is complete; return False to delay its deletion (rare)."""
        return True

    def on_log(self):
        """Last callback with stream data: runs however the stream ended (complete,
        reset, client abort, local reply). Release per-request state here."""

    def on_delete(self):
        """The context is gone; no host calls about its stream any more."""

    def want_once(self, method):
        """This stream's next `method` call (one of `on_demand`) enters Python,
        once, e.g. on_response_body for the first answer byte only: the other
        streams and this one's later chunks cost no Python call. Any callback."""
        abi.enable_callback_once(f"proxy_{method}", self.context_id)

    def want_from_now(self, method):
        """This stream's calls of `method` (one of `on_demand`) enter Python from
        now until it ends. Any callback."""
        abi.enable_callback_for(f"proxy_{method}", self.context_id)

    def wait_for_body(self, limit):
        """Promises that on_request_body answers PAUSE to every chunk that is not
        the last while the body is at most `limit` bytes: the host answers those
        without entering Python. Only from on_request_headers."""
        abi.wait_for_body(self.context_id, limit)

    def resume_request(self):
        """Continues a request paused by returning PAUSE. Safe to call twice."""
        if self.request_paused:
            self.request_paused = False
            hostcalls.continue_stream(hostcalls.STREAM_REQUEST)

    def send_local_response(self, status, body=b"", header_pairs=(), details=""):
        """Answers the client directly (e.g. 429, 503); ends the request."""
        self.request_paused = False
        hostcalls.send_local_response(status, body, header_pairs, details)


class RootContext(Context):
    """The plugin's configuration and everything that outlives one stream."""

    # The HttpContext subclass made for every stream (or override new_http_context).
    # Declaring it lets the shim answer the callbacks it leaves at their defaults
    # without entering Python (dispatcher.handler).
    http_context = None

    def on_vm_start(self, vm_configuration):
        """Once per VM. Return False to fail the VM."""
        return True

    def on_configure(self, configuration):
        """The plugin configuration (bytes). Return False to reject it."""
        return True

    def on_tick(self):
        """The timer set with hostcalls.set_tick_period_ms fired."""

    def on_queue_ready(self, queue_id):
        """A shared queue this VM registered has data."""

    def on_foreign_function(self, function_id, data_size):
        """The host called into the plugin by a foreign function id."""

    def new_http_context(self, context_id):
        """The HttpContext for a new stream; None lets the stream pass untouched."""
        return self.http_context(context_id, self) if self.http_context else None

    def on_done(self):
        return True

    def on_log(self):
        """Unused for root contexts."""

    def on_delete(self):
        """The configuration is gone (replaced or the VM stops)."""
