"""Replica health: active checks (one elected VM probes each replica's health
path), passive checks (5xx and connection failures of real requests, seen by
every VM) and the state both produce, shared through shared data.

States: healthy, degraded (answers but overloaded: used only when no healthy
replica is left), unhealthy. Active: `unhealthy_threshold` failed probes in a
row take a replica out, `healthy_threshold` good ones bring it back. Passive:
`consecutive_errors` failed requests in a row eject it for a back-off that
doubles on each repeat offence (base .. max); it rejoins through the active
check once the back-off is over (or by itself when active checks are off).

Shared table (one CAS key per configuration):
    {"ip:port": [state, probe_failures, probe_successes, passive_errors,
                 ejected_until_ms, ejections]}
"""

import json

from proxywasm import hostcalls
from proxywasm.abi import CasMismatch

from . import stats
from .leader_lease import LeaderLease
from .log_limiter import LogLimiter

HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"
OVERRIDE_HEADER = "x-gateway-destination-endpoint"
CAS_TRIES = 16


class Health:
    def __init__(self, config, key, vm_id):
        self.cfg = config
        self.key = key
        self.lease = LeaderLease(key + ":lease", vm_id, 3 * config.interval_ms)
        self.limiter = LogLimiter()
        self.cluster = ""
        self._next_due_ms = 0
        self._in_flight = set()
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
            state = entry[0] if entry else HEALTHY
            if state == UNHEALTHY and not self.cfg.active and entry[4] <= now_ms:
                state = HEALTHY  # ejection over, and no probe to wait for
            (healthy if state == HEALTHY else degraded if state == DEGRADED else []).append(address)
        if healthy:
            return healthy, HEALTHY
        return degraded, DEGRADED if degraded else UNHEALTHY

    # --- passive: any VM, when a response starts -------------------------------------------

    def observe(self, address, failed, now_ms):
        """A real request to `address` failed (5xx, connect failure) or succeeded."""
        entry = self.table().get(address)
        if not failed and (entry is None or (entry[3] == 0 and not self._forgives(entry, now_ms)
                                             and not self._rejoins(entry, now_ms))):
            return  # nothing to reset: no write on the common path
        self._update(address, lambda e: self._passive(address, e, failed, now_ms))

    def _rejoins(self, e, now_ms):
        """An ejected replica whose back-off is over, with no probe to bring it back."""
        return e is not None and e[0] == UNHEALTHY and not self.cfg.active and e[4] <= now_ms

    def _forgives(self, e, now_ms):
        """Serving well for maxEjectionTime after its last ejection ended halves
        a replica's next back-off (one offence forgiven)."""
        return e[5] > 0 and e[0] != UNHEALTHY and now_ms - e[4] > self.cfg.max_ejection_ms

    def _passive(self, address, e, failed, now_ms):
        why = None
        if self._rejoins(e, now_ms):
            e[0], e[3] = HEALTHY, 0
            why = "ejection over"
        if not failed:
            e[3] = 0
            if self._forgives(e, now_ms):
                e[5] -= 1
                e[4] = now_ms  # the next forgiveness is one more maxEjectionTime away
            return why
        e[3] += 1
        if e[3] >= self.cfg.consecutive_errors and e[0] != UNHEALTHY:
            e[5] += 1
            backoff = min(self.cfg.base_ejection_ms * 2 ** (e[5] - 1), self.cfg.max_ejection_ms)
            e[0], e[4], e[3], e[2] = UNHEALTHY, now_ms + backoff, 0, 0
            return (f"{self.cfg.consecutive_errors} failed requests in a row; "
                    f"ejected for {backoff} ms")
        return why

    # --- active: the elected VM, from the root's tick ----------------------------------------

    def tick(self, root, endpoints, now_ms):
        """Probes every replica when due. Only the lease holder does. Never raises."""
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
            e[1], e[2] = e[1] + 1, 0
            if e[0] != UNHEALTHY and e[1] >= self.cfg.unhealthy_threshold:
                e[0] = UNHEALTHY
                return f"{e[1]} failed health checks in a row"
            return None
        e[1], e[2] = 0, e[2] + 1
        wanted = DEGRADED if degraded else HEALTHY
        if e[0] == UNHEALTHY and (e[2] < self.cfg.healthy_threshold or now_ms < e[4]):
            return None  # not back yet
        if e[0] == wanted:
            return None
        e[0] = wanted
        return "health checks pass" if wanted == HEALTHY else "health check says it is overloaded"

    # --- the shared table ---------------------------------------------------------------------

    def create(self):
        """Creates the shared table if missing. On configure, before any stream."""
        if hostcalls.get_shared_data(self.key)[0] is None:
            hostcalls.set_shared_data(self.key, b"{}")

    def _update(self, address, change):
        """Applies change(entry) -> why-text of a state change, or None, under a
        compare-and-swap; a state change is logged once it is written."""
        for _ in range(CAS_TRIES):
            raw, cas = hostcalls.get_shared_data(self.key)
            table = json.loads(raw) if raw else {}
            entry = table.setdefault(address, [HEALTHY, 0, 0, 0, 0, 0])
            why = change(entry)
            try:
                hostcalls.set_shared_data(self.key, json.dumps(table, separators=(",", ":")),
                                          cas)
            except CasMismatch:
                continue
            if why:
                state = entry[0]
                hostcalls.log(hostcalls.INFO if state == HEALTHY else hostcalls.WARN,
                              f"ai-load-balancer: endpoint {address} is {state}: {why}")
                stats.count(f"ailb.health.{stats.label(address)}.{state}")
            return
