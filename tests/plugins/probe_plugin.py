"""A test plugin that exercises the SDK's host calls, so the test host (native
and wasm) can check each one round-trips.

Configuration (JSON, all optional):
  {"cluster": "<http cluster>", "redis_cluster": "<redis cluster, may end ?db=N>",
   "redis_username": "", "redis_password": "", "tick_ms": 0}

Each request names one operation in its `x-probe-op` header; the operation's
result goes into the request header `x-probe-result` (and, for some, a local
response). Every response gets `x-probe-seen: <op>`.
"""

import json

from proxywasm import CONTINUE, PAUSE, HttpContext, RootContext, abi, abi_table, hostcalls, \
    resp, set_root_context
from proxywasm.context import STOP_ALL_AND_BUFFER

QUEUE = "probe-queue"
REQUESTS_SEEN = [0]  # module state: one count per VM (native VMs must not share it)
HIGRESS_FUNCTIONS = ("proxy_get_upstream_hosts", "proxy_set_upstream_override_host",
                     "proxy_redis_init", "proxy_redis_call")


class ProbeRoot(RootContext):
    config = None
    vm_configuration = b""
    queue_id = None

    def on_vm_start(self, vm_configuration):
        self.vm_configuration = vm_configuration
        return True

    def on_configure(self, configuration):
        self.config = json.loads(configuration or b"{}")
        self.queue_id = hostcalls.register_shared_queue(QUEUE)
        self.metrics = {
            "requests": hostcalls.define_metric(hostcalls.COUNTER, "probe_requests"),
            "gauge": hostcalls.define_metric(hostcalls.GAUGE, "probe_gauge"),
            "hist": hostcalls.define_metric(hostcalls.HISTOGRAM, "probe_hist"),
            "ticks": hostcalls.define_metric(hostcalls.COUNTER, "probe_ticks"),
        }
        # Envoy gives every definition a new id; all reach the same stat.
        self.metrics["requests-again"] = hostcalls.define_metric(hostcalls.COUNTER,
                                                                 "probe_requests")
        if self.config.get("tick_ms"):
            hostcalls.set_tick_period_ms(self.config["tick_ms"])
        if self.config.get("redis_cluster"):
            hostcalls.redis_init(self.config["redis_cluster"],
                                 self.config.get("redis_username", ""),
                                 self.config.get("redis_password", ""), 1000)
        hostcalls.log(hostcalls.INFO, f"probe: configured {sorted(self.config)}")
        return True

    def on_tick(self):
        hostcalls.increment_metric(self.metrics["ticks"])

    def on_queue_ready(self, queue_id):
        items = []
        while True:
            item = hostcalls.dequeue_shared_queue(queue_id)
            if item is None:
                break
            items.append(item.decode())
        hostcalls.log(hostcalls.INFO, f"probe: queue {queue_id} gave {items}")

    def new_http_context(self, context_id):
        return ProbeStream(context_id, self)


