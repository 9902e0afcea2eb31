"""The host functions: proxy-wasm ABI 0.2.1 as Envoy 1.40 provides it, and
Higress's extensions. Each overrides the stub generated from abi_table and
follows its Python-level convention: bytes in, `status` or `(status, *outs)` out.

A mixin of HostEmulator: host calls act on the context the emulator says is
current (`_stream()` is None in the root context).
"""

from proxywasm import headers as header_codec

from .model import (BAD_ARGUMENT, FOREIGN_CALL_DATA, HTTP_CALL_RESPONSE_BODY,
                    HTTP_CALL_RESPONSE_HEADERS, HTTP_CALL_RESPONSE_TRAILERS, INTERNAL_FAILURE,
                    LEVEL_NAMES, NOT_FOUND, OK, PLUGIN_CONFIGURATION, REDIS_CALL_RESPONSE,
                    REDIS_TOKEN_STEP, REQUEST_BODY, REQUEST_HEADERS, REQUEST_TRAILERS,
                    RESPONSE_BODY, RESPONSE_HEADERS, RESPONSE_TRAILERS, ROOT_CONTEXT_ID,
                    STREAM_REQUEST, STREAM_RESPONSE, U32, UNIMPLEMENTED, VM_CONFIGURATION,
                    LocalResponse, PendingCallout, property_path, redis_cluster_params, to_str)
from .shared import Metric
from .stubs import HostStubs

# The maps Envoy lets on_log read (its access-log copies).
LOG_MAPS = (REQUEST_HEADERS, RESPONSE_HEADERS, RESPONSE_TRAILERS)


