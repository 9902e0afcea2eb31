"""One replica's engine: paged KV cache with prefix reuse, continuous batching.

Pure logic, no I/O and no clock of its own: the caller (sim.server) asks for a
step plan with `schedule(now)`, sleeps `step_seconds(plan)`, then calls
`complete(plan, now)`, which hands generated tokens to each request's sink.
The rules follow vLLM V1's scheduler and KV cache manager:

- KV cache: `num_blocks` blocks of `block_size` tokens. A block that fills up
  gets a hash chained from its predecessor's (so it names the whole prefix up
  to it, plus the LoRA adapter) and stays cached after its request ends, in an
  LRU free list: it is reused by a request with the same prefix, or evicted
  when a free block is needed. A request's blocks are freed tail first, so a
  prefix's last blocks are evicted before its first ones.
- Prefix reuse: a new request takes the cached blocks of its leading full
  blocks (at most (prompt - 1) // block_size: one token is always computed)
  and computes only the rest. vllm:prefix_cache_queries/hits count its tokens.
- Continuous batching: each step has a budget of `max_num_batched_tokens`.
  Running requests come first (decoding ones take 1 token, prefilling ones a
  chunk of their prompt: chunked prefill), then waiting ones in FIFO order
  while the budget, `max_num_seqs`, free KV blocks and LoRA slots allow. The
  head of the queue that does not fit in the KV cache blocks the queue: that is
  when vllm:num_requests_waiting grows.
- Preemption: a running request that needs a block when none is free preempts
  the most recently admitted running request (recompute: its blocks are freed,
  it goes back to the front of the queue and later recomputes what it had,
  cached blocks permitting).
- A token is sampled when a request's every known token has its KV: the step
  that finishes the prompt gives the first token (TTFT), each later step one.
"""

import bisect
import collections
import time
import zlib

from sim import tokenizer


def _ceil_div(a, b):
    return -(-a // b)


class BlockPool:
    """KV blocks with reference counts, a hash -> block map and an LRU free list."""

    def __init__(self, num_blocks):
        self.num_blocks = num_blocks
        self.ref = [0] * num_blocks
        self.hash = [None] * num_blocks
        self.free = collections.OrderedDict((i, None) for i in range(num_blocks))
        self.cached = {}
        self.evictions = 0

    def num_free(self):
        return len(self.free)

    def usage(self):
        return 1.0 - len(self.free) / self.num_blocks

    def lookup(self, block_hash):
        return self.cached.get(block_hash)

    def touch(self, block):
        if self.ref[block] == 0:
            del self.free[block]
        self.ref[block] += 1

    def allocate(self):
        block, _ = self.free.popitem(last=False)  # least recently freed
        h = self.hash[block]
        if h is not None:
            if self.cached.get(h) == block:
                del self.cached[h]
            self.hash[block] = None
            self.evictions += 1
        self.ref[block] = 1
        return block

    def release(self, blocks):
        for block in reversed(blocks):  # tail first: evicted first
            self.ref[block] -= 1
            if self.ref[block] == 0:
                self.free[block] = None

    def cache(self, block, block_hash):
        if self.hash[block] is None and block_hash not in self.cached:
            self.hash[block] = block_hash
            self.cached[block_hash] = block

    def reset_prefix_cache(self):
        """Forgets every cached block that no request holds (vLLM's /reset_prefix_cache)."""
        for block in list(self.free):
            h = self.hash[block]
            if h is not None:
                self.cached.pop(h, None)
                self.hash[block] = None


class Histogram:
    __slots__ = ("buckets", "counts", "sum", "count")

    def __init__(self, buckets):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value):
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1


# Bucket bounds of vLLM 0.32 (as in /work/shared/samples/vllm-0.32-cpu-metrics-*.txt).
TOKENS_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
ITERATION_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0)
LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                   60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
N_BUCKETS = (1, 2, 5, 10, 20)
PREEMPTION_BUCKETS = (1, 2, 3, 4, 5, 10, 20)

FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")


