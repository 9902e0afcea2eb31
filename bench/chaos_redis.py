"""Chaos benchmark, the Redis part. Stock Envoy has no Redis host calls, so the
higress build runs in the Higress-like test host (tests/host, wasm mode: the
built module in wasmtime) against a real redis-server, as two gateways sharing
it. A stream of requests goes through both; 10% are aborted by the client
(half while paused on the Redis pick, half after the decision without any
response: on_log without the response). Mid-stream, Redis is SIGKILLed and
restarted, or SIGSTOPped past the configured `timeout` and SIGCONTed, or
restarted with another requirepass (and later with the right one again).

The test host is synchronous: Redis calls run when the driver pumps them. It
runs them one at a time and fires each gateway's timer (proxy_on_tick, at the
period the plugin asked for) between two of them, as Envoy's timer does not
wait for Redis; a call blocked on a stopped Redis still holds the host for one
op timeout, so a request may wait up to 2 x timeout + one tick period there.
"""

import dataclasses
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import wasmtime

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _path in (os.path.join(ROOT, "plugin"), ROOT):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from proxywasm import CONTINUE  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.host import resp  # noqa: E402
from tests.host.emulator import HostEmulator  # noqa: E402
from tests.host.upstream import CalloutFailure, RedisClient  # noqa: E402
from tests.host.wasm import WasmPlugin  # noqa: E402
from tests.llm_traffic import decision, embedded_inflight, redis_inflight, send, start  # noqa: E402

from ai_load_balancer.redis_state import PICK_SCRIPT, PICK_SHA  # noqa: E402
from bench.chaos_envoy import TRACEBACK, chat_body  # noqa: E402

PASSWORD = "chaos-secret"
WRONG_PASSWORD = "rotated-secret"
HANG_S = 5.0            # a request undecided this long has no answer
PUMP_S = 4.0            # longest pump per step: time for every call queued while Redis is
                        # stopped to go out and time out (Envoy writes them all at once)
REQUEST_PHASES = ("proxy_on_request_headers", "proxy_on_request_body")
SCENARIOS = ("Redis killed + restarted", "Redis paused (SIGSTOP) past the timeout",
             "Redis restarted with a wrong password")  # see chaos_actions


# --- redis-server ----------------------------------------------------------------------------

class RedisProcess:
    """A redis-server on one loopback port, killed, paused and restarted at will."""

    def __init__(self):
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.directory = tempfile.mkdtemp(prefix="ailb-chaos-redis-")
        self.address = ("127.0.0.1", free_port())
        self.password = None
        self.proc = None

    def start(self, password):
        """Starts it (empty) with `requirepass password`; waits for PING."""
        self.password = password
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.address[1]), "--bind", self.address[0],
             "--dir", self.directory, "--save", "", "--appendonly", "no",
             "--requirepass", password], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.command("PING") == b"+PONG\r\n":
                    return
            except CalloutFailure:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def command(self, *args):
        """One command with the current password; the raw reply bytes."""
        client = RedisClient(self.address, password=self.password, timeout_ms=2000)
        try:
            return client.call(resp.command(*args))
        finally:
            client.close()

    def kill(self):
        self.proc.kill()
        self.proc.wait(5)

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.resume()
            self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


# --- gateways ----------------------------------------------------------------------------------

class Gateway:
    """One gateway VM: the higress build in the test host, Redis as its state."""

    def __init__(self, wasm, policy, redis, timeout_ms):
        def make_host(target, clusters=None, shared=None):
            host = HostEmulator(target=target, clusters=clusters, shared=shared)
            return host.attach(WasmPlugin(host, wasm))
        self.host = start(make_host, policy, "higress", redis_address=redis.address,
                          timeout=timeout_ms, password=PASSWORD)
        self.last_tick = time.monotonic()

    def maybe_tick(self):
        """proxy_on_tick when the plugin's tick period has passed."""
        now = time.monotonic()
        if self.host.tick_period_ms and now - self.last_tick >= self.host.tick_period_ms / 1e3:
            self.last_tick = now
            self.host.tick()

    def run_one(self):
        """Runs the oldest pending Redis call (and what its answer starts);
        False when none was pending."""
        if not self.host.pending:
            return False
        self.host.pending, rest = self.host.pending[:1], self.host.pending[1:]
        try:
            self.host.run_callouts()
        finally:
            self.host.pending = rest + self.host.pending
        return True

    def close(self):
        self.host.close()


# --- the request stream -----------------------------------------------------------------------

