"""Typed host calls. Each docstring says when the call may be made.

"Stream phase" means inside a callback of the HTTP context it concerns (or
after set_effective_context to it, as the dispatcher does for callouts).
"""

from . import abi, headers
from .abi import NotFound

# Log levels.
TRACE, DEBUG, INFO, WARN, ERROR, CRITICAL = range(6)
# Header map types.
REQUEST_HEADERS, REQUEST_TRAILERS, RESPONSE_HEADERS, RESPONSE_TRAILERS = 0, 1, 2, 3
HTTP_CALL_RESPONSE_HEADERS, HTTP_CALL_RESPONSE_TRAILERS = 6, 7
# Buffer types.
REQUEST_BODY, RESPONSE_BODY, HTTP_CALL_RESPONSE_BODY = 0, 1, 4
VM_CONFIGURATION, PLUGIN_CONFIGURATION, FOREIGN_CALL_DATA, REDIS_CALL_RESPONSE = 6, 7, 8, 9
# Stream types for continue_stream / close_stream.
STREAM_REQUEST, STREAM_RESPONSE = 0, 1
# Metric types.
COUNTER, GAUGE, HISTOGRAM = 0, 1, 2


def _b(text):
    return text if isinstance(text, bytes) else text.encode("utf-8")


# --- logging and time: any time -------------------------------------------------

def log(level, message):
    """Writes one line to the host's log (Envoy's `wasm` component). Any time."""
    abi.call("proxy_log", level, _b(message))


def log_level():
    """The host's current log level for this plugin. Any time."""
    return abi.call("proxy_get_log_level")


def now_ns():
    """Wall-clock time in nanoseconds since the epoch. Any time."""
    return abi.call("proxy_get_current_time_nanoseconds")


def set_tick_period_ms(period_ms):
    """Starts (or with 0 stops) the root context's on_tick timer. Root context only."""
    abi.call("proxy_set_tick_period_milliseconds", period_ms)


# --- headers: stream phase ------------------------------------------------------

def get_header_map(map_type):
    """All pairs of a header map as [(name, value)]. Stream phase, once the map exists."""
    return headers.decode(abi.call("proxy_get_header_map_pairs", map_type))


def set_header_map(map_type, pairs):
    """Replaces a whole header map. Stream phase, before the map is sent on."""
    abi.call("proxy_set_header_map_pairs", map_type, headers.encode(pairs))


def get_header(map_type, name):
    """One header's value, or None when absent. Stream phase. Envoy serves
    request headers only while the plugin holds the request (before it returns
    CONTINUE, or while paused); later it answers BadArgument (a HostError)."""
    try:
        return abi.call("proxy_get_header_map_value", map_type, _b(name)).decode("utf-8", "replace")
    except NotFound:
        return None


def replace_header(map_type, name, value):
    """Sets a header, replacing any existing value. Stream phase, before the map is sent."""
    abi.call("proxy_replace_header_map_value", map_type, _b(name), _b(value))


def add_header(map_type, name, value):
    """Adds a header value (keeps existing ones). Stream phase, before the map is sent."""
    abi.call("proxy_add_header_map_value", map_type, _b(name), _b(value))


def remove_header(map_type, name):
    """Removes a header. Stream phase, before the map is sent."""
    abi.call("proxy_remove_header_map_value", map_type, _b(name))


# --- buffers --------------------------------------------------------------------

def get_buffer(buffer_type, start=0, max_size=0xFFFFFFFF):
    """Bytes of a buffer: a body in its callback (what has arrived so far), the
    configuration in on_vm_start/on_configure, a callout's response in its callback."""
    try:
        return abi.call("proxy_get_buffer_bytes", buffer_type, start, max_size)
    except NotFound:
        return b""


def set_buffer(buffer_type, data, start=0, size=0xFFFFFFFF):
    """Replaces `size` bytes at `start` of a body. In that body's callback."""
    abi.call("proxy_set_buffer_bytes", buffer_type, start, size, data)


# --- properties -----------------------------------------------------------------

def get_property(path):
    """A host property (path as a list of segments, e.g. ["xds", "cluster_name"]),
    or None when the host does not have it. Stream phase for stream properties."""
    try:
        return abi.call("proxy_get_property", b"\0".join(_b(p) for p in path))
    except NotFound:
        return None


def set_property(path, value):
    """Sets a host property (filter state). Stream phase. In Envoy only a
    one-segment path reads back through get_property."""
    abi.call("proxy_set_property", b"\0".join(_b(p) for p in path), _b(value))


# --- stream control: stream phase -----------------------------------------------

