"""In-flight requests per replica, shared by every worker VM of one Envoy process.

One shared record per plugin configuration holds, per VM, its counts, the
prompt work (uncached blocks) of those requests, and a lease:
{vm_id: {"until": lease_expiry_ms, "counts": {address: count},
         "work": {address: blocks}}}. Taking
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
        self._unreleased = {}  # address -> [requests, work] released, not written yet

    def create(self):
        """Creates the record if missing. On configure, before any stream counts."""
        self.record.create()

    def take(self, choose, now_ms):
        """choose(inflight: {address: count}, work: {address: blocks}) -> a Pick
        or None. The pick (and its work) is counted for this VM in the same atomic
        step. Returns the pick; raises GaveUp when the compare-and-swap gave up
        (nothing counted)."""
        def change(table):
            mine = self._mine(table, now_ms)
            pick = choose(*_totals(table, now_ms, self.vm_id))
            if pick is not None:
                _add(mine, pick.address, 1, pick.work)
            return pick

        pick = self.record.update(change, "this request goes to the service's own load "
                                          "balancing")
        self._unreleased.clear()  # written with the pick
        return pick

    def release(self, address, requests, work, now_ms):
        """Uncounts `requests` of this VM to `address` and `work`; never below
        zero, never lost (kept until written). Never raises GaveUp."""
        pending = self._unreleased.setdefault(address, [0, 0])
        pending[0] += requests
        pending[1] += work
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
        mine = table.setdefault(self.vm_id, {"until": 0, "counts": {}, "work": {}})
        mine["until"] = now_ms + self.lease_ms
        for address, (n, work) in self._unreleased.items():
            _add(mine, address, -n, -work)
        return mine

    def counts(self, now_ms):
        """{address: in-flight} over every live VM (for logs and tests)."""
        return _totals(self.record.read()[0], now_ms, self.vm_id)[0]


def _add(entry, address, n, work):
    """Adds to one VM's count and work for `address`, dropping what reaches 0."""
    for field, amount in (("counts", n), ("work", work)):
        values = entry[field]
        left = values.get(address, 0) + amount
        if left > 0:
            values[address] = left
        else:
            values.pop(address, None)


def _totals(table, now_ms, vm_id):
    """({address: in flight}, {address: work in flight}) over the live VMs."""
    counts, work = {}, {}
    for vm, entry in table.items():
        if entry["until"] > now_ms or vm == vm_id:
            for total, values in ((counts, entry["counts"]), (work, entry["work"])):
                for address, value in values.items():
                    total[address] = total.get(address, 0) + value
    return counts, work
