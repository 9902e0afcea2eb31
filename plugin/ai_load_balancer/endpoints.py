"""Where a request's replicas come from, and the names it is routed by.

Higress lists a route's upstream hosts with their health
(proxy_get_upstream_hosts); stock Envoy has no such call, so there the replicas
come from lb_config.endpoints (and the plugin's own health checks).
"""

import re

from proxywasm import hostcalls
from proxywasm.abi import Unimplemented

from .health import DEGRADED, HEALTHY, UNHEALTHY

# Higress's Envoy spells the coarse health as exactly these three
# (convertHealthStatusToString in its source/extensions/common/wasm/context.cc).
_STATES = {"Healthy": HEALTHY, "Degraded": DEGRADED, "Unhealthy": UNHEALTHY}
# Host info can carry a whole /metrics text: find the status without decoding it all.
_HEALTH_STATUS = re.compile(r'"health_status"\s*:\s*"(\w+)"')
_host_lists = [True]  # False once the host answered Unimplemented (an older Higress)


def host_state(info):
    """HEALTHY, DEGRADED or UNHEALTHY from a Higress host info JSON; a host
    without health information is healthy (Envoy routes to it)."""
    found = _HEALTH_STATUS.search(info)
    return _STATES.get(found.group(1), UNHEALTHY) if found else HEALTHY


def upstream_hosts():
    """Higress's [(address, info JSON)] of the routed cluster, or None where the
    host cannot list them (stock Envoy; a Higress without the call answers
    Unimplemented: said once per VM, then the configured endpoints are used).
    Stream phase."""
    if not _host_lists[0] or not hostcalls.has_capability("proxy_get_upstream_hosts"):
        return None
    try:
        return hostcalls.get_upstream_hosts()
    except Unimplemented:
        _host_lists[0] = False
        hostcalls.log(hostcalls.WARN, "ai-load-balancer: this Higress cannot list upstream "
                                      "hosts (proxy_get_upstream_hosts is unimplemented); "
                                      "using lb_config.endpoints and the plugin's own health "
                                      "checks")
        return None


def lists_hosts():
    """True while the host lists upstream hosts (and checks their health itself)."""
    return _host_lists[0] and hostcalls.has_capability("proxy_get_upstream_hosts")


def _property(*paths):
    for path in paths:
        value = hostcalls.get_property(path)
        if value:
            return value.decode("utf-8", "replace")
    return ""


def cluster_name():
    """The routed cluster's name ("" when not routed). Request phase."""
    return _property(["xds", "cluster_name"], ["cluster_name"])


def route_name():
    """The matched route's name ("" when none). Request phase."""
    return _property(["xds", "route_name"], ["route_name"])


def authority():
    """The request's :authority. Request-headers phase."""
    return hostcalls.get_header(hostcalls.REQUEST_HEADERS, ":authority") or ""