class Stats:
    """Counters and histograms behind /metrics (names as vLLM's, without prefix)."""

    def __init__(self):
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0
        self.prompt_tokens = 0
        self.prompt_tokens_computed = 0
        self.prompt_tokens_cached = 0
        self.generation_tokens = 0
        self.preemptions = 0
        self.success = dict.fromkeys(FINISH_REASONS, 0)
        self.h = {
            "time_to_first_token_seconds": Histogram(TTFT_BUCKETS),
            "inter_token_latency_seconds": Histogram(ITL_BUCKETS),
            "request_time_per_output_token_seconds": Histogram(ITL_BUCKETS),
            "e2e_request_latency_seconds": Histogram(LATENCY_BUCKETS),
            "request_queue_time_seconds": Histogram(LATENCY_BUCKETS),
            "request_inference_time_seconds": Histogram(LATENCY_BUCKETS),
            "request_prefill_time_seconds": Histogram(LATENCY_BUCKETS),
            "request_decode_time_seconds": Histogram(LATENCY_BUCKETS),
            "request_prompt_tokens": Histogram(TOKENS_BUCKETS),
            "request_generation_tokens": Histogram(TOKENS_BUCKETS),
            "iteration_tokens_total": Histogram(ITERATION_BUCKETS),
            "request_max_num_generation_tokens": Histogram(TOKENS_BUCKETS),
            "request_params_n": Histogram(N_BUCKETS),
            "request_params_max_tokens": Histogram(TOKENS_BUCKETS),
            "request_num_preemptions": Histogram(PREEMPTION_BUCKETS),
            "request_prefill_kv_computed_tokens": Histogram(TOKENS_BUCKETS),
        }


class NullSink:
    """What a request's output goes to. `token` returns False to abort."""

    def token(self, text, finish_reason):
        return True

    def finish(self, request, reason):
        pass


class SimRequest:
    __slots__ = ("id", "tokens", "num_prompt", "max_tokens", "lora", "sink", "arrival",
                 "seed", "num_computed", "num_output", "blocks", "hashes", "num_cached_blocks",
                 "root_hash", "first_scheduled", "first_token", "last_token", "cached_tokens",
                 "preemptions", "deferred", "finished", "finish_reason", "running")

    def __init__(self, rid, prompt_ids, max_tokens, arrival, sink=None, lora=None, seed=0,
                 model=""):
        self.id = rid
        self.tokens = list(prompt_ids)
        self.num_prompt = len(self.tokens)
        self.max_tokens = max_tokens
        self.lora = lora
        self.sink = sink or NullSink()
        self.arrival = arrival
        self.seed = seed
        self.num_computed = 0
        self.num_output = 0
        self.blocks = []
        self.hashes = []
        self.num_cached_blocks = 0
        # vLLM seeds the chain with the LoRA name (extra keys); the model is
        # per replica anyway, kept for clarity.
        self.root_hash = zlib.crc32(f"{model}\x00{lora or ''}".encode())
        self.first_scheduled = None
        self.first_token = None
        self.last_token = None
        self.cached_tokens = 0
        self.preemptions = 0
        self.deferred = False
        self.finished = False
        self.finish_reason = None
        self.running = False

    def block_hash(self, index, block_size):
        hashes = self.hashes
        while len(hashes) <= index:  # bounded by index
            j = len(hashes)
            parent = hashes[j - 1] if j else self.root_hash
            hashes.append(hash((parent, tuple(self.tokens[j * block_size:(j + 1) * block_size]))))
        return hashes[index]


class Step:
    __slots__ = ("items", "prefill_tokens", "prefill_attn_ktok", "decode_seqs", "decode_ctx_ktok",
                 "lora_loads", "preempted")

    def __init__(self):
        self.items = []             # (request, new tokens)
        self.prefill_tokens = 0
        self.prefill_attn_ktok = 0.0
        self.decode_seqs = 0
        self.decode_ctx_ktok = 0.0
        self.lora_loads = 0
        self.preempted = 0

    @property
    def tokens(self):
        return self.prefill_tokens + self.decode_seqs


