"""Chained block hashes of a prompt: the keys of the prefix-cache index.

The prompt's UTF-8 bytes are cut into fixed-size blocks; block i's hash covers
the namespace (model, salt) and every byte up to the end of block i, so two
prompts share hash i exactly when they share their first i+1 blocks (and
[A, B] never collides with [B, A]). A trailing partial block is not hashed:
vLLM caches only full blocks too. Bytes rather than characters: 64 bytes are
about 16 tokens for English and for CJK text alike.
"""

import hashlib

try:  # in the VM: the same hashes, computed in C (host_shim/fast.c)
    from _ailb_fast import chained_hashes
except ImportError:  # natively: the reference below
    chained_hashes = None

DIGEST_SIZE = 8  # 64-bit keys: collisions are negligible at index sizes of millions


def block_hashes(namespace, prompt, block_size=64, max_blocks=256):
    """[hash of block 0, hash of blocks 0..1, ...] as hex strings, at most max_blocks."""
    key = hashlib.blake2b(namespace, digest_size=16).digest()  # keeps namespace and prompt apart
    if chained_hashes is not None:
        return chained_hashes(key, prompt, block_size, max_blocks)
    return reference_hashes(key, prompt, block_size, max_blocks)


def reference_hashes(key, prompt, block_size, max_blocks):
    """block_hashes after the namespace's key, in Python: what the C version
    must answer (and the answer where the VM's C module is absent)."""
    hasher = hashlib.blake2b(digest_size=DIGEST_SIZE, key=key)
    update, copy = hasher.update, hasher.copy
    end = min(len(prompt) // block_size, max_blocks) * block_size
    hashes = []
    for start in range(0, end, block_size):
        update(prompt[start:start + block_size])
        hashes.append(copy().hexdigest())
    return hashes
