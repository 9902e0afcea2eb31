"""Callouts: http_call and redis_call the plugin queued, performed FOR REAL by
run_callouts() and answered to the plugin the way Envoy / Higress do.

A mixin of HostEmulator (it uses the emulator's state and _call()).
"""

import time

from proxywasm import abi_table

from . import upstream
from .model import (ENVOY_LOCAL_REPLIES, OVERRIDE_HEADER, REDIS_NETWORK_ERROR, REDIS_OK,
                    ROOT_CONTEXT_ID, HeaderMap, to_bytes, parse_endpoint, to_str, split_redis_cluster)


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
        client = self._redis_client(callout.cluster)
        try:
            reply = client.call(callout.query)
        except upstream.CalloutFailure as exc:
            self.answered.append((callout, str(exc)))
            reply = None
        self._deliver_redis(callout, reply)

    def _redis_client(self, cluster):
        client = self._redis_clients.get(cluster)
        if client is None:
            base, db = split_redis_cluster(cluster)
            username, password, timeout_ms = self._redis_inits.get(cluster, ("", "", 1000))
            client = upstream.RedisClient(self.clusters[base][0], username, password, db,
                                          timeout_ms)
            self._redis_clients[cluster] = client
        return client

    def _deliver_redis(self, callout, reply):
        if reply is not None:
            self.answered.append((callout, reply))
        self._redis_reply = reply
        try:
            status = REDIS_OK if reply is not None else REDIS_NETWORK_ERROR
            self._call("proxy_on_redis_call_response", ROOT_CONTEXT_ID, callout.token, status,
                       len(reply) if reply is not None else 0)
        finally:
            self._redis_reply = None
