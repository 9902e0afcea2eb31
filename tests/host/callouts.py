"""Callouts: http_call and redis_call the plugin queued, performed FOR REAL by
run_callouts() and answered to the plugin the way Envoy / Higress do.

A mixin of HostEmulator (it uses the emulator's state and _call()).

Redis, as Higress's Envoy does it (each point cites its source):
- one client per cluster per worker, keyed by the BASE cluster name (the text
  before "?"): ClusterEntry::redisAsyncClient() in
  source/common/upstream/cluster_manager_impl.cc creates it lazily, with the
  default config (no AUTH, no SELECT, op timeout 1000 ms) until an init;
- proxy_redis_init replaces that client's config and closes its connections,
  unless the client was initialised before with the same config (then nothing
  happens: AsyncClientImpl::initialize / currentConfigEquals in
  source/common/redis/async_client_impl.cc, newer Higress Envoy, higress #4086);
- the write buffer: a command goes out when the connection's buffer reaches
  max_buffer_size_before_flush (1024) bytes, else when the flush timer started
  by the first buffered command fires buffer_flush_timeout (3) ms later
  (RawClientImpl::makeRawRequest in source/extensions/filters/network/common/
  redis/raw_client_impl.cc). The test host is synchronous: proxy_redis_call
  notes when its command would leave the buffer (callout.flush_at, on
  time.monotonic), and run_callouts() sleeps until then before sending it, so
  no reply arrives earlier than Envoy could deliver it;
- every call gets exactly one callback on the ROOT context: status 0 with the
  raw reply (Redis error replies included), or status 1 (NetworkError) with
  size 0 for a failure, timeout or a connection closed by a re-init
  (Context::onRedisCallSuccess / onRedisCallFailure,
  source/extensions/common/wasm/context.cc).
"""

import time

from proxywasm import abi_table

from . import upstream
from .model import (ENVOY_LOCAL_REPLIES, OVERRIDE_HEADER, REDIS_BUFFER_FLUSH_TIMEOUT_MS,
                    REDIS_DEFAULT_TIMEOUT_MS, REDIS_MAX_BUFFER_BEFORE_FLUSH, REDIS_NETWORK_ERROR,
                    REDIS_OK, ROOT_CONTEXT_ID, HeaderMap, parse_endpoint, redis_buffer_param,
                    to_bytes, to_str)


class RedisAsyncClient:
    """Higress's Envoy Redis client for one cluster on one worker
    (Redis::AsyncClientImpl, source/common/redis/async_client_impl.cc): its
    config, its connection, its write buffer. See the module docstring."""

    DEFAULT_CONFIG = ("", "", REDIS_DEFAULT_TIMEOUT_MS, ())  # ConfigImpl(): never initialised

    def __init__(self):
        self.initialized = False
        self.config = self.DEFAULT_CONFIG  # (username, password, timeout_ms, params tuple)
        self.connection = None             # upstream.RedisClient, opened on first send
        self.generation = 0                # +1 each time init closes the connections
        self.buffered = []                 # callouts in the write buffer, not yet flushed
        self.buffer_bytes = 0
        self.flush_at = None               # when the flush timer fires (time.monotonic)
        self.inits = 0                     # inits that took effect (for tests)

    def initialize(self, username, password, timeout_ms, params):
        """True when the config changed (connections closed), False for the
        no-op re-init with the current config."""
        config = (username, password, timeout_ms, tuple(sorted(params.items())))
        if self.initialized and config == self.config:
            return False  # currentConfigEquals: newer Higress Envoy (higress #4086)
        self.close()
        self.config, self.initialized = config, True
        self.inits += 1
        return True

    def close(self):
        """Closes every connection: commands sent or buffered on them fail."""
        if self.connection is not None:
            self.connection.close()
            self.connection = None
        self.generation += 1
        self.buffered, self.buffer_bytes, self.flush_at = [], 0, None

    def hold(self, callout, now):
        """Puts a command in the write buffer; sets callout.flush_at, the time
        it leaves (RawClientImpl::makeRawRequest)."""
        params = dict(self.config[3])
        max_bytes = redis_buffer_param(params, "max_buffer_size_before_flush",
                                       REDIS_MAX_BUFFER_BEFORE_FLUSH)
        flush_ms = redis_buffer_param(params, "buffer_flush_timeout",
                                      REDIS_BUFFER_FLUSH_TIMEOUT_MS)
        if self.flush_at is not None and now >= self.flush_at:  # the timer fired meanwhile
            self.buffered, self.buffer_bytes, self.flush_at = [], 0, None
        was_empty = not self.buffered
        self.buffered.append(callout)
        self.buffer_bytes += len(callout.query)
        callout.generation = self.generation
        if self.buffer_bytes >= max_bytes:  # full: everything buffered goes out now
            for held in self.buffered:
                held.flush_at = now
            self.buffered, self.buffer_bytes, self.flush_at = [], 0, None
            return
        if was_empty:
            self.flush_at = now + flush_ms / 1000.0
        callout.flush_at = self.flush_at

    def send(self, address, query):
        """Sends one command on the connection to `address` (opened with the
        stored login when there is none); returns the reply bytes or raises
        upstream.CalloutFailure."""
        if self.connection is not None and self.connection.address != address:
            # The host left the cluster: AsyncClientImpl::onHostsRemoved closes
            # (or drains) its connection; the next send goes to a current host.
            self.connection.close()
            self.connection = None
        if self.connection is None:
            username, password, timeout_ms, params = self.config
            self.connection = upstream.RedisClient(address, username, password,
                                                   dict(params).get("db"), timeout_ms)
        return self.connection.call(query)


