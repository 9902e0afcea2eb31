"""Checks a configuration the way the plugin will see it.

    python higress/check_config.py higress/wasmplugin-prefix-cache.yaml
    python higress/check_config.py my-config.json --target envoy
    kubectl get wasmplugin -n higress-system my-lb -o yaml | python higress/check_config.py -

Takes a Higress WasmPlugin manifest (YAML, several documents allowed) or a raw
plugin configuration (JSON or YAML). For a WasmPlugin it first builds what
Higress's controller delivers (higress/wasmplugin.py), then validates it with
the plugin's own parser and prints the effective policy per rule and for the
requests no rule matches, with every warning. Exits 1 on an error (the message
names the rule and the field), 0 otherwise.
"""

import argparse
import json
import os
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "plugin"))
sys.path.insert(0, ROOT)

from ai_load_balancer import config, rules  # noqa: E402
from higress import wasmplugin  # noqa: E402


def configurations(text):
    """[(label, configuration bytes or None)] from a file's text."""
    documents = [d for d in yaml.safe_load_all(text) if d is not None]
    out = []
    for doc in documents:
        if isinstance(doc, dict) and doc.get("kind") == "WasmPlugin":
            name = (doc.get("metadata") or {}).get("name", "?")
            out.append((f"WasmPlugin {name}", wasmplugin.plugin_configuration(doc)))
        else:
            out.append(("configuration", json.dumps(doc).encode()))
    return out


def describe(cfg, target):
    """One line on what a configuration does in this target."""
    parts = [f"lb_policy={cfg.policy}"]
    if cfg.lb_type != "endpoint":
        parts.insert(0, f"lb_type={cfg.lb_type}")
    notes = []
    if cfg.redis is not None:
        if target == "higress":
            parts.append(f"state=redis ({cfg.redis.cluster}"
                         f"{f'?db={cfg.redis.database}' if cfg.redis.database else ''})")
        else:
            parts.append("state=embedded")
            notes.append("the envoy build has no Redis: serviceFQDN is ignored")
    elif cfg.lb_type == "endpoint" and cfg.policy != "header":
        parts.append("state=embedded")
    if target == "envoy" and cfg.lb_type == "endpoint" and cfg.policy != "header" \
            and not cfg.endpoints:
        notes.append("stock Envoy cannot list the cluster's hosts: set lb_config.endpoints, "
                     "or every request goes to the service's own load balancing")
    return ", ".join(parts) + "".join(f"\n      note: {n}" for n in notes)


def matcher(rule):
    keys = [("route", sorted(rule.routes)), ("domain", [k + ":" + t for k, t in rule.domains]),
            ("service", [f"{f}:{p}" if p else f for f, p in rule.services]),
            ("route prefix", list(rule.route_prefixes))]
    return "; ".join(f"{name} {', '.join(values)}" for name, values in keys if values)


def check(label, raw, target, out):
    """Prints the report of one configuration; returns False on an error."""
    print(f"{label}:", file=out)
    if raw is None:
        print("  no filter: Higress installs nothing (default disabled, no enabled rule)",
              file=out)
        return True
    try:
        parsed, warnings = rules.parse(raw)
    except config.ConfigError as exc:
        print(f"  error: {exc}", file=out)
        return False
    for rule in parsed.rules:
        print(f"  {rule.name} ({matcher(rule)}): {describe(rule.config, target)}", file=out)
    if parsed.default is not None:
        print(f"  requests no rule matches: {describe(parsed.default, target)}", file=out)
    else:
        print("  requests no rule matches: untouched (the service's own load balancing)",
              file=out)
    for warning in warnings:
        print(f"  warning: {warning}", file=out)
    return True


def main(argv=None, out=sys.stdout):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", help="manifest or configuration file; - for standard input")
    parser.add_argument("--target", choices=("higress", "envoy"), default="higress",
                        help="the build it will run in (default: higress)")
    parser.add_argument("--show-json", action="store_true",
                        help="also print the configuration the plugin receives")
    args = parser.parse_args(argv)
    if args.file == "-":
        text = sys.stdin.read()
    else:
        with open(args.file, encoding="utf-8") as f:
            text = f.read()
    ok = True
    try:
        items = configurations(text)
    except (yaml.YAMLError, wasmplugin.ConversionError) as exc:
        print(f"error: {exc}", file=out)
        return 1
    for label, raw in items:
        if args.show_json and raw is not None:
            print(raw.decode(), file=out)
        ok = check(label, raw, args.target, out) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
