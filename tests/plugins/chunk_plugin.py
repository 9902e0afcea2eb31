"""A test plugin whose streams count response-body chunks: it overrides
on_response_body, so every chunk must still reach its Python (whereas a plugin
leaving that callback at the SDK default has it answered by the host)."""

from proxywasm import CONTINUE, HttpContext, RootContext, hostcalls, set_root_context


class ChunkStream(HttpContext):
    chunks = 0
    size = 0

    def on_response_body(self, body_size, end_of_stream):
        self.chunks += 1
        self.size = body_size
        return CONTINUE

    def on_log(self):
        hostcalls.log(hostcalls.INFO, f"chunks={self.chunks} last_size={self.size}")


class ChunkRoot(RootContext):
    http_context = ChunkStream


set_root_context(ChunkRoot)
