"""In-flight requests per replica, shared by every worker VM of one Envoy process.

One shared record per plugin configuration holds, per VM, a lease and, per
replica, that VM's requests in flight there and their prompt work (uncached
blocks), one line per VM:

    <vm_id> <lease expiry, ms>[ <address> <requests> <work>]...

Taking a replica reads every live VM's counts, picks, and counts the pick in
one compare-and-swap, so two workers never both see a replica as idle. A VM
that dies (its VM trapped and was replaced) stops renewing its lease, and its
counts stop counting. A release that loses its compare-and-swap race is kept
and written with this VM's next change (a pick, a release, the tick's renewal).

The update runs in C in the VM (host_shim/fast_inflight.c, shared-data
reads and writes included); `update` below is its Python reference.
"""

from proxywasm import hostcalls

from .shared_record import TRIES, GaveUp, SharedRecord, compare_and_swap

MAX_LEASE_MS = 10**12  # 31 years: a longer lease (a config can ask) changes nothing

try:
    from _ailb_fast import inflight_update
except ImportError:  # natively: update() below
    inflight_update = None


class EmbeddedInflight:
    def __init__(self, key, vm_id, lease_ms, limiter):
        self.record = SharedRecord(key, limiter)
        self.vm_id = vm_id
        self.lease_ms = min(lease_ms, MAX_LEASE_MS)
        self._unreleased = {}  # address -> [requests, work] released, not written yet

    def create(self):
        """Creates the record if missing. On configure, before any stream counts."""
        self.record.create(empty=b"")

    def take(self, choose, now_ms):
        """choose(inflight: {address: count}, work: {address: blocks}) -> a Pick
        or None. The pick (and its work) is counted for this VM in the same atomic
        step. Returns the pick; raises GaveUp when the compare-and-swap gave up
        (nothing counted)."""
        pick = self._update(choose, now_ms,
                            "this request goes to the service's own load balancing")
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
        try:
            self._update(None, now_ms, if_lost)
        except GaveUp:
            return
        self._unreleased.clear()

    def _update(self, choose, now_ms, if_lost):
        run = inflight_update or update
        written, pick = run(self.record.key, self.vm_id, now_ms, self.lease_ms,
                            self._unreleased, choose, TRIES)
        if not written:
            self.record.gave_up(if_lost)
        return pick

    def counts(self, now_ms):
        """{address: in-flight} over every live VM (for logs and tests)."""
        return totals(decode(hostcalls.get_shared_data(self.record.key)[0]), now_ms,
                      self.vm_id)[0]


def update(key, vm_id, now_ms, lease_ms, unreleased, choose, tries):
    """One change of the record at `key` under compare-and-swap, retried up to
    `tries` times: expired VMs dropped, this VM's lease renewed and its
    `unreleased` {address: [requests, work]} applied; then with `choose`, the
    pick choose(*totals) is counted for this VM, else (a release) this VM's line
    goes once it counts no request. Returns (written, pick)."""
    def change(raw):
        table = decode(raw)
        for vm in [vm for vm, (until, _) in table.items() if until <= now_ms and vm != vm_id]:
            del table[vm]
        mine = table.setdefault(vm_id, [0, {}])
        mine[0] = now_ms + lease_ms
        for address, (requests, work) in unreleased.items():
            _add(mine[1], address, -requests, -work)
        pick = None
        if choose is not None:
            pick = choose(*totals(table, now_ms, vm_id))
            if pick is not None:
                _add(mine[1], pick.address, 1, pick.work)
        elif not any(requests > 0 for requests, _ in mine[1].values()):
            del table[vm_id]
        return encode(table), pick

    return compare_and_swap(key, change, tries)


def decode(raw):
    """{vm_id: [lease expiry ms, {address: [requests, work]}]} from the record."""
    table = {}
    for line in (raw or b"").decode().split("\n"):
        if line:
            fields = line.split(" ")
            table[fields[0]] = [int(fields[1]), {
                fields[i]: [int(fields[i + 1]), int(fields[i + 2])]
                for i in range(2, len(fields) - 2, 3)}]
    return table


def encode(table):
    return "\n".join(" ".join([vm, str(until)] + [f"{a} {r} {w}" for a, (r, w) in slots.items()])
                     for vm, (until, slots) in table.items()).encode()


def _add(slots, address, requests, work):
    """Adds to one VM's requests and work at `address`, neither below zero;
    the address goes when both are zero."""
    have = slots.get(address, (0, 0))
    left = [max(0, have[0] + requests), max(0, have[1] + work)]
    if left[0] or left[1]:
        slots[address] = left
    else:
        slots.pop(address, None)


def totals(table, now_ms, vm_id):
    """({address: requests in flight}, {address: work in flight}) over the live
    VMs, the addresses with none left out."""
    counts, work = {}, {}
    for vm, (until, slots) in table.items():
        if until > now_ms or vm == vm_id:
            for address, (requests, blocks) in slots.items():
                if requests:
                    counts[address] = counts.get(address, 0) + requests
                if blocks:
                    work[address] = work.get(address, 0) + blocks
    return counts, work
