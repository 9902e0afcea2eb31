"""A small HTTP client (blocking and asyncio) that reads what the tests check:
the replica that answered and the plugin's decision header."""

import dataclasses
import http.client
import json

from .common import LOOPBACK


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
