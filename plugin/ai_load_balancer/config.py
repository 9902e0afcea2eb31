"""One plugin configuration: Higress's `lb_type` + `lb_policy` + `lb_config`, validated.

parse_doc() runs at configure time only, on one configuration object (the
global one, or one rule of Higress's `_rules_`: see rules.py). Every problem
raises ConfigError with a message that starts with the field's path, e.g.
"lb_config.servicePort: ...". Field names, defaults and ranges come from
config_fields.py.
"""

import dataclasses
from dataclasses import dataclass

from .cluster_hash import parse_clusters
from .cluster_metrics import parse_services
from .config_fields import (ALIASES, BY_NAME, CLUSTER_POLICIES, HEALTH_BY_NAME, LB_TYPES,
                            SCRAPED, ConfigError, Field, as_number, header_name, read)
from .pipeline import FILTERS, NEEDS, PICKERS, SCORERS, CustomProfile
from .policies import POLICIES

__all__ = ["ConfigError", "LBConfig", "parse_doc"]
_WEIGHT = Field("weight", "int", 1, (), "a replica's weight", low=1, high=1000)
_STATUS = Field("status", "int", 429, (), "an HTTP status", low=100, high=599)


@dataclass(frozen=True, slots=True)
class RedisConfig:
    """Where the shared state lives in Redis (Higress), and how to reach it."""

    cluster: str           # Envoy cluster of the Redis service (Higress naming)
    username: str
    password: str = dataclasses.field(repr=False)  # never logged, nor in a repr
    timeout_ms: int
    database: int


@dataclass(frozen=True, slots=True)
class LBConfig:
    """Defaults are config_fields' (parse_doc fills every field)."""
    policy: str
    lb_type: str = "endpoint"
    header: str = ""                       # policy "header"
    redis: RedisConfig = None              # None: state embedded in the gateway
    endpoints: tuple = ()                  # stock Envoy: the cluster's replicas
    key_ttl_s: int = 0                     # prefix index entries live this long
    max_request_count: int = 0             # 0: no limit; else local 429 at the limit
    max_load_gap: int = 0                  # prefix match only within this many in-flight of
                                           # the least busy (-1: off)
    decode_cost: int = 0                   # cost model: prompt blocks per request in flight
    move_cost: object = None               # cost model: blocks held elsewhere (None: by fleet)
    block_size: int = 0                    # bytes per prefix block
    max_blocks: int = 0                    # prefix blocks hashed at most
    index_capacity: int = 0                # embedded prefix index slots
    kv_cache_tokens: int = 0               # each replica's KV cache (0: scraped, -1: unbounded)
    metrics_path: str = ""                 # Prometheus path on each replica
    max_body_bytes: int = 0                # larger bodies are routed without their prompt
    min_match_ratio: float = 0.0           # a prefix match must cover this share of the prompt
    lease_s: int = 0                       # a silent gateway's in-flight counts expire after this
    debug_header: bool = False             # x-ailb-decision response header
    detail_log: bool = False               # one info line per decision (enableDetailLog)
    metrics: object = None                 # MetricsConfig, for least_busy and queue_depth
    weights: tuple = ()                    # ((address, weight), ...): weighted_round_robin
    hash_key: tuple = ()                   # consistent_hash: ("header"|"body", name)
    hash_load_factor: float = 0.0          # consistent_hash: bounded load factor
    sticky_ttl_s: int = 0                  # endpoint_hash: a binding lives this long unused
    health: object = None                  # HealthConfig
    failover: int = 0                      # fallback endpoints after the primary (Envoy retries)
    all_down: str = ""                     # "service_lb" | "503"
    services: object = None                # lb_type cluster: ClusterMetricsConfig |
                                           # ClusterHashConfig
    profile: object = None                 # pipeline.CustomProfile (filters, scorers, picker)


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """Active and passive health checks of the replicas."""

    active: bool
    cluster: str                           # Envoy cluster for probes ("": the routed one)
    path: str
    interval_ms: int
    timeout_ms: int
    healthy_threshold: int
    unhealthy_threshold: int
    degraded_statuses: tuple               # answers meaning "up but overloaded"
    consecutive_errors: int                # passive: 5xx / connect failures in a row
    base_ejection_ms: int
    max_ejection_ms: int


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """least_busy: which scraped metrics decide, and how."""

    critical_models: frozenset = frozenset()  # empty: every request is critical
    metric_policy: str = "default"
    target_metric: str = ""
    rate_limit: float = 1.0
    queue_critical: int = 0
    queue_lora: int = 0
    kv_cache_threshold: float = 0.0
    path: str = ""
    cluster: str = ""                      # Envoy cluster for scrapes ("": the routed one)
    interval_ms: int = 0
    timeout_ms: int = 0
    staleness_ms: int = 0
    json_field: str = ""                   # queue_depth: dotted field of a JSON status body


