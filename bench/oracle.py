"""The oracle: routing with exact knowledge of every replica's KV cache.

The benchmark client is the only sender, so it knows exactly which prompt (and
answer) each replica computed and how many requests each has in flight. It
keeps a model of each replica's prefix cache (vLLM's automatic prefix caching:
chained hashes of full `block_size`-token blocks, seeded with the model or
adapter name, least recently used evicted first, `num_blocks` blocks, read
from the replica's own vllm:cache_config_info) and pins each request, through
the plugin's `header` policy (x-ailb-endpoint), to the replica that holds the
longest prefix of its prompt, among the replicas with at most `load_gap` more
requests in flight than the least busy one; a match shorter than `min_match`
of the prompt's blocks does not count; no match: the least busy replica. These
were prefix_cache's rules and defaults before its cost model (maxLoadGap 4,
minMatchRatio 0.5: without them one hot prefix, e.g. a shared system prompt,
pulls every new conversation to one replica), applied with exact knowledge
instead of estimates.

So the oracle shows what exact cache knowledge buys with simple rules; the
gateway only sees what it routed, keeps three replicas per block, estimates
evictions, and counts in-flight requests per gateway. It is not a bound: a
better rule on estimates can beat it.

`Ceiling` is the physical limit: the share of prompt tokens that some earlier
request of the run already computed (any replica, an unbounded cache): no
routing can hit more. `FleetCeiling` adds what the replicas' real cache sizes
leave of it, routing every prompt to its longest prefix and ignoring load.

Tokens come from the simulator's tokenizer and chat template, which the
simulated replicas use (exact there) and which the real tiny vLLM model of
vllm_replicas/ was built with (its BPE tokenizer cuts differently: close).
"""

import collections
import math
import random

from sim import tokenizer


def prompt_tokens(messages, answer=""):
    """The prompt's tokens as the replica sees them (then the answer's, if given:
    what its KV cache holds once the request is done)."""
    return tokenizer.encode(tokenizer.render_chat(messages) + answer)


def block_hashes(namespace, tokens, block_size, limit=None):
    """Chained hashes of the full blocks of `tokens` (at most `limit` blocks)."""
    n = len(tokens) // block_size
    if limit is not None:
        n = min(n, limit)
    out, parent = [], hash(namespace)
    for j in range(n):
        parent = hash((parent, tuple(tokens[j * block_size:(j + 1) * block_size])))
        out.append(parent)
    return out


def cacheable(tokens, block_size):
    """Blocks vLLM may take from its cache: all full ones but the last token's."""
    return (len(tokens) - 1) // block_size


class CacheModel:
    """One replica's prefix cache: block hashes in LRU order, bounded."""

    def __init__(self, num_blocks):
        self.capacity = num_blocks
        self.blocks = collections.OrderedDict()

    def match(self, hashes):
        n = 0
        for h in hashes:
            if h not in self.blocks:
                break
            n += 1
        return n

    def insert(self, hashes):
        """The blocks are cached, tail first as vLLM frees a request's blocks (and
        the simulator): a prefix's last blocks are evicted before its first."""
        blocks = self.blocks
        for h in reversed(hashes):
            if h in blocks:
                blocks.move_to_end(h)
            else:
                blocks[h] = None
        while len(blocks) > self.capacity:  # bounded by the inserted count
            blocks.popitem(last=False)


