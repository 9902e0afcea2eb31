"""The HTTP filter: gathers a request's inputs, has its policy choose, applies
the choice.

Per stream: strip a client-sent override header; when the policy reads the
body (prompt, model, a body hash key) wait for all of it (paused); gather what
the policy declares it needs (the usable replicas by health tier, prompt
blocks and who holds them, scraped metrics, a session key); choose (the
policy's pipeline on embedded state now, or its preset in one Redis round trip
while the request stays paused); apply: pin the pick and its fallbacks. When
the response starts, feed passive health; when the stream ends, however it
ends, release its in-flight count. Whatever fails, the request goes on to the
service's own load balancing.
"""

import json
import os
from dataclasses import replace

from proxywasm import CONTINUE, PAUSE, HttpContext, hostcalls, resp

from . import (endpoint_override, endpoints, llm_request, prefix_hash, redis_state,
               session_table, stats)
from .health import DEGRADED
from .picking import LimitReached
from .pipeline import Inputs, NoCandidate
from .policies.endpoint_hash import NewSession
from .policies.least_busy import NoMetrics
from .policies.prefix_cache import min_match_blocks, move_cost
from .scheduling import Shed
from .shared_record import GaveUp

DECISION_HEADER = "x-ailb-decision"
LIMIT_MESSAGE = "every replica has maxRequestCount requests in flight"


