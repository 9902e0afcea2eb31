"""Applies a routing decision to the current request.

Higress: proxy_set_upstream_override_host. Stock Envoy: the request header that
the cluster's override_host load-balancing policy reads; a comma list gives
Envoy's retries their fallbacks in order.
"""

from proxywasm import hostcalls

OVERRIDE_HEADER = "x-gateway-destination-endpoint"


def strip_client_override():
    """Drops an override header the client sent: only the plugin may pin a request.
    Request-headers phase."""
    hostcalls.remove_header(hostcalls.REQUEST_HEADERS, OVERRIDE_HEADER)


def pin(addresses):
    """Routes this request to addresses[0], falling back to the rest in order.
    Request phase, before the request is routed. Returns the addresses pinned,
    in the order Envoy tries them (Higress: the first only)."""
    if hostcalls.has_capability("proxy_set_upstream_override_host"):
        hostcalls.set_upstream_override_host(addresses[0])
        return addresses[:1]
    hostcalls.replace_header(hostcalls.REQUEST_HEADERS, OVERRIDE_HEADER, ",".join(addresses))
    return list(addresses)
