"""Where a request's replicas come from, and the routed cluster's name.

Higress lists a route's upstream hosts with their health
(proxy_get_upstream_hosts); stock Envoy has no such call, so there the replicas
come from lb_config.endpoints (and the plugin's own health checks).
"""

import re

from proxywasm import hostcalls

from .health import DEGRADED, HEALTHY, UNHEALTHY

_STATES = {"Healthy": HEALTHY, "Degraded": DEGRADED}
# Host info can carry a whole /metrics text: find the status without decoding it all.
_HEALTH_STATUS = re.compile(r'"health_status"\s*:\s*"(\w+)"')


def host_state(info):
    """HEALTHY, DEGRADED or UNHEALTHY from a Higress host info JSON; a host
    without health information is healthy (Envoy routes to it)."""
    found = _HEALTH_STATUS.search(info)
    return _STATES.get(found.group(1), UNHEALTHY) if found else HEALTHY


def cluster_name():
    """The routed cluster's name, which namespaces shared state. Request phase."""
    for path in (["xds", "cluster_name"], ["cluster_name"]):
        value = hostcalls.get_property(path)
        if value:
            return value.decode("utf-8", "replace")
    return "default"
