"""Gateway cost: what Envoy + the plugin add per request, per policy and body size.

    .venv/bin/python bench/gateway_cost.py --name gateway-cost        # ~6 min

Envoy 1.40 (`--concurrency 2`) in front of loopback replicas (a child process:
harness.ReplicaSet answering a chat completion at once with a small JSON, and
serving a real-sized vLLM /metrics page, the simulator's, for least_busy).
One Envoy per configuration, all started together:
  no wasm filter (least request)      the reference
  compiled no-op, compiled round_robin
                                      a filter in C (bench/compiled_reference):
                                      what any wasm filter costs, and what a
                                      compiled one pinning each request costs
  plugin idle                         policy `header`, no header sent: the
                                      plugin's callbacks run, it decides nothing
  global_least_request, prefix_cache, least_busy (default), least_busy
  (weighted), round_robin             the plugin deciding (lb_config: endpoints;
                                      least_busy: metricsCluster; defaults otherwise)
Load: open loop at `--rate` requests/s (bench/overhead.py's client:
request i due at t0 + i/rate, keep-alive connections), POST chat bodies of 1 KB,
32 KB and 256 KB (bench/routing_quality.py's: the first half shared by every
request, the second half unique), in interleaved rounds. Reported per
configuration and size: service latency (request written -> last byte of the
answer) p50 / mean / p99 and its difference to no filter; Envoy CPU per request
(process user + system time / requests) and its difference; the plugin's own
decision time (its `ailb.decision_us` histogram: sum / count).

Then:
  streamed answers   Envoy CPU per request when the answer is an SSE stream of
                     --stream-tokens (100) tokens (simulated a100-7b replicas): what the per-chunk
                     callbacks cost
  scraping           Envoy CPU per second with least_busy and no traffic, for
                     4 and 16 replicas (each /metrics page parsed in the VM)
  start-up, memory   start -> ready and idle RSS with and without the plugin
                     (bench.overhead.measure_starts / measure_memory_by_concurrency)
  the 1 MiB edge     prefix_cache with bodies around maxBodyBytes (1 MiB) and
                     Envoy's buffer limit (1 MiB), with and without content-length
Writes bench/results/<name>/README.md and results.json.
"""

import argparse
import asyncio
import datetime
import json
import os
import platform
import shlex
import socket
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import envoy_harness as harness  # noqa: E402
from bench import policies, report  # noqa: E402
from bench.compiled_reference import build as compiled_reference  # noqa: E402
from bench.overhead import (Scenario, cpu_model, envoy_version, interleaved,  # noqa: E402
                            measure_memory_by_concurrency, measure_starts)
from bench.routing_quality import chat_body, plugin_problems  # noqa: E402

SIZES = {"1 KB": 1024, "32 KB": 32 * 1024, "256 KB": 256 * 1024}
OTHER_MODULES = {}  # label -> .wasm path, from --also-wasm
CONFIGS = ["no filter", "compiled no-op", "compiled round_robin", "plugin idle",
           "global_least_request", "prefix_cache", "least_busy", "least_busy-weighted",
           "round_robin"]


# --- the replicas (child process) ------------------------------------------------------------

def _metrics_page():
    from sim import metrics, profiles
    from sim.engine import Engine
    engine = Engine(profiles.get("a100-7b"))
    return metrics.render(engine, "qwen", time.time(), time.time()).encode()


def _serve(count):
    page = _metrics_page()
    answer = json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "model": "qwen",
                         "choices": [{"index": 0, "message": {"role": "assistant",
                                                              "content": "ok"},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 10, "completion_tokens": 1,
                                   "total_tokens": 11}}).encode()

    def handler(replica, request):
        if request.path == "/metrics":
            return 200, {"content-type": "text/plain; version=0.0.4"}, page
        if request.path == "/health":
            return 200, {}, b""
        return 200, {"content-type": "application/json"}, answer

    replicas = harness.ReplicaSet.start(count, [harness.Behaviour(handler=handler)
                                                for _ in range(count)])
    print(json.dumps({"endpoints": replicas.endpoints}), flush=True)
    try:
        sys.stdin.read()
    except KeyboardInterrupt:
        pass
    replicas.stop()


