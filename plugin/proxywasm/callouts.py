"""Pending callouts (HTTP calls, Redis calls) by token, per VM.

A callout's answer arrives at the root context; the dispatcher looks the token
up here to find the context that made the call, its callback, and the stream
waiting on it (which may differ from the caller: a root can call on a stream's
behalf). A callout with a deadline whose answer is late gets its `on_timeout`
run once, from the dispatcher's tick; its answer, should it still come, is
delivered as usual.
"""

from dataclasses import dataclass


@dataclass(slots=True)
class Callout:
    """An HTTP or Redis call awaiting its answer."""

    context: object            # the context that made the call
    callback: object           # runs with the answer
    stream: object = None      # the HttpContext waiting on the answer, if any
    deadline_ms: int = None    # on_timeout runs once the tick finds this passed
    on_timeout: object = None


class Pending:
    """One kind of callout: token -> Callout."""

    def __init__(self):
        self._by_token = {}

    def expect(self, token, callout):
        """Records a callout just started."""
        self._by_token[token] = callout

    def take(self, token):
        """The Callout of an answered token, or None if unknown."""
        return self._by_token.pop(token, None)

    def overdue(self, now_ms):
        """The Callouts whose deadline passed; each is returned once."""
        late = [c for c in self._by_token.values()
                if c.deadline_ms is not None and c.deadline_ms <= now_ms]
        for callout in late:
            callout.deadline_ms = None
        return late

    def drop_context(self, context_id):
        """Forgets the callouts a deleted context made (their answers are
        ignored) and that a deleted stream waited on (their answers still reach
        the caller, with no stream to resume)."""
        for token, callout in list(self._by_token.items()):
            if callout.context.context_id == context_id:
                del self._by_token[token]
            elif callout.stream is not None and callout.stream.context_id == context_id:
                callout.stream = None
                callout.deadline_ms = None

    def __len__(self):
        return len(self._by_token)


HTTP = Pending()
REDIS = Pending()
