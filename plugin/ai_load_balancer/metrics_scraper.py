"""Scrapes every replica's Prometheus /metrics and shares the result with all
worker VMs of the Envoy process.

Timers fire in the main thread's VM and in every worker VM, so one VM is
elected by a shared-data lease (`<key>:lease` = "<vm_id> <expiry ms>",
compare-and-swap; the holder renews it on each tick, any VM takes it once it
expired: 3 intervals, so the root's tick period must not exceed the interval).
Whichever VM ticks first wins it (in Envoy 1.40 runs, often the main
thread's, which keeps the scraping off the workers). The holder sends one http_call
per replica through the replicas' cluster, with the replica's address in
x-gateway-destination-endpoint so that Envoy's override_host policy sends it
to that replica (the cluster must use that policy, as for pinned requests).
At most one scrape per replica is in flight: a hung replica costs one call
until Envoy's timeout answers it (504), never a pile of them.

The answers of one round are written together into `<key>` when its last
answer arrives (or, if a replica is still silent, at the next tick), with a
compare-and-swap; what another VM wrote meanwhile is merged, the newer entry
per replica winning. One write per round, not per replica, so readers decode
the table once per round:

    {"ip:port": {"metrics": replica_metrics.to_json(...) or null,
                 "failures": consecutive failures,
                 "failed_at": time of the last failure in ms}, ...}

A failed scrape (non-200 -- Envoy answers an unreachable or silent replica
with its own 503/504 -- no answer, an unparsable body) keeps the last good
metrics but records the failure; snapshot() leaves such a replica out until a
scrape succeeds again, and leaves out metrics older than staleness_ms. The
scheduler must treat a replica missing from the snapshot as unknown, not idle.

Any VM calls snapshot() per request: it decodes the shared JSON only when its
compare-and-swap value changed. Nothing here raises out of tick() or an
http_call callback: a failure is logged (rate limited) and the plugin goes on.
Higress instead scrapes the replicas itself and hands the text to the plugin
in proxy_get_upstream_hosts' host info: from_upstream_hosts() reads it.
"""

import json
from dataclasses import dataclass

from proxywasm import hostcalls

from . import replica_metrics, stats
from .leader_lease import LeaderLease
from .log_limiter import LogLimiter
from .shared_record import GaveUp, SharedRecord

OVERRIDE_HEADER = "x-gateway-destination-endpoint"
MAX_BODY_BYTES = 16 * 1024 * 1024  # a larger /metrics body is not parsed (a failure)


@dataclass(slots=True)
class Entry:
    """What is known of one replica: its last good metrics, and its failures."""
    metrics: object      # ReplicaMetrics | None
    failures: int        # consecutive failed scrapes
    failed_at: int       # ms of the last failure (0: none)

    def newest_ms(self):
        return max(self.metrics.scraped_at_ms if self.metrics is not None else 0,
                   self.failed_at)


