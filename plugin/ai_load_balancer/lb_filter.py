"""The HTTP filter: gathers a request's inputs, gets a decision, applies it.

Per stream: strip a client-sent override header; for prefix_cache wait for the
whole body (paused), extract the prompt and hash it; pick a replica (embedded
state now, or one Redis round trip while the request stays paused); pin it.
At the end of the stream, however it ends, the in-flight count is released.
Whatever fails, the request goes on to the service's own load balancing.
"""

import hashlib
import json
import math
import os

from proxywasm import CONTINUE, PAUSE, HttpContext, RootContext, hostcalls, resp

from . import config as lb_config
from . import endpoint_override, endpoints, llm_request, picking, prefix_hash, redis_state
from .embedded_inflight import Contention, EmbeddedInflight
from .embedded_prefix_index import EmbeddedPrefixIndex
from .least_busy import LeastBusy, NoMetrics
from .log_limiter import LogLimiter
from .scheduling import Shed

DECISION_HEADER = "x-ailb-decision"
LIMIT_MESSAGE = "every replica has maxRequestCount requests in flight"


class LoadBalancerRoot(RootContext):
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
        self.waiting = {}  # context id -> stream paused on a Redis reply
        self.redis_clusters = set()  # clusters this VM counted requests in (lease renewal)
        config_id = hashlib.blake2b(configuration, digest_size=6).hexdigest()
        self.inflight = EmbeddedInflight(f"ailb:inflight:{config_id}", self.vm_id, cfg.lease_s * 1000)
        self.prefix_index = EmbeddedPrefixIndex(config_id, cfg.index_capacity, cfg.key_ttl_s)
        self.redis = None
        self.least_busy = None
        if cfg.policy == "least_busy":
            self.least_busy = LeastBusy(cfg.metrics, f"ailb:metrics:{config_id}", self.vm_id)
        if cfg.policy != "header":
            self.inflight.create()
            self._init_redis()
            hostcalls.set_tick_period_ms(self._tick_ms())
        state = "" if cfg.policy == "header" else f", state={'redis' if self.redis else 'embedded'}"
        hostcalls.log(hostcalls.INFO, f"ai-load-balancer: configured, lb_policy={cfg.policy}{state}")
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
        period = self.config.lease_s * 1000 // 3
        if self.redis:
            period = min(period, max(20, self.config.redis.timeout_ms // 4))
        if self.least_busy:
            period = min(period, self.config.metrics.interval_ms)
        return period

    def learn_cluster(self, cluster):
        """The routed cluster, seen on a request: scrapes go there unless
        lb_config.metricsCluster names one."""
        if self.least_busy and not self.least_busy.scraper.cluster:
            self.least_busy.scraper.cluster = cluster

    def on_tick(self):
        now_ms = hostcalls.now_ns() // 1_000_000
        for stream in list(self.waiting.values()):
            if now_ms - stream.waiting_since_ms >= self.config.redis.timeout_ms:
                stream.redis_timed_out()
        self.inflight.renew(now_ms)
        if self.least_busy and self.least_busy.scraper.cluster:
            self.least_busy.scraper.tick(self, self.config.endpoints, now_ms)
        for cluster in self.redis_clusters:
            hostcalls.redis_call(self.redis, redis_state.renew_command(
                cluster, self.vm_id, self.config.lease_s * 1000))

    def new_http_context(self, context_id):
        return LoadBalancerStream(context_id, self)


class LoadBalancerStream(HttpContext):
    def __init__(self, context_id, root):
        super().__init__(context_id, root)
        self.cfg = root.config
        self.cluster = None
        self.candidates, self.hashes, self.rotation = (), (), 0
        self.awaiting_body = False    # prefix_cache: paused until the whole body is here
        self.awaiting_redis = False   # paused until Redis answers (or times out)
        self.waiting_since_ms = None
        self.pick = None
        self.state = None             # "embedded" | "redis": where the decision was made
        self.counted_in = None        # where this request is counted until it ends

    # --- phases -------------------------------------------------------------------

    def on_request_headers(self, num_headers, end_of_stream):
        endpoint_override.strip_client_override()
        if self.cfg.policy == "header":
            wanted = hostcalls.get_header(hostcalls.REQUEST_HEADERS, self.cfg.header)
            if wanted:
                endpoint_override.pin([wanted.strip()])
            return CONTINUE
        self.cluster = endpoints.cluster_name()
        self.root.learn_cluster(self.cluster)
        if self.cfg.policy in ("prefix_cache", "least_busy") and not end_of_stream:
            length = hostcalls.get_header(hostcalls.REQUEST_HEADERS, "content-length")
            if length and length.isdigit() and int(length) > self.cfg.max_body_bytes:
                # Buffering it could hit Envoy's buffer limit (a 413): route it unread.
                return self._too_large(length)
            self.awaiting_body = True
            return PAUSE  # the prompt and the model are in the body
        return self._decide(None)

    def on_request_body(self, body_size, end_of_stream):
        if not self.awaiting_body:
            return super().on_request_body(body_size, end_of_stream)
        if body_size > self.cfg.max_body_bytes:
            self.awaiting_body = False
            return self._too_large(body_size)
        if not end_of_stream:
            return PAUSE  # buffer until the whole body is here
        self.awaiting_body = False
        body = hostcalls.get_buffer(hostcalls.REQUEST_BODY, 0, body_size)
        try:
            request = llm_request.parse(body)
        except llm_request.NotAnLLMRequest as exc:
            self.root.limiter.log(hostcalls.DEBUG, "not llm", f"no prompt to match: {exc}")
            request = None
        return self._decide(request)

    def _too_large(self, size):
        self.root.limiter.log(hostcalls.WARN, "large body", f"body of {size} bytes is over "
                              f"maxBodyBytes; routing it without its prompt")
        return self._decide(None)

    def on_response_headers(self, num_headers, end_of_stream):
        if self.cfg.debug_header and self.pick:
            p = self.pick
            hostcalls.replace_header(
                hostcalls.RESPONSE_HEADERS, DECISION_HEADER,
                f"{p.address}; reason={p.reason}; matched_blocks={p.matched_blocks}; "
                f"inflight={p.inflight}; state={self.state}")
        return CONTINUE

    def on_log(self):
        """The stream ended, however it ended: uncount it."""
        self.awaiting_redis = False
        self.root.waiting.pop(self.context_id, None)
        if self.counted_in == "embedded":
            self.root.inflight.release(self.pick.address, hostcalls.now_ns() // 1_000_000)
        elif self.counted_in == "redis":
            self._release_in_redis(self.pick.address)
        self.counted_in = None

    # --- deciding -----------------------------------------------------------------

    def _decide(self, request):
        if self.cfg.policy == "least_busy":
            return self._decide_least_busy(request)
        candidates = endpoints.candidates(self.cfg)
        if not candidates:
            self.root.limiter.log(hostcalls.WARN, "no endpoints", "no usable endpoint known; "
                                  "the service's load balancing decides")
            return CONTINUE
        if request is not None and self.cfg.policy == "prefix_cache":
            self.hashes = prefix_hash.block_hashes(request.cache_namespace, request.prompt,
                                                   self.cfg.block_size, self.cfg.max_blocks)
        self.candidates = candidates
        self.rotation = int.from_bytes(os.urandom(2), "little")
        if self.root.redis:
            return self._ask_redis()
        return self._decide_embedded()

    def _decide_embedded(self):
        now_ns = hostcalls.now_ns()
        matched, aging = self.root.prefix_index.matches(self.hashes, now_ns // 1_000_000_000)
        cfg = self.cfg

        def choose(inflight):
            eligible = picking.under_limit(self.candidates, inflight, cfg.max_request_count)
            if not eligible:
                raise redis_state.LimitReached()
            if cfg.policy == "prefix_cache":
                return picking.prefix_match(eligible, inflight, matched, cfg.max_load_gap,
                                            self.rotation, self._min_blocks())
            return picking.least_request(eligible, inflight, self.rotation)

        self.state = "embedded"
        try:
            pick = self.root.inflight.take(choose, now_ns // 1_000_000)
        except redis_state.LimitReached:
            return self._reject(LIMIT_MESSAGE)
        except Contention as exc:
            self.root.limiter.log(hostcalls.WARN, "contention", str(exc))
            return CONTINUE
        self.counted_in = "embedded"
        if self.hashes:
            held = 0 if aging else matched.get(pick.address, 0)
            self.root.prefix_index.record(self.hashes, pick.address, now_ns // 1_000_000_000, held)
        return self._apply(pick)

    def _decide_least_busy(self, request):
        lb = self.root.least_busy
        now_ns = hostcalls.now_ns()
        now_ms, now_s = now_ns // 1_000_000, now_ns // 1_000_000_000
        if hostcalls.has_capability("proxy_get_upstream_hosts"):
            hosts = hostcalls.get_upstream_hosts()
            addresses = sorted(a for a, info in hosts if endpoints.usable(info))
            metrics = lb.scraper.from_upstream_hosts(hosts, now_ms) or lb.scraper.snapshot(now_ms)
        else:
            addresses, metrics = list(self.cfg.endpoints), lb.scraper.snapshot(now_ms)
        matched, aging = {}, False
        if request is not None and lb.uses_prefix:
            self.hashes = prefix_hash.block_hashes(request.cache_namespace, request.prompt,
                                                   self.cfg.block_size, self.cfg.max_blocks)
            matched, aging = self.root.prefix_index.matches(self.hashes, now_s)
        rotation = int.from_bytes(os.urandom(2), "little")
        try:
            pick = lb.choose(metrics, addresses, request.model if request else "",
                             len(self.hashes), matched, rotation)
        except NoMetrics:
            self.root.limiter.log(hostcalls.WARN, "no metrics", "no replica has fresh metrics; "
                                  "the service's load balancing decides")
            return CONTINUE
        except Shed:
            return self._reject("no replica has capacity for this sheddable request")
        self.state = "metrics"
        if self.hashes:
            held = 0 if aging else matched.get(pick.address, 0)
            self.root.prefix_index.record(self.hashes, pick.address, now_s, held)
        return self._apply(pick)

    def _min_blocks(self):
        """The shortest prefix match that counts (minMatchRatio of the prompt)."""
        return math.ceil(self.cfg.min_match_ratio * len(self.hashes))

    def _ask_redis(self):
        gap = self.cfg.max_load_gap if self.cfg.policy == "prefix_cache" else -1
        command = redis_state.pick_command(
            self.cluster, self.root.vm_id, self.cfg.lease_s * 1000, self.rotation,
            self.candidates, self.hashes, gap, self.cfg.max_request_count, self.cfg.key_ttl_s,
            self._min_blocks())
        try:
            # Owned by the root: its answer arrives even if this stream is gone,
            # so a count Redis made for it can always be released.
            self.root.redis_call(self.root.redis, command, self._on_redis_pick)
        except Exception as exc:  # the host refused the call: Redis is not usable now
            self._redis_failed(f"redis call failed: {exc}")
            return self._decide_embedded()
        self.awaiting_redis = True
        self.waiting_since_ms = hostcalls.now_ns() // 1_000_000
        self.root.waiting[self.context_id] = self
        return PAUSE

    def _on_redis_pick(self, status, reply):
        try:
            pick = redis_state.parse_pick(reply) if status == 0 else None
            failure = None if status == 0 else f"redis call status {status}"
        except redis_state.LimitReached:
            pick, failure = "limit", None
        except (ValueError, resp.RedisError) as exc:
            pick, failure = None, f"unexpected reply: {exc}"
        if not self.awaiting_redis:
            # The stream ended or went on after a timeout: uncount the late pick.
            if isinstance(pick, picking.Pick):
                self._release_in_redis(pick.address)
            return
        self.awaiting_redis = False
        self.root.waiting.pop(self.context_id, None)
        hostcalls.set_effective_context(self.context_id)
        if pick == "limit":
            self.state = "redis"
            self._reject(LIMIT_MESSAGE)
            return
        if pick is None:
            self._redis_failed(failure)
            action = self._decide_embedded()
        else:
            self.state, self.counted_in = "redis", "redis"
            self.root.redis_clusters.add(self.cluster)
            action = self._apply(pick)
        if action == CONTINUE:
            self.resume_request()

    def redis_timed_out(self):
        """From the root's tick: Redis did not answer within `timeout`."""
        self.awaiting_redis = False
        self.root.waiting.pop(self.context_id, None)
        hostcalls.set_effective_context(self.context_id)
        self._redis_failed(f"no reply within {self.cfg.redis.timeout_ms} ms")
        if self._decide_embedded() == CONTINUE:
            self.resume_request()

    def _redis_failed(self, why):
        self.root.limiter.log(hostcalls.WARN, "redis", f"Redis unusable ({why}); "
                              f"deciding on the gateway's own state")

    def _release_in_redis(self, address):
        try:
            hostcalls.redis_call(self.root.redis, redis_state.release_command(
                self.cluster, self.root.vm_id, address, self.cfg.lease_s * 1000))
        except Exception as exc:
            self._redis_failed(f"release failed: {exc}")

    # --- applying -----------------------------------------------------------------

    def _apply(self, pick):
        self.pick = pick
        endpoint_override.pin([pick.address])
        if self.cfg.detail_log:
            hostcalls.log(hostcalls.INFO, f"ai-load-balancer: {self.cluster} -> {pick.address} "
                                          f"({pick.reason}, {pick.matched_blocks} blocks matched, "
                                          f"{pick.inflight} in flight, {self.state})")
        return CONTINUE

    def _reject(self, message):
        """A local 429 in OpenAI's error format."""
        body = json.dumps({"error": {"message": message, "type": "rate_limit_exceeded",
                                     "param": None, "code": 429}})
        self.send_local_response(429, body, [("content-type", "application/json")],
                                 "ai_load_balancer_429")
        return PAUSE
