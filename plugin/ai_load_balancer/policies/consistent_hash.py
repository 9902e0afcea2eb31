"""Session affinity: a hash ring with virtual nodes, and bounded load
(Mirrokni et al., "Consistent Hashing with Bounded Loads"): a key goes to the
first replica clockwise from its hash whose in-flight count is below
ceil(factor * (total + 1) / replicas), so one heavy key cannot overload a replica.
The key is a request header or a field of the JSON body (lb_config.hashKey);
in-flight counts are per Envoy process.
"""

import bisect
import hashlib
import math

from ..picking import Pick
from ..pipeline import Profile, picker
from .base import Policy, register

VIRTUAL_NODES = 160


def _point(text):
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class HashRing:
    def __init__(self, addresses):
        points = sorted((_point(f"{a}#{i}"), a) for a in addresses for i in range(VIRTUAL_NODES))
        self._points = [p for p, _ in points]
        self._owners = [a for _, a in points]
        self.addresses = frozenset(addresses)
        self.size = len(self.addresses)

    def walk(self, key):
        """Distinct addresses clockwise from the key's point."""
        start = bisect.bisect(self._points, _point(key))
        seen = set()
        for i in range(len(self._points)):
            owner = self._owners[(start + i) % len(self._points)]
            if owner not in seen:
                seen.add(owner)
                yield owner
                if len(seen) == self.size:
                    return


def bounded_pick(ring, key, inflight, factor):
    """(address, reason): the key's replica, or the next one clockwise that is
    under the load bound."""
    total = sum(inflight.get(a, 0) for a in ring.addresses)
    bound = math.ceil(factor * (total + 1) / ring.size)
    first = None
    for address in ring.walk(key):
        first = first or address
        if inflight.get(address, 0) < bound:
            return address, "hash" if address == first else "bounded_load"
    return first, "hash"


@picker("hash_ring", needs="key")
def hash_ring(inputs, policy, addresses, scores):
    return bounded_pick(policy.ring(addresses), inputs.key, inputs.inflight,
                        policy.config.hash_load_factor)[0]


@register
class ConsistentHash(Policy):
    name = "consistent_hash"
    profile = Profile(("under_limit",), picker="hash_ring")
    keyed = True
    counts = True

    def __init__(self, balancer):
        super().__init__(balancer)
        self._ring = (None, None)  # (addresses, HashRing)

    @property
    def reads_body(self):
        return self.config.hash_key[0] == "body"

    def ring(self, addresses):
        """The hash ring of these addresses (rebuilt when they change)."""
        key = tuple(addresses)
        if self._ring[0] != key:
            self._ring = (key, HashRing(addresses))
        return self._ring[1]

    def explain(self, inputs, address, kept):
        """hash_ring's reason: the key's own replica ("hash"), or one further
        clockwise ("bounded_load")."""
        if self.profile.picker != "hash_ring":
            reason = self.name
        elif address == next(self.ring(kept).walk(inputs.key)):
            reason = "hash"
        else:
            reason = "bounded_load"
        return Pick(address, inputs.inflight.get(address, 0), 0, reason)
