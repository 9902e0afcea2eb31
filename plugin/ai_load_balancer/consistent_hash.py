"""Session affinity: a hash ring with virtual nodes, and bounded load
(Mirrokni et al., "Consistent Hashing with Bounded Loads"): a key goes to the
first replica clockwise from its hash whose in-flight count is below
ceil(factor * (total + 1) / replicas), so one heavy key cannot overload a replica.
"""

import bisect
import hashlib
import math

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
