"""One inference replica's load, read from its Prometheus /metrics text.

    from_text(text, scraped_at_ms, extra_names=()) -> ReplicaMetrics | None

Understands vLLM (current and legacy names) and SGLang:

    field            vLLM                              SGLang
    waiting          vllm:num_requests_waiting         sglang:num_queue_reqs
    running          vllm:num_requests_running         sglang:num_running_reqs
    kv_cache_usage   vllm:kv_cache_usage_perc          sglang:token_usage
                     (older vLLM: vllm:gpu_cache_usage_perc)
    adapters         vllm:lora_requests_info{running_lora_adapters="a,b",
                     waiting_lora_adapters="..", max_lora="N"}: the sample
                     with the newest value (a timestamp) wins
    cache_tokens     vllm:cache_config_info{num_gpu_blocks="N",
                     block_size="B"}: N x B, the KV cache's size in tokens

Several label sets (per model_name, per engine of a data-parallel replica)
are summed for counts; usage takes the max (the fullest engine decides).
NaN and infinite samples are ignored. to_json/from_json are the compact form
kept in shared data. Pure: no host calls.
"""

import json
import sys
from dataclasses import dataclass

from proxywasm import prometheus

VLLM_WAITING = "vllm:num_requests_waiting"
VLLM_RUNNING = "vllm:num_requests_running"
VLLM_KV_USAGE = "vllm:kv_cache_usage_perc"
VLLM_GPU_CACHE_USAGE = "vllm:gpu_cache_usage_perc"  # legacy, removed from vLLM
VLLM_LORA_INFO = "vllm:lora_requests_info"
VLLM_CACHE_CONFIG = "vllm:cache_config_info"
SGLANG_WAITING = "sglang:num_queue_reqs"
SGLANG_RUNNING = "sglang:num_running_reqs"
SGLANG_USAGE = "sglang:token_usage"

_VLLM = frozenset((VLLM_WAITING, VLLM_RUNNING, VLLM_KV_USAGE, VLLM_LORA_INFO,
                   VLLM_CACHE_CONFIG))
_SGLANG = frozenset((SGLANG_WAITING, SGLANG_RUNNING, SGLANG_USAGE))
_INF = float("inf")
_MAX = sys.float_info.max
_NONE = frozenset()


@dataclass(frozen=True, slots=True)
class ReplicaMetrics:
    """One replica's scraped serving metrics."""

    waiting: float                   # requests queued, not yet scheduled
    running: float                   # requests being decoded
    kv_cache_usage: float            # 0..1
    active_adapters: frozenset       # LoRA adapters of running requests
    waiting_adapters: frozenset      # LoRA adapters of waiting requests
    max_adapters: int                # LoRA adapters the replica can hold at once; 0 = unknown
    scraped_at_ms: int
    extra: tuple = ()                # ((name, value), ...) for the extra names asked for
    cache_tokens: int = 0            # KV cache size in tokens; 0 = unknown


