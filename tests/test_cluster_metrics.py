"""lb_type cluster, lb_policy cluster_metrics: configuration and the pure
service choice (no host)."""

import random

import pytest

from ai_load_balancer import cluster_metrics, config
from ai_load_balancer.cluster_metrics import ClusterMetricsConfig, ServiceStats

A, B, C = "outbound|80||a.dns", "outbound|80||b.dns", "outbound|80||c.dns"


def parse(**fields):
    return config.parse_doc({"lb_type": "cluster", "lb_policy": "cluster_metrics",
                             "lb_config": fields})


def stats(mode, services=(A, B), rate_limit=1.0, queue_size=100):
    return ServiceStats(ClusterMetricsConfig(mode, tuple(services), "x-higress-target-cluster",
                                             rate_limit, queue_size))


# --- configuration ---------------------------------------------------------------

def test_higress_example_config_is_accepted():
    cfg, warnings = parse(mode="LeastFirstTokenLatency", service_list=[A, B],
                          rate_limit=0.6, cluster_header="X-Higress-Target-Cluster")
    assert warnings == []
    assert (cfg.policy, cfg.lb_type) == ("cluster_metrics", "cluster")
    assert cfg.services == ClusterMetricsConfig("LeastFirstTokenLatency", (A, B),
                                                "x-higress-target-cluster", 0.6, 100)


def test_defaults_and_numbers_written_as_strings():
    cfg, _ = parse(mode="LeastBusy", service_list=[A])
    assert (cfg.services.header, cfg.services.rate_limit, cfg.services.queue_size) == \
        ("x-higress-target-cluster", 1.0, 100)
    cfg, _ = parse(mode="LeastBusy", service_list=[A], rate_limit="0.5", queue_size="10",
                   cluster_header="")
    assert (cfg.services.header, cfg.services.rate_limit, cfg.services.queue_size) == \
        ("x-higress-target-cluster", 0.5, 10)


def test_duplicate_and_foreign_fields_warn():
    cfg, warnings = parse(mode="LeastBusy", service_list=[A, B, A], redisKeyTTL=10, typo=1)
    assert cfg.services.services == (A, B)
    assert warnings == [
        f"lb_config.service_list: {A!r} is listed twice; counted once",
        "lb_config.redisKeyTTL: not used by lb_policy cluster_metrics (it is read by "
        "prefix_cache, least_busy), ignored",
        "lb_config.typo: unknown field, ignored"]


@pytest.mark.parametrize("fields, field", [
    ({"mode": "LeastBusy"}, "service_list"),
    ({"mode": "LeastBusy", "service_list": []}, "service_list"),
    ({"mode": "LeastBusy", "service_list": "a"}, "service_list"),
    ({"mode": "LeastBusy", "service_list": [A, ""]}, "service_list"),
    ({"mode": "LeastBusy", "service_list": ["a b"]}, "service_list"),
    ({"service_list": [A]}, "mode"),
    ({"mode": "", "service_list": [A]}, "mode"),
    ({"mode": "leastbusy", "service_list": [A]}, "mode"),
    ({"mode": "AdaptiveScore", "service_list": [A]}, "mode"),
    ({"mode": "LeastBusy", "service_list": [A], "queue_size": 0}, "queue_size"),
    ({"mode": "LeastBusy", "service_list": [A], "queue_size": "ten"}, "queue_size"),
    ({"mode": "LeastBusy", "service_list": [A], "rate_limit": 2}, "rate_limit"),
    ({"mode": "LeastBusy", "service_list": [A], "rate_limit": -0.1}, "rate_limit"),
    ({"mode": "LeastBusy", "service_list": [A], "cluster_header": ":authority"},
     "cluster_header"),
])
def test_invalid_config_names_the_field(fields, field):
    with pytest.raises(config.ConfigError, match=f"^lb_config\\.{field}: "):
        parse(**fields)


def test_bad_mode_lists_the_valid_ones():
    with pytest.raises(config.ConfigError) as err:
        parse(mode="Fastest", service_list=[A])
    assert all(mode in str(err.value) for mode in cluster_metrics.MODES)


def test_cluster_policy_needs_lb_type_cluster():
    with pytest.raises(config.ConfigError, match="^lb_policy: .*lb_type: cluster"):
        config.parse_doc({"lb_policy": "cluster_metrics",
                          "lb_config": {"mode": "LeastBusy", "service_list": [A]}})


def test_error_path_names_the_rule():
    lb = config._Fields({"mode": "LeastBusy"}, "cluster_metrics", "_rules_[0].lb_config")
    with pytest.raises(config.ConfigError, match=r"^_rules_\[0\]\.lb_config\.service_list: "):
        cluster_metrics.parse_services(lb)


