"""Session affinity that survives changes to the replica set (Higress's
endpoint_hash, open upstream as PR #3967): a session key (request header
`hash_header`) is bound to the replica that first answered it, and stays
there while that replica is usable, whatever replicas join or leave.

A new key is placed by the service's own load balancing, and bound to the
replica that answers (session_table.py keeps the bindings: embedded, or in
Redis for every gateway). consistent_hash differs: it places every key by a
hash ring, so a replica joining moves about 1/n of the sessions, and nothing
is stored.
"""

from ..picking import Pick
from .base import Policy, register


class NewSession(Exception):
    """The key has no usable binding: the service's load balancing places the
    request, and the replica that answers is bound. The message is the stats
    label: "new" (no binding) or "moved" (its replica is not usable now)."""


@register
class EndpointHash(Policy):
    name = "endpoint_hash"
    keyed = True
    sticky = True

    def choose(self, inputs):
        if inputs.bound in inputs.candidates:
            return Pick(inputs.bound, 0, 0, "sticky")
        raise NewSession("moved" if inputs.bound else "new")
