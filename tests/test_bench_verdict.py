"""bench/run.py says plainly when a run does not compare the policies (issue 16:
on a slow machine the table looked like a result and was not)."""

from bench import run, workloads


def row(policy, ok=100, requests=100, ceiling=0.6, p50=0.2):
    return {"policy": policy, "ok": ok, "requests": requests, "ceiling": ceiling,
            "ttft": {"p50": p50}}


def test_a_run_that_compares_says_nothing():
    mrqa = workloads.get("demo-real")
    assert run.meaningless(mrqa, [row("envoy-lr"), row("prefix_cache")]) == []


def test_overloaded_replicas_are_named_for_what_they_did():
    mrqa = workloads.get("demo-real")
    why = run.meaningless(mrqa, [row("envoy-lr", ok=35, requests=60, ceiling=0.0, p50=50.3),
                                 row("prefix_cache", ok=35, requests=60, ceiling=0.0, p50=48.5)])
    assert any("ceiling is 0%" in w for w in why)
    assert any("prefix_cache: only 35 of 60" in w for w in why)
    assert any("TTFT is queueing" in w for w in why)


def test_a_workload_with_nothing_to_share_needs_no_ceiling():
    sharegpt = workloads.get("sharegpt")
    assert run.meaningless(sharegpt, [row("envoy-lr", ceiling=0.0)]) == []
