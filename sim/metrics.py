"""/metrics in vLLM 0.32's exposition: the same names, HELP texts, label sets,
label order (alphabetical, as prometheus_client writes them), bucket bounds,
`_created` samples and value formatting as /work/shared/samples/vllm-0.32-cpu-*.txt.

The process_*, python_* and http_* series of the API server are left out;
vLLM series that the simulator has no use for (MFU estimates, multi-modal and
external caches, admission rejections) are there, at zero.
"""

from sim.engine import FINISH_REASONS

HELP = {
    "estimated_flops_per_gpu": ("Estimated number of floating point operations per GPU (for "
                                "Model Flops Utilization calculations)."),
    "estimated_read_bytes_per_gpu": ("Estimated number of bytes read from memory per GPU (for "
                                     "Model Flops Utilization calculations)."),
    "estimated_write_bytes_per_gpu": ("Estimated number of bytes written to memory per GPU (for "
                                      "Model Flops Utilization calculations)."),
    "mm_cache_queries": "Multi-modal cache queries, in terms of number of queried items.",
    "mm_cache_hits": "Multi-modal cache hits, in terms of number of cached items.",
    "prompt_tokens_cached_by_source": (
        "Prefix-cache hit tokens by the cache tier that supplied them: device (local HBM), "
        "host (offloaded to DRAM), disk, p2p (transferred from another vLLM instance) or "
        "external_unspecified. Counted at admission; sums to vllm:prefix_cache_hits + "
        "vllm:external_prefix_cache_hits."),
    "admission_rejections": "Number of admission attempts rejected by a queue limit, by reason.",
    "num_requests_running": "Number of requests in model execution batches.",
    "num_requests_waiting": "Number of requests waiting to be processed.",
    "num_requests_waiting_by_reason": (
        "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for "
        "scheduling capacity; 'deferred' = deferred by transient constraints (LoRA budget, KV "
        "transfer, blocked status). Sum of all reasons equals vllm:num_requests_waiting."),
    "engine_sleep_state": (
        "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is "
        "awake; weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep level 2."),
    "kv_cache_usage_perc": "KV-cache usage. 1 means 100 percent usage.",
    "prefix_cache_queries": "Prefix cache queries, in terms of number of queried tokens.",
    "prefix_cache_hits": "Prefix cache hits, in terms of number of cached tokens.",
    "external_prefix_cache_queries": (
        "External prefix cache queries from KV connector cross-instance cache sharing, in "
        "terms of number of queried tokens."),
    "external_prefix_cache_hits": (
        "External prefix cache hits from KV connector cross-instance cache sharing, in terms "
        "of number of cached tokens."),
    "num_preemptions": "Cumulative number of preemption from the engine.",
    "prompt_tokens": "Number of prefill tokens processed.",
    "prompt_tokens_by_source": "Number of prompt tokens by source.",
    "prompt_tokens_cached": "Number of cached prompt tokens (local + external).",
    "generation_tokens": "Number of generation tokens processed.",
    "request_success": "Count of successfully processed requests.",
    "request_prompt_tokens": "Number of prefill tokens processed.",
    "request_generation_tokens": "Number of generation tokens processed.",
    "iteration_tokens_total": "Histogram of number of tokens per engine_step.",
    "request_max_num_generation_tokens":
        "Histogram of maximum number of requested generation tokens.",
    "request_params_n": "Histogram of the n request parameter.",
    "request_params_max_tokens": "Histogram of the max_tokens request parameter.",
    "time_to_first_token_seconds": "Histogram of time to first token in seconds.",
    "inter_token_latency_seconds": "Histogram of inter-token latency in seconds.",
    "request_time_per_output_token_seconds":
        "Histogram of time_per_output_token_seconds per request.",
    "e2e_request_latency_seconds": "Histogram of e2e request latency in seconds.",
    "request_queue_time_seconds": "Histogram of time spent in WAITING phase for request.",
    "request_inference_time_seconds": "Histogram of time spent in RUNNING phase for request.",
    "request_prefill_time_seconds": "Histogram of time spent in PREFILL phase for request.",
    "request_decode_time_seconds": "Histogram of time spent in DECODE phase for request.",
    "request_num_preemptions": "Histogram of the number of times a request was preempted.",
    "request_prefill_kv_computed_tokens":
        "Histogram of new KV tokens computed during prefill (excluding cached tokens).",
    "lora_requests_info": "Running stats on lora requests.",
    "cache_config_info": "Information of the LLMEngine CacheConfig",
}