def replica_process(count):
    """`count` replicas serving _serve's answers, in a child process."""
    return harness.ReplicaProcess(count, timeout=30, command=[
        sys.executable, os.path.abspath(__file__), "--serve-replicas", str(count)])


# --- Envoy configurations -------------------------------------------------------------------

class _Config(harness.EnvoyConfig):
    """Flushes stats often, so histogram sums are current when a scenario ends."""

    def render(self):
        doc = super().render()
        doc["stats_flush_interval"] = "0.25s"
        return doc


def make_envoy(name, endpoints, wasm, concurrency, workdir):
    if name == "no filter":
        base = harness.EnvoyConfig.simple(endpoints, concurrency=concurrency,
                                          override_host=False, fallback_policy="least_request")
    elif name.startswith("compiled"):
        reference = os.path.join(workdir, "compiled-reference.wasm")  # built once per run
        if not os.path.exists(reference):
            compiled_reference.build(reference)
        pinned = ",".join(endpoints) if name == "compiled round_robin" else ""
        base = harness.EnvoyConfig.simple(endpoints, wasm_path=reference, concurrency=concurrency,
                                          plugin_config=pinned, fallback_policy="least_request")
    else:  # "<policy>" with the module under test, "<policy> @<label>" with another
        policy, _, label = name.partition(" @")
        module = OTHER_MODULES[label] if label else wasm
        base = harness.EnvoyConfig.simple(endpoints, wasm_path=module, concurrency=concurrency,
                                          plugin_config=policies.plugin_config(policy, endpoints),
                                          fallback_policy="least_request")
    config = _Config(base.listeners, base.clusters, base.admin_port, base.concurrency)
    return harness.Envoy(config, os.path.join(workdir, name.replace(" ", "-").replace("@", "")))


def decision_histogram(envoy):
    """(sum, count) of the plugin's ailb.decision_us histogram, all VMs."""
    if envoy is None:
        return 0.0, 0
    _, text = envoy.admin("/stats/prometheus?filter=decision_us")
    total, count = 0.0, 0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        if "decision_us_sum" in name:
            total += float(value)
        elif "decision_us_count" in name:
            count += int(float(value))
    return total, count


# --- the measurements ---------------------------------------------------------------------------

def measure_latency(args, endpoints, wasm, workdir, log):
    os.makedirs(workdir, exist_ok=True)
    envoys = {n: make_envoy(n, endpoints, wasm, args.concurrency, workdir) for n in args.configs}
    for envoy in envoys.values():
        envoy.start(timeout=120)
    time.sleep(2.0)  # least_busy's first scrapes
    bodies = {k: [chat_body(size, i) for i in range(2048)] for k, size in SIZES.items()}
    scenarios = []
    try:
        for size in SIZES:
            for name in args.configs:
                envoy = envoys[name]
                s = Scenario(f"{size} | {name}", envoy.port, envoy,
                             body_for=lambda i, b=bodies[size]: b[i % len(b)])
                s.size, s.config, s.decision = size, name, [0.0, 0]
                scenarios.append(s)
        for n, s, seconds in interleaved(scenarios, args):
            before = decision_histogram(s.envoy if s.config != "no filter" else None)
            samples, errors = s.run(args.rate, seconds, args.connections)
            time.sleep(0.3)  # a stats flush
            after = decision_histogram(s.envoy if s.config != "no filter" else None)
            s.decision[0] += after[0] - before[0]
            s.decision[1] += after[1] - before[1]
            log(f"round {n + 1} of {args.rounds}: {s.name}: {len(samples)} answers"
                + (f", {len(errors)} errors, e.g. {errors[0]}" if errors else ""))
        rss = {n: e.rss_bytes() for n, e in envoys.items()}
        problems = {n: plugin_problems(e)[:3] for n, e in envoys.items()}
    finally:
        for envoy in envoys.values():
            envoy.stop()
    rows = []
    for s in scenarios:
        row = s.row()
        row.update(size=s.size, config=s.config,
                   decision_us=(s.decision[0] / s.decision[1]) if s.decision[1] else None)
        rows.append(row)
    return rows, rss, {k: v for k, v in problems.items() if v}


