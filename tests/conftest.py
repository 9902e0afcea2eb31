"""Fixtures for plugin tests: every test body that uses `make_host` runs twice,
natively (the plugin imported into this CPython against the test host) and in
wasm (the built module in wasmtime against the same test host).

    def test_something(make_host):
        host = make_host(entry="ai_load_balancer.main", target="envoy")
        assert host.start_plugin(b'{"lb_policy": "header"}')
        ...

Also: `redis_server` (a real redis-server on a free loopback port) and
`http_server` / `make_http_server` (tiny threaded loopback HTTP servers).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN_DIR = os.path.join(ROOT, "plugin")
TEST_PLUGIN_DIR = os.path.join(ROOT, "tests", "plugins")
for _path in (TEST_PLUGIN_DIR, PLUGIN_DIR, ROOT):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from envoy_harness import load_make  # noqa: E402  (build/make.py, loaded once)
from tests.host import resp  # noqa: E402
from tests.host.emulator import HostEmulator  # noqa: E402
from tests.host.native import NativePlugin  # noqa: E402
from tests.host.shared import SharedStore  # noqa: E402
from tests.host.upstream import CalloutFailure, RedisClient  # noqa: E402
from tests.host.wasm import WasmPlugin  # noqa: E402

MODES = ["native", "wasm"]


# --- building test plugins for wasm mode ---------------------------------------------

class WasmBuilds:
    """Builds each (entry, target) once per session into a temp dir."""

    def __init__(self, out_dir):
        self.out_dir = out_dir
        self.work_dir = os.path.join(out_dir, "work")
        self._built = {}
        self.seconds = {}

    def get(self, entry, target):
        """The .wasm path of `entry` built for `target` (fails the test if the build does)."""
        key = (entry, target)
        if key not in self._built:
            name = entry.replace(".", "_")
            started = time.monotonic()
            try:
                self._built[key] = load_make().build(
                    target, entry, name, self.out_dir, self.work_dir, "-O2", [TEST_PLUGIN_DIR])
            except SystemExit as exc:  # build/make.py reports failures this way
                self._built[key] = BuildFailed(f"building {entry} for {target} failed: {exc}")
            self.seconds[key] = time.monotonic() - started
        built = self._built[key]
        if isinstance(built, BuildFailed):
            pytest.fail(str(built), pytrace=False)
        return built


class BuildFailed(str):
    """A build that failed once: later tests fail at once with its message."""


@pytest.fixture(scope="session")
def wasm_builds(tmp_path_factory):
    return WasmBuilds(str(tmp_path_factory.mktemp("wasm")))


@pytest.fixture(params=MODES, ids=MODES)
def host_mode(request):
    """"native" or "wasm": which transport make_host wires."""
    return request.param


@pytest.fixture
def make_host(host_mode, request):
    """Factory: make_host(entry="ai_load_balancer.main", target="envoy",
    clusters=None, shared=None, configuration=None, **emulator_options) ->
    a HostEmulator with the plugin loaded (a fresh VM), wired to this mode's
    transport. With `configuration` the plugin is also started (and must accept
    it); without, the test calls host.start_plugin(...) itself."""
    hosts = []

    def factory(entry="ai_load_balancer.main", target="envoy", clusters=None, shared=None,
                configuration=None, vm_configuration=b"", **options):
        host = HostEmulator(target=target, clusters=clusters, shared=shared, **options)
        if host_mode == "native":
            host.attach(NativePlugin(host, entry))
        else:
            wasm = request.getfixturevalue("wasm_builds").get(entry, target)
            host.attach(WasmPlugin(host, wasm))
        hosts.append(host)
        if configuration is not None:
            assert host.start_plugin(configuration, vm_configuration), host.logs_text()
        return host

    factory.mode = host_mode
    yield factory
    for host in hosts:
        host.close()


@pytest.fixture
def shared_store():
    """A SharedStore for tests that model several VMs of one process."""
    return SharedStore()


# --- a real redis-server ----------------------------------------------------------------

def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A redis-server on loopback. Users: the default user (no password, or
    `requirepass`: then a connection that did not AUTH gets -NOAUTH) and
    `ailb` / `ailb-secret` (for AUTH tests)."""

    USERNAME, PASSWORD = "ailb", "ailb-secret"

    def __init__(self, binary, directory, requirepass=None):
        self.host, self.port = "127.0.0.1", free_port()
        self.address = (self.host, self.port)
        self.requirepass = requirepass
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", self.host, "--dir", directory,
             "--save", "", "--appendonly", "no", "--protected-mode", "no",
             "--user", self.USERNAME, "on", f">{self.PASSWORD}", "~*", "&*", "+@all"]
            + (["--requirepass", requirepass] if requirepass else []),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.command("PING") == b"+PONG\r\n":
                    break
            except CalloutFailure:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)

    def command(self, *args, db=None):
        """Runs one command as the default user (in database `db`); returns the
        raw reply bytes."""
        client = RedisClient(self.address, password=self.requirepass or "", db=db,
                             timeout_ms=2000)
        try:
            return client.call(resp.command(*args))
        finally:
            client.close()

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def running_redis(**options):
    """Yields a RedisServer (options: requirepass) in a temp dir, for a fixture;
    skips the test where redis-server is not installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install -y redis-server)")
    directory = tempfile.mkdtemp(prefix="ailb-redis-")
    server = RedisServer(binary, directory, **options)
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server():
    yield from running_redis()


# --- tiny loopback HTTP servers -----------------------------------------------------------

class HttpServer:
    """A threaded HTTP/1.1 server on loopback that records requests.

    GET/POST any path: 200 with a JSON echo {"method", "path", "headers", "body",
    "server"} unless a route was set with `route(path, ...)`. `requests` holds (method, path,
    headers dict, body) in order."""

    def __init__(self, name="http"):
        self.name = name
        self.requests = []
        self.routes = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self):
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                server.requests.append((self.command, self.path, headers, body))
                status, out, extra, delay, length = server.routes.get(
                    self.path, (200, None, (), 0, None))
                if delay:
                    time.sleep(delay)
                if out is None:
                    out = json.dumps({"method": self.command, "path": self.path,
                                      "headers": headers, "body": body.decode("utf-8", "replace"),
                                      "server": server.name}).encode()
                self.send_response(status)
                for k, v in extra:
                    self.send_header(k, v)
                self.send_header("content-length", str(len(out) if length is None else length))
                if length is not None:
                    self.send_header("connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.address = self.httpd.server_address[:2]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def route(self, path, status=200, body=None, headers=(), delay_s=0, content_length=None):
        """How to answer `path`. content_length: announce this length instead of
        the body's (a larger one cuts the response off mid-body)."""
        self.routes[path] = (status, body if body is None else bytes(body), tuple(headers),
                             delay_s, content_length)

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def make_http_server():
    servers = []

    def factory(name="http"):
        server = HttpServer(name)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture
def http_server(make_http_server):
    return make_http_server("backend")


@pytest.fixture
def closed_port():
    """A loopback port nothing listens on."""
    return free_port()
