"""Real network I/O for the test host's callouts: HTTP/1.1 and Redis over TCP.

Both clients talk to real servers on loopback (a test's HTTP server, a real
redis-server). They raise CalloutFailure for what Envoy/Higress would report as
a failed callout: connection refused or reset, timeout, garbage.
"""

import http.client
import select
import socket
import time

from . import resp


class CalloutFailure(Exception):
    """The callout got no (complete) answer. `kind` says how it failed:
    "connect" (refused, unreachable), "timeout" (no response headers in time),
    "reset" (the connection closed or broke before response headers), "broken"
    (it broke after the response headers: mid-body)."""

    def __init__(self, message, kind="reset"):
        super().__init__(message)
        self.kind = kind


# --- HTTP ------------------------------------------------------------------------

def http_request(address, header_pairs, body=b"", timeout_s=None):
    """One HTTP/1.1 request to `address` (host, port), as Envoy's async client
    sends it for proxy_http_call. `header_pairs` are (str, str) with the
    pseudo-headers :method, :path, :authority (:scheme is dropped).

    Returns (status, [(name, value)] with names lowercased, body bytes); raises
    CalloutFailure."""
    pseudo = {k: v for k, v in header_pairs if k.startswith(":")}
    method, path, authority = pseudo[":method"], pseudo[":path"], pseudo[":authority"]
    deadline = None if timeout_s is None else time.monotonic() + timeout_s

    def remaining():
        if deadline is None:
            return None
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("deadline passed")
        return left

    conn = http.client.HTTPConnection(address[0], address[1], timeout=timeout_s)
    try:
        try:
            conn.connect()
        except socket.timeout as exc:
            raise CalloutFailure(f"connect to {address}: timed out", "timeout") from exc
        except OSError as exc:
            raise CalloutFailure(f"connect to {address}: {exc}", "connect") from exc
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            conn.putheader("host", authority)
            for name, value in header_pairs:
                if not name.startswith(":") and name not in ("host", "content-length"):
                    conn.putheader(name, value)
            if body or method in ("POST", "PUT", "PATCH"):
                conn.putheader("content-length", str(len(body)))
            conn.endheaders(body or None)
            sock = conn.sock  # getresponse() may drop it from conn (Connection: close)
            sock.settimeout(remaining())
            response = conn.getresponse()
        except socket.timeout as exc:
            raise CalloutFailure(f"{address}: no response in time", "timeout") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise CalloutFailure(f"{address}: {type(exc).__name__}: {exc}", "reset") from exc
        try:
            sock.settimeout(remaining())
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise CalloutFailure(f"{address}: body: {type(exc).__name__}: {exc}",
                                 "broken") from exc
        headers = [(k.lower(), v) for k, v in response.getheaders()]
        return response.status, headers, data
    finally:
        conn.close()


# --- Redis -----------------------------------------------------------------------

class RedisClient:
    """One connection to a redis-server, as Higress's Envoy opens one for a
    cluster's Redis client (RawClientImpl, source/extensions/filters/network/
    common/redis/raw_client_impl.cc):

    - opened on first use; on a new connection `AUTH [username] password` (when
      a username or password is set) and `SELECT db` (when the init URL has
      db=) go out before the first command, and their replies are IGNORED
      (RawClientImpl::initialize sends them with DoNothingRawClientCallbacks):
      a wrong password or a bad db is silent, later commands just get Redis's
      error (-NOAUTH, -WRONGPASS, ...) as an ordinary reply;
    - one reply per call, matched in order (RawClientImpl::onRawResponse pops
      the first pending request): the query bytes go out as given, so a query
      holding two commands leaves its second reply to the next call, as on
      Envoy's connection;
    - the op timeout closes the connection (onConnectOrOpTimeout); a closed
      connection is opened again, with the same login, on the next call.

    Raises CalloutFailure for what Envoy reports as NetworkError."""

    def __init__(self, address, username="", password="", db=None, timeout_ms=1000):
        self.address = address
        self.username = username
        self.password = password
        self.db = db
        self.timeout_s = (timeout_ms or 1000) / 1000.0
        self._sock = None
        self._buffer = bytearray()
        self._ignored = 0  # replies still due for AUTH / SELECT

    def call(self, query):
        """Sends the query bytes, returns the raw bytes of the next reply."""
        try:
            if self._sock is not None and self._peer_closed():
                self.close()  # Envoy saw the close and dropped the connection meanwhile
            if self._sock is None:
                self._connect()
            self._sock.settimeout(self.timeout_s)
            self._sock.sendall(query)
            while self._ignored:
                self._read_reply()
                self._ignored -= 1
            return self._read_reply()
        except (OSError, resp.ProtocolError, CalloutFailure) as exc:
            self.close()
            raise CalloutFailure(f"redis {self.address}: {exc}") from exc

    def _peer_closed(self):
        """True when the server closed the connection since the last reply (as
        Redis does after a protocol error): Envoy's event loop would have seen it
        and deleted the client, so the next send opens a new connection."""
        try:
            readable, _, _ = select.select([self._sock], [], [], 0)
            return bool(readable) and not self._sock.recv(1, socket.MSG_PEEK)
        except OSError:
            return True

    def _connect(self):
        self._sock = socket.create_connection(self.address, timeout=self.timeout_s)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer.clear()
        self._ignored = 0
        handshake = b""
        if self.username:
            handshake += resp.command("AUTH", self.username, self.password)
        elif self.password:
            handshake += resp.command("AUTH", self.password)
        if self.db is not None:
            handshake += resp.command("SELECT", self.db)
        if handshake:
            self._sock.sendall(handshake)
            self._ignored = _count_replies(handshake)

    def _read_reply(self):
        deadline = time.monotonic() + self.timeout_s
        while True:
            end = resp.reply_end(self._buffer)
            if end is not None:
                reply = bytes(self._buffer[:end])
                del self._buffer[:end]
                return reply
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CalloutFailure("timed out")
            self._sock.settimeout(remaining)
            chunk = self._sock.recv(65536)
            if not chunk:
                raise CalloutFailure("connection closed")
            self._buffer += chunk

    def close(self):
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None


def _count_replies(query):
    """How many commands (RESP arrays) a query holds: a pipeline gets as many replies."""
    count, pos = 0, 0
    try:
        while pos < len(query):
            end = resp.reply_end(query, pos)
            if end is None:
                break
            count, pos = count + 1, end
    except resp.ProtocolError:
        return 1  # inline command: one reply
    return count