class Callouts:
    """Runs and answers pending callouts. Needs: pending, answered, clusters,
    _round_robin, _redis_inits, _redis_clients, _http_response, _redis_reply,
    _status, default_http_timeout_s and _call()."""

    def run_callouts(self, max_rounds=50):
        """Performs every pending callout for real and delivers its answer;
        callouts started by those answers run too. Returns how many ran."""
        count = 0
        for _ in range(max_rounds):
            if not self.pending:
                return count
            batch, self.pending = self.pending, []
            for callout in batch:
                if callout.kind == "http":
                    self._run_http(callout)
                else:
                    self._run_redis(callout)
                count += 1
        raise RuntimeError(f"callouts still pending after {max_rounds} rounds: {self.pending}")

    def _take(self, token, kind):
        for i, callout in enumerate(self.pending):
            if callout.token == token and callout.kind == kind:
                return self.pending.pop(i)
        raise KeyError(f"no pending {kind} callout with token {token}")

    def call_on_http_call_response(self, token, header_pairs=(), body=b"", trailer_pairs=()):
        """Answers a pending http_call without the network (proxytest-style).
        header_pairs=None delivers a failure (no response at all)."""
        callout = self._take(token, "http")
        if header_pairs is None:
            self._deliver_http(callout, None, "injected failure")
        else:
            self._deliver_http(callout, (HeaderMap(header_pairs), to_bytes(body),
                                         HeaderMap(trailer_pairs)))

    def call_on_redis_call_response(self, token, reply=None):
        """Answers a pending redis_call without a server; reply=None is a network error."""
        self._deliver_redis(self._take(token, "redis"), None if reply is None else to_bytes(reply))

    def _http_address(self, callout):
        """Where Envoy would send the callout: the first endpoint of the override
        header that belongs to the cluster (override_host policy; others are
        skipped), else the fallback policy (round robin)."""
        endpoints = self.clusters[callout.cluster]
        override = HeaderMap(callout.headers).get(OVERRIDE_HEADER.encode())
        for entry in to_str(override or b"").split(","):
            try:
                address = parse_endpoint(entry)
            except ValueError:
                continue
            if address in endpoints:
                return address
        index = self._round_robin.get(callout.cluster, 0)
        self._round_robin[callout.cluster] = index + 1
        return endpoints[index % len(endpoints)]

    def _run_http(self, callout):
        address = self._http_address(callout)
        timeout_s = (callout.timeout_ms / 1000.0 if callout.timeout_ms
                     else self.default_http_timeout_s)
        header_pairs = list(callout.headers) + [("x-envoy-internal", "true")]
        if callout.timeout_ms:
            header_pairs.append(("x-envoy-expected-rq-timeout-ms", str(callout.timeout_ms)))
        started = time.monotonic()
        try:
            status, response_pairs, body = upstream.http_request(
                address, header_pairs, callout.body, timeout_s)
        except upstream.CalloutFailure as exc:
            if exc.kind == "broken":  # after the headers: Envoy's onHttpCallFailure
                self._deliver_http(callout, None, str(exc))
                return
            # Before any response: the router answers locally, as a response.
            status, text = ENVOY_LOCAL_REPLIES[exc.kind]
            response = (HeaderMap([(":status", str(status)), ("content-length", str(len(text))),
                                   ("content-type", "text/plain")]), text, HeaderMap())
            self._deliver_http(callout, response, str(exc))
            return
        elapsed_ms = int((time.monotonic() - started) * 1000)
        response_headers = HeaderMap([(":status", str(status))] + response_pairs
                                     + [("x-envoy-upstream-service-time", str(elapsed_ms))])
        self._deliver_http(callout, (response_headers, body, HeaderMap()))

    def _deliver_http(self, callout, response, failure=None):
        """Calls proxy_on_http_call_response on the root context. response=None
        is Envoy's onHttpCallFailure: no headers, no body, and proxy_get_status
        says BrokenConnection "reset"."""
        self.answered.append((callout, failure or response))
        self._http_response = response
        # Measured in Envoy 1.40: a failure sets (BrokenConnection, "reset"); a
        # response clears the message but leaves the code.
        self._status = (self._status[0], b"") if response is not None else (
            abi_table.BROKEN_CONNECTION, b"reset")
        try:
            if response is None:
                args = (0, 0, 0)
            else:
                args = (len(response[0]), len(response[1]), len(response[2]))
            self._call("proxy_on_http_call_response", ROOT_CONTEXT_ID, callout.token, *args)
        finally:
            self._http_response = None

    def _run_redis(self, callout):
        client = callout.client
        current = self._redis_clients.get(callout.base)
        if callout.base not in self.clusters or current is not client \
                or callout.generation != client.generation:
            # The connection it was written on was closed (a re-init, a cluster
            # update or removal): RawClientImpl::onEvent fails every pending request.
            self._redis_failed(callout, "connection closed before the reply")
            return
        wait = callout.flush_at - self.monotonic()
        if wait > 0 and self.redis_write_buffering:
            self.sleep(wait)  # still in Envoy's write buffer (see the module docstring)
        endpoints = self.clusters[callout.base]
        if not endpoints:
            self._redis_failed(callout, "no available host")
            return
        try:
            reply = client.send(endpoints[0], callout.query)
        except upstream.CalloutFailure as exc:
            self._redis_failed(callout, str(exc))
            return
        self._deliver_redis(callout, reply)

    def _redis_failed(self, callout, why):
        self.answered.append((callout, why))
        self._deliver_redis(callout, None)

    def _redis_client(self, base):
        """The Redis client of a base cluster on this worker, created on first use
        with the default config (ClusterEntry::redisAsyncClient())."""
        client = self._redis_clients.get(base)
        if client is None:
            client = self._redis_clients[base] = RedisAsyncClient()
        return client

    def _deliver_redis(self, callout, reply):
        """proxy_on_redis_call_response on the ROOT context: (token, 0, size)
        with the reply readable as buffer 9 during the callback only, or
        (token, 1, 0) for a failure."""
        callout.delivered_at = self.monotonic()
        if reply is not None:
            self.answered.append((callout, reply))
        self._redis_reply = reply
        try:
            status = REDIS_OK if reply is not None else REDIS_NETWORK_ERROR
            self._call("proxy_on_redis_call_response", ROOT_CONTEXT_ID, callout.token, status,
                       len(reply) if reply is not None else 0)
        finally:
            self._redis_reply = None
