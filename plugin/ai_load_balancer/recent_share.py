"""least_busy's rate_limit: no replica takes more than a share of the recent
decisions of this VM (a replica that looks idle between two scrapes would
otherwise take every request until the next scrape shows its queue)."""

from collections import deque


class RecentShare:
    def __init__(self, window=100):
        self._recent = deque(maxlen=window)
        self._counts = {}

    def under(self, addresses, limit):
        """The addresses whose share of recent decisions is below `limit`; all of
        them when that would leave none, or when limit is 1."""
        if limit >= 1.0 or not self._recent:
            return addresses
        size = len(self._recent)
        kept = [a for a in addresses if self._counts.get(a, 0) / size < limit]
        return kept or addresses

    def record(self, address):
        if len(self._recent) == self._recent.maxlen:
            oldest = self._recent[0]
            self._counts[oldest] -= 1
        self._recent.append(address)
        self._counts[address] = self._counts.get(address, 0) + 1
