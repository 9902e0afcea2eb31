"""prefix_cache: the replica where the request would wait least for its first
token, in prefill work (prompt blocks): the part of its prompt the replica
does not hold, plus the uncached work sent there whose first answer byte has
not come (still being computed), plus `decodeCost` per request in flight
there, plus `moveCost` per prompt block another replica holds and this one
does not (moving a conversation duplicates its KV cache; unset, it follows the
fleet's size: move_cost). So a request stays
with the replica holding its prefix until that replica's queue costs more than
the prefix saves. Optional filters on the
match: one shorter than minMatchRatio of the prompt, or on a replica more than
maxLoadGap (>= 0) requests above the least busy one, counts as none.

Redis's pick script runs the same preset (redis_state.py); tests hold the two
to the same answers.
"""

import math

from ..pipeline import Profile, inverted, scorer
from ..picking import Pick
from ..replica_capacity import ReplicaCapacity
from .base import Policy, register


def move_cost(config, candidates):
    """moveCost, or when unset 1 / (candidates - 1)^2: 1 on two replicas, where
    a moved conversation's copy costs more hits than the move saves in queueing;
    next to nothing on many, where a busy replica's conversations find idle ones
    (bench/results/move-cost-by-fleet-size)."""
    if config.move_cost is not None:
        return config.move_cost
    return 1.0 / max(1, len(candidates) - 1) ** 2


def min_match_blocks(config, hashes):
    """The shortest match that counts: minMatchRatio of the hashed blocks, at least 1."""
    return max(1, math.ceil(config.min_match_ratio * len(hashes)))


def counted_matches(inputs, config, addresses):
    """({address: prefix blocks that count}, whether maxLoadGap dropped a match)."""
    min_blocks = min_match_blocks(config, inputs.hashes)
    gap, inflight = config.max_load_gap, inputs.inflight
    fewest = min(inflight.get(a, 0) for a in addresses)
    held, dropped = {}, False
    for address in addresses:
        blocks = inputs.matched.get(address, 0)
        if blocks < min_blocks:
            blocks = 0
        elif gap >= 0 and inflight.get(address, 0) > fewest + gap:
            blocks, dropped = 0, True
        held[address] = min(blocks, inputs.prompt_blocks)
    return held, dropped


@scorer("prefill_cost")
def prefill_cost(inputs, policy, addresses):
    """Lower predicted wait for the first token scores higher."""
    held, _ = counted_matches(inputs, policy.config, addresses)
    decode_cost, move = policy.config.decode_cost, move_cost(policy.config, inputs.candidates)
    top = max(held.values(), default=0)
    return inverted([inputs.prompt_blocks - held[a] + inputs.work.get(a, 0)
                     + decode_cost * inputs.inflight.get(a, 0) + move * (top - held[a])
                     for a in addresses])


@register
class PrefixCache(Policy):
    name = "prefix_cache"
    profile = Profile(("under_limit",), (("prefill_cost", 1.0),))
    hashes_prompt = True
    counts = True
    redis_rule = "cost"

    def __init__(self, balancer):
        super().__init__(balancer)
        self.capacity = ReplicaCapacity(self.config, f"ailb:kvcap:{balancer.state_id}",
                                        balancer.vm_id)

    def explain(self, inputs, address, kept):
        held, dropped = counted_matches(inputs, self.config, kept)
        blocks = held[address]
        reason = "prefix_match" if blocks else "bounded_load" if dropped else "least_load"
        return Pick(address, inputs.inflight.get(address, 0), blocks, reason,
                    inputs.prompt_blocks - blocks)

    def tick_ms(self):
        return self.capacity.tick_ms()

    def tick(self, root, endpoints, now_ms):
        self.capacity.tick(root, endpoints, now_ms)

    def learn_cluster(self, cluster):
        self.capacity.learn_cluster(cluster)

    def before_gathering(self, hosts, now_ms):
        self.capacity.refresh(hosts, now_ms)

    def capacity_of(self, address):
        return self.capacity.of(address)
