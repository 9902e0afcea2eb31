"""The semantic test host: proxy-wasm ABI 0.2.1 as Envoy provides it, plus
Higress's extensions, driven by tests the way proxy-wasm-go-sdk's proxytest is.

    host = HostEmulator(target="envoy", clusters={"backend": ("127.0.0.1", 8080)})
    host.attach(NativePlugin(host, "ai_load_balancer.main"))   # or WasmPlugin
    assert host.start_plugin(b'{"lb_policy": "header"}')
    cid = host.init_http_context()
    action = host.call_on_request_headers(cid, [(":path", "/"), ...], False)
    host.complete_http_context(cid)

Host functions are the `proxy_*` methods (overriding the stubs generated from
abi_table): bytes in, `status` or `(status, *outs)` out, exactly the Python-level
convention of the shim's `_proxywasm_host` module. The transports call them
(directly in native mode, through wasm memory in wasm mode). Everything else is
the driver API for tests.

Semantics follow Envoy's wasm Context (source/extensions/common/wasm/context.cc)
and proxy-wasm-cpp-host: header keys are lowercased; replace changes the first
entry; maps that do not exist in the current phase answer BadArgument (reads of
pairs answer an empty map); the HTTP call response is the root context's and is
readable from any context while its callback runs; callout answers go to the
root context; a pending callout runs FOR REAL only in run_callouts().
"""

import json
import time
import zlib

from proxywasm import abi_table

from .callouts import Callouts
from .hostfunctions import HostFunctions
from .model import (CONTINUE, CRITICAL, DEBUG, ERROR, INFO, LEVEL_NAMES, OK, REQUEST_BODY,
                    REQUEST_HEADERS, REQUEST_TRAILERS, RESPONSE_BODY, RESPONSE_HEADERS,
                    RESPONSE_TRAILERS, ROOT_CONTEXT_ID, STREAM_REQUEST, STREAM_RESPONSE, TRACE,
                    WARN, REDIS_FIRST_TOKEN, HeaderMap, LocalResponse, PendingCallout, Stream,
                    higress_host_info, parse_endpoints, property_path, to_bytes, to_str)
from .shared import Metric, SharedStore
from .stubs import target_functions

__all__ = ["HostEmulator", "LocalResponse", "PendingCallout", "HeaderMap", "ROOT_CONTEXT_ID"]


