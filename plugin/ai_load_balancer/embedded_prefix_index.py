"""Which replicas served which prompt prefix, shared by the worker VMs of one
Envoy process, in a fixed number of shared-data slots.

Shared data cannot delete keys, so the index is a direct-mapped table: block
hash h lives in slot h mod capacity, as "<hash> <holder> [<holder> ...]", each
holder "<address> <expiry_s> <stamp>", the latest first, at most HOLDERS (a
prefix sent to two replicas is held by both: the cost model can then spread
its requests over them). A newer block that lands in the same slot replaces
the older one, so memory stays bounded at `capacity` entries; holders also
expire after the TTL.

A replica forgets too: its KV cache holds so many blocks and evicts the least
recently used. Each replica has a clock, the prompt blocks sent there to be
computed so far (`ailb:pcclk:<namespace>:<address>`); a holder is stamped with
its replica's clock when recorded, and is gone once the clock has run more than
the replica's cache size past its stamp (capacity_of(address) blocks; 0:
unknown, never forgotten this way). A prefix that is used again is re-stamped
once it is half that old, as the replica's LRU would keep it.

A lookup costs O(log blocks) reads, not one per block: a prompt's blocks are
recorded together, so the longest recorded prefix is found by binary search,
and other replicas' shorter holdings by sampling at half, quarter, ... of it.
A block whose slot another block took since is vouched for by the next block
(hashes are chained: block i+1 recorded means blocks 1..i+1 were sent there), so
one collision costs one more read, not the rest of the match.
"""

from proxywasm import hostcalls

from .shared_record import GaveUp, SharedRecord

try:  # in the VM: the same lookup and writes, with their shared data, in C (host_shim/fast_index.c)
    from _ailb_fast import prefix_matches, prefix_record
except ImportError:  # natively: reference_matches, reference_write_blocks
    prefix_matches = prefix_record = None

HOLDERS = 3


def unknown_size(address):
    """capacity_of when no replica's cache size is known."""
    return 0


class EmbeddedPrefixIndex:
    def __init__(self, namespace, capacity, ttl_s, limiter, capacity_of=unknown_size):
        self.namespace = namespace
        self.capacity = capacity
        self.ttl_s = ttl_s
        self.limiter = limiter
        self.capacity_of = capacity_of  # address -> its KV cache in index blocks (0: unknown)
        self.slot_prefix = f"ailb:pc:{namespace}:"       # + hash mod capacity
        self.clock_prefix = f"ailb:pcclk:{namespace}:"   # + address
        self._slot_prefix_bytes = self.slot_prefix.encode()    # for the C versions
        self._clock_prefix_bytes = self.clock_prefix.encode()

    def _slot(self, block_hash):
        return f"{self.slot_prefix}{int(block_hash, 16) % self.capacity}"

    def _clock_key(self, address):
        return self.clock_prefix + address

    def matches(self, hashes, now_s):
        """({address: leading blocks it holds}, aging) for the replicas holding the
        longest recorded prefix and, sampled, for replicas holding shorter ones.
        `aging`: the holders of the longest prefix whose first block has less than
        half its TTL left, or is more than half their cache old (recording it
        again refreshes it)."""
        if prefix_matches is None:
            return self.reference_matches(hashes, now_s)
        return prefix_matches(self._slot_prefix_bytes, self.capacity, self._clock_prefix_bytes,
                              hashes, now_s, self.ttl_s, self.capacity_of)

    def _clock(self, address):
        raw, _ = hostcalls.get_shared_data(self._clock_key(address))
        return int(raw) if raw else 0

    @staticmethod
    def _stored(value, block_hash):
        """[(address, expiry_s, stamp), ...] stored for this exact block."""
        if value is None:
            return []
        parts = value.decode().split(" ")
        if parts[0] != block_hash or len(parts) % 3 != 1:
            return []  # another block's slot now, or not an entry of this layout
        return [(parts[i], int(parts[i + 1]), int(parts[i + 2]))
                for i in range(1, len(parts), 3)]

    def _holders(self, block_hash, now_s, clocks):
        """[(address, expiry_s, age in blocks), ...]: the live holders of this
        block, latest first. `clocks`: address -> clock, filled as read."""
        value, _ = hostcalls.get_shared_data(self._slot(block_hash))
        live = []
        for address, expiry, stamp in self._stored(value, block_hash):
            if expiry <= now_s:
                continue
            if address not in clocks:
                clocks[address] = self._clock(address)
            age, size = clocks[address] - stamp, self.capacity_of(address)
            if size <= 0 or age < size:  # else the replica has computed its cache's worth since
                live.append((address, expiry, age))
        return live

    def reference_matches(self, hashes, now_s):
        """matches() in Python: what the C version must answer (and the answer
        where the VM's C module is absent)."""
        clocks = {}
        longest, holders = 0, []
        low, high = 0, len(hashes)
        while low < high:
            mid = (low + high + 1) // 2
            found = self._holders(hashes[mid - 1], now_s, clocks)
            if not found and mid < len(hashes):
                found = self._holders(hashes[mid], now_s, clocks)  # a collision took block mid?
            if not found:
                high = mid - 1
            else:
                low, longest, holders = mid, mid, found
        if not holders:
            return {}, set()
        matched = {address: longest for address, _, _ in holders}
        first = {address: (expiry, age) for address, expiry, age in holders}
        position = longest // 2
        while position >= 1:
            found = self._holders(hashes[position - 1], now_s, clocks)
            for address, expiry, age in found:
                matched.setdefault(address, position)
                if position == 1 and address in first:
                    first[address] = (expiry, age)
            position //= 2
        aging = set()
        for address, (expiry, age) in first.items():
            size = self.capacity_of(address)
            if expiry - now_s < self.ttl_s // 2 or (size > 0 and age > size // 2):
                aging.add(address)
        return matched, aging

    def record(self, hashes, address, now_s, held=0, computed=None):
        """Notes that `address` now holds every block of `hashes`, writing from
        block `held` on (the blocks before it are known to be held and fresh).
        `computed`: the prompt blocks the replica computes for it (default: the
        hashed ones it does not hold), which advance its clock."""
        computed = len(hashes) - held if computed is None else computed
        try:
            stamp = SharedRecord(self._clock_key(address), self.limiter).update_raw(
                lambda raw: (str((int(raw) if raw else 0) + computed).encode(),
                             (int(raw) if raw else 0) + computed),
                "the replica's cache clock is not advanced")
        except GaveUp:
            stamp = self._clock(address)
        expiry = now_s + self.ttl_s
        if prefix_record is None:
            self.reference_write_blocks(hashes, held, address, expiry, stamp, now_s)
        else:
            prefix_record(self._slot_prefix_bytes, self.capacity, hashes, held,
                          address, expiry, stamp, now_s, HOLDERS)

    def reference_write_blocks(self, hashes, held, address, expiry, stamp, now_s):
        """Each block from `held` on is held by `address` first, then by up to
        HOLDERS - 1 other live holders it had. The C version (prefix_record)
        must do the same."""
        for block_hash in hashes[held:]:
            slot = self._slot(block_hash)
            value, _ = hostcalls.get_shared_data(slot)
            others = [f"{a} {e} {s}" for a, e, s in self._stored(value, block_hash)
                      if a != address and e > now_s][:HOLDERS - 1]
            hostcalls.set_shared_data(slot, " ".join([block_hash, f"{address} {expiry} {stamp}",
                                                      *others]))
