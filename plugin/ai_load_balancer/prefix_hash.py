"""Chained block hashes of a prompt: the keys of the prefix-cache index.

The prompt's UTF-8 bytes are cut into fixed-size blocks; block i's hash is
XXH64 of block i seeded with block i-1's hash (block 0's seed: XXH64 of the
namespace, i.e. model and salt), so it covers the namespace and every byte up
to the end of block i: two prompts share hash i exactly when they share their
first i+1 blocks (and [A, B] never collides with [B, A]). XXH64, as
gateway-api-inference-extension uses: fast, and 64 bits make collisions
negligible at index sizes of millions. A trailing partial block is not hashed:
vLLM caches only full blocks too. Bytes rather than characters: 64 bytes are
about 16 tokens for English and for CJK text alike.
"""

try:  # in the VM: the same hashes, computed in C (host_shim/fast_hash.c)
    from _ailb_fast import chained_hashes
except ImportError:  # natively: the reference below
    chained_hashes = None

M = (1 << 64) - 1
P1, P2, P3 = 0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9
P4, P5 = 0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5


def _rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & M


def _round(acc, lane):
    return _rotl((acc + lane * P2) & M, 31) * P1 & M


def xxh64(data, seed=0):
    """XXH64 of `data` (bytes) with `seed`: the reference for the C version."""
    n, at = len(data), 0
    if n >= 32:
        lanes = [(seed + P1 + P2) & M, (seed + P2) & M, seed, (seed - P1) & M]
        while at + 32 <= n:
            for i in range(4):
                lanes[i] = _round(lanes[i], int.from_bytes(data[at:at + 8], "little"))
                at += 8
        h = (_rotl(lanes[0], 1) + _rotl(lanes[1], 7) + _rotl(lanes[2], 12)
             + _rotl(lanes[3], 18)) & M
        for lane in lanes:
            h = ((h ^ _round(0, lane)) * P1 + P4) & M
    else:
        h = (seed + P5) & M
    h = (h + n) & M
    while at + 8 <= n:
        h ^= _round(0, int.from_bytes(data[at:at + 8], "little"))
        h = (_rotl(h, 27) * P1 + P4) & M
        at += 8
    if at + 4 <= n:
        h ^= int.from_bytes(data[at:at + 4], "little") * P1 & M
        h = (_rotl(h, 23) * P2 + P3) & M
        at += 4
    for byte in data[at:]:
        h ^= byte * P5 & M
        h = _rotl(h, 11) * P1 & M
    h = (h ^ (h >> 33)) * P2 & M
    h = (h ^ (h >> 29)) * P3 & M
    return h ^ (h >> 32)


def block_hashes(namespace, prompt, block_size=64, max_blocks=256):
    """[hash of block 0, hash of blocks 0..1, ...] as 16-digit hex strings, at
    most max_blocks."""
    if chained_hashes is not None:
        return chained_hashes(namespace, prompt, block_size, max_blocks)
    return reference_hashes(namespace, prompt, block_size, max_blocks)


def reference_hashes(namespace, prompt, block_size, max_blocks):
    """block_hashes in Python: what the C version must answer (and the answer
    where the VM's C module is absent)."""
    seed = xxh64(namespace)
    end = min(len(prompt) // block_size, max_blocks) * block_size
    hashes = []
    for start in range(0, end, block_size):
        seed = xxh64(prompt[start:start + block_size], seed)
        hashes.append(f"{seed:016x}")
    return hashes
