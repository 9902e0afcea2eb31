"""least_busy (Higress: endpoint_metrics, metrics_based) and queue_depth: pick
from each replica's scraped metrics, as gateway-api-inference-extension (GIE)
does. The scraper runs from the root's tick; choose() runs per request.

Presets by `metric_policy`:
  default   GIE's filter tree (scheduling.py): critical requests go through
            low-queue -> LoRA affinity / can-load-LoRA -> least queue -> least
            KV cache; sheddable ones only to replicas with spare capacity, else
            shed (a 429).
  weighted  weighted scorers (GIE's default weights: queue 2, kv_cache 2,
            prefix 3), so prefix affinity and load combine in one score.
  least / most  the replica with the smallest / largest `target_metric`.
Only the replicas with fresh metrics are candidates (none: the service's load
balancing decides); every preset first keeps those under their `rate_limit`
share of recent picks.
queue_depth is `least` by the queue a JSON status endpoint reports.
"""

from dataclasses import replace

from .. import replica_metrics, scheduling
from ..metrics_scraper import MetricsScraper
from ..picking import Pick
from ..pipeline import Profile, filter, inverted, scorer
from ..recent_share import RecentShare
from .base import Policy, register

DEFAULT_WEIGHTS = (("queue", 2.0), ("kv_cache", 2.0), ("prefix", 3.0))


class NoMetrics(Exception):
    """No candidate has fresh metrics: the service's own load balancing decides."""


# --- filters --------------------------------------------------------------------------

@filter("recent_share")
def recent_share(inputs, policy, addresses):
    """The replicas under their rate_limit share of this VM's recent picks."""
    return policy.recent.under(addresses, policy.config.metrics.rate_limit)


@filter("gie_tree", needs="metrics")
def gie_tree(inputs, policy, addresses):
    """GIE's default filter tree (scheduling.DEFAULT_TREE); may raise Shed."""
    candidates = [scheduling.Candidate(a, inputs.metrics[a], inputs.matched.get(a, 0))
                  for a in addresses]
    kept = scheduling.run_tree(scheduling.DEFAULT_TREE, policy.sched_request(inputs),
                               candidates, policy.thresholds)
    return [c.address for c in kept]


def _target(inputs, policy, addresses):
    name = policy.config.metrics.target_metric
    return [dict(inputs.metrics[a].extra).get(name, 0.0) for a in addresses]


@filter("lowest_metric", needs="metrics")
def lowest_metric(inputs, policy, addresses):
    values = _target(inputs, policy, addresses)
    return [a for a, v in zip(addresses, values) if v == min(values)]


@filter("highest_metric", needs="metrics")
def highest_metric(inputs, policy, addresses):
    values = _target(inputs, policy, addresses)
    return [a for a, v in zip(addresses, values) if v == max(values)]


# --- scorers --------------------------------------------------------------------------

@scorer("queue", needs="metrics")
def queue_score(inputs, policy, addresses):
    return inverted([inputs.metrics[a].waiting for a in addresses])


@scorer("kv_cache", needs="metrics")
def kv_cache_score(inputs, policy, addresses):
    return [max(0.0, 1.0 - inputs.metrics[a].kv_cache_usage) for a in addresses]


@scorer("prefix")
def prefix_score(inputs, policy, addresses):
    total = len(inputs.hashes)
    return [inputs.matched.get(a, 0) / total if total else 0.0 for a in addresses]


@scorer("lora", needs="metrics")
def lora_score(inputs, policy, addresses):
    request = policy.sched_request(inputs)
    candidates = [scheduling.Candidate(a, inputs.metrics[a]) for a in addresses]
    affine = set(c.address for c in scheduling.lora_affinity(request, candidates, None))
    loadable = set(c.address for c in scheduling.can_load_lora(request, candidates, None))
    return [1.0 if a in affine else 0.5 if a in loadable else 0.0 for a in addresses]


# --- the policies -----------------------------------------------------------------------

_FIRST = ("recent_share",)
PRESETS = {
    "default": Profile(_FIRST + ("gie_tree",), picker="random"),
    "weighted": Profile(_FIRST, DEFAULT_WEIGHTS, "random"),
    "least": Profile(_FIRST + ("lowest_metric",), picker="random"),
    "most": Profile(_FIRST + ("highest_metric",), picker="random"),
}


@register
class LeastBusy(Policy):
    name = "least_busy"
    scraped = True
    counts = True

    def __init__(self, balancer):
        cfg = balancer.config.metrics
        self.profile = PRESETS[cfg.metric_policy]
        super().__init__(balancer)
        extra = (cfg.target_metric,) if cfg.metric_policy in ("least", "most") else ()
        reader = None
        if cfg.json_field:  # queue_depth: a JSON status endpoint
            field = cfg.json_field

            def reader(body, now_ms):
                return replica_metrics.from_status_json(body, now_ms, field)
        self.scraper = MetricsScraper(f"ailb:metrics:{balancer.state_id}", balancer.vm_id,
                                      cfg.cluster, cfg.path, cfg.interval_ms, cfg.timeout_ms,
                                      cfg.staleness_ms, extra, reader)
        self.thresholds = scheduling.Thresholds(cfg.queue_critical, cfg.queue_lora,
                                                cfg.kv_cache_threshold)
        self.recent = RecentShare()
        # The prompt is hashed when a scorer weighs prefix affinity.
        self.hashes_prompt = any(name == "prefix" and weight > 0
                                 for name, weight in self.profile.scorers)

    @property
    def reads_body(self):
        return True  # the model names the LoRA adapter

    def sched_request(self, inputs):
        model = inputs.request.model if inputs.request else ""
        critical = self.config.metrics.critical_models
        return scheduling.SchedRequest(model, not critical or model in critical)

    def read_metrics(self, hosts, now_ms):
        """{address: ReplicaMetrics}: Higress's host metrics, else the scraped ones."""
        return ((hosts and self.scraper.from_upstream_hosts(hosts, now_ms))
                or self.scraper.snapshot(now_ms))

    def choose(self, inputs):
        """Among the replicas with fresh metrics only (none: NoMetrics)."""
        # Requests sent since the last scrape are not in the replicas' metrics
        # yet: without them, every request until the next scrape would herd
        # onto the replica that looked idle. The counts are this gateway's.
        metrics = with_inflight(inputs.metrics, inputs.inflight, inputs.candidates)
        if not metrics:
            raise NoMetrics()
        pick = super().choose(replace(inputs, metrics=metrics, candidates=tuple(
            a for a in inputs.candidates if a in metrics)))
        self.recent.record(pick.address)
        return pick

    def explain(self, inputs, address, kept):
        return Pick(address, int(inputs.metrics[address].waiting), inputs.matched.get(address, 0),
                    f"least_busy_{self.config.metrics.metric_policy}")

    def tick_ms(self):
        return self.config.metrics.interval_ms

    def tick(self, root, endpoints, now_ms):
        if self.scraper.cluster:
            self.scraper.tick(root, endpoints, now_ms)

    def learn_cluster(self, cluster):
        self.scraper.cluster = self.scraper.cluster or cluster


@register
class QueueDepth(LeastBusy):
    name = "queue_depth"

    @property
    def reads_body(self):
        return False


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
