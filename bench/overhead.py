"""Gateway overhead of the plugin: one run, one machine, the same upstreams.

    python bench/overhead.py --rate 200 --duration 10 \
        --out envoy-test/results/overhead.md

Compares, at a fixed request rate (open loop: request i is due at t0 + i/rate
whatever happened to the earlier ones, sent on the first free connection of a
keep-alive pool):
  - direct          the client talks to the replicas itself (reference only)
  - envoy           Envoy without the wasm filter
  - plugin idle     Envoy with the plugin, policy "header", no header sent: the
                    plugin runs its callbacks and changes nothing
  - plugin pinning  the same Envoy, x-ailb-endpoint names a replica (cycling
                    over them, so the load spreads as round robin does)
and reports latency percentiles, Envoy CPU per request, Envoy start-to-ready
time with and without the plugin (median of --starts), the module size and
Envoy's resident memory (RSS) with --concurrency workers.

The replicas run in a child process; the load client is one asyncio loop, so
neither shares a GIL with the other. Every loop is bounded in count and time.
"""

import argparse
import asyncio
import datetime
import gc
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import envoy_harness as harness  # noqa: E402

PLUGIN_CONFIG = {"lb_policy": "header"}


# --- open-loop load client -----------------------------------------------------------

class Sample:
    __slots__ = ("index", "due", "sent", "done", "status", "replica")

    def __init__(self, index, due, sent, done, status, replica):
        self.index, self.due, self.sent, self.done = index, due, sent, done
        self.status, self.replica = status, replica


async def _read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, replica, close = None, None, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "x-replica":
            replica = value.strip()
        elif name == "connection" and value.strip().lower() == "close":
            close = True
    if length is None:
        raise ValueError("response without content-length")
    await reader.readexactly(length)
    return status, replica, close


async def _load(port, rate, duration, connections, headers_for, body_for=None):
    """Sends rate*duration requests, request i due at t0 + i/rate. Returns
    (samples, errors). With `body_for(i)` -> bytes, request i is a POST with that body."""
    loop = asyncio.get_running_loop()
    total = max(1, int(rate * duration))
    queue = asyncio.Queue()
    samples, errors = [], []

    async def connect():
        return await asyncio.wait_for(asyncio.open_connection(harness.LOOPBACK, port), 5)

    def producer(t0, stop):
        """A thread: sleeps precisely (nanosleep) and wakes the loop through its
        self-pipe, so a request is handed over within ~0.1 ms of its due time
        (asyncio's own timers round up to whole milliseconds)."""
        for i in range(total):
            due = t0 + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if stop.is_set():
                break
            loop.call_soon_threadsafe(queue.put_nowait, (i, due))
        for _ in range(connections):
            loop.call_soon_threadsafe(queue.put_nowait, None)

    async def worker():
        reader, writer = await connect()
        try:
            for _ in range(total + 1):  # bounded: at most every request, then the stop
                item = await queue.get()
                if item is None:
                    return
                i, due = item
                extra = "".join(f"{k}: {v}\r\n" for k, v in headers_for(i).items())
                if body_for is None:
                    request = f"GET /v1/bench/{i} HTTP/1.1\r\nhost: bench\r\n{extra}\r\n".encode()
                else:
                    body = body_for(i)
                    request = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\n"
                               f"content-type: application/json\r\ncontent-length: {len(body)}"
                               f"\r\n{extra}\r\n").encode() + body
                sent = loop.time()
                try:
                    writer.write(request)
                    status, replica, close = await asyncio.wait_for(_read_response(reader), 10)
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError,
                        ValueError) as exc:
                    errors.append(repr(exc))
                    writer.close()
                    reader, writer = await connect()
                    continue
                samples.append(Sample(i, due, sent, loop.time(), status, replica))
                if close:
                    writer.close()
                    reader, writer = await connect()
        finally:
            writer.close()

    assert loop.time() - time.monotonic() < 0.001  # one clock for due and sent times
    workers = [asyncio.ensure_future(worker()) for _ in range(connections)]
    await asyncio.sleep(0.05)  # connections open before the clock starts
    stop = threading.Event()
    thread = threading.Thread(target=producer, args=(loop.time() + 0.01, stop), daemon=True)
    thread.start()
    try:
        await asyncio.wait_for(asyncio.gather(*workers), duration + 30)
    finally:
        stop.set()
        thread.join(5)
    return samples, errors