class LoadBalancerStream(HttpContext):
    # The first answer byte: cluster_metrics times it (every stream); prefix_cache
    # uncounts the prompt work then (want_once: that stream's first chunk only).
    # The response headers and the end of a stream enter Python only for the
    # streams the plugin decided (want_once): one it leaves alone costs none.
    # The request body only for a stream paused in its headers (the dispatcher
    # asks for it): waiting for the body, or for Redis.
    on_demand = ("on_request_body", "on_response_body", "on_response_headers", "on_log")

    def __init__(self, context_id, root):
        super().__init__(context_id, root)
        self.lb = None                # the Balancer of this request's configuration
        self.cfg = None               # its LBConfig
        self.policy = None            # its Policy
        self.cluster = None
        self.inputs = None            # what the decision reads, once gathered
        self.aging = ()               # replicas whose prefix entries want writing again
        self.request = None           # the parsed LLM request, when the body was read
        self.hash_body = b""          # consistent_hash by a body field: the raw body
        self.awaiting_body = False    # paused until the whole body is here
        self.awaiting_redis = False   # paused until Redis answers (or times out)
        self.request_id = None        # this request's id in Redis, once asked
        self.session = None           # endpoint_hash: the session, once keyed
        self.started_ns = 0
        self.pick = None
        self.pinned = ()              # the addresses pinned, in the order Envoy tries them
        self.state = None             # "embedded" | "redis" | "metrics" | "local"
        self.counted_in = None        # where this request is counted until it ends
        self.service = None           # lb_type cluster: the backend service chosen
        self.status = None            # ... and its response status
        self.first_byte_seen = False

    # --- phases -------------------------------------------------------------------

    def on_request_headers(self, num_headers, end_of_stream):
        endpoint_override.strip_client_override()
        self.lb = self.root.balancer_for_request()
        if self.lb is None:
            return CONTINUE  # no rule and no global configuration: not ours
        self.cfg, self.policy = self.lb.config, self.lb.policy
        if self.lb.services is not None:
            return self._choose_service()
        if self.policy.headers_only:
            wanted = hostcalls.get_header(hostcalls.REQUEST_HEADERS, self.cfg.header)
            if wanted:
                endpoint_override.pin([wanted.strip()])
            return CONTINUE
        self.cluster = endpoints.cluster_name() or "default"
        self.lb.learn_cluster(self.cluster)
        if self.policy.reads_body and not end_of_stream:
            length = hostcalls.get_header(hostcalls.REQUEST_HEADERS, "content-length")
            if length and length.isdigit() and int(length) > self.cfg.max_body_bytes:
                # Buffering it could hit Envoy's buffer limit (a 413): route it unread.
                return self._too_large(length)
            self.awaiting_body = True
            self.wait_for_body(self.cfg.max_body_bytes)  # on_request_body's PAUSE, in the shim
            return PAUSE  # what the policy needs is in the body
        return self._decide()

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
        if self.policy.keyed:
            self.hash_body = body
        else:
            try:
                self.request = llm_request.parse(body)
            except llm_request.NotAnLLMRequest as exc:
                self.lb.limiter.log(hostcalls.DEBUG, "not llm", f"no prompt to match: {exc}")
        return self._decide()

    def _choose_service(self):
        """lb_type cluster: the backend service, written into the header the
        route's cluster_header action reads (a client-sent value is replaced)."""
        services, rotation = self.cfg.services, int.from_bytes(os.urandom(2), "little")
        label = services.mode
        if self.cfg.policy == "cluster_hash":  # stateless: nothing to time or uncount
            key = hostcalls.get_header(hostcalls.REQUEST_HEADERS, services.hash_header)
            service = services.choose(key, rotation)
            if not key:
                label = "no_key"
                self.lb.limiter.log(hostcalls.WARN, "no hash key", f"no {services.hash_header} "
                                    f"header: a random service by the weights")
        else:
            self.started_ns = hostcalls.now_ns()
            self._want_the_rest()
            service = self.service = self.lb.services.choose(rotation)
        hostcalls.replace_header(hostcalls.REQUEST_HEADERS, services.header, service)
        stats.count(f"ailb.decisions.{self.cfg.policy}.{label}")
        return CONTINUE

    def _elapsed_ms(self):
        return (hostcalls.now_ns() - self.started_ns) / 1e6

    def on_response_body(self, body_size, end_of_stream):
        if self.first_byte_seen:
            return CONTINUE
        self.first_byte_seen = True
        if self.service is not None:  # lb_type cluster: time to the first answer byte
            self.lb.services.first_byte(self.service, self._elapsed_ms(), self.status == "200")
        elif self.pick is not None and self.pick.work:
            self._prefilled()
        return CONTINUE

    def _prefilled(self):
        """The first answer byte: the replica computed the prompt, its work no
        longer waits there (the request still counts until it ends)."""
        work, self.pick = self.pick.work, replace(self.pick, work=0)
        if self.counted_in == "embedded":
            self.lb.inflight.release(self.pick.address, 0, work,
                                     hostcalls.now_ns() // 1_000_000)
        elif self.counted_in == "redis":
            self.lb.work_done_in_redis(self.cluster, self.request_id)

    def _too_large(self, size):
        self.lb.limiter.log(hostcalls.WARN, "large body", f"body of {size} bytes is over "
                              f"maxBodyBytes; routing it without its prompt")
        return self._decide()

    def on_response_headers(self, num_headers, end_of_stream):
        if self.service is not None:
            self.status = hostcalls.get_header(hostcalls.RESPONSE_HEADERS, ":status")
            return CONTINUE
        status = hostcalls.get_header(hostcalls.RESPONSE_HEADERS, ":status") or ""
        served = hostcalls.get_property(["upstream", "address"])  # after retries: who answered
        if self.session is not None and served and not status.startswith("5"):
            self._bind_session(served.decode())
        if self.pick is None:
            return CONTINUE
        address = served.decode() if served else self.pick.address
        now_ms = hostcalls.now_ns() // 1_000_000
        if address != self.pick.address:
            # Envoy retried: the pinned addresses tried before the one that answered
            # failed (its attempts follow the override list in order).
            tried = self.pinned[:self.pinned.index(address)] if address in self.pinned \
                else self.pinned
            for failed in tried:
                self.lb.health.observe(failed, True, now_ms)
        self.lb.health.observe(address, status.startswith("5"), now_ms)
        if self.cfg.debug_header:
            p = self.pick
            hostcalls.replace_header(
                hostcalls.RESPONSE_HEADERS, DECISION_HEADER,
                f"{p.address}; reason={p.reason}; matched_blocks={p.matched_blocks}; "
                f"inflight={p.inflight}; state={self.state}")
        return CONTINUE

    def on_log(self):
        """The stream ended, however it ended: uncount it."""
        if self.lb is None:
            return
        if self.service is not None:
            self.lb.services.done(self.service, self._elapsed_ms(), self.status == "200")
            self.service = None
            return
        if self.awaiting_redis:  # the client left while Redis picked
            self._stop_waiting_on_redis()
        if self.counted_in == "embedded":
            self.lb.inflight.release(self.pick.address, 1, self.pick.work,
                                     hostcalls.now_ns() // 1_000_000)
        elif self.counted_in == "redis":
            self.lb.release_in_redis(self.cluster, self.request_id)
        self.counted_in = None

    # --- deciding: gather, choose, apply --------------------------------------------

    def _want_the_rest(self):
        """From a decision on: the response headers (status, health, debug
        header) and the stream's end (uncount it) enter Python."""
        self.want_once("on_response_headers")
        self.want_once("on_log")

    def _decide(self):
        self.started_ns = now_ns = hostcalls.now_ns()
        self._want_the_rest()
        candidates, tier, hosts = self.lb.candidates(now_ns // 1_000_000)
        if not candidates:
            return self._all_down()
        if tier == DEGRADED:
            self.lb.limiter.log(hostcalls.WARN, "degraded", "no healthy replica; using "
                                  "degraded ones")
        self.inputs = self._gather(candidates, hosts, now_ns)
        policy = self.policy
        if policy.sticky:
            return self._find_session()
        if not policy.counts:
            self.state = "local"
            try:
                return self._apply(policy.choose(self.inputs))
            except NoCandidate as exc:
                return self._no_candidate(exc)
        if policy.redis_rule:
            self.lb.connect_redis()  # a no-op once connected (or without Redis)
            if self.lb.redis:
                return self._ask_redis()
        return self._choose_embedded()

    def _gather(self, candidates, hosts, now_ns):
        """The policy's inputs, from what it declares it needs."""
        policy, now_ms = self.policy, now_ns // 1_000_000
        fields = {}
        policy.before_gathering(hosts, now_ms)
        if policy.hashes_prompt and self.request is not None:
            fields["hashes"] = prefix_hash.block_hashes(
                self.request.cache_namespace, self.request.prompt, self.cfg.block_size,
                self.cfg.max_blocks)
            fields["prompt_blocks"] = len(self.request.prompt) // self.cfg.block_size
        if policy.scraped:
            fields["metrics"] = policy.read_metrics(hosts, now_ms)
        if policy.keyed:
            fields["key"] = self._hash_key()
        return Inputs(tuple(candidates), int.from_bytes(os.urandom(2), "little"),
                      self.request, **fields)

    def _all_down(self):
        stats.count("ailb.fallbacks.no_usable_replica")
        if self.cfg.all_down == "503":
            return self._reject(503, "no replica of this service is available",
                                "service_unavailable")
        self.lb.limiter.log(hostcalls.WARN, "all down", "no usable replica; the service's "
                              "load balancing decides")
        return CONTINUE

    def _no_candidate(self, exc):
        stats.count("ailb.fallbacks.no_candidate")
        self.lb.limiter.log(hostcalls.WARN, "no candidate", f"filter {exc} left no replica; "
                              f"the service's load balancing decides")
        return CONTINUE

    def _no_metrics(self):
        stats.count("ailb.fallbacks.no_metrics")
        self.lb.limiter.log(hostcalls.WARN, "no metrics", "no replica has fresh metrics; "
                              "the service's load balancing decides")
        return CONTINUE

    def _choose_embedded(self):
        """The policy chooses on this Envoy's shared counts, and the pick is
        counted in the same compare-and-swap."""
        now_ms = hostcalls.now_ns() // 1_000_000
        if self.inputs.hashes:  # who holds the prompt's blocks, by this Envoy's index
            matched, self.aging = self.lb.prefix_index.matches(self.inputs.hashes, now_ms // 1000)
            self.inputs = replace(self.inputs, matched=matched)
        inputs = self.inputs
        try:
            pick = self.lb.inflight.take(
                lambda inflight, work: self.policy.choose(replace(inputs, inflight=inflight,
                                                                  work=work)), now_ms)
        except LimitReached:
            return self._reject(429, LIMIT_MESSAGE, "rate_limit_exceeded")
        except Shed:
            return self._reject(429, "no replica has capacity for this sheddable request",
                                "rate_limit_exceeded")
        except NoMetrics:
            return self._no_metrics()
        except NoCandidate as exc:
            return self._no_candidate(exc)
        except GaveUp:  # counted and logged by the shared record
            stats.count("ailb.fallbacks.contention")
            return CONTINUE
        self.counted_in = "embedded"
        self.state = "metrics" if self.policy.scraped else "embedded"
        self._record_prefix(pick.address, now_ms // 1000)
        return self._apply(pick)

    # --- endpoint_hash: sessions bound to a replica ------------------------------------

    def _find_session(self):
        """Looks up the replica the request's session is bound to (in Redis, the
        request paused, else embedded) and sticks to it."""
        if not self.inputs.key:
            stats.count(f"ailb.decisions.{self.cfg.policy}.no_key")
            return CONTINUE  # no session: the service's load balancing decides
        self.session = session_table.session_id(self.cluster, self.inputs.key)
        self.lb.connect_redis()
        if not self.lb.redis:
            return self._stick(self._embedded_binding())
        try:
            self.root.redis_call(self.lb.redis, session_table.lookup_command(
                self.cluster, self.session, self.cfg.sticky_ttl_s), self._on_redis_session,
                for_stream=self, timeout_ms=self.cfg.redis.timeout_ms,
                on_timeout=self._redis_timed_out)
        except Exception as exc:  # the host refused the call: Redis is not usable now
            self._redis_failed(f"redis call failed: {exc}")
            return self._stick(self._embedded_binding())
        self.awaiting_redis = True
        return PAUSE

    def _embedded_binding(self):
        self.state = "embedded"
        return self.lb.sessions.lookup(self.session, hostcalls.now_ns() // 1_000_000_000)

    def _on_redis_session(self, status, reply):
        if not self.awaiting_redis:
            return  # the stream ended or went on after a timeout
        self.awaiting_redis = False
        hostcalls.set_effective_context(self.context_id)
        bound, failure = None, None if status == 0 else f"redis call status {status}"
        try:
            if status == 0:
                bound, self.state = session_table.parse_lookup(reply), "redis"
        except (ValueError, resp.RedisError) as exc:
            self._check_login(exc)
            failure = f"unexpected reply: {exc}"
        if failure:
            self._redis_failed(failure)
            bound = self._embedded_binding()
        if self._stick(bound) == CONTINUE:
            self.resume_request()

    def _stick(self, bound):
        """To the bound replica if it is usable; else the service's load
        balancing places the request and the replica that answers is bound."""
        self.inputs = replace(self.inputs, bound=bound or "")
        try:
            return self._apply(self.policy.choose(self.inputs))
        except NewSession as exc:
            stats.count(f"ailb.decisions.{self.cfg.policy}.{exc}")
            return CONTINUE

    def _bind_session(self, address):
        """Response headers of a keyed request: the replica that answered is
        the session's (written only when it changed)."""
        if self.pick is not None and self.pick.address == address:
            return  # stayed on its bound replica (renewed when looked up)
        self.lb.sessions.bind(self.session, address, hostcalls.now_ns() // 1_000_000_000)
        if self.lb.redis:
            self.lb.bind_in_redis(self.cluster, self.session, address)

    # --- keys ---------------------------------------------------------------------------

    def _hash_key(self):
        kind, name = self.cfg.hash_key
        if kind == "header":
            return hostcalls.get_header(hostcalls.REQUEST_HEADERS, name) or ""
        try:
            value = json.loads(self.hash_body or b"{}").get(name, "")
        except (ValueError, AttributeError, LookupError, RecursionError):
            value = ""  # not JSON, not an object, a BOM (no codec in wasm), too deep
        return value if isinstance(value, str) else json.dumps(value)

    def _record_prefix(self, address, now_s):
        """The prompt's blocks are held by `address` now (written again from the
        first one when its entries are aging)."""
        inputs = self.inputs
        if inputs.hashes:
            held = inputs.matched.get(address, 0)
            self.lb.prefix_index.record(inputs.hashes, address, now_s,
                                        0 if address in self.aging else held,
                                        max(0, inputs.prompt_blocks - held))

    # --- Redis ------------------------------------------------------------------------

    def _ask_redis(self):
        cfg = self.cfg
        self.request_id = self.request_id or self.lb.next_request_id()
        inputs, policy = self.inputs, self.policy
        command = redis_state.pick_command(
            self.cluster, self.lb.vm_id, cfg.lease_s * 1000, inputs.rotation, inputs.candidates,
            inputs.hashes, policy.redis_rule == "cost", cfg.max_load_gap, cfg.max_request_count,
            cfg.key_ttl_s, min_match_blocks(cfg, inputs.hashes), self.request_id,
            inputs.prompt_blocks, cfg.decode_cost, self.lb.pick_script_cached,
            [policy.capacity_of(a) for a in inputs.candidates] if inputs.hashes else (),
            move_cost=move_cost(cfg, inputs.candidates))
        try:
            # Owned by the root: its answer arrives even if this stream is gone,
            # so a count Redis made for it can always be released. The stream
            # waits on it: whatever raises, the dispatcher resumes the stream.
            self.root.redis_call(self.lb.redis, command, self._on_redis_pick, for_stream=self,
                                 timeout_ms=self.cfg.redis.timeout_ms,
                                 on_timeout=self._redis_timed_out)
        except Exception as exc:  # the host refused the call: Redis is not usable now
            self._redis_failed(f"redis call failed: {exc}")
            return self._choose_embedded()
        self.awaiting_redis = True
        return PAUSE

    def _on_redis_pick(self, status, reply):
        try:
            pick = redis_state.parse_pick(reply) if status == 0 else None
            failure = None if status == 0 else f"redis call status {status}"
        except redis_state.LimitReached:
            pick, failure = "limit", None
        except redis_state.NoScript:
            self.lb.pick_script_cached = False
            if self.awaiting_redis:  # nothing was counted: ask again, sending the script
                self.awaiting_redis = False
                hostcalls.set_effective_context(self.context_id)
                if self._ask_redis() == CONTINUE:
                    self.resume_request()
            return
        except (ValueError, resp.RedisError) as exc:
            pick, failure = None, f"unexpected reply: {exc}"
            self._check_login(exc)
        if pick is not None:
            self.lb.pick_script_cached = True
        if not self.awaiting_redis:
            return  # the stream ended or went on after a timeout: released already
        self.awaiting_redis = False
        hostcalls.set_effective_context(self.context_id)
        if pick == "limit":
            self.state = "redis"
            self._reject(429, LIMIT_MESSAGE, "rate_limit_exceeded")
            return
        if pick is None:
            if status != 0:  # no answer: the pick may still have run, or may run later
                self.lb.release_in_redis(self.cluster, self.request_id)
            self._redis_failed(failure)
            action = self._choose_embedded()
        else:
            self.state, self.counted_in = "redis", "redis"
            self.lb.redis_clusters.add(self.cluster)
            if self.policy.redis_rule == "cost":  # the work the script counted
                pick = replace(pick, work=self.inputs.prompt_blocks - pick.matched_blocks)
            action = self._apply(pick)
        if action == CONTINUE:
            self.resume_request()

    def _redis_timed_out(self):
        """From a tick: Redis did not answer within `timeout`. A pick is
        released now, in case Redis still runs it; the decision is made on the
        gateway's own state."""
        if not self.awaiting_redis:
            return
        self._stop_waiting_on_redis()
        self._redis_failed(f"no reply within {self.cfg.redis.timeout_ms} ms")
        action = self._stick(self._embedded_binding()) if self.policy.sticky \
            else self._choose_embedded()
        if action == CONTINUE:
            self.resume_request()

    def _check_login(self, exc):
        """A connection Higress opened without our login answers NOAUTH, or Redis
        6+'s "Protocol error: unauthenticated multibulk length" for a long
        command: init the client again."""
        if str(exc).startswith("NOAUTH") or "unauthenticated" in str(exc):
            self.lb.redis_unauthenticated()

    def _redis_failed(self, why):
        stats.count("ailb.redis.errors")
        self.lb.limiter.log(hostcalls.WARN, "redis", f"Redis unusable ({why}); "
                              f"deciding on the gateway's own state")

    def _stop_waiting_on_redis(self):
        """The stream goes on without the pick (or ends): Redis may still run
        it, so it is released now (a pick that runs after its release counts
        nothing)."""
        self.awaiting_redis = False
        if self.request_id is not None:  # a pick was asked for (not a session lookup)
            self.lb.release_in_redis(self.cluster, self.request_id)

    # --- applying -----------------------------------------------------------------

    def _apply(self, pick):
        """Pins the pick, then up to `failoverEndpoints` other usable replicas
        (Envoy's retries take them in order; Higress pins one host)."""
        self.pick = pick
        if pick.work:
            self.want_once("on_response_body")  # uncount the work at the first byte
        candidates, rotation = self.inputs.candidates, self.inputs.rotation
        n = len(candidates)
        others = [candidates[(rotation + i) % n] for i in range(n)]
        fallbacks = [a for a in others if a != pick.address][:self.cfg.failover]
        self.pinned = endpoint_override.pin([pick.address] + fallbacks)
        stats.count(f"ailb.decisions.{self.cfg.policy}.{pick.reason}")
        stats.count(f"ailb.endpoint.{stats.label(pick.address)}.requests")
        if self.policy.hashes_prompt:
            stats.count("ailb.prefix.hits" if pick.matched_blocks else "ailb.prefix.misses")
        stats.record("ailb.decision_us", (hostcalls.now_ns() - self.started_ns) // 1000)
        if self.cfg.detail_log:
            hostcalls.log(hostcalls.INFO, f"ai-load-balancer: {self.cluster} -> {pick.address} "
                                          f"({pick.reason}, {pick.matched_blocks} blocks matched, "
                                          f"{pick.inflight} in flight, {self.state})")
        return CONTINUE

    def _reject(self, status, message, kind):
        """A local reply in OpenAI's error format (429 limits, 503 all down)."""
        body = json.dumps({"error": {"message": message, "type": kind, "param": None,
                                     "code": status}})
        self.send_local_response(status, body, [("content-type", "application/json")],
                                 f"ai_load_balancer_{status}")
        return PAUSE
