"""Which replica served which prompt prefix, shared by the worker VMs of one
Envoy process, in a fixed number of shared-data slots.

Shared data cannot delete keys, so the index is a direct-mapped table: block
hash h lives in slot h mod capacity, as "<hash> <address> <expiry_s>". A newer
block that lands in the same slot replaces the older one, so memory stays
bounded at `capacity` entries; entries also expire after the TTL.

A lookup costs O(log blocks) reads, not one per block: a prompt's blocks are
recorded together, so the longest recorded prefix is found by binary search,
and other replicas' shorter holdings by sampling at half, quarter, ... of it.
A block whose slot another block took since is vouched for by the next block
(hashes are chained: block i+1 recorded means blocks 1..i+1 were sent there), so
one collision costs one more read, not the rest of the match.
"""

from proxywasm import hostcalls


class EmbeddedPrefixIndex:
    def __init__(self, namespace, capacity, ttl_s):
        self.namespace = namespace
        self.capacity = capacity
        self.ttl_s = ttl_s

    def _slot(self, block_hash):
        return f"ailb:pc:{self.namespace}:{int(block_hash, 16) % self.capacity}"

    def _entry(self, block_hash, now_s):
        """(address, expiry_s) of a live entry for this exact block, or None."""
        value, _ = hostcalls.get_shared_data(self._slot(block_hash))
        if value is None:
            return None
        stored_hash, address, expiry = value.decode().split(" ")
        if stored_hash != block_hash or int(expiry) <= now_s:
            return None
        return address, int(expiry)

    def matches(self, hashes, now_s):
        """({address: leading blocks it holds}, aging) for the replica holding the
        longest recorded prefix and, sampled, for replicas holding shorter ones.
        `aging`: that longest entry has less than half its TTL left."""
        longest, entry = 0, None
        low, high = 0, len(hashes)
        while low < high:
            mid = (low + high + 1) // 2
            found = self._entry(hashes[mid - 1], now_s)
            if found is None and mid < len(hashes):
                found = self._entry(hashes[mid], now_s)  # a collision took block mid?
            if found is None:
                high = mid - 1
            else:
                low, longest, entry = mid, mid, found
        if entry is None:
            return {}, False
        matched = {entry[0]: longest}
        position = longest // 2
        while position >= 1:
            found = self._entry(hashes[position - 1], now_s)
            if found is not None and found[0] not in matched:
                matched[found[0]] = position
            position //= 2
        return matched, entry[1] - now_s < self.ttl_s // 2

    def record(self, hashes, address, now_s, start=0):
        """Notes that `address` now holds every block of `hashes`, writing from
        block `start` on (the blocks before it are known to be held and fresh)."""
        expiry = now_s + self.ttl_s
        for block_hash in hashes[start:]:
            hostcalls.set_shared_data(self._slot(block_hash), f"{block_hash} {address} {expiry}")
