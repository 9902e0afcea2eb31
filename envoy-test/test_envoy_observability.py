"""The documented observability against a live Envoy: with the stats tags of
observability/envoy-stats-tags.yaml, /stats/prometheus has a few ailb_*
families with labels, and every query of the Grafana dashboard
(observability/grafana-dashboard.json) reads metrics and labels that exist.

One Envoy, two routes: `/v1/` decided by prefix_cache over three replicas, one
of which fails its health checks (a health transition), `/down/` by a rule
whose only replica is that one (fallbacks to the cluster's own load balancing).
"""

import json
import os
import re

import envoy_harness as harness

DASHBOARD = os.path.join(harness.ROOT, "observability", "grafana-dashboard.json")
JSON = {"content-type": "application/json"}
CHAT = json.dumps({"model": "m", "messages": [
    {"role": "system", "content": "You answer questions. " + "Lorem ipsum dolor. " * 30},
    {"role": "user", "content": "hello"}]}).encode()


def queries():
    with open(DASHBOARD) as f:
        dashboard = json.load(f)
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"]
            for target in panel["targets"]]


def sick_health(replica, request):
    """r2 fails its health checks; every replica answers chat requests."""
    if request.path == "/health" and replica.name == "r2":
        return 500, {"content-type": "text/plain"}, b"sick\n"
    return None


def test_prometheus_families_have_labels_and_the_dashboard_reads_them(
        start_envoy, production_wasm):
    behaviours = [harness.Behaviour(handler=sick_health) for _ in range(3)]
    with harness.ReplicaSet.start(3, behaviours) as replicas:
        sick = replicas.by_name("r2").address
        health = {"interval": 200, "timeout": 200, "unhealthyThreshold": 1}
        document = {"lb_policy": "prefix_cache",
                    "lb_config": {"endpoints": replicas.endpoints, "healthCheck": health},
                    "_rules_": [{"_match_route_": ["down"], "lb_policy": "round_robin",
                                 "lb_config": {"endpoints": [sick], "healthCheck": health}}]}
        config = harness.EnvoyConfig.simple(replicas.endpoints, wasm_path=production_wasm,
                                            plugin_config=document)
        config.listeners[0].routes = [("down", "/down/"), ("llm", "/")]
        envoy = start_envoy(config)
        with harness.Client(envoy.port) as client:
            # The first request of each route teaches its configuration the cluster to probe.
            answers = [client.post(path, CHAT, JSON) for path in
                       ("/v1/chat/completions", "/down/v1/chat/completions")]
            envoy.wait_for_log(f"endpoint {sick} is unhealthy", timeout=15, count=2)
            answers += [client.post("/v1/chat/completions", CHAT, JSON) for _ in range(6)]
            answers += [client.post("/down/v1/chat/completions", CHAT, JSON) for _ in range(3)]
    assert [a.status for a in answers] == [200] * 11
    _, text = envoy.admin("/stats/prometheus")
    samples = harness.prometheus_samples(text)
    families = {name for name, _ in samples}
    labels = {}
    for name, pairs in samples:
        labels.setdefault(name, set()).update(key for key, _ in pairs)

    decided = {dict(pairs)["ailb_reason"]: value for (name, pairs), value in samples.items()
               if name == "ailb_decisions" and dict(pairs).get("ailb_policy") == "prefix_cache"}
    assert sum(decided.values()) == 7 and decided.get("prefix_match", 0) >= 5, decided
    assert samples[("ailb_fallbacks", (("ailb_fallback", "no_usable_replica"),))] == 3
    label = sick.replace(".", "_").replace(":", "_")
    assert samples[("ailb_health", (("ailb_endpoint", label), ("ailb_state", "unhealthy")))] == 2
    assert {"ailb_endpoint_requests", "ailb_prefix_hits", "ailb_prefix_misses",
            "ailb_decision_us_bucket"} <= families

    for title, expr in queries():
        used = re.findall(r"\b(ailb_[a-z0-9_]+)\[", expr)  # metrics: those with a range
        assert used, (title, expr)
        for metric in used:
            assert metric in families, (title, metric, sorted(families))
        for group in re.findall(r"by \(([^)]*)\)", expr):
            for name in (g.strip() for g in group.split(",")):
                assert all(name in labels[m] for m in used), (title, name, used)
