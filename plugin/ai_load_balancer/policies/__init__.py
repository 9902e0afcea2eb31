"""Every lb_policy: one module each (or a family), registered by importing it
here. A policy is a preset profile of the scheduling pipeline (pipeline.py)
plus the state it keeps (base.Policy says what it may declare)."""

from . import (least_request, prefix_cache, least_busy, classic, consistent_hash,  # noqa: F401
               endpoint_hash)
from .base import POLICIES, Policy

__all__ = ["POLICIES", "Policy"]