def measure_streaming(args, wasm, workdir, log):
    """Envoy CPU per streamed request (an SSE chunk per token), no filter vs the plugin."""
    from sim.fleet import Fleet
    out = {}
    body = json.dumps({"model": "meta-llama/Llama-2-7b-hf", "stream": True,
                       "max_tokens": args.stream_tokens, "ignore_eos": True,
                       "messages": [{"role": "user", "content": "Tell me a story. " * 20}]}
                      ).encode()
    with Fleet.start(4, "a100-7b", subprocess=True) as fleet:
        for name in ("no filter", "plugin idle", "prefix_cache"):
            envoy = make_envoy(name, fleet.addresses, wasm, args.concurrency,
                               os.path.join(workdir, "stream"))
            with envoy.start(timeout=120):
                async def one(envoy=envoy):
                    return await harness.async_request(
                        envoy.port, "POST", "/v1/chat/completions",
                        {"content-type": "application/json"}, body, timeout=60)

                async def burst(n, rate):
                    tasks = []
                    for _ in range(n):
                        tasks.append(asyncio.ensure_future(one()))
                        await asyncio.sleep(1 / rate)
                    return await asyncio.gather(*tasks)
                asyncio.run(burst(10, 20))  # warm-up
                cpu0 = envoy.cpu_seconds()
                responses = asyncio.run(burst(args.stream_requests, 20))
                cpu = envoy.cpu_seconds() - cpu0
            chunks = [r.body.count(b"data: ") for r in responses if r.status == 200]
            out[name] = {"requests": len(responses), "ok": len(chunks),
                         "chunks_per_request": statistics.fmean(chunks) if chunks else 0,
                         "cpu_us_per_request": cpu / len(responses) * 1e6}
            log(f"streamed, {name}: {out[name]}")
    return out


def measure_scraping(args, wasm, workdir, log):
    """Envoy CPU per second, no traffic, least_busy scraping N replicas every second."""
    out = {}
    for count in (4, 16):
        with replica_process(count) as replicas:
            for name in ("no filter", "least_busy"):
                envoy = make_envoy(name, replicas.endpoints, wasm, args.concurrency,
                                   os.path.join(workdir, f"scrape-{count}"))
                with envoy.start(timeout=120):
                    time.sleep(3)
                    cpu0 = envoy.cpu_seconds()
                    time.sleep(args.scrape_seconds)
                    cpu = envoy.cpu_seconds() - cpu0
                out[f"{count}:{name}"] = cpu / args.scrape_seconds
                log(f"scraping, {count} replicas, {name}: "
                    f"{cpu / args.scrape_seconds:.1%} of a core")
    return out


def _raw_post(port, body, chunked):
    """One POST over a raw socket; returns the status code (0 on a broken connection)."""
    head = ["POST /v1/chat/completions HTTP/1.1", "host: bench", "content-type: application/json",
            "connection: close"]
    if chunked:
        head.append("transfer-encoding: chunked")
        step = 64 * 1024
        payload = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + step]), body[i:i + step])
                           for i in range(0, len(body), step)) + b"0\r\n\r\n"
    else:
        head.append(f"content-length: {len(body)}")
        payload = body
    try:
        with socket.create_connection((harness.LOOPBACK, port), timeout=20) as s:
            s.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
            data = s.recv(4096)
        return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    except (OSError, ValueError, IndexError):
        return 0