class HostFunctions(HostStubs):
    """Every host function of both targets (the emulator offers a target's own)."""

    def proxy_log(self, level, message):
        text = to_str(message)
        if level >= self.log_level:
            self.logs.append((level, text))
            if self.echo_logs:
                print(f"[plugin {LEVEL_NAMES[level] if level < 6 else level}] {text}")
        return OK

    def proxy_get_log_level(self):
        return OK, self.log_level

    def proxy_get_current_time_nanoseconds(self):
        return OK, self.now_ns()

    def proxy_set_tick_period_milliseconds(self, period_ms):
        self.tick_period_ms = period_ms
        return OK

    def proxy_set_effective_context(self, context_id):
        if context_id not in self._live:
            return BAD_ARGUMENT
        self._effective = context_id
        return OK

    def proxy_done(self):
        self.done_calls += 1
        return OK

    def proxy_get_status(self):
        return OK, self._status[0], self._status[1]

    # --- properties ------------------------------------------------------------

    def proxy_get_property(self, path):
        """Envoy: the first path segment names a property or, failing that, the
        filter state "wasm.<segment>" a plugin set; a set value has no fields,
        so only a one-segment path reads it back."""
        path = property_path(path)
        stream = self._stream()
        value = None
        if stream is not None:
            value = stream.properties.get(path)
            if value is None and len(path) == 1:
                value = stream.filter_state.get(path[0])
        if value is None:
            value = self.properties.get(path)
        if value is None:
            return NOT_FOUND, b""
        return OK, value

    def proxy_set_property(self, path, value):
        """Envoy: sets filter state "wasm.<path>" (the whole path, NULs included)."""
        stream = self._stream()
        if stream is None:  # Envoy: no stream info outside a stream
            return NOT_FOUND
        stream.filter_state["\0".join(property_path(path))] = bytes(value)
        return OK

    # --- buffers ---------------------------------------------------------------

    def _buffer(self, buffer_type):
        """The bytes of a buffer now, or None when it does not exist."""
        if buffer_type in (REQUEST_BODY, RESPONSE_BODY):
            # Envoy answers an empty buffer (Ok) when it holds no body for the plugin.
            stream = self._stream()
            live = stream is not None and buffer_type in stream.live_bodies
            return stream.bodies[buffer_type] if live else b""
        if buffer_type == HTTP_CALL_RESPONSE_BODY:
            return self._http_response[1] if self._http_response is not None else None
        if buffer_type == VM_CONFIGURATION:
            return self.vm_configuration
        if buffer_type == PLUGIN_CONFIGURATION:
            return self.plugin_configuration if self._configuring else None
        if buffer_type == FOREIGN_CALL_DATA:
            return self._call_data
        if buffer_type == REDIS_CALL_RESPONSE and self.target == "higress":
            return self._redis_reply
        return None

    def proxy_get_buffer_bytes(self, buffer_type, start, max_size):
        data = self._buffer(buffer_type)
        if data is None:
            return NOT_FOUND, b""
        if start > len(data):
            return BAD_ARGUMENT, b""
        return OK, bytes(data[start:start + max_size])

    def proxy_get_buffer_status(self, buffer_type):
        data = self._buffer(buffer_type)
        if data is None:
            return NOT_FOUND, 0, 0
        return OK, len(data), 0

    def proxy_set_buffer_bytes(self, buffer_type, start, size, data):
        stream = self._stream()
        if buffer_type not in (REQUEST_BODY, RESPONSE_BODY):
            return NOT_FOUND if self._buffer(buffer_type) is None else BAD_ARGUMENT
        if stream is None or buffer_type not in stream.live_bodies:
            return BAD_ARGUMENT
        buffer = stream.bodies[buffer_type]
        # Envoy's Buffer::copyFrom: prepend, replace all, or append; nothing else.
        if start == 0 and size == 0:
            buffer[0:0] = data
        elif start == 0 and size >= len(buffer):
            buffer[:] = data
        elif start >= len(buffer):
            buffer += data
        else:
            return BAD_ARGUMENT
        return OK

    # --- header maps -----------------------------------------------------------

    def _map(self, map_type):
        """The HeaderMap of `map_type` now, or None when it does not exist."""
        if map_type in (HTTP_CALL_RESPONSE_HEADERS, HTTP_CALL_RESPONSE_TRAILERS):
            if self._http_response is None:
                return None
            return self._http_response[0 if map_type == HTTP_CALL_RESPONSE_HEADERS else 2]
        stream = self._stream()
        if stream is None:
            return None
        if map_type in stream.live_maps or (stream.in_log and map_type in LOG_MAPS):
            return stream.maps.get(map_type)
        return None

    def proxy_get_header_map_pairs(self, map_type):
        if map_type > HTTP_CALL_RESPONSE_TRAILERS:
            return BAD_ARGUMENT, b""
        header_map = self._map(map_type)
        return OK, header_map.encode() if header_map is not None else header_codec.encode([])

    def proxy_set_header_map_pairs(self, map_type, pairs):
        header_map = self._map(map_type)
        if header_map is None:
            return BAD_ARGUMENT
        header_map.set_all(header_codec.decode(pairs))
        self._route_changed(map_type)
        return OK

    def proxy_get_header_map_size(self, map_type):
        header_map = self._map(map_type)
        if header_map is None:
            return BAD_ARGUMENT, 0
        return OK, header_map.byte_size()

    def proxy_get_header_map_value(self, map_type, key):
        header_map = self._map(map_type)
        if header_map is None:
            return BAD_ARGUMENT, b""
        value = header_map.get(key)
        return (NOT_FOUND, b"") if value is None else (OK, value)

    def proxy_add_header_map_value(self, map_type, key, value):
        header_map = self._map(map_type)
        if header_map is None:
            return BAD_ARGUMENT
        header_map.add(key, value)
        self._route_changed(map_type)
        return OK

    def proxy_replace_header_map_value(self, map_type, key, value):
        header_map = self._map(map_type)
        if header_map is None:
            return BAD_ARGUMENT
        header_map.replace(key, value)
        self._route_changed(map_type)
        return OK

    def proxy_remove_header_map_value(self, map_type, key):
        header_map = self._map(map_type)
        if header_map is None:
            return BAD_ARGUMENT
        header_map.remove(key)
        self._route_changed(map_type)
        return OK

    def _route_changed(self, map_type):
        if map_type == REQUEST_HEADERS:
            self.route_cache_clears += 1  # Envoy clears the route cache on each change

    # --- stream control ----------------------------------------------------------

    def proxy_continue_stream(self, stream_type):
        if stream_type not in (STREAM_REQUEST, STREAM_RESPONSE):
            return BAD_ARGUMENT
        stream = self._stream()
        if stream is not None:  # Envoy: a no-op outside a stream
            stream.continued.append(stream_type)
            # The stream type numbers the body it lets go on (0 request, 1 response).
            stream.resumed_since_body[stream_type] = True
            # Envoy then drops its request-side pointers, whichever stream resumes.
            stream.live_maps -= {REQUEST_HEADERS, REQUEST_TRAILERS}
            stream.live_bodies.discard(REQUEST_BODY)
        return OK

    def proxy_close_stream(self, stream_type):
        if stream_type not in (STREAM_REQUEST, STREAM_RESPONSE):
            return BAD_ARGUMENT
        stream = self._stream()
        if stream is not None:
            stream.closed.append(stream_type)
        return OK

    def proxy_send_local_response(self, status_code, details, body, headers, grpc_status):
        stream = self._stream()
        if stream is None:
            return OK  # Envoy: no decoder callbacks, nothing happens
        if stream.local_response is not None:
            return BAD_ARGUMENT  # Envoy sends one local reply per stream
        stream.local_response = LocalResponse(status_code, to_str(details), bytes(body),
                                              header_codec.decode(headers), grpc_status)
        self._local_replies.append(stream.context_id)  # sent when the callback returns
        return OK

    # --- callouts ----------------------------------------------------------------

    def proxy_http_call(self, upstream_name, headers, body, trailers, timeout_ms):
        cluster = to_str(upstream_name)
        if cluster not in self.clusters or timeout_ms > 0x7FFFFFFF:
            return BAD_ARGUMENT, 0  # Envoy: unknown cluster
        header_pairs = header_codec.decode(headers)
        names = {k.lower() for k, _ in header_pairs}
        if not {":path", ":method"} <= names or not names & {":authority", "host"}:
            return BAD_ARGUMENT, 0  # Envoy checks :path, :method and host
        header_pairs = [(":authority" if k.lower() == "host" else k.lower(), v)
                        for k, v in header_pairs]
        token = self._next_http_token
        self._next_http_token = (self._next_http_token + 1) & U32 or 1
        self.pending.append(PendingCallout(
            "http", token, cluster, self._context_id(), headers=header_pairs,
            body=bytes(body), trailers=header_codec.decode(trailers), timeout_ms=timeout_ms))
        return OK, token

    def proxy_call_foreign_function(self, name, args):
        function = self.foreign_functions.get(to_str(name))
        if function is None:
            return NOT_FOUND, b""
        try:
            return OK, function(bytes(args))
        except Exception:  # noqa: BLE001 - a bad argument, as Envoy reports it
            return BAD_ARGUMENT, b""

    # --- shared data and queues (process-wide, in self.shared) -----------------

    def proxy_get_shared_data(self, key):
        return self.shared.get(self.vm_id, bytes(key))

    def proxy_set_shared_data(self, key, value, cas):
        return self.shared.set(self.vm_id, bytes(key), value, cas)

    def proxy_register_shared_queue(self, name):
        root = ROOT_CONTEXT_ID  # the queue belongs to the calling context's root
        return OK, self.shared.register_queue(self.vm_id, bytes(name), self, root)

    def proxy_resolve_shared_queue(self, vm_id, name):
        queue_id = self.shared.resolve_queue(to_str(vm_id), bytes(name))
        return (NOT_FOUND, 0) if queue_id is None else (OK, queue_id)

    def proxy_enqueue_shared_queue(self, queue_id, data):
        return self.shared.enqueue(queue_id, data)

    def proxy_dequeue_shared_queue(self, queue_id):
        return self.shared.dequeue(queue_id)

    # --- metrics -----------------------------------------------------------------

    def proxy_define_metric(self, metric_type, name):
        """Like Envoy: every definition gets a new id, and all ids of one name
        reach the same process-wide stat (its value survives redefinition)."""
        if metric_type not in (Metric.COUNTER, Metric.GAUGE, Metric.HISTOGRAM):
            return BAD_ARGUMENT, 0
        metric = self.shared.metric(metric_type, to_str(name))
        if metric.type != metric_type:
            return BAD_ARGUMENT, 0
        metric_id = (self._next_metric << 2) | metric_type  # Envoy keeps the type in the id
        self._next_metric += 1
        self._metric_ids[metric_id] = metric
        return OK, metric_id

    def proxy_increment_metric(self, metric_id, offset):
        metric = self._metric_ids.get(metric_id)
        if metric is None:
            return NOT_FOUND
        if metric.type == Metric.COUNTER:
            if offset <= 0:
                return BAD_ARGUMENT  # Envoy: counters only go up
            metric.value += offset
        elif metric.type == Metric.GAUGE:
            metric.value += offset
        else:
            return BAD_ARGUMENT
        return OK

    def proxy_record_metric(self, metric_id, value):
        metric = self._metric_ids.get(metric_id)
        if metric is None:
            return NOT_FOUND
        if metric.type == Metric.COUNTER:
            metric.value += value
        elif metric.type == Metric.GAUGE:
            metric.value = value
        else:
            metric.samples.append(value)
        return OK

    def proxy_get_metric(self, metric_id):
        metric = self._metric_ids.get(metric_id)
        if metric is None:
            return NOT_FOUND, 0
        if metric.type == Metric.HISTOGRAM:
            return BAD_ARGUMENT, 0
        return OK, metric.value & 0xFFFFFFFFFFFFFFFF

    # ======================================================================
    # Host functions: Higress extensions (offered only with target="higress")
    # ======================================================================

    # Sources: Context::getUpstreamHosts / setUpstreamOverrideHost / redisInit /
    # redisCall under #if defined(HIGRESS) in Higress's Envoy
    # source/extensions/common/wasm/context.cc, and their wasm boundary in
    # higress-group/proxy-wasm-cpp-host src/exports.cc. A function named in
    # `self.unimplemented` answers Unimplemented (12), as cpp-host's default
    # ContextBase body does on a host that does not override it (an older Higress).

    def proxy_get_upstream_hosts(self):
        """The route's cluster hosts, every priority, unhealthy ones included:
        pairs address -> host info JSON (model.higress_host_info). Always Ok:
        an empty list with no stream (the root context has no decoder
        callbacks) or no host list; exports.cc then writes ptr 0, size 0."""
        if "proxy_get_upstream_hosts" in self.unimplemented:
            return UNIMPLEMENTED, b""
        if self._stream() is None or not self.upstream_hosts:
            return OK, b""
        return OK, header_codec.encode(self.upstream_hosts)

    def proxy_set_upstream_override_host(self, address):
        """exports.cc ignores what setUpstreamOverrideHost answers and returns Ok;
        Envoy sets it non-strict (an unknown or unhealthy address lets the
        cluster's LB pick instead) and does nothing outside a stream."""
        if "proxy_set_upstream_override_host" in self.unimplemented:
            return UNIMPLEMENTED
        stream = self._stream()
        if stream is not None:
            stream.override_host = to_str(address)
        return OK

    def proxy_redis_init(self, cluster, username, password, timeout_ms):
        """BadArgument when the base cluster (before "?") is not on this worker
        (yet: CDS may deliver it later); else (re)configures the base cluster's
        one client and answers Ok (see callouts.RedisAsyncClient)."""
        if "proxy_redis_init" in self.unimplemented:
            return UNIMPLEMENTED
        base, params = redis_cluster_params(to_str(cluster))
        if base not in self.clusters:
            return BAD_ARGUMENT
        self._redis_client(base).initialize(to_str(username), to_str(password), timeout_ms,
                                            params)
        return OK

    def proxy_redis_call(self, cluster, query):
        """BadArgument for a base cluster not on this worker; no init needed (the
        client's default config then applies). The query bytes go out as given."""
        if "proxy_redis_call" in self.unimplemented:
            return UNIMPLEMENTED, 0
        base, _ = redis_cluster_params(to_str(cluster))
        if base not in self.clusters:
            return BAD_ARGUMENT, 0
        if not self.clusters[base]:
            return INTERNAL_FAILURE, 0  # AsyncClientImpl::send: "no available host"
        token = self._next_redis_token
        self._next_redis_token = (token + REDIS_TOKEN_STEP) & U32
        callout = PendingCallout("redis", token, to_str(cluster), self._context_id(),
                                 query=bytes(query), base=base, client=self._redis_client(base),
                                 called_at=self.monotonic())
        callout.client.hold(callout, callout.called_at)
        self.pending.append(callout)
        return OK, token
