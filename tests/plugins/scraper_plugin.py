"""A test plugin that runs the metrics scraper, so the test host can drive it
natively and in wasm.

Configuration (JSON): {"cluster": "<replicas' cluster>", "endpoints": ["ip:port", ...],
  "key": "scrape", "path": "/metrics", "interval_ms": 1000, "timeout_ms": 1000,
  "staleness_ms": 5000, "extra": [], "tick_ms": <defaults to interval_ms>}

on_tick runs MetricsScraper.tick(). A request names an operation in its
`x-scraper-op` header and gets the answer as a local 200 response (JSON body):

  snapshot   {address: replica_metrics.to_json(m)} of snapshot(now), called
             `x-repeat` times (for timing; with `x-uncached: 1` each call
             decodes the shared table as after a new write)
  status     {address: [to_json(m) or null, failures, failed_at_ms]}
  leader     {"leader": bool, "vm_id": str, "in_flight": [address, ...]}
  upstream   from_upstream_hosts(proxy_get_upstream_hosts(), now) (Higress)
  endpoints  sets the endpoints later ticks scrape to the comma-separated
             `x-endpoints` header; answers them
  metrics    the request body (a /metrics text) through replica_metrics.from_text,
             `x-repeat` times (for timing); answers to_json of the result or null
  prometheus the body through prometheus.parse (wanted: the comma-separated
             `x-wanted` header, or everything), `x-repeat` times; answers
             {name: [[labels, value], ...]}
"""

import json
import os

from proxywasm import CONTINUE, PAUSE, HttpContext, RootContext, hostcalls, prometheus, \
    set_root_context

from ai_load_balancer import replica_metrics
from ai_load_balancer.metrics_scraper import MetricsScraper


def now_ms():
    return hostcalls.now_ns() // 1_000_000


class ScraperRoot(RootContext):
    def on_configure(self, configuration):
        config = json.loads(configuration or b"{}")
        self.endpoints = list(config.get("endpoints", []))
        self.vm_id = os.urandom(6).hex()
        interval_ms = config.get("interval_ms", 1000)
        self.scraper = MetricsScraper(
            config.get("key", "scrape"), self.vm_id, config.get("cluster", "replicas"),
            path=config.get("path", "/metrics"), interval_ms=interval_ms,
            timeout_ms=config.get("timeout_ms", 1000),
            staleness_ms=config.get("staleness_ms", 5000),
            extra_names=tuple(config.get("extra", ())))
        hostcalls.set_tick_period_ms(config.get("tick_ms", interval_ms))
        return True

    def on_tick(self):
        self.scraper.tick(self, self.endpoints, now_ms())

    def new_http_context(self, context_id):
        return ScraperStream(context_id, self)


def _encode(table):
    return {a: replica_metrics.to_json(m) for a, m in sorted(table.items())}


class ScraperStream(HttpContext):
    op = ""

    def header(self, name, default=None):
        value = hostcalls.get_header(hostcalls.REQUEST_HEADERS, name)
        return default if value is None else value

    def answer(self, doc):
        self.send_local_response(200, json.dumps(doc, sort_keys=True).encode(),
                                 [("content-type", "application/json")])
        return PAUSE

    def on_request_headers(self, num_headers, end_of_stream):
        self.op = self.header("x-scraper-op", "")
        self.repeat = int(self.header("x-repeat", "1"))
        self.wanted = self.header("x-wanted")
        scraper = self.root.scraper
        if self.op == "snapshot":
            now, uncached = now_ms(), self.header("x-uncached") == "1"
            for _ in range(self.repeat):
                if uncached:
                    scraper._snap_cas = None
                table = scraper.snapshot(now)
            return self.answer(_encode(table))
        if self.op == "status":
            return self.answer({a: [None if m is None else replica_metrics.to_json(m), f, t]
                                for a, (m, f, t) in scraper.status().items()})
        if self.op == "leader":
            return self.answer({"leader": scraper.leader, "vm_id": self.root.vm_id,
                                "in_flight": sorted(scraper._in_flight)})
        if self.op == "endpoints":
            value = self.header("x-endpoints", "")
            self.root.endpoints = [e for e in value.split(",") if e]
            return self.answer(self.root.endpoints)
        if self.op == "upstream":
            hosts = hostcalls.get_upstream_hosts()
            return self.answer(_encode(scraper.from_upstream_hosts(hosts, now_ms())))
        if self.op in ("metrics", "prometheus"):
            return CONTINUE if end_of_stream else PAUSE
        return CONTINUE

    def on_request_body(self, body_size, end_of_stream):
        if self.op not in ("metrics", "prometheus"):
            return CONTINUE
        if not end_of_stream:
            return PAUSE
        text = hostcalls.get_buffer(hostcalls.REQUEST_BODY, 0, body_size)
        if self.op == "metrics":
            extra = tuple(self.wanted.split(",")) if self.wanted else ()
            for _ in range(self.repeat):
                m = replica_metrics.from_text(text, 1000, extra)
            return self.answer(None if m is None else replica_metrics.to_json(m))
        wanted = set(self.wanted.split(",")) if self.wanted is not None else None
        for _ in range(self.repeat):
            found = prometheus.parse(text, wanted)
        return self.answer({n: [[labels, v] for labels, v in s] for n, s in found.items()})


set_root_context(ScraperRoot)