def continue_stream(stream_type=STREAM_REQUEST):
    """Resumes a stream the plugin paused. Stream phase or after set_effective_context."""
    abi.call("proxy_continue_stream", stream_type)


def close_stream(stream_type=STREAM_REQUEST):
    """Resets a stream. Stream phase."""
    abi.call("proxy_close_stream", stream_type)


def send_local_response(status, body=b"", header_pairs=(), details="", grpc_status=-1):
    """Answers the client directly; the request goes no further. Stream phase,
    before response headers were sent."""
    abi.call("proxy_send_local_response", status, _b(details), _b(body),
             headers.encode(header_pairs), grpc_status)


def set_effective_context(context_id):
    """Makes later host calls act on `context_id`'s stream. Used in callouts."""
    abi.call("proxy_set_effective_context", context_id)


# --- callouts -------------------------------------------------------------------

def http_call(cluster, header_pairs, body=b"", trailer_pairs=(), timeout_ms=1000):
    """Starts an HTTP request to an Envoy cluster; returns its token. The answer
    comes to proxy_on_http_call_response. Any context after on_configure."""
    return abi.call("proxy_http_call", _b(cluster), headers.encode(header_pairs), _b(body),
                    headers.encode(trailer_pairs), timeout_ms)


# --- shared data and queues: any time after start -------------------------------

def get_shared_data(key):
    """(value, cas) for a process-wide key, or (None, 0) when absent."""
    try:
        return abi.call("proxy_get_shared_data", _b(key))
    except NotFound:
        return None, 0


def set_shared_data(key, value, cas=0):
    """Writes a process-wide key. With cas != 0 the write only succeeds if the key
    is unchanged since that cas was read; else raises CasMismatch."""
    abi.call("proxy_set_shared_data", _b(key), _b(value), cas)


def register_shared_queue(name):
    """Creates (or finds) this VM's queue `name`; returns its id. Root context."""
    return abi.call("proxy_register_shared_queue", _b(name))


def resolve_shared_queue(vm_id, name):
    """The id of a queue another VM registered, or None."""
    try:
        return abi.call("proxy_resolve_shared_queue", _b(vm_id), _b(name))
    except NotFound:
        return None


def enqueue_shared_queue(queue_id, data):
    """Appends to a queue; its owner gets proxy_on_queue_ready."""
    abi.call("proxy_enqueue_shared_queue", queue_id, _b(data))


def dequeue_shared_queue(queue_id):
    """The next item of a queue, or None when it is empty."""
    try:
        return abi.call("proxy_dequeue_shared_queue", queue_id)
    except abi.Empty:
        return None


# --- metrics: define in on_configure, update any time ---------------------------

def define_metric(metric_type, name):
    """Defines a counter, gauge or histogram; returns its id. Each call returns a
    new id (all ids of one name share the stat): define once in on_configure."""
    return abi.call("proxy_define_metric", metric_type, _b(name))


def increment_metric(metric_id, offset=1):
    """Adds `offset` (may be negative for gauges) to a metric."""
    abi.call("proxy_increment_metric", metric_id, offset)


def record_metric(metric_id, value):
    """Sets a gauge, or records a histogram sample."""
    abi.call("proxy_record_metric", metric_id, value)


def get_metric(metric_id):
    """A counter's or gauge's current value."""
    return abi.call("proxy_get_metric", metric_id)


def call_foreign_function(name, args=b""):
    """Calls a host extension function by name (e.g. Envoy's "clear_route_cache")."""
    return abi.call("proxy_call_foreign_function", _b(name), _b(args))


# --- Higress extensions: only where has_capability() says so -------------------

def has_capability(function):
    """True when the host offers a function, e.g. "proxy_redis_call" in Higress."""
    return abi.has(function)


def get_upstream_hosts():
    """[(address, info JSON)] of the route's upstream hosts. Higress, stream phase."""
    try:
        return headers.decode(abi.call("proxy_get_upstream_hosts"))
    except NotFound:
        return []


def set_upstream_override_host(address):
    """Pins this request to `address` ("ip:port"). Higress, request phase before
    the request is routed (pause in headers, call from body or a callout)."""
    abi.call("proxy_set_upstream_override_host", _b(address))


def redis_init(cluster, username, password, timeout_ms):
    """Opens the client for a Redis cluster. Higress, root context, on_configure."""
    abi.call("proxy_redis_init", _b(cluster), _b(username), _b(password), timeout_ms)


def redis_call(cluster, query):
    """Sends RESP bytes to a Redis cluster; returns the token the reply comes with."""
    return abi.call("proxy_redis_call", _b(cluster), query)
