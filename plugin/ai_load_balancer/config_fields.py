"""Every configuration field, once: name, type, default, range, the policies
that read it, and what it means. config.py parses by these tables; the Higress
image's spec.yaml (its openAPIV3Schema) and the docs' checks are generated from
them, so the three cannot drift.

Values are read leniently, as Higress's own plugins read theirs (gjson's
.Int(), .Float(), .Bool()): "6379" is a number, "true" a boolean. Configure
time only.
"""

import math
from dataclasses import dataclass

from .policies import POLICIES

# lb_policy names, by lb_type. least_busy is endpoint_metrics' name in this project.
ENDPOINT_POLICIES = tuple(POLICIES)
CLUSTER_POLICIES = ("cluster_metrics", "cluster_hash")
ALIASES = {"endpoint_metrics": "least_busy", "metrics_based": "least_busy"}
LB_TYPES = {"endpoint": ENDPOINT_POLICIES, "cluster": CLUSTER_POLICIES}

# Who reads what.
PICKING = tuple(n for n, p in POLICIES.items() if not p.headers_only)  # all but header
PIPELINE = tuple(n for n, p in POLICIES.items() if not p.headers_only and not p.sticky)
REDIS = tuple(n for n, p in POLICIES.items() if p.redis_rule or p.sticky)
COUNTED = tuple(n for n, p in POLICIES.items() if "under_limit" in p.profile.filters)
PREFIX = ("prefix_cache", "least_busy")               # the prefix index
SCRAPED = ("least_busy", "queue_depth")
BODY = ("prefix_cache", "least_busy", "consistent_hash")


class ConfigError(ValueError):
    """A configuration the plugin rejects; the message names the field."""


@dataclass(frozen=True, slots=True)
class Field:
    """One lb_config field: its kind, default and the policies that read it."""

    name: str
    kind: str              # int | number | bool | string | strings | object | map | list
    default: object
    policies: tuple        # the lb_policy names that read it
    doc: str
    low: object = None
    high: object = None
    choices: tuple = ()
    unit: str = ""
    higress: str = ""      # how Higress's own ai-load-balancer treats it ("": not a Higress field)


_f = Field  # short, for the tables below