def run_load(port, rate, duration, connections, headers_for=lambda i: {}, body_for=None):
    gc.collect()
    gc.disable()  # no collector pauses inside the measurement
    try:
        return asyncio.run(_load(port, rate, duration, connections, headers_for, body_for))
    finally:
        gc.enable()


# --- statistics ----------------------------------------------------------------------------

def percentile(sorted_values, q):
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def summarize(values_s):
    v = sorted(x * 1e3 for x in values_s)  # ms
    return {"p50": percentile(v, 0.5), "p90": percentile(v, 0.9), "p99": percentile(v, 0.99),
            "mean": statistics.fmean(v) if v else float("nan"), "max": v[-1] if v else float("nan")}


def interleaved(scenarios, args):
    """Warms every scenario up (unrecorded), then yields (round, scenario, seconds)
    for args.rounds rounds of args.duration in all, the order rotated each round
    so the machine's slow drifts fall on every scenario alike. The caller runs the
    scenario for `seconds`."""
    for s in scenarios:
        s.run(args.rate, args.warmup, args.connections, record=False)
    for n in range(args.rounds):
        for s in scenarios[n % len(scenarios):] + scenarios[:n % len(scenarios)]:
            yield n, s, args.duration / args.rounds


class Scenario:
    def __init__(self, name, port, envoy=None, headers_for=lambda i: {}, expect=None,
                 body_for=None):
        self.name, self.port, self.envoy = name, port, envoy
        self.headers_for, self.expect, self.body_for = headers_for, expect, body_for
        self.samples, self.errors, self.cpu_s = [], [], 0.0
        self.misrouted = 0
        self.busy_s = 0.0

    def run(self, rate, duration, connections, record=True):
        cpu0 = self.envoy.cpu_seconds() if self.envoy else 0.0
        samples, errors = run_load(self.port, rate, duration, connections, self.headers_for,
                                   self.body_for)
        cpu1 = self.envoy.cpu_seconds() if self.envoy else 0.0
        if record:
            self.samples += samples
            self.errors += errors
            self.cpu_s += cpu1 - cpu0
            if samples:
                self.busy_s += max(x.done for x in samples) - min(x.due for x in samples)
            if self.expect:
                self.misrouted += sum(1 for s in samples if s.replica != self.expect(s))
        return samples, errors

    def requests_per_s(self):
        """Answers per second of measured time (each run: first due -> last answer)."""
        return len(self.samples) / self.busy_s if self.busy_s else 0.0

    def row(self):
        ok = [s for s in self.samples if s.status == 200]
        total = sum(1 for s in self.samples if s.status) + len(self.errors)
        return {
            "name": self.name,
            "requests": len(self.samples),
            "non_200": len(self.samples) - len(ok) + len(self.errors),
            "open_loop": summarize([s.done - s.due for s in ok]),
            "service": summarize([s.done - s.sent for s in ok]),
            "late_p50": summarize([max(0.0, s.sent - s.due) for s in ok])["p50"],
            "late_p99": summarize([max(0.0, s.sent - s.due) for s in ok])["p99"],
            "cpu_us_per_req": (self.cpu_s / total * 1e6) if self.envoy and total else None,
            "misrouted": self.misrouted if self.expect else None,
            "achieved_rps": self.requests_per_s(),
        }


# --- Envoy start-up and memory ------------------------------------------------------------

