"""Smooth weighted round robin (nginx's): weights 3, 2, 1 give A B A C B A, not
A A A B B C. Per VM; every worker spreads its own share the same way."""


class SmoothWeightedRoundRobin:
    def __init__(self):
        self._current = {}  # address -> current weight

    def next(self, weights):
        """The next address; `weights`: {address: weight > 0}. Addresses that left
        are forgotten, new ones start from zero."""
        current = {a: self._current.get(a, 0) + w for a, w in weights.items()}
        chosen = max(sorted(current), key=current.__getitem__)
        current[chosen] -= sum(weights.values())
        self._current = current
        return chosen