def parse_doc(doc, path=""):
    """One configuration object (a dict) -> (LBConfig, warnings); raises
    ConfigError. `path` prefixes field names in messages (a rule's name).
    Warnings name lb_config fields no policy knows (typos) and known ones the
    chosen policy does not read."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}configuration must be a JSON object")
    lb_type = doc.get("lb_type") or "endpoint"
    if not isinstance(lb_type, str) or lb_type not in LB_TYPES:
        raise ConfigError(f"{path}lb_type: {lb_type!r} is not one of {', '.join(LB_TYPES)}")
    policy = doc.get("lb_policy")
    if not policy:
        raise ConfigError(f"{path}lb_policy: required (one of {', '.join(LB_TYPES[lb_type])})")
    if not isinstance(policy, str):
        raise ConfigError(f"{path}lb_policy: must be a policy name, not {policy!r}")
    policy = ALIASES.get(policy, policy)
    if policy not in LB_TYPES[lb_type]:
        other = "cluster" if lb_type == "endpoint" else "endpoint"
        hint = f" (it needs lb_type: {other})" if policy in LB_TYPES[other] else ""
        raise ConfigError(f"{path}lb_policy: {policy!r} is not an lb_type {lb_type} policy"
                          f"{hint}; known: {', '.join(LB_TYPES[lb_type])}")
    fields = doc.get("lb_config", {})
    if not isinstance(fields, dict):
        raise ConfigError(f"{path}lb_config: must be an object")
    lb = _Fields(fields, policy, f"{path}lb_config")
    if policy in CLUSTER_POLICIES:
        parse = parse_services if policy == "cluster_metrics" else parse_clusters
        config = LBConfig(policy, lb_type, services=parse(lb))
        return config, lb.unknown()
    if policy == "header":
        return LBConfig(policy, header=_non_empty(lb, "header").lower()), lb.unknown()
    lb.get("cleanInterval")  # Higress's counter reset: leases make it unneeded
    config = LBConfig(
        policy,
        redis=_redis(lb),
        endpoints=tuple(_endpoints(lb)),
        key_ttl_s=lb.get("redisKeyTTL"),
        max_request_count=lb.get("maxRequestCount"),
        max_load_gap=lb.get("maxLoadGap"),
        decode_cost=lb.get("decodeCost"),
        move_cost=lb.get("moveCost"),
        block_size=lb.get("prefixBlockSize"),
        max_blocks=lb.get("maxPrefixBlocks"),
        index_capacity=lb.get("indexCapacity"),
        kv_cache_tokens=lb.get("kvCacheTokens"),
        metrics_path=lb.get("metricsPath"),
        max_body_bytes=lb.get("maxBodyBytes"),
        min_match_ratio=lb.get("minMatchRatio"),
        lease_s=lb.get("leaseSeconds"),
        debug_header=lb.get("debugHeader"),
        detail_log=lb.get("enableDetailLog"),
        metrics=_metrics(lb, policy) if policy in SCRAPED else None,
        weights=_endpoint_weights(lb),
        hash_key=_hash_key(lb),
        hash_load_factor=lb.get("hashLoadFactor"),
        sticky_ttl_s=lb.get("stickyTimeout") * 60,
        health=_health(lb),
        failover=lb.get("failoverEndpoints"),
        all_down=lb.get("allDownBehavior"),
        profile=_profile(lb),
    )
    return config, lb.unknown()


def _endpoint_weights(lb):
    weights = lb.get("weights")
    if not isinstance(weights, dict):
        raise ConfigError(f"{lb.path}.weights: must map \"ip:port\" to a whole number 1..1000")
    out = []
    for address, weight in weights.items():
        try:
            weight = read(f"{lb.path}.weights", _WEIGHT, weight)
        except ConfigError:
            raise ConfigError(f"{lb.path}.weights: must map \"ip:port\" to a whole number "
                              f"1..1000") from None
        out.append((address, weight))
    return tuple(sorted(out))


def _hash_key(lb):
    if lb.policy == "endpoint_hash":
        return ("header", header_name(lb, "hash_header"))
    key = lb.get("hashKey")
    if not isinstance(key, dict) or len(key) != 1 \
            or next(iter(key)) not in ("header", "bodyField") \
            or not isinstance(next(iter(key.values())), str) or not next(iter(key.values())):
        raise ConfigError(f"{lb.path}.hashKey: must be {{\"header\": name}} or "
                          f"{{\"bodyField\": name}}")
    kind, name = next(iter(key.items()))
    return ("header", name.lower()) if kind == "header" else ("body", name)


def _health(lb):
    fields = lb.get("healthCheck")
    if not isinstance(fields, dict):
        raise ConfigError(f"{lb.path}.healthCheck: must be an object")
    hc = _Fields(fields, lb.policy, f"{lb.path}.healthCheck", HEALTH_BY_NAME)
    statuses = hc.get("degradedStatuses")
    if not isinstance(statuses, list):
        raise ConfigError(f"{hc.path}.degradedStatuses: must be a list of status codes")
    statuses = [read(f"{hc.path}.degradedStatuses", _STATUS, s) for s in statuses]
    health = HealthConfig(
        active=hc.get("enabled"),
        cluster=hc.get("cluster") or lb.get("metricsCluster"),
        path=_non_empty(hc, "path"),
        interval_ms=hc.get("interval"),
        timeout_ms=hc.get("timeout"),
        healthy_threshold=hc.get("healthyThreshold"),
        unhealthy_threshold=hc.get("unhealthyThreshold"),
        degraded_statuses=tuple(statuses),
        consecutive_errors=hc.get("consecutiveErrors"),
        base_ejection_ms=hc.get("baseEjectionTime"),
        max_ejection_ms=hc.get("maxEjectionTime"),
    )
    lb.warnings.extend(hc.unknown())
    return health


def _non_empty(lb, name):
    value = lb.get(name)
    if not value:
        raise ConfigError(f"{lb.path}.{name}: must be a non-empty string")
    return value


def _metrics(lb, policy):
    scrape = {"cluster": lb.get("metricsCluster"), "interval_ms": lb.get("scrapeInterval"),
              "timeout_ms": lb.get("scrapeTimeout"), "staleness_ms": lb.get("metricsStaleness")}
    if policy == "queue_depth":
        # A replica's JSON status endpoint instead of Prometheus metrics.
        return MetricsConfig(metric_policy="least", target_metric="waiting",
                             path=_non_empty(lb, "statusPath"),
                             json_field=_non_empty(lb, "queueField"), **scrape)
    models = lb.get("criticalModels")
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise ConfigError(f"{lb.path}.criticalModels: must be a list of model names")
    return MetricsConfig(
        critical_models=frozenset(models),
        metric_policy=lb.get("metric_policy"),
        target_metric=_non_empty(lb, "target_metric"),
        rate_limit=lb.get("rate_limit"),
        queue_critical=lb.get("queueThresholdCritical"),
        queue_lora=lb.get("queueingThresholdLoRA"),
        kv_cache_threshold=lb.get("kvCacheThreshold"),
        path=_non_empty(lb, "metricsPath"),
        **scrape,
    )


def _profile(lb):
    """lb_config's replacements for the policy's preset profile, or None."""
    filters, scorers, picker = lb.get("filters"), lb.get("scorers"), lb.get("picker")
    if filters is None and scorers is None and not picker:
        return None
    if filters is not None and (not isinstance(filters, list)
                                or not all(isinstance(n, str) for n in filters)):
        raise ConfigError(f"{lb.path}.filters: must be a list of filter names")
    for name in filters or ():
        if name not in FILTERS:
            raise ConfigError(f"{lb.path}.filters: unknown filter {name!r} "
                              f"(known: {', '.join(sorted(FILTERS))})")
    if picker and picker not in PICKERS:
        raise ConfigError(f"{lb.path}.picker: unknown picker {picker!r} "
                          f"(known: {', '.join(sorted(PICKERS))})")
    weights = None if scorers is None else _weights(lb, scorers)
    policy = POLICIES[lb.policy]
    for name in [*(filters or ()), *(name for name, _ in weights or ()), picker]:
        need = NEEDS.get(name)
        if (need == "metrics" and not policy.scraped) or (need == "key" and not policy.keyed):
            raise ConfigError(f"{lb.path}: {name} reads {need}, which lb_policy {lb.policy} "
                              f"does not gather")
    return CustomProfile(None if filters is None else tuple(filters), weights, picker or None)


def _weights(lb, scorers):
    if not isinstance(scorers, list) or not scorers:
        raise ConfigError(f"{lb.path}.scorers: must be a non-empty list of {{name, weight}}")
    weights = []
    for entry in scorers:
        name = entry.get("name") if isinstance(entry, dict) else None
        weight = entry.get("weight", 1) if isinstance(entry, dict) else None
        if not isinstance(name, str) or name not in SCORERS:
            raise ConfigError(f"{lb.path}.scorers: unknown scorer {name!r} "
                              f"(known: {', '.join(sorted(SCORERS))})")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise ConfigError(f"{lb.path}.scorers: weight of {name} must be a number >= 0")
        weights.append((name, as_number(f"{lb.path}.scorers", weight)))
    return tuple(weights)


def _redis(lb):
    fqdn = lb.get("serviceFQDN")
    if not fqdn:
        return None
    port = lb.get("servicePort")
    if port is None:
        raise ConfigError(f"{lb.path}.servicePort: required with serviceFQDN")
    return RedisConfig(cluster=f"outbound|{port}||{fqdn}", username=lb.get("username"),
                       password=lb.get("password"), timeout_ms=lb.get("timeout"),
                       database=lb.get("database"))


def _endpoints(lb):
    endpoints = lb.get("endpoints")
    if not isinstance(endpoints, list) or not all(isinstance(e, str) for e in endpoints):
        raise ConfigError(f"{lb.path}.endpoints: must be a list of \"ip:port\" strings")
    for endpoint in endpoints:
        host, sep, port = endpoint.rpartition(":")
        if not sep or not host or not port.isdecimal() or not 0 < int(port) < 65536:
            raise ConfigError(f"{lb.path}.endpoints: {endpoint!r} is not \"ip:port\"")
    return sorted(set(endpoints))


class _Fields:
    """Reads lb_config (or an object inside it) by the field table, with errors
    naming the field; remembers what was read for the warnings."""

    def __init__(self, fields, policy, path, table=BY_NAME):
        self._fields = fields
        self._table = table
        self._read = set()
        self.policy = policy
        self.path = path
        self.warnings = []  # from nested objects

    def get(self, name):
        """The field's value (its default when absent, or when this policy does
        not read it), converted and checked."""
        field = self._table[name]
        if self.policy not in field.policies:
            return field.default
        self._read.add(name)
        value = self._fields.get(name)
        return field.default if value is None else read(f"{self.path}.{name}", field, value)

    def unknown(self):
        """Warnings: fields no policy knows, and known ones this policy ignores."""
        out = list(self.warnings)
        for name in sorted(set(self._fields) - self._read):
            field = self._table.get(name)
            if field is None:
                out.append(f"{self.path}.{name}: unknown field, ignored")
            elif self.policy not in field.policies:
                out.append(f"{self.path}.{name}: not used by lb_policy {self.policy} "
                           f"(it is read by {', '.join(field.policies)}), ignored")
        return out
