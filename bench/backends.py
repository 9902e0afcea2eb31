"""The replicas behind the gateway: the simulator (default), real vLLM CPU
replicas (vllm_replicas/start.py), or endpoints already running. And what the
benchmark reads from them: vLLM's own /metrics counters.
"""

import json
import os
import urllib.request

from sim import client as sim_client
from sim.fleet import Fleet
from vllm_replicas import start as vllm_start


class Backend:
    kind = "external"

    def __init__(self, endpoints, names=None):
        self.endpoints = list(endpoints)
        self.names = names or [f"r{i}" for i in range(len(self.endpoints))]
        self.model = sim_client.models(self.endpoints[0])[0]
        config = cache_config(self.endpoints[0])
        self.block_size = int(config.get("block_size", 16))
        self.num_blocks = int(config.get("num_gpu_blocks", 1000))

    @property
    def name_of(self):
        return dict(zip(self.endpoints, self.names))

    def describe(self):
        return {"kind": self.kind, "replicas": len(self.endpoints), "model": self.model,
                "block_size": self.block_size, "num_blocks": self.num_blocks}

    def stop(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class SimBackend(Backend):
    kind = "simulator"

    def __init__(self, replicas, profile, lora=(), **overrides):
        if lora:
            overrides["lora_adapters"] = ",".join(lora)
        self.profile = profile
        self.fleet = Fleet.start(replicas, profile, subprocess=True, **overrides)
        try:
            super().__init__(self.fleet.addresses, self.fleet.names)
        except BaseException:
            self.fleet.stop()
            raise

    def describe(self):
        return {**super().describe(), "profile": self.profile}

    def stop(self):
        self.fleet.stop()


class VllmBackend(Backend):
    kind = "real vLLM"

    def __init__(self, count=2, **options):
        self.rates = None  # bench/calibrate.py's measurements, once taken
        # vLLM serves /reset_prefix_cache only in its dev mode.
        os.environ.setdefault("VLLM_SERVER_DEV_MODE", "1")
        self.replicas = vllm_start.VllmReplicas.start(count, **options)  # e.g. num_gpu_blocks
        try:
            super().__init__(self.replicas.endpoints)
        except BaseException:
            self.replicas.stop()
            raise

    def describe(self):
        info = self.replicas.describe()
        return {**super().describe(), "dtype": info["dtype"], "dtype_reason": info["dtype_reason"]}

    def stop(self):
        self.replicas.stop()


# --- reading the replicas -------------------------------------------------------------

def cache_config(endpoint):
    for name, labels, _ in sim_client.metrics(endpoint):
        if name == "vllm:cache_config_info":
            return labels
    return {}


COUNTERS = {
    "hits": "vllm:prefix_cache_hits_total",
    "queries": "vllm:prefix_cache_queries_total",
    "requests": "vllm:request_success_total",
    "generation_tokens": "vllm:generation_tokens_total",
    "prompt_tokens": "vllm:prompt_tokens_total",
    "preemptions": "vllm:num_preemptions_total",
}


def counters(endpoint):
    samples = sim_client.metrics(endpoint)
    return {key: sim_client.metric_value(samples, name) for key, name in COUNTERS.items()}


def snapshot(endpoints):
    return {e: counters(e) for e in endpoints}


def delta(before, after):
    return {e: {k: after[e][k] - before[e][k] for k in after[e]} for e in after}


def reset_prefix_caches(endpoints):
    """POST /reset_prefix_cache to each replica; True if every one accepted."""
    ok = True
    for e in endpoints:
        try:
            status, _, _ = sim_client.request(e, "POST", "/reset_prefix_cache", timeout=30)
            ok = ok and status == 200
        except OSError:
            ok = False
    return ok


def sim_stats(endpoints):
    """The simulator's /sim/stats per replica (None for a real server)."""
    out = {}
    for e in endpoints:
        try:
            with urllib.request.urlopen(f"http://{e}/sim/stats", timeout=5) as r:
                out[e] = json.loads(r.read())
        except (OSError, ValueError):
            out[e] = None
    return out


def wait_idle(endpoints, timeout=60):
    """Until no replica has requests running or waiting (bounded)."""
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = 0
        for e in endpoints:
            samples = sim_client.metrics(e)
            busy += sim_client.metric_value(samples, "vllm:num_requests_running")
            busy += sim_client.metric_value(samples, "vllm:num_requests_waiting")
        if not busy:
            return True
        time.sleep(0.5)
    return False
