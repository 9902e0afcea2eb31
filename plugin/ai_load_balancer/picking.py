"""The pick rules of global_least_request and prefix_cache. Pure functions.

The Redis store runs the same rules inside one Lua script (redis_scripts.py),
so that taking a replica and counting it happen in one atomic step; the tests
hold the two to the same answers.

Ties are broken by rotation: candidates are tried starting at index
`rotation % len(candidates)`, where the caller draws `rotation` at random.
"""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Pick:
    address: str
    inflight: int        # the replica's in-flight count before this request
    matched_blocks: int  # prefix blocks it already holds (0: no prefix match)
    reason: str          # "least_request" | "prefix_match" | "bounded_load"


def under_limit(addresses, inflight, limit):
    """The addresses with fewer than `limit` requests in flight (all when limit is 0)."""
    if not limit:
        return addresses
    return [a for a in addresses if inflight.get(a, 0) < limit]


def least_request(addresses, inflight, rotation):
    """The address with the fewest in-flight requests."""
    n = len(addresses)
    best = None
    for i in range(n):
        address = addresses[(rotation + i) % n]
        count = inflight.get(address, 0)
        if best is None or count < best[1]:
            best = (address, count)
    return Pick(best[0], best[1], 0, "least_request")


def prefix_match(addresses, inflight, matched, max_load_gap, rotation, min_blocks=1):
    """The replica holding the longest prefix of the prompt, among those whose
    in-flight count is within `max_load_gap` of the least busy one; else the
    least busy. `matched` maps address -> number of leading blocks it holds;
    a match shorter than `min_blocks` does not count."""
    min_blocks = max(1, min_blocks)
    fewest = min(inflight.get(a, 0) for a in addresses)
    n = len(addresses)
    best, any_match = None, False
    for i in range(n):
        address = addresses[(rotation + i) % n]
        blocks, count = matched.get(address, 0), inflight.get(address, 0)
        if blocks < min_blocks:
            continue
        any_match = True
        if count > fewest + max_load_gap:
            continue
        if best is None or blocks > best[1] or (blocks == best[1] and count < best[2]):
            best = (address, blocks, count)
    if best is not None:
        return Pick(best[0], best[2], best[1], "prefix_match")
    pick = least_request(addresses, inflight, rotation)
    return Pick(pick.address, pick.inflight, matched.get(pick.address, 0),
                "bounded_load" if any_match else "least_request")

