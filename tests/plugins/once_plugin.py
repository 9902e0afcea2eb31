"""A test plugin that leaves on_response_body to the host (on_demand) and asks
for one stream's first answer chunk (want_once) when its request carries
`x-once`; on_log says how many chunks reached Python."""

from proxywasm import CONTINUE, HttpContext, RootContext, hostcalls, set_root_context


class OnceStream(HttpContext):
    on_demand = ("on_response_body",)
    chunks = 0

    def on_request_headers(self, num_headers, end_of_stream):
        if hostcalls.get_header(hostcalls.REQUEST_HEADERS, "x-once"):
            self.want_once("on_response_body")
        return CONTINUE

    def on_response_body(self, body_size, end_of_stream):
        self.chunks += 1
        return CONTINUE

    def on_log(self):
        hostcalls.log(hostcalls.INFO, f"stream {self.context_id}: chunks={self.chunks}")


class OnceRoot(RootContext):
    http_context = OnceStream


set_root_context(OnceRoot)
