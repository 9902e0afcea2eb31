"""Envoy bootstraps: listeners with the wasm filter, clusters with the
override_host policy, the stats tags users copy; and reading /stats/prometheus."""

import dataclasses
import functools
import json
import os
import re

from .common import LOOPBACK, OVERRIDE_HEADER, ROOT


FALLBACK_POLICIES = {
    "round_robin": ("envoy.load_balancing_policies.round_robin",
                    "type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin"),
    "least_request": ("envoy.load_balancing_policies.least_request",
                      "type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest"),
    "random": ("envoy.load_balancing_policies.random",
               "type.googleapis.com/envoy.extensions.load_balancing_policies.random.v3.Random"),
}


def _socket_address(address, port):
    return {"socket_address": {"address": address, "port_value": port}}


def _split(endpoint):
    host, _, port = endpoint.rpartition(":")
    return host, int(port)


@dataclasses.dataclass
class WasmFilter:
    """The envoy.filters.http.wasm filter. VMs are shared between filters with the
    same vm_id and code (each filter still gets its own root context)."""
    wasm_path: str
    configuration: object = "{}"   # str, bytes or a JSON-able object
    fail_open: bool = True         # failure_policy FAIL_OPEN / FAIL_CLOSED
    name: str = "ailb"
    root_id: str = ""
    vm_id: str = "ailb"
    allow_on_headers_stop_iteration: bool = True
    runtime: str = "envoy.wasm.runtime.v8"

    def configuration_text(self):
        if isinstance(self.configuration, bytes):
            return self.configuration.decode()
        if isinstance(self.configuration, str):
            return self.configuration
        return json.dumps(self.configuration)

    def render(self):
        return {
            "name": "envoy.filters.http.wasm",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": self.name,
                    "root_id": self.root_id,
                    "allow_on_headers_stop_iteration": self.allow_on_headers_stop_iteration,
                    "failure_policy": "FAIL_OPEN" if self.fail_open else "FAIL_CLOSED",
                    "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                      "value": self.configuration_text()},
                    "vm_config": {"vm_id": self.vm_id, "runtime": self.runtime,
                                  "code": {"local": {"filename": os.path.abspath(self.wasm_path)}}},
                },
            },
        }


@dataclasses.dataclass
class Listener:
    """An HTTP listener routing everything to one cluster. port 0: Envoy picks one
    (read it back with Envoy.listener_port(name))."""
    name: str = "main"
    port: int = 0
    cluster: str = "backend"
    wasm: WasmFilter = None
    route_timeout_s: float = 15.0
    retry_policy: dict = None      # the route's retry_policy, e.g. retry_policy(2)
    routes: list = None            # [(route name, path prefix)], in match order; None: "/"
    cluster_header: str = ""       # route by this request header's cluster name instead

    def render(self):
        route = {"cluster": self.cluster, "timeout": f"{self.route_timeout_s}s"}
        if self.cluster_header:
            route = {"cluster_header": self.cluster_header, "timeout": route["timeout"]}
        if self.retry_policy:
            route["retry_policy"] = self.retry_policy
        routes = [{"match": {"prefix": "/"}, "route": route}] if self.routes is None else [
            {"name": name, "match": {"prefix": prefix}, "route": route}
            for name, prefix in self.routes]
        http_filters = [self.wasm.render()] if self.wasm else []
        http_filters.append({"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
        return {
            "name": self.name,
            "address": _socket_address(LOOPBACK, self.port),
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network."
                             "http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": self.name,
                    "route_config": {"name": f"{self.name}_route", "virtual_hosts": [{
                        "name": "all", "domains": ["*"],
                        "routes": routes}]},
                    "http_filters": http_filters,
                },
            }]}],
        }


def plugin_config(policy, endpoints, **fields):
    """The plugin's configuration document for `policy` with the replicas in
    lb_config.endpoints (stock Envoy cannot list them to the plugin) and `fields`
    after them. The one place tests and benchmarks build it."""
    return {"lb_policy": policy, "lb_config": {"endpoints": list(endpoints), **fields}}


def retry_policy(num_retries, retry_on="connect-failure,refused-stream,reset,5xx"):
    """A route retry policy: Envoy retries on the next address of the plugin's
    override list (x-gateway-destination-endpoint: primary,fallback1,...)."""
    return {"retry_on": retry_on, "num_retries": num_retries}


