"""The plugin configuration: Higress's `lb_policy` + `lb_config`, validated.

parse() runs at configure time only. Every problem raises ConfigError with a
message that starts with the field's path, e.g. "lb_config.servicePort: ...".
"""

import json
from dataclasses import dataclass

from . import simple_policies
from .scheduling import DEFAULT_WEIGHTS, SCORERS

CLASSIC_POLICIES = tuple(simple_policies.POLICIES) + ("least_connections", "consistent_hash",
                                                      "queue_depth")
POLICIES = ("header", "global_least_request", "prefix_cache", "least_busy") + CLASSIC_POLICIES
# Higress's newer names for least_busy.
ALIASES = {"endpoint_metrics": "least_busy", "metrics_based": "least_busy"}
METRIC_POLICIES = ("default", "weighted", "least", "most")


class ConfigError(ValueError):
    """A configuration the plugin rejects; the message names the field."""


@dataclass(frozen=True, slots=True)
class RedisConfig:
    cluster: str           # Envoy cluster of the Redis service (Higress naming)
    username: str
    password: str          # never logged
    timeout_ms: int
    database: int


@dataclass(frozen=True, slots=True)
class LBConfig:
    policy: str
    header: str = "x-ailb-endpoint"        # policy "header"
    redis: RedisConfig = None              # None: state embedded in the gateway
    endpoints: tuple = ()                  # stock Envoy: the cluster's replicas
    key_ttl_s: int = 1800                  # prefix index entries live this long
    max_request_count: int = 0             # 0: no limit; else local 429 at the limit
    max_load_gap: int = 4                  # prefix match only within this many in-flight of the least busy
    block_size: int = 64                   # bytes per prefix block
    max_blocks: int = 256                  # prefix blocks hashed at most
    index_capacity: int = 65536            # embedded prefix index slots
    max_body_bytes: int = 1024 * 1024      # larger bodies are routed without their prompt
    min_match_ratio: float = 0.5           # a prefix match must cover this share of the prompt
    lease_s: int = 60                      # a silent gateway's in-flight counts expire after this
    debug_header: bool = False             # x-ailb-decision response header
    detail_log: bool = False               # one info line per decision (enableDetailLog)
    metrics: object = None                 # MetricsConfig, for least_busy and queue_depth
    weights: tuple = ()                    # ((address, weight), ...): weighted_round_robin
    hash_key: tuple = ("header", "x-session-id")  # consistent_hash: ("header"|"body", name)
    hash_load_factor: float = 1.25         # consistent_hash: bounded load factor
    health: object = None                  # HealthConfig
    failover: int = 2                      # fallback endpoints after the primary (Envoy retries)
    all_down: str = "service_lb"           # "service_lb" | "503"


@dataclass(frozen=True, slots=True)
class HealthConfig:
    active: bool = True                    # probe each replica (stock Envoy)
    cluster: str = ""                      # Envoy cluster for probes ("": the routed one)
    path: str = "/health"
    interval_ms: int = 5000
    timeout_ms: int = 1000
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3
    degraded_statuses: tuple = (429,)      # answers meaning "up but overloaded"
    consecutive_errors: int = 5            # passive: 5xx / connect failures in a row
    base_ejection_ms: int = 10000
    max_ejection_ms: int = 300000


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    critical_models: frozenset = frozenset()  # empty: every request is critical
    metric_policy: str = "default"
    target_metric: str = "vllm:num_requests_waiting"
    rate_limit: float = 1.0
    weights: tuple = DEFAULT_WEIGHTS
    queue_critical: int = 5
    queue_lora: int = 50
    kv_cache_threshold: float = 0.8
    path: str = "/metrics"
    cluster: str = ""                      # Envoy cluster for scrapes ("": the routed one)
    interval_ms: int = 1000
    timeout_ms: int = 1000
    staleness_ms: int = 5000
    json_field: str = ""                   # queue_depth: dotted field of a JSON status body


