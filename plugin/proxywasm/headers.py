"""Pure codec for proxy-wasm header maps (also Higress's upstream-host list).

Wire format, little-endian: u32 count, then count x (u32 key size, u32 value
size), then each key and value followed by a NUL byte.
"""

import struct


def encode(pairs):
    """[(name, value), ...] of str or bytes -> the serialised map."""
    encoded = [(_b(k), _b(v)) for k, v in pairs]
    sizes = [n for k, v in encoded for n in (len(k), len(v))]
    head = struct.pack(f"<{1 + len(sizes)}I", len(encoded), *sizes)
    return head + b"".join(k + b"\0" + v + b"\0" for k, v in encoded)


def decode(data):
    """The serialised map -> [(name, value), ...] as str (UTF-8, bad bytes replaced)."""
    if len(data) < 4:
        return []
    count = struct.unpack_from("<I", data)[0]
    sizes = struct.unpack_from(f"<{2 * count}I", data, 4)
    pos = 4 + 8 * count
    pairs = []
    for i in range(count):
        key_size, value_size = sizes[2 * i], sizes[2 * i + 1]
        key = data[pos:pos + key_size].decode("utf-8", "replace")
        pos += key_size + 1
        value = data[pos:pos + value_size].decode("utf-8", "replace")
        pos += value_size + 1
        pairs.append((key, value))
    return pairs


def _b(text):
    return text if isinstance(text, bytes) else text.encode("utf-8")
