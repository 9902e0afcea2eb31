"""A test plugin that waits for the whole request body: with `x-wait-limit: N`
it promises (wait_for_body) to pause every chunk before the last while the
body is at most N bytes; it pauses them either way, and on_log says how many
chunks reached Python."""

from proxywasm import CONTINUE, PAUSE, HttpContext, RootContext, hostcalls, set_root_context


class BodyWaitStream(HttpContext):
    chunks = 0
    limit = 1 << 40

    def on_request_headers(self, num_headers, end_of_stream):
        limit = hostcalls.get_header(hostcalls.REQUEST_HEADERS, "x-wait-limit")
        if limit:
            self.limit = int(limit)
            self.wait_for_body(self.limit)
        return PAUSE

    def on_request_body(self, body_size, end_of_stream):
        self.chunks += 1
        return CONTINUE if end_of_stream or body_size > self.limit else PAUSE

    def on_log(self):
        hostcalls.log(hostcalls.INFO, f"stream {self.context_id}: body chunks={self.chunks}")


class BodyWaitRoot(RootContext):
    http_context = BodyWaitStream


set_root_context(BodyWaitRoot)
