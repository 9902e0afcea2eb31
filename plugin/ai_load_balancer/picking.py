"""What a policy decides, and the refusal every counting policy shares."""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Pick:
    """A policy's choice of replica, and why."""

    address: str
    inflight: int        # the replica's in-flight count before this request
    matched_blocks: int  # prefix blocks it already holds (0: no prefix match)
    reason: str          # why: "least_request" | "prefix_match" | "least_load" | ...
    work: int = 0        # prompt blocks the replica must compute (counted while in flight)


class LimitReached(Exception):
    """Every replica already has maxRequestCount requests in flight."""
