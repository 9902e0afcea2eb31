"""Chaos benchmark (issue 12): the plugin under client aborts, upstream resets,
a replica killed and restarted, and Redis killed, paused and locked; bounded in
time and count.

    .venv/bin/python bench/chaos.py          # full: 20,000 requests via Envoy, 9,000 in Redis mode
    .venv/bin/python bench/chaos.py --short  # a few hundred requests per scenario (< 60 s)

Embedded state (bench/chaos_envoy.py): the real Envoy 1.40 (--concurrency 2)
with the built envoy .wasm in front of 4 loopback replicas, one process each;
the route retries twice (connect-failure, refused-stream, reset, 5xx) along the
plugin's pinned fallbacks, and the cluster allows 100 retries at once (Envoy's
default circuit breaker, 3, drops retries right after a replica dies: try
--max-retries 0). Per policy (prefix_cache, global_least_request): an
open loop of chat requests (3/4 streamed), 5% aborted by the client mid-body
and 5% mid-answer; replica r1 resets 10% of its connections before answering;
r0 is SIGKILLed at 35% of the run and restarted on its port at 60%.

Redis state (bench/chaos_redis.py): stock Envoy has no Redis host calls, so the
higress .wasm runs in the Higress-like test host (tests/host, wasm mode) with a
real redis-server and two gateways: Redis SIGKILLed and restarted; SIGSTOPped
past the configured timeout and SIGCONTed; restarted with another requirepass.

Goals, per scenario (all 0): requests that got neither an answer nor a clean
local error; requests held past the configured timeouts; in-flight counts left
once traffic stops, read from the state itself (Envoy: the `inflight` field of
the plugin's x-ailb-decision header on held probes; Redis: the plugin's keys;
the gateways' shared data); VM traps and Python tracebacks in the logs;
client-visible errors while a replica is down. The exit code is 1 when a goal
is missed. Writes bench/results/chaos/README.md and results.json.
"""

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import envoy_harness as harness  # noqa: E402
from bench import chaos_envoy, chaos_redis  # noqa: E402
from bench.overhead import cpu_model, envoy_version  # noqa: E402

POLICIES = ("prefix_cache", "global_least_request")
OUT_DIR = os.path.join(HERE, "results", "chaos")
FULL = {"envoy": chaos_envoy.Plan(rate=200, duration_s=50), "redis": chaos_redis.RedisPlan(1500)}
SHORT = {"envoy": chaos_envoy.Plan(rate=100, duration_s=4), "redis": chaos_redis.RedisPlan(300)}

# (column, row key): a goal is met when the value is 0.
GOALS = [
    ("no answer nor clean local error", "no_answer"),
    ("held past the timeouts", "held_too_long"),
    ("in flight left", "inflight_left"),
    ("VM traps", "traps"),
    ("Python tracebacks", "tracebacks"),
    ("client errors while a replica is down", "down_errors"),
]


def log(text):
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def run(short=False, envoy_wasm=None, higress_wasm=None, policies=POLICIES, workdir=None,
        max_retries=None):
    """Every scenario for every policy; returns the rows. `max_retries`: the
    Envoy cluster's retry circuit breaker (0: Envoy's default)."""
    plans = dict(SHORT if short else FULL)
    if max_retries is not None:
        plans["envoy"] = dataclasses.replace(plans["envoy"], max_retries=max_retries)
    envoy_wasm = envoy_wasm or harness.build_plugin()
    higress_wasm = higress_wasm or harness.build_plugin(target="higress")
    workdir = workdir or os.path.join(harness.TMP_DIR, f"chaos-{os.getpid()}")
    rows = []
    for policy in policies:
        log(f"Envoy, embedded state, {policy}")
        rows.append(chaos_envoy.run_policy(policy, envoy_wasm, plans["envoy"], workdir, log))
    for scenario in chaos_redis.SCENARIOS:
        for policy in policies:
            rows.append(chaos_redis.run_scenario(scenario, policy, higress_wasm,
                                                 plans["redis"], log))
    return rows


def missed_goals(rows):
    """[(row, goal column, value)] for every goal a row misses."""
    missed = []
    for row in rows:
        for column, key in GOALS:
            if row.get(key):
                missed.append((row, column, row[key]))
        if row.get("inflight_unread"):
            missed.append((row, "in flight left (unread replicas)", row["inflight_unread"]))
    return missed


def describe(missed):
    """One line per missed goal, with its evidence."""
    lines = []
    for row, column, value in missed:
        evidence = {k: row[k] for k in ("inflight", "failed_picks", "examples", "timeline")
                    if row.get(k)}
        lines.append(f"- {row['scenario']} / {row['state']} / {row['policy']}: {column} = "
                     f"{value}; {json.dumps(evidence, default=str)[:600]}")
        lines += [f"  log: {excerpt[:400]!r}" for excerpt in row.get("log_excerpts", [])[:2]]
    return "\n".join(lines)


def _cell(row, key):
    """A table cell; — where the row has no such figure."""
    value = row.get(key)
    return "—" if value is None else str(value)


