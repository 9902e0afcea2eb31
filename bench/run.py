"""Routing benchmark: a workload through the real Envoy 1.40 + the built plugin,
per policy, against simulated vLLM replicas (default) or real vLLM.

    .venv/bin/python bench/run.py                                  # 16 x a10-7b, mrqa-scaled,
                                                                   # every policy (~10 min)
    .venv/bin/python bench/run.py --workloads all --name my-run    # every workload (~45 min)
    .venv/bin/python bench/run.py --replicas 8 --profile a100-7b --workloads doc-qa,sharegpt
    .venv/bin/python bench/run.py --real-vllm --workloads mrqa-ack --param qps=1 ...
    .venv/bin/python bench/run.py --endpoints 127.0.0.1:8001,127.0.0.1:8002 ...
    .venv/bin/python bench/run.py --demo [--real-vllm]             # scripts/demo.sh: a few minutes
    .venv/bin/python bench/run.py --rerender bench/results/NAME    # README and plots from
                                                                   # results.json

For each workload and policy: a fresh Envoy (`--concurrency 2`) in front of the
same replicas, their prefix caches reset, the workload's sessions sent
(streamed, one connection per request) for `--duration` seconds and drained.
Policies:
  envoy-rr, envoy-lr     Envoy's own round robin / least request, no wasm filter
  global_least_request, prefix_cache, least_busy (default profile),
  least_busy-weighted    the plugin (lb_config: endpoints, debugHeader, and for
                         least_busy metricsCluster; defaults otherwise); the
                         cluster: override_host with least request as fallback
  oracle                 the plugin's `header` policy; the client pins each
                         request to the replica its exact cache model says
                         holds the longest prefix (bench/oracle.py)
  POLICY@NAME            a variant of a plugin policy, run side by side with it:
                         its lb_config fields from --lb-config POLICY@NAME=JSON
Measured at the client: TTFT, end-to-end latency, output tokens/s; from the
replicas' own /metrics: prefix-cache hit rate (vllm:prefix_cache_hits_total /
queries_total deltas) and requests per replica; from Envoy: its CPU time.
Writes bench/results/<name>/ (README.md, results.json, PNG plots) and the
index bench/results/README.md.
"""

import argparse
import asyncio
import datetime
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import envoy_harness as harness  # noqa: E402
from bench import backends, calibrate, policies, report, workloads  # noqa: E402
from bench.loadgen import Runner  # noqa: E402
from bench.oracle import FleetCeiling, Oracle  # noqa: E402

POLICIES = ["envoy-rr", "envoy-lr", "global_least_request", "prefix_cache", "least_busy",
            "least_busy-weighted", "oracle"]
SUITE = ["mrqa-scaled", "mrqa-heavy", "doc-qa", "sysprompt", "sharegpt", "lora"]
DEMO_POLICIES = ["envoy-rr", "envoy-lr", "prefix_cache", "oracle"]


def envoy_for(policy, endpoints, wasm, args, workdir):
    if policy in ("envoy-rr", "envoy-lr"):
        config = harness.EnvoyConfig.simple(
            endpoints, concurrency=args.concurrency, override_host=False,
            fallback_policy="round_robin" if policy == "envoy-rr" else "least_request")
    else:
        config = harness.EnvoyConfig.simple(
            endpoints, wasm_path=wasm, concurrency=args.concurrency,
            plugin_config=policies.plugin_config(policy, endpoints, debugHeader=True,
                                                **args.lb_config.get(policy, {})),
            fallback_policy="least_request")
    config.listeners[0].route_timeout_s = args.timeout
    return harness.Envoy(config, os.path.join(workdir, policy))


def envoy_plugin_stats(envoy):
    """The plugin's fallback counters (the service's LB decided), summed over VMs."""
    out = {}
    for name, value in envoy.stats("ailb\\.fallbacks").items():
        if value:
            key = name.split("ailb.fallbacks.", 1)[-1]
            out[key] = out.get(key, 0) + value
    return out


