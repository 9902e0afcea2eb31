"""Pending callouts (HTTP calls, Redis calls) by token, per VM.

A callout's answer arrives at the root context; the dispatcher looks the token
up here to find the context that made the call and its callback.
"""


class Pending:
    """One kind of callout: token -> (caller context, callback)."""

    def __init__(self):
        self._by_token = {}

    def expect(self, token, context, callback):
        """Records a callout just started by `context`."""
        self._by_token[token] = (context, callback)

    def take(self, token):
        """(context, callback) for an answered callout, or None if unknown."""
        return self._by_token.pop(token, None)

    def drop_context(self, context_id):
        """Forgets the callouts of a deleted context (their answers are ignored)."""
        for token in [t for t, (c, _) in self._by_token.items() if c.context_id == context_id]:
            del self._by_token[token]

    def __len__(self):
        return len(self._by_token)


HTTP = Pending()
REDIS = Pending()