HISTOGRAMS = (  # vLLM's order
    "request_prompt_tokens", "request_generation_tokens", "iteration_tokens_total",
    "request_max_num_generation_tokens", "request_params_n", "request_params_max_tokens",
    "time_to_first_token_seconds", "inter_token_latency_seconds",
    "request_time_per_output_token_seconds", "e2e_request_latency_seconds",
    "request_queue_time_seconds", "request_inference_time_seconds",
    "request_prefill_time_seconds", "request_decode_time_seconds", "request_num_preemptions",
    "request_prefill_kv_computed_tokens",
)


def fmt(value):
    """prometheus_client's float formatting: 3.0, 0.25, 1.795e+09, +Inf."""
    if value == float("inf"):
        return "+Inf"
    if value == float("-inf"):
        return "-Inf"
    if value != value:
        return "NaN"
    return repr(float(value))


def _escape(value):
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs):
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(pairs)) + "}"


class _Out:
    def __init__(self):
        self.lines = []

    def family(self, name, kind, help_name=None):
        self.lines.append(f"# HELP vllm:{name} {HELP[help_name or name]}")
        self.lines.append(f"# TYPE vllm:{name} {kind}")

    def sample(self, name, labels, value):
        self.lines.append(f"vllm:{name}{_labels(labels)} {fmt(value)}")


