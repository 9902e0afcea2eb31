"""The plugin configuration behind a benchmark's policy names (bench/run.py,
bench/gateway_cost.py)."""

# Policies the client pins itself: the plugin only applies its pin (policy `header`).
PINNED_BY_CLIENT = ("oracle", "plugin idle")


def plugin_config(policy, endpoints, **fields):
    """{"lb_policy", "lb_config"} for `policy`: a plugin policy name, or
    "least_busy-weighted" (least_busy with metric_policy weighted), or one of
    PINNED_BY_CLIENT; "NAME@variant" is NAME (the caller gives the variant's
    fields). `fields` go into lb_config last."""
    if policy in PINNED_BY_CLIENT:
        return {"lb_policy": "header"}
    config = {"endpoints": list(endpoints)}
    policy = policy.split("@", 1)[0]
    name = policy
    if policy.startswith("least_busy"):
        name = "least_busy"
        config["metricsCluster"] = "backend"
        if policy == "least_busy-weighted":
            config["metric_policy"] = "weighted"
    config.update(fields)
    return {"lb_policy": name, "lb_config": config}
