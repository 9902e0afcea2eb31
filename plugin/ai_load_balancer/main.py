"""The plugin's entry module: registers the root context with the SDK.

Policies arrive with their issues; for now one policy exists, `header`, which
pins a request to the endpoint a request header names (for debugging a replica).
"""

import json

from proxywasm import CONTINUE, HttpContext, RootContext, hostcalls, set_root_context

from . import endpoint_override

POLICIES = ("header",)


class ConfigError(ValueError):
    """A configuration the plugin rejects; the message names the field."""


def parse_config(raw):
    """Plugin configuration bytes -> dict with lb_policy and lb_config."""
    try:
        config = json.loads(raw or b"{}")
    except ValueError as exc:
        raise ConfigError(f"configuration is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ConfigError("configuration must be a JSON object")
    policy = config.get("lb_policy", "header")
    if policy not in POLICIES:
        raise ConfigError(f"lb_policy: unknown policy {policy!r} (known: {', '.join(POLICIES)})")
    lb_config = config.get("lb_config", {})
    if not isinstance(lb_config, dict):
        raise ConfigError("lb_config: must be an object")
    header = lb_config.get("header", "x-ailb-endpoint")
    if not isinstance(header, str) or not header:
        raise ConfigError("lb_config.header: must be a non-empty string")
    return {"lb_policy": policy, "header": header.lower()}


class LoadBalancerRoot(RootContext):
    config = None

    def on_configure(self, configuration):
        try:
            self.config = parse_config(configuration)
        except ConfigError as exc:
            hostcalls.log(hostcalls.ERROR, f"ai-load-balancer: invalid configuration: {exc}")
            return False
        hostcalls.log(hostcalls.INFO, f"ai-load-balancer: configured, lb_policy={self.config['lb_policy']}")
        return True

    def new_http_context(self, context_id):
        return LoadBalancerStream(context_id, self)


class LoadBalancerStream(HttpContext):
    def on_request_headers(self, num_headers, end_of_stream):
        endpoint_override.strip_client_override()
        wanted = hostcalls.get_header(hostcalls.REQUEST_HEADERS, self.root.config["header"])
        if wanted:
            endpoint_override.pin([wanted.strip()])
        return CONTINUE


set_root_context(LoadBalancerRoot)