def from_text(text, scraped_at_ms, extra_names=()):
    """The metrics in a /metrics body (str or bytes), or None when it holds
    none of the known metrics. Never raises for bad input."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        text = bytes(text).decode("utf-8", "replace")
    elif not isinstance(text, str):
        return None
    extra_names = tuple(n for n in dict.fromkeys(extra_names) if isinstance(n, str) and n)
    # Look for one engine's names only: every absent name costs a scan of the text.
    if "vllm:" in text or "sglang:" not in text:
        wanted = _VLLM
    else:
        wanted = _SGLANG
    found = prometheus.parse(text, wanted.union(extra_names) if extra_names else wanted)
    if wanted is _VLLM and VLLM_KV_USAGE not in found:
        found.update(prometheus.parse(text, (VLLM_GPU_CACHE_USAGE,)))

    waiting = _sum(found, VLLM_WAITING, SGLANG_WAITING)
    running = _sum(found, VLLM_RUNNING, SGLANG_RUNNING)
    usage = _max(found, VLLM_KV_USAGE, VLLM_GPU_CACHE_USAGE, SGLANG_USAGE)
    lora = _newest(found.get(VLLM_LORA_INFO))
    if waiting is None and running is None and usage is None and lora is None:
        return None
    active = waiting_adapters = frozenset()
    max_adapters = 0
    if lora is not None:
        active = _adapters(lora.get("running_lora_adapters"))
        waiting_adapters = _adapters(lora.get("waiting_lora_adapters"))
        max_adapters = _whole(lora.get("max_lora"))
    extra = tuple((name, _sum(found, name)) for name in extra_names if name in found)
    cache = _newest(found.get(VLLM_CACHE_CONFIG)) or {}
    return ReplicaMetrics(
        waiting=waiting or 0.0, running=running or 0.0,
        kv_cache_usage=min(max(usage or 0.0, 0.0), 1.0),
        active_adapters=active, waiting_adapters=waiting_adapters, max_adapters=max_adapters,
        scraped_at_ms=int(scraped_at_ms), extra=extra,
        cache_tokens=_whole(cache.get("num_gpu_blocks")) * _whole(cache.get("block_size")))


def _finite(samples):
    return [v for _, v in samples if -_INF < v < _INF]  # also drops NaN


def _sum(found, *names):
    """Sum over the label sets of the first name present (None: none is)."""
    for name in names:
        samples = found.get(name)
        if samples is not None:
            total = float(sum(_finite(samples)))
            return max(-_MAX, min(total, _MAX))  # huge samples can sum past any float
    return None


def _max(found, *names):
    for name in names:
        samples = found.get(name)
        if samples is not None:
            values = _finite(samples)
            return max(values) if values else 0.0
    return None


def _newest(samples):
    """The labels of the info sample with the largest (newest) value."""
    best, best_value = None, None
    for labels, value in samples or ():
        if best is None or (value == value and (best_value != best_value or value > best_value)):
            best, best_value = labels, value
    return best


_adapter_sets = {}  # "a,b" -> frozenset: the same few adapter lists come back every scrape


def _adapters(value):
    if not value:
        return _NONE
    found = _adapter_sets.get(value)
    if found is None:
        found = frozenset(a for a in (p.strip() for p in value.split(",")) if a)
        if len(_adapter_sets) >= 256:
            _adapter_sets.clear()
        _adapter_sets[value] = found
    return found


def _whole(value):
    try:
        number = int(float(value))
    except (TypeError, ValueError, OverflowError):
        return 0
    return number if number > 0 else 0


# --- compact form for shared data ------------------------------------------------

def from_status_json(body, scraped_at_ms, field):
    """ReplicaMetrics from a JSON status body whose dotted `field` (e.g.
    "queue_depth" or "stats.waiting") is the replica's queue; None if absent."""
    try:
        value = json.loads(body)
        for part in field.split("."):
            value = value[part]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        waiting = float(value)  # OverflowError: an int beyond any float
    except (ValueError, KeyError, TypeError, IndexError, OverflowError, RecursionError,
            LookupError):  # LookupError: not UTF-8, and the wasm build has no other codec
        return None
    if not -_INF < waiting < _INF:  # NaN or infinite: ignored, as from_text does
        return None
    return ReplicaMetrics(waiting, 0.0, 0.0, frozenset(), frozenset(), 0, scraped_at_ms,
                          (("waiting", waiting),))


def to_json(m):
    """A JSON-ready list: [waiting, running, kv_cache_usage, "active,adapters",
    "waiting,adapters", max_adapters, scraped_at_ms, [[name, value], ...], cache_tokens]."""
    return [_compact(m.waiting), _compact(m.running), _compact(m.kv_cache_usage),
            ",".join(sorted(m.active_adapters)), ",".join(sorted(m.waiting_adapters)),
            m.max_adapters, m.scraped_at_ms, [[n, _compact(v)] for n, v in m.extra],
            m.cache_tokens]


def from_json(d):
    """The ReplicaMetrics of to_json's list (or of its JSON text); None when
    `d` is not one."""
    try:
        if isinstance(d, (str, bytes, bytearray)):
            d = json.loads(d)
        waiting, running, usage, active, queued, max_adapters, scraped_at, extra, cache = d
        # Positional, with shortcuts for the usual empties: readers decode every
        # replica's entry once per scrape round.
        return ReplicaMetrics(
            float(waiting), float(running), float(usage),
            _adapters(active) if active else _NONE, _adapters(queued) if queued else _NONE,
            int(max_adapters), int(scraped_at),
            tuple([(str(n), float(v)) for n, v in extra]) if extra else (), int(cache))
    except (TypeError, ValueError, AttributeError, OverflowError, RecursionError, LookupError):
        return None


def _compact(value):
    """3.0 -> 3 (shorter JSON); other floats unchanged."""
    if value.__class__ is float and value.is_integer() and -2**53 < value < 2**53:
        return int(value)
    return value