# --- choice ------------------------------------------------------------------------

def test_least_busy_prefers_fewer_in_flight():
    s = stats("LeastBusy", (A, B, C))
    first = [s.choose(r) for r in range(3)]
    assert sorted(first) == [A, B, C]          # one each, wherever it starts
    s.done(B, 10, True)
    assert s.choose(0) == B                    # A and C still have one in flight
    assert s.ongoing == {A: 1, B: 1, C: 1}
    for service in (A, B, C):
        s.done(service, 10, True)
    assert s.ongoing == {A: 0, B: 0, C: 0}
    s.done(A, 10, True)                        # an extra done() does not go negative
    assert s.ongoing[A] == 0


def test_ties_keep_the_random_start():
    s = stats("LeastTotalLatency", (A, B, C))
    assert [s.choose(r) for r in (0, 1, 2, 3, 4)] == [A, B, C, A, B]


def test_least_first_token_latency_prefers_lower_mean_and_tries_new_services():
    s = stats("LeastFirstTokenLatency", (A, B, C))
    for service, ms in ((A, 300), (A, 100), (B, 150)):
        s.first_byte(service, ms)
    # C has no sample: it counts as 0 and is tried, from any start.
    for r in range(3):
        fresh = stats("LeastFirstTokenLatency", (A, B, C))
        for service, ms in ((A, 300), (A, 100), (B, 150)):
            fresh.first_byte(service, ms)
        assert fresh.choose(r) == C
    s.choose(0)
    # As in Higress, a service with every pick so far is at rate_limit 1.0: the
    # next pick goes elsewhere even though C still has no sample.
    assert s.choose(2) == B
    s.first_byte(C, 500)
    assert s.choose(0) == B and s.choose(2) == B  # means: A 200, B 150, C 500
    s.first_byte(B, 400)                           # B 275
    assert s.choose(1) == A


def test_least_total_latency_penalises_failures():
    s = stats("LeastTotalLatency", (A, B))
    s.done(A, 100, True)
    s.done(B, 40, True)
    assert s.choose(0) == B
    s.done(B, 30, False)                       # max(30, mean of A 100) * 2 = 200
    assert s.latency[B].mean() == pytest.approx((40 + 200) / 2)
    assert s.choose(1) == A
    s.done(A, 500, False)                      # slower than every mean: 500 * 2
    assert s.latency[A].samples[-1] == 1000


def test_failed_first_byte_is_penalised():
    s = stats("LeastFirstTokenLatency", (A, B))
    s.first_byte(A, 50)
    s.first_byte(B, 10, status_ok=False)       # max(10, 50) * 2
    assert s.ttft[B].mean() == 100
    assert s.choose(1) == A


def test_unknown_service_is_ignored():
    s = stats("LeastBusy")
    s.first_byte("gone", 10)
    s.done("gone", 10, False)
    assert s.ongoing == {A: 0, B: 0} and s.total_picks == 0


def test_rate_limit_caps_a_services_share():
    s = stats("LeastTotalLatency", (A, B, C), rate_limit=0.5)
    rng = random.Random(7)
    for _ in range(1000):
        service = s.choose(rng.randrange(1 << 16))
        s.done(service, {A: 10, B: 100, C: 200}[service], True)
    assert s.picks[A] / 1000 <= 0.5 + 0.01     # A is fastest but capped
    assert s.picks[A] > 450
    assert s.picks[B] > s.picks[C]             # the rest goes to the next fastest first
    assert sum(s.picks.values()) == s.total_picks == 1000


def test_rate_limit_one_lets_the_fastest_take_nearly_everything():
    s = stats("LeastTotalLatency", (A, B), rate_limit=1.0)
    rng = random.Random(3)
    for _ in range(1000):
        service = s.choose(rng.randrange(1 << 16))
        s.done(service, 10 if service == A else 100, True)
    assert s.picks[A] >= 995


def test_single_service_is_always_chosen():
    s = stats("LeastBusy", (A,), rate_limit=0.1)
    assert {s.choose(r) for r in range(20)} == {A}


def test_queue_size_forgets_an_old_slow_period():
    s = stats("LeastTotalLatency", (A, B), queue_size=5)
    for _ in range(50):
        s.done(A, 5000, True)                  # A was slow for a while
    s.done(B, 100, True)
    assert s.choose(0) == B
    for _ in range(5):
        s.done(A, 50, True)                    # ... and is fast now: only the last 5 count
    assert len(s.latency[A].samples) == 5
    assert s.latency[A].mean() == 50
    assert s.choose(1) == A


def test_describe_lists_every_service():
    s = stats("LeastBusy")
    s.choose(0)
    line = s.describe()
    assert A in line and B in line and "share 1.00" in line