class HostEmulator(HostFunctions, Callouts):
    """One plugin VM in one host process. See the module docstring."""

    def __init__(self, target="envoy", clusters=None, shared=None, vm_id="",
                 plugin_name="ai-load-balancer", log_level=TRACE, body_buffering="envoy",
                 local_reply_callbacks=True, echo_logs=False, unimplemented=(),
                 redis_write_buffering=True):
        if target not in abi_table.TARGETS:
            raise ValueError(f"unknown target {target!r}")
        self.target = target
        # cluster name -> [(host, port), ...]: its endpoints, for http_call / redis_call
        self.clusters = {name: parse_endpoints(value) for name, value in (clusters or {}).items()}
        self._round_robin = {}
        self.shared = shared if shared is not None else SharedStore()
        self.vm_id = vm_id
        self.log_level = log_level
        # "envoy": a body chunk the plugin let through (CONTINUE) is gone from the
        # buffer the next body callback sees, as in Envoy; "all": the buffer is
        # always all body so far.
        self.body_buffering = body_buffering
        # Envoy sends a local reply after the callback that asked for it returns,
        # through the encoder filters: this plugin's on_response_headers (and
        # on_response_body) see it. False: only record it.
        self.local_reply_callbacks = local_reply_callbacks
        self.echo_logs = echo_logs
        # Host functions of the target that answer Unimplemented (12) here, e.g.
        # {"proxy_get_upstream_hosts"} for a Higress older than that call.
        self.unimplemented = set(unimplemented)
        # Hold small Redis commands in the write buffer as Higress's Envoy does
        # (see callouts.py); False sends them at once (faster, less faithful).
        self.redis_write_buffering = redis_write_buffering
        self.monotonic = time.monotonic  # the clock of Redis write buffering
        self.sleep = time.sleep
        self.plugin = None  # the transport: native or wasm
        self.logs = []      # (level, message)
        self.properties = {
            ("plugin_name",): to_bytes(plugin_name), ("plugin_root_id",): b"",
            ("plugin_vm_id",): to_bytes(vm_id),
        }
        self.vm_configuration = b""
        self.plugin_configuration = b""
        self.tick_period_ms = 0
        self.upstream_hosts = []  # Higress: [(address, info JSON)] of the route's cluster
        self.foreign_functions = {
            "compress": zlib.compress, "uncompress": zlib.decompress,
            "clear_route_cache": self._clear_route_cache,
            "set_envoy_filter_state": lambda args: b"",
        }
        self.route_cache_clears = 0
        self.now_ns = time.time_ns
        self.default_http_timeout_s = 30.0  # for http_call timeout 0 (Envoy: none)
        self.done_calls = 0
        self.root_started = False
        self.streams = {}
        self._next_context_id = ROOT_CONTEXT_ID + 1
        self._live = set()           # context ids created and not yet deleted
        self._current = 0            # context of the running callback
        self._effective = 0          # set by proxy_set_effective_context
        self._depth = 0
        self._configuring = False
        self._http_response = None   # (HeaderMap headers, body, HeaderMap trailers)
        self._redis_reply = None
        self._call_data = None
        self._status = (OK, b"")     # what proxy_get_status reports
        self._metric_ids = {}        # metric id -> Metric
        self._next_metric = 1
        self._next_http_token = 1
        self._next_redis_token = REDIS_FIRST_TOKEN
        self.pending = []            # PendingCallout
        self.answered = []           # (PendingCallout, outcome) in delivery order
        self._ready_queues = []      # (root id, queue id) waiting for delivery
        self._local_replies = []     # streams whose local reply goes out after the callback
        self._redis_clients = {}     # base cluster -> callouts.RedisAsyncClient

    # ======================================================================
    # Wiring
    # ======================================================================

    def attach(self, plugin):
        """Connects the transport (NativePlugin or WasmPlugin) that runs the plugin."""
        self.plugin = plugin
        return self

    def host_functions(self):
        """{name: bound method} of the host functions this target offers."""
        return {name: getattr(self, name) for name in target_functions(self.target)}

    def close(self):
        for client in self._redis_clients.values():
            client.close()
        self._redis_clients.clear()
        if self.plugin is not None and hasattr(self.plugin, "close"):
            self.plugin.close()

    def _call(self, callback, context_id, *args):
        """Runs one callback into the plugin with `context_id` current."""
        saved = self._current, self._effective
        self._current, self._effective = context_id, 0
        self._depth += 1
        try:
            return self.plugin.call(callback, context_id, *args)
        finally:
            self._depth -= 1
            self._current, self._effective = saved
            if self._depth == 0:
                if self._ready_queues:
                    self._deliver_ready_queues()
                while self._local_replies:
                    self._send_local_reply(self._local_replies.pop(0))

    def _context_id(self):
        return self._effective or self._current

    def _stream(self):
        """The Stream host calls act on now, or None in the root context."""
        return self.streams.get(self._context_id())

    # ======================================================================
    # Driver API (proxytest-style)
    # ======================================================================

    def start_plugin(self, configuration=b"", vm_configuration=b""):
        """Creates the root context, starts the VM and configures the plugin.
        Returns what proxy_on_configure answered (False also when the VM did
        not start). `configuration` may be bytes, str or a dict (sent as JSON)."""
        if isinstance(configuration, dict):
            configuration = json.dumps(configuration)
        self.plugin_configuration = to_bytes(configuration)
        self.vm_configuration = to_bytes(vm_configuration)
        if not self.root_started:
            self._call("proxy_on_context_create", ROOT_CONTEXT_ID, 0)
            self._live.add(ROOT_CONTEXT_ID)
            self.root_started = True
            if not self._call("proxy_on_vm_start", ROOT_CONTEXT_ID, len(self.vm_configuration)):
                return False
        self._configuring = True
        try:
            result = self._call("proxy_on_configure", ROOT_CONTEXT_ID,
                                len(self.plugin_configuration))
        finally:
            self._configuring = False
        return bool(result)

    def init_http_context(self):
        """Creates an HTTP context (a new stream); returns its id."""
        context_id = self._next_context_id
        self._next_context_id += 1
        self.streams[context_id] = Stream(context_id)
        self._live.add(context_id)
        self._call("proxy_on_context_create", context_id, ROOT_CONTEXT_ID)
        return context_id

    def _stream_of(self, context_id):
        try:
            return self.streams[context_id]
        except KeyError:
            raise KeyError(f"no HTTP context {context_id}: use init_http_context()") from None

    def _headers_phase(self, callback, context_id, map_type, header_pairs, *args):
        stream = self._stream_of(context_id)
        stream.maps[map_type] = HeaderMap(header_pairs)
        stream.live_maps.add(map_type)
        action = self._call(callback, context_id, len(stream.maps[map_type]), *args)
        stream.actions.append((callback, action))
        if action == CONTINUE:  # Envoy lets go of the map
            stream.live_maps.discard(map_type)
        return action

    def call_on_request_headers(self, context_id, header_pairs, end_of_stream=False):
        return self._headers_phase("proxy_on_request_headers", context_id, REQUEST_HEADERS,
                                   header_pairs, int(bool(end_of_stream)))

    def call_on_response_headers(self, context_id, header_pairs, end_of_stream=False):
        return self._headers_phase("proxy_on_response_headers", context_id, RESPONSE_HEADERS,
                                   header_pairs, int(bool(end_of_stream)))

    def call_on_request_trailers(self, context_id, trailer_pairs):
        return self._headers_phase("proxy_on_request_trailers", context_id, REQUEST_TRAILERS,
                                   trailer_pairs)

    def call_on_response_trailers(self, context_id, trailer_pairs):
        return self._headers_phase("proxy_on_response_trailers", context_id, RESPONSE_TRAILERS,
                                   trailer_pairs)

    def _body_phase(self, callback, context_id, buffer_type, data, end_of_stream):
        stream = self._stream_of(context_id)
        buffer = stream.bodies[buffer_type]
        if self.body_buffering == "envoy":
            # What the plugin let through went on: by returning CONTINUE, or by
            # resuming the stream (proxy_continue_stream) after buffering.
            if stream.body_actions[buffer_type] == CONTINUE:
                buffer.clear()
            elif stream.resumed_since_body[buffer_type]:
                stream.sent_bodies[buffer_type] += buffer
                buffer.clear()
        stream.resumed_since_body[buffer_type] = False
        buffer += to_bytes(data)
        stream.live_bodies.add(buffer_type)
        action = self._call(callback, context_id, len(buffer), int(bool(end_of_stream)))
        stream.actions.append((callback, action))
        stream.body_actions[buffer_type] = action
        if action == CONTINUE:
            stream.sent_bodies[buffer_type] += buffer
            stream.live_bodies.discard(buffer_type)
        return action

    def call_on_request_body(self, context_id, body, end_of_stream=True):
        """Delivers a body chunk; the plugin's buffer holds everything not yet
        let through (with body_buffering="all": all body so far)."""
        return self._body_phase("proxy_on_request_body", context_id, REQUEST_BODY, body,
                                end_of_stream)

    def call_on_response_body(self, context_id, body, end_of_stream=True):
        return self._body_phase("proxy_on_response_body", context_id, RESPONSE_BODY, body,
                                end_of_stream)

    def complete_http_context(self, context_id):
        """Ends a stream: proxy_on_done, proxy_on_log, proxy_on_delete."""
        stream = self._stream_of(context_id)
        self._call("proxy_on_done", context_id)
        stream.in_log = True
        try:
            self._call("proxy_on_log", context_id)
        finally:
            stream.in_log = False
        self._call("proxy_on_delete", context_id)
        stream.done = True
        self._live.discard(context_id)

    def stop_plugin(self):
        """The configuration goes away: proxy_on_done then proxy_on_delete of the root."""
        if self.root_started:
            self._call("proxy_on_done", ROOT_CONTEXT_ID)
            self._call("proxy_on_delete", ROOT_CONTEXT_ID)
            self._live.discard(ROOT_CONTEXT_ID)
            self.root_started = False

    def tick(self):
        """Fires the root context's timer once (proxy_on_tick)."""
        self._call("proxy_on_tick", ROOT_CONTEXT_ID)

    def call_on_foreign_function(self, function_id, data=b""):
        self._call_data = to_bytes(data)
        try:
            self._call("proxy_on_foreign_function", ROOT_CONTEXT_ID, function_id, len(data))
        finally:
            self._call_data = None

    # --- what the plugin did -------------------------------------------------

    def get_sent_local_response(self, context_id):
        """The LocalResponse the plugin sent on a stream, or None."""
        return self._stream_of(context_id).local_response

    def _map_pairs(self, context_id, map_type):
        header_map = self._stream_of(context_id).maps.get(map_type)
        return header_map.pairs() if header_map is not None else None

    def get_current_request_headers(self, context_id):
        """The request headers as the plugin left them: [(name, value)]."""
        return self._map_pairs(context_id, REQUEST_HEADERS)

    def get_current_response_headers(self, context_id):
        return self._map_pairs(context_id, RESPONSE_HEADERS)

    def get_current_request_trailers(self, context_id):
        return self._map_pairs(context_id, REQUEST_TRAILERS)

    def get_current_response_trailers(self, context_id):
        return self._map_pairs(context_id, RESPONSE_TRAILERS)

    def get_current_request_body(self, context_id):
        """All request body: what was let through plus what is still buffered."""
        stream = self._stream_of(context_id)
        return self._body_so_far(stream, REQUEST_BODY)

    def get_current_response_body(self, context_id):
        stream = self._stream_of(context_id)
        return self._body_so_far(stream, RESPONSE_BODY)

    def _body_so_far(self, stream, buffer_type):
        if self.body_buffering == "all":
            return bytes(stream.bodies[buffer_type])
        pending = (b"" if stream.body_actions[buffer_type] == CONTINUE
                   else stream.bodies[buffer_type])
        return bytes(stream.sent_bodies[buffer_type] + pending)

    def get_request_header(self, context_id, name):
        header_map = self._stream_of(context_id).maps.get(REQUEST_HEADERS)
        value = header_map.get(to_bytes(name)) if header_map is not None else None
        return None if value is None else to_str(value)

    def get_response_header(self, context_id, name):
        header_map = self._stream_of(context_id).maps.get(RESPONSE_HEADERS)
        value = header_map.get(to_bytes(name)) if header_map is not None else None
        return None if value is None else to_str(value)

    def is_request_resumed(self, context_id):
        """True when the plugin called proxy_continue_stream for the request."""
        return STREAM_REQUEST in self._stream_of(context_id).continued

    def is_response_resumed(self, context_id):
        return STREAM_RESPONSE in self._stream_of(context_id).continued

    def get_continue_records(self, context_id):
        """Stream types proxy_continue_stream was called with, in order."""
        return list(self._stream_of(context_id).continued)

    def get_close_records(self, context_id):
        return list(self._stream_of(context_id).closed)

    def get_actions(self, context_id):
        """[(callback, action)] the plugin returned on a stream, in order."""
        return list(self._stream_of(context_id).actions)

    def get_override_host(self, context_id):
        """The address the plugin pinned with proxy_set_upstream_override_host (Higress)."""
        return self._stream_of(context_id).override_host

    def set_upstream_hosts(self, hosts):
        """The route's cluster hosts proxy_get_upstream_hosts lists (Higress), as
        [(address, info)]. info is a dict {"health_status": "Healthy" |
        "Degraded" | "Unhealthy" (default Healthy), "metrics": the last health
        probe body (str or bytes; cut at 64 KiB)}, turned into the JSON Higress's
        Envoy writes (model.higress_host_info); or a str, passed as is (to feed
        the plugin a value Envoy would not write)."""
        entries = []
        for address, info in hosts:
            if not isinstance(info, str):
                unknown = set(info) - {"health_status", "metrics"}
                if unknown:
                    raise ValueError(f"Higress host info has no {sorted(unknown)}")
                info = higress_host_info(**info)
            entries.append((address, info))
        self.upstream_hosts = entries

    # --- clusters (CDS) -----------------------------------------------------------

    def add_cluster(self, name, address):
        """CDS delivers a cluster to this worker (e.g. the Redis cluster after the
        plugin was configured): proxy_redis_init / _call / http_call find it from now."""
        self.clusters[name] = parse_endpoints(address)

    def update_cluster(self, name, address=None):
        """CDS updates a cluster: Envoy builds a new ClusterEntry, whose Redis
        client is new and NOT initialised (no AUTH, no SELECT) until the plugin
        calls proxy_redis_init again; the old one's connections close and its
        pending calls fail (cluster_manager_impl.cc, ClusterEntry::redisAsyncClient;
        the cause of NOAUTH after a config change, higress #3560)."""
        if address is not None:
            self.clusters[name] = parse_endpoints(address)
        elif name not in self.clusters:
            raise KeyError(f"no cluster {name!r}")
        client = self._redis_clients.pop(name, None)
        if client is not None:
            client.close()

    def remove_cluster(self, name):
        """CDS removes a cluster: calls to it answer BadArgument again."""
        self.clusters.pop(name, None)
        client = self._redis_clients.pop(name, None)
        if client is not None:
            client.close()

    def redis_client_state(self, cluster):
        """(initialised, (username, password, timeout_ms, params), inits that took
        effect) of a base cluster's Redis client on this worker, or None."""
        client = self._redis_clients.get(cluster)
        if client is None:
            return None
        return client.initialized, client.config, client.inits

    def set_property(self, path, value, context_id=None):
        """Sets a host property, for all streams or one (`context_id`)."""
        target = self.properties if context_id is None else self._stream_of(context_id).properties
        target[property_path(path)] = to_bytes(value)

    def get_property(self, path, context_id=None):
        """A property the test set (for the stream first, then host-wide)."""
        path = property_path(path)
        if context_id is not None:
            value = self._stream_of(context_id).properties.get(path)
            if value is not None:
                return value
        return self.properties.get(path)

    def get_filter_state(self, context_id, path):
        """What the plugin stored with proxy_set_property on a stream, or None."""
        return self._stream_of(context_id).filter_state.get("\0".join(property_path(path)))

    def get_logs(self, level=None):
        """Messages the plugin logged (at `level` only, when given), in order."""
        return [m for lvl, m in self.logs if level is None or lvl == level]

    def get_trace_logs(self):
        return self.get_logs(TRACE)

    def get_debug_logs(self):
        return self.get_logs(DEBUG)

    def get_info_logs(self):
        return self.get_logs(INFO)

    def get_warn_logs(self):
        return self.get_logs(WARN)

    def get_error_logs(self):
        return self.get_logs(ERROR)

    def get_critical_logs(self):
        return self.get_logs(CRITICAL)

    def get_stdio(self):
        """(stdout, stderr) the wasm module wrote through WASI (native: empty).
        The SDK routes print() to proxy_log, so this holds what CPython itself
        wrote before the SDK was up (e.g. an import error's traceback)."""
        read = getattr(self.plugin, "read_stdio", None)
        return read() if read is not None else ("", "")

    def logs_text(self):
        """All log lines as one text, for assertion messages."""
        return "\n".join(f"[{LEVEL_NAMES[lvl] if lvl < 6 else lvl}] {m}" for lvl, m in self.logs)

    def get_metric(self, name):
        """The Metric object `name` (process-wide, shared between VMs), or None."""
        return self.shared.metrics.get(name)

    def get_counter_metric(self, name):
        return self._metric_value(name, Metric.COUNTER)

    def get_gauge_metric(self, name):
        return self._metric_value(name, Metric.GAUGE)

    def get_histogram_metric(self, name):
        return list(self._metric_of_type(name, Metric.HISTOGRAM).samples)

    def _metric_of_type(self, name, metric_type):
        metric = self.shared.metrics.get(name)
        if metric is None or metric.type != metric_type:
            raise KeyError(f"no {('counter', 'gauge', 'histogram')[metric_type]} named {name!r}")
        return metric

    def _metric_value(self, name, metric_type):
        return self._metric_of_type(name, metric_type).value

    # --- shared queues: proxy_on_queue_ready after the running callback --------

    def queue_ready(self, root_context_id, queue_id):
        """Called by the SharedStore when a queue this VM registered gets data."""
        self._ready_queues.append((root_context_id, queue_id))
        if self._depth == 0:
            self._deliver_ready_queues()

    def _deliver_ready_queues(self):
        while self._ready_queues:
            root, queue_id = self._ready_queues.pop(0)
            if root in self._live:
                self._call("proxy_on_queue_ready", root, queue_id)

    def _send_local_reply(self, context_id):
        stream = self.streams[context_id]
        local = stream.local_response
        header_pairs = [(":status", str(local.status_code)), *local.headers]
        if local.body:
            header_pairs += [("content-length", str(len(local.body))),
                             ("content-type", "text/plain")]
        if RESPONSE_HEADERS in stream.maps:
            return  # response headers already went out: Envoy can only reset the stream
        if not self.local_reply_callbacks or context_id not in self._live:
            stream.maps[RESPONSE_HEADERS] = HeaderMap(header_pairs)
            stream.sent_bodies[RESPONSE_BODY] += local.body
            return
        self.call_on_response_headers(context_id, header_pairs, end_of_stream=not local.body)
        if local.body:
            self.call_on_response_body(context_id, local.body, end_of_stream=True)

    def _clear_route_cache(self, args):
        self.route_cache_clears += 1
        return b""
