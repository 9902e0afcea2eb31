"""The test host's data model: ABI constants, header maps, streams, callouts.

Pure data and helpers shared by the emulator's parts (emulator.py, hostfunctions.py,
callouts.py); nothing here calls the plugin.
"""

import json

from proxywasm import abi_table, headers as header_codec

OK = abi_table.OK
NOT_FOUND = abi_table.NOT_FOUND
BAD_ARGUMENT = abi_table.BAD_ARGUMENT
UNIMPLEMENTED = abi_table.UNIMPLEMENTED
INTERNAL_FAILURE = abi_table.INTERNAL_FAILURE
INVALID_MEMORY_ACCESS = abi_table.INVALID_MEMORY_ACCESS

ROOT_CONTEXT_ID = 1

# Log levels, header map types, buffer types, stream types (proxy-wasm spec).
TRACE, DEBUG, INFO, WARN, ERROR, CRITICAL = range(6)
LEVEL_NAMES = ("trace", "debug", "info", "warn", "error", "critical")
REQUEST_HEADERS, REQUEST_TRAILERS, RESPONSE_HEADERS, RESPONSE_TRAILERS = 0, 1, 2, 3
GRPC_INITIAL_METADATA, GRPC_TRAILING_METADATA = 4, 5
HTTP_CALL_RESPONSE_HEADERS, HTTP_CALL_RESPONSE_TRAILERS = 6, 7
REQUEST_BODY, RESPONSE_BODY, DOWNSTREAM_DATA, UPSTREAM_DATA = 0, 1, 2, 3
HTTP_CALL_RESPONSE_BODY, GRPC_RECEIVE_BUFFER = 4, 5
VM_CONFIGURATION, PLUGIN_CONFIGURATION, FOREIGN_CALL_DATA, REDIS_CALL_RESPONSE = 6, 7, 8, 9
STREAM_REQUEST, STREAM_RESPONSE = 0, 1
# Actions.
CONTINUE, PAUSE = 0, 1
# proxy_on_redis_call_response status (Higress): RedisStatus in the cpp-sdk's
# proxy_wasm_enums.h has only these two; a timeout is a NetworkError too.
REDIS_OK, REDIS_NETWORK_ERROR = 0, 1
# Higress's Envoy Redis client (envoy/redis/async_client.h, AsyncClientConfig and
# the ConfigImpl a never-initialised client uses): op timeout 1000 ms, and a
# command is held in the connection's write buffer until that buffer reaches
# 1024 bytes or 3 ms passed (raw_client_impl.cc, RawClientImpl::makeRawRequest).
REDIS_DEFAULT_TIMEOUT_MS = 1000
REDIS_MAX_BUFFER_BEFORE_FLUSH = 1024
REDIS_BUFFER_FLUSH_TIMEOUT_MS = 3
# proxy-wasm-cpp-host include/proxy-wasm/wasm.h: CalloutType::RedisCall = 3,
# ids step by kCalloutIncrement 4 from 3, so the first Redis token is 7.
REDIS_FIRST_TOKEN, REDIS_TOKEN_STEP = 7, 4
# HTTP health checker, store_metrics (Higress): at most this much of the probe
# body becomes the host's metrics (StoreMetricsResponseBodyLimit in
# source/extensions/health_checkers/http/health_checker_impl.cc).
METRICS_BODY_LIMIT = 64 * 1024
# convertHealthStatusToString (source/extensions/common/wasm/context.cc): the
# coarse health, spelled exactly so.
HEALTH_STATUSES = ("Healthy", "Degraded", "Unhealthy")

OVERRIDE_HEADER = "x-gateway-destination-endpoint"
# What Envoy 1.40's router answers an http_call whose upstream gave no response
# (measured: delivered as a response with these 3 headers, not as a failure).
ENVOY_LOCAL_REPLIES = {
    "connect": (503, b"upstream connect error or disconnect/reset before headers. "
                     b"reset reason: remote connection failure"),
    "reset": (503, b"upstream connect error or disconnect/reset before headers. "
                   b"reset reason: connection termination"),
    "timeout": (504, b"upstream request timeout"),
}
U32 = 0xFFFFFFFF


def to_bytes(text):
    return text if isinstance(text, (bytes, bytearray)) else str(text).encode("utf-8")


def to_str(data):
    return bytes(data).decode("utf-8", "replace")


def property_path(path):
    """A property path as a tuple of str, from ("a", "b"), ["a", "b"] or the
    wire form b"a\\0b" (segments joined by NUL)."""
    if isinstance(path, (bytes, bytearray)):
        return tuple(to_str(p) for p in bytes(path).split(b"\0"))
    if isinstance(path, str):
        return tuple(path.split("\0"))
    return tuple(to_str(p) if isinstance(p, (bytes, bytearray)) else str(p) for p in path)


class HeaderMap:
    """An Envoy header map: ordered [key, value] byte pairs, keys lowercased."""

    def __init__(self, pairs=()):
        self.entries = [[to_bytes(k).lower(), to_bytes(v)] for k, v in pairs]

    def get(self, key):
        key = key.lower()
        for k, v in self.entries:
            if k == key:
                return v
        return None

    def add(self, key, value):
        self.entries.append([key.lower(), bytes(value)])

    def replace(self, key, value):
        key = key.lower()
        for entry in self.entries:
            if entry[0] == key:
                entry[1] = bytes(value)
                return
        self.entries.append([key, bytes(value)])

    def remove(self, key):
        key = key.lower()
        self.entries = [e for e in self.entries if e[0] != key]

    def set_all(self, pairs):
        self.entries = [[to_bytes(k).lower(), to_bytes(v)] for k, v in pairs]

    def byte_size(self):
        return sum(len(k) + len(v) for k, v in self.entries)

    def encode(self):
        return header_codec.encode([(k, v) for k, v in self.entries])

    def pairs(self):
        """[(name, value)] as str, for assertions."""
        return [(to_str(k), to_str(v)) for k, v in self.entries]

    def __len__(self):
        return len(self.entries)


