"""Pure codec for RESP2, the Redis protocol (commands out, replies in)."""


class RedisError(Exception):
    """An error reply (-ERR ...) from Redis."""


class Incomplete(ValueError):
    """The bytes end before the reply does."""


def command(*args):
    """RESP array of bulk strings for one command; args are str, bytes or int."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode("utf-8")
        elif isinstance(arg, int):
            arg = b"%d" % arg
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


MAX_DEPTH = 32  # arrays inside arrays; Redis's own replies nest a few levels at most


def parse(data, pos=0, depth=0):
    """(reply, end position) of the reply starting at `pos`.

    Simple strings -> str, bulk strings -> bytes (None when nil), integers -> int,
    arrays -> list (None when nil), errors -> a RedisError instance (returned,
    not raised, so an error inside an array keeps its place). Raises Incomplete
    when `data` ends early and ValueError on bytes that are not RESP (arrays
    nested deeper than MAX_DEPTH included).
    """
    line_end = data.find(b"\r\n", pos)
    if line_end < 0:
        raise Incomplete("no line end")
    kind, line = data[pos:pos + 1], data[pos + 1:line_end]
    pos = line_end + 2
    if kind == b"+":
        return line.decode("utf-8", "replace"), pos
    if kind == b"-":
        return RedisError(line.decode("utf-8", "replace")), pos
    if kind == b":":
        return int(line), pos
    if kind == b"$":
        size = int(line)
        if size < 0:
            return None, pos
        if len(data) < pos + size + 2:
            raise Incomplete("bulk string cut short")
        return data[pos:pos + size], pos + size + 2
    if kind == b"*":
        count = int(line)
        if count < 0:
            return None, pos
        if depth >= MAX_DEPTH:
            raise ValueError("RESP arrays nested too deeply")
        items = []
        for _ in range(count):
            item, pos = parse(data, pos, depth + 1)
            items.append(item)
        return items, pos
    raise ValueError(f"not a RESP reply: {kind!r}")


def reply(data):
    """The single reply in `data`; raises RedisError if it is an error reply."""
    value, _ = parse(data)
    if isinstance(value, RedisError):
        raise value
    return value
