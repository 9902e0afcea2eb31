"""One scheduling pipeline for every policy, as gateway-api-inference-extension
(GIE) builds its scheduler: the filter gathers a request's inputs (producers),
filters narrow the candidates, weighted scorers rate each one in [0, 1], one
picker takes one. Filters, scorers and pickers are registered by name with a
decorator, and a Profile names them; each policy is a preset profile, and
lb_config's `filters`, `scorers` and `picker` can replace it.

    @scorer("fewest_tokens")
    def fewest_tokens(inputs, policy, addresses):
        return inverted([inputs.work.get(a, 0) for a in addresses])

Each gets the gathered Inputs and the policy running it (its `config`, and
what it keeps between requests, e.g. a picker's counter). No host calls.
"""

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Inputs:
    """What one request's decision may read, gathered before it is made.
    Per replica ("ip:port" keys): `matched` leading prompt blocks it holds,
    `inflight` requests in flight there, `work` uncached prompt blocks sent
    there whose first answer byte has not come, `metrics` its scraped
    ReplicaMetrics (fresh ones only)."""
    candidates: tuple            # the usable replicas, sorted
    rotation: int                # a random number: ties go to the first in rotated order
    request: object = None       # llm_request.LLMRequest, when the body was read
    prompt_blocks: int = 0       # the prompt's length in prefix blocks (all of it)
    hashes: tuple = ()           # its first maxPrefixBlocks block hashes
    matched: dict = field(default_factory=dict)
    inflight: dict = field(default_factory=dict)
    work: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    key: str = ""                # a session key (consistent_hash, endpoint_hash)
    bound: str = ""              # the replica the key is bound to (endpoint_hash)


@dataclass(frozen=True, slots=True)
class Profile:
    """The filters, weighted scorers and picker a policy runs, by name."""

    filters: tuple = ()          # names, applied in order
    scorers: tuple = ()          # ((name, weight), ...)
    picker: str = "max_score"


@dataclass(frozen=True, slots=True)
class CustomProfile:
    """lb_config's replacements for a policy's preset (None: keep the preset's)."""
    filters: tuple = None
    scorers: tuple = None
    picker: str = None


class NoCandidate(Exception):
    """A filter left no candidate (the filter's name is the message)."""


FILTERS, SCORERS, PICKERS = {}, {}, {}
NEEDS = {}  # name -> what it reads beyond every policy's inputs: "metrics" | "key"


def _registrar(table):
    def register(name, needs=None):
        def add(function):
            table[name] = function
            if needs:
                NEEDS[name] = needs
            return function
        return add
    return register


# @filter(name, needs=None): needs "metrics" (only where the policy scrapes, and
# only replicas with metrics reach it) or "key" (only where the policy is keyed).
filter = _registrar(FILTERS)    # f(inputs, policy, addresses) -> the addresses that pass
scorer = _registrar(SCORERS)    # f(inputs, policy, addresses) -> [score in 0..1], higher is better
picker = _registrar(PICKERS)    # f(inputs, policy, addresses, scores) -> address


def inverted(values):
    """Scores for values where lower is better: the lowest 1, the highest 0."""
    low, high = min(values), max(values)
    return [1.0 if high == low else (high - v) / (high - low) for v in values]


def run(profile, inputs, policy):
    """(address, kept): the address `profile` picks for the request, and the
    candidates that passed its filters. Raises NoCandidate when a filter
    leaves none (or what a filter raises itself)."""
    addresses = list(inputs.candidates)
    for name in profile.filters:
        addresses = FILTERS[name](inputs, policy, addresses)
        if not addresses:
            raise NoCandidate(name)
    scores = [0.0] * len(addresses)
    for name, weight in profile.scorers:
        for i, score in enumerate(SCORERS[name](inputs, policy, addresses)):
            scores[i] += weight * score
    return PICKERS[profile.picker](inputs, policy, addresses, scores), addresses


@picker("max_score")
def max_score(inputs, policy, addresses, scores):
    """The highest total score; ties to the first in rotated order."""
    n = len(addresses)
    best = None
    for i in range(n):
        j = (inputs.rotation + i) % n
        if best is None or scores[j] > scores[best] + 1e-9:
            best = j
    return addresses[best]


@picker("random")
def random_pick(inputs, policy, addresses, scores):
    """Any of the highest scored ones, at random (scores ignored without scorers)."""
    top = max(scores)
    best = [a for a, s in zip(addresses, scores) if s >= top - 1e-9]
    return best[inputs.rotation % len(best)]