@dataclasses.dataclass
class RedisPlan:
    requests: int
    batch: int = 10            # requests sent per step
    abort_share: float = 0.10
    timeout_ms: int = 200      # lb_config.timeout
    seed: int = 12


@dataclasses.dataclass
class Flow:
    gateway: Gateway
    cid: int
    kind: str                  # normal | abort_waiting | abort_after
    sent: float
    end_step: int
    decided: float = None
    state: str = None          # where it was decided: redis | embedded
    ended: bool = False


def is_decided(host, cid):
    """The request went on (resumed, or its last request callback continued) or
    was answered locally."""
    if host.is_request_resumed(cid) or host.get_sent_local_response(cid) is not None:
        return True
    actions = [a for callback, a in host.get_actions(cid) if callback in REQUEST_PHASES]
    return bool(actions) and actions[-1] == CONTINUE


class Stream:
    """Sends the plan's requests in steps through the gateways and ends them."""

    def __init__(self, gateways, plan):
        self.gateways, self.plan = gateways, plan
        self.rng = random.Random(plan.seed)
        self.flows = []
        self.undecided = []   # flows not decided yet
        self.no_answer = []

    def send(self, step):
        for _ in range(self.plan.batch):
            i = len(self.flows)
            gateway = self.gateways[i % len(self.gateways)]
            x = self.rng.random()
            kind = ("abort_waiting" if x < self.plan.abort_share / 2 else
                    "abort_after" if x < self.plan.abort_share else "normal")
            cid, _ = send(gateway.host, chat_body(i, False))
            flow = Flow(gateway, cid, kind, time.monotonic(), step + self.rng.randint(0, 3))
            self.flows.append(flow)
            self.undecided.append(flow)
            if kind == "abort_waiting":  # the client leaves before Redis answers
                self.end(flow, respond=False)

    def end(self, flow, respond):
        host = flow.gateway.host
        if respond:
            flow.state = (decision(host, flow.cid) or {}).get("state")
        host.complete_http_context(flow.cid)
        flow.ended = True

    def note_decisions(self):
        """Stamps the flows decided since the last look."""
        now = time.monotonic()
        for flow in self.undecided:
            if is_decided(flow.gateway.host, flow.cid):
                flow.decided = now
        self.undecided = [f for f in self.undecided if f.decided is None and not f.ended]

    def settle(self, step):
        """Ends the flows due (and the hung ones, as no answer)."""
        self.note_decisions()
        now = time.monotonic()
        for flow in self.flows:
            if flow.ended:
                continue
            if flow.decided is not None and flow.end_step <= step:
                self.end(flow, respond=flow.kind == "normal")
            elif flow.decided is None and now - flow.sent > HANG_S:
                self.no_answer.append(flow)
                self.end(flow, respond=False)

    def open_flows(self):
        return [f for f in self.flows if not f.ended]

    def pump(self, budget_s=PUMP_S):
        """Runs the gateways' pending Redis calls one at a time, in turn, each
        gateway's timer ticking between two calls, for at most `budget_s` (a
        stopped Redis makes each call last one op timeout while every tick
        queues a lease renewal). True when no call is pending any more."""
        deadline = time.monotonic() + budget_s
        while time.monotonic() < deadline:
            busy = False
            for gateway in self.gateways:
                gateway.maybe_tick()
                self.note_decisions()
                busy = gateway.run_one() or busy
                self.note_decisions()
            if not busy:
                return True
        return not any(g.host.pending for g in self.gateways)


def drain(stream, timeout_s):
    """Ends every open flow (waiting up to HANG_S for undecided ones), then
    lets the releases and lease renewals reach Redis."""
    deadline = time.monotonic() + HANG_S + timeout_s
    for _ in range(100_000):
        stream.pump()
        stream.settle(step=1 << 30)
        if not stream.open_flows() or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    for flow in stream.open_flows():
        stream.no_answer.append(flow)
        stream.end(flow, respond=False)
    for _ in range(3):
        for gateway in stream.gateways:
            gateway.host.tick()
        stream.pump(budget_s=HANG_S)


# --- one scenario -----------------------------------------------------------------------------

