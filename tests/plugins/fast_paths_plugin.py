"""A test plugin that answers each request with what the plugin's own code
made of its body, so a test can hold the shim's C paths (in the VM) to their
Python references. The request's :path picks the function; the answer is a
local 200.

  /hash   prefix_hash.block_hashes of the body, with headers x-namespace,
          x-block-size, x-max-blocks: the hashes one per line; x-answered-by
          says which implementation ran ("c" or "python")
  /parse  llm_request.parse of the body: JSON {"model", "salt", "prompt"
          (latin-1 text of the prompt bytes)} or {"error": the
          NotAnLLMRequest message}; x-answered-by "c" when the C reader
          answered, else "python"
  /index  EmbeddedPrefixIndex against its references: the body is JSON
          {"namespace", "capacity", "ttl_s", "sizes": {address: blocks},
          "records": [[hashes, address, now_s, held]], "queries": [[hashes,
          now_s]]}; the records are written by record() and, into another
          namespace, by the reference's writes (the answer is {"differ": slot}
          when a slot differs), then each query is answered by both
          matches() and reference_matches(): JSON [[matched, aging] of each]
          per query; x-answered-by "c" when record() and matches() ran in C
  /inflight embedded_inflight's update in C against its reference: the body is
          JSON {"record": text, "steps": [{"vm", "now", "lease", "unreleased",
          "choose": null | "none" | "raise" | [address, work]}]}; both run
          every step on their own copy of the record; the answer is JSON
          [[C's outcome, the reference's] per step], an outcome being
          [written, picked address, the totals choose saw, the record after]
"""

import json

from types import SimpleNamespace

from ai_load_balancer import embedded_inflight, embedded_prefix_index, llm_request, prefix_hash
from ai_load_balancer.log_limiter import LogLimiter
from proxywasm import CONTINUE, PAUSE, HttpContext, RootContext, hostcalls, set_root_context


def header(name):
    return hostcalls.get_header(hostcalls.REQUEST_HEADERS, name)


def hashed(body):
    hashes = prefix_hash.block_hashes(header("x-namespace").encode(), body,
                                      int(header("x-block-size")), int(header("x-max-blocks")))
    return "\n".join(hashes), prefix_hash.chained_hashes is not None


def parsed(body):
    fast = llm_request.chat_prompt is not None and llm_request.chat_prompt(body) is not None
    try:
        request = llm_request.parse(body)
        answer = {"model": request.model, "salt": request.cache_salt,
                  "prompt": request.prompt.decode("latin-1")}
    except llm_request.NotAnLLMRequest as exc:
        answer = {"error": str(exc)}
    return json.dumps(answer), fast


def looked_up(body):
    spec = json.loads(body)
    sizes = spec["sizes"]
    index, reference = (embedded_prefix_index.EmbeddedPrefixIndex(
        spec["namespace"] + suffix, spec["capacity"], spec["ttl_s"], LogLimiter(),
        lambda address: sizes.get(address, 0)) for suffix in ("", "-reference"))
    in_c = embedded_prefix_index.prefix_record
    for hashes, address, now_s, held in spec["records"]:
        index.record(hashes, address, now_s, held)
        embedded_prefix_index.prefix_record = None  # the reference's writes, in Python
        try:
            reference.record(hashes, address, now_s, held)
        finally:
            embedded_prefix_index.prefix_record = in_c
    for slot in range(spec["capacity"]):
        written = [hostcalls.get_shared_data(f"ailb:pc:{i.namespace}:{slot}")[0]
                   for i in (index, reference)]
        if written[0] != written[1]:
            return json.dumps({"differ": slot, "written": [str(w) for w in written]}), in_c

    def plain(answer):
        matched, aging = answer
        return [matched, sorted(aging)]

    answers = [[plain(index.matches(hashes, now_s)),
                plain(index.reference_matches(hashes, now_s))]
               for hashes, now_s in spec["queries"]]
    return json.dumps(answers), embedded_prefix_index.prefix_matches is not None


def updated(body):
    spec = json.loads(body)
    runs = {"c": embedded_inflight.inflight_update, "python": embedded_inflight.update}
    for name in runs:
        hostcalls.set_shared_data(f"inflight-{name}", spec["record"].encode())
    answers = []
    for step in spec["steps"]:
        outcomes = []
        for name, run in runs.items():
            seen = []

            def choose(counts, work, wanted=step["choose"], seen=seen):
                seen.append([counts, work])
                if wanted == "raise":
                    raise LookupError("no candidate")
                return None if wanted == "none" else SimpleNamespace(address=wanted[0],
                                                                     work=wanted[1])
            try:
                written, pick = run(f"inflight-{name}", step["vm"], step["now"], step["lease"],
                                    step["unreleased"], None if step["choose"] is None else choose,
                                    16)
                outcome = [written, pick and pick.address]
            except LookupError:
                outcome = ["raised", None]
            record = hostcalls.get_shared_data(f"inflight-{name}")[0]
            outcomes.append(outcome + [seen, record.decode()])
        answers.append(outcomes)
    return json.dumps(answers), embedded_inflight.inflight_update is not None


class FastPathStream(HttpContext):
    def on_request_headers(self, num_headers, end_of_stream):
        return PAUSE

    def on_request_body(self, body_size, end_of_stream):
        if not end_of_stream:
            return PAUSE
        body = hostcalls.get_buffer(hostcalls.REQUEST_BODY, 0, body_size) or b""
        route = {"/hash": hashed, "/parse": parsed, "/index": looked_up,
                 "/inflight": updated}[header(":path")]
        answer, in_c = route(body)
        self.send_local_response(200, answer, [("x-answered-by", "c" if in_c else "python")],
                                 "answered")
        return CONTINUE


class FastPathRoot(RootContext):
    http_context = FastPathStream


set_root_context(FastPathRoot)