def log(text):
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def run_policy(policy, index, workload, backend, wasm, args, workdir):
    endpoints = backend.endpoints
    backends.wait_idle(endpoints, timeout=120)
    backends.reset_prefix_caches(endpoints)
    salt = f"<{index:03d}> "
    sessions = workload.sessions(args.duration, seed=args.seed, salt=salt)
    envoy = envoy_for(policy, endpoints, wasm, args, workdir)
    envoy.start(timeout=120)
    try:
        if policy.startswith("least_busy"):
            time.sleep(2.5)  # the first scrapes (every 1 s) before the first request
        before = backends.snapshot(endpoints)
        sim_before = backends.sim_stats(endpoints) if backend.kind == "simulator" else None
        cpu0 = envoy.cpu_seconds()
        oracle = (Oracle(endpoints, backend.block_size, backend.num_blocks, args.oracle_gap,
                         args.oracle_min_match, args.seed) if policy == "oracle" else None)
        ceiling = FleetCeiling(endpoints, backend.block_size, backend.num_blocks,
                               args.oracle_min_match)
        runner = Runner(envoy.port, backend.model, oracle=oracle, ceiling=ceiling,
                        timeout=args.timeout, names=backend.name_of)
        records = asyncio.run(runner.run(sessions, args.duration, args.drain))
        cpu = envoy.cpu_seconds() - cpu0
        fallbacks = envoy_plugin_stats(envoy) if policy not in ("envoy-rr", "envoy-lr") else {}
        problems = [line for line in envoy.log().splitlines()
                    if "Traceback" in line or "Wasm VM failed" in line]
    finally:
        envoy.stop()
    after = backends.snapshot(endpoints)
    sim_after = backends.sim_stats(endpoints) if backend.kind == "simulator" else None
    raw = {"records": records, "delta": backends.delta(before, after), "cpu": cpu,
           "fallbacks": fallbacks, "problems": problems[:3],
           "max_inflight": runner.max_inflight,
           "sim": report.sim_delta(sim_before, sim_after, endpoints),
           "ceiling": (ceiling.hit_tokens, ceiling.prompt_tokens, ceiling.fleet_hit_tokens),
           "elapsed": runner.elapsed, "span": report.run_span(records)}
    row = merge_runs(policy, [raw], backend)
    log(f"  {policy}: {row['ok']}/{row['requests']} ok, TTFT mean {row['ttft']['mean']:.3f} s "
        f"p90 {row['ttft']['p90']:.3f} s, hit rate {row['hit_rate']:.1%} "
        f"(ceiling {ceiling.rate:.1%}), {row['output_tokens_per_s']:.0f} tok/s, per replica "
        f"{list(row['per_replica'].values())}"
        + (f", fallbacks {fallbacks}" if fallbacks else "")
        + (f", late steps {row['sim']['late_steps']}/{row['sim']['steps']}"
           if row.get("sim") else "")
        + (f"\n    first error: {row['first_error']}" if row["first_error"] else "")
        + (f"\n    plugin errors: {problems[:2]}" if problems else ""))
    return row, raw


def merge_runs(policy, raws, backend):
    """One row from one or more runs (repeats) of a policy: requests pooled, counters
    and times added."""
    endpoints = backend.endpoints
    records = [r for raw in raws for r in raw["records"]]
    delta = {e: {k: sum(raw["delta"][e][k] for raw in raws) for k in raws[0]["delta"][e]}
             for e in endpoints}
    fallbacks = {}
    for raw in raws:
        for k, v in raw["fallbacks"].items():
            fallbacks[k] = fallbacks.get(k, 0) + v
    sim = None
    for raw in raws:
        sim = report.add_sim(sim, raw["sim"])
    hit = sum(raw["ceiling"][0] for raw in raws)
    prompt = sum(raw["ceiling"][1] for raw in raws)
    row = report.summarize(
        policy, records, delta, endpoints, backend.name_of,
        {"envoy_cpu_ms_per_request": sum(raw["cpu"] for raw in raws) / max(1, len(records)) * 1e3,
         "fallbacks": fallbacks, "plugin_errors": [p for raw in raws for p in raw["problems"]][:3],
         "max_inflight": max(raw["max_inflight"] for raw in raws)},
        sim, hit / prompt if prompt else float("nan"), sum(raw["elapsed"] for raw in raws),
        span=sum(raw["span"] for raw in raws))
    fleet_hit = sum(raw["ceiling"][2] for raw in raws)
    row["fleet_ceiling"] = fleet_hit / prompt if prompt else float("nan")
    counted = [report.conversation_moves(raw["records"]) for raw in raws]
    if all(counted):
        row["moves"] = [sum(c[0] for c in counted), sum(c[1] for c in counted)]
    if len(raws) > 1:
        row["repeat_ttft_means"] = [
            report.dist([r.ttft for r in raw["records"]
                         if r.status == 200 and not r.error and r.ttft is not None])["mean"]
            for raw in raws]
    return row