def chaos_actions(redis, plan):
    """The chaos events of each scenario: [(share of the run, name, action)]."""
    pause_s = 3 * plan.timeout_ms / 1000
    paused_at = []

    def pause():
        redis.pause()
        paused_at.append(time.monotonic())

    def resume_past_timeout():
        time.sleep(max(0.0, paused_at[0] + pause_s - time.monotonic()))
        redis.resume()

    def restart(password):
        return lambda: (redis.kill(), redis.start(password))

    return {
        "Redis killed + restarted": [
            (0.30, "SIGKILL", redis.kill),
            (0.55, "restarted", lambda: redis.start(PASSWORD))],
        "Redis paused (SIGSTOP) past the timeout": [
            (0.30, "SIGSTOP", pause),
            (0.32, f"SIGCONT (paused at least {pause_s * 1000:.0f} ms)", resume_past_timeout)],
        "Redis restarted with a wrong password": [
            (0.30, "restarted, requirepass changed", restart(WRONG_PASSWORD)),
            (0.55, "restarted, requirepass restored", restart(PASSWORD))],
    }


def failed_picks(gateways):
    """Pick scripts whose call failed (no reply: refused, reset, op timeout)."""
    marks = (PICK_SHA.encode(), PICK_SCRIPT.encode())
    return sum(1 for g in gateways for callout, outcome in g.host.answered
               if isinstance(outcome, str) and any(m in callout.query for m in marks))


def run_scenario(name, policy, wasm, plan, log):
    """One scenario for one policy; returns its row (see chaos.py)."""
    redis = RedisProcess()
    gateways = []
    traps, started = [], time.monotonic()
    try:
        redis.start(PASSWORD)
        gateways = [Gateway(wasm, policy, redis, plan.timeout_ms) for _ in range(2)]
        stream = Stream(gateways, plan)
        events = list(chaos_actions(redis, plan)[name])
        steps = max(1, plan.requests // plan.batch)
        timeline = []
        try:
            for step in range(steps):
                while events and events[0][0] * steps <= step:
                    _, what, action = events.pop(0)
                    timeline.append((round(time.monotonic() - started, 2), what))
                    action()
                stream.send(step)
                stream.pump()
                stream.settle(step)
            drain(stream, plan.timeout_ms / 1000)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:  # the VM is gone
            traps.append(f"{type(exc).__name__}: {exc}"[:300])
        row = summarize(name, policy, plan, stream, redis, traps, timeline)
    finally:
        for gateway in gateways:
            gateway.close()
        redis.stop()
    log(f"  {name}, {policy}: {row['sent']} requests, {row['decided_in_redis']} decided in "
        f"Redis, {time.monotonic() - started:.1f} s")
    return row


def summarize(name, policy, plan, stream, redis, traps, timeline):
    """The row of one scenario: counts per goal, with evidence for misses."""
    tick_s = max(g.host.tick_period_ms for g in stream.gateways) / 1000
    limit_s = 2 * plan.timeout_ms / 1000 + tick_s + 0.1
    flows = stream.flows
    late = [f for f in flows if f.decided is not None and f.decided - f.sent > limit_s]
    unread = []
    try:
        in_redis = redis_inflight(redis)
    except CalloutFailure as exc:
        in_redis, unread = {}, [f"redis: {exc}"]
    embedded = {}
    for gateway in stream.gateways:
        for address, n in embedded_inflight(gateway.host).items():
            embedded[address] = embedded.get(address, 0) + n
    logs = [m for g in stream.gateways for m in g.host.get_logs()]
    tracebacks = [m for m in logs if TRACEBACK in m]
    answered = [f for f in flows if f.kind == "normal" and f.decided is not None]
    local = [f for f in answered if f.gateway.host.get_sent_local_response(f.cid) is not None]
    return {
        "scenario": name, "state": "redis", "policy": policy, "sent": len(flows),
        "aborted": sum(f.kind != "normal" for f in flows),
        "ok": len(answered) - len(local), "local_errors": len(local),
        "no_answer": len(stream.no_answer), "held_too_long": len(late),
        "held_limit_ms": round(limit_s * 1000),
        "inflight_left": sum(in_redis.values()) + sum(embedded.values()),
        "inflight": {"redis": in_redis, "embedded": embedded}, "inflight_unread": unread,
        "traps": len(traps), "tracebacks": len(tracebacks),
        "decided_in_redis": sum(f.state == "redis" for f in answered),
        "decided_embedded": sum(f.state == "embedded" for f in answered),
        "failed_picks": failed_picks(stream.gateways),
        "timeline": timeline,
        "examples": [{"kind": f.kind, "waited_s": round((f.decided or time.monotonic())
                                                        - f.sent, 3)}
                     for f in (stream.no_answer + late)[:5]],
        "log_excerpts": traps[:3] + ["\n".join(m.splitlines()[:12]) for m in tracebacks[:3]],
    }