def _idle_envoy(endpoints, wasm, concurrency, path, settle_s):
    """(start-to-ready seconds, idle RSS) of one Envoy start, with the plugin
    when `wasm`, after `settle_s` (workers finish cloning their VMs)."""
    config = harness.EnvoyConfig.simple(endpoints, wasm_path=wasm, plugin_config=PLUGIN_CONFIG,
                                        concurrency=concurrency)
    envoy = harness.Envoy(config, path)
    try:
        envoy.start(timeout=120)
        time.sleep(settle_s)
        return envoy.startup_s, envoy.rss_bytes()
    finally:
        envoy.stop()


def measure_starts(endpoints, wasm, concurrency, starts, workdir):
    """Alternating starts with and without the plugin: start-to-ready seconds and
    idle RSS right after ready."""
    out = {"envoy": [], "plugin": []}
    for n in range(starts):
        for kind in ("envoy", "plugin"):
            out[kind].append(_idle_envoy(endpoints, wasm if kind == "plugin" else None,
                                         concurrency,
                                         os.path.join(workdir, f"start-{kind}-{n}"), 0.3))
    return out


def measure_memory_by_concurrency(endpoints, wasm, levels, workdir):
    """Idle RSS with and without the plugin for each worker count: what is paid
    once (the compiled module) and what each worker's VM adds."""
    out = {}
    for concurrency in levels:
        for kind in ("envoy", "plugin"):
            out[(kind, concurrency)] = _idle_envoy(
                endpoints, wasm if kind == "plugin" else None, concurrency,
                os.path.join(workdir, f"mem-{kind}-{concurrency}"), 0.5)[1]
    return out


def envoy_version():
    try:
        text = subprocess.run([harness.find_envoy(), "--version"], capture_output=True,
                              text=True, timeout=30).stdout
        return text.strip().split("version:")[-1].strip().split("/")[1]
    except Exception:  # noqa: BLE001 - informative only
        return "?"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


# --- report --------------------------------------------------------------------------------

def fmt(x, digits=3):
    return "n/a" if x is None else f"{x:.{digits}f}"