class ProbeStream(HttpContext):
    op = ""

    def header(self, name):
        return hostcalls.get_header(hostcalls.REQUEST_HEADERS, name)

    def result(self, value):
        hostcalls.replace_header(hostcalls.REQUEST_HEADERS, "x-probe-result", str(value))

    @staticmethod
    def try_get(map_type, name):
        """A header's value, "absent", or the host's error status name."""
        try:
            value = hostcalls.get_header(map_type, name)
        except abi.HostError as exc:
            return abi_table.STATUS_NAMES[exc.status]
        return "absent" if value is None else value

    def on_request_headers(self, num_headers, end_of_stream):
        REQUESTS_SEEN[0] += 1
        self.op = self.header("x-probe-op") or ""
        handler = getattr(self, "op_" + self.op.replace("-", "_"), None)
        if handler is None:
            return CONTINUE
        return handler() or CONTINUE

    # --- shared data -----------------------------------------------------------------

    def op_incr(self):
        """CAS-increments the shared counter named by x-probe-key."""
        key = self.header("x-probe-key")
        while True:
            value, cas = hostcalls.get_shared_data(key)
            new = int(value or 0) + 1
            try:
                hostcalls.set_shared_data(key, str(new), cas)
                break
            except abi.CasMismatch:
                continue
        self.result(new)

    def op_stale_cas(self):
        """Writes with a cas, then again with the same (now stale) cas."""
        key = self.header("x-probe-key")
        hostcalls.set_shared_data(key, b"seed")
        value, cas = hostcalls.get_shared_data(key)
        hostcalls.set_shared_data(key, b"first", cas)
        try:
            hostcalls.set_shared_data(key, b"second", cas)
            outcome = "no-mismatch"
        except abi.CasMismatch as exc:
            outcome = f"CasMismatch:{exc.status}"
        now, _ = hostcalls.get_shared_data(key)
        self.result(f"{outcome};{now.decode()}")

    def op_get(self):
        value, cas = hostcalls.get_shared_data(self.header("x-probe-key"))
        self.result("absent" if value is None else value.decode())

    # --- queues ------------------------------------------------------------------------

    def op_enqueue(self):
        queue_id = hostcalls.resolve_shared_queue("", QUEUE)
        hostcalls.enqueue_shared_queue(queue_id, self.header("x-probe-data"))
        missing = hostcalls.resolve_shared_queue("", "no-such-queue")
        self.result(f"{queue_id};{missing}")

    # --- metrics -----------------------------------------------------------------------

    def op_metrics(self):
        ids = self.root.metrics
        hostcalls.increment_metric(ids["requests-again"])
        hostcalls.record_metric(ids["gauge"], 42)
        hostcalls.increment_metric(ids["gauge"], -2)
        hostcalls.record_metric(ids["hist"], 7)
        counter, gauge = hostcalls.get_metric(ids["requests"]), hostcalls.get_metric(ids["gauge"])
        self.result(f"{counter},{gauge}")

    # --- properties, time, log level, configuration -------------------------------------

    def op_property(self):
        """Reads host properties; sets filter state and reads it back. In Envoy a
        set property is filter state "wasm.<path>", and a read looks its first
        segment up: only one-segment paths round-trip."""
        def text(value):
            return None if value is None else value.decode()
        cluster = hostcalls.get_property(["xds", "cluster_name"])
        hostcalls.set_property(["probe_state"], "one-segment")
        single = hostcalls.get_property(["probe_state"])
        hostcalls.set_property(["probe", "state"], "two-segments")
        multi = hostcalls.get_property(["probe", "state"])
        missing = hostcalls.get_property(["no", "such"])
        name = hostcalls.get_property(["plugin_name"])
        self.result(";".join(str(text(v)) for v in (cluster, single, multi, missing, name)))

    def op_env(self):
        self.result(f"{hostcalls.now_ns()};{hostcalls.log_level()};"
                    f"{self.root.vm_configuration.decode()}")

    def op_has(self):
        self.result(",".join(f"{name}={int(abi.has(name))}" for name in HIGRESS_FUNCTIONS))

    def op_foreign(self):
        packed = hostcalls.call_foreign_function("compress", b"probe " * 20)
        plain = hostcalls.call_foreign_function("uncompress", packed)
        try:
            hostcalls.call_foreign_function("no_such_function")
            unknown = "found"
        except abi.NotFound:
            unknown = "NotFound"
        self.result(f"{len(packed) < 120};{plain == b'probe ' * 20};{unknown}")

    # --- headers, bodies, trailers ---------------------------------------------------------

    def op_headers(self):
        pairs = hostcalls.get_header_map(hostcalls.REQUEST_HEADERS)
        hostcalls.add_header(hostcalls.REQUEST_HEADERS, "x-probe-added", "a")
        hostcalls.add_header(hostcalls.REQUEST_HEADERS, "x-probe-added", "b")
        hostcalls.remove_header(hostcalls.REQUEST_HEADERS, "x-probe-remove-me")
        self.result(len(pairs))

    def op_set_headers(self):
        pairs = hostcalls.get_header_map(hostcalls.REQUEST_HEADERS)
        hostcalls.set_header_map(hostcalls.REQUEST_HEADERS,
                                 [(k, v.upper()) for k, v in pairs if k.startswith("x-")])

    def op_upper_body(self):
        return PAUSE  # wait for the body; see on_request_body

    def on_request_body(self, body_size, end_of_stream):
        if self.op == "late":
            hostcalls.log(hostcalls.INFO, "probe: body saw x-probe-op="
                          + self.try_get(hostcalls.REQUEST_HEADERS, "x-probe-op"))
        if self.op != "upper-body":
            return CONTINUE
        if not end_of_stream:
            return STOP_ALL_AND_BUFFER
        body = hostcalls.get_buffer(hostcalls.REQUEST_BODY, 0, body_size)
        hostcalls.set_buffer(hostcalls.REQUEST_BODY, body.upper())
        self.result(f"{body_size}:{body.decode()}")
        self.resume_request()
        return CONTINUE

    def on_request_trailers(self, num_trailers):
        hostcalls.replace_header(hostcalls.REQUEST_TRAILERS, "x-probe-trailers", str(num_trailers))
        return CONTINUE

    def on_response_headers(self, num_headers, end_of_stream):
        hostcalls.replace_header(hostcalls.RESPONSE_HEADERS, "x-probe-seen", self.op or "-")
        if self.op == "late":
            hostcalls.replace_header(hostcalls.RESPONSE_HEADERS, "x-probe-late",
                                     self.try_get(hostcalls.REQUEST_HEADERS, "x-probe-op"))
        return CONTINUE

    def on_log(self):
        if self.op == "late":
            hostcalls.log(hostcalls.INFO, "probe: on_log saw x-probe-op="
                          + self.try_get(hostcalls.REQUEST_HEADERS, "x-probe-op") + " :status="
                          + self.try_get(hostcalls.RESPONSE_HEADERS, ":status"))

    # --- stream control, contexts, VM state -------------------------------------------------

    def op_close(self):
        hostcalls.close_stream(hostcalls.STREAM_REQUEST)

    def op_bad_effective_context(self):
        try:
            hostcalls.set_effective_context(999999)
            self.result("ok")
        except abi.HostError as exc:
            self.result(exc.status)

    def op_vm_count(self):
        self.result(REQUESTS_SEEN[0])

    def op_upstream_hosts(self):
        hosts = hostcalls.get_upstream_hosts()
        self.result(";".join(f"{address}={json.loads(info)['healthy']}" for address, info in hosts))

    # --- local responses -------------------------------------------------------------------

    def op_local(self):
        self.send_local_response(418, b"probe says no", [("x-probe", "teapot")], "probe_denied")
        return PAUSE

    # --- http callouts -----------------------------------------------------------------------

    def op_http(self):
        call_headers = [(":method", "POST"), (":path", "/echo"), (":authority", "backend"),
                        ("x-probe-call", "1")]
        target = self.header("x-probe-target")
        if target:
            call_headers.append(("x-gateway-destination-endpoint", target))
        timeout = int(self.header("x-probe-timeout") or 2000)
        path = self.header("x-probe-path")
        if path:
            call_headers[1] = (":path", path)
        cluster = self.header("x-probe-cluster") or self.root.config["cluster"]
        self.http_call(cluster, call_headers, b"ping", timeout, self.on_http_response)
        return PAUSE

    def on_http_response(self, num_headers, body_size, num_trailers):
        pairs = hostcalls.get_header_map(hostcalls.HTTP_CALL_RESPONSE_HEADERS)
        response = dict(pairs)
        hostcalls.replace_header(hostcalls.REQUEST_HEADERS, "x-probe-call-headers",
                                 ",".join(f"{k}={v}" for k, v in pairs if k != "date"))
        body = hostcalls.get_buffer(hostcalls.HTTP_CALL_RESPONSE_BODY, 0, body_size)
        self.result(f"{num_headers}:{response.get(':status')}:{body_size}:{body.decode()}")
        status, message = abi.call("proxy_get_status")
        hostcalls.replace_header(hostcalls.REQUEST_HEADERS, "x-probe-status",
                                 f"{status}:{message.decode()}")
        self.resume_request()

    def op_bad_call(self):
        """An http_call to an unknown cluster fails at once (BadArgument)."""
        try:
            self.http_call("no-such-cluster", [(":method", "GET"), (":path", "/"),
                                               (":authority", "x")], b"", 1000, None)
            self.result("started")
        except abi.HostError as exc:
            self.result(type(exc).__name__ + ":" + str(exc.status))

    # --- redis callouts (Higress) -------------------------------------------------------------

    def op_redis(self):
        """Runs the command in x-probe-redis (a JSON list of arguments)."""
        args = json.loads(self.header("x-probe-redis"))
        self.redis_call(self.root.config["redis_cluster"], resp.command(*args), self.on_redis)
        return PAUSE

    def on_redis(self, status, reply):
        self.result(f"{status}:{reply.hex()}")
        self.resume_request()


set_root_context(ProbeRoot)
