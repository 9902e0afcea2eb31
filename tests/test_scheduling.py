"""least_busy's scheduler: GIE's filter tree, weighted scorers, least/most, rate limit."""

from dataclasses import dataclass

import pytest

from ai_load_balancer import scheduling
from ai_load_balancer.recent_share import RecentShare
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


def test_weighted_profile_combines_prefix_and_load():
    request = SchedRequest("m", True, prompt_blocks=10)
    hot = [Candidate("a", M(waiting=1, kv_cache_usage=0.5), prefix_blocks=10),
           Candidate("b", M(waiting=0, kv_cache_usage=0.1), prefix_blocks=0)]
    assert [c.address for c in scheduling.weighted(request, hot, scheduling.DEFAULT_WEIGHTS)] == ["a"]
    swamped = [Candidate("a", M(waiting=30, kv_cache_usage=0.95), prefix_blocks=10),
               Candidate("b", M(waiting=0, kv_cache_usage=0.1), prefix_blocks=0)]
    assert [c.address for c in scheduling.weighted(request, swamped,
                                                    scheduling.DEFAULT_WEIGHTS)] == ["b"]


def test_least_and_most_by_target_metric():
    replicas = cands(a=M(extra=(("vllm:num_requests_running", 4.0),)),
                     b=M(extra=(("vllm:num_requests_running", 1.0),)))
    assert [c.address for c in scheduling.extreme(replicas, "vllm:num_requests_running",
                                                  False)] == ["b"]
    assert [c.address for c in scheduling.extreme(replicas, "vllm:num_requests_running",
                                                  True)] == ["a"]


def test_rate_limit_caps_a_replica_share():
    recent = RecentShare(window=10)
    replicas = cands(a=M(), b=M())
    for _ in range(6):
        recent.record("a")
    assert [c.address for c in recent.under(replicas, 0.5)] == ["b"]
    assert [c.address for c in recent.under(replicas, 1.0)] == ["a", "b"]
    assert [c.address for c in recent.under(replicas[:1], 0.5)] == ["a"]  # never empty


def test_picker_rotates_ties():
    replicas = cands(a=M(), b=M(), c=M())
    assert {scheduling.pick(replicas, r).address for r in range(3)} == {"a", "b", "c"}
