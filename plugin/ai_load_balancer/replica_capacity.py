"""How much each replica's KV cache holds, in the prefix index's blocks: what
lets the index forget the prefixes a replica must have evicted.

Configured (`kvCacheTokens` > 0, every replica the same), or read from each
replica's `vllm:cache_config_info` (num_gpu_blocks x block_size): scraped by
this gateway once a minute (stock Envoy: one elected VM, as for least_busy),
or from the metrics Higress hands over with its host list. Unknown (no scrape
answered yet, not vLLM, `kvCacheTokens` -1): 0, the index then forgets by TTL
only. Index blocks are prompt bytes; a token is about BYTES_PER_TOKEN of them.

The index forgets a prefix once its replica computed MARGIN times its cache
since: the gateway counts a replica's computation from what the index knows,
so every block reused there that the index did not see (a previous answer, a
prefix the index forgot early) runs its clock fast. Measured on 16 simulated
A10s, multi-round QA, 2 runs each (bench/results/sim-16x-a10-7b-index-capacity):
with 1x the hit rate fell 2-8 points below forgetting by TTL only (62.3% vs
64.3%, 59.0% vs 67.1%); with 2x it matched it (64.7%, 67.4%).
"""

from .metrics_scraper import MetricsScraper

BYTES_PER_TOKEN = 4
MARGIN = 2
SCRAPE_MS = 60_000


class ReplicaCapacity:
    def __init__(self, config, key, vm_id):
        self.block_bytes = config.block_size
        self.scraper = None
        # Configured: the same size for every replica (-1: unbounded, 0 here).
        self.configured = self._blocks(max(config.kv_cache_tokens, 0))
        if config.kv_cache_tokens == 0:
            self.scraper = MetricsScraper(key, vm_id, config.health.cluster, config.metrics_path,
                                          SCRAPE_MS, 5000, 10 * SCRAPE_MS)
        self._sizes = {}   # address -> KV cache in index blocks, as last read
        self._read = None  # the metrics table they were read from

    def _blocks(self, tokens):
        return MARGIN * tokens * BYTES_PER_TOKEN // self.block_bytes

    def of(self, address):
        """The replica's KV cache in index blocks; 0: unknown. Per request,
        after refresh()."""
        return self.configured or self._sizes.get(address, 0)

    def refresh(self, hosts, now_ms):
        """Per request, before the index is read: the sizes as known now.
        `hosts`: Higress's upstream host list (with metrics), else None."""
        if self.scraper is None:
            return
        metrics = ((hosts and self.scraper.from_upstream_hosts(hosts, now_ms))
                   or self.scraper.snapshot(now_ms))
        if metrics is self._read:
            return
        self._read = metrics
        for address, m in metrics.items():
            if m.cache_tokens:
                self._sizes[address] = self._blocks(m.cache_tokens)

    def tick_ms(self):
        return SCRAPE_MS if self.scraper is not None else 0

    def tick(self, root, endpoints, now_ms):
        if self.scraper is not None:
            self.scraper.tick(root, endpoints, now_ms)

    def learn_cluster(self, cluster):
        if self.scraper is not None and not self.scraper.cluster:
            self.scraper.cluster = cluster
