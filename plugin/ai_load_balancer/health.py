"""Replica health: active checks (one elected VM probes each replica's health
path), passive checks (5xx and connection failures of real requests, seen by
every VM) and the state both produce, shared through shared data.

States: healthy, degraded (answers but overloaded: used only when no healthy
replica is left), unhealthy. Active: `unhealthy_threshold` failed probes in a
row take a replica out, `healthy_threshold` good ones bring it back. Passive:
`consecutive_errors` failed requests in a row eject it for a back-off that
doubles on each repeat offence (base .. max); it rejoins through the active
check once the back-off is over (or by itself when active checks are off).

Shared table (one shared record per configuration), {"ip:port": entry}:
    state            healthy | degraded | unhealthy
    probe_failures   failed probes in a row
    probe_successes  good probes in a row
    errors           failed requests in a row (passive)
    ejected_until    ms: end of the passive ejection's back-off
    ejections        repeat offences (each doubles the back-off)
A change that loses its compare-and-swap race is kept, in order, and applied
again on the next tick: no transition is lost.
"""

import json

from proxywasm import hostcalls

from . import stats
from .leader_lease import LeaderLease
from .log_limiter import LogLimiter
from .shared_record import GaveUp, SharedRecord

HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"
OVERRIDE_HEADER = "x-gateway-destination-endpoint"


def new_entry():
    return {"state": HEALTHY, "probe_failures": 0, "probe_successes": 0, "errors": 0,
            "ejected_until": 0, "ejections": 0}