def measure_edge(args, wasm, workdir, log):
    """prefix_cache around 1 MiB (maxBodyBytes default = Envoy's buffer limit)."""
    mib = 1024 * 1024
    sizes = {"1 MiB - 1 KB": mib - 1024, "1 MiB - 1 B": mib - 1, "1 MiB": mib,
             "1 MiB + 1 B": mib + 1, "4 MiB": 4 * mib}
    out = {}
    with replica_process(2) as replicas:
        for name in ("no filter", "prefix_cache"):
            envoy = make_envoy(name, replicas.endpoints, wasm, args.concurrency,
                               os.path.join(workdir, "edge"))
            with envoy.start(timeout=120):
                for label, size in sizes.items():
                    body = chat_body(size - 1024, 1)  # a little short, then padded:
                    body = body[:-1] + b" " * (size - len(body)) + b"}"  # JSON whitespace
                    assert len(body) == size
                    for chunked in (False, True):
                        status = _raw_post(envoy.port, body, chunked)
                        key = (f"{label} ({len(body)} B), "
                               f"{'chunked' if chunked else 'content-length'}")
                        out.setdefault(key, {})[name] = status
                log(f"edge, {name}: done")
    return out


# --- report ---------------------------------------------------------------------------------------

def render(args, argv, rows, rss, problems, streaming, scraping, starts, memory, edge, wasm):
    by = {(r["size"], r["config"]): r for r in rows}
    lines = [
        "# Gateway cost", "",
        f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}:", "",
        "```sh", ".venv/bin/python bench/gateway_cost.py " + " ".join(shlex.quote(a) for a in argv),
        "```", "",
        f"Machine: {os.cpu_count()} CPUs ({cpu_model()}), Linux {platform.release()}; Envoy "
        f"{envoy_version()} (`--concurrency {args.concurrency}`, V8); Python "
        f"{platform.python_version()}; everything on 127.0.0.1, client, Envoys and replicas "
        f"sharing the 2 cores. Module `{os.path.basename(wasm)}` "
        f"({os.path.getsize(wasm) / 1e6:.2f} MB). {args.replicas} replicas answering at once "
        "(Python http.server in a child process). Open loop at "
        f"{args.rate:g} requests/s, {args.duration:g} s per scenario in {args.rounds} "
        f"interleaved rounds (after {args.warmup:g} s warm-up), {args.connections} keep-alive "
        "connection" + ("s" if args.connections > 1 else " (one request at a time)") +
        ". Chat bodies: the first half shared by every request, the second half "
        "unique (prefix_cache hashes at most 256 blocks of 64 bytes = the first 16 KB; it "
        "parses the whole JSON). Plugin configs: `endpoints` (+ `metricsCluster` for "
        "least_busy), defaults otherwise.", "",
        "## Added latency and CPU per request", "",
        "Service latency = request written -> last byte of the answer (ms). \"added\" = "
        "the difference to Envoy without the filter at the same size (µs; p99s on a shared "
        "2-core machine are mostly scheduling noise). Decision = the plugin's own "
        "`ailb.decision_us` (mean µs from start of decision to pinned).", "",
        "| body | Envoy config | requests | non-200 | p50 ms | mean ms | p99 ms | added p50 µs "
        "| added mean µs | Envoy CPU µs/req | added CPU µs/req | decision µs |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in SIZES:
        base = by[(size, "no filter")]
        for name in args.configs:
            r = by[(size, name)]
            s, b = r["service"], base["service"]
            cells = [size, name, str(r["requests"]), str(r["non_200"]), f"{s['p50']:.3f}",
                     f"{s['mean']:.3f}", f"{s['p99']:.3f}"]
            if name == "no filter":
                cells += ["", "", f"{r['cpu_us_per_req']:.0f}", "", ""]
            else:
                cells += [f"{(s['p50'] - b['p50']) * 1e3:+.0f}",
                          f"{(s['mean'] - b['mean']) * 1e3:+.0f}",
                          f"{r['cpu_us_per_req']:.0f}",
                          f"{r['cpu_us_per_req'] - base['cpu_us_per_req']:+.0f}",
                          f"{r['decision_us']:.0f}" if r.get("decision_us") else ""]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Envoy RSS after the load (MB): " + ", ".join(
        f"{n} {v / 1e6:.0f}" for n, v in rss.items()) + ".", ""]
    if problems:
        lines += [f"Plugin log problems: {problems}", ""]
    if streaming:
        base = streaming.get("no filter", {})
        lines += [
            "## Streamed answers", "",
            f"{args.stream_requests} streamed chat completions of {args.stream_tokens} tokens "
            "(4 simulated a100-7b replicas, 20 requests/s): Envoy CPU per request. "
            "Every SSE chunk of the answer passes the wasm filter's response-body callback.", "",
            "| Envoy config | requests ok | chunks per answer | Envoy CPU µs/request | added |",
            "|---|---:|---:|---:|---:|"]
        for name, v in streaming.items():
            extra = (f"{v['cpu_us_per_request'] - base.get('cpu_us_per_request', 0):+.0f}"
                     if name != "no filter" else "")
            lines.append(f"| {name} | {v['ok']} / {v['requests']} | "
                         f"{v['chunks_per_request']:.0f} | {v['cpu_us_per_request']:.0f} | "
                         f"{extra} |")
        lines.append("")
    if scraping:
        lines += [
            "## least_busy's scraping, no traffic", "",
            "Envoy CPU (share of one core) with least_busy scraping every replica's /metrics "
            "(the simulator's vLLM page, ~51 KB, 518 lines) each second (default "
            "scrapeInterval), vs Envoy without the filter.", "",
            "| replicas | no filter | least_busy |", "|---:|---:|---:|"]
        for count in (4, 16):
            lines.append(f"| {count} | {scraping.get(f'{count}:no filter', 0):.1%} | "
                         f"{scraping.get(f'{count}:least_busy', 0):.1%} |")
        lines.append("")
    if starts:
        med = {k: statistics.median(s for s, _ in v) for k, v in starts.items()}
        rss_idle = {k: statistics.median(r for _, r in v) for k, v in starts.items()}
        lines += [
            "## Start-up and memory", "",
            "| | Envoy without the filter | Envoy with the plugin |", "|---|---:|---:|",
            f"| start -> admin /ready, median of {args.starts} (s) | {med['envoy']:.3f} | "
            f"{med['plugin']:.3f} |",
            f"| idle RSS after ready, median (MB) | {rss_idle['envoy'] / 1e6:.1f} | "
            f"{rss_idle['plugin'] / 1e6:.1f} |", ""]
    if memory:
        levels = sorted({c for _, c in memory})
        lines += ["| --concurrency | " + " | ".join(str(c) for c in levels) + " |",
                  "|---|" + "---:|" * len(levels),
                  "| idle RSS without the filter (MB) | " + " | ".join(
                      f"{memory[('envoy', c)] / 1e6:.1f}" for c in levels) + " |",
                  "| idle RSS with the plugin (MB) | " + " | ".join(
                      f"{memory[('plugin', c)] / 1e6:.1f}" for c in levels) + " |", ""]
        if len(levels) > 1:
            lo, hi = levels[0], levels[-1]
            share = {c: memory[("plugin", c)] - memory[("envoy", c)] for c in levels}
            per_vm = (share[hi] - share[lo]) / (hi - lo)
            lines += [f"Fit: the plugin costs about {(share[lo] - per_vm * lo) / 1e6:.0f} MB "
                      f"once per Envoy process (V8's compiled module, the main thread's VM) "
                      f"plus {per_vm / 1e6:.1f} MB per worker VM.", ""]
    if edge:
        lines += ["## Bodies around 1 MiB", "",
                  "HTTP status per body (prefix_cache's maxBodyBytes default is 1 MiB, Envoy's "
                  "per-connection buffer limit is 1 MiB).", "",
                  "| body | no filter | prefix_cache |", "|---|---:|---:|"]
        for key, v in edge.items():
            lines.append(f"| {key} | {v.get('no filter')} | {v.get('prefix_cache')} |")
        lines.append("")
    return "\n".join(lines)


