"""The one table of the raw proxy-wasm ABI this project speaks.

Everything that has to agree on the ABI is generated from this module:
  - the C shim's wasm imports, the `_proxywasm_host` builtin module wrapping them,
    and the callback exports (build/gen_shim.py);
  - the Python binding (proxywasm/abi.py checks statuses by these names);
  - the test host's stubs and its wasmtime marshalling (tests/host/).

Parameter kinds, seen from the plugin:
  u32 i32 u64 i64  an integer passed by value
  in               bytes the plugin hands to the host (pointer + size)
  out              bytes the host returns (pointer-to-pointer + pointer-to-size;
                   the host allocates them with the module's malloc)
  out_u32 out_u64  an integer the host writes through a pointer

At the Python level every host function takes the non-out parameters in order
and returns the status alone when it has no outs, else (status, *outs).

This module is pure data: it must stay importable by the build tool, the tests
and the plugin alike.
"""

ENVOY = "envoy"      # provided by stock Envoy 1.40 (proxy-wasm ABI 0.2.1)
HIGRESS = "higress"  # Higress's extensions (higress-group/proxy-wasm-go-sdk)

TARGETS = {
    # target name -> (host function sets it imports, ABI version marker it exports)
    "envoy": ((ENVOY,), "proxy_abi_version_0_2_1"),
    "higress": ((ENVOY, HIGRESS), "proxy_abi_version_0_2_100"),
}

# Status codes returned by host functions (proxy-wasm spec, WasmResult).
OK = 0
NOT_FOUND = 1
BAD_ARGUMENT = 2
SERIALIZATION_FAILURE = 3
PARSE_FAILURE = 4
BAD_EXPRESSION = 5
INVALID_MEMORY_ACCESS = 6
EMPTY = 7
CAS_MISMATCH = 8
RESULT_MISMATCH = 9
INTERNAL_FAILURE = 10
BROKEN_CONNECTION = 11
UNIMPLEMENTED = 12

STATUS_NAMES = {
    OK: "Ok", NOT_FOUND: "NotFound", BAD_ARGUMENT: "BadArgument",
    SERIALIZATION_FAILURE: "SerializationFailure", PARSE_FAILURE: "ParseFailure",
    BAD_EXPRESSION: "BadExpression", INVALID_MEMORY_ACCESS: "InvalidMemoryAccess",
    EMPTY: "Empty", CAS_MISMATCH: "CasMismatch", RESULT_MISMATCH: "ResultMismatch",
    INTERNAL_FAILURE: "InternalFailure", BROKEN_CONNECTION: "BrokenConnection",
    UNIMPLEMENTED: "Unimplemented",
}

# (name, host set, ((kind, param name), ...))
HOST_FUNCTIONS = (
    ("proxy_log", ENVOY, (("u32", "level"), ("in", "message"))),
    ("proxy_get_log_level", ENVOY, (("out_u32", "level"),)),
    ("proxy_get_current_time_nanoseconds", ENVOY, (("out_u64", "nanos"),)),
    ("proxy_set_tick_period_milliseconds", ENVOY, (("u32", "period_ms"),)),
    ("proxy_set_effective_context", ENVOY, (("u32", "context_id"),)),
    ("proxy_done", ENVOY, ()),
    ("proxy_get_status", ENVOY, (("out_u32", "code"), ("out", "message"))),
    ("proxy_get_property", ENVOY, (("in", "path"), ("out", "value"))),
    ("proxy_set_property", ENVOY, (("in", "path"), ("in", "value"))),
    ("proxy_get_buffer_bytes", ENVOY,
     (("u32", "buffer_type"), ("u32", "start"), ("u32", "max_size"), ("out", "data"))),
    ("proxy_set_buffer_bytes", ENVOY,
     (("u32", "buffer_type"), ("u32", "start"), ("u32", "size"), ("in", "data"))),
    ("proxy_get_buffer_status", ENVOY,
     (("u32", "buffer_type"), ("out_u32", "length"), ("out_u32", "flags"))),
    ("proxy_get_header_map_pairs", ENVOY, (("u32", "map_type"), ("out", "pairs"))),
    ("proxy_set_header_map_pairs", ENVOY, (("u32", "map_type"), ("in", "pairs"))),
    ("proxy_get_header_map_size", ENVOY, (("u32", "map_type"), ("out_u32", "size"))),
    ("proxy_get_header_map_value", ENVOY,
     (("u32", "map_type"), ("in", "key"), ("out", "value"))),
    ("proxy_add_header_map_value", ENVOY,
     (("u32", "map_type"), ("in", "key"), ("in", "value"))),
    ("proxy_replace_header_map_value", ENVOY,
     (("u32", "map_type"), ("in", "key"), ("in", "value"))),
    ("proxy_remove_header_map_value", ENVOY, (("u32", "map_type"), ("in", "key"))),
    ("proxy_continue_stream", ENVOY, (("u32", "stream_type"),)),
    ("proxy_close_stream", ENVOY, (("u32", "stream_type"),)),
    ("proxy_send_local_response", ENVOY,
     (("u32", "status_code"), ("in", "details"), ("in", "body"), ("in", "headers"),
      ("i32", "grpc_status"))),
    ("proxy_http_call", ENVOY,
     (("in", "upstream"), ("in", "headers"), ("in", "body"), ("in", "trailers"),
      ("u32", "timeout_ms"), ("out_u32", "token"))),
    ("proxy_get_shared_data", ENVOY, (("in", "key"), ("out", "value"), ("out_u32", "cas"))),
    ("proxy_set_shared_data", ENVOY, (("in", "key"), ("in", "value"), ("u32", "cas"))),
    ("proxy_register_shared_queue", ENVOY, (("in", "name"), ("out_u32", "queue_id"))),
    ("proxy_resolve_shared_queue", ENVOY,
     (("in", "vm_id"), ("in", "name"), ("out_u32", "queue_id"))),
    ("proxy_enqueue_shared_queue", ENVOY, (("u32", "queue_id"), ("in", "data"))),
    ("proxy_dequeue_shared_queue", ENVOY, (("u32", "queue_id"), ("out", "data"))),
    ("proxy_define_metric", ENVOY,
     (("u32", "metric_type"), ("in", "name"), ("out_u32", "metric_id"))),
    ("proxy_increment_metric", ENVOY, (("u32", "metric_id"), ("i64", "offset"))),
    ("proxy_record_metric", ENVOY, (("u32", "metric_id"), ("u64", "value"))),
    ("proxy_get_metric", ENVOY, (("u32", "metric_id"), ("out_u64", "value"))),
    ("proxy_call_foreign_function", ENVOY, (("in", "name"), ("in", "args"), ("out", "result"))),
    # Higress extensions.
    ("proxy_get_upstream_hosts", HIGRESS, (("out", "hosts"),)),
    ("proxy_set_upstream_override_host", HIGRESS, (("in", "address"),)),
    ("proxy_redis_init", HIGRESS,
     (("in", "cluster"), ("in", "username"), ("in", "password"), ("u32", "timeout_ms"))),
    ("proxy_redis_call", HIGRESS, (("in", "cluster"), ("in", "query"), ("out_u32", "token"))),
)