def parse(raw):
    """Plugin configuration bytes -> (LBConfig, warnings); raises ConfigError.
    Warnings name lb_config fields the plugin does not know (typos)."""
    try:
        doc = json.loads(raw or b"{}")
    except ValueError as exc:
        raise ConfigError(f"configuration is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError("configuration must be a JSON object")
    policy = doc.get("lb_policy", "header")
    policy = ALIASES.get(policy, policy)
    if policy not in POLICIES:
        raise ConfigError(f"lb_policy: unknown policy {policy!r} (known: {', '.join(POLICIES)})")
    lb_type = doc.get("lb_type", "endpoint")
    if lb_type != "endpoint":
        raise ConfigError(f"lb_type: only 'endpoint' is supported, not {lb_type!r}")
    fields = doc.get("lb_config", {})
    if not isinstance(fields, dict):
        raise ConfigError("lb_config: must be an object")
    lb = _Fields(fields)
    header = lb.string("header", "x-ailb-endpoint", empty=False).lower()
    if policy == "header":
        return LBConfig(policy, header=header), lb.unknown()
    lb.number("cleanInterval", 0)  # Higress's counter reset: leases make it unneeded
    config = LBConfig(
        policy,
        redis=_redis(lb),
        endpoints=tuple(_endpoints(lb)),
        key_ttl_s=lb.number("redisKeyTTL", 1800, low=1),
        max_request_count=lb.number("maxRequestCount", 0, low=0),
        max_load_gap=lb.number("maxLoadGap", 4, low=0),
        block_size=lb.number("prefixBlockSize", 64, low=16, high=4096),
        max_blocks=lb.number("maxPrefixBlocks", 256, low=1, high=4096),
        index_capacity=lb.number("indexCapacity", 65536, low=16, high=1 << 24),
        max_body_bytes=lb.number("maxBodyBytes", 1024 * 1024, low=1024),
        min_match_ratio=lb.fraction("minMatchRatio", 0.5, low=0.0, high=1.0),
        lease_s=lb.number("leaseSeconds", 60, low=5),
        debug_header=lb.boolean("debugHeader", False),
        detail_log=lb.boolean("enableDetailLog", False),
        metrics=_metrics(lb, policy) if policy in ("least_busy", "queue_depth") else None,
        weights=_endpoint_weights(lb),
        hash_key=_hash_key(lb) if policy == "consistent_hash" else ("header", "x-session-id"),
        hash_load_factor=lb.fraction("hashLoadFactor", 1.25, low=1.0, high=100.0),
        health=_health(lb),
        failover=lb.number("failoverEndpoints", 2, low=0, high=8),
        all_down=_choice(lb, "allDownBehavior", "service_lb", ("service_lb", "503")),
    )
    return config, lb.unknown()


def _choice(lb, name, default, choices):
    value = lb.string(name, default)
    if value not in choices:
        raise ConfigError(f"lb_config.{name}: {value!r} is not one of {', '.join(choices)}")
    return value


def _endpoint_weights(lb):
    weights = lb.value("weights", {})
    if not isinstance(weights, dict) or not all(
            isinstance(w, int) and not isinstance(w, bool) and 0 < w <= 1000
            for w in weights.values()):
        raise ConfigError("lb_config.weights: must map \"ip:port\" to a whole number 1..1000")
    return tuple(sorted(weights.items()))


def _hash_key(lb):
    key = lb.value("hashKey", {"header": "x-session-id"})
    if not isinstance(key, dict) or len(key) != 1 or next(iter(key)) not in ("header", "bodyField") \
            or not isinstance(next(iter(key.values())), str) or not next(iter(key.values())):
        raise ConfigError("lb_config.hashKey: must be {\"header\": name} or {\"bodyField\": name}")
    kind, name = next(iter(key.items()))
    return ("header", name.lower()) if kind == "header" else ("body", name)


def _health(lb):
    fields = lb.value("healthCheck", {})
    if not isinstance(fields, dict):
        raise ConfigError("lb_config.healthCheck: must be an object")
    hc = _Fields(fields, "lb_config.healthCheck")
    statuses = hc.value("degradedStatuses", [429])
    if not isinstance(statuses, list) or not all(isinstance(c, int) for c in statuses):
        raise ConfigError("lb_config.healthCheck.degradedStatuses: must be a list of status codes")
    health = HealthConfig(
        active=hc.boolean("enabled", True),
        cluster=hc.string("cluster", lb.value("metricsCluster", "") or ""),
        path=hc.string("path", "/health", empty=False),
        interval_ms=hc.number("interval", 5000, low=50),
        timeout_ms=hc.number("timeout", 1000, low=10),
        healthy_threshold=hc.number("healthyThreshold", 2, low=1),
        unhealthy_threshold=hc.number("unhealthyThreshold", 3, low=1),
        degraded_statuses=tuple(statuses),
        consecutive_errors=hc.number("consecutiveErrors", 5, low=1),
        base_ejection_ms=hc.number("baseEjectionTime", 10000, low=100),
        max_ejection_ms=hc.number("maxEjectionTime", 300000, low=100),
    )
    lb.warnings.extend(hc.unknown())
    return health


def _metrics(lb, policy):
    if policy == "queue_depth":
        # A replica's JSON status endpoint instead of Prometheus metrics.
        return MetricsConfig(
            metric_policy="least", target_metric="waiting",
            path=lb.string("statusPath", "/status", empty=False),
            json_field=lb.string("queueField", "queue_depth", empty=False),
            cluster=lb.string("metricsCluster", ""),
            interval_ms=lb.number("scrapeInterval", 1000, low=50),
            timeout_ms=lb.number("scrapeTimeout", 1000, low=10),
            staleness_ms=lb.number("metricsStaleness", 5000, low=100))
    models = lb.value("criticalModels", [])
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise ConfigError("lb_config.criticalModels: must be a list of model names")
    metric_policy = lb.string("metric_policy", "default")
    if metric_policy not in METRIC_POLICIES:
        raise ConfigError(f"lb_config.metric_policy: {metric_policy!r} is not one of "
                          f"{', '.join(METRIC_POLICIES)}")
    return MetricsConfig(
        critical_models=frozenset(models),
        metric_policy=metric_policy,
        target_metric=lb.string("target_metric", "vllm:num_requests_waiting", empty=False),
        rate_limit=lb.fraction("rate_limit", 1.0, low=0.0, high=1.0),
        weights=_weights(lb),
        queue_critical=lb.number("queueThresholdCritical", 5, low=0),
        queue_lora=lb.number("queueingThresholdLoRA", 50, low=0),
        kv_cache_threshold=lb.fraction("kvCacheThreshold", 0.8, low=0.0, high=1.0),
        path=lb.string("metricsPath", "/metrics", empty=False),
        cluster=lb.string("metricsCluster", ""),
        interval_ms=lb.number("scrapeInterval", 1000, low=50),
        timeout_ms=lb.number("scrapeTimeout", 1000, low=10),
        staleness_ms=lb.number("metricsStaleness", 5000, low=100),
    )


def _weights(lb):
    scorers = lb.value("scorers", None)
    if scorers is None:
        return DEFAULT_WEIGHTS
    if not isinstance(scorers, list) or not scorers:
        raise ConfigError("lb_config.scorers: must be a non-empty list of {name, weight}")
    weights = []
    for entry in scorers:
        name = entry.get("name") if isinstance(entry, dict) else None
        weight = entry.get("weight", 1) if isinstance(entry, dict) else None
        if name not in SCORERS:
            raise ConfigError(f"lb_config.scorers: unknown scorer {name!r} "
                              f"(known: {', '.join(sorted(SCORERS))})")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise ConfigError(f"lb_config.scorers: weight of {name} must be a number >= 0")
        weights.append((name, float(weight)))
    return tuple(weights)


def _redis(lb):
    fqdn = lb.string("serviceFQDN", "")
    if not fqdn:
        return None
    port = lb.number("servicePort", None, low=1, high=65535)
    if port is None:
        raise ConfigError("lb_config.servicePort: required with serviceFQDN")
    return RedisConfig(cluster=f"outbound|{port}||{fqdn}",
                       username=lb.string("username", ""),
                       password=lb.string("password", ""),
                       timeout_ms=lb.number("timeout", 3000, low=1),
                       database=lb.number("database", 0, low=0))


def _endpoints(lb):
    endpoints = lb.value("endpoints", [])
    if not isinstance(endpoints, list) or not all(isinstance(e, str) for e in endpoints):
        raise ConfigError("lb_config.endpoints: must be a list of \"ip:port\" strings")
    for endpoint in endpoints:
        host, sep, port = endpoint.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"lb_config.endpoints: {endpoint!r} is not \"ip:port\"")
    return sorted(set(endpoints))