class LocalResponse:
    """What proxy_send_local_response sent."""

    def __init__(self, status_code, details, body, header_pairs, grpc_status):
        self.status_code = status_code
        self.details = details
        self.body = body
        self.headers = header_pairs
        self.grpc_status = grpc_status

    def header(self, name):
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def __repr__(self):
        return (f"LocalResponse({self.status_code}, details={self.details!r}, "
                f"body={self.body!r}, headers={self.headers!r})")


class Stream:
    """Host-side state of one HTTP context."""

    def __init__(self, context_id):
        self.context_id = context_id
        self.maps = {}  # map type -> HeaderMap, once that phase arrived
        self.bodies = {REQUEST_BODY: bytearray(), RESPONSE_BODY: bytearray()}
        self.sent_bodies = {REQUEST_BODY: bytearray(), RESPONSE_BODY: bytearray()}
        self.body_actions = {REQUEST_BODY: CONTINUE, RESPONSE_BODY: CONTINUE}
        self.resumed_since_body = {REQUEST_BODY: False, RESPONSE_BODY: False}
        # What Envoy still points at (measured in 1.40): a map or body is
        # reachable in its own callback and stays so only while the plugin holds
        # it (a non-CONTINUE action), until proxy_continue_stream; in on_log the
        # request headers, response headers and response trailers are readable.
        self.live_maps = set()
        self.live_bodies = set()
        self.in_log = False
        self.actions = []           # (callback name, action)
        self.local_response = None
        self.continued = []         # stream types given to proxy_continue_stream
        self.closed = []            # stream types given to proxy_close_stream
        self.override_host = None   # Higress proxy_set_upstream_override_host
        self.properties = {}        # path tuple -> bytes, set by the test for this stream
        self.filter_state = {}      # what the plugin set: "wasm.<path>" in Envoy
        self.done = False


class PendingCallout:
    """An http_call or redis_call the plugin started, not yet answered."""

    def __init__(self, kind, token, cluster, context_id, **details):
        self.kind = kind             # "http" or "redis"
        self.token = token
        self.cluster = cluster
        self.context_id = context_id  # the (effective) context that made it
        self.__dict__.update(details)

    def __repr__(self):
        return f"<{self.kind} callout {self.token} to {self.cluster!r}>"


def parse_endpoint(value):
    if isinstance(value, str):
        host, _, port = value.strip().rpartition(":")
        return host.strip("[]"), int(port)
    host, port = value
    return host, int(port)


def parse_endpoints(value):
    """A cluster's endpoints from (host, port), "host:port", or a list of them."""
    if isinstance(value, str) or (isinstance(value, tuple) and len(value) == 2
                                  and isinstance(value[1], int)):
        return [parse_endpoint(value)]
    return [parse_endpoint(v) for v in value]


def higress_host_info(health_status="Healthy", metrics=b""):
    """One proxy_get_upstream_hosts value as Higress's Envoy builds it
    (Context::getUpstreamHosts, source/extensions/common/wasm/context.cc): a
    std::map<string, string> (so keys sorted) dumped by nlohmann json with
    dump(0) (newline between members, ": " after keys, no indent), "metrics"
    only when non-empty. `metrics` is the last health-probe body, cut at 64 KiB
    by the health checker; a cut inside a UTF-8 sequence makes nlohmann throw,
    and Envoy then answers {"error": "Failed to get host info"}."""
    if health_status not in HEALTH_STATUSES:
        raise ValueError(f"health_status must be one of {HEALTH_STATUSES}, not {health_status!r}")
    fields = {"health_status": health_status}
    body = to_bytes(metrics)[:METRICS_BODY_LIMIT]
    if body:
        try:
            fields["metrics"] = body.decode("utf-8")
        except UnicodeDecodeError:
            return '{"error": "Failed to get host info"}'
    # json.dumps(ensure_ascii=False) escapes exactly as nlohmann's dump_escaped
    # without ensure_ascii: \" \\ \b \f \n \r \t, other controls as \u00xx.
    members = [f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}"
               for k, v in sorted(fields.items())]
    return "{\n" + ",\n".join(members) + "\n}"


def redis_cluster_params(cluster):
    """"name?db=3&x=y" -> ("name", {"db": "3", "x": "y"}): Higress's Envoy uses the
    text before the first "?" as the cluster name and keeps the first value of
    each query key (Http::Utility::QueryParamsMulti::parseQueryString in
    Context::redisInit, source/extensions/common/wasm/context.cc)."""
    base, _, query = cluster.partition("?")
    params = {}
    for part in query.split("&") if query else ():
        if part:
            key, _, value = part.partition("=")
            params.setdefault(key, value)
    return base, params


def redis_buffer_param(params, key, default):
    """AsyncClientConfig::parseUint32FromParams (envoy/redis/async_client.h in
    Higress's Envoy): a uint32 from the init URL, the default when absent or invalid."""
    value = params.get(key, "")
    return int(value) if value.isdigit() and int(value) <= U32 else default
