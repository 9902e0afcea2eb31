"""Simulated replicas: HTTP servers that answer like an OpenAI-compatible
LLM server, in this process (ReplicaSet) or a child one (ReplicaProcess)."""

import dataclasses
import http.client
import json
import subprocess
import sys
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .common import LOOPBACK, ROOT


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
    (default: `python -m envoy_harness replicas`)."""

    def __init__(self, count, timeout=15, command=None):
        self.proc = subprocess.Popen(
            command or [sys.executable, "-m", "envoy_harness", "replicas", "--count",
                        str(count)], cwd=ROOT,
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
