"""The classic policies: a header names the replica; round robin, weighted
round robin, random. They keep no shared state (round robin's counter and the
weighted rotation are per VM)."""

from ..pipeline import Profile, picker
from ..weighted_round_robin import SmoothWeightedRoundRobin
from .base import Policy, register


@register
class Header(Policy):
    """The client names its replica in `lb_config.header` (asked for by name only)."""
    name = "header"
    headers_only = True


@picker("round_robin")
def round_robin(inputs, policy, addresses, scores):
    """The next candidate in turn (the turn is kept on the policy, per VM)."""
    policy.turn = getattr(policy, "turn", 0) + 1
    return addresses[policy.turn % len(addresses)]


@picker("weighted_round_robin")
def weighted_round_robin(inputs, policy, addresses, scores):
    """Smooth weighted round robin by lb_config.weights (per VM)."""
    if not hasattr(policy, "rotation"):
        policy.rotation = SmoothWeightedRoundRobin()
    weights = dict(policy.config.weights)
    return policy.rotation.next({a: weights.get(a, 1) for a in addresses})


@register
class RoundRobin(Policy):
    name = "round_robin"
    profile = Profile(picker="round_robin")


@register
class WeightedRoundRobin(Policy):
    name = "weighted_round_robin"
    profile = Profile(picker="weighted_round_robin")


@register
class Random(Policy):
    name = "random"
