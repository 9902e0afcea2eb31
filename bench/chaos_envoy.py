"""Chaos benchmark, the Envoy part (embedded state): the real Envoy 1.40 with the
built plugin in front of four loopback replicas, each in its own process.

- `serve_replica`: a fake OpenAI replica (chat completions, streamed as SSE or
  not, `/health`) that resets a share of its connections before answering,
  and holds `/chaos/hold` open (the in-flight probe). Run as
  `python bench/chaos_envoy.py --serve NAME --port P --reset-rate R`.
- `run_policy`: one policy under an open-loop stream of requests (some aborted
  by the client mid-body or mid-answer) while one replica resets connections
  and another is SIGKILLed and restarted on the same port; then the plugin's
  in-flight counts are read back with `probe_inflight` and the Envoy log is
  scanned for VM traps and Python tracebacks.
"""

import argparse
import asyncio
import collections
import dataclasses
import json
import os
import random
import re
import socket
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import envoy_harness as harness  # noqa: E402
from bench import policies  # noqa: E402

LOOPBACK = harness.LOOPBACK
HOLD_PATH = "/chaos/hold"
TOKENS, TOKEN_DELAY_S = 8, 0.015        # a streamed answer: 8 SSE chunks, ~120 ms
TRAP = re.compile(r"Function: \S+ failed|Uncaught |Wasm VM failed|wasm trap", re.I)
TRACEBACK = "Traceback (most recent call last)"
CAS_GIVE_UP = "compare-and-swap attempts on"   # shared_record: a give-up, logged
RETRY_STATS = (r"^cluster\.backend\.(upstream_rq_retry|upstream_rq_retry_success|"
               r"upstream_rq_retry_limit_exceeded|upstream_rq_retry_overflow|"
               r"upstream_cx_connect_fail|"
               r"upstream_cx_destroy_remote_with_active_rq)$")
SYSTEM = ("You are the support assistant of a large online shop. Answer briefly, cite the "
          "order number, and ask before refunding anything. ") * 3


# --- the replica (child process) ------------------------------------------------------------

