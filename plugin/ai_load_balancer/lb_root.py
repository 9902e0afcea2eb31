"""The root context: one per plugin configuration in each VM. Parses the
configuration document (the global configuration and Higress's rules), runs
one Balancer per configuration, ticks them, and says which one a request gets."""

import os

from proxywasm import RootContext, dispatcher, hostcalls

from . import endpoints, rules
from .balancer import Balancer
from .config import ConfigError
from .lb_filter import LoadBalancerStream
from .log_limiter import LogLimiter

GLOBAL = "global configuration"


class LoadBalancerRoot(RootContext):
    http_context = LoadBalancerStream
    plugin_config = None

    def on_configure(self, configuration):
        try:
            self.plugin_config, warnings = rules.parse(configuration)
        except ConfigError as exc:
            hostcalls.log(hostcalls.ERROR, f"ai-load-balancer: invalid configuration: {exc}")
            return False
        for warning in warnings:
            hostcalls.log(hostcalls.WARN, f"ai-load-balancer: configuration: {warning}")
        self.limiter = LogLimiter()
        self.vm_id = os.urandom(6).hex()
        default = self.plugin_config.default
        self.default = Balancer(self, default, GLOBAL) if default is not None else None
        self.by_rule = {rule.name: Balancer(self, rule.config, rule.name)
                        for rule in self.plugin_config.rules}
        self.balancers = [b for b in [self.default, *self.by_rule.values()] if b is not None]
        if any(b.services is not None and b.config.services.mode == "LeastFirstTokenLatency"
               for b in self.balancers):
            dispatcher.enable("on_response_body")  # the first answer byte is timed
        periods = [p for p in (b.tick_ms() for b in self.balancers) if p]
        if periods:
            hostcalls.set_tick_period_ms(min(periods))
        for balancer in self.balancers:
            which = "" if balancer is self.default else f" {balancer.name}"
            hostcalls.log(hostcalls.INFO, f"ai-load-balancer: configured{which}, "
                                          f"{balancer.describe()}")
        if self.default is None:
            hostcalls.log(hostcalls.INFO, "ai-load-balancer: no global configuration: requests "
                                          "no rule matches pass through untouched")
        return True

    def on_tick(self):
        now_ms = hostcalls.now_ns() // 1_000_000
        for balancer in self.balancers:
            balancer.tick(now_ms)

    def balancer_for_request(self):
        """The Balancer of the first rule this request matches, else the global
        one; None: the plugin stays out of this request. Request-headers phase."""
        if self.plugin_config.rules:
            rule = rules.match(self.plugin_config, endpoints.route_name(),
                               endpoints.authority(), endpoints.cluster_name())
            if rule is not None:
                return self.by_rule[rule.name]
        return self.default
