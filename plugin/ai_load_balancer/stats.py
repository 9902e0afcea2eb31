"""The plugin's own metrics, in Envoy's stats (`/stats` shows them as
`wasmcustom.ailb...`, `/stats/prometheus` as `ailb_...`). Defined lazily by name, once per
VM; names carry their labels as dotted parts, e.g.
ailb.decisions.prefix_cache.prefix_match.

Counters: ailb.decisions.<policy>.<reason>, ailb.endpoint.<address>.requests,
ailb.fallbacks.<why> (the service's own LB decided), ailb.prefix.hits /
ailb.prefix.misses, ailb.health.<address>.<state> (transitions),
ailb.redis.errors, ailb.scrape.failures. Histogram: ailb.decision_us.
"""

from proxywasm import hostcalls

_ids = {}


def _metric(metric_type, name):
    metric_id = _ids.get(name)
    if metric_id is None:
        metric_id = hostcalls.define_metric(metric_type, name)
        _ids[name] = metric_id
    return metric_id


def count(name, amount=1):
    """Adds to counter `name`. Any time; a failure to count never fails a request."""
    try:
        hostcalls.increment_metric(_metric(hostcalls.COUNTER, name), amount)
    except Exception:  # stats are best effort
        pass


def record(name, value):
    """Records a histogram sample."""
    try:
        hostcalls.record_metric(_metric(hostcalls.HISTOGRAM, name), int(value))
    except Exception:
        pass


def label(text):
    """A metric-name part from free text (addresses have ':' and '.')."""
    return text.replace(".", "_").replace(":", "_")