def table(rows):
    """The results as a Markdown table."""
    head = ["scenario", "state", "policy", "sent", "aborted by the client", "answered",
            "clean local errors"] + [f"{c} (goal 0)" for c, _ in GOALS] + [
            "cut by the kill (info)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(head) - 3)]
    for r in rows:
        cells = [r["scenario"], r["state"], r["policy"], str(r["sent"]), str(r["aborted"]),
                 str(r["ok"]), str(r["local_errors"])]
        cells += [_cell(r, key) for _, key in GOALS]
        cells.append(_cell(r, "cut_by_kill"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def details(rows):
    """Per row: what the state held at the end, the timeline, Envoy's retries."""
    lines = []
    for r in rows:
        extra = {"in flight read back": r["inflight"], "timeline (s)": r["timeline"]}
        if r["state"] == "embedded":
            extra.update({"requests/s sent (longest delay behind schedule, ms)":
                          f"{r['rate']} ({r['max_send_lag_ms']})",
                          "sent while r0 was down": r["down_requests"],
                          "Envoy retries and resets": r["envoy"],
                          "cluster max_retries": r["max_retries"],
                          "compare-and-swap give-ups logged": r["cas_give_ups"]})
        else:
            extra.update({"decided in Redis / on the gateway's own state":
                          f"{r['decided_in_redis']} / {r['decided_embedded']}",
                          "pick calls that failed (no reply)": r["failed_picks"],
                          "held limit (ms)": r["held_limit_ms"]})
        lines.append(f"- {r['scenario']}, {r['policy']}: " + "; ".join(
            f"{k}: {json.dumps(v, default=str)}" for k, v in extra.items()))
    return "\n".join(lines)


def command(argv):
    """The command line that produced a run."""
    return " ".join([".venv/bin/python bench/chaos.py", *map(shlex.quote, argv)])


def render(rows, argv, seconds):
    """The README of a run."""
    missed = missed_goals(rows)
    envoy_sent = sum(r["sent"] for r in rows if r["state"] == "embedded")
    redis_sent = sum(r["sent"] for r in rows if r["state"] == "redis")
    return "\n".join([
        "# Chaos benchmark", "",
        f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} in "
        f"{seconds:.0f} s:", "",
        "```sh", command(argv), "```",
        "",
        f"Machine: {os.cpu_count()} CPUs ({cpu_model()}), Linux {platform.release()}; Envoy "
        f"{envoy_version()}; Python {platform.python_version()}; redis-server from the "
        f"system. {envoy_sent} requests through Envoy, {redis_sent} through the test host "
        "in Redis mode. What each scenario does: `bench/chaos.py`'s docstring.", "",
        table(rows), "",
        "**Goals missed:** " + ("none." if not missed else f"{len(missed)}.\n\n"
                                + describe(missed)), "",
        "## Details", "", details(rows), "",
        "## How to read it", "",
        "- *answered*: a complete answer (a streamed one up to `data: [DONE]`); *clean local "
        "error*: a complete non-200 answer (e.g. Envoy's 503). *No answer*: the connection "
        "broke, the answer was cut, or nothing came within the route timeout + 5 s (test "
        "host: undecided after 5 s).",
        "- *held past the timeouts*: Envoy: longer than the route timeout (5 s) + 1 s; test "
        "host: decided later than 2 x the Redis `timeout` (200 ms) + one tick period + "
        "100 ms (the host runs Redis calls one at a time, so a call blocked on a stopped "
        "Redis delays the plugin's timer by one op timeout).",
        "- *in flight left*: Envoy: held probes, each picked by least request, report the "
        "count of the replica they land on (`inflight` in `x-ailb-decision`) until every "
        "replica was reached; Redis: the `ailb:{cluster}:n:<gateway>` hashes summed, plus "
        "the gateways' embedded counts (shared data).",
        "- *pick calls that failed*: pick scripts whose Redis call got no reply (refused, "
        "reset, op timeout). A script Redis had received before the op timeout closed the "
        "connection still runs when Redis resumes (SIGCONT): it counts a request that the "
        "plugin decided elsewhere.",
        "- *cut by the kill*: streams r0 was answering when it was SIGKILLed; their answers "
        "break mid-body, which no gateway can hide (not a goal).",
        "- *client errors while a replica is down*: requests sent between r0's kill and "
        "its restart (not aborted) that got anything but a complete 200.", ""])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="a few hundred requests per "
                                                             "scenario (< 60 s)")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--max-retries", type=int, help="concurrent retries the Envoy cluster "
                        "allows (default 100; 0: Envoy's default circuit breaker, 3)")
    parser.add_argument("--envoy-wasm", help="default: built from the working tree")
    parser.add_argument("--higress-wasm", help="default: built from the working tree")
    parser.add_argument("--out", help=f"default: {os.path.relpath(OUT_DIR, ROOT)} (full run "
                                      "only; --short writes nothing unless given)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    rows = run(args.short, args.envoy_wasm, args.higress_wasm, args.policies.split(","),
               max_retries=args.max_retries)
    seconds = time.monotonic() - started
    text = render(rows, argv, seconds)
    print(text)
    out = args.out or (None if args.short else OUT_DIR)
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "README.md"), "w") as f:
            f.write(text)
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump({"command": command(argv),
                       "seconds": round(seconds), "rows": rows}, f, indent=1, default=str)
    return 1 if missed_goals(rows) else 0


if __name__ == "__main__":
    sys.exit(main())