def _head(status, headers):
    lines = [f"HTTP/1.1 {status} OK"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _chunk(data):
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(name, text):
    data = json.dumps({"object": "chat.completion.chunk", "model": "chaos",
                       "choices": [{"index": 0, "delta": {"content": text}}]})
    return _chunk(f"data: {data}\n\n".encode())


async def _stream_answer(writer, name):
    """An SSE answer of TOKENS chunks, TOKEN_DELAY_S apart, then [DONE]."""
    writer.write(_head(200, {"content-type": "text/event-stream", "x-replica": name,
                             "transfer-encoding": "chunked"}))
    for i in range(TOKENS):
        writer.write(_event(name, f"t{i} "))
        await writer.drain()
        await asyncio.sleep(TOKEN_DELAY_S)
    writer.write(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    await writer.drain()


def _json_answer(writer, name, status=200):
    body = json.dumps({"object": "chat.completion", "model": "chaos", "replica": name,
                       "choices": [{"index": 0, "message": {"role": "assistant",
                                                            "content": "ok"}}]}).encode()
    writer.write(_head(status, {"content-type": "application/json", "x-replica": name,
                                "content-length": len(body)}) + body)


async def _hold(reader, writer, name):
    """Headers and one event, then nothing until the peer closes (at most 60 s)."""
    writer.write(_head(200, {"content-type": "text/event-stream", "x-replica": name,
                             "transfer-encoding": "chunked"}) + _event(name, "held"))
    await writer.drain()
    await asyncio.wait_for(reader.read(), 60)


def _reset(writer):
    """Closes the connection with a TCP RST (SO_LINGER 0), before any answer."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _connection(reader, writer, name, reset_rate, rng):
    """Serves one keep-alive connection until the peer closes it."""
    try:
        for _ in range(1_000_000):  # bounded
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            path = head[0].split(" ")[1]
            headers = dict(line.lower().split(": ", 1) for line in head[1:] if ": " in line)
            body = await reader.readexactly(int(headers.get("content-length", 0)))
            if path == "/health":
                _json_answer(writer, name)
            elif path == HOLD_PATH:
                return await _hold(reader, writer, name)
            elif rng.random() < reset_rate:
                return _reset(writer)
            elif b'"stream":true' in body:
                await _stream_answer(writer, name)
            else:
                _json_answer(writer, name)
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
            ConnectionError, IndexError, ValueError):
        pass
    finally:
        writer.close()


def serve_replica(name, port, reset_rate):
    """Serves until stdin closes; prints {"endpoints": [address]} once listening."""
    async def main():
        rng = random.Random(name)
        server = await asyncio.start_server(
            lambda r, w: _connection(r, w, name, reset_rate, rng), LOOPBACK, port,
            reuse_address=True, backlog=512)
        address = f"{LOOPBACK}:{server.sockets[0].getsockname()[1]}"
        print(json.dumps({"endpoints": [address]}), flush=True)
        stdin_closed = asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await stdin_closed
        server.close()
    asyncio.run(main())


class ReplicaFleet:
    """One replica process per name; `kill` (SIGKILL) and `restart` (same port)."""

    def __init__(self, reset_rates):
        self.reset_rates = reset_rates          # {name: share of connections reset}
        self.procs = {name: self._start(name, 0) for name in reset_rates}
        self.endpoints = [self.procs[n].endpoints[0] for n in reset_rates]
        self.names = dict(zip(self.endpoints, reset_rates))

    def _start(self, name, port):
        return harness.ReplicaProcess(1, command=[
            sys.executable, os.path.abspath(__file__), "--serve", name, "--port", str(port),
            "--reset-rate", str(self.reset_rates[name])])

    def kill(self, name):
        self.procs[name].proc.kill()
        self.procs[name].proc.wait(5)

    def restart(self, name):
        port = int(self.procs[name].endpoints[0].rpartition(":")[2])
        self.procs[name] = self._start(name, port)

    def stop(self):
        for proc in self.procs.values():
            proc.stop()


# --- the client ------------------------------------------------------------------------------

@dataclasses.dataclass
class Outcome:
    index: int
    kind: str            # stream | json | abort_body | abort_answer
    sent: float          # seconds after the start
    ended: float = None
    status: int = 0
    result: str = ""     # ok | local_error | aborted | broken | timeout
    replica: str = None  # the replica that answered (x-replica)
    detail: str = ""


def chat_body(i, stream):
    """Request i of 32 users' conversations (turns grow, so prompts share prefixes)."""
    user, turn = i % 32, (i // 32) % 8
    messages = [{"role": "system", "content": SYSTEM}] + [
        {"role": "user", "content": f"user {user}, session {i // 256}, turn {t}: where is "
                                    f"my parcel? It was due on day {t}. " * 2}
        for t in range(turn + 1)]
    return json.dumps({"model": "chaos", "messages": messages, "stream": stream},
                      separators=(",", ":")).encode()


def _request_head(method, path, length):
    lines = [f"{method} {path} HTTP/1.1", "host: chaos", "connection: close",
             "content-type: application/json"]
    if method == "POST":
        lines.append(f"content-length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _read_head(reader):
    lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(lines[0].split(" ", 2)[1]), headers


def _complete(headers, data):
    """Whether a body read up to the connection's close is all there."""
    if "chunked" in headers.get("transfer-encoding", ""):
        return data.endswith(b"0\r\n\r\n")
    return len(data) == int(headers.get("content-length", -1))


async def _exchange(port, out, body):
    """Sends one request as out.kind says and fills in out's status and result."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        head = _request_head("POST", "/v1/chat/completions", len(body))
        if out.kind == "abort_body":
            writer.write(head + body[:len(body) // 2])
            await writer.drain()
            await asyncio.sleep(0.05)
            out.result = "aborted"
            return
        writer.write(head + body)
        await writer.drain()
        out.status, headers = await _read_head(reader)
        out.replica = headers.get("x-replica")
        if out.kind == "abort_answer" and out.status == 200:
            await reader.readuntil(b"data:")
            out.result = "aborted"
            return
        data = await reader.read()
        if not _complete(headers, data) or (out.kind == "stream" and out.status == 200
                                             and b"data: [DONE]" not in data):
            out.result, out.detail = "broken", f"answer cut after {len(data)} bytes"
        else:
            out.result = "ok" if out.status == 200 else "local_error"
            out.detail = "" if out.status == 200 else data[:120].decode("utf-8", "replace")
    finally:
        writer.close()


async def _one(port, out, body, deadline_s, t0):
    try:
        await asyncio.wait_for(_exchange(port, out, body), deadline_s)
    except asyncio.TimeoutError:
        out.result, out.detail = "timeout", f"no answer in {deadline_s:g} s"
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
        out.result, out.detail = "broken", f"{type(exc).__name__}: {exc}"[:160]
    out.ended = time.monotonic() - t0


def request_kinds(count, seed, abort_share):
    """A kind per request: abort_share split between mid-body and mid-answer
    aborts, the rest 3/4 streamed and 1/4 plain JSON answers."""
    rng = random.Random(seed)
    kinds = []
    for _ in range(count):
        x = rng.random()
        kinds.append("abort_body" if x < abort_share / 2 else "abort_answer" if x < abort_share
                     else "stream" if x < abort_share + (1 - abort_share) * 0.75 else "json")
    return kinds


async def send_open_loop(port, rate, kinds, events, deadline_s):
    """Request i leaves at i / rate s, whatever came back before; `events`
    [(at_s, fn)] run in a thread at their time. Returns Outcomes, event times."""
    loop = asyncio.get_running_loop()
    t0 = time.monotonic()
    happened = {}

    async def event(at_s, fn):
        await asyncio.sleep(max(0.0, at_s - (time.monotonic() - t0)))
        happened[fn.__name__] = time.monotonic() - t0
        await loop.run_in_executor(None, fn)

    background = [asyncio.ensure_future(event(at, fn)) for at, fn in events]
    tasks, outcomes = [], []
    for i, kind in enumerate(kinds):
        delay = i / rate - (time.monotonic() - t0)
        if delay > 0:
            await asyncio.sleep(delay)
        out = Outcome(i, kind, time.monotonic() - t0)
        outcomes.append(out)
        body = chat_body(i, kind in ("stream", "abort_answer"))
        tasks.append(asyncio.ensure_future(_one(port, out, body, deadline_s, t0)))
    await asyncio.gather(*tasks, *background)
    return outcomes, happened


# --- reading the plugin's in-flight counts back -----------------------------------------------

async def _hold_probe(port):
    """One held GET: (writer to close, the plugin's decision or None)."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    writer.write(_request_head("GET", HOLD_PATH, 0))
    await writer.drain()
    _, headers = await asyncio.wait_for(_read_head(reader), 5)
    return writer, harness.decision(headers)


async def probe_inflight(port, addresses, cap=64):
    """{address: in-flight count} as the plugin's shared data holds it, read
    from the `inflight` field of its decision header: held probes are sent one
    after another, each to the least busy replica (least request decides a
    bodyless request), so every replica is reached once the others hold as
    many; its first probe reports its count. Replicas not reached within `cap`
    probes are missing from the answer."""
    held, seen = [], {}
    try:
        for _ in range(cap):
            writer, decided = await _hold_probe(port)
            held.append(writer)
            if decided:
                seen.setdefault(decided["address"], int(decided["inflight"]))
            if set(addresses) <= set(seen):
                break
    finally:
        for writer in held:
            writer.close()
    return seen


def read_inflight(port, addresses, tries=8):
    """probe_inflight until every replica is reached (an ejected or unhealthy
    replica is not a candidate until it rejoins), at most `tries` rounds."""
    seen = {}
    for _ in range(tries):
        seen = asyncio.run(probe_inflight(port, addresses))
        if set(addresses) <= set(seen):
            break
        time.sleep(1.0)
    return seen


# --- one policy under chaos ------------------------------------------------------------------

@dataclasses.dataclass
class Plan:
    rate: float                # requests per second
    duration_s: float
    abort_share: float = 0.10
    reset_rate: float = 0.10   # share of r1's connections reset
    kill_at: float = 0.35      # r0 SIGKILLed at this share of the run...
    restart_at: float = 0.60   # ...and restarted at this one
    route_timeout_s: float = 5.0
    max_retries: int = 100     # the cluster's retry circuit breaker; 0: Envoy's default (3)
    seed: int = 12


class _Config(harness.EnvoyConfig):
    """An EnvoyConfig whose clusters allow `max_retries` concurrent retries.
    Envoy's default circuit breaker allows 3: in the burst of connect failures
    right after a replica dies, a 4th retry is dropped and the client gets a
    503 (upstream_rq_retry_overflow)."""
    max_retries = 0

    def render(self):
        doc = super().render()
        if self.max_retries:
            for cluster in doc["static_resources"]["clusters"]:
                cluster["circuit_breakers"] = {"thresholds": [
                    {"max_retries": self.max_retries}]}
        return doc


def envoy_config(policy, endpoints, wasm, plan):
    """--concurrency 2; override_host with least request as fallback; the route
    retries twice on connect failures, resets and 5xx, walking the plugin's
    pinned fallbacks (README: failover), up to plan.max_retries at once."""
    fields = {"debugHeader": True, "failoverEndpoints": 2,
              "healthCheck": {"interval": 250, "timeout": 250, "unhealthyThreshold": 2,
                              "healthyThreshold": 2, "baseEjectionTime": 1000}}
    base = harness.EnvoyConfig.simple(
        endpoints, wasm_path=wasm, concurrency=2, fallback_policy="least_request",
        plugin_config=policies.plugin_config(policy, endpoints, **fields),
        retry_policy=harness.retry_policy(2))
    base.listeners[0].route_timeout_s = plan.route_timeout_s
    config = _Config(base.listeners, base.clusters, base.admin_port, base.concurrency)
    config.max_retries = plan.max_retries
    return config


def log_problems(text):
    """(VM trap lines, Python traceback count, excerpts) of an Envoy log."""
    lines = text.splitlines()
    traps = [line for line in lines if TRAP.search(line)]
    excerpts = []
    for i, line in enumerate(lines):
        if TRACEBACK in line and len(excerpts) < 3:
            excerpts.append("\n".join(lines[i:i + 8]))
    return traps, text.count(TRACEBACK), traps[:3] + excerpts


def run_policy(policy, wasm, plan, workdir, log):
    """Runs one policy under chaos; returns its row (see chaos.py)."""
    fleet = ReplicaFleet({"r0": 0.0, "r1": plan.reset_rate, "r2": 0.0, "r3": 0.0})
    envoy = harness.Envoy(envoy_config(policy, fleet.endpoints, wasm, plan),
                          os.path.join(workdir, policy))
    try:
        envoy.start(timeout=120)
        kinds = request_kinds(int(plan.rate * plan.duration_s), plan.seed, plan.abort_share)

        def kill_r0():
            fleet.kill("r0")

        def restart_r0():
            fleet.restart("r0")

        events = [(plan.kill_at * plan.duration_s, kill_r0),
                  (plan.restart_at * plan.duration_s, restart_r0)]
        deadline = plan.route_timeout_s + 5
        outcomes, happened = asyncio.run(
            send_open_loop(envoy.port, plan.rate, kinds, events, deadline))
        log(f"  {policy}: {len(outcomes)} requests sent; reading in-flight counts back")
        time.sleep(1.0)  # every stream's on_log has run
        inflight = read_inflight(envoy.port, fleet.endpoints)
        envoy_stats = {k.rpartition(".")[2]: v for k, v in envoy.stats(RETRY_STATS).items()}
    finally:
        envoy.stop()
        fleet.stop()
    row = summarize(policy, plan, outcomes, happened, inflight, fleet)
    text = envoy.log()
    traps, tracebacks, excerpts = log_problems(text)
    row.update(traps=len(traps), tracebacks=tracebacks, log_excerpts=excerpts,
               log=envoy.log_path, envoy=envoy_stats, cas_give_ups=text.count(CAS_GIVE_UP),
               max_retries=plan.max_retries or "Envoy's default (3)")
    return row


def summarize(policy, plan, outcomes, happened, inflight, fleet):
    """The row of one Envoy run: counts per goal, with examples of what missed."""
    kill_t, restart_t = happened.get("kill_r0"), happened.get("restart_r0")
    down = [o for o in outcomes if kill_t is not None and restart_t is not None
            and kill_t <= o.sent < restart_t and not o.kind.startswith("abort")]
    cut = [o for o in outcomes if o.result == "broken" and o.replica == "r0"
           and kill_t is not None and o.sent <= kill_t <= (o.ended or 0)]
    failed = [o for o in outcomes if o.result in ("broken", "timeout") and o not in cut]
    errors = [o for o in outcomes if o.result not in ("ok", "aborted") and o not in cut]
    late = [o for o in outcomes if o.ended - o.sent > plan.route_timeout_s + 1]
    missing = [a for a in fleet.endpoints if a not in inflight]
    results = collections.Counter(o.result for o in outcomes)
    return {
        "scenario": "Envoy: client aborts, upstream resets, replica killed + restarted",
        "state": "embedded", "policy": policy, "sent": len(outcomes),
        "aborted": results["aborted"], "ok": results["ok"],
        "local_errors": results["local_error"], "no_answer": len(failed),
        "held_too_long": len(late),
        "inflight_left": sum(inflight.values()),
        "inflight": {fleet.names[a]: n for a, n in inflight.items()},
        "inflight_unread": [fleet.names[a] for a in missing],
        "down_requests": len(down),
        "down_errors": sum(o.result != "ok" for o in down),
        "client_errors": len(errors), "cut_by_kill": len(cut),
        "timeline": {"kill_r0_s": kill_t, "restart_r0_s": restart_t},
        "rate": round(len(outcomes) / max(o.sent for o in outcomes), 1),
        "max_send_lag_ms": round(max(o.sent - o.index / plan.rate for o in outcomes) * 1e3, 1),
        "examples": [dataclasses.asdict(o) for o in (failed + errors + late)[:5]],
    }


def main():
    parser = argparse.ArgumentParser(description="a chaos replica (child process)")
    parser.add_argument("--serve", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--reset-rate", type=float, default=0.0)
    args = parser.parse_args()
    serve_replica(args.serve, args.port, args.reset_rate)


if __name__ == "__main__":
    main()
