"""One configuration at work: the global one, or one Higress rule's. Owns what
outlives a stream for that configuration: its state stores, scraper, health
checker and Redis client; answers which replicas a request may go to now.
The root context holds one per configuration and ticks them."""

import hashlib

from proxywasm import hostcalls
from proxywasm.abi import HostError
from proxywasm.dispatcher import run_isolated

from . import endpoints, redis_state, session_table, stats
from .cluster_metrics import ServiceStats
from .embedded_inflight import EmbeddedInflight
from .embedded_prefix_index import EmbeddedPrefixIndex
from .health import DEGRADED, HEALTHY, UNHEALTHY, Health
from .policies import POLICIES

MAX_UNRELEASED = 4096


class Balancer:
    """Created at configure time; `name` says which configuration it runs
    ("global configuration" or "_rules_[N]")."""

    def __init__(self, root, config, name):
        self.root = root
        self.config = config
        self.name = name
        self.vm_id = root.vm_id
        self.limiter = root.limiter
        self.redis_clusters = set()   # clusters this VM counted requests in (lease renewal)
        self.unreleased = {}          # (cluster, request id) -> sent: releases not confirmed
        self.request_ids = 0          # this VM's request ids in Redis (counted per request)
        self._next_renew_ms = 0
        self.redis = None             # the Redis cluster, once redis_init succeeded
        self.wants_redis = False      # configured with Redis (and the host has it)
        self.pick_script_cached = False  # Redis answered the pick script: EVALSHA from now
        self.policy = self.health = self.inflight = self.prefix_index = self.sessions = None
        # lb_type cluster: what chooses the service (cluster_hash: its pure config)
        self.services = ServiceStats(config.services) if config.policy == "cluster_metrics" \
            else config.services
        if config.lb_type != "endpoint":
            return
        # State keys differ per configuration and agree across the VMs of a process.
        self.state_id = hashlib.blake2b(f"{name}\0{config!r}".encode(),
                                        digest_size=6).hexdigest()
        self.policy = POLICIES[config.policy](self)
        if self.policy.headers_only:
            return
        self.inflight = EmbeddedInflight(f"ailb:inflight:{self.state_id}", self.vm_id,
                                         config.lease_s * 1000, self.limiter)
        self.prefix_index = EmbeddedPrefixIndex(self.state_id, config.index_capacity,
                                                config.key_ttl_s, self.limiter,
                                                self.policy.capacity_of)
        self.health = Health(config.health, f"ailb:health:{self.state_id}", self.vm_id)
        self.health.cluster = config.health.cluster
        if self.policy.sticky:
            self.sessions = session_table.EmbeddedSessions(self.state_id, config.index_capacity,
                                                           config.sticky_ttl_s)
        self.inflight.create()
        self.health.create()
        self.wants_redis = config.redis is not None and bool(self.policy.redis_rule
                                                             or self.policy.sticky)
        if self.wants_redis and self.policy.custom:
            hostcalls.log(hostcalls.WARN, f"ai-load-balancer: {name}: Redis runs the preset "
                                          f"{config.policy} only; with lb_config's own filters, "
                                          f"scorers or picker, state stays embedded")
            self.wants_redis = False
        if self.wants_redis and not hostcalls.has_capability("proxy_redis_init"):
            hostcalls.log(hostcalls.WARN, f"ai-load-balancer: {name}: Redis needs the higress "
                                          f"build (proxy_redis_call); keeping state embedded")
            self.wants_redis = False
        self.connect_redis()

    def describe(self):
        cfg = self.config
        if self.inflight is None:
            return f"lb_policy={cfg.policy}"
        state = "redis" if self.redis else "redis (connecting)" if self.wants_redis \
            else "embedded"
        return f"lb_policy={cfg.policy}, state={state}"

    # --- Redis ------------------------------------------------------------------------

    def connect_redis(self):
        """(Re)initialises the Redis client when this configuration wants one and
        has none. Higress answers BadArgument while the Redis cluster has not
        reached this worker yet: the next request or tick tries again."""
        if self.redis or not self.wants_redis:
            return
        redis = self.config.redis
        cluster = redis.cluster + (f"?db={redis.database}" if redis.database else "")
        try:
            hostcalls.redis_init(cluster, redis.username, redis.password, redis.timeout_ms)
        except HostError as exc:
            self.limiter.log(hostcalls.WARN, f"redis init {self.name}",
                             f"{self.name}: Redis {redis.cluster} is not usable yet ({exc}); "
                             f"deciding on the gateway's own state and retrying")
            return
        self.redis = cluster
        self.pick_script_cached = False

    def bind_in_redis(self, cluster, session, address):
        """Binds a session to `address` in Redis (endpoint_hash). Not retried:
        a lost write leaves the session unbound, placed anew next time."""
        self._send_to_redis(session_table.bind_command(
            cluster, session, address, self.config.sticky_ttl_s), "Redis session binding")

    def _send_to_redis(self, command, what):
        """A command whose answer nobody waits for; not sent: logged."""
        try:
            hostcalls.redis_call(self.redis, command)
        except Exception as exc:
            self.limiter.log(hostcalls.WARN, what, f"{self.name}: {what} not sent ({exc})")

    def redis_unauthenticated(self):
        """Redis answered NOAUTH (a new connection without our login): init again."""
        self.redis = None
        self.connect_redis()

    # --- timers -----------------------------------------------------------------------

    def tick_ms(self):
        """How often this configuration needs on_tick, or 0 for never."""
        cfg = self.config
        if self.inflight is None:
            return 0
        period = min(cfg.lease_s * 1000 // 3, cfg.health.interval_ms)
        if self.wants_redis:
            period = min(period, max(20, cfg.redis.timeout_ms // 4))
        return min(period, self.policy.tick_ms() or period)

    def tick(self, now_ms):
        if self.inflight is None:
            return
        # Each step on its own: one that raises does not skip the others.
        run_isolated("Redis connect", self.connect_redis)
        run_isolated("lease renewal", self.inflight.renew, now_ms)
        run_isolated("health changes", self.health.write_unwritten)
        if not endpoints.lists_hosts():  # Higress checks health itself
            run_isolated("health checks", self.health.tick, self.root, self.config.endpoints,
                         now_ms)
        run_isolated(f"{self.config.policy} tick", self.policy.tick, self.root,
                     self.config.endpoints, now_ms)
        if self.redis:
            run_isolated("Redis lease renewal", self._renew_in_redis, now_ms)

    def _renew_in_redis(self, now_ms):
        """Every third of a lease: this VM's lease in Redis; every tick: the
        releases that failed (not sent, or no answer)."""
        if now_ms >= self._next_renew_ms:
            self._next_renew_ms = now_ms + self.config.lease_s * 1000 // 3
            self._renew_leases()
        for (cluster, request_id), sent in list(self.unreleased.items()):
            if not sent:
                self.release_in_redis(cluster, request_id)

    def _renew_leases(self):
        for cluster in self.redis_clusters:
            hostcalls.redis_call(self.redis, redis_state.renew_command(
                cluster, self.vm_id, self.config.lease_s * 1000))

    def next_request_id(self):
        """A request id unique in this VM, for counting a request in Redis."""
        self.request_ids += 1
        return str(self.request_ids)

    def work_done_in_redis(self, cluster, request_id):
        """Uncounts the prompt work of request `request_id` (its first answer
        byte came). Not retried: should it be lost, the request's release
        uncounts the work too."""
        self._send_to_redis(redis_state.release_command(
            cluster, self.vm_id, request_id, self.config.lease_s * 1000, work_only=True),
            "Redis work release")

    def release_in_redis(self, cluster, request_id):
        """Uncounts request `request_id` in Redis, whether its pick ran or
        still may. Idempotent, so sent again on every tick until Redis confirms
        it (at most MAX_UNRELEASED kept: beyond that, counted and logged)."""
        key = (cluster, request_id)

        def on_reply(status, reply):
            if status == 0 and reply[:1] != b"-":
                self.unreleased.pop(key, None)
            elif key in self.unreleased:
                self.unreleased[key] = False  # sent again on the next tick

        if key not in self.unreleased and len(self.unreleased) >= MAX_UNRELEASED:
            stats.count("ailb.redis.releases_dropped")
            self.limiter.log(hostcalls.WARN, "releases dropped", f"{self.name}: over "
                             f"{MAX_UNRELEASED} Redis releases unconfirmed; dropping one")
            return
        self.unreleased[key] = False
        try:
            self.root.redis_call(self.redis, redis_state.release_command(
                cluster, self.vm_id, request_id, self.config.lease_s * 1000), on_reply)
            self.unreleased[key] = True
        except Exception as exc:  # not sent: the next tick sends it again
            self.limiter.log(hostcalls.WARN, "release", f"{self.name}: Redis release not "
                             f"sent ({exc}); sending it again on the next tick")

    # --- per request ----------------------------------------------------------------------

    def learn_cluster(self, cluster):
        """The routed cluster, seen on a request: scrapes and health checks go
        there unless lb_config.metricsCluster names one."""
        self.health.cluster = self.health.cluster or cluster
        self.policy.learn_cluster(cluster)

    def candidates(self, now_ms):
        """(addresses, tier, hosts): the replicas a request may go to now. tier is
        HEALTHY, DEGRADED (no healthy one is left) or UNHEALTHY (none at all).
        hosts: Higress's upstream host list (with their metrics), else None."""
        hosts = endpoints.upstream_hosts()
        if hosts is not None:
            states = {a: endpoints.host_state(info) for a, info in hosts}
            healthy = [a for a in sorted(states) if states[a] == HEALTHY]
            degraded = [a for a in sorted(states) if states[a] == DEGRADED]
        else:
            healthy, degraded = list(self.config.endpoints), []
        addresses, tier = self.health.usable(healthy, now_ms)
        if tier != HEALTHY and degraded:
            return degraded, DEGRADED, hosts
        return addresses, tier if addresses else UNHEALTHY, hosts
