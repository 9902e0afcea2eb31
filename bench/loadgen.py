"""The benchmark client: runs a workload's sessions against one gateway port,
streaming every answer, on one asyncio loop. Bounded in count and time.

Per request it records: when it was sent, TTFT (request written -> the first
SSE event with a choice, which vLLM sends with the first token), end-to-end
latency (-> `data: [DONE]`), prompt and completion tokens (the usage chunk),
the status, which replica answered (`x-replica` from the simulator, else the
plugin's `x-ailb-decision`, else the oracle's pick) and the plugin's reason.
"""

import asyncio
import dataclasses
import json
import time

from bench import oracle as oracle_mod

LOOPBACK = "127.0.0.1"


@dataclasses.dataclass
class Record:
    session: str
    turn: int
    sent: float                  # seconds after the run's start
    status: int = 0
    ttft: float = None
    e2e: float = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    replica: str = None
    reason: str = None
    error: str = None


class _Stream:
    """One streamed chat completion over a new HTTP/1.1 connection."""

    def __init__(self, port, body, headers, timeout):
        self.port, self.body, self.headers, self.timeout = port, body, headers, timeout

    async def run(self, on_first_token=None):
        out = {"status": 0, "ttft": None, "text": [], "usage": None, "headers": {}}
        start = time.perf_counter()
        reader, writer = await asyncio.open_connection(LOOPBACK, self.port, limit=1 << 22)
        try:
            head = ["POST /v1/chat/completions HTTP/1.1", "host: bench",
                    "content-type: application/json", f"content-length: {len(self.body)}",
                    "connection: close"] + [f"{k}: {v}" for k, v in self.headers.items()]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + self.body)
            start = time.perf_counter()
            raw = await reader.readuntil(b"\r\n\r\n")
            lines = raw.decode("latin-1").split("\r\n")
            out["status"] = int(lines[0].split(" ", 2)[1])
            headers = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            out["headers"] = headers
            if out["status"] != 200:
                out["error"] = (await reader.read(2000)).decode("utf-8", "replace")
                return out
            pending = b""
            done = False
            async for data in self._body(reader, headers):
                pending += data
                events = pending.split(b"\n\n")
                pending = events.pop()
                for event in events:
                    event = event.strip()
                    if not event.startswith(b"data:"):
                        continue
                    payload = event[5:].strip()
                    if payload == b"[DONE]":
                        done = True
                        break
                    chunk = json.loads(payload)
                    choices = chunk.get("choices") or []
                    if choices:
                        if out["ttft"] is None:
                            out["ttft"] = time.perf_counter() - start
                            if on_first_token:
                                on_first_token()
                        text = (choices[0].get("delta") or {}).get("content")
                        if text:
                            out["text"].append(text)
                    if chunk.get("usage"):
                        out["usage"] = chunk["usage"]
                if done:
                    break
            out["e2e"] = time.perf_counter() - start
            if not done:
                out["error"] = "stream ended without [DONE]"
            return out
        finally:
            writer.close()

    @staticmethod
    async def _body(reader, headers):
        """The response body's bytes as they come (chunked or not)."""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            for _ in range(10_000_000):  # bounded
                size_line = await reader.readline()
                if not size_line:
                    return
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    return
                data = await reader.readexactly(size)
                await reader.readexactly(2)
                yield data
        elif "content-length" in headers:
            yield await reader.readexactly(int(headers["content-length"]))
        else:
            for _ in range(10_000_000):  # bounded
                data = await reader.read(65536)
                if not data:
                    return
                yield data


class Runner:
    """Runs sessions through `port`. `oracle` (an oracle.Oracle) pins each request
    with the `pin_header`; `ceiling` (oracle.Ceiling) sees every prompt."""

    def __init__(self, port, model, oracle=None, ceiling=None, pin_header="x-ailb-endpoint",
                 timeout=300.0, names=None):
        self.port, self.model = port, model
        self.oracle, self.ceiling = oracle, ceiling
        self.pin_header, self.timeout = pin_header, timeout
        self.names = names or {}   # endpoint -> replica name
        self.records = []
        self.inflight = 0
        self.max_inflight = 0

    async def _session(self, session, t0, stop_at):
        loop = asyncio.get_running_loop()
        messages = [{"role": "system", "content": session.system}] if session.system else []
        model = session.model or self.model
        namespace = model
        last_sent = None
        for k, turn in enumerate(session.turns):
            due = t0 + session.start if last_sent is None else last_sent + session.gap
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if loop.time() >= stop_at:
                return
            base = messages if session.keep_history else (
                [{"role": "system", "content": session.system}] if session.system else [])
            request_messages = base + [{"role": "user", "content": turn.user}]
            body = json.dumps({"model": model, "messages": request_messages, "stream": True,
                               "stream_options": {"include_usage": True},
                               "max_tokens": turn.max_tokens, "temperature": 0},
                              separators=(",", ":")).encode()
            tokens = None
            headers = {}
            pick = None
            if self.oracle is not None or self.ceiling is not None:
                tokens = oracle_mod.prompt_tokens(request_messages)
                if self.ceiling is not None:
                    self.ceiling.observe(namespace, tokens)
            if self.oracle is not None:
                pick, _ = self.oracle.pick(namespace, tokens)
                headers[self.pin_header] = pick
            last_sent = loop.time()
            record = Record(session.id, k, last_sent - t0)
            self.records.append(record)

            def first_token(pick=pick, tokens=tokens):
                # The prompt's blocks are cached once its prefill is done.
                if pick is not None:
                    self.oracle.first_token(pick, namespace, tokens)
                if self.ceiling is not None and tokens is not None:
                    self.ceiling.computed(namespace, tokens)

            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
            result = None
            try:
                result = await asyncio.wait_for(
                    _Stream(self.port, body, headers, self.timeout).run(first_token),
                    self.timeout)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                record.error = f"{type(exc).__name__}: {exc}"[:200]
            finally:
                self.inflight -= 1
            answer = None
            if result is not None:
                record.status = result["status"]
                record.ttft, record.e2e = result["ttft"], result.get("e2e")
                record.error = result.get("error")
                usage = result["usage"] or {}
                record.prompt_tokens = usage.get("prompt_tokens", 0)
                record.completion_tokens = usage.get("completion_tokens", 0)
                h = result["headers"]
                decision = h.get("x-ailb-decision", "")
                record.replica = h.get("x-replica") or self.names.get(
                    decision.partition(";")[0].strip()) or self.names.get(pick)
                record.reason = decision.partition("reason=")[2].partition(";")[0] or None
                if record.status == 200 and not record.error:
                    answer = "".join(result["text"])
            full = None
            if tokens is not None and answer is not None:
                full = oracle_mod.prompt_tokens(request_messages, answer)
                if self.ceiling is not None:
                    self.ceiling.computed(namespace, full)
            if pick is not None:
                self.oracle.done(pick, namespace, full)
            if answer is None:
                return  # a failed turn ends the conversation
            if session.keep_history:
                messages = request_messages + [{"role": "assistant", "content": answer}]

    async def run(self, sessions, duration, drain_s):
        """Sends for `duration` seconds; waits up to `drain_s` more for the answers."""
        loop = asyncio.get_running_loop()
        t0 = loop.time() + 0.05
        stop_at = t0 + duration
        tasks = [asyncio.ensure_future(self._session(s, t0, stop_at)) for s in sessions]
        done, pending = await asyncio.wait(tasks, timeout=duration + drain_s + 0.1)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()
        self.elapsed = loop.time() - t0
        return self.records
