"""least_busy's scheduler: GIE's filter tree, weighted scorers, least/most, rate limit."""

from dataclasses import dataclass

import pytest

from ai_load_balancer import scheduling
from ai_load_balancer.pipeline import Inputs
from ai_load_balancer.policies.least_busy import NoMetrics
from ai_load_balancer.recent_share import RecentShare
from tests.llm_traffic import policy_for
from ai_load_balancer.scheduling import Candidate, SchedRequest, Thresholds


@dataclass(frozen=True)
class M:  # the ReplicaMetrics fields the scheduler reads
    waiting: float = 0
    running: float = 0
    kv_cache_usage: float = 0.0
    active_adapters: frozenset = frozenset()
    waiting_adapters: frozenset = frozenset()
    max_adapters: int = 0
    extra: tuple = ()


T = Thresholds()


def cands(**metrics):
    return [Candidate(name, m) for name, m in metrics.items()]


def tree(request, candidates):
    kept = scheduling.run_tree(scheduling.DEFAULT_TREE, request, candidates, T)
    return sorted(c.address for c in kept)


def critical(model="base"):
    return SchedRequest(model, True)


def test_least_queued_replica_wins():
    assert tree(critical(), cands(a=M(waiting=5), b=M(waiting=0), c=M(waiting=9))) == ["b"]
    # GIE keeps a band: everything within (max - min) / n of the least queued.
    assert tree(critical(), cands(a=M(waiting=3), b=M(waiting=0), c=M(waiting=9))) == ["a", "b"]


def test_kv_cache_breaks_queue_ties():
    assert tree(critical(), cands(a=M(kv_cache_usage=0.7), b=M(kv_cache_usage=0.2))) == ["b"]


def test_lora_affinity_beats_a_shorter_queue():
    replicas = cands(a=M(waiting=1, active_adapters=frozenset({"sql-lora"})),
                     b=M(waiting=0, max_adapters=4))
    assert tree(critical("sql-lora"), replicas) == ["a"]


def test_replica_that_can_load_the_adapter_beats_a_full_one():
    full = frozenset({"x", "y"})
    replicas = cands(a=M(waiting=0, active_adapters=full, max_adapters=2),
                     b=M(waiting=2, active_adapters=frozenset(), max_adapters=2))
    assert tree(critical("sql-lora"), replicas) == ["b"]


def test_overloaded_fleet_still_serves_critical_requests():
    replicas = cands(a=M(waiting=80), b=M(waiting=60, kv_cache_usage=0.99))
    assert tree(critical(), replicas) == ["b"]


def test_sheddable_request_only_goes_where_there_is_capacity():
    sheddable = SchedRequest("batch", False)
    assert tree(sheddable, cands(a=M(waiting=9), b=M(waiting=2, kv_cache_usage=0.5))) == ["b"]
    with pytest.raises(scheduling.Shed):
        tree(sheddable, cands(a=M(waiting=9), b=M(waiting=2, kv_cache_usage=0.9)))


def least_busy(**lb_config):
    return policy_for("least_busy", **lb_config)


def chosen(policy, metrics, rotation=0, **inputs):
    return policy.choose(Inputs(tuple(sorted(metrics)), rotation, metrics=metrics,
                                **inputs)).address


def test_weighted_profile_combines_prefix_and_load():
    weighted = least_busy(metric_policy="weighted")
    assert weighted.hashes_prompt  # the prefix scorer needs the prompt's blocks
    hashes = tuple(range(10))
    hot = {"a": M(waiting=1, kv_cache_usage=0.5), "b": M(waiting=0, kv_cache_usage=0.1)}
    assert chosen(weighted, hot, hashes=hashes, matched={"a": 10}) == "a"
    swamped = {"a": M(waiting=30, kv_cache_usage=0.95), "b": M(waiting=0, kv_cache_usage=0.1)}
    assert chosen(weighted, swamped, hashes=hashes, matched={"a": 10}) == "b"


def test_least_and_most_by_target_metric():
    replicas = {"a": M(extra=(("vllm:num_requests_running", 4.0),)),
                "b": M(extra=(("vllm:num_requests_running", 1.0),))}
    for rotation in range(2):
        assert chosen(least_busy(metric_policy="least", target_metric="vllm:num_requests_running"),
                      replicas, rotation) == "b"
        assert chosen(least_busy(metric_policy="most", target_metric="vllm:num_requests_running"),
                      replicas, rotation) == "a"


def test_no_fresh_metrics_is_no_decision():
    with pytest.raises(NoMetrics):
        least_busy().choose(Inputs(("a", "b"), 0, metrics={}))


def test_rate_limit_caps_a_replica_share():
    recent = RecentShare(window=10)
    for _ in range(6):
        recent.record("a")
    assert recent.under(["a", "b"], 0.5) == ["b"]
    assert recent.under(["a", "b"], 1.0) == ["a", "b"]
    assert recent.under(["a"], 0.5) == ["a"]  # never empty


def test_picker_rotates_ties():
    replicas = {"a": M(), "b": M(), "c": M()}
    assert {chosen(least_busy(), replicas, r) for r in range(3)} == {"a", "b", "c"}
