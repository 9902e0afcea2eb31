"""A JSON document under one shared-data key, read by every VM of an Envoy
process and changed under compare-and-swap. Every shared change the plugin
makes goes through update(), so they all follow one give-up rule:

  TRIES lost compare-and-swaps in a row and update() gives up: the give-up is
  counted (ailb.shared.gave_up) and logged (rate-limited), and GaveUp is raised.
  The caller then decides what a lost change means: a pick is not made (the
  request fails open); a change that must land (a release, a renewal, a health
  transition) is kept and applied again on the next tick until it lands.
"""

import json

from proxywasm import hostcalls
from proxywasm.abi import CasMismatch

from . import stats

TRIES = 16


class GaveUp(RuntimeError):
    """Other VMs kept winning the compare-and-swap: the change was not written."""


class SharedRecord:
    def __init__(self, key, limiter):
        self.key = key
        self.limiter = limiter

    def create(self, empty=b"{}"):
        """Creates the key (`empty`: an empty object) if missing. On configure."""
        if hostcalls.get_shared_data(self.key)[0] is None:
            hostcalls.set_shared_data(self.key, empty)

    def read(self):
        """(document, cas): the decoded value ({} when missing), and its version."""
        raw, cas = hostcalls.get_shared_data(self.key)
        return (json.loads(raw) if raw else {}), cas

    def update(self, change, if_lost):
        """change(document) -> result, where `document` is a fresh decoded copy
        that change edits in place; it is written back (if it changed) under
        compare-and-swap, retried on a lost race. Returns change's result, or
        raises GaveUp (or what change raised: nothing is written then).
        `if_lost`: what happens to the change if it gives up, for the log."""
        def on_raw(raw):
            document = json.loads(raw) if raw else {}
            result = change(document)
            return json.dumps(document, separators=(",", ":")).encode(), result
        return self.update_raw(on_raw, if_lost)

    def update_raw(self, change, if_lost):
        """update() for a caller that encodes itself: change(raw bytes | None)
        -> (bytes to write, result)."""
        written, result = compare_and_swap(self.key, change, TRIES)
        if not written:
            self.gave_up(if_lost)
        return result

    def gave_up(self, if_lost):
        """Counts and logs a change that lost TRIES races, and raises GaveUp."""
        stats.count("ailb.shared.gave_up")
        self.limiter.log(hostcalls.WARN, "gave up " + self.key,
                         f"{TRIES} compare-and-swap attempts on {self.key} "
                         f"lost to other workers; {if_lost}")
        raise GaveUp(self.key)


def compare_and_swap(key, change, tries):
    """change(raw bytes | None) -> (bytes to write, result), written under
    compare-and-swap (not when unchanged), retried on a lost race up to `tries`
    times. Returns (written, result): (False, None) when every race was lost."""
    for _ in range(tries):
        raw, cas = hostcalls.get_shared_data(key)
        encoded, result = change(raw)
        if raw is not None and encoded == bytes(raw):
            return True, result
        try:
            hostcalls.set_shared_data(key, encoded, cas)
            return True, result
        except CasMismatch:
            continue
    return False, None
