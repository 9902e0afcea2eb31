"""A test plugin with on_request_body on demand: with `x-pause` its request
headers pause the stream, and its second body chunk resumes it (as a callout's
answer would); on_log says how many body chunks reached Python."""

from proxywasm import CONTINUE, PAUSE, HttpContext, RootContext, hostcalls, set_root_context


class PausedBodyStream(HttpContext):
    on_demand = ("on_request_body",)
    chunks = 0

    def on_request_headers(self, num_headers, end_of_stream):
        return PAUSE if hostcalls.get_header(hostcalls.REQUEST_HEADERS, "x-pause") else CONTINUE

    def on_request_body(self, body_size, end_of_stream):
        self.chunks += 1
        if self.chunks == 2:
            self.resume_request()
        return super().on_request_body(body_size, end_of_stream)

    def on_log(self):
        hostcalls.log(hostcalls.INFO, f"stream {self.context_id}: body chunks={self.chunks}")


class PausedBodyRoot(RootContext):
    http_context = PausedBodyStream


set_root_context(PausedBodyRoot)
