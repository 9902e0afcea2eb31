"""Log lines that would repeat per request, at most once per interval per reason."""

from proxywasm import hostcalls


class LogLimiter:
    def __init__(self, interval_s=30):
        self.interval_ns = interval_s * 1_000_000_000
        self._last = {}  # reason -> time logged (ns)
        self._suppressed = {}

    def log(self, level, reason, message):
        """Logs `message` unless `reason` was logged within the interval; the next
        line of a reason says how many were suppressed in between."""
        now = hostcalls.now_ns()
        if now - self._last.get(reason, -self.interval_ns) < self.interval_ns:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return
        self._last[reason] = now
        skipped = self._suppressed.pop(reason, 0)
        suffix = f" ({skipped} more since the last such line)" if skipped else ""
        hostcalls.log(level, f"ai-load-balancer: {message}{suffix}")