LB_CONFIG_FIELDS = (
    # --- Redis (Higress's fields) ---
    _f("serviceFQDN", "string", "", REDIS, "Redis service as Higress names it "
       "(`redis.static`, `redis.dns`, a Kubernetes FQDN); empty: state kept in the gateway "
       "(shared data of each Envoy process)", higress="required"),
    _f("servicePort", "int", None, REDIS, "Redis port; required with serviceFQDN",
       low=1, high=65535, higress="required"),
    _f("username", "string", "", REDIS, "Redis ACL user", higress="same"),
    _f("password", "string", "", REDIS, "Redis password (never logged)", higress="same"),
    _f("timeout", "int", 3000, REDIS, "Redis call timeout; on timeout the decision is made "
       "on the gateway's own state", low=1, unit="ms",
       higress="same default; Higress hands the request to the service's load balancing"),
    _f("database", "int", 0, REDIS, "Redis database number (`?db=N` on the cluster)", low=0,
       higress="same"),
    _f("redisKeyTTL", "int", 1800, PREFIX, "how long a prompt-prefix entry is remembered",
       low=1, unit="s", higress="same"),
    _f("maxRequestCount", "int", 0, COUNTED, "requests in flight per replica at most (across "
       "gateways with Redis); every replica at the limit: local 429. 0: no limit", low=0,
       higress="global_least_request only; same 429"),
    _f("cleanInterval", "int", 60, ("global_least_request",), "accepted for compatibility: "
       "Higress resets stale counters this often; here a gateway's counts expire with its "
       "lease (leaseSeconds) instead", low=0, unit="min",
       higress="minutes; resets counters of departed hosts"),
    _f("enableDetailLog", "bool", False, PICKING, "one info log line per decision",
       higress="default true: debug lines with every host's count"),
    # --- prefix_cache ---
    _f("decodeCost", "int", 16, ("prefix_cache",), "the cost model's weight of one request in "
       "flight on a replica, in prompt blocks to compute (a replica's cost for a request: the "
       "blocks of its prompt the replica does not hold + the uncached blocks sent there "
       "whose first answer byte has not come + decodeCost per request in flight there; the "
       "lowest wins)",
       low=0, high=1 << 20, unit="blocks"),
    _f("moveCost", "number", None, ("prefix_cache",), "the cost model's weight of the prompt "
       "blocks another replica holds that this one does not: what moving a conversation off "
       "its replica costs beyond this request's prefill (its KV cache duplicated). 0: only "
       "the prefill counts; unset: 1 / (replicas - 1)^2, so a conversation stays home on a "
       "fleet of two or three replicas and goes where the queue is short on a large one",
       low=0.0, high=100.0),
    _f("maxLoadGap", "int", -1, ("prefix_cache",), "optional filter: a prefix match counts "
       "only on a replica with at most this many more requests in flight than the least busy "
       "one. -1: off (the cost model weighs the load)", low=-1),
    _f("minMatchRatio", "number", 0.0, ("prefix_cache",), "optional filter: a prefix match "
       "counts only if it covers this share of the prompt's blocks. 0: off (the cost model "
       "weighs what a match saves)", low=0.0, high=1.0),
    _f("prefixBlockSize", "int", 64, PREFIX, "bytes of prompt per hashed block", low=16,
       high=4096, unit="bytes"),
    _f("maxPrefixBlocks", "int", 256, PREFIX, "blocks hashed per prompt at most", low=1,
       high=4096),
    _f("indexCapacity", "int", 65536, PREFIX + ("endpoint_hash",), "slots of the embedded "
       "prefix index (endpoint_hash: of the embedded session table)", low=16, high=1 << 24),
    _f("kvCacheTokens", "int", 0, ("prefix_cache",), "each replica's KV cache size in tokens: "
       "the prefix index forgets, per replica, the prompt blocks sent there longest ago "
       "once twice that has been computed there since (the replica must have evicted them; "
       "a token is taken as 4 bytes of prompt). 0: each replica's own, from its "
       "`vllm:cache_config_info` (num_gpu_blocks x "
       "block_size), scraped once a minute from `metricsPath` (Higress: from the metrics it "
       "hands over); -1: unbounded (entries end with redisKeyTTL only)", low=-1,
       unit="tokens"),
    _f("maxBodyBytes", "int", 1024 * 1024, BODY, "larger bodies are routed without reading "
       "their prompt", low=1024, unit="bytes"),
    # --- every endpoint policy ---
    _f("endpoints", "strings", [], PICKING, "the replicas as `ip:port` (stock Envoy; Higress "
       "lists the route's hosts itself)"),
    _f("leaseSeconds", "int", 60, PICKING, "a gateway VM that stops renewing its lease this "
       "long has its in-flight counts dropped", low=5, unit="s"),
    _f("failoverEndpoints", "int", 2, PICKING, "fallback replicas pinned after the pick, "
       "tried in order by Envoy's retries (stock Envoy)", low=0, high=8),
    _f("allDownBehavior", "string", "service_lb", PICKING, "no usable replica: `service_lb` "
       "lets the service's load balancing decide, `503` answers locally",
       choices=("service_lb", "503")),
    _f("debugHeader", "bool", False, PICKING, "adds `x-ailb-decision` to responses"),
    _f("healthCheck", "object", {}, PICKING, "active and passive health checking, see "
       "healthCheck fields"),
    _f("metricsCluster", "string", "", PICKING, "Envoy cluster for scrapes and health probes; "
       "empty: the routed one"),
    # --- endpoint_metrics (least_busy) and queue_depth ---
    _f("metric_policy", "string", "default", ("least_busy",), "`default` (GIE filter tree), "
       "`weighted` (scorers), `least` / `most` (by target_metric)",
       choices=("default", "weighted", "least", "most"),
       higress="default/least/most; an unknown value runs default there"),
    _f("target_metric", "string", "vllm:num_requests_waiting", ("least_busy",),
       "metric for `least` / `most`", higress="default empty"),
    _f("rate_limit", "number", 1.0, ("least_busy", "cluster_metrics"), "largest share of "
       "recent picks one replica (or service) may take", low=0.0, high=1.0, higress="same"),
    _f("criticalModels", "strings", [], ("least_busy",), "models whose requests are critical "
       "(never shed); empty: every request is critical"),
    _f("scorers", "list", None, PIPELINE, "replaces the preset's scorers: [{name, weight}] "
       "of the registered scorers (least_request, prefill_cost, queue, kv_cache, prefix, lora, "
       "...); least_busy's `weighted` preset: queue 2, kv_cache 2, prefix 3"),
    _f("filters", "strings", None, PIPELINE, "replaces the preset's filters: names of the "
       "registered filters, applied in order (under_limit, recent_share, "
       "gie_tree, lowest_metric, highest_metric, ...)"),
    _f("picker", "string", "", PIPELINE, "replaces the preset's picker: max_score, random, "
       "round_robin, weighted_round_robin, hash_ring"),
    _f("queueThresholdCritical", "int", 5, ("least_busy",), "queue length under which a "
       "replica counts as lightly loaded", low=0),
    _f("queueingThresholdLoRA", "int", 50, ("least_busy",), "queue length under which LoRA "
       "affinity is preferred", low=0),
    _f("kvCacheThreshold", "number", 0.8, ("least_busy",), "KV-cache usage above which "
       "sheddable requests are refused", low=0.0, high=1.0),
    _f("metricsPath", "string", "/metrics", ("least_busy", "prefix_cache"), "Prometheus path on "
       "each replica (prefix_cache: for kvCacheTokens 0)"),
    _f("statusPath", "string", "/status", ("queue_depth",), "JSON status path on each replica"),
    _f("queueField", "string", "queue_depth", ("queue_depth",), "dotted field of the status "
       "JSON holding the queue length"),
    _f("scrapeInterval", "int", 1000, SCRAPED, "time between scrapes of one replica", low=50,
       unit="ms"),
    _f("scrapeTimeout", "int", 1000, SCRAPED, "scrape timeout", low=10, unit="ms"),
    _f("metricsStaleness", "int", 5000, SCRAPED, "metrics older than this are not used",
       low=100, unit="ms"),
    # --- classic policies ---
    _f("weights", "map", {}, ("weighted_round_robin",), "`{\"ip:port\": weight}`, 1-1000; "
       "unlisted replicas weigh 1"),
    _f("hashKey", "object", {"header": "x-session-id"}, ("consistent_hash",),
       "`{\"header\": name}` or `{\"bodyField\": name}`"),
    _f("hashLoadFactor", "number", 1.25, ("consistent_hash",), "bounded load: a replica takes "
       "at most this times the average in flight", low=1.0, high=100.0),
    _f("header", "string", "x-ailb-endpoint", ("header",), "request header naming the replica"),
    # --- lb_type cluster: cluster_metrics ---
    _f("mode", "string", None, ("cluster_metrics",), "how the service is chosen: `LeastBusy` "
       "(fewest requests in flight from this VM), `LeastTotalLatency` (lowest mean "
       "duration of the last queue_size requests), `LeastFirstTokenLatency` (lowest mean "
       "time to the first response byte); required",
       choices=("LeastBusy", "LeastTotalLatency", "LeastFirstTokenLatency"),
       higress="an unknown or empty mode picks at random there; an error here. "
       "AdaptiveScore (Higress 2.0.1) is not supported"),
    _f("service_list", "strings", [], ("cluster_metrics",), "the candidate services as full "
       "Envoy cluster names (`outbound|80||svc.dns`); required, non-empty",
       higress="same; the older Higress accepted an empty list and then failed every request"),
    _f("cluster_header", "string", "x-higress-target-cluster", CLUSTER_POLICIES,
       "request header the chosen service is written to (the route's `cluster_header`); "
       "any value sent by the client is overwritten", higress="same; empty means the default"),
    _f("queue_size", "int", 100, ("cluster_metrics",), "latency samples kept per service "
       "(only the last queue_size count in the means)", low=1,
       higress="0 means 100 there and a negative value 16; both are errors here"),
    # --- lb_type cluster: cluster_hash ---
    _f("clusters", "list", None, ("cluster_hash",), "the candidate services: "
       "`[{cluster: <Envoy cluster name>, weight: 1..100}]`, weights adding up to 100; a key "
       "takes slot FNV-1a(key) mod 100 of the services laid out by weight in list order; "
       "required", higress="same; the same key goes to the same service there and here"),
    _f("hash_header", "string", "x-mse-consumer", ("cluster_hash", "endpoint_hash"),
       "request header whose value is the key (empty: the default)",
       higress="same. cluster_hash: a request without it is refused with 403 there, here it "
       "takes a random slot (the weights still hold); endpoint_hash: same (the service's "
       "load balancing)"),
    # --- endpoint_hash ---
    _f("stickyTimeout", "int", 60, ("endpoint_hash",), "a session's binding to its replica "
       "ends this long after the session's last request", low=1, unit="min",
       higress="same (PR #3967)"),
)

