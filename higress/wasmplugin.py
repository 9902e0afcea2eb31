"""What Higress's controller delivers to the plugin from a WasmPlugin resource.

Read from alibaba/higress pkg/ingress/config/ingress_config.go
(convertIstioWasmPlugin) at 4e0d6914, and the serialisation from Istio's
pilot/pkg/model/extensions.go (buildPluginConfig -> protomarshal.ToJSON, the
legacy jsonpb marshaller):

- only WasmPlugins in the controller's namespace (higress-system) count; a set
  `pluginConfig` is passed through as it is, ignoring everything else;
- `defaultConfig` becomes the top-level fields, left out entirely when
  `defaultConfigDisable` is true;
- each `matchRules` entry, in order, becomes one object of `_rules_`: its
  `config` fields plus `_match_route_` (the `ingress` list, names copied as
  written: `ns/name`, or `name` for an Ingress in higress-system),
  `_match_domain_` and `_match_service_`, each only when non-empty; a rule with
  `configDisable: true` is dropped; one with no match list fails the whole
  conversion; `routeType: GRPC` replaces the ingress names by "GRPC";
- nothing left (default disabled, no enabled rule): no filter at all (None);
  an empty result delivers no configuration bytes;
- the JSON is compact with object keys sorted; numbers are doubles printed as
  Go's encoding/json does (6379, 0.5); <, > and & are escaped.
"""

import json

NAMESPACE = "higress-system"


class ConversionError(ValueError):
    """The controller would refuse this WasmPlugin (and keep the old filter)."""


def plugin_configuration(wasm_plugin):
    """The configuration bytes Higress's controller hands the plugin for this
    WasmPlugin (a dict, as loaded from YAML), or None when it installs no
    filter. Raises ConversionError where the controller fails."""
    metadata = wasm_plugin.get("metadata") or {}
    if metadata.get("namespace", NAMESPACE) != NAMESPACE:
        raise ConversionError(f"the controller only reads WasmPlugins in {NAMESPACE}, not "
                              f"{metadata.get('namespace')!r}")
    spec = wasm_plugin.get("spec") or {}
    if spec.get("pluginConfig"):
        return _json(spec["pluginConfig"])
    document = None if spec.get("defaultConfigDisable") else dict(spec.get("defaultConfig") or {})
    has_rule = bool(document)
    rules = []
    for index, rule in enumerate(spec.get("matchRules") or []):
        if rule.get("configDisable"):
            continue
        item = dict(rule.get("config") or {})
        routes = list(rule.get("ingress") or [])
        if routes and rule.get("routeType", "HTTP") != "HTTP":
            routes = ["GRPC" for _ in routes]
        for key, values in (("_match_route_", routes), ("_match_domain_", rule.get("domain")),
                            ("_match_service_", rule.get("service"))):
            if values:
                item[key] = list(values)
        if not any(k in item for k in ("_match_route_", "_match_domain_", "_match_service_")):
            raise ConversionError(f"matchRules[{index}]: invalid match rule has no match "
                                  f"condition")
        rules.append(item)
    if rules:
        has_rule = True
        document = document or {}
        document["_rules_"] = rules
    if not has_rule:
        return None
    return _json(document) if document else b""


def _json(value):
    text = json.dumps(_go_numbers(value), separators=(",", ":"), sort_keys=True,
                      ensure_ascii=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return text.encode()


def _go_numbers(value):
    """Struct numbers are doubles: a whole one prints without a fraction."""
    if isinstance(value, dict):
        return {k: _go_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_go_numbers(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(value)
    return value