class Oracle:
    def __init__(self, endpoints, block_size, num_blocks, load_gap=4, min_match=0.5, seed=1):
        self.endpoints = list(endpoints)
        self.block_size = block_size
        self.caches = {e: CacheModel(num_blocks) for e in self.endpoints}
        self.inflight = {e: 0 for e in self.endpoints}
        self.load_gap = load_gap
        self.min_match = min_match
        self.rng = random.Random(seed)

    def pick(self, namespace, tokens):
        """(endpoint, matched blocks) for a request; counts it in flight."""
        hashes = block_hashes(namespace, tokens, self.block_size,
                              cacheable(tokens, self.block_size))
        least = max(1, math.ceil(self.min_match * len(hashes)))
        fewest = min(self.inflight.values())
        order = self.endpoints[:]
        self.rng.shuffle(order)  # random among equals
        best, best_key = None, None
        for e in order:
            load = self.inflight[e]
            if load > fewest + self.load_gap:
                continue
            matched = self.caches[e].match(hashes)
            key = (matched if matched >= least else 0, -load)
            if best_key is None or key > best_key:
                best, best_key = e, key
        self.inflight[best] += 1
        return best, best_key[0]

    def first_token(self, endpoint, namespace, tokens):
        """The replica has computed the prompt: its blocks are cached from now."""
        self.caches[endpoint].insert(block_hashes(namespace, tokens, self.block_size))

    def done(self, endpoint, namespace, tokens_with_answer):
        self.inflight[endpoint] -= 1
        if tokens_with_answer is not None:
            self.caches[endpoint].insert(block_hashes(namespace, tokens_with_answer,
                                                      self.block_size))


class Ceiling:
    """Prompt tokens an earlier request already computed, anywhere (unbounded)."""

    def __init__(self, block_size):
        self.block_size = block_size
        self.seen = set()
        self.hit_tokens = 0
        self.prompt_tokens = 0

    def observe(self, namespace, tokens):
        """Counts a prompt's tokens and those already computed; returns the hashes
        of its blocks that may be taken from a cache."""
        hashes = block_hashes(namespace, tokens, self.block_size,
                              cacheable(tokens, self.block_size))
        n = 0
        for h in hashes:
            if h not in self.seen:
                break
            n += 1
        self.hit_tokens += n * self.block_size
        self.prompt_tokens += len(tokens)
        return hashes

    def computed(self, namespace, tokens):
        """The tokens are computed from now; returns the hashes of their blocks."""
        hashes = block_hashes(namespace, tokens, self.block_size)
        self.seen.update(hashes)
        return hashes

    @property
    def rate(self):
        return self.hit_tokens / self.prompt_tokens if self.prompt_tokens else float("nan")


class FleetCeiling(Ceiling):
    """The ceiling again, and what routing could hit with the fleet's real caches
    (`fleet_hit_tokens`): each prompt goes to the replica whose cache (one
    CacheModel of `num_blocks` per replica) holds its longest prefix, a match
    counting from `min_match` of the prompt's blocks; none: the replicas in
    turn. Load is ignored, so it is an estimate of the best, not a bound: it
    shows the hits that the caches' size, not routing, takes away."""

    def __init__(self, endpoints, block_size, num_blocks, min_match=0.5):
        super().__init__(block_size)
        self.caches = [CacheModel(num_blocks) for _ in endpoints]
        self.min_match = min_match
        self.fleet_hit_tokens = 0
        self.turn = 0
        self.picked = {}  # (namespace, prompt tokens) -> replica, until computed

    def longest(self, hashes):
        """(replica index, matched blocks) of the longest match."""
        matches = [cache.match(hashes) for cache in self.caches]
        best = max(range(len(matches)), key=matches.__getitem__)
        return best, matches[best]

    def observe(self, namespace, tokens):
        hashes = super().observe(namespace, tokens)
        best, matched = self.longest(hashes)
        if matched < max(1, math.ceil(self.min_match * len(hashes))):
            best, matched = self.turn % len(self.caches), 0
            self.turn += 1
        self.fleet_hit_tokens += matched * self.block_size
        self.picked[(namespace, tuple(tokens))] = best

    def computed(self, namespace, tokens):
        """As Ceiling's: the prompt (then its answer) is cached from now, on the
        replica observe picked (the answer: where its prompt is)."""
        hashes = super().computed(namespace, tokens)
        best = self.picked.pop((namespace, tuple(tokens)), None)
        self.caches[self.longest(hashes)[0] if best is None else best].insert(hashes)

    @property
    def fleet_rate(self):
        return (self.fleet_hit_tokens / self.prompt_tokens if self.prompt_tokens
                else float("nan"))
