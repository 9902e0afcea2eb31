"""In-flight requests per replica, shared by every worker VM of one Envoy process.

One shared-data key per plugin configuration holds, per VM, its counts and a
lease: {vm_id: [lease_expiry_ms, {address: count}]}. Taking a replica reads
every live VM's counts, picks, and counts the pick in one compare-and-swap, so
two workers never both see a replica as idle. A VM that dies (its VM trapped
and was replaced) stops renewing its lease, and its counts stop counting.
"""

import json

from proxywasm import hostcalls
from proxywasm.abi import CasMismatch

CAS_TRIES = 32


class Contention(RuntimeError):
    """Other workers kept winning the compare-and-swap."""


class EmbeddedInflight:
    def __init__(self, key, vm_id, lease_ms):
        self.key = key
        self.vm_id = vm_id
        self.lease_ms = lease_ms

    def create(self):
        """Creates the key if missing. On configure, before any stream counts."""
        value, _ = hostcalls.get_shared_data(self.key)
        if value is None:
            hostcalls.set_shared_data(self.key, b"{}")

    def take(self, choose, now_ms):
        """choose(inflight: {address: count}) -> a Pick or None. The pick's address
        is counted for this VM in the same atomic step. Returns the pick."""
        for _ in range(CAS_TRIES):
            table, cas = self._read(now_ms)
            pick = choose(_total(table))
            if pick is None:
                return None
            mine = table.setdefault(self.vm_id, [0, {}])
            mine[0] = now_ms + self.lease_ms
            mine[1][pick.address] = mine[1].get(pick.address, 0) + 1
            if self._write(table, cas):
                return pick
        raise Contention(f"{self.key}: {CAS_TRIES} compare-and-swap attempts lost")

    def release(self, address, now_ms):
        """Uncounts one request of this VM to `address`; never below zero."""
        for _ in range(CAS_TRIES):
            table, cas = self._read(now_ms)
            mine = table.get(self.vm_id)
            if mine is None or mine[1].get(address, 0) <= 0:
                return
            mine[0] = now_ms + self.lease_ms
            mine[1][address] -= 1
            if mine[1][address] == 0:
                del mine[1][address]
            if self._write(table, cas):
                return
        raise Contention(f"{self.key}: {CAS_TRIES} compare-and-swap attempts lost")

    def renew(self, now_ms):
        """Renews this VM's lease (from the root's tick); drops expired VMs."""
        for _ in range(CAS_TRIES):
            table, cas = self._read(now_ms)
            mine = table.get(self.vm_id)
            if mine is None:
                return
            if not mine[1]:
                del table[self.vm_id]
            else:
                mine[0] = now_ms + self.lease_ms
            if self._write(table, cas):
                return

    def counts(self, now_ms):
        """{address: in-flight} over every live VM (for logs and tests)."""
        return _total(self._read(now_ms)[0])

    def _read(self, now_ms):
        raw, cas = hostcalls.get_shared_data(self.key)
        table = json.loads(raw) if raw else {}
        live = {vm: entry for vm, entry in table.items()
                if entry[0] > now_ms or vm == self.vm_id}
        return live, cas

    def _write(self, table, cas):
        try:
            hostcalls.set_shared_data(self.key, json.dumps(table, separators=(",", ":")), cas)
            return True
        except CasMismatch:
            return False


def _total(table):
    total = {}
    for _, counts in table.values():
        for address, count in counts.items():
            total[address] = total.get(address, 0) + count
    return total