# Callbacks the module exports: (name, host set, parameter names, result).
# result: "u32" (an action or a bool) or None.
CALLBACKS = (
    ("proxy_on_context_create", ENVOY, ("context_id", "parent_context_id"), None),
    ("proxy_on_vm_start", ENVOY, ("root_context_id", "vm_config_size"), "u32"),
    ("proxy_on_configure", ENVOY, ("root_context_id", "plugin_config_size"), "u32"),
    ("proxy_on_tick", ENVOY, ("root_context_id",), None),
    ("proxy_on_queue_ready", ENVOY, ("root_context_id", "queue_id"), None),
    ("proxy_on_foreign_function", ENVOY, ("root_context_id", "function_id", "data_size"), None),
    ("proxy_on_request_headers", ENVOY, ("context_id", "num_headers", "end_of_stream"), "u32"),
    ("proxy_on_request_body", ENVOY, ("context_id", "body_size", "end_of_stream"), "u32"),
    ("proxy_on_request_trailers", ENVOY, ("context_id", "num_trailers"), "u32"),
    ("proxy_on_response_headers", ENVOY, ("context_id", "num_headers", "end_of_stream"), "u32"),
    ("proxy_on_response_body", ENVOY, ("context_id", "body_size", "end_of_stream"), "u32"),
    ("proxy_on_response_trailers", ENVOY, ("context_id", "num_trailers"), "u32"),
    ("proxy_on_http_call_response", ENVOY,
     ("context_id", "token", "num_headers", "body_size", "num_trailers"), None),
    ("proxy_on_done", ENVOY, ("context_id",), "u32"),
    ("proxy_on_log", ENVOY, ("context_id",), None),
    ("proxy_on_delete", ENVOY, ("context_id",), None),
    ("proxy_on_redis_call_response", HIGRESS,
     ("context_id", "token", "status", "response_size"), None),
)

# What a callback returns without entering Python (0 when not listed): when Python
# cannot start (a VM that cannot start fails its configuration; streams continue),
# and for callbacks the plugin leaves at the SDK's default (dispatcher.handler).
RESULT_WITHOUT_PYTHON = {"proxy_on_vm_start": 0, "proxy_on_configure": 0, "proxy_on_done": 1}
# What a request body chunk before the last is answered while its stream waits
# for the whole body (wait_for_body): StopIterationAndBuffer, as shim.c does.
STOP_AND_BUFFER = 1


def host_functions(target):
    """The host functions a build target imports: [(name, params), ...]."""
    sets = TARGETS[target][0]
    return [(name, params) for name, host_set, params in HOST_FUNCTIONS if host_set in sets]


def callbacks(target):
    """The callbacks a build target exports: [(name, params, result), ...]."""
    sets = TARGETS[target][0]
    return [(name, params, result) for name, host_set, params, result in CALLBACKS
            if host_set in sets]


def out_kinds(params):
    """The kinds of a host function's out parameters, in order."""
    return [kind for kind, _ in params if kind.startswith("out")]


def in_params(params):
    """The parameters a caller passes: every one that is not an out."""
    return [(kind, name) for kind, name in params if not kind.startswith("out")]
