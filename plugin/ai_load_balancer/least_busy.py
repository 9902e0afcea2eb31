"""least_busy: picks a replica from its scraped metrics (scheduling.py's profiles).

Owned by the root context: the scraper runs from the root's tick; choose() runs
per request with what the stream gathered (model, prefix matches).
"""

from dataclasses import replace

from . import replica_metrics, scheduling
from .metrics_scraper import MetricsScraper
from .picking import Pick
from .recent_share import RecentShare


class NoMetrics(Exception):
    """No candidate has fresh metrics: the service's own load balancing decides."""


class LeastBusy:
    def __init__(self, metrics_config, key, vm_id):
        self.cfg = metrics_config
        extra = (metrics_config.target_metric,) if metrics_config.metric_policy in (
            "least", "most") else ()
        reader = None
        if metrics_config.json_field:  # queue_depth: a JSON status endpoint
            field = metrics_config.json_field
            reader = lambda body, now_ms: replica_metrics.from_status_json(body, now_ms, field)
        self.scraper = MetricsScraper(key, vm_id, metrics_config.cluster, metrics_config.path,
                                      metrics_config.interval_ms, metrics_config.timeout_ms,
                                      metrics_config.staleness_ms, extra, reader)
        self.thresholds = scheduling.Thresholds(metrics_config.queue_critical,
                                                metrics_config.queue_lora,
                                                metrics_config.kv_cache_threshold)
        self.recent = RecentShare()

    @property
    def uses_prefix(self):
        """True when the profile scores prefix affinity (the prompt must be hashed)."""
        return self.cfg.metric_policy == "weighted" and any(
            name == "prefix" and weight > 0 for name, weight in self.cfg.weights)

    @staticmethod
    def with_inflight(metrics, inflight, addresses):
        """{address: metrics} for `addresses`, each replica's queue raised by the
        requests this gateway has in flight to it beyond what the metrics show
        running or waiting (sent since the last scrape)."""
        adjusted = {}
        for address in addresses:
            m = metrics.get(address)
            if m is None:
                continue
            unseen = inflight.get(address, 0) - m.running - m.waiting
            adjusted[address] = replace(m, waiting=m.waiting + unseen) if unseen > 0 else m
        return adjusted

    def choose(self, metrics, addresses, model, prompt_blocks, matched, rotation):
        """The Pick for one request. `metrics`: {address: ReplicaMetrics} (fresh
        ones only). Raises NoMetrics, or scheduling.Shed for a sheddable request
        that found no spare capacity."""
        candidates = [scheduling.Candidate(a, metrics[a], matched.get(a, 0))
                      for a in addresses if a in metrics]
        if not candidates:
            raise NoMetrics()
        cfg = self.cfg
        request = scheduling.SchedRequest(
            model, not cfg.critical_models or model in cfg.critical_models, prompt_blocks)
        candidates = self.recent.under(candidates, cfg.rate_limit)
        if cfg.metric_policy == "default":
            kept = scheduling.run_tree(scheduling.DEFAULT_TREE, request, candidates,
                                       self.thresholds)
        elif cfg.metric_policy == "weighted":
            kept = scheduling.weighted(request, candidates, cfg.weights)
        else:
            kept = scheduling.extreme(candidates, cfg.target_metric, cfg.metric_policy == "most")
        chosen = scheduling.pick(kept, rotation)
        self.recent.record(chosen.address)
        return Pick(chosen.address, int(chosen.metrics.waiting), chosen.prefix_blocks,
                    f"least_busy_{cfg.metric_policy}")
