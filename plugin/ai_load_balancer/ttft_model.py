"""How long a replica takes to its first token, learnt from the streamed
answers this VM sees, for prefix_cache's cost model. observe() is called at a
streamed answer's first byte; queue_weight(), decode_cost() and speed() per
decision.

A first token is modelled as
    ttft_ms = base + per_block * own + per_queued * queued + per_request * in_flight
own: the request's uncached prompt blocks; queued: the uncached blocks of the
requests sent to that replica earlier whose first token had not come;
in_flight: the requests it was serving. The weights are fitted over the whole
fleet by least squares, recent answers weighing most (half of the weight on
the last HALF_LIFE answers). The cost model compares replicas in blocks of the
request's own prompt, so it needs two ratios: per_queued / per_block (below 1
where an engine computes a new prompt beside one already running, as chunked
prefill does) and per_request / per_block, the decodeCost (a request's decode
steps slow every prefill). Each replica's speed is the running mean of its
answers' observed / predicted TTFT: a replica twice as slow as the fleet costs
twice as much.

A weight is used once the answers tell it apart (MIN_ANSWERS, and its feature
varied beyond what the others explain) and per_block is positive; until then
its prior holds: queue weight 1, the configured decodeCost, speed 1. Traffic
one request at a time teaches speeds only.
"""

PRIOR_DECODE_COST = 16  # blocks per request in flight, until the fit tells
HALF_LIFE = 256       # answers
MIN_ANSWERS = 32      # before the fit replaces the priors
SPEED_ANSWERS = 8     # a replica's answers before its speed counts
SPEED_WEIGHT = 1 / 16  # of each new answer in a replica's speed
SPEED_RANGE = (0.25, 4.0)
QUEUE_WEIGHT_RANGE = (0.0, 4.0)
DECODE_COST_RANGE = (0.0, 4096.0)
FEATURES = 4          # 1, own, queued, in_flight
# The weights tried, the most first: a feature that never varied is left out.
_SUBSETS = ((0, 1, 2, 3), (0, 1, 2), (0, 1, 3), (0, 1))
_FORGET = 0.5 ** (1 / HALF_LIFE)


class TtftModel:
    def __init__(self, decode_cost):
        self.prior = decode_cost
        self.answers = 0
        # weighted X'X | X'y of the features
        self.sums = [[0.0] * (FEATURES + 1) for _ in range(FEATURES)]
        self.weights = None   # (base, per_block, per_queued, per_request), None: unknown
        self.speeds = {}      # address -> [speed, answers]

    def observe(self, address, own, queued, in_flight, ttft_ms):
        """One streamed answer: its first byte came ttft_ms after the pick."""
        if ttft_ms <= 0:
            return
        row = (1.0, float(own), float(queued), float(in_flight))
        if self.weights is not None:
            predicted = sum(w * x for w, x in zip(self.weights, row) if w is not None)
            self._observe_speed(address, predicted, ttft_ms)
        for i in range(FEATURES):
            sums = self.sums[i]
            for j in range(FEATURES):
                sums[j] = sums[j] * _FORGET + row[i] * row[j]
            sums[FEATURES] = sums[FEATURES] * _FORGET + row[i] * ttft_ms
        self.answers += 1
        if self.answers >= MIN_ANSWERS:
            self.weights = next(filter(None, (_solve(self.sums, s) for s in _SUBSETS)), None)

    def queue_weight(self):
        """What a queued block costs a new request, in blocks of its own."""
        return self._ratio(2, 1.0, QUEUE_WEIGHT_RANGE)

    def decode_cost(self):
        """Blocks of its own prompt one request in flight costs a new request."""
        return self._ratio(3, self.prior, DECODE_COST_RANGE)

    def speed(self, address):
        """How much slower than the fleet this replica answers (1: as fast)."""
        entry = self.speeds.get(address)
        return entry[0] if entry and entry[1] >= SPEED_ANSWERS else 1.0

    def _ratio(self, feature, prior, bounds):
        if self.weights is None or self.weights[feature] is None:
            return prior
        return min(max(self.weights[feature] / self.weights[1], bounds[0]), bounds[1])

    def _observe_speed(self, address, predicted, ttft_ms):
        if predicted <= 0:
            return
        low, high = SPEED_RANGE
        ratio = min(max(ttft_ms / predicted, low), high)
        entry = self.speeds.setdefault(address, [ratio, 0])
        entry[0] += (ratio - entry[0]) * max(SPEED_WEIGHT, 1 / (entry[1] + 1))
        entry[1] += 1


def _solve(sums, subset):
    """The weights (None outside `subset`) solving the normal equations of
    the features in `subset`, or None when the answers do not tell them apart
    (a feature must vary, beyond what the others explain, by at least one unit
    over one answer's weight) or a block of the request's own costs nothing."""
    n = len(subset)
    m = [[sums[i][j] for j in subset] + [sums[i][FEATURES]] for i in subset]
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
    weights = [None] * FEATURES
    for i, feature in enumerate(subset):
        weights[feature] = m[i][n] / m[i][i]
    return weights if weights[1] > 0 else None