class Health:
    def __init__(self, config, key, vm_id):
        self.cfg = config
        self.key = key
        self.lease = LeaderLease(key + ":lease", vm_id, 3 * config.interval_ms)
        self.limiter = LogLimiter()
        self.record = SharedRecord(key, self.limiter)
        self.cluster = ""
        self._next_due_ms = 0
        self._in_flight = set()
        self._unwritten = []  # (address, change) that gave up, to apply again
        self._cas, self._table = None, {}

    # --- reading: any VM, per request ----------------------------------------------------

    def table(self):
        """{address: entry}, decoded only when the shared value changed."""
        raw, cas = hostcalls.get_shared_data(self.key)
        if cas != self._cas:
            self._cas, self._table = cas, json.loads(raw) if raw else {}
        return self._table

    def usable(self, addresses, now_ms):
        """(addresses to choose from, tier): the healthy ones; else the degraded;
        else none. A replica nothing is known about counts as healthy."""
        table = self.table()
        healthy, degraded = [], []
        for address in addresses:
            entry = table.get(address)
            state = entry["state"] if entry else HEALTHY
            if state == UNHEALTHY and not self.cfg.active and entry["ejected_until"] <= now_ms:
                state = HEALTHY  # ejection over, and no probe to wait for
            (healthy if state == HEALTHY else degraded if state == DEGRADED else []).append(address)
        if healthy:
            return healthy, HEALTHY
        return degraded, DEGRADED if degraded else UNHEALTHY

    # --- passive: any VM, when a response starts -------------------------------------------

    def observe(self, address, failed, now_ms):
        """A real request to `address` failed (5xx, connect failure) or succeeded."""
        entry = self.table().get(address)
        if not failed and (entry is None or (entry["errors"] == 0
                                             and not self._forgives(entry, now_ms)
                                             and not self._rejoins(entry, now_ms))):
            return  # nothing to reset: no write on the common path
        self._update(address, lambda e: self._passive(address, e, failed, now_ms))

    def _rejoins(self, e, now_ms):
        """An ejected replica whose back-off is over, with no probe to bring it back."""
        return e is not None and e["state"] == UNHEALTHY and not self.cfg.active \
            and e["ejected_until"] <= now_ms

    def _forgives(self, e, now_ms):
        """Serving well for maxEjectionTime after its last ejection ended halves
        a replica's next back-off (one offence forgiven)."""
        return e["ejections"] > 0 and e["state"] != UNHEALTHY \
            and now_ms - e["ejected_until"] > self.cfg.max_ejection_ms

    def _passive(self, address, e, failed, now_ms):
        why = None
        if self._rejoins(e, now_ms):
            e["state"], e["errors"] = HEALTHY, 0
            why = "ejection over"
        if not failed:
            e["errors"] = 0
            if self._forgives(e, now_ms):
                e["ejections"] -= 1
                e["ejected_until"] = now_ms  # the next forgiveness: one more maxEjectionTime
            return why
        e["errors"] += 1
        if e["errors"] >= self.cfg.consecutive_errors and e["state"] != UNHEALTHY:
            e["ejections"] += 1
            backoff = min(self.cfg.base_ejection_ms * 2 ** (e["ejections"] - 1),
                          self.cfg.max_ejection_ms)
            e.update(state=UNHEALTHY, ejected_until=now_ms + backoff, errors=0,
                     probe_successes=0)
            return (f"{self.cfg.consecutive_errors} failed requests in a row; "
                    f"ejected for {backoff} ms")
        return why

    # --- active: the elected VM, from the root's tick ----------------------------------------

    def tick(self, root, endpoints, now_ms):
        """Probes every replica when due. Only the lease holder does."""
        if not self.cfg.active or not self.cluster or not self.lease.hold(now_ms):
            return
        if now_ms < self._next_due_ms:
            return
        self._next_due_ms = now_ms + self.cfg.interval_ms
        for address in endpoints:
            if address not in self._in_flight:
                self._probe(root, address)

    def _probe(self, root, address):
        headers = [(":method", "GET"), (":path", self.cfg.path), (":authority", address),
                   (OVERRIDE_HEADER, address)]

        def on_response(num_headers, body_size, num_trailers):
            self._in_flight.discard(address)
            status = hostcalls.get_header(hostcalls.HTTP_CALL_RESPONSE_HEADERS, ":status") \
                if num_headers else None
            self.probed(address, status, hostcalls.now_ns() // 1_000_000)

        try:
            root.http_call(self.cluster, headers, b"", self.cfg.timeout_ms, on_response)
            self._in_flight.add(address)
        except Exception as exc:
            self.limiter.log(hostcalls.WARN, "probe", f"health check of {address} could not "
                                                      f"start: {exc}")

    def probed(self, address, status, now_ms):
        """Records one probe's answer (":status" text, or None: no answer)."""
        degraded = status is not None and status.isdigit() and \
            int(status) in self.cfg.degraded_statuses
        ok = status == "200" or degraded
        self._update(address, lambda e: self._active(address, e, ok, degraded, now_ms))

    def _active(self, address, e, ok, degraded, now_ms):
        if not ok:
            e["probe_failures"], e["probe_successes"] = e["probe_failures"] + 1, 0
            if e["state"] != UNHEALTHY and e["probe_failures"] >= self.cfg.unhealthy_threshold:
                e["state"] = UNHEALTHY
                return f"{e['probe_failures']} failed health checks in a row"
            return None
        e["probe_failures"], e["probe_successes"] = 0, e["probe_successes"] + 1
        wanted = DEGRADED if degraded else HEALTHY
        if e["state"] == UNHEALTHY and (e["probe_successes"] < self.cfg.healthy_threshold
                                        or now_ms < e["ejected_until"]):
            return None  # not back yet
        if e["state"] == wanted:
            return None
        e["state"] = wanted
        return "health checks pass" if wanted == HEALTHY else "health check says it is overloaded"

    # --- the shared table ---------------------------------------------------------------------

    def create(self):
        """Creates the shared table if missing. On configure, before any stream."""
        self.record.create()

    def _update(self, address, change):
        """Applies change(entry) -> why-text of a state change, or None, to the
        shared table; a state change is logged once it is written. One that gives
        up is kept and applied again on the next tick."""
        if self._unwritten:  # keep the order: after those still waiting
            self._unwritten.append((address, change))
            return
        self._write(address, change)

    def _write(self, address, change):
        try:
            why, entry = self.record.update(
                lambda table: _apply(table, address, change),
                "the health change is applied again on the next tick")
        except GaveUp:
            self._unwritten.append((address, change))
            return False
        if why:
            state = entry["state"]
            hostcalls.log(hostcalls.INFO if state == HEALTHY else hostcalls.WARN,
                          f"ai-load-balancer: endpoint {address} is {state}: {why}")
            stats.count(f"ailb.health.{stats.label(address)}.{state}")
        return True

    def write_unwritten(self):
        """Applies the changes that gave up earlier, in order. Root's tick,
        whether or not this gateway probes (Higress: passive checks only)."""
        waiting, self._unwritten = self._unwritten, []
        for i, (address, change) in enumerate(waiting):
            if not self._write(address, change):
                self._unwritten.extend(waiting[i + 1:])
                return


def _apply(table, address, change):
    entry = table.setdefault(address, new_entry())
    return change(entry), entry
