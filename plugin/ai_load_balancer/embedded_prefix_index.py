"""Which replica served which prompt prefix, shared by the worker VMs of one
Envoy process, in a fixed number of shared-data slots.

Shared data cannot delete keys, so the index is a direct-mapped table: block
hash h lives in slot h mod capacity, as "<hash> <address> <expiry_s>". A newer
block that lands in the same slot replaces the older one, so memory stays
bounded at `capacity` entries; entries also expire after the TTL.
"""

from proxywasm import hostcalls


class EmbeddedPrefixIndex:
    def __init__(self, namespace, capacity, ttl_s):
        self.namespace = namespace
        self.capacity = capacity
        self.ttl_s = ttl_s

    def _slot(self, block_hash):
        return f"ailb:pc:{self.namespace}:{int(block_hash, 16) % self.capacity}"

    def owners(self, hashes, now_s):
        """The replica that last served each leading block; stops at the first
        block no live entry holds (later blocks cannot be cached without it)."""
        owners = []
        for block_hash in hashes:
            value, _ = hostcalls.get_shared_data(self._slot(block_hash))
            if value is None:
                break
            stored_hash, address, expiry = value.decode().split(" ")
            if stored_hash != block_hash or int(expiry) <= now_s:
                break
            owners.append(address)
        return owners

    def record(self, hashes, address, now_s, known_owners=()):
        """Notes that `address` now holds every block of `hashes`. Skips blocks
        `known_owners` (from owners()) already gives to it: those keep their expiry."""
        expiry = now_s + self.ttl_s
        for i, block_hash in enumerate(hashes):
            if i < len(known_owners) and known_owners[i] == address:
                continue
            hostcalls.set_shared_data(self._slot(block_hash), f"{block_hash} {address} {expiry}")
