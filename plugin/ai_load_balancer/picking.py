"""The pick rules of global_least_request and prefix_cache. Pure functions.

The Redis store runs the same rules inside one Lua script (redis_state.py),
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
    reason: str          # "least_request" | "prefix_match" | "least_load" | "bounded_load"
    work: int = 0        # prompt blocks the replica must compute (counted while in flight)


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


def least_cost(addresses, inflight, work, matched, prompt_blocks, decode_cost, rotation,
               min_blocks=1, max_load_gap=-1):
    """prefix_cache's pick: the replica where the request would wait least for
    its first token, in prefill work (prompt blocks): the part of its prompt the
    replica does not hold, plus the uncached work sent there whose first answer
    byte has not come (still being computed), plus `decode_cost` per request in
    flight there. So a request
    stays with the replica holding its prefix until that replica's queue costs
    more than the prefix saves. `matched`: address -> leading blocks it holds;
    `work`: address -> blocks in flight. Optional filters: a match shorter than
    `min_blocks`, or on a replica more than `max_load_gap` (>= 0) requests above
    the least busy one, counts as none."""
    min_blocks = max(1, min_blocks)
    fewest = min(inflight.get(a, 0) for a in addresses)
    n = len(addresses)
    best, any_match = None, False
    for i in range(n):
        address = addresses[(rotation + i) % n]
        count, held = inflight.get(address, 0), matched.get(address, 0)
        if held < min_blocks:
            held = 0
        elif max_load_gap >= 0 and count > fewest + max_load_gap:
            held, any_match = 0, True
        held = min(held, prompt_blocks)
        cost = prompt_blocks - held + work.get(address, 0) + decode_cost * count
        if best is None or cost < best[1]:
            best = (address, cost, held, count)
    address, _, held, count = best
    reason = "prefix_match" if held else "bounded_load" if any_match else "least_load"
    return Pick(address, count, held, reason, prompt_blocks - held)
