"""`lb_type: cluster`, `lb_policy: cluster_metrics`: choose the backend service
(an Envoy cluster) of a request from what this VM has seen of each service,
and let the route send the request there (the filter writes the name into
`cluster_header`; the route reads it with Envoy's `cluster_header` action).

Behaviour follows Higress's ai-load-balancer (cluster_metrics):

- the pick starts from a pseudo-random service, then looks at the others in
  turn: if the current candidate's share of every pick so far is at or above
  rate_limit, the next service replaces it whatever its metric; otherwise a
  service replaces it if its metric is strictly lower and its own share is
  below rate_limit;
- the metric is the requests in flight (LeastBusy), or the plain mean of the
  last queue_size total durations (LeastTotalLatency) or times to the first
  response byte (LeastFirstTokenLatency); a service with no sample counts as
  0, so a new service gets tried;
- a request whose response status is not 200 records a penalised sample:
  max(its own time, every service's current mean) * 2.

State is per VM (each Envoy worker, each gateway) and per configuration, as
in Higress: one ServiceStats per ClusterMetricsConfig, lost on reconfigure.
Everything here is pure: no host calls. The filter measures times and calls
choose() / first_byte() / done().
"""

from collections import deque
from dataclasses import dataclass

from .config_fields import BY_NAME, ConfigError, header_name

__all__ = ["MODES", "ClusterMetricsConfig", "ServiceStats", "parse_services", "service_name"]

MODES = BY_NAME["mode"].choices            # LeastBusy, LeastTotalLatency, LeastFirstTokenLatency


@dataclass(frozen=True, slots=True)
class ClusterMetricsConfig:
    """lb_type cluster, cluster_metrics: how a backend service is chosen."""

    mode: str              # one of MODES
    services: tuple        # Envoy cluster names, in configuration order, no duplicates
    header: str            # request header receiving the choice, lower-case
    rate_limit: float      # largest cumulative share of picks one service may take (0..1)
    queue_size: int        # latency samples kept per service


def parse_services(lb):
    """lb_config of a cluster_metrics configuration -> ClusterMetricsConfig.
    `lb` is config._Fields (get(name) converts and checks by the field table;
    path names the object in messages). Configure time only; raises
    ConfigError naming the field."""
    mode = lb.get("mode")  # a value outside MODES is rejected by the table's choices
    if not mode:
        raise ConfigError(f"{lb.path}.mode: required, one of {', '.join(MODES)}")
    return ClusterMetricsConfig(
        mode=mode,
        services=_service_list(lb),
        header=header_name(lb, "cluster_header"),
        rate_limit=lb.get("rate_limit"),
        queue_size=lb.get("queue_size"),
    )


def _service_list(lb):
    path = f"{lb.path}.service_list"
    names = lb.get("service_list")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{path}: must be a list of Envoy cluster names "
                          f"(e.g. \"outbound|80||svc.dns\")")
    if not names:
        raise ConfigError(f"{path}: must list at least one service (Envoy cluster name)")
    out = []
    for name in names:
        name = service_name(path, name)
        if name in out:
            lb.warnings.append(f"{path}: {name!r} is listed twice; counted once")
            continue
        out.append(name)
    return tuple(out)


def service_name(path, name):
    """A backend service's Envoy cluster name, checked; configure time."""
    if not isinstance(name, str) or not name or any(c <= " " or c == "\x7f" for c in name):
        raise ConfigError(f"{path}: {name!r} is not an Envoy cluster name "
                          f"(empty, or has spaces or control characters)")
    return name




class _Window:
    """The last `size` samples of one service and their running sum."""

    __slots__ = ("samples", "total")

    def __init__(self, size):
        self.samples = deque(maxlen=size)
        self.total = 0.0

    def add(self, value):
        if len(self.samples) == self.samples.maxlen:
            self.total -= self.samples[0]
        self.samples.append(value)
        self.total += value

    def mean(self):
        """Plain mean; 0 with no sample (an untried service looks best)."""
        return self.total / len(self.samples) if self.samples else 0.0


class ServiceStats:
    """What this VM has seen of each service of one configuration: requests in
    flight, picks since start, and windows of recent TTFT and total-duration
    samples (in ms). Create it once per ClusterMetricsConfig (configure time or
    the first request) and keep it for the configuration's life."""

    def __init__(self, config):
        self.config = config
        self.ongoing = dict.fromkeys(config.services, 0)
        self.picks = dict.fromkeys(config.services, 0)
        self.total_picks = 0
        self.ttft = {s: _Window(config.queue_size) for s in config.services}
        self.latency = {s: _Window(config.queue_size) for s in config.services}
        self._metric = {"LeastBusy": self.ongoing.__getitem__,
                        "LeastFirstTokenLatency": lambda s: self.ttft[s].mean(),
                        "LeastTotalLatency": lambda s: self.latency[s].mean()}[config.mode]

    def share(self, service):
        """The service's share of every pick since start (0 before the first)."""
        return self.picks[service] / self.total_picks if self.total_picks else 0.0

    def choose(self, rotation):
        """Request-headers time: the service for this request, counted as picked
        and in flight. `rotation` is any int (random per request); it sets the
        starting service. Every choose() must be followed by one done()."""
        services = self.config.services
        n = len(services)
        start = rotation % n
        limit = self.config.rate_limit
        metric = self._metric
        candidate = services[start]
        best = metric(candidate)
        for i in range(1, n):
            other = services[(start + i) % n]
            value = metric(other)
            if self.share(candidate) >= limit or (value < best and self.share(other) < limit):
                candidate, best = other, value
        self.ongoing[candidate] += 1
        self.picks[candidate] += 1
        self.total_picks += 1
        return candidate

    def first_byte(self, service, elapsed_ms, status_ok=True):
        """First response body chunk of a request (once per request; not called
        when the response has no body): records a TTFT sample, `elapsed_ms`
        since request headers. status_ok: the response status was 200; a
        failure records the penalised sample. Unknown services are ignored."""
        if service in self.ttft:
            self.ttft[service].add(self._sample(self.ttft, elapsed_ms, status_ok))

    def done(self, service, elapsed_ms, status_ok):
        """Stream done (every request that choose() picked for, answered or not):
        records the total duration (penalised unless the status was 200; no
        response counts as a failure) and ends the request's in-flight count."""
        if service not in self.latency:
            return
        self.latency[service].add(self._sample(self.latency, elapsed_ms, status_ok))
        if self.ongoing[service] > 0:
            self.ongoing[service] -= 1

    @staticmethod
    def _sample(windows, elapsed_ms, status_ok):
        sample = max(float(elapsed_ms), 0.0)
        if status_ok:
            return sample
        return max(sample, max(w.mean() for w in windows.values())) * 2

    def describe(self):
        """One line for a debug log: each service's counts and means."""
        return ", ".join(
            f"{s}: ongoing {self.ongoing[s]} picks {self.picks[s]} share "
            f"{self.share(s):.2f} ttft {self.ttft[s].mean():.1f}ms "
            f"total {self.latency[s].mean():.1f}ms" for s in self.config.services)
