"""lb_type cluster, lb_policy cluster_hash: configuration, the hash Higress
uses, and the weighted slot layout (pure, no host). The plugin in the test
host and in Envoy: test_higress_rules.py and envoy-test."""

import collections

import pytest

from ai_load_balancer import config
from ai_load_balancer.cluster_hash import SLOTS, fnv1a_32

A, B, C = "outbound|80||a.dns", "outbound|80||b.dns", "outbound|80||c.dns"


def parse(**fields):
    return config.parse_doc({"lb_type": "cluster", "lb_policy": "cluster_hash",
                             "lb_config": fields})


def test_fnv1a_32_matches_the_published_vectors():
    # FNV-1a 32-bit test vectors (the algorithm's reference page; Go's hash/fnv passes them)
    assert fnv1a_32(b"") == 0x811C9DC5
    assert fnv1a_32(b"a") == 0xE40C292C
    assert fnv1a_32(b"foobar") == 0xBF9CF968


def test_higress_example_config_is_accepted_with_defaults():
    cfg, warnings = parse(clusters=[{"cluster": A, "weight": 30}, {"cluster": B, "weight": 70}])
    assert warnings == []
    assert (cfg.policy, cfg.lb_type) == ("cluster_hash", "cluster")
    hashing = cfg.services
    assert (hashing.hash_header, hashing.header) == ("x-mse-consumer", "x-higress-target-cluster")
    assert hashing.slots == (A,) * 30 + (B,) * 70  # laid out by weight, in list order


def test_headers_and_weights_written_as_strings():
    cfg, _ = parse(clusters=[{"cluster": A, "weight": "100"}], hash_header="X-User",
                   cluster_header="X-Target")
    assert (cfg.services.hash_header, cfg.services.header) == ("x-user", "x-target")
    assert cfg.services.slots == (A,) * SLOTS


def test_a_key_takes_the_slot_its_hash_names():
    """FNV-1a("a") mod 100 = 20 and FNV-1a("") mod 100 = 61: with A 30 / B 70,
    "a" lands on A; the same key always the same service."""
    cfg, _ = parse(clusters=[{"cluster": A, "weight": 30}, {"cluster": B, "weight": 70}])
    assert cfg.services.choose("a", 0) == A
    cfg, _ = parse(clusters=[{"cluster": A, "weight": 20}, {"cluster": B, "weight": 80}])
    assert cfg.services.choose("a", 0) == B  # slot 20 is B's first
    assert all(cfg.services.choose("a", r) == B for r in range(50))  # rotation unused


def test_keys_spread_by_weight_and_missing_keys_too():
    cfg, _ = parse(clusters=[{"cluster": A, "weight": 10}, {"cluster": B, "weight": 30},
                             {"cluster": C, "weight": 60}])
    by_key = collections.Counter(cfg.services.choose(f"user-{i}", 0) for i in range(20000))
    no_key = collections.Counter(cfg.services.choose("", r) for r in range(20000))
    for counts in (by_key, no_key):
        assert abs(counts[A] / 20000 - 0.1) < 0.02, counts
        assert abs(counts[B] / 20000 - 0.3) < 0.02, counts
        assert abs(counts[C] / 20000 - 0.6) < 0.02, counts


@pytest.mark.parametrize("fields, field", [
    ({}, "clusters"),
    ({"clusters": []}, "clusters"),
    ({"clusters": {"cluster": A, "weight": 100}}, "clusters"),
    ({"clusters": [A]}, r"clusters\[0\]"),
    ({"clusters": [{"weight": 100}]}, r"clusters\[0\]\.cluster"),
    ({"clusters": [{"cluster": "a b", "weight": 100}]}, r"clusters\[0\]\.cluster"),
    ({"clusters": [{"cluster": A}]}, r"clusters\[0\]\.weight"),
    ({"clusters": [{"cluster": A, "weight": 0}, {"cluster": B, "weight": 100}]},
     r"clusters\[0\]\.weight"),
    ({"clusters": [{"cluster": A, "weight": "half"}]}, r"clusters\[0\]\.weight"),
    ({"clusters": [{"cluster": A, "weight": 50}, {"cluster": A, "weight": 50}]},
     r"clusters\[1\]\.cluster"),
    ({"clusters": [{"cluster": A, "weight": 50}, {"cluster": B, "weight": 40}]}, "clusters"),
    ({"clusters": [{"cluster": A, "weight": 100}], "hash_header": "a b"}, "hash_header"),
])
def test_invalid_config_names_the_field(fields, field):
    with pytest.raises(config.ConfigError, match=f"^lb_config\\.{field}: "):
        parse(**fields)


def test_fields_of_other_policies_warn():
    _, warnings = parse(clusters=[{"cluster": A, "weight": 100}], mode="LeastBusy", typo=1)
    assert warnings == [
        "lb_config.mode: not used by lb_policy cluster_hash (it is read by cluster_metrics), "
        "ignored",
        "lb_config.typo: unknown field, ignored"]
