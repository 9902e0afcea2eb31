"""A test plugin that answers each request with what llm_request.parse made of
its body (in the VM the C reader answers the common chat body), so a test can
hold it to the Python parser.

The answer: a local 200 whose body is JSON {"model", "salt", "prompt" (latin-1
text of the prompt bytes), "fast": whether the C reader answered} or
{"error": the NotAnLLMRequest message, "fast": false}.
"""

import json

from ai_load_balancer import llm_request
from proxywasm import CONTINUE, PAUSE, HttpContext, RootContext, hostcalls, set_root_context


class ParseStream(HttpContext):
    def on_request_headers(self, num_headers, end_of_stream):
        return PAUSE

    def on_request_body(self, body_size, end_of_stream):
        if not end_of_stream:
            return PAUSE
        body = hostcalls.get_buffer(hostcalls.REQUEST_BODY, 0, body_size) or b""
        fast = llm_request.chat_prompt is not None and llm_request.chat_prompt(body) is not None
        try:
            request = llm_request.parse(body)
            answer = {"model": request.model, "salt": request.cache_salt,
                      "prompt": request.prompt.decode("latin-1"), "fast": fast}
        except llm_request.NotAnLLMRequest as exc:
            answer = {"error": str(exc), "fast": fast}
        self.send_local_response(200, json.dumps(answer), [], "parsed")
        return CONTINUE


class ParseRoot(RootContext):
    http_context = ParseStream


set_root_context(ParseRoot)
