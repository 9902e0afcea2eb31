"""global_least_request and least_connections: the replica with the fewest
requests in flight (global_least_request counts across gateways in Redis,
whose pick script runs this preset too; least_connections counts per Envoy
process). maxRequestCount caps every replica: all at the cap is a 429."""

from ..pipeline import Profile, filter, inverted, scorer
from ..picking import LimitReached, Pick
from .base import Policy, register


@filter("under_limit")
def under_limit(inputs, policy, addresses):
    """The replicas under maxRequestCount (all when it is 0); none: LimitReached."""
    limit = policy.config.max_request_count
    if not limit:
        return addresses
    kept = [a for a in addresses if inputs.inflight.get(a, 0) < limit]
    if not kept:
        raise LimitReached()
    return kept


@scorer("least_request")
def least_request(inputs, policy, addresses):
    return inverted([inputs.inflight.get(a, 0) for a in addresses])


@register
class GlobalLeastRequest(Policy):
    name = "global_least_request"
    profile = Profile(("under_limit",), (("least_request", 1.0),))
    counts = True
    redis_rule = "lr"

    def explain(self, inputs, address, kept):
        return Pick(address, inputs.inflight.get(address, 0), 0, "least_request")


@register
class LeastConnections(GlobalLeastRequest):
    name = "least_connections"
    redis_rule = ""
