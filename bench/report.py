"""Summaries, Markdown tables and PNG plots of bench/run.py's runs."""

import json
import math
import os
import statistics

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

LABELS = {
    "envoy-rr": "Envoy round robin (no plugin)",
    "envoy-lr": "Envoy least request (no plugin)",
    "global_least_request": "global_least_request",
    "prefix_cache": "prefix_cache",
    "least_busy": "least_busy (default)",
    "least_busy-weighted": "least_busy (weighted)",
    "oracle": "oracle (exact caches)",
}
COLORS = {
    "envoy-rr": "#7f7f7f", "envoy-lr": "#000000", "global_least_request": "#1f77b4",
    "prefix_cache": "#d62728", "least_busy": "#2ca02c", "least_busy-weighted": "#9467bd",
    "oracle": "#ff7f0e",
}


def label(policy):
    return LABELS.get(policy, policy)


# --- statistics ------------------------------------------------------------------------------

def percentile(values, q):
    """Linear interpolation between closest ranks; values need not be sorted."""
    v = sorted(values)
    if not v:
        return float("nan")
    k = (len(v) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def dist(values):
    if not values:
        return {"mean": float("nan"), "p50": float("nan"), "p90": float("nan"),
                "p99": float("nan")}
    return {"mean": statistics.fmean(values), "p50": percentile(values, 0.5),
            "p90": percentile(values, 0.9), "p99": percentile(values, 0.99)}


def run_span(records):
    """First send -> last answer of one run's records (s)."""
    ok = [r for r in records if r.status == 200 and not r.error and r.ttft is not None]
    if not ok:
        return float("nan")
    return max(r.sent + r.e2e for r in ok) - min(r.sent for r in records)


def sim_delta(before, after, endpoints):
    """The simulator's own health over a run (None for real replicas)."""
    if not after or not all(after.values()):
        return None
    return {"late_steps": sum(after[e]["late_steps"] - before[e]["late_steps"] for e in endpoints),
            "steps": sum(after[e]["steps"] - before[e]["steps"] for e in endpoints),
            "max_late_ms": max(after[e]["max_late_ms"] for e in endpoints),
            "evictions": sum(after[e]["evictions"] - before[e]["evictions"] for e in endpoints)}


def add_sim(a, b):
    if a is None or b is None:
        return a or b
    return {"late_steps": a["late_steps"] + b["late_steps"], "steps": a["steps"] + b["steps"],
            "max_late_ms": max(a["max_late_ms"], b["max_late_ms"]),
            "evictions": a["evictions"] + b["evictions"]}


def summarize(policy, records, replica_delta, endpoints, names, envoy_info, sim, ceiling,
              elapsed, span=None):
    ok = [r for r in records if r.status == 200 and not r.error and r.ttft is not None]
    failed = [r for r in records if r not in ok]
    ttfts = [r.ttft for r in ok]
    e2es = [r.e2e for r in ok]
    if span is None:
        span = run_span(records)
    out_tokens = sum(r.completion_tokens for r in ok)
    hits = sum(d["hits"] for d in replica_delta.values())
    queries = sum(d["queries"] for d in replica_delta.values())
    per_replica = [replica_delta[e]["requests"] for e in endpoints]
    mean_load = statistics.fmean(per_replica) if per_replica else 0
    reasons = {}
    for r in ok:
        if r.reason:
            reasons[r.reason] = reasons.get(r.reason, 0) + 1
    late = sim
    return {
        "policy": policy, "label": label(policy),
        "requests": len(records), "ok": len(ok), "failed": len(failed),
        "first_error": next((f"{r.status} {r.error}" for r in failed), None),
        "ttft": dist(ttfts), "e2e": dist(e2es),
        "ttft_quantiles": [percentile(ttfts, q / 100) for q in range(101)] if ttfts else [],
        "output_tokens": out_tokens,
        "output_tokens_per_s": out_tokens / span if span and span == span else float("nan"),
        "requests_per_s": len(ok) / span if span and span == span else float("nan"),
        "span_s": span, "elapsed_s": elapsed,
        "hit_rate": hits / queries if queries else float("nan"),
        "hit_tokens": hits, "query_tokens": queries,
        "prompt_tokens_computed": {names[e]: replica_delta[e]["queries"] - replica_delta[e]["hits"]
                                   for e in endpoints},
        "per_replica": {names[e]: replica_delta[e]["requests"] for e in endpoints},
        "preemptions": sum(d["preemptions"] for d in replica_delta.values()),
        "imbalance": max(per_replica) / mean_load if mean_load else float("nan"),
        "cv": (statistics.pstdev(per_replica) / mean_load) if mean_load else float("nan"),
        "reasons": reasons,
        "ceiling": ceiling,
        "sim": late,
        **envoy_info,
    }


# --- Markdown -----------------------------------------------------------------------------------

def f3(x):
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def pct(x):
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1%}"


def change(a, b):
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return "n/a"
    return f"{(a - b) / b:+.0%}"


