"""A small RESP (Redis protocol) reader that knows where one reply ends.

The test host forwards the plugin's query bytes to a real redis-server and must
hand back exactly one complete reply, however it is split across reads and
however deeply its arrays nest. RESP2 and RESP3 types are both understood.
"""

# Types whose reply is one CRLF-terminated line.
_LINE = frozenset(b"+-:_#,(")
# Types whose line is a length, then that many bytes and CRLF ($-1 is a null).
_BULK = frozenset(b"$!=")
# Types whose line is a count of nested replies (x2 for maps and attributes).
_AGGREGATE = {ord("*"): 1, ord("~"): 1, ord(">"): 1, ord("%"): 2, ord("|"): 2}


class ProtocolError(ValueError):
    """The bytes are not RESP."""


def reply_end(data, pos=0):
    """The index just past the complete reply starting at `pos`, or None when
    `data` does not hold all of it yet. Raises ProtocolError on garbage."""
    stack = [1]  # replies still to read at each nesting level
    while stack:
        if pos >= len(data):
            return None
        line_end = data.find(b"\r\n", pos)
        if line_end < 0:
            return None
        kind = data[pos]
        line = data[pos + 1:line_end]
        pos = line_end + 2
        stack[-1] -= 1
        if kind in _LINE:
            pass
        elif kind in _BULK:
            size = _int(line)
            if size >= 0:
                if len(data) < pos + size + 2:
                    return None
                if data[pos + size:pos + size + 2] != b"\r\n":
                    raise ProtocolError("bulk string not terminated by CRLF")
                pos += size + 2
        elif kind in _AGGREGATE:
            count = _int(line)
            if count > 0:
                stack.append(count * _AGGREGATE[kind])
            if kind == ord("|"):
                stack[-2 if count > 0 else -1] += 1  # an attribute precedes the real reply
        else:
            raise ProtocolError(f"unknown RESP type byte {bytes([kind])!r}")
        while stack and stack[-1] == 0:
            stack.pop()
    return pos


def _int(line):
    try:
        return int(line)
    except ValueError:
        raise ProtocolError(f"bad RESP length {line!r}") from None


def command(*args):
    """Encodes a command as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        arg = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


def parse(data):
    """One reply as Python values: str for simple strings, bytes for bulk
    strings, int, None, list, and ReplyError for errors. For tests."""
    value, end = _parse(data, 0)
    if end != len(data):
        raise ProtocolError("trailing bytes after the reply")
    return value


class ReplyError(str):
    """A RESP error reply (-ERR ...)."""


def _parse(data, pos):
    line_end = data.index(b"\r\n", pos)
    kind, line = data[pos], data[pos + 1:line_end].decode()
    pos = line_end + 2
    if kind == ord("+"):
        return line, pos
    if kind == ord("-"):
        return ReplyError(line), pos
    if kind == ord(":"):
        return int(line), pos
    if kind == ord("_"):
        return None, pos
    if kind in _BULK:
        size = int(line)
        if size < 0:
            return None, pos
        return bytes(data[pos:pos + size]), pos + size + 2
    if kind in _AGGREGATE:
        count = int(line)
        if count < 0:
            return None, pos
        items = []
        for _ in range(count * _AGGREGATE[kind]):
            item, pos = _parse(data, pos)
            items.append(item)
        return items, pos
    raise ProtocolError(f"unsupported RESP type {chr(kind)!r}")
