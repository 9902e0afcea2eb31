"""Policies that pick among the usable replicas from this VM's own state only.

To add one: write `def my_policy(root, candidates, rotation) -> address` and
decorate it with @policy("my_policy"); `lb_policy: my_policy` then works with
the endpoint source, health, failover, pinning and stats of every policy.
`candidates` are the usable replicas ("ip:port", sorted), `rotation` a random
number for tie-breaks, `root` the LoadBalancerRoot (config, per-VM state).
"""

POLICIES = {}


def policy(name):
    """Registers a pick function under an lb_policy name."""
    def register(function):
        POLICIES[name] = function
        return function
    return register


@policy("round_robin")
def round_robin(root, candidates, rotation):
    root.round_robin += 1
    return candidates[root.round_robin % len(candidates)]


@policy("weighted_round_robin")
def weighted_round_robin(root, candidates, rotation):
    weights = dict(root.config.weights)
    return root.wrr.next({a: weights.get(a, 1) for a in candidates})


@policy("random")
def random_pick(root, candidates, rotation):
    return candidates[rotation % len(candidates)]
