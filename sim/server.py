"""One simulated vLLM replica: an asyncio HTTP/1.1 server in front of an Engine.

Endpoints (as vLLM's OpenAI server): POST /v1/chat/completions, POST
/v1/completions (stream or not, stream_options.include_usage), GET /metrics,
GET /health, GET /v1/models, GET /version, POST /tokenize; plus
POST /reset_prefix_cache and GET /sim/stats (the simulator's own counters:
steps, steps that ended late because the process could not keep up, cache
blocks, evictions). Every response carries `x-replica: <name>`.

The engine runs as one task per replica on the caller's event loop: it sleeps
while idle, and while busy it plans a step, sleeps the step's modelled
duration (on a deadline, so the simulator's own overhead is not added to the
model's time unless the process falls behind) and then delivers the step's
tokens straight to the clients' transports.

In-process knobs for failure tests: `replica.fail_status` (answer every
request but /metrics with that status), `replica.pause()` / `resume()`
(the engine stops stepping; requests queue), `replica.extra_delay_s`.
"""

import asyncio
import itertools
import json
import secrets
import time

from sim import metrics as metrics_mod
from sim import profiles, tokenizer
from sim.engine import Engine, SimRequest

LOOPBACK = "127.0.0.1"
MAX_BODY = 64 * 1024 * 1024
VERSION = "0.32.0"
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            413: "Payload Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}


def _error(status, message, kind, param=None):
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return status, "application/json", json.dumps(body, separators=(",", ":")).encode()


class _HttpError(Exception):
    def __init__(self, status, message, kind="BadRequestError", param=None):
        super().__init__(message)
        self.response = _error(status, message, kind, param)


class _Sink:
    """Collects a non-streamed answer; `done` resolves when the request ends."""

    def __init__(self, loop):
        self.done = loop.create_future()
        self.pieces = []

    def token(self, text, finish_reason):
        self.pieces.append(text)
        return True

    def finish(self, request, reason):
        if not self.done.done():
            self.done.set_result(reason)


class _StreamSink(_Sink):
    """Writes SSE chunks (HTTP chunked transfer coding) as tokens come."""

    def __init__(self, loop, writer, chat, rid, created, model, include_usage):
        super().__init__(loop)
        self.writer = writer
        self.chat = chat
        self.include_usage = include_usage
        self.first = True
        kind = "chat.completion.chunk" if chat else "text_completion"
        head = (f'{{"id":"{rid}","object":"{kind}","created":{created},'
                f'"model":{json.dumps(model)},"choices":')
        self.head = head
        if chat:
            self.prefix = head + '[{"index":0,"delta":{"content":'
            self.suffix = '},"logprobs":null,"finish_reason":null,"token_ids":null}]}'
            self.last_suffix = ('},"logprobs":null,"finish_reason":"length","stop_reason":null,'
                                '"token_ids":null}]}')
        else:
            self.prefix = head + '[{"index":0,"text":'
            self.suffix = (',"logprobs":null,"finish_reason":null,"stop_reason":null,'
                           '"prompt_token_ids":null,"token_ids":null}]}')
            self.last_suffix = (',"logprobs":null,"finish_reason":"length","stop_reason":null,'
                                '"prompt_token_ids":null,"token_ids":null}]}')

    def _send(self, payload):
        data = f"data: {payload}\n\n".encode()
        self.writer.write(b"%x\r\n%s\r\n" % (len(data), data))

    def token(self, text, finish_reason):
        if self.writer.is_closing():
            return False
        if self.first and self.chat:
            self._send(self.head + '[{"index":0,"delta":{"role":"assistant","content":""},'
                       '"logprobs":null,"finish_reason":null}],"prompt_token_ids":null,'
                       '"prompt_text":null}')
        self.first = False
        self._send(self.prefix + json.dumps(text) +
                   (self.last_suffix if finish_reason else self.suffix))
        return True

    def finish(self, request, reason):
        if not self.writer.is_closing():
            if self.include_usage:
                p, c = request.num_prompt, request.num_output
                self._send(self.head + f'[],"usage":{{"prompt_tokens":{p},"total_tokens":{p + c},'
                           f'"completion_tokens":{c}}},"system_fingerprint":"vllm-{VERSION}-sim"}}')
            self._send("[DONE]")
            self.writer.write(b"0\r\n\r\n")
        super().finish(request, reason)


