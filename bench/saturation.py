"""Saturation benchmark: the knee of each policy, as llm-d reports it.

    .venv/bin/python bench/saturation.py                       # mrqa-scaled,
                                                               # envoy-rr vs prefix_cache
    .venv/bin/python bench/saturation.py --rates 4,8,16,24 --policies envoy-rr,envoy-lr,prefix_cache

Raises the workload's request rate step by step and runs every policy at each
rate (bench/run.py's run_policy: a fresh Envoy, the replicas' caches reset, the
same sessions). A policy's knee is the highest input throughput (prompt tokens
per second the replicas were asked to process, cached or not) at which its p90
time to first token stays within the SLO. Writes bench/results/<name>/README.md
and results.json.
"""

import argparse
import datetime
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import envoy_harness as harness  # noqa: E402
from bench import report, run, workloads  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="mrqa-scaled")
    parser.add_argument("--policies", default="envoy-rr,prefix_cache")
    parser.add_argument("--rates", default="4,8,12,16,24", help="requests/s, comma-separated")
    parser.add_argument("--slo", type=float, default=2.0, help="p90 TTFT bound (s)")
    parser.add_argument("--duration", type=float, default=30.0, help="sending window per run (s)")
    parser.add_argument("--drain", type=float, default=60.0)
    parser.add_argument("--replicas", type=int, default=16)
    parser.add_argument("--profile", default="a10-7b")
    parser.add_argument("--wasm", help="a built envoy-target module (default: build one)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="workload parameter override (repeatable), e.g. num_users=256")
    parser.add_argument("--name", default="saturation-sim-16x-a10-7b")
    return parser.parse_args(argv)


def run_args(args):
    """The bench/run.py options run_policy and start_backend read."""
    extra = [item for param in args.param for item in ("--param", param)]
    return run.parse_args(["--duration", str(args.duration), "--drain", str(args.drain),
                           "--replicas", str(args.replicas), "--profile", args.profile, *extra])


def knee(points, slo):
    """The highest input tokens/s among the points whose p90 TTFT is within slo."""
    within = [p["input_tokens_per_s"] for p in points if p["ttft_p90"] <= slo]
    return max(within, default=0.0)


def measure(args):
    options = run_args(args)
    policies, rates = args.policies.split(","), [float(r) for r in args.rates.split(",")]
    base = workloads.get(args.workload).with_params(**options.params)
    wasm = args.wasm or harness.build_plugin()
    workdir = os.path.join(harness.TMP_DIR, f"bench-saturation-{os.getpid()}")
    backend = run.start_backend(options, base)
    points = {p: [] for p in policies}
    try:
        for step, rate in enumerate(rates):
            workload = base.with_params(qps=rate)
            run.log(f"rate {rate:g}/s: {workload.describe()}")
            for i, policy in enumerate(policies):
                row, _ = run.run_policy(policy, step * len(policies) + i, workload, backend,
                                        wasm, options, workdir)
                span = row["span_s"] or float("nan")
                points[policy].append({"rate": rate, "ttft_p90": row["ttft"]["p90"],
                                       "ttft_mean": row["ttft"]["mean"],
                                       "input_tokens_per_s": row["query_tokens"] / span,
                                       "hit_rate": row["hit_rate"],
                                       "ok": row["ok"], "requests": row["requests"]})
    finally:
        backend.stop()
    return points, backend.describe(), run.environment(wasm, bool(args.wasm), None)


def render(args, points, backend, env, wall_s, argv):
    knees = {p: knee(pts, args.slo) for p, pts in points.items()}
    first = next(iter(knees))
    lines = [f"# {args.name}", "",
             f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
             f"{wall_s / 60:.0f} min:", "", "```sh",
             ".venv/bin/python bench/saturation.py " + " ".join(argv), "```", "",
             f"Machine: {env['machine']}; Envoy {env['envoy']}; plugin {env['plugin']}. "
             f"Replicas: {backend.get('replicas')} simulated, profile `{backend.get('profile')}`. "
             f"Workload `{args.workload}` at each rate for {args.duration:g} s (then drained). "
             f"Knee: the highest input throughput (prompt tokens/s the replicas processed, "
             f"cached or not) with p90 TTFT within {args.slo:g} s.", "",
             f"| policy | knee (input tokens/s) | vs {report.label(first)} |", "|---|---:|---:|"]
    for policy, value in knees.items():
        ratio = value / knees[first] if knees[first] else float("nan")
        lines.append(f"| {report.label(policy)} | {value:,.0f} | {ratio:.2f}x |")
    lines += ["", "| policy | rate (req/s) | input tokens/s | TTFT p90 (s) | TTFT mean (s) | "
              "hit rate | ok / sent |", "|---|---:|---:|---:|---:|---:|---:|"]
    for policy, pts in points.items():
        for p in pts:
            lines.append(f"| {report.label(policy)} | {p['rate']:g} | "
                         f"{p['input_tokens_per_s']:,.0f} | {p['ttft_p90']:.3f} | "
                         f"{p['ttft_mean']:.3f} | {p['hit_rate']:.1%} | "
                         f"{p['ok']} / {p['requests']} |")
    return "\n".join(lines) + "\n", knees


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    started = time.monotonic()
    points, backend, env = measure(args)
    text, knees = render(args, points, backend, env, time.monotonic() - started, argv)
    out_dir = os.path.join(report.RESULTS, args.name)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump({"slo_s": args.slo, "workload": args.workload, "backend": backend,
                   "environment": env, "points": points, "knees": knees}, f, indent=1)
    print(text)


if __name__ == "__main__":
    main()