HEALTH_FIELDS = (
    _f("enabled", "bool", True, PICKING, "active checks (stock Envoy; Higress checks itself)"),
    _f("cluster", "string", "", PICKING, "Envoy cluster for probes; empty: metricsCluster or "
       "the routed one"),
    _f("path", "string", "/health", PICKING, "probe path"),
    _f("interval", "int", 5000, PICKING, "time between probes of one replica", low=50,
       unit="ms"),
    _f("timeout", "int", 1000, PICKING, "probe timeout", low=10, unit="ms"),
    _f("healthyThreshold", "int", 2, PICKING, "good probes in a row to turn healthy", low=1),
    _f("unhealthyThreshold", "int", 3, PICKING, "failed probes in a row to turn unhealthy",
       low=1),
    _f("degradedStatuses", "list", [429], PICKING, "probe statuses meaning up but overloaded"),
    _f("consecutiveErrors", "int", 5, PICKING, "passive: 5xx or connect failures in a row "
       "that eject a replica", low=1),
    _f("baseEjectionTime", "int", 10000, PICKING, "first ejection; doubles on each repeat",
       low=100, unit="ms"),
    _f("maxEjectionTime", "int", 300000, PICKING, "longest ejection", low=100, unit="ms"),
)

BY_NAME = {f.name: f for f in LB_CONFIG_FIELDS}
HEALTH_BY_NAME = {f.name: f for f in HEALTH_FIELDS}


