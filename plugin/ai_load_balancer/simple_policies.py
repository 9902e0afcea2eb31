"""Policies that pick among the usable replicas from this VM's own state only.

To add one: write `def my_policy(balancer, candidates, rotation) -> address` and
decorate it with @policy("my_policy"); `lb_policy: my_policy` then works with
the endpoint source, health, failover, pinning and stats of every policy.
`candidates` are the usable replicas ("ip:port", sorted), `rotation` a random
number for tie-breaks, `balancer` the Balancer of the request's configuration
(its config and per-VM state).
"""

POLICIES = {}


def policy(name):
    """Registers a pick function under an lb_policy name."""
    def register(function):
        POLICIES[name] = function
        return function
    return register


@policy("round_robin")
def round_robin(balancer, candidates, rotation):
    balancer.round_robin += 1
    return candidates[balancer.round_robin % len(candidates)]


@policy("weighted_round_robin")
def weighted_round_robin(balancer, candidates, rotation):
    weights = dict(balancer.config.weights)
    return balancer.wrr.next({a: weights.get(a, 1) for a in candidates})


@policy("random")
def random_pick(balancer, candidates, rotation):
    return candidates[rotation % len(candidates)]
