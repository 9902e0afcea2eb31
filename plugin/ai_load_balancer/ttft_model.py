"""How long a replica takes to its first token, learnt from the streamed
answers this VM sees, for prefix_cache's cost model. observe() is called at a
streamed answer's first byte; decode_cost() and speed() per decision.

A first token is modelled as
    ttft_ms = base + per_block * backlog + per_request * in_flight
backlog: the uncached prompt blocks waiting at the replica when the request
was sent there, plus its own; in_flight: the requests it was serving then.
The three weights are fitted over the whole fleet by least squares, recent
answers weighing most (half of the weight on the last HALF_LIFE answers). The
cost model compares replicas in prompt blocks, so it needs one ratio of them:
per_request / per_block, the blocks one request in flight costs a prefill (its
decode steps share the replica). Each replica's speed is the running mean of
its answers' observed / predicted TTFT: a replica twice as slow as the fleet
costs twice as much. Until the fit stands (MIN_ANSWERS, a solvable system, a
positive per-block time), the configured decodeCost and speed 1 are used; while
the load never varied (one request at a time), per_request is not known, the
speeds come from base and per_block alone and the configured decodeCost stays.
"""

PRIOR_DECODE_COST = 16  # blocks per request in flight, until the fit stands
HALF_LIFE = 256       # answers
MIN_ANSWERS = 32      # before the fit replaces the configured decodeCost
SPEED_ANSWERS = 8     # a replica's answers before its speed counts
SPEED_WEIGHT = 1 / 16  # of each new answer in a replica's speed
SPEED_RANGE = (0.25, 4.0)
MAX_DECODE_COST = 4096
_FORGET = 0.5 ** (1 / HALF_LIFE)


class TtftModel:
    def __init__(self, decode_cost):
        self.prior = decode_cost
        self.answers = 0
        self.sums = [[0.0] * 4 for _ in range(3)]  # weighted X'X | X'y of (1, backlog, n)
        self.weights = None   # (base, per_block, per_request or None) once fitted
        self.speeds = {}      # address -> [speed, answers]

    def observe(self, address, backlog, in_flight, ttft_ms):
        """One streamed answer: its first byte came ttft_ms after the pick."""
        if ttft_ms <= 0:
            return
        if self.weights is not None:
            self._observe_speed(address, self.predict(backlog, in_flight), ttft_ms)
        row = (1.0, float(backlog), float(in_flight))
        for i in range(3):
            sums = self.sums[i]
            for j in range(3):
                sums[j] = sums[j] * _FORGET + row[i] * row[j]
            sums[3] = sums[3] * _FORGET + row[i] * ttft_ms
        self.answers += 1
        if self.answers >= MIN_ANSWERS:
            weights = _solve(self.sums, 3) or _solve(self.sums, 2)
            self.weights = weights if weights and weights[1] > 0 else None

    def predict(self, backlog, in_flight):
        """The fleet's TTFT for this backlog and load (ms); the fit must stand."""
        base, per_block, per_request = self.weights
        return base + per_block * backlog + (per_request or 0.0) * in_flight

    def decode_cost(self):
        """Prompt blocks one request in flight is worth."""
        if self.weights is None or self.weights[2] is None:
            return self.prior
        return min(max(self.weights[2] / self.weights[1], 0.0), MAX_DECODE_COST)

    def speed(self, address):
        """How much slower than the fleet this replica answers (1: as fast)."""
        entry = self.speeds.get(address)
        return entry[0] if entry and entry[1] >= SPEED_ANSWERS else 1.0

    def _observe_speed(self, address, predicted, ttft_ms):
        if predicted <= 0:
            return
        low, high = SPEED_RANGE
        ratio = min(max(ttft_ms / predicted, low), high)
        entry = self.speeds.setdefault(address, [ratio, 0])
        entry[0] += (ratio - entry[0]) * max(SPEED_WEIGHT, 1 / (entry[1] + 1))
        entry[1] += 1


def _solve(sums, n):
    """(base, per_block, per_request or None): the normal equations of the
    first n weights solved, or None when the answers do not tell those weights
    apart yet: a feature must vary, beyond what the others explain, by at least
    one unit over one answer's weight."""
    m = [sums[i][:n] + [sums[i][3]] for i in range(n)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(m[r][col]))
        if abs(m[pivot][col]) < 1.0:
            return None
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(n):
            if r != col:
                f = m[r][col] / m[col][col]
                for c in range(col, n + 1):
                    m[r][c] -= f * m[col][c]
    weights = [m[i][n] / m[i][i] for i in range(n)]
    return tuple(weights + [None] * (3 - n))
