"""A test plugin that answers each request with the prefix hashes of its body,
computed by the plugin's own prefix_hash (in the VM: the shim's C module), so a
test can hold them to the Python reference.

Request headers: x-namespace, x-block-size, x-max-blocks. The answer: a local
200 whose body is the hashes, one per line, and whose x-hashed-by header says
which implementation ran ("c" or "python").
"""

from ai_load_balancer import prefix_hash
from proxywasm import CONTINUE, PAUSE, HttpContext, RootContext, hostcalls, set_root_context


class HashStream(HttpContext):
    def on_request_headers(self, num_headers, end_of_stream):
        return PAUSE

    def on_request_body(self, body_size, end_of_stream):
        if not end_of_stream:
            return PAUSE
        header = lambda name: hostcalls.get_header(hostcalls.REQUEST_HEADERS, name)
        prompt = hostcalls.get_buffer(hostcalls.REQUEST_BODY, 0, body_size) or b""
        hashes = prefix_hash.block_hashes(header("x-namespace").encode(), prompt,
                                          int(header("x-block-size")),
                                          int(header("x-max-blocks")))
        by = "python" if prefix_hash.chained_hashes is None else "c"
        self.send_local_response(200, "\n".join(hashes), [("x-hashed-by", by)], "hashes")
        return CONTINUE


class HashRoot(RootContext):
    http_context = HashStream


set_root_context(HashRoot)
