"""In-flight requests per replica, shared by every worker VM of one Envoy process.

One shared record per plugin configuration holds, per VM, its counts and a
lease: {vm_id: {"until": lease_expiry_ms, "counts": {address: count}}}. Taking
a replica reads every live VM's counts, picks, and counts the pick in one
compare-and-swap, so two workers never both see a replica as idle. A VM that
dies (its VM trapped and was replaced) stops renewing its lease, and its counts
stop counting. A release that loses its compare-and-swap race is kept and
written with this VM's next change (a pick, a release, the tick's renewal).
"""

from .shared_record import GaveUp, SharedRecord


class EmbeddedInflight:
    def __init__(self, key, vm_id, lease_ms, limiter):
        self.record = SharedRecord(key, limiter)
        self.vm_id = vm_id
        self.lease_ms = lease_ms
        self._unreleased = {}  # address -> releases not written yet

    def create(self):
        """Creates the record if missing. On configure, before any stream counts."""
        self.record.create()

    def take(self, choose, now_ms):
        """choose(inflight: {address: count}) -> a Pick or None. The pick's address
        is counted for this VM in the same atomic step. Returns the pick; raises
        GaveUp when the compare-and-swap gave up (nothing counted)."""
        def change(table):
            mine = self._mine(table, now_ms)
            pick = choose(_total(table, now_ms, self.vm_id))
            if pick is not None:
                mine["counts"][pick.address] = mine["counts"].get(pick.address, 0) + 1
            return pick

        pick = self.record.update(change, "this request goes to the service's own load "
                                          "balancing")
        self._unreleased.clear()  # written with the pick
        return pick

    def release(self, address, now_ms):
        """Uncounts one request of this VM to `address`; never below zero, never
        lost (kept until written). Never raises GaveUp."""
        self._unreleased[address] = self._unreleased.get(address, 0) + 1
        self._write_pending(now_ms, "the release is written with this worker's next change")

    def renew(self, now_ms):
        """Renews this VM's lease and writes releases still pending (from the
        root's tick); drops this VM's entry once it counts nothing."""
        self._write_pending(now_ms, "retried on the next tick")

    def _write_pending(self, now_ms, if_lost):
        def change(table):
            mine = self._mine(table, now_ms)
            if not mine["counts"]:
                del table[self.vm_id]

        try:
            self.record.update(change, if_lost)
        except GaveUp:
            return
        self._unreleased.clear()

    def _mine(self, table, now_ms):
        """This VM's entry in `table`, its lease renewed and its pending releases
        applied; expired VMs are dropped."""
        for vm in [vm for vm, entry in table.items()
                   if entry["until"] <= now_ms and vm != self.vm_id]:
            del table[vm]
        mine = table.setdefault(self.vm_id, {"until": 0, "counts": {}})
        mine["until"] = now_ms + self.lease_ms
        counts = mine["counts"]
        for address, n in self._unreleased.items():
            left = counts.get(address, 0) - n
            if left > 0:
                counts[address] = left
            else:
                counts.pop(address, None)
        return mine

    def counts(self, now_ms):
        """{address: in-flight} over every live VM (for logs and tests)."""
        return _total(self.record.read()[0], now_ms, self.vm_id)


def _total(table, now_ms, vm_id):
    total = {}
    for vm, entry in table.items():
        if entry["until"] > now_ms or vm == vm_id:
            for address, count in entry["counts"].items():
                total[address] = total.get(address, 0) + count
    return total