def render(args, rows, starts, rss_loaded, wasm, wasm_size, memory):
    by = {r["name"]: r for r in rows}
    env_, idle, pin = by["envoy (no wasm filter)"], by["plugin, no header"], by["plugin, pinning"]
    med = {k: statistics.median(s for s, _ in v) for k, v in starts.items()}
    rss_idle = {k: statistics.median(r for _, r in v) for k, v in starts.items()}
    lines = [
        "# Gateway overhead of the ai-load-balancer plugin in Envoy",
        "",
        f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} by "
        f"`bench/overhead.py --rate {args.rate:g} --duration {args.duration:g} "
        f"--connections {args.connections} --concurrency {args.concurrency}`.",
        "",
        f"Machine: {os.cpu_count()} CPUs ({cpu_model()}), Linux {platform.release()}; "
        f"Envoy {envoy_version()} (`--concurrency {args.concurrency}`), V8 runtime; "
        f"Python {platform.python_version()} client and replicas; all on 127.0.0.1. "
        f"{args.replicas} replicas (Python `http.server`, keep-alive, in a child process) "
        "behind a STATIC cluster with the override_host LB policy and round-robin fallback.",
        "",
        f"Load: open loop at {args.rate:g} requests/s for {args.duration:g} s per scenario "
        f"(after {args.warmup:g} s warm-up), split into {args.rounds} interleaved rounds, "
        f"over {args.connections} keep-alive connections; GET with no body. "
        "\"Open loop\" latency counts from the moment a request was due (includes any "
        "wait for a free connection: no coordinated omission); \"service\" latency "
        "counts from the write of the request to the last byte of the answer.",
        "",
        "## Latency (ms)",
        "",
        "| scenario | requests | non-200 | open-loop p50 | p90 | p99 | mean | service p50 | p90 "
        "| p99 | mean | Envoy CPU µs/req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        o, s = r["open_loop"], r["service"]
        lines.append(f"| {r['name']} | {r['requests']} | {r['non_200']} | {fmt(o['p50'])} | "
                     f"{fmt(o['p90'])} | {fmt(o['p99'])} | {fmt(o['mean'])} | {fmt(s['p50'])} | "
                     f"{fmt(s['p90'])} | {fmt(s['p99'])} | {fmt(s['mean'])} | "
                     f"{fmt(r['cpu_us_per_req'], 0)} |")
    delta = lambda a, b, k: (a["service"][k] - b["service"][k]) * 1e3  # noqa: E731
    lines += [
        "",
        "Plugin cost over Envoy without the filter (service latency, µs): "
        f"no header p50 {delta(idle, env_, 'p50'):+.0f}, mean {delta(idle, env_, 'mean'):+.0f}; "
        f"pinning p50 {delta(pin, env_, 'p50'):+.0f}, mean {delta(pin, env_, 'mean'):+.0f} "
        "(p99 on a shared 2-CPU machine is dominated by scheduling hiccups). "
        "Envoy CPU per request: "
        f"{fmt(env_['cpu_us_per_req'], 0)} µs without the filter, "
        f"{fmt(idle['cpu_us_per_req'], 0)} µs with the plugin idle, "
        f"{fmt(pin['cpu_us_per_req'], 0)} µs pinning.",
        "",
        f"Pinned requests answered by another replica than the one named: {pin['misrouted']} "
        f"of {pin['requests']}. Achieved rates: "
        + ", ".join(f"{r['name']} {r['achieved_rps']:.0f}/s" for r in rows) + ". "
        "Client send lateness p50/p99 (due -> write): "
        + ", ".join(f"{r['name']} {fmt(r['late_p50'])}/{fmt(r['late_p99'])} ms"
                   for r in rows) + ".",
        "",
        "## Start-up, module, memory",
        "",
        "| | Envoy without the filter | Envoy with the plugin |",
        "|---|---:|---:|",
        f"| start -> admin /ready, median of {args.starts} (s) | {med['envoy']:.3f} | "
        f"{med['plugin']:.3f} |",
        f"| start -> ready, all runs (s) | {', '.join(f'{s:.3f}' for s, _ in starts['envoy'])} | "
        f"{', '.join(f'{s:.3f}' for s, _ in starts['plugin'])} |",
        f"| RSS idle after ready, median (MB) | {rss_idle['envoy'] / 1e6:.1f} | "
        f"{rss_idle['plugin'] / 1e6:.1f} |",
        f"| RSS after the load runs (MB) | {rss_loaded['envoy'] / 1e6:.1f} | "
        f"{rss_loaded['plugin'] / 1e6:.1f} |",
        f"| module size | - | {wasm_size / 1e6:.2f} MB ({wasm_size} bytes) |",
        "",
        f"Module: `{os.path.basename(wasm)}` built from the working tree by build/make.py "
        "(envoy target). Concurrency "
        f"{args.concurrency}: one VM per worker plus the main thread's, each with its own "
        "CPython heap; the plugin's memory cost is the RSS difference.",
        "",
    ]
    if memory:
        levels = sorted({c for _, c in memory})
        lines += [
            "### Idle RSS by worker count (MB)",
            "",
            "| --concurrency | " + " | ".join(str(c) for c in levels) + " |",
            "|---|" + "---:|" * len(levels),
            "| Envoy without the filter | "
            + " | ".join(f"{memory[('envoy', c)] / 1e6:.1f}" for c in levels) + " |",
            "| Envoy with the plugin | "
            + " | ".join(f"{memory[('plugin', c)] / 1e6:.1f}" for c in levels) + " |",
            "| plugin's share | " + " | ".join(
                f"{(memory[('plugin', c)] - memory[('envoy', c)]) / 1e6:.1f}" for c in levels)
            + " |",
            "",
        ]
        if len(levels) > 1:
            lo, hi = levels[0], levels[-1]
            per_worker = ((memory[("plugin", hi)] - memory[("envoy", hi)])
                          - (memory[("plugin", lo)] - memory[("envoy", lo)])) / (hi - lo)
            fixed = (memory[("plugin", lo)] - memory[("envoy", lo)]) - per_worker * lo
            lines += [f"Fit: the plugin costs about {fixed / 1e6:.0f} MB once per process (V8's "
                      f"compiled module and the main thread's VM) plus {per_worker / 1e6:.1f} MB "
                      "per worker VM.", ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per scenario")
    parser.add_argument("--connections", type=int, default=8, help="keep-alive connections")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2, help="Envoy worker threads")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds per scenario")
    parser.add_argument("--starts", type=int, default=3, help="start-ups to time per kind")
    parser.add_argument("--memory-concurrency", default="1,2,4",
                        help="worker counts for the idle-RSS table ('' to skip)")
    parser.add_argument("--wasm", help="a prebuilt module instead of building one")
    parser.add_argument("--keep", action="store_true",
                        help="keep the Envoy logs and configs (results/tmp/bench-<pid>)")
    parser.add_argument("--out", default=os.path.join(harness.ENVOY_TEST, "results", "overhead.md"))
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0 or args.rounds < 1 or args.connections < 1:
        parser.error("rate, duration, rounds and connections must be positive")

    wasm = args.wasm or harness.build_plugin()
    wasm_size = os.path.getsize(wasm)
    workdir = os.path.join(harness.TMP_DIR, f"bench-{os.getpid()}")
    with harness.ReplicaProcess(args.replicas) as replicas:
        endpoints = replicas.endpoints
        print(f"replicas: {endpoints}", flush=True)
        starts = measure_starts(endpoints, wasm, args.concurrency, args.starts, workdir)
        print(f"start-to-ready: { {k: [round(s, 3) for s, _ in v] for k, v in starts.items()} }",
              flush=True)
        levels = [int(c) for c in args.memory_concurrency.split(",") if c.strip()]
        memory = measure_memory_by_concurrency(endpoints, wasm, levels, workdir)

        plain = harness.Envoy(harness.EnvoyConfig.simple(endpoints, concurrency=args.concurrency),
                              os.path.join(workdir, "plain"))
        plugged = harness.Envoy(harness.EnvoyConfig.simple(
            endpoints, wasm_path=wasm, plugin_config=PLUGIN_CONFIG,
            concurrency=args.concurrency), os.path.join(workdir, "plugin"))
        with plain.start(timeout=120), plugged.start(timeout=120):
            replica_ports = [int(e.rsplit(":", 1)[1]) for e in endpoints]
            scenarios = [
                Scenario("direct to a replica (reference)", replica_ports[0]),
                Scenario("envoy (no wasm filter)", plain.port, plain),
                Scenario("plugin, no header", plugged.port, plugged),
                # Pinning cycles over the replicas; the one named must answer.
                Scenario("plugin, pinning", plugged.port, plugged,
                         headers_for=lambda i: {"x-ailb-endpoint": endpoints[i % len(endpoints)]},
                         expect=lambda s: replicas.names[s.index % len(endpoints)]),
            ]
            for n, scenario, seconds in interleaved(scenarios, args):
                samples, errors = scenario.run(args.rate, seconds, args.connections)
                print(f"round {n + 1}: {scenario.name}: {len(samples)} answers, "
                      f"{len(errors)} errors", flush=True)
            rss_loaded = {"envoy": plain.rss_bytes(), "plugin": plugged.rss_bytes()}
            rows = [s.row() for s in scenarios]
            problems = [line for line in plugged.log().splitlines()
                       if "Traceback" in line or "Wasm VM failed" in line]
            if problems:
                print("warning: the plugin logged errors:\n" + "\n".join(problems[:5]))

    finish(render(args, rows, starts, rss_loaded, wasm, wasm_size, memory), args, workdir)


def finish(report, args, workdir):
    """Writes the report to args.out and prints it; removes the work folder
    unless args.keep."""
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(report)
    print(report)
    print(f"written: {args.out}")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
