"""Higress's rules: one configuration document, matched per request.

Higress's controller does not hand a plugin one rule's `config`: it sends one
JSON document, the WasmPlugin's `defaultConfig` fields at top level (absent
when `defaultConfigDisable` is true) plus `_rules_`, a list of the enabled
`matchRules` in order, each rule's `config` fields next to its match keys
`_match_route_` (from `ingress`), `_match_domain_`, `_match_service_`
(alibaba/higress pkg/ingress/config/ingress_config.go, convertIstioWasmPlugin).
A rule with `configDisable: true` is left out. The plugin matches per request as
wasm-go's matcher does (higress-group/wasm-go pkg/matcher/rule_matcher.go):
rules in order, the first that matches wins; no match: the global
configuration, or nothing at all (the request passes through untouched).

As in Higress's own ai-load-balancer, each rule is a complete configuration,
parsed on its own (no fields are inherited from the global one).

parse() at configure time; match() per request (pure: the filter reads the
route name, the :authority and the cluster name).
"""

import json
from dataclasses import dataclass

from .config import ConfigError, parse_doc

RULES_KEY = "_rules_"
MATCH_KEYS = ("_match_route_", "_match_domain_", "_match_service_", "_match_route_prefix_")
IGNORED_KEYS = ("_plugin_id_",)  # added by some control planes; wasm-go drops it


@dataclass(frozen=True, slots=True)
class Rule:
    """One _rules_ entry: what it matches, and its configuration."""

    name: str               # "_rules_[0]", for messages
    category: str           # route | route_and_service | domain | service | route_prefix
    routes: frozenset
    domains: tuple          # ((kind, text), ...): kind exact | suffix | prefix
    services: tuple         # ((fqdn, port or ""), ...)
    route_prefixes: tuple
    config: object          # LBConfig


@dataclass(frozen=True, slots=True)
class PluginConfig:
    """The default configuration and the rules, as Higress delivers them."""

    default: object         # LBConfig, or None: only the rules apply
    rules: tuple            # Rule, in match order


def parse(raw):
    """Configuration bytes -> (PluginConfig, warnings); raises ConfigError.
    An error in a rule names the rule (`_rules_[1].lb_config.servicePort: ...`)."""
    try:
        doc = json.loads(raw or b"{}")
    except (ValueError, LookupError) as exc:  # LookupError: not UTF-8 (no codec in wasm)
        raise ConfigError(f"configuration is not valid JSON: {exc}") from None
    except RecursionError:
        raise ConfigError("configuration is nested too deeply") from None
    if not isinstance(doc, dict):
        raise ConfigError("configuration must be a JSON object")
    for key in IGNORED_KEYS:
        doc.pop(key, None)
    rule_docs = doc.pop(RULES_KEY, None)
    if rule_docs is None:
        rule_docs = []
    if not isinstance(rule_docs, list):
        raise ConfigError(f"{RULES_KEY}: must be a list of rules")
    warnings = []
    default = None
    if doc or not rule_docs:
        try:
            default, warnings = parse_doc(doc)
        except ConfigError as exc:
            if not rule_docs:
                raise
            # wasm-go: a bad global configuration is dropped when rules exist.
            warnings = [f"global configuration ignored, only the rules apply: {exc}"]
    rules = []
    for index, rule_doc in enumerate(rule_docs):
        name = f"{RULES_KEY}[{index}]"
        rule, rule_warnings = _rule(name, rule_doc)
        rules.append(rule)
        warnings.extend(rule_warnings)
    plugin_config = PluginConfig(default, tuple(rules))
    check_redis_clients(plugin_config)
    return plugin_config, warnings


def _rule(name, doc):
    if not isinstance(doc, dict):
        raise ConfigError(f"{name}: must be an object")
    lists = {}
    for key in MATCH_KEYS:
        value = doc.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{name}.{key}: must be a list of strings")
        lists[key] = value
    routes, domains, services, prefixes = (lists[k] for k in MATCH_KEYS)
    if routes:
        category = "route_and_service" if services else "route"
    elif domains:
        category = "domain"
    elif services:
        category = "service"
    elif prefixes:
        category = "route_prefix"
    else:
        raise ConfigError(f"{name}: needs one of {', '.join(MATCH_KEYS[:3])}")
    config, warnings = parse_doc({k: v for k, v in doc.items() if k not in MATCH_KEYS},
                                 f"{name}.")
    return Rule(name, category, frozenset(routes), tuple(_domain(d) for d in domains),
                tuple(_service(s) for s in services), tuple(prefixes), config), warnings


def _domain(text):
    if text.startswith("*"):
        return ("suffix", text[1:])
    if text.endswith("*"):
        return ("prefix", text[:-1])
    return ("exact", text)


def _service(text):
    fqdn, sep, port = text.rpartition(":")
    return (fqdn, port) if sep and port.isdigit() else (text, "")


# --- per request -----------------------------------------------------------------------

def match(plugin_config, route, authority, cluster):
    """The Rule that applies to a request (first match in order), else None:
    then plugin_config.default applies (None: the plugin stays out)."""
    host = _strip_port(authority)
    for rule in plugin_config.rules:
        category = rule.category
        if category == "route" and route in rule.routes:
            return rule
        if category == "route_and_service" and route in rule.routes \
                and _service_matches(rule.services, cluster):
            return rule
        if category == "domain" and _domain_matches(rule.domains, host):
            return rule
        if category == "service" and _service_matches(rule.services, cluster):
            return rule
        if category == "route_prefix" and any(route.startswith(p) for p in rule.route_prefixes):
            return rule
    return None


def _strip_port(authority):
    if authority.startswith("["):  # [v6]:port
        return authority[:authority.find("]") + 1] if "]" in authority else authority
    host, sep, port = authority.rpartition(":")
    return host if sep and port.isdigit() and ":" not in host else authority


def _domain_matches(domains, host):
    for kind, text in domains:
        if (kind == "exact" and host == text) or (kind == "suffix" and host.endswith(text)) or (
                kind == "prefix" and host.startswith(text)):
            return True
    return False


def _service_matches(services, cluster):
    """Higress clusters are `outbound|<port>|<subset>|<fqdn>`: an entry `fqdn`
    matches the fqdn, `fqdn:port` both. Any other cluster name (stock Envoy)
    matches an entry equal to it."""
    parts = cluster.split("|")
    for fqdn, port in services:
        if len(parts) == 4:
            if parts[3] == fqdn and (not port or parts[1] == port):
                return True
        elif cluster == (f"{fqdn}:{port}" if port else fqdn):
            return True
    return False


def check_redis_clients(plugin_config):
    """Higress keeps one Redis client per base cluster on each worker: a second
    init with another login or database replaces the first (higress-group/envoy
    source/common/redis/async_client_impl.cc, AsyncClientImpl::initialize).
    Two configurations that share a Redis cluster must therefore agree."""
    seen = {}
    named = [("global configuration", plugin_config.default)] + [
        (rule.name, rule.config) for rule in plugin_config.rules]
    for name, config in named:
        redis = config.redis if config is not None else None
        if redis is None:
            continue
        login = (redis.username, redis.password, redis.database)
        first = seen.setdefault(redis.cluster, (name, login))
        if first[1] != login:
            raise ConfigError(
                f"{name}.lb_config: Redis {redis.cluster} is used by {first[0]} with another "
                f"username, password or database; Higress keeps one Redis client per cluster "
                f"on each worker, so they must agree")