def table(rows, baseline="envoy-lr"):
    """The per-policy comparison table of one workload."""
    base = next((r for r in rows if r["policy"] == baseline), None)
    oracle = next((r for r in rows if r["policy"] == "oracle"), None)
    lines = [
        "| policy | TTFT mean | p50 | p90 | p99 (s) | vs Envoy LR | vs oracle | E2E mean | p50 "
        "| p90 | p99 (s) | output tok/s | hit rate | requests per replica min-max (CV) "
        "| errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        t, e = r["ttft"], r["e2e"]
        loads = list(r["per_replica"].values())
        spread = f"{min(loads):.0f}-{max(loads):.0f} ({r['cv']:.2f})" if loads else "n/a"
        lines.append(
            f"| {r['label']} | {f3(t['mean'])} | {f3(t['p50'])} | {f3(t['p90'])} | "
            f"{f3(t['p99'])} | {change(t['mean'], base['ttft']['mean']) if base else 'n/a'} | "
            f"{change(t['mean'], oracle['ttft']['mean']) if oracle else 'n/a'} | "
            f"{f3(e['mean'])} | {f3(e['p50'])} | {f3(e['p90'])} | {f3(e['p99'])} | "
            f"{r['output_tokens_per_s']:.0f} | {pct(r['hit_rate'])} | {spread} | "
            f"{r['failed']} |")
    return "\n".join(lines)


def short_table(rows, baseline="envoy-lr"):
    """TTFT and hit rate only: the demo's table (plain text friendly)."""
    base = next((r for r in rows if r["policy"] == baseline), None)
    lines = ["| policy | TTFT mean (s) | TTFT p90 (s) | vs Envoy least request | hit rate "
             "| output tok/s |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['label']} | {f3(r['ttft']['mean'])} | {f3(r['ttft']['p90'])} | "
                     f"{change(r['ttft']['mean'], base['ttft']['mean']) if base else 'n/a'} | "
                     f"{pct(r['hit_rate'])} | {r['output_tokens_per_s']:.0f} |")
    return "\n".join(lines)


def summary_table(workloads, policies=("envoy-lr", "prefix_cache", "least_busy", "oracle")):
    """One line per workload: TTFT mean (change vs Envoy least request) and hit rate."""
    head = "| workload | " + " | ".join(label(p) for p in policies) + " |"
    lines = [head, "|---|" + "---:|" * len(policies)]
    for wl in workloads:
        by = {r["policy"]: r for r in wl["rows"]}
        base = by.get("envoy-lr")
        cells = []
        for p in policies:
            r = by.get(p)
            if r is None:
                cells.append("-")
                continue
            delta = "" if p == "envoy-lr" or not base else \
                f" ({change(r['ttft']['mean'], base['ttft']['mean'])})"
            cells.append(f"{f3(r['ttft']['mean'])} s{delta}, {pct(r['hit_rate'])}")
        lines.append(f"| {wl['name']} | " + " | ".join(cells) + " |")
    return ("TTFT mean (change vs Envoy least request), prefix-cache hit rate:\n\n"
            + "\n".join(lines))


def conversation_moves(records):
    """(moved, continuing): of the turns that follow an answered turn of the
    same session, how many another replica served. None when the replicas are
    not known (Envoy's own load balancing in front of real vLLM)."""
    last, moved, continuing = {}, 0, 0
    for r in sorted(records, key=lambda r: (r.session, r.turn)):
        if r.status != 200 or r.error or r.replica is None:
            last.pop(r.session, None)
            continue
        before = last.get(r.session)
        if before is not None:
            continuing += 1
            moved += before != r.replica
        last[r.session] = r.replica
    return (moved, continuing) if continuing else None


def detail_table(rows):
    repeats = any(len(r.get("repeat_ttft_means") or ()) > 1 for r in rows)
    lines = ["| policy | requests ok / sent | plugin decisions | next turns on another "
             "replica | Envoy CPU ms/request | simulator late steps | KV evictions | preemptions |"
             + (" TTFT mean per repeat (s) |" if repeats else ""),
             "|---|---:|---|---:|---:|---:|---:|---:|" + ("---|" if repeats else "")]
    for r in rows:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(r["reasons"].items())) or "-"
        if r.get("fallbacks"):
            reasons += "; fallbacks: " + ", ".join(f"{k} {v}" for k, v in r["fallbacks"].items())
        sim = r.get("sim") or {}
        late = (f"{sim['late_steps']} of {sim['steps']} (max {sim['max_late_ms']:.0f} ms)"
                if sim else "n/a")
        moves = r.get("moves")
        moved = f"{moves[0]} of {moves[1]} ({moves[0] / moves[1]:.0%})" if moves else "n/a"
        lines.append(f"| {r['label']} | {r['ok']} / {r['requests']} | {reasons} | {moved} | "
                     f"{f3(r.get('envoy_cpu_ms_per_request'))} | {late} | "
                     f"{sim.get('evictions', 'n/a') if sim else 'n/a'} | {r['preemptions']:.0f} |"
                     + (" " + ", ".join(f"{m:.3f}" for m in r.get("repeat_ttft_means", []))
                        + " |" if repeats else ""))
    return "\n".join(lines)


