"""Which replicas a request may go to: the endpoint source.

Higress lists a route's upstream hosts and their health (proxy_get_upstream_hosts);
stock Envoy has no such call, so there the replicas come from lb_config.endpoints.
"""

import json

from proxywasm import hostcalls

_health_cache = {}  # host info JSON -> usable?


def usable(info):
    """Whether a Higress host info JSON says the host may take traffic."""
    usable = _health_cache.get(info)
    if usable is None:
        try:
            status = json.loads(info).get("health_status", "Healthy")
        except (ValueError, AttributeError):
            status = "Healthy"  # no health information: Envoy still routes to it
        usable = status == "Healthy"
        if len(_health_cache) > 4096:
            _health_cache.clear()
        _health_cache[info] = usable
    return usable


def candidates(config):
    """Sorted addresses ("ip:port") of the usable replicas. Request phase."""
    if hostcalls.has_capability("proxy_get_upstream_hosts"):
        return sorted(address for address, info in hostcalls.get_upstream_hosts() if usable(info))
    return list(config.endpoints)


def cluster_name():
    """The routed cluster's name, which namespaces shared state. Request phase."""
    for path in (["xds", "cluster_name"], ["cluster_name"]):
        value = hostcalls.get_property(path)
        if value:
            return value.decode("utf-8", "replace")
    return "default"
