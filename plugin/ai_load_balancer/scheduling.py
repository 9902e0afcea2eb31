"""GIE's filter tree for least_busy's default preset (policies/least_busy.py
runs it as the pipeline filter `gie_tree`): critical requests go through
low-queue -> LoRA affinity / can-load-LoRA -> least queue -> least KV cache;
sheddable ones only to replicas with spare capacity, else shed. Pure:
candidates (with their scraped metrics) in, the ones kept out.
"""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Candidate:
    """A replica as least_busy's filters and scorers see it."""

    address: str
    metrics: object          # replica_metrics.ReplicaMetrics
    prefix_blocks: int = 0   # leading prompt blocks this replica holds


@dataclass(frozen=True, slots=True)
class SchedRequest:
    """The request as least_busy's filters see it."""

    model: str               # the model or LoRA adapter the request names
    critical: bool


@dataclass(frozen=True, slots=True)
class Thresholds:
    """least_busy's filter thresholds (GIE's names)."""

    queue_critical: int = 5      # GIE queueThresholdCritical
    queue_lora: int = 50         # GIE queueingThresholdLoRA
    kv_cache: float = 0.8        # GIE kvCacheThreshold


class Shed(Exception):
    """A sheddable request found no replica with spare capacity."""


# --- filters: (request, candidates, thresholds) -> the candidates that pass -----------

def low_queue(request, candidates, t):
    return [c for c in candidates if c.metrics.waiting < t.queue_lora]


def lora_affinity(request, candidates, t):
    return [c for c in candidates if request.model in c.metrics.active_adapters
            or request.model in c.metrics.waiting_adapters]


def can_load_lora(request, candidates, t):
    return [c for c in candidates if not c.metrics.max_adapters
            or len(c.metrics.active_adapters) < c.metrics.max_adapters]


def low_lora_cost(request, candidates, t):
    affine = set(c.address for c in lora_affinity(request, candidates, t))
    loadable = set(c.address for c in can_load_lora(request, candidates, t))
    return [c for c in candidates if c.address in affine or c.address in loadable]


def _lowest_band(candidates, value):
    """GIE's least-X filters: those within (max - min) / n of the minimum."""
    values = [value(c) for c in candidates]
    low, high = min(values), max(values)
    band = low + (high - low) / len(candidates)
    return [c for c, v in zip(candidates, values) if v <= band]


def least_queue(request, candidates, t):
    return _lowest_band(candidates, lambda c: c.metrics.waiting)


def least_kv_cache(request, candidates, t):
    return _lowest_band(candidates, lambda c: c.metrics.kv_cache_usage)


def has_capacity(request, candidates, t):
    return [c for c in candidates
            if c.metrics.waiting <= t.queue_critical and c.metrics.kv_cache_usage < t.kv_cache]


def is_critical(request, candidates, t):
    return candidates if request.critical else []


FILTERS = {f.__name__: f for f in (low_queue, lora_affinity, can_load_lora, low_lora_cost,
                                   least_queue, least_kv_cache, has_capacity, is_critical)}


@dataclass(frozen=True, slots=True)
class Node:
    """One step of a filter tree: run `filter`; go on with what passed to
    `on_success`, or (nothing passed) with the step's input to `on_failure`.
    A missing `on_failure` at a failed step means: shed the request."""
    filter: str
    on_success: object = None
    on_failure: object = None
    sheds: bool = False


_KV = Node("least_kv_cache")
_QUEUE_KV = Node("least_queue", _KV)  # least_queue never empties the set
_QUEUE_LORA_KV = Node("least_queue", Node("low_lora_cost", _KV, _KV))
DEFAULT_TREE = Node(
    "is_critical",
    on_success=Node("low_queue",
                    on_success=Node("lora_affinity", on_success=_QUEUE_KV,
                                    on_failure=Node("can_load_lora", _QUEUE_KV, _QUEUE_KV)),
                    on_failure=_QUEUE_LORA_KV),
    on_failure=Node("has_capacity", on_success=_QUEUE_LORA_KV, sheds=True))


def run_tree(node, request, candidates, thresholds):
    """The candidates the tree keeps; raises Shed at a shedding step that fails."""
    while node is not None:
        passed = FILTERS[node.filter](request, candidates, thresholds)
        if passed:
            candidates, node = passed, node.on_success
        elif node.sheds:
            raise Shed(node.filter)
        else:
            node = node.on_failure
    return candidates
