"""The classic policies' pure parts: smooth weighted round robin, hash ring with bounded load."""

import collections

from ai_load_balancer.policies.consistent_hash import HashRing, bounded_pick
from ai_load_balancer.weighted_round_robin import SmoothWeightedRoundRobin


def test_smooth_wrr_interleaves_and_keeps_exact_ratios():
    wrr = SmoothWeightedRoundRobin()
    weights = {"a100": 3, "v100": 2, "t4": 1}
    first = [wrr.next(weights) for _ in range(6)]
    assert first == ["a100", "v100", "a100", "t4", "v100", "a100"]
    counts = collections.Counter(wrr.next(weights) for _ in range(6000))
    assert counts == {"a100": 3000, "v100": 2000, "t4": 1000}


def test_smooth_wrr_follows_endpoint_changes():
    wrr = SmoothWeightedRoundRobin()
    for _ in range(5):
        wrr.next({"a": 1, "b": 1})
    assert {wrr.next({"c": 1}) for _ in range(3)} == {"c"}


def test_ring_is_stable_and_spreads_keys():
    ring = HashRing(["a", "b", "c", "d"])
    owners = collections.Counter(next(ring.walk(f"user-{i}")) for i in range(4000))
    assert set(owners) == {"a", "b", "c", "d"}
    assert min(owners.values()) > 700  # 160 virtual nodes: within ~30% of even
    assert next(ring.walk("user-7")) == next(HashRing(["d", "c", "b", "a"]).walk("user-7"))


def test_removing_a_replica_moves_only_its_keys():
    before = HashRing(["a", "b", "c", "d"])
    after = HashRing(["a", "b", "c"])
    moved = [k for k in (f"k{i}" for i in range(2000))
             if next(before.walk(k)) != next(after.walk(k))]
    assert all(next(before.walk(k)) == "d" for k in moved)


def test_bounded_load_spills_a_heavy_key():
    ring = HashRing(["a", "b", "c"])
    home = next(ring.walk("heavy"))
    assert bounded_pick(ring, "heavy", {}, 1.25) == (home, "hash")
    spilled, reason = bounded_pick(ring, "heavy", {home: 10}, 1.25)
    assert spilled != home and reason == "bounded_load"
