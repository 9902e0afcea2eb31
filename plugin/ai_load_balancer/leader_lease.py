"""Elects one VM per Envoy process for periodic work (scraping, health checks).

Timers fire in the main thread's VM and in every worker VM; the work must run
once. A shared-data key holds "<vm_id> <expiry ms>": the holder renews it on
each tick, and any VM takes it, with a compare-and-swap, once it expired.
"""

from proxywasm import hostcalls
from proxywasm.abi import CasMismatch


class LeaderLease:
    def __init__(self, key, vm_id, lease_ms):
        self.key = key
        self.vm_id = str(vm_id)
        self.lease_ms = lease_ms

    def hold(self, now_ms):
        """True when this VM holds (took or renewed) the lease. Root's tick."""
        raw, cas = hostcalls.get_shared_data(self.key)
        if raw is None:
            # Created expired, then taken with a compare-and-swap like any
            # expired lease (a write with cas 0 would not check anything).
            hostcalls.set_shared_data(self.key, b"- 0")
            raw, cas = hostcalls.get_shared_data(self.key)
            if raw is None:
                return False
        holder, _, expiry = bytes(raw).decode("utf-8", "replace").partition(" ")
        try:
            expiry_ms = int(expiry)
        except ValueError:
            expiry_ms = 0
        if holder != self.vm_id and expiry_ms > now_ms:
            return False
        try:
            hostcalls.set_shared_data(self.key, f"{self.vm_id} {now_ms + self.lease_ms}", cas)
        except CasMismatch:
            return False
        self.taken = holder != self.vm_id
        return True
