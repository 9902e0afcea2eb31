"""The policy protocol: what a policy needs gathered, how it chooses, and the
state it keeps. One object per configuration, made at configure time by the
Balancer; choose() runs per request on the gathered pipeline.Inputs.

A policy declares what the filter must gather (its producers) and where the
decision may run; the filter (lb_filter.py) gathers, calls choose(), applies
the Pick, and counts and releases in-flight requests for policies that count.
"""

from .. import pipeline
from ..embedded_prefix_index import unknown_size
from ..picking import Pick

POLICIES = {}  # lb_policy name -> Policy subclass, in registration order


def register(cls):
    """Registers a Policy subclass under its `name` (its lb_policy)."""
    POLICIES[cls.name] = cls
    return cls


class Policy:
    name = ""
    profile = pipeline.Profile(picker="random")  # the preset: lb_config can replace its parts
    headers_only = False     # decided from the request headers alone, outside the pipeline
    hashes_prompt = False    # gather: the prompt's prefix blocks, and which replica holds them
    scraped = False          # gather: each replica's scraped metrics (read_metrics)
    keyed = False            # gather: the session key (consistent_hash, endpoint_hash)
    sticky = False           # gather: the replica the session key is bound to; choose()
                             # raises NewSession for a key without a usable one
    counts = False           # requests in flight are counted per replica until they end
    redis_rule = ""          # "lr" | "cost": Redis's pick script runs this preset atomically

    def __init__(self, balancer):
        self.config = balancer.config
        custom = self.config.profile
        self.custom = custom is not None  # replaced parts: decided on the gateway's own state
        self.profile = pipeline.Profile(
            custom.filters if custom and custom.filters is not None else self.profile.filters,
            custom.scorers if custom and custom.scorers is not None else self.profile.scorers,
            custom.picker if custom and custom.picker else self.profile.picker)

    @property
    def reads_body(self):
        """The request waits for its whole body (prompt, model) before choosing."""
        return self.hashes_prompt

    def choose(self, inputs):
        """The Pick for one request. May raise picking.LimitReached (answered
        with a 429), pipeline.NoCandidate (a filter left none: fail open), or
        what the policy's own filters raise (least_busy: Shed, NoMetrics)."""
        address, kept = pipeline.run(self.profile, inputs, self)
        return self.explain(inputs, address, kept)

    def explain(self, inputs, address, kept):
        """The Pick for `address`, chosen among `kept` (what passed the filters):
        by default the policy's name as the reason, and the prompt blocks the
        replica holds and must compute (counted as its work while in flight)."""
        held = min(inputs.matched.get(address, 0), inputs.prompt_blocks)
        return Pick(address, inputs.inflight.get(address, 0), held, self.name,
                    inputs.prompt_blocks - held)

    # --- state the policy keeps: default none ------------------------------------------

    def tick_ms(self):
        """How often tick() must run (0: never)."""
        return 0

    def tick(self, root, endpoints, now_ms):
        """From the root's tick."""

    def learn_cluster(self, cluster):
        """The routed cluster, seen on a request (where to scrape)."""

    def before_gathering(self, hosts, now_ms):
        """Per request, before the inputs are gathered. `hosts`: Higress's
        upstream host list (with metrics), else None."""

    def capacity_of(self, address):
        """The replica's KV cache in prefix-index blocks (0: unknown)."""
        return unknown_size(address)