def render(engine, model_name, created, now, engine_index="0"):
    """The /metrics body of a replica (str)."""
    p = engine.profile
    s = engine.stats
    base = [("engine", engine_index), ("model_name", model_name)]
    o = _Out()

    def gauge(name, value, extra=()):
        o.family(name, "gauge")
        o.sample(name, base + list(extra), value)

    def counter(name, values, extra_key=None, labels=None):
        """values: a number, or {label value: number} under extra_key."""
        labels = base if labels is None else labels
        o.family(name + "_total", "counter", name)
        items = values.items() if isinstance(values, dict) else [(None, values)]
        for key, value in items:
            extra = [(extra_key, key)] if extra_key else []
            o.sample(name + "_total", labels + extra, value)
        o.family(name + "_created", "gauge", name)
        for key, _ in items:
            extra = [(extra_key, key)] if extra_key else []
            o.sample(name + "_created", labels + extra, created)

    for name in ("estimated_flops_per_gpu", "estimated_read_bytes_per_gpu",
                 "estimated_write_bytes_per_gpu"):
        counter(name, 0)

    deferred = engine.num_waiting_deferred()
    gauge("num_requests_running", len(engine.running))
    gauge("num_requests_waiting", len(engine.waiting))
    o.family("num_requests_waiting_by_reason", "gauge")
    o.sample("num_requests_waiting_by_reason", base + [("reason", "capacity")],
             len(engine.waiting) - deferred)
    o.sample("num_requests_waiting_by_reason", base + [("reason", "deferred")], deferred)
    o.family("engine_sleep_state", "gauge")
    for state, value in (("awake", 1), ("weights_offloaded", 0), ("discard_all", 0)):
        o.sample("engine_sleep_state", base + [("sleep_state", state)], value)
    gauge("kv_cache_usage_perc", engine.pool.usage())
    counter("prefix_cache_queries", s.prefix_cache_queries)
    counter("prefix_cache_hits", s.prefix_cache_hits)
    counter("external_prefix_cache_queries", 0)
    counter("external_prefix_cache_hits", 0)
    counter("mm_cache_queries", 0)
    counter("mm_cache_hits", 0)
    counter("num_preemptions", s.preemptions)
    counter("prompt_tokens", s.prompt_tokens)
    counter("prompt_tokens_by_source", {"local_compute": s.prompt_tokens_computed,
                                        "local_cache_hit": s.prompt_tokens_cached,
                                        "external_kv_transfer": 0}, "source")
    counter("prompt_tokens_cached", s.prompt_tokens_cached)
    counter("prompt_tokens_cached_by_source", {"device": s.prompt_tokens_cached, "host": 0,
                                               "p2p": 0, "disk": 0, "external_unspecified": 0},
            "source")
    counter("generation_tokens", s.generation_tokens)
    counter("request_success", {r: s.success[r] for r in FINISH_REASONS}, "finished_reason")
    counter("admission_rejections", {"max_num_queued_reqs": 0, "max_num_queued_tokens": 0},
            "reason", labels=[("model_name", model_name)])

    for name in HISTOGRAMS:
        h = s.h[name]
        o.family(name, "histogram")
        cumulative = 0
        for bound, n in zip(h.buckets + (float("inf"),), h.counts):
            cumulative += n
            o.sample(name + "_bucket", base + [("le", fmt(bound))], cumulative)
        o.sample(name + "_count", base, h.count)
        o.sample(name + "_sum", base, h.sum)
        o.family(name + "_created", "gauge", name)
        o.sample(name + "_created", base, created)

    if p.lora_adapters:
        o.family("lora_requests_info", "gauge")
        for (running, waiting), when in engine.lora_info.items():
            o.sample("lora_requests_info", [("max_lora", p.max_loras),
                                            ("running_lora_adapters", running),
                                            ("waiting_lora_adapters", waiting)], when)

    o.family("cache_config_info", "gauge")
    kv_tokens = p.num_blocks * p.block_size
    o.sample("cache_config_info", [
        ("_block_size_resolved", "True"), ("block_size", p.block_size),
        ("cache_dtype", "auto"), ("cache_hit_alignment_tokens", "None"),
        ("effective_attention_block_size", p.block_size),
        ("enable_mamba_shared_prefix_checkpoint", "False"), ("enable_prefix_caching", "True"),
        ("engine", engine_index), ("gpu_memory_utilization", p.gpu_memory_utilization),
        ("hash_block_size", "None"), ("is_attention_free", "False"),
        ("kv_cache_dtype_skip_layers", "[]"), ("kv_cache_layout", "None"),
        ("kv_cache_max_concurrency", fmt(kv_tokens / p.max_model_len)),
        ("kv_cache_memory_bytes", p.kv_cache_memory_bytes or "None"),
        ("kv_cache_size_tokens", kv_tokens), ("kv_offloading_backend", "native"),
        ("kv_offloading_size", "None"), ("kv_sharing_fast_prefill", "False"),
        ("mamba_block_size", "None"), ("mamba_cache_dtype", "auto"),
        ("mamba_cache_mode", "none"), ("mamba_page_size_padded", "None"),
        ("mamba_ssm_cache_dtype", "float32"), ("num_cpu_blocks", "None"),
        ("num_gpu_blocks", p.num_blocks),
        ("num_gpu_blocks_override", p.num_gpu_blocks_override or "None"),
        ("prefix_cache_retention_interval", "0"), ("prefix_caching_hash_algo", "sha256"),
        ("prefix_match_unit", "None"), ("replayssm_buffer_len", "16"),
        ("skip_page_size_padded", "None"), ("sliding_window", "None"),
        ("swa_bounded_replay", "True"), ("use_kda_recoverssm", "False"),
        ("use_replayssm", "False"), ("user_specified_block_size", "False"),
    ], 1.0)
    return "\n".join(o.lines) + "\n"