class Replica:
    """A simulated vLLM server on a loopback port. Create, then `await start()`."""

    def __init__(self, name, profile="a100-7b", host=LOOPBACK, port=0, seed=0, **overrides):
        self.name = name
        self.profile = profiles.get(profile, **overrides)
        self.host = host
        self.port = port
        self.engine = Engine(self.profile)
        self.created = time.time()
        self.seed = seed
        self.fail_status = None
        self.extra_delay_s = 0.0
        self._paused = False
        self._ids = itertools.count(1)
        self._server = None
        self._task = None
        self._wake = None
        self._connections = set()
        self.requests_seen = 0
        self._api_free_at = 0.0
        self.late_steps = 0   # steps that ended > 5 ms after the model's deadline
        self.late_s = 0.0     # the worst such delay

    @property
    def address(self):
        return f"{self.host}:{self.port}"

    @property
    def model(self):
        return self.profile.model

    # --- lifecycle ------------------------------------------------------------------

    async def start(self):
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._server = await asyncio.start_server(self._connection, self.host, self.port,
                                                  backlog=1024, limit=1 << 20)
        self.port = self._server.sockets[0].getsockname()[1]
        self._task = asyncio.create_task(self._engine_loop(), name=f"engine-{self.name}")
        return self

    async def stop(self):
        if self._server is not None:
            self._server.close()
            for writer in list(self._connections):
                writer.close()
            try:
                await asyncio.wait_for(self._server.wait_closed(), 2)
            except (asyncio.TimeoutError, Exception):
                pass
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    def pause(self):
        self._paused = True

    def resume(self):
        self._paused = False
        if self._wake:
            self._wake.set()

    def sim_stats(self):
        """The simulator's own health: did it keep the model's pace?"""
        e = self.engine
        return {"replica": self.name, "profile": self.profile.name, "steps": e.steps,
                "late_steps": self.late_steps, "max_late_ms": round(self.late_s * 1000, 1),
                "requests_seen": self.requests_seen, "running": len(e.running),
                "waiting": len(e.waiting), "cached_blocks": len(e.pool.cached),
                "free_blocks": e.pool.num_free(), "evictions": e.pool.evictions,
                "preemptions": e.stats.preemptions}

    def reset_prefix_cache(self):
        self.engine.pool.reset_prefix_cache()

    # --- the engine -----------------------------------------------------------------

    async def _engine_loop(self):
        loop = asyncio.get_running_loop()
        engine = self.engine
        scale = self.profile.time_scale
        deadline = loop.time()
        while True:  # ends by cancellation (stop)
            if self._paused or not engine.has_work():
                self._wake.clear()
                await self._wake.wait()
                deadline = loop.time()
                continue
            now = loop.time()
            # Steps run back to back on the model's clock; if the process fell
            # behind by more than 50 ms, that time is lost, not caught up.
            start = max(deadline, now - 0.05)
            step = engine.schedule(now)
            if not step.items:
                # Nothing fits (cannot happen with a valid profile): wait for a change.
                self._wake.clear()
                await self._wake.wait()
                continue
            deadline = start + engine.step_seconds(step) * scale
            delay = deadline - loop.time()
            await asyncio.sleep(delay if delay > 0 else 0)
            late = loop.time() - deadline
            if late > 0.005:  # the process could not keep the model's pace
                self.late_steps += 1
                self.late_s = max(self.late_s, late)
            engine.complete(step, loop.time())

    def _submit(self, request):
        self.engine.add(request)
        self._wake.set()

    # --- HTTP -----------------------------------------------------------------------

    async def _connection(self, reader, writer):
        self._connections.add(writer)
        try:
            for _ in range(10_000_000):  # keep-alive; bounded
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    break
                lines = head.decode("latin-1").split("\r\n")
                try:
                    method, target, version = lines[0].split(" ", 2)
                except ValueError:
                    break
                headers = {}
                for line in lines[1:]:
                    if line:
                        key, _, value = line.partition(":")
                        headers[key.strip().lower()] = value.strip()
                try:
                    body = await self._read_body(reader, headers)
                except (asyncio.IncompleteReadError, ConnectionError, ValueError):
                    break
                connection = headers.get("connection", "").lower()
                keep = connection != "close" and (version != "HTTP/1.0"
                                                  or connection == "keep-alive")
                await self._dispatch(method, target.split("?", 1)[0], headers, body, writer, keep)
                if not keep or writer.is_closing():
                    break
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._connections.discard(writer)
            writer.close()

    async def _read_body(self, reader, headers):
        length = headers.get("content-length")
        if length is not None:
            n = int(length)
            if n > MAX_BODY:
                raise ValueError("body too large")
            return await reader.readexactly(n) if n else b""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            chunks = []
            total = 0
            for _ in range(1_000_000):  # bounded
                size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    for _ in range(1000):  # trailers
                        if (await reader.readline()) in (b"\r\n", b"\n", b""):
                            break
                    break
                total += size
                if total > MAX_BODY:
                    raise ValueError("body too large")
                chunks.append(await reader.readexactly(size))
                await reader.readline()
            return b"".join(chunks)
        return b""

    def _respond(self, writer, status, content_type, body, keep=True):
        head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}", "server: uvicorn",
                f"x-replica: {self.name}", f"content-length: {len(body)}"]
        if content_type:
            head.append(f"content-type: {content_type}")
        if not keep:
            head.append("connection: close")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)

    async def _dispatch(self, method, path, headers, body, writer, keep):
        self.requests_seen += 1
        if path == "/metrics" and method == "GET":
            text = metrics_mod.render(self.engine, self.model, self.created, time.time())
            self._respond(writer, 200, "text/plain; version=0.0.4; charset=utf-8",
                          text.encode(), keep)
            return
        if self.fail_status:
            self._respond(writer, self.fail_status, "application/json",
                          _error(self.fail_status, "simulated failure",
                                 "ServiceUnavailableError")[2], keep)
            return
        if self.extra_delay_s:
            await asyncio.sleep(self.extra_delay_s)
        try:
            if path in ("/v1/chat/completions", "/v1/completions"):
                if method != "POST":
                    raise _HttpError(405, "Method Not Allowed", "MethodNotAllowed")
                await self._completion(path == "/v1/chat/completions", body, writer, keep)
                return
            if method == "GET" and path in ("/health", "/ping"):
                self._respond(writer, 200, None, b"", keep)
            elif method == "GET" and path == "/v1/models":
                self._respond(writer, 200, "application/json", self._models(), keep)
            elif method == "GET" and path == "/version":
                self._respond(writer, 200, "application/json",
                              json.dumps({"version": VERSION}).encode(), keep)
            elif method == "POST" and path == "/tokenize":
                self._respond(writer, 200, "application/json", self._tokenize(body), keep)
            elif method == "GET" and path == "/sim/stats":
                self._respond(writer, 200, "application/json",
                              json.dumps(self.sim_stats()).encode(), keep)
            elif method == "POST" and path == "/reset_prefix_cache":
                self.reset_prefix_cache()
                self._respond(writer, 200, None, b"", keep)
            else:
                self._respond(writer, 404, "application/json", b'{"detail":"Not Found"}', keep)
        except _HttpError as e:
            status, content_type, data = e.response
            self._respond(writer, status, content_type, data, keep)

    def _models(self):
        now = int(time.time())

        def card(name, parent):
            return {"id": name, "object": "model", "created": now, "owned_by": "vllm",
                    "root": name, "parent": parent, "max_model_len": self.profile.max_model_len,
                    "permission": [{"id": f"modelperm-{secrets.token_hex(8)}",
                                    "object": "model_permission", "created": now,
                                    "allow_create_engine": False, "allow_sampling": True,
                                    "allow_logprobs": True, "allow_search_indices": False,
                                    "allow_view": True, "allow_fine_tuning": False,
                                    "organization": "*", "group": None, "is_blocking": False}]}
        data = [card(self.model, None)] + [card(a, self.model)
                                           for a in self.profile.lora_adapters]
        return json.dumps({"object": "list", "data": data}, separators=(",", ":")).encode()

    def _parse(self, body):
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            raise _HttpError(400, "Invalid JSON body") from None
        if not isinstance(request, dict):
            raise _HttpError(400, "The request body must be a JSON object")
        return request

    def _tokenize(self, body):
        request = self._parse(body)
        if "messages" in request:
            ids = tokenizer.encode(tokenizer.render_chat(request["messages"]))
        else:
            ids = tokenizer.encode(request.get("prompt") or "", add_bos=True)
        return json.dumps({"count": len(ids), "max_model_len": self.profile.max_model_len,
                           "tokens": ids, "token_strs": None}).encode()

    async def _completion(self, chat, body, writer, keep):
        p = self.profile
        request = self._parse(body)
        model = request.get("model") or self.model
        if model != self.model and model not in p.lora_adapters:
            names = ", ".join((self.model,) + tuple(p.lora_adapters))
            raise _HttpError(404, f"The model `{model}` does not exist. Valid aliases: {names}.",
                             "NotFoundError", "model")
        lora = model if model != self.model else None
        if chat:
            messages = request.get("messages")
            if not isinstance(messages, list) or not messages:
                raise _HttpError(400, "messages: a non-empty list is required", param="messages")
            text = tokenizer.render_chat(messages)
        else:
            prompt = request.get("prompt")
            if isinstance(prompt, list):
                prompt = "".join(x if isinstance(x, str) else "" for x in prompt)
            if not isinstance(prompt, str):
                raise _HttpError(400, "prompt: a string is required", param="prompt")
            text = prompt
        ids = tokenizer.encode(text, add_bos=not chat)  # the chat template has its BOS
        n = len(ids)
        if n >= p.max_model_len:
            raise _HttpError(400, f"This model's maximum context length is {p.max_model_len} "
                             f"tokens. However, your request has {n} input tokens. Please "
                             "reduce the length of the input messages.", param="messages")
        max_tokens = request.get("max_completion_tokens") or request.get("max_tokens")
        if max_tokens is None:
            max_tokens = p.default_max_tokens or (p.max_model_len - n)
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise _HttpError(400, "max_tokens must be at least 1", param="max_tokens")
        if max_tokens > p.max_model_len - n:
            raise _HttpError(400, f"max_tokens={max_tokens} cannot be greater than "
                             f"max_model_len={p.max_model_len} - input tokens {n}. Please "
                             f"request fewer output tokens. (parameter=max_tokens, "
                             f"value={max_tokens})", param="max_tokens")
        stream = bool(request.get("stream"))
        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{secrets.token_hex(8)}"
        created = int(time.time())
        loop = asyncio.get_running_loop()
        arrival = loop.time()
        if stream:
            writer.write((f"HTTP/1.1 200 OK\r\nserver: uvicorn\r\nx-replica: {self.name}\r\n"
                          "content-type: text/event-stream; charset=utf-8\r\n"
                          "transfer-encoding: chunked\r\n"
                          f"{'' if keep else 'connection: close' + chr(13) + chr(10)}"
                          "\r\n").encode())
            sink = _StreamSink(loop, writer, chat, rid, created, model, include_usage)
        else:
            sink = _Sink(loop)
        # The API server's share (HTTP, chat template, tokenizer): one Python
        # process handles requests one at a time, so they queue for it.
        overhead = (p.api_overhead_s + p.api_s_per_prompt_token * n) * p.time_scale
        if overhead > 0:
            now = loop.time()
            self._api_free_at = max(self._api_free_at, now) + overhead
            await asyncio.sleep(self._api_free_at - now)
        sim_request = SimRequest(rid, ids, max_tokens, arrival, sink=sink, lora=lora,
                                 seed=self.seed * 1_000_003 + next(self._ids), model=self.model)
        self._submit(sim_request)
        try:
            await sink.done
        except asyncio.CancelledError:
            self.engine.abort(sim_request, loop.time())
            raise
        if stream:
            return
        out = "".join(sink.pieces)
        usage = {"prompt_tokens": n, "total_tokens": n + sim_request.num_output,
                 "completion_tokens": sim_request.num_output, "prompt_tokens_details": None}
        reason = sim_request.finish_reason
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": out,
                                              "refusal": None, "annotations": None,
                                              "audio": None, "function_call": None,
                                              "tool_calls": [], "reasoning": None},
                      "logprobs": None, "finish_reason": reason, "stop_reason": None,
                      "token_ids": None}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": out, "logprobs": None, "finish_reason": reason,
                      "stop_reason": None, "token_ids": None, "prompt_logprobs": None,
                      "prompt_token_ids": None}
            obj = "text_completion"
        answer = {"id": rid, "object": obj, "created": created, "model": model,
                  "choices": [choice], "service_tier": None,
                  "system_fingerprint": f"vllm-{VERSION}-sim", "usage": usage,
                  "prompt_logprobs": None, "kv_transfer_params": None}
        self._respond(writer, 200, "application/json",
                      json.dumps(answer, separators=(",", ":")).encode(), keep)