@dataclasses.dataclass
class Cluster:
    """A STATIC cluster. override_host: the override_host LB policy reading
    x-gateway-destination-endpoint, with `fallback_policy` when no header is set;
    otherwise `fallback_policy` alone."""
    endpoints: list
    name: str = "backend"
    fallback_policy: str = "round_robin"
    override_host: bool = True
    connect_timeout_s: float = 1.0

    def render(self):
        if self.fallback_policy not in FALLBACK_POLICIES:
            raise ValueError(f"fallback_policy: one of {sorted(FALLBACK_POLICIES)}")
        ext_name, type_url = FALLBACK_POLICIES[self.fallback_policy]
        fallback = {"policies": [{"typed_extension_config": {
            "name": ext_name, "typed_config": {"@type": type_url}}}]}
        if self.override_host:
            policy = {"policies": [{"typed_extension_config": {
                "name": "envoy.load_balancing_policies.override_host",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies."
                             "override_host.v3.OverrideHost",
                    "override_host_sources": [{"header": OVERRIDE_HEADER}],
                    "fallback_policy": fallback}}}]}
        else:
            policy = fallback
        return {
            "name": self.name,
            "type": "STATIC",
            "connect_timeout": f"{self.connect_timeout_s}s",
            "load_assignment": {"cluster_name": self.name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": _socket_address(*_split(e))}} for e in self.endpoints]}]},
            "load_balancing_policy": policy,
        }


@dataclasses.dataclass
class EnvoyConfig:
    """A whole bootstrap plus the command-line knobs Envoy takes with it."""
    listeners: list
    clusters: list
    admin_port: int = 0          # 0: Envoy picks; the harness reads it back
    concurrency: int = 1
    log_level: str = "info"
    component_log_level: str = ""  # e.g. "wasm:debug"
    stats_tags: bool = True      # observability/envoy-stats-tags.yaml: labelled metric families

    @classmethod
    def simple(cls, endpoints, wasm_path=None, plugin_config=None, fail_open=True,
               concurrency=1, fallback_policy="round_robin", listener_port=0, admin_port=0,
               override_host=True, retry_policy=None, **wasm_kwargs):
        """One listener ("main") -> one cluster ("backend") of `endpoints`, with the
        wasm filter when `wasm_path` is given, and the route's `retry_policy`
        (a dict, e.g. harness.retry_policy(2)) when given."""
        wasm = None
        if wasm_path:
            wasm = WasmFilter(wasm_path, plugin_config if plugin_config is not None else "{}",
                              fail_open=fail_open, **wasm_kwargs)
        return cls(listeners=[Listener("main", listener_port, "backend", wasm,
                                       retry_policy=retry_policy)],
                   clusters=[Cluster(list(endpoints), "backend", fallback_policy, override_host)],
                   admin_port=admin_port, concurrency=concurrency)

    def render(self):
        return {
            "admin": {"address": _socket_address(LOOPBACK, self.admin_port)},
            "static_resources": {"listeners": [listener.render() for listener in self.listeners],
                                 "clusters": [c.render() for c in self.clusters]},
            **(stats_tags_fragment() if self.stats_tags else {}),
        }

    def write(self, directory):
        """Writes envoy.json (JSON is YAML too) into `directory`; returns its path."""
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "envoy.json")
        with open(path, "w") as f:
            json.dump(self.render(), f, indent=1)
        return path


@functools.cache
def stats_tags_fragment():
    """The bootstrap's stats_config that users copy (observability/envoy-stats-tags.yaml),
    read once per process; callers must not change it."""
    import yaml  # the test extra; only Envoy configs need it
    with open(os.path.join(ROOT, "observability", "envoy-stats-tags.yaml")) as f:
        return yaml.safe_load(f)


def prometheus_samples(text):
    """{(metric name, ((label, value), ...) sorted): value} of /stats/prometheus text."""
    samples = {}
    for line in text.splitlines():
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$', line)
        if m:
            labels = tuple(sorted(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"',
                                             m.group(2) or "")))
            samples[(m.group(1), labels)] = float(m.group(3))
    return samples
