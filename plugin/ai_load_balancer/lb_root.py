"""The root context: one per configuration in each VM. Owns what outlives a
stream: the configuration, the state stores, the scraper, the health checker,
the timers; and answers which replicas a request may go to now."""

import hashlib
import os

from proxywasm import RootContext, hostcalls

from . import config as lb_config
from . import endpoints, redis_state
from .consistent_hash import HashRing
from .embedded_inflight import EmbeddedInflight
from .embedded_prefix_index import EmbeddedPrefixIndex
from .health import DEGRADED, HEALTHY, UNHEALTHY, Health
from .lb_filter import LoadBalancerStream
from .least_busy import LeastBusy
from .log_limiter import LogLimiter
from .weighted_round_robin import SmoothWeightedRoundRobin

METRICS_POLICIES = ("least_busy", "queue_depth")


class LoadBalancerRoot(RootContext):
    http_context = LoadBalancerStream
    config = None

    def on_configure(self, configuration):
        try:
            self.config, warnings = lb_config.parse(configuration)
        except lb_config.ConfigError as exc:
            hostcalls.log(hostcalls.ERROR, f"ai-load-balancer: invalid configuration: {exc}")
            return False
        for warning in warnings:
            hostcalls.log(hostcalls.WARN, f"ai-load-balancer: configuration: {warning}")
        cfg = self.config
        self.limiter = LogLimiter()
        self.vm_id = os.urandom(6).hex()
        self.waiting = {}             # context id -> stream paused on a Redis reply
        self.redis_clusters = set()   # clusters this VM counted requests in (lease renewal)
        self.redis = None
        self.pick_script_cached = False  # Redis answered the pick script: EVALSHA from now
        self.least_busy = self.health = None
        self.round_robin = 0
        self.wrr = SmoothWeightedRoundRobin()
        self._ring = (None, None)     # (addresses, HashRing)
        if cfg.policy == "header":
            hostcalls.log(hostcalls.INFO, "ai-load-balancer: configured, lb_policy=header")
            return True
        config_id = hashlib.blake2b(configuration, digest_size=6).hexdigest()
        self.inflight = EmbeddedInflight(f"ailb:inflight:{config_id}", self.vm_id,
                                         cfg.lease_s * 1000)
        self.prefix_index = EmbeddedPrefixIndex(config_id, cfg.index_capacity, cfg.key_ttl_s)
        self.health = Health(cfg.health, f"ailb:health:{config_id}", self.vm_id)
        self.health.cluster = cfg.health.cluster
        if cfg.policy in METRICS_POLICIES:
            self.least_busy = LeastBusy(cfg.metrics, f"ailb:metrics:{config_id}", self.vm_id)
        self.inflight.create()
        self.health.create()
        if cfg.policy in ("global_least_request", "prefix_cache"):
            self._init_redis()
        hostcalls.set_tick_period_ms(self._tick_ms())
        hostcalls.log(hostcalls.INFO, f"ai-load-balancer: configured, lb_policy={cfg.policy}, "
                                      f"state={'redis' if self.redis else 'embedded'}")
        return True

    def _init_redis(self):
        redis = self.config.redis
        if redis is None:
            return
        if not hostcalls.has_capability("proxy_redis_init"):
            hostcalls.log(hostcalls.WARN, "ai-load-balancer: Redis needs the higress build "
                                          "(proxy_redis_call); keeping state embedded")
            return
        cluster = redis.cluster + (f"?db={redis.database}" if redis.database else "")
        hostcalls.redis_init(cluster, redis.username, redis.password, redis.timeout_ms)
        self.redis = cluster

    def _tick_ms(self):
        cfg = self.config
        period = min(cfg.lease_s * 1000 // 3, cfg.health.interval_ms)
        if self.redis:
            period = min(period, max(20, cfg.redis.timeout_ms // 4))
        if self.least_busy:
            period = min(period, cfg.metrics.interval_ms)
        return period

    def learn_cluster(self, cluster):
        """The routed cluster, seen on a request: scrapes and health checks go
        there unless lb_config.metricsCluster names one."""
        self.health.cluster = self.health.cluster or cluster
        if self.least_busy and not self.least_busy.scraper.cluster:
            self.least_busy.scraper.cluster = cluster

    def on_tick(self):
        now_ms = hostcalls.now_ns() // 1_000_000
        for stream in list(self.waiting.values()):
            if now_ms - stream.waiting_since_ms >= self.config.redis.timeout_ms:
                stream.redis_timed_out()
        self.inflight.renew(now_ms)
        if not hostcalls.has_capability("proxy_get_upstream_hosts"):  # Higress checks itself
            self.health.tick(self, self.config.endpoints, now_ms)
        if self.least_busy and self.least_busy.scraper.cluster:
            self.least_busy.scraper.tick(self, self.config.endpoints, now_ms)
        for cluster in self.redis_clusters:
            hostcalls.redis_call(self.redis, redis_state.renew_command(
                cluster, self.vm_id, self.config.lease_s * 1000))

    # --- per request ----------------------------------------------------------------------

    def candidates(self, now_ms):
        """(addresses, tier, hosts): the replicas a request may go to now. tier is
        HEALTHY, DEGRADED (no healthy one is left) or UNHEALTHY (none at all).
        hosts: Higress's upstream host list (with their metrics), else None."""
        hosts = None
        if hostcalls.has_capability("proxy_get_upstream_hosts"):
            hosts = hostcalls.get_upstream_hosts()
            states = {a: endpoints.host_state(info) for a, info in hosts}
            healthy = [a for a in sorted(states) if states[a] == HEALTHY]
            degraded = [a for a in sorted(states) if states[a] == DEGRADED]
        else:
            healthy, degraded = list(self.config.endpoints), []
        addresses, tier = self.health.usable(healthy, now_ms)
        if tier != HEALTHY and degraded:
            return degraded, DEGRADED, hosts
        return addresses, tier if addresses else UNHEALTHY, hosts

    def ring(self, addresses):
        """The consistent-hash ring of these addresses (rebuilt when they change)."""
        key = tuple(addresses)
        if self._ring[0] != key:
            self._ring = (key, HashRing(addresses))
        return self._ring[1]