class _Fields:
    """Typed access to lb_config (or an object inside it) with errors naming the field."""

    def __init__(self, fields, path="lb_config"):
        self._fields = fields
        self._read = set()
        self.path = path
        self.warnings = []  # from nested objects

    def unknown(self):
        """Warnings for the fields nothing read."""
        return self.warnings + [f"{self.path}.{name}: unknown field, ignored"
                                for name in sorted(set(self._fields) - self._read)]

    def value(self, name, default):
        self._read.add(name)
        return self._fields.get(name, default)

    def string(self, name, default, empty=True):
        value = self.value(name, default)
        if not isinstance(value, str) or (not empty and not value):
            raise ConfigError(f"{self.path}.{name}: must be a {'' if empty else 'non-empty '}string")
        return value

    def number(self, name, default, low=None, high=None):
        value = self.value(name, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise ConfigError(f"{self.path}.{name}: must be a whole number, not {value!r}")
        value = int(value)
        if (low is not None and value < low) or (high is not None and value > high):
            raise ConfigError(f"{self.path}.{name}: {value} is out of range "
                              f"[{low if low is not None else ''}, {high if high is not None else ''}]")
        return value

    def fraction(self, name, default, low, high):
        value = self.value(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ConfigError(f"{self.path}.{name}: must be a number in [{low}, {high}]")
        return float(value)

    def boolean(self, name, default):
        value = self.value(name, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self.path}.{name}: must be true or false")
        return value