class Engine:
    def __init__(self, profile):
        self.profile = profile
        self.pool = BlockPool(profile.num_blocks)
        self.waiting = collections.deque()
        self.running = []
        self.stats = Stats()
        self.loaded_loras = collections.OrderedDict()  # adapters in GPU slots, LRU
        self.lora_info = collections.OrderedDict()    # (running, waiting) -> last time set
        self.steps = 0

    # --- requests -------------------------------------------------------------------

    def add(self, request):
        self.waiting.append(request)

    def has_work(self):
        return bool(self.running or self.waiting)

    def abort(self, request, now):
        if request.finished:
            return
        if request.running:
            self.running.remove(request)
        else:
            try:
                self.waiting.remove(request)
            except ValueError:
                pass
        self._finish(request, "abort", now)

    # --- scheduling -----------------------------------------------------------------

    def _preempt(self, request):
        self.pool.release(request.blocks)
        request.blocks = []
        request.num_computed = 0
        request.num_cached_blocks = 0
        request.running = False
        request.preemptions += 1
        self.stats.preemptions += 1
        self.waiting.appendleft(request)

    def _lookup(self, request):
        """Cached blocks of the request's leading full blocks (one token is always left)."""
        bs = self.profile.block_size
        hits = []
        for j in range((len(request.tokens) - 1) // bs):
            block = self.pool.lookup(request.block_hash(j, bs))
            if block is None:
                break
            hits.append(block)
        return hits

    def schedule(self, now):
        p = self.profile
        bs = p.block_size
        pool = self.pool
        step = Step()
        budget = p.max_num_batched_tokens
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(len(req.tokens) - req.num_computed, budget)
            need = _ceil_div(req.num_computed + n, bs) - len(req.blocks)
            scheduled = True
            while need > pool.num_free():  # bounded: each pass removes a running request
                victim = self.running.pop()
                self._preempt(victim)
                step.preempted += 1
                if victim is req:
                    scheduled = False
                    break
            if not scheduled:
                break
            for _ in range(need):
                req.blocks.append(pool.allocate())
            self._account(step, req, n)
            budget -= n
            i += 1

        if not step.preempted:
            running_loras = {r.lora for r in self.running if r.lora}
            skipped = []
            for req in self.waiting:
                req.deferred = False
            while self.waiting and budget > 0 and len(self.running) < p.max_num_seqs:
                req = self.waiting[0]
                if (req.lora and req.lora not in running_loras
                        and len(running_loras) >= p.max_loras):
                    req.deferred = True  # vLLM: waits for a LoRA slot, others go on
                    skipped.append(self.waiting.popleft())
                    continue
                hits = self._lookup(req)
                computed = len(hits) * bs
                n = min(len(req.tokens) - computed, budget)
                need = _ceil_div(computed + n, bs) - len(hits)
                held_free = sum(1 for b in hits if pool.ref[b] == 0)
                if need > pool.num_free() - held_free:
                    break  # the queue's head does not fit: it (and all after it) wait
                for b in hits:
                    pool.touch(b)
                req.blocks = hits + [pool.allocate() for _ in range(need)]
                req.num_computed = computed
                req.num_cached_blocks = len(hits)
                self.waiting.popleft()
                self.running.append(req)
                req.running = True
                if req.first_scheduled is None:
                    req.first_scheduled = now
                    req.cached_tokens = computed
                    s = self.stats
                    s.prefix_cache_queries += req.num_prompt
                    s.prefix_cache_hits += computed
                    s.prompt_tokens += req.num_prompt
                    s.prompt_tokens_cached += computed
                    s.prompt_tokens_computed += req.num_prompt - computed
                    s.h["request_queue_time_seconds"].observe(now - req.arrival)
                if req.lora:
                    running_loras.add(req.lora)
                self._account(step, req, n)
                budget -= n
            self.waiting.extendleft(reversed(skipped))

        if p.lora_adapters:
            self._load_loras(step)
            self._note_lora_info()
        return step

    def _account(self, step, req, n):
        step.items.append((req, n))
        if n == 1 and req.num_computed >= req.num_prompt:  # decoding
            step.decode_seqs += 1
            step.decode_ctx_ktok += req.num_computed / 1000
        else:
            step.prefill_tokens += n
            step.prefill_attn_ktok += n * (req.num_computed + n / 2) / 1000

    def _load_loras(self, step):
        wanted = {req.lora for req, _ in step.items if req.lora}
        for name in wanted:
            if name in self.loaded_loras:
                self.loaded_loras.move_to_end(name)
            else:
                step.lora_loads += 1
                self.loaded_loras[name] = True
        for name in list(self.loaded_loras):  # bounded by max_loras + len(wanted)
            if len(self.loaded_loras) <= self.profile.max_loras:
                break
            if name not in wanted:
                del self.loaded_loras[name]

    def _note_lora_info(self):
        running = ",".join(sorted({r.lora for r in self.running if r.lora}))
        waiting = ",".join(sorted({r.lora for r in self.waiting if r.lora}))
        key = (running, waiting)
        self.lora_info.pop(key, None)
        self.lora_info[key] = time.time()  # vLLM: set_to_current_time()
        while len(self.lora_info) > 32:  # vLLM keeps every label set; bounded here
            self.lora_info.popitem(last=False)

    def step_seconds(self, step):
        if not step.items:
            return 0.0
        p = self.profile
        return (p.step_overhead_s + step.prefill_tokens * p.prefill_s_per_token +
                step.prefill_attn_ktok * p.prefill_attn_s_per_token_ktok +
                step.decode_seqs * p.decode_s_per_seq +
                step.decode_ctx_ktok * p.decode_s_per_ctx_ktok +
                step.lora_loads * p.lora_load_s)

    # --- completing a step ----------------------------------------------------------

    def complete(self, step, now):
        bs = self.profile.block_size
        pool = self.pool
        stats = self.stats
        self.steps += 1
        stats.h["iteration_tokens_total"].observe(step.tokens)
        for req, n in step.items:
            if req.finished or not req.running:
                continue
            req.num_computed += n
            full = req.num_computed // bs
            while req.num_cached_blocks < full:  # bounded by full
                j = req.num_cached_blocks
                pool.cache(req.blocks[j], req.block_hash(j, bs))
                req.num_cached_blocks += 1
            if req.num_computed < len(req.tokens):
                continue  # prompt chunk: no token yet
            text, token = tokenizer.generated_token(req.seed, req.num_output)
            req.tokens.append(token)
            req.num_output += 1
            stats.generation_tokens += 1
            if req.first_token is None:
                req.first_token = now
                stats.h["time_to_first_token_seconds"].observe(now - req.arrival)
            else:
                stats.h["inter_token_latency_seconds"].observe(now - req.last_token)
            req.last_token = now
            done = req.num_output >= req.max_tokens
            alive = req.sink.token(text, "length" if done else None)
            if done or not alive:
                self.running.remove(req)
                self._finish(req, "length" if done else "abort", now)

    def _finish(self, req, reason, now):
        req.finished = True
        req.finish_reason = reason
        if req.blocks:
            self.pool.release(req.blocks)
            req.blocks = []
        req.running = False
        s = self.stats
        s.success[reason] += 1
        h = s.h
        h["e2e_request_latency_seconds"].observe(now - req.arrival)
        h["request_prompt_tokens"].observe(req.num_prompt)
        h["request_generation_tokens"].observe(req.num_output)
        h["request_max_num_generation_tokens"].observe(req.max_tokens)
        h["request_params_max_tokens"].observe(req.max_tokens)
        h["request_params_n"].observe(1)
        h["request_num_preemptions"].observe(req.preemptions)
        if req.first_scheduled is not None:
            h["request_inference_time_seconds"].observe(now - req.first_scheduled)
            h["request_prefill_kv_computed_tokens"].observe(req.num_prompt - req.cached_tokens)
            if req.first_token is not None:
                h["request_prefill_time_seconds"].observe(req.first_token - req.first_scheduled)
                h["request_decode_time_seconds"].observe(now - req.first_token)
                if req.num_output > 1:
                    h["request_time_per_output_token_seconds"].observe(
                        (now - req.first_token) / (req.num_output - 1))
        req.sink.finish(req, reason)

    # --- gauges ---------------------------------------------------------------------

    def num_waiting_deferred(self):
        return sum(1 for r in self.waiting if r.deferred)
