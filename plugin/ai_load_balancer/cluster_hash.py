"""`lb_type: cluster`, `lb_policy: cluster_hash`: the backend service (an Envoy
cluster) of a request from a hash of one request header, weighted: the same
key always goes to the same service while the list and its weights stay.

As Higress's ai-load-balancer (cluster_hash) does it, so a migrated
configuration keeps every key on the service it had: the weights (whole
numbers adding up to 100) lay the services out over 100 slots in list order,
and a key takes slot FNV-1a-32(key) mod 100.

One difference: a request without the header is not refused (Higress answers
403); it takes a random slot, so it still lands by the weights. Pure: the
filter reads the header and writes the choice into `cluster_header`.
"""

from dataclasses import dataclass

from .cluster_metrics import service_name
from .config_fields import ConfigError, Field, header_name, read

__all__ = ["ClusterHashConfig", "parse_clusters", "fnv1a_32"]

SLOTS = 100
_WEIGHT = Field("weight", "int", None, (), "a service's share of the keys, in slots",
                low=1, high=SLOTS)


@dataclass(frozen=True, slots=True)
class ClusterHashConfig:
    """lb_type cluster, cluster_hash: the services' hash slots and the headers."""

    hash_header: str       # request header holding the key, lower-case
    header: str            # request header receiving the choice, lower-case
    slots: tuple           # SLOTS cluster names, each repeated by its weight, in list order

    mode = "hash"          # the decision's stats label (cluster_metrics: its mode)

    def choose(self, key, rotation):
        """The service for a request: by `key` (the header's value), or by
        `rotation` (any int, random per request) when there is none."""
        index = fnv1a_32(key.encode()) if key else rotation
        return self.slots[index % SLOTS]


def fnv1a_32(data):
    """32-bit FNV-1a of bytes (Go's hash/fnv New32a)."""
    h = 0x811C9DC5
    for byte in data:
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


def parse_clusters(lb):
    """lb_config of a cluster_hash configuration -> ClusterHashConfig. `lb` is
    config._Fields. Configure time only; raises ConfigError naming the field."""
    path = f"{lb.path}.clusters"
    entries = lb.get("clusters")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: required, a non-empty list of "
                          f"{{cluster: <Envoy cluster name>, weight: 1..100}}")
    slots, seen = [], set()
    for i, entry in enumerate(entries):
        where = f"{path}[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: must be {{cluster: <name>, weight: 1..100}}")
        name = service_name(f"{where}.cluster", entry.get("cluster"))
        if name in seen:
            raise ConfigError(f"{where}.cluster: {name!r} is listed twice")
        seen.add(name)
        weight = read(f"{where}.weight", _WEIGHT, entry.get("weight"))
        if weight is None:
            raise ConfigError(f"{where}.weight: required, a whole number 1..{SLOTS}")
        slots += [name] * weight
    if len(slots) != SLOTS:
        raise ConfigError(f"{path}: the weights must add up to {SLOTS}, not {len(slots)}")
    return ClusterHashConfig(hash_header=header_name(lb, "hash_header"),
                             header=header_name(lb, "cluster_header"), slots=tuple(slots))