# --- lenient readers (Higress reads values with gjson) ---------------------------------

def as_int(path, value):
    try:
        if isinstance(value, str):
            text = value.strip()
            if text.lstrip("-").isdigit():
                return int(text)
        elif not isinstance(value, bool) and isinstance(value, (int, float)) \
                and value == int(value):
            return int(value)
    except (ValueError, OverflowError):  # "--5", "\u00b2", NaN, infinity
        pass
    raise ConfigError(f"{path}: must be a whole number, not {value!r}")


def as_number(path, value):
    """A finite float (NaN and infinity are no settings)."""
    try:
        if isinstance(value, str) or (
                not isinstance(value, bool) and isinstance(value, (int, float))):
            number = float(value)  # OverflowError: an int beyond any float
            if math.isfinite(number):
                return number
    except (ValueError, OverflowError):
        pass
    raise ConfigError(f"{path}: must be a finite number, not {value!r}")


_TRUE, _FALSE = ("true", "t", "1"), ("false", "f", "0")


def as_bool(path, value):
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, (str, int)) else None
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ConfigError(f"{path}: must be true or false, not {value!r}")


def check_range(path, field, value):
    if (field.low is not None and value < field.low) or (
            field.high is not None and value > field.high):
        low = "" if field.low is None else field.low
        high = "" if field.high is None else field.high
        raise ConfigError(f"{path}: {value} is out of range [{low}, {high}]")
    if field.choices and value not in field.choices:
        raise ConfigError(f"{path}: {value!r} is not one of {', '.join(field.choices)}")
    return value


def read(path, field, value):
    """A scalar field's value, converted leniently and checked."""
    if value is None:
        return None
    if field.kind == "int":
        return check_range(path, field, as_int(path, value))
    if field.kind == "number":
        return check_range(path, field, as_number(path, value))
    if field.kind == "bool":
        return as_bool(path, value)
    if field.kind == "string":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # gjson .String() of a number is its text
        if not isinstance(value, str):  # a password's value is never echoed
            shown = type(value).__name__ if field.name == "password" else repr(value)
            raise ConfigError(f"{path}: must be a string, not {shown}")
        return check_range(path, field, value)
    return value  # structured kinds: config.py checks their shape


_TCHAR = frozenset("abcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~")


def header_name(lb, field):
    """A request-header-name field of lb_config (empty: its default), lower-case.
    `lb` is config._Fields."""
    header = (lb.get(field) or BY_NAME[field].default).lower()
    if not set(header) <= _TCHAR:
        raise ConfigError(f"{lb.path}.{field}: {header!r} is not a request header "
                          f"name (letters, digits and -_. only; no pseudo-headers)")
    return header