class MetricsScraper:
    def __init__(self, key, vm_id, cluster, path="/metrics", interval_ms=1000, timeout_ms=1000,
                 staleness_ms=5000, extra_names=(), reader=None):
        self.key = key
        self.vm_id = str(vm_id)
        self.cluster = cluster
        self.path = path
        self.interval_ms = max(1, int(interval_ms))
        self.timeout_ms = max(1, int(timeout_ms))
        self.staleness_ms = int(staleness_ms)
        self.extra_names = tuple(extra_names)
        # body, now_ms -> ReplicaMetrics or None: Prometheus text unless told otherwise.
        self.reader = reader or (lambda body, now_ms: replica_metrics.from_text(
            body, now_ms, self.extra_names))
        self.lease_ms = 3 * self.interval_ms
        self._lease = LeaderLease(key + ":lease", self.vm_id, self.lease_ms)
        self.limiter = LogLimiter()
        self.leader = False
        # Scraping VM: its view of the shared table and what it last wrote.
        self._record = SharedRecord(key, self.limiter)
        self._entries = {}      # address -> Entry
        self._fragments = {}    # address -> '"address":{...}' (JSON of one entry)
        self._written = None    # the bytes this VM last wrote under `key`
        self._dirty = False     # _entries has changes not written yet
        self._endpoints = None  # the endpoint set of the last tick (pruning)
        self._in_flight = {}    # address -> (scrape number, give-up time ms)
        self._next_due_ms = 0
        self._scrapes = 0
        # Readers: the decoded table for one cas, and the fresh subset.
        self._snap_cas = None
        self._usable = {}       # address -> ReplicaMetrics not failed since
        self._fresh = {}
        self._fresh_from = self._fresh_until = None
        self._upstream_cache = {}  # address -> (host info text, ReplicaMetrics | None)

    # --- the scraping side: root context --------------------------------------------

    def tick(self, root, endpoints, now_ms):
        """From the root's on_tick, in every VM: the lease holder scrapes the
        replicas (`endpoints`, "ip:port") that are due. Nothing happens while
        `cluster` is empty (e.g. not learnt from a request yet). Never raises."""
        if not self.cluster:
            return
        try:
            self.leader = self._hold_lease(now_ms)
            if not self.leader:
                self._in_flight.clear()
                return
            self._prune(endpoints)
            self._give_up_lost(now_ms)
            if self._dirty:  # a round some replica did not answer yet
                self._flush()
            if now_ms + self.interval_ms // 10 < self._next_due_ms:
                return
            self._next_due_ms = now_ms + self.interval_ms
            for address in endpoints:
                if address not in self._in_flight:
                    self._scrape(root, address, now_ms)
            if self._dirty and not self._in_flight:  # every call was refused
                self._flush()
        except Exception as exc:  # fail open: no metrics beats a broken tick
            self._log(hostcalls.WARN, "tick", f"metrics scraper tick failed: {exc!r}")

    def _hold_lease(self, now_ms):
        held = self._lease.hold(now_ms)
        if held and self._lease.taken:
            self._log(hostcalls.INFO, "lease", f"metrics scraper: this VM ({self.vm_id}) "
                                               f"scrapes {self.cluster} now")
        return held

    def _prune(self, endpoints):
        """Forgets replicas that left the endpoint set (once per change)."""
        current = frozenset(endpoints)
        if current == self._endpoints:
            return
        self._endpoints = current
        for address in [a for a in self._in_flight if a not in current]:
            del self._in_flight[address]
        for address in [a for a in self._entries if a not in current]:
            del self._entries[address]
            del self._fragments[address]
        self._dirty = True

    def _give_up_lost(self, now_ms):
        """Envoy always answers a call (its timeout makes a 504), but should an
        answer never come, the replica must not stay unscraped for ever."""
        for address, (_, give_up_ms) in list(self._in_flight.items()):
            if now_ms >= give_up_ms:
                del self._in_flight[address]
                self._record_failure(address, "no answer to the scrape", now_ms)

    def _scrape(self, root, address, now_ms):
        self._scrapes += 1
        number = self._scrapes

        def on_response(num_headers, body_size, num_trailers):
            self._on_response(address, number, num_headers, body_size)

        headers = [(":method", "GET"), (":path", self.path), (":authority", address),
                   (OVERRIDE_HEADER, address), ("accept", "text/plain")]
        try:
            root.http_call(self.cluster, headers, b"", self.timeout_ms, on_response)
        except Exception as exc:  # e.g. BadArgument: no such cluster
            self._record_failure(address, f"http_call to {self.cluster} refused: {exc}", now_ms)
            return
        self._in_flight[address] = (number, now_ms + self.timeout_ms + max(self.interval_ms, 1000))

    def _on_response(self, address, number, num_headers, body_size):
        try:
            now_ms = hostcalls.now_ns() // 1_000_000
            if self._in_flight.get(address, (None,))[0] != number:
                return  # given up on, or the replica left: a late answer
            del self._in_flight[address]
            self._take_answer(address, num_headers, body_size, now_ms)
            if not self._in_flight:  # the round is complete
                self._flush()
        except Exception as exc:
            self._log(hostcalls.WARN, "callback",
                      f"metrics scraper: handling the answer of {address} failed: {exc!r}")

    def _take_answer(self, address, num_headers, body_size, now_ms):
        """Records one answer: metrics, or a failure. Callback phase."""
        status = hostcalls.get_header(hostcalls.HTTP_CALL_RESPONSE_HEADERS, ":status") \
            if num_headers else None
        if status != "200":
            why = f"status {status}" if status else "no response (connection reset)"
            self._record_failure(address, why, now_ms)
            return
        if body_size > MAX_BODY_BYTES:
            self._record_failure(address, f"body of {body_size} bytes is too large", now_ms)
            return
        body = hostcalls.get_buffer(hostcalls.HTTP_CALL_RESPONSE_BODY, 0, body_size)
        metrics = self.reader(body, now_ms)
        if metrics is None:
            self._record_failure(address, "no known metrics in the body", now_ms)
            return
        entry = self._entries.get(address)
        if entry is not None and entry.failures:
            self._log(hostcalls.INFO, "recovered " + address, f"metrics scraper: {address} "
                                                               f"answers again")
        self._set_entry(address, Entry(metrics, 0, entry.failed_at if entry is not None else 0))

    def _record_failure(self, address, why, now_ms):
        stats.count("ailb.scrape.failures")
        entry = self._entries.get(address)
        metrics, failures = (entry.metrics, entry.failures) if entry is not None else (None, 0)
        self._log(hostcalls.WARN, "scrape " + address,
                  f"metrics scraper: scraping {address}{self.path} failed ({why}); "
                  f"it is left out of metrics-based picks until a scrape succeeds")
        self._set_entry(address, Entry(metrics, failures + 1, now_ms))

    # --- the shared table -------------------------------------------------------------

    def _flush(self):
        """Writes this VM's table, merging what another VM wrote meanwhile; one
        that gives up stays dirty and is written on the next tick."""
        def change(raw):
            if raw is not None and raw != self._written:
                self._merge(raw)
            encoded = ("{" + ",".join(self._fragments.values()) + "}").encode()
            return encoded, encoded

        try:
            self._written = self._record.update_raw(change, "written on the next tick")
        except GaveUp:
            return
        self._dirty = False

    def _set_entry(self, address, entry):
        if self._endpoints is not None and address not in self._endpoints:
            return  # the replica left the endpoint set
        self._entries[address] = entry
        self._dirty = True
        metrics = entry.metrics
        encoded = {"metrics": None if metrics is None else replica_metrics.to_json(metrics),
                   "failures": entry.failures, "failed_at": entry.failed_at}
        self._fragments[address] = (f"{json.dumps(address)}:"
                                    f"{json.dumps(encoded, separators=(',', ':'))}")

    def _merge(self, raw):
        """Adopts the entries of another VM's write that are newer than ours."""
        for address, entry in _decode(raw).items():
            mine = self._entries.get(address)
            if mine is None or entry.newest_ms() > mine.newest_ms():
                self._set_entry(address, entry)

    # --- the reading side: any VM, per request -------------------------------------------

    def snapshot(self, now_ms):
        """{address: ReplicaMetrics} of the replicas whose last scrape succeeded
        within staleness_ms. Shared: do not modify the dict. Never raises."""
        try:
            raw, cas = hostcalls.get_shared_data(self.key)
        except Exception as exc:
            self._log(hostcalls.WARN, "snapshot", f"metrics scraper: reading {self.key} "
                                                  f"failed: {exc!r}")
            return {}
        if cas != self._snap_cas or raw is None:
            self._snap_cas = cas
            self._usable = {address: entry.metrics for address, entry in _decode(raw).items()
                            if entry.metrics is not None and entry.failures == 0}
            self._fresh_from = None
        if self._fresh_from is None or not self._fresh_from <= now_ms < self._fresh_until:
            self._refresh(now_ms)
        return self._fresh

    def _refresh(self, now_ms):
        """Recomputes the fresh subset; it stays valid until the oldest fresh
        entry goes stale (or time goes back)."""
        limit = now_ms - self.staleness_ms
        fresh = {a: m for a, m in self._usable.items() if m.scraped_at_ms >= limit}
        self._fresh = fresh
        self._fresh_from = now_ms
        oldest = min((m.scraped_at_ms for m in fresh.values()), default=None)
        if oldest is None:  # nothing fresh: only a new write (cas) changes that
            self._fresh_until = float("inf")
        else:
            self._fresh_until = oldest + self.staleness_ms + 1

    def status(self):
        """{address: (ReplicaMetrics | None, consecutive failures, last failure ms)}
        as shared now, fresh or not (for logs, debug headers and tests)."""
        raw, _ = hostcalls.get_shared_data(self.key)
        return {a: (e.metrics, e.failures, e.failed_at) for a, e in _decode(raw).items()}

    # --- Higress: the host scrapes -------------------------------------------------------

    def from_upstream_hosts(self, hosts, now_ms):
        """{address: ReplicaMetrics} from proxy_get_upstream_hosts' [(address,
        info JSON)] whose info carries "metrics" (Prometheus text, scraped by
        Higress). A replica without (parsable) metrics is left out. Each text is
        parsed once. The host keeps them current, so they count as fresh:
        scraped_at_ms is restamped (to now_ms) once it is staleness_ms / 2 old.
        Never raises."""
        result = {}
        cache = self._upstream_cache
        seen = set()
        for host in hosts or ():
            try:
                address, info = host
                seen.add(address)
                cached = cache.get(address)
                if cached is not None and cached[0] == info:
                    metrics = cached[1]
                    if metrics is not None and \
                            now_ms - metrics.scraped_at_ms > self.staleness_ms // 2:
                        metrics = _restamp(metrics, now_ms)
                        cache[address] = (info, metrics)
                else:
                    metrics = self._upstream_metrics(info, now_ms)
                    cache[address] = (info, metrics)
                if metrics is not None:
                    result[address] = metrics
            except Exception as exc:
                self._log(hostcalls.WARN, "upstream hosts",
                          f"metrics scraper: unusable upstream host entry: {exc!r}")
        if len(cache) > len(seen) + 64:
            for address in [a for a in cache if a not in seen]:
                del cache[address]
        return result

    def _upstream_metrics(self, info, now_ms):
        if isinstance(info, (bytes, bytearray)):
            info = bytes(info).decode("utf-8", "replace")
        if not info or '"metrics"' not in info:
            return None
        try:
            text = json.loads(info).get("metrics")
        except (ValueError, AttributeError):
            return None
        if not isinstance(text, str) or not text:
            return None
        return replica_metrics.from_text(text, now_ms, self.extra_names)

    def _log(self, level, reason, message):
        try:
            self.limiter.log(level, reason, message)
        except Exception:
            pass


def _decode(raw):
    """{address: Entry} of a shared table; entries that do not decode are
    dropped, a broken table is empty."""
    if not raw:
        return {}
    try:
        table = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(table, dict):
        return {}
    entries = {}
    for address, entry in table.items():
        try:
            encoded = entry["metrics"]
            metrics = None if encoded is None else replica_metrics.from_json(encoded)
            entries[address] = Entry(metrics, int(entry["failures"]), int(entry["failed_at"]))
        except (TypeError, ValueError, KeyError):
            continue
    return entries


def _restamp(m, now_ms):
    return replica_metrics.ReplicaMetrics(
        m.waiting, m.running, m.kv_cache_usage, m.active_adapters, m.waiting_adapters,
        m.max_adapters, int(now_ms), m.extra)