# Workloads built to share prefixes: a run of one compares policies only if its
# requests could reuse them (the ceiling), they completed, and not only queued.
SHARING = ("mrqa", "doc_qa", "sysprompt")
MIN_CEILING = 0.20
MIN_COMPLETED = 0.90
MAX_TTFT_P50_S = 10.0


def median_ceiling(rows, key="ceiling"):
    """The workload's hit-rate ceiling (`key`: or fleet_ceiling) over the policies'
    runs (None: unknown)."""
    ceilings = sorted(r[key] for r in rows if r.get(key) == r.get(key))
    return ceilings[len(ceilings) // 2] if ceilings else None


def meaningless(workload, rows):
    """Why this workload's run does not compare the policies ([] when it does)."""
    why = []
    ceiling = median_ceiling(rows) or 0.0  # unknown: as good as none
    if workload.kind in SHARING and ceiling < MIN_CEILING:
        why.append(f"the hit-rate ceiling is {ceiling:.0%} (under {MIN_CEILING:.0%}): within "
                   "the run too few requests could reuse a prefix for routing to matter; "
                   "conversations did not reach their later turns")
    for r in rows:
        if r["requests"] and r["ok"] / r["requests"] < MIN_COMPLETED:
            why.append(f"{r['policy']}: only {r['ok']} of {r['requests']} requests completed")
    p50s = [r["ttft"]["p50"] for r in rows if r["ttft"]["p50"] == r["ttft"]["p50"]]
    if p50s and min(p50s) > MAX_TTFT_P50_S:
        why.append(f"every policy's median TTFT is over {MAX_TTFT_P50_S:g} s (the lowest "
                   f"{min(p50s):.1f} s): the replicas are saturated, TTFT is queueing, "
                   "not routing")
    return why


def start_backend(args, workload):
    if args.endpoints:
        return backends.Backend(args.endpoints.split(","))
    if args.real_vllm:
        return backends.VllmBackend(args.vllm_count, dtype=args.vllm_dtype)
    overrides = {**workload.sim, **args.sim_set}
    lora = workloads.lora_names(workload.params) if workload.needs_lora else ()
    return backends.SimBackend(args.replicas, args.profile, lora=lora, **overrides)


def calibrated(backend, workload, args, doc):
    """(backend, workload) sized to the replicas' measured speed (once per run:
    the replicas are measured before the first workload)."""
    if backend.rates is None:
        log("calibrating: timing each replica (cold prefill, prefix hit, decode)")
        backend.rates = rates = calibrate.measure(backend.endpoints, backend.model)
        doc["calibration"] = {"cpu": cpu_flags(), "replicas": [
            {"endpoint": r.endpoint, "prompt_tokens": r.prompt_tokens,
             "cold_ttft_ms": round(r.cold_ttft_s * 1000, 1),
             "warm_ttft_ms": round(r.warm_ttft_s * 1000, 1),
             "prefill_tokens_per_s": round(r.prefill_tokens_per_s),
             "decode_tokens_per_s": round(1 / r.decode_s_per_token, 1)} for r in rates],
            "workloads": {}}
        for r in doc["calibration"]["replicas"]:
            log(f"  {r['endpoint']}: {r['prompt_tokens']}-token prompt cold "
                f"{r['cold_ttft_ms']:.0f} ms ({r['prefill_tokens_per_s']:,} tokens/s), "
                f"again {r['warm_ttft_ms']:.0f} ms; decode {r['decode_tokens_per_s']} tokens/s")
    sizing = calibrate.size(backend.rates, workload.params, args.duration,
                            backend.block_size, backend.num_blocks, fixed=args.params)
    if sizing.restart:
        log(f"restarting the replicas with {sizing.num_blocks} KV blocks each")
        rates = backend.rates
        backend.stop()
        backend = backends.VllmBackend(args.vllm_count, dtype=args.vllm_dtype,
                                       num_gpu_blocks=sizing.num_blocks)
        backend.rates = rates
    doc["calibration"]["workloads"][workload.name] = sizing.describe()
    log(f"calibrated {workload.name}: {sizing.describe()}")
    return backend, workload.with_params(**sizing.params)


def cpu_flags():
    """The CPU model and the flags that decide vLLM's CPU speed."""
    from bench.overhead import cpu_model
    flags = backends.vllm_start.cpu_flags() or set()
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    return f"{cpu_model()}; flags: {', '.join(f for f in wanted if f in flags) or 'none of note'}"


def git_state():
    try:
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "plugin"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + (" + uncommitted changes in plugin/" if dirty else "")
    except Exception:  # noqa: BLE001 - informative only
        return "?"


def environment(wasm, given, note):
    from bench.overhead import cpu_model, envoy_version
    with open(wasm, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    origin = note or (f"a prebuilt module (--wasm); working tree at {git_state()}" if given
                      else f"built from the working tree at {git_state()}")
    return {"machine": f"{os.cpu_count()} CPUs ({cpu_model()}), Linux {platform.release()}",
            "envoy": envoy_version(), "python": platform.python_version(),
            "plugin": f"`{os.path.basename(wasm)}` (sha256 {digest}), {origin}"}


def plots_and_markdown(doc, out_dir):
    """(Re)writes the plots and README.md of a run from its results.json document."""
    for wl in doc["workloads"]:
        rows = wl["rows"]
        backend = doc["backend"]
        title = (f"{wl['name']}: {backend.get('replicas')} x "
                 f"{backend.get('profile', backend['kind'])}")
        plots = [report.plot_ttft_cdf(rows, title, os.path.join(out_dir,
                                                                f"ttft_cdf-{wl['name']}.png")),
                 report.plot_hit_rate_vs_load(rows, title, os.path.join(
                     out_dir, f"hit_rate_vs_load-{wl['name']}.png"))]
        wl["plots"] = [os.path.basename(p) if p else None for p in plots]
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(doc, f, indent=1, default=str)
    render_markdown(doc, out_dir)


def render_markdown(doc, out_dir):
    env = doc["environment"]
    backend = doc["backend"]
    what = (f"{backend['replicas']} simulated replicas, profile `{backend.get('profile')}`"
            if backend["kind"] == "simulator" else
            f"{backend['replicas']} {backend['kind']} replicas")
    lines = [
        f"# {doc['name']}", "",
        f"Run {doc['when']}, {doc['wall_s'] / 60:.0f} min:", "",
        "```sh", doc["command"], "```", "",
        f"Machine: {env['machine']}; Envoy {env['envoy']} (`--concurrency "
        f"{doc['concurrency']}`, V8); Python {env['python']}; everything on 127.0.0.1 "
        "(replicas, Envoy and the client share the 2 cores). Plugin: " + env["plugin"] + ".",
        "",
        f"Replicas: {what}; model `{backend['model']}`"
        + (f" in {backend['dtype']} ({backend['dtype_reason']})" if backend.get("dtype") else "")
        + f", KV cache {backend['num_blocks']} "
        f"blocks of {backend['block_size']} tokens each. Every policy gets a fresh Envoy, "
        "the replicas' prefix caches reset, and the same workload (same seed; every prompt "
        "salted per run). TTFT and end-to-end latency are measured by the client "
        "(streamed; TTFT = request written -> first token's event). Hit rate = "
        "Δ`vllm:prefix_cache_hits_total` / Δ`vllm:prefix_cache_queries_total` over all "
        "replicas; requests per replica = Δ`vllm:request_success_total`. Output tok/s = "
        "completion tokens / (first send -> last answer). Oracle: pinned by the client "
        f"(plugin `header` policy) to the replica its exact cache model says holds the longest "
        f"prefix, within {doc['oracle_gap']} in-flight requests of the least busy, a match "
        f"counting from {doc['oracle_min_match']:.0%} of the prompt (prefix_cache's rules before "
        "its cost model, with exact knowledge; bench/oracle.py). Ceiling: the share of prompt "
        "tokens some earlier request "
        "already computed (any replica, unbounded cache): no routing can hit more. With the "
        "fleet's caches: the same with each replica's real cache size, every prompt on the "
        "replica holding its longest prefix (load ignored): what the caches' size leaves.",
        "",
    ]
    calibration = doc.get("calibration")
    if calibration:
        lines += ["Calibration (bench/calibrate.py, before the runs, each replica alone): "
                  f"{calibration['cpu']}. " + "; ".join(
                      f"{r['endpoint']}: a {r['prompt_tokens']}-token prompt cold "
                      f"{r['cold_ttft_ms']:.0f} ms ({r['prefill_tokens_per_s']:,} tokens/s), "
                      f"again {r['warm_ttft_ms']:.0f} ms, decode {r['decode_tokens_per_s']} "
                      f"tokens/s" for r in calibration["replicas"]) + ". "
                  + " ".join(f"{name}: {text}." for name, text
                             in calibration["workloads"].items()), ""]
    if len(doc["workloads"]) > 1:
        lines += ["## Summary", "", report.summary_table(doc["workloads"]), ""]
    for wl in doc["workloads"]:
        rows = wl["rows"]
        ceiling, fleet = median_ceiling(rows), median_ceiling(rows, "fleet_ceiling")
        lines += [
            f"## {wl['name']}: {wl['doc']}", "",
            f"Parameters: {wl['params']}; sending window {doc['duration']:g} s per policy "
            f"(then drained)"
            + (f", {doc['repeat']} runs per policy (order rotated; requests pooled)"
               if doc.get("repeat", 1) > 1 else "")
            + f", seed {doc['seed']}. Hit-rate ceiling: "
            f"{'n/a' if ceiling is None else report.pct(ceiling)}"
            + (f"; with the fleet's caches {report.pct(fleet)}" if fleet is not None else "")
            + ".", "",
            report.table(rows), "",
            f"![TTFT CDF]({wl['plots'][0]}) ![hit rate vs load]({wl['plots'][1]})"
            if wl["plots"] and all(wl["plots"]) else "(plots: install matplotlib, the `bench` "
                                                    "extra)",
            "", "<details><summary>decisions, gateway CPU, simulator health</summary>", "",
            report.detail_table(rows), "", "</details>", "",
        ]
        notes = wl.get("notes")
        if notes:
            lines += notes + [""]
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write("\n".join(lines))


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--demo", action="store_true",
                        help="the README demo: 8 x a10-7b, workload demo, 40 s per policy, "
                             "Envoy RR / LR, prefix_cache, oracle; prints the table")
    parser.add_argument("--replicas", type=int, default=16)
    parser.add_argument("--profile", default="a10-7b", help="a100-7b, a10-7b, vllm-cpu-tiny")
    parser.add_argument("--sim-set", action="append", default=[], metavar="FIELD=VALUE",
                        help="simulator profile override (repeatable), e.g. num_blocks=400")
    parser.add_argument("--real-vllm", action="store_true",
                        help="start real vLLM CPU replicas (vllm_replicas/start.py)")
    parser.add_argument("--vllm-count", type=int, default=2)
    parser.add_argument("--vllm-dtype", default="auto",
                        help="real vLLM: bfloat16 | float32 | auto (by the CPU's flags)")
    parser.add_argument("--calibrate", action=argparse.BooleanOptionalAction, default=None,
                        help="real vLLM: measure the replicas first and size multi-round QA "
                             "workloads (rate, users, context) and the KV cache to them "
                             "(bench/calibrate.py); --param values are kept. Default: on "
                             "with --real-vllm")
    parser.add_argument("--endpoints", help="comma-separated ip:port of running replicas")
    parser.add_argument("--workloads", default="mrqa-scaled",
                        help=f"comma-separated, or 'all' ({','.join(SUITE)}); "
                             f"known: {','.join(workloads.WORKLOADS)}")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="workload parameter override (repeatable), e.g. qps=4")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--lb-config", action="append", default=[], metavar="POLICY=JSON",
                        help="extra lb_config fields for a plugin policy, e.g. "
                             "'prefix_cache={\"maxLoadGap\": 8}'")
    parser.add_argument("--duration", type=float, default=60.0,
                        help="sending window per policy (s)")
    parser.add_argument("--drain", type=float, default=90.0,
                        help="longest wait for the last answers after the window (s)")
    parser.add_argument("--timeout", type=float, default=300.0, help="per request (s)")
    parser.add_argument("--oracle-gap", type=int, default=4,
                        help="oracle: a prefix match wins within this many in-flight requests "
                             "of the least busy replica (prefix_cache's maxLoadGap)")
    parser.add_argument("--oracle-min-match", type=float, default=0.5,
                        help="oracle: shortest match that counts, as a share of the prompt "
                             "(prefix_cache's minMatchRatio)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run every policy this many times (order rotated each time) "
                             "and pool the requests: for noisy backends (real vLLM here)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=2, help="Envoy worker threads")
    parser.add_argument("--wasm", help="a built envoy-target module (default: build one from "
                                       "the working tree)")
    parser.add_argument("--plugin-note", help="where the --wasm module came from (for the "
                                              "results README)")
    parser.add_argument("--name", help="results folder name under bench/results/")
    parser.add_argument("--out", help="results folder (overrides --name)")
    parser.add_argument("--no-index", action="store_true",
                        help="do not rewrite bench/results/README.md")
    args = parser.parse_args(argv)
    if args.demo:
        given = set(a.split("=")[0].lstrip("-") for a in argv if a.startswith("--"))
        if "workloads" not in given:
            args.workloads = "demo-real" if args.real_vllm else "demo"
        if "policies" not in given:
            args.policies = ",".join(DEMO_POLICIES)
        if "replicas" not in given:
            args.replicas = 8
        if "duration" not in given:
            args.duration = 40.0
        if not args.out and not args.name:
            args.out = os.path.join(report.RESULTS, "tmp",
                                    "demo-real" if args.real_vllm else "demo")
    if args.calibrate is None:
        args.calibrate = args.real_vllm
    if args.calibrate and not args.real_vllm:
        parser.error("--calibrate sizes the workload to replicas it starts: give --real-vllm")
    args.workloads = SUITE if args.workloads == "all" else args.workloads.split(",")
    args.policies = args.policies.split(",")
    for p in args.policies:
        if p.split("@", 1)[0] not in POLICIES:
            parser.error(f"unknown policy {p!r}; known: {', '.join(POLICIES)} (a variant: "
                         f"POLICY@NAME, its fields given with --lb-config POLICY@NAME=JSON)")
    params = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--param {item!r}: NAME=VALUE")
        params[key.strip()] = value.strip()
    args.params = params
    sim_set = {}
    for item in args.sim_set:
        key, _, value = item.partition("=")
        for kind in (int, float, str):
            try:
                sim_set[key] = kind(value)
                break
            except ValueError:
                pass
    args.sim_set = sim_set
    extra = {}
    for item in args.lb_config:
        policy, _, text = item.partition("=")
        extra[policy] = json.loads(text)
    args.lb_config = extra
    return args


def rerender(out_dir):
    with open(os.path.join(out_dir, "results.json")) as f:
        doc = json.load(f)
    plots_and_markdown(doc, out_dir)
    if os.path.dirname(os.path.abspath(out_dir)) == report.RESULTS:
        report.write_index()
    print(f"rewrote {out_dir}/README.md and its plots")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--rerender"]:
        return rerender(argv[1])
    args = parse_args(argv)
    chosen = []
    for name in args.workloads:
        w = workloads.get(name)
        mine = {k: v for k, v in args.params.items() if k in w.params}
        chosen.append(w.with_params(**mine))
    unused = set(args.params) - {k for w in chosen for k in w.params}
    if unused:
        raise SystemExit(f"--param {sorted(unused)}: no chosen workload has it")
    started = time.monotonic()
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if args.out:
        out_dir = args.out
    else:
        kind = "vllm" if args.real_vllm else "ext" if args.endpoints else \
            f"sim-{args.replicas}x{args.profile}"
        out_dir = os.path.join(report.RESULTS, args.name or
                               f"{time.strftime('%Y%m%d-%H%M')}-{kind}")
    os.makedirs(out_dir, exist_ok=True)
    workdir = os.path.join(harness.TMP_DIR, f"bench-run-{os.getpid()}")

    wasm = args.wasm or harness.build_plugin()
    log(f"plugin {wasm}; results -> {os.path.relpath(out_dir, ROOT)}")
    doc = {"name": os.path.basename(out_dir.rstrip("/")), "when": when,
           "command": ".venv/bin/python bench/run.py " + " ".join(shlex.quote(a) for a in argv),
           "environment": environment(wasm, bool(args.wasm), args.plugin_note),
           "concurrency": args.concurrency,
           "duration": args.duration, "seed": args.seed, "oracle_gap": args.oracle_gap,
           "oracle_min_match": args.oracle_min_match, "repeat": args.repeat,
           "policies": args.policies, "workloads": []}
    backend, verdicts = None, []
    try:
        for workload in chosen:
            # A simulated fleet per workload (LoRA adapters differ); real ones are kept.
            if backend is None or backend.kind == "simulator":
                if backend is not None:
                    backend.stop()
                backend = start_backend(args, workload)
                log(f"replicas: {backend.describe()}")
            if args.calibrate and workload.kind == "mrqa":
                backend, workload = calibrated(backend, workload, args, doc)
            doc["backend"] = backend.describe()
            log(f"workload {workload.name}: {workload.describe()}")
            raws = {p: [] for p in args.policies}
            n = len(args.policies)
            for rep in range(args.repeat):
                if args.repeat > 1:
                    log(f" repeat {rep + 1} of {args.repeat}")
                order = args.policies[rep % n:] + args.policies[:rep % n]  # rotated
                for policy in order:
                    index = rep * n + args.policies.index(policy)
                    raws[policy].append(run_policy(policy, index, workload, backend, wasm,
                                                   args, workdir)[1])
            rows = [merge_runs(p, raws[p], backend) for p in args.policies]
            why = meaningless(workload, rows)
            doc["workloads"].append({
                "name": workload.name, "doc": workload.doc, "params": workload.describe(),
                "rows": rows, "plots": [],
                "notes": ["**This run does not compare the policies:** " + "; ".join(why)
                          + "."] if why else []})
            verdicts += [f"{workload.name}: {w}" for w in why]
            doc["wall_s"] = time.monotonic() - started
            plots_and_markdown(doc, out_dir)
            print()
            print(f"{workload.name} ({doc['backend'].get('replicas')} x "
                  f"{doc['backend'].get('profile', backend.kind)}):")
            print(report.short_table(rows))
            print()
    finally:
        if backend is not None:
            backend.stop()
    if not args.no_index and os.path.dirname(os.path.abspath(out_dir)) == report.RESULTS:
        report.write_index()
    log(f"done in {(time.monotonic() - started) / 60:.1f} min; "
        f"{os.path.relpath(os.path.join(out_dir, 'README.md'), ROOT)}")
    if verdicts:
        print("\nTHIS RUN DOES NOT COMPARE THE POLICIES, the table above means nothing:\n"
              + "\n".join(f"  - {v}" for v in verdicts)
              + "\nOn slow replicas lower the load (--param qps=..., num_users=...) or "
                "lengthen the run (--duration).", flush=True)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