def headline(rows, streaming):
    by = {(r["size"], r["config"]): r for r in rows}
    parts = []
    for size in SIZES if (next(iter(SIZES)), "prefix_cache") in by else ():
        base = by[(size, "no filter")]["service"]["mean"]
        pc = by[(size, "prefix_cache")]["service"]["mean"]
        parts.append(f"prefix_cache {size} {(pc - base) * 1e3:+.0f} µs")
    return "added mean latency: " + ", ".join(parts)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve-replicas", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per scenario")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--memory-concurrency", default="1,2,4")
    parser.add_argument("--stream-requests", type=int, default=200)
    parser.add_argument("--stream-tokens", type=int, default=100)
    parser.add_argument("--scrape-seconds", type=float, default=10.0)
    parser.add_argument("--skip", default="", help="comma-separated: latency, streaming, "
                                                   "scraping, startup, edge")
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help="comma-separated, from: " + ", ".join(CONFIGS))
    parser.add_argument("--wasm")
    parser.add_argument("--also-wasm", action="append", default=[], metavar="LABEL=PATH",
                        help="also measure each plugin config with this module, as "
                             "'<config> @LABEL', in the same interleaved rounds (before/after)")
    parser.add_argument("--name", default="gateway-cost")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    if args.serve_replicas:
        _serve(args.serve_replicas)
        return
    skip = set(filter(None, args.skip.split(",")))
    args.configs = ["no filter"] + [c for c in args.configs.split(",")
                                    if c in CONFIGS and c != "no filter"]
    for item in args.also_wasm:
        label, _, path = item.partition("=")
        OTHER_MODULES[label] = path
        args.configs += [f"{c} @{label}" for c in args.configs
                         if c != "no filter" and not c.startswith("compiled") and " @" not in c]

    def log(text):
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    out_dir = args.out or os.path.join(report.RESULTS, args.name)
    os.makedirs(out_dir, exist_ok=True)
    wasm = args.wasm or harness.build_plugin()
    workdir = os.path.join(harness.TMP_DIR, f"gateway-cost-{os.getpid()}")
    rows, rss, problems, streaming, scraping, starts, memory, edge = [], {}, {}, {}, {}, {}, {}, {}
    with replica_process(args.replicas) as replicas:
        if "latency" not in skip:
            rows, rss, problems = measure_latency(args, replicas.endpoints, wasm, workdir, log)
        if "startup" not in skip:
            starts = measure_starts(replicas.endpoints, wasm, args.concurrency, args.starts,
                                    workdir)
            levels = [int(c) for c in args.memory_concurrency.split(",") if c.strip()]
            memory = measure_memory_by_concurrency(replicas.endpoints, wasm, levels, workdir)
            log("start-up and memory done")
    if "streaming" not in skip:
        streaming = measure_streaming(args, wasm, workdir, log)
    if "scraping" not in skip:
        scraping = measure_scraping(args, wasm, workdir, log)
    if "edge" not in skip:
        edge = measure_edge(args, wasm, workdir, log)
    text = render(args, argv, rows, rss, problems, streaming, scraping, starts, memory, edge,
                  wasm) if rows else ""
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(text)
    doc = {"kind": "gateway_cost", "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "command": ".venv/bin/python bench/gateway_cost.py " + " ".join(argv),
           "headline": headline(rows, streaming) if rows else "",
           "latency": rows, "streaming": streaming, "scraping": scraping,
           "starts": starts, "memory": {f"{k}:{c}": v for (k, c), v in memory.items()},
           "edge": edge}
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(doc, f, indent=1, default=str)
    if os.path.dirname(os.path.abspath(out_dir)) == report.RESULTS:
        report.write_index()
    print(text)


if __name__ == "__main__":
    main()
