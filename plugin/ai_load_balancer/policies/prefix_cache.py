"""prefix_cache: the replica where the request would wait least for its first
token, in prefill work (blocks of its prompt): the part of its prompt the
replica does not hold, plus the uncached work sent there whose first answer
byte has not come (still being computed) times the queue weight, plus
decodeCost per request in flight there, all times the replica's speed (how
much slower than the fleet it answers). The queue weight, decodeCost and the
speeds are learnt from the first tokens of streamed answers (ttft_model.py);
a set decodeCost keeps the queue weight at 1 (the speeds are still learnt). So a request stays with the
replica holding its prefix until that replica's queue costs more than the
prefix saves. Optional filters on the
match: one shorter than minMatchRatio of the prompt, or on a replica more than
maxLoadGap (>= 0) requests above the least busy one, counts as none.

Redis's pick script runs the same preset (redis_state.py); tests hold the two
to the same answers.
"""

import math

from proxywasm.hostcalls import GAUGE

from .. import stats
from ..pipeline import Profile, inverted, scorer
from ..picking import Pick
from ..replica_capacity import ReplicaCapacity
from ..ttft_model import TtftModel
from .base import Policy, register


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
    queue_weight, decode_cost, speed = policy.queue_weight(), policy.decode_cost(), policy.speed
    return inverted([(inputs.prompt_blocks - held[a] + queue_weight * inputs.work.get(a, 0)
                      + decode_cost * inputs.inflight.get(a, 0)) * speed(a)
                     for a in addresses])


GAUGE_EVERY = 16  # streamed answers


@register
class PrefixCache(Policy):
    name = "prefix_cache"
    profile = Profile(("under_limit",), (("prefill_cost", 1.0),))
    hashes_prompt = True
    counts = True
    redis_rule = "cost"
    learns_first_token = True

    def __init__(self, balancer):
        super().__init__(balancer)
        self.capacity = ReplicaCapacity(self.config, f"ailb:kvcap:{balancer.state_id}",
                                        balancer.vm_id)
        self.ttft = TtftModel(super().decode_cost())

    def explain(self, inputs, address, kept):
        held, dropped = counted_matches(inputs, self.config, kept)
        blocks = held[address]
        reason = "prefix_match" if blocks else "bounded_load" if dropped else "least_load"
        return Pick(address, inputs.inflight.get(address, 0), blocks, reason,
                    inputs.prompt_blocks - blocks, inputs.work.get(address, 0))

    def first_token(self, pick, ttft_ms):
        self.ttft.observe(pick.address, pick.work, pick.queued, pick.inflight, ttft_ms)
        if self.ttft.answers % GAUGE_EVERY == 0:  # what it learnt, for operators
            stats.record("ailb.cost_model.decode_cost", self.decode_cost(), GAUGE)
            stats.record("ailb.cost_model.queue_weight_percent", 100 * self.queue_weight(), GAUGE)
            for address in self.ttft.speeds:
                stats.record(f"ailb.endpoint.{stats.label(address)}.speed_percent",
                             100 * self.speed(address), GAUGE)

    def decode_cost(self):
        return self.ttft.decode_cost() if self.config.decode_cost < 0 else super().decode_cost()

    def queue_weight(self):
        return self.ttft.queue_weight() if self.config.decode_cost < 0 else 1.0

    def speed(self, address):
        return self.ttft.speed(address)

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
