"""The plugin configuration behind a benchmark's policy names (bench/run.py,
bench/gateway_cost.py, bench/routing_quality.py, bench/chaos_envoy.py)."""

import envoy_harness as harness

# Policies the client pins itself: the plugin only applies its pin (policy `header`).
PINNED_BY_CLIENT = ("oracle", "plugin idle", "header")


def plugin_config(policy, endpoints, **fields):
    """{"lb_policy", "lb_config"} for `policy`: a plugin policy name, or
    "least_busy-weighted" (least_busy with metric_policy weighted), or one of
    PINNED_BY_CLIENT; "NAME@variant" is NAME (the caller gives the variant's
    fields). `fields` go into lb_config last."""
    if policy in PINNED_BY_CLIENT:
        return {"lb_policy": "header"}
    policy = policy.split("@", 1)[0]
    name, preset = policy, {}
    if policy.startswith("least_busy"):
        name, preset = "least_busy", {"metricsCluster": "backend"}
        if policy == "least_busy-weighted":
            preset["metric_policy"] = "weighted"
    return harness.plugin_config(name, endpoints, **{**preset, **fields})