# --- plots ----------------------------------------------------------------------------------------

def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        return None


def plot_ttft_cdf(rows, title, path):
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=100)
    for r in rows:
        q = r["ttft_quantiles"]
        if not q:
            continue
        ax.plot(q, [i / 100 for i in range(len(q))], label=r["label"],
                color=COLORS.get(r["policy"]), linewidth=1.8,
                linestyle="--" if r["policy"] == "oracle" else "-")
    ax.set_xscale("log")
    ax.set_xlabel("time to first token (s, log scale)")
    ax.set_ylabel("share of requests")
    ax.set_ylim(0, 1.0)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_hit_rate_vs_load(rows, title, path):
    plt = _pyplot()
    if plt is None:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=100)
    ceiling = [r["ceiling"] for r in rows if r.get("ceiling") == r.get("ceiling")]
    for r in rows:
        x, y = r["imbalance"], r["hit_rate"]
        if x != x or y != y:
            continue
        left.scatter([x], [y * 100], s=60, color=COLORS.get(r["policy"]), label=r["label"],
                     marker="*" if r["policy"] == "oracle" else "o", zorder=3)
    if ceiling:
        left.axhline(statistics.median(ceiling) * 100, color="#ff7f0e", linestyle=":",
                     linewidth=1, label="ceiling (every earlier block reused)")
    left.axvline(1.0, color="#bbbbbb", linewidth=0.8)
    left.set_xlabel("busiest replica's requests / mean (1 = even)")
    left.set_ylabel("prefix-cache hit rate (%), replicas' counters")
    left.set_ylim(0, 100)
    left.grid(True, alpha=0.3)
    left.legend(fontsize=7, loc="lower right")
    left.set_title("hit rate vs load spread", fontsize=10)
    for r in rows:
        loads = sorted(r["per_replica"].values(), reverse=True)
        mean = statistics.fmean(loads) if loads else 0
        if not mean:
            continue
        right.plot(range(1, len(loads) + 1), [v / mean for v in loads],
                   color=COLORS.get(r["policy"]), marker=".", linewidth=1.2, label=r["label"])
    right.axhline(1.0, color="#bbbbbb", linewidth=0.8)
    right.set_xlabel("replicas, busiest first")
    right.set_ylabel("requests / mean")
    right.grid(True, alpha=0.3)
    right.set_title("load per replica", fontsize=10)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# --- the index ----------------------------------------------------------------------------------

NOTES_HEADING = "## Notes"


def write_index(results_dir=RESULTS):
    """bench/results/README.md: one line per run folder holding a results.json; a
    hand-written part under NOTES_HEADING is kept."""
    index = os.path.join(results_dir, "README.md")
    notes = ""
    if os.path.isfile(index):
        with open(index) as f:
            text = f.read()
        if "\n" + NOTES_HEADING + "\n" in text:
            notes = text[text.index("\n" + NOTES_HEADING + "\n") + 1:]
    runs = []
    for name in sorted(os.listdir(results_dir)):
        path = os.path.join(results_dir, name, "results.json")
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            doc = json.load(f)
        runs.append((name, doc))
    lines = ["# Benchmark results", "",
             "Made by `bench/run.py` (routing: TTFT, throughput, prefix-cache hit rate per "
             "policy, through a real Envoy 1.40 with the built plugin) and "
             "`bench/gateway_cost.py` (what the gateway adds per request). Each folder's "
             "README.md has the exact command, the machine, the tables and the plots.", "",
             "| run | when | backend | workload | Envoy least request: TTFT mean / hit rate "
             "| prefix_cache | oracle |",
             "|---|---|---|---|---|---|---|"]
    for name, doc in runs:
        if doc.get("kind") == "gateway_cost":
            lines.append(f"| [{name}]({name}/README.md) | {doc.get('when', '')} | "
                         f"loopback replicas | gateway cost | {doc.get('headline', '')} | | |")
            continue
        backend = doc.get("backend", {})
        what = (f"{backend.get('replicas')} × {backend.get('profile', backend.get('kind'))}")
        for wl in doc.get("workloads", []):
            by = {r["policy"]: r for r in wl["rows"]}

            def cell(p, by=by):
                r = by.get(p)
                return (f"{f3(r['ttft']['mean'])} s / {pct(r['hit_rate'])}" if r else "-")
            pc = by.get("prefix_cache")
            lr = by.get("envoy-lr")
            delta = (f" ({change(pc['ttft']['mean'], lr['ttft']['mean'])})"
                     if pc and lr else "")
            lines.append(f"| [{name}]({name}/README.md) | {doc.get('when', '')} | {what} | "
                         f"{wl['name']} | {cell('envoy-lr')} | {cell('prefix_cache')}{delta} | "
                         f"{cell('oracle')} |")
    lines.append("")
    if notes:
        lines.append(notes.rstrip("\n") + "\n")
    with open(index, "w") as f:
        f.write("\n".join(lines))
