"""The Higress image's spec.yaml, generated from the plugin's one config
definition (plugin/ai_load_balancer/config_fields.py).

Higress reads spec.yaml from the image's `application/vnd.module.wasm.spec.v1+yaml`
layer (what `hgctl plugin build` pushes): the plugin's info, its default phase
and priority, and an openAPIV3Schema of its configuration. Phase and priority
are those of the console's ai-load-balancer (phase `default`, which is
UNSPECIFIED_PHASE: at the end of the chain, before the router; priority 50:
after ai-proxy's 100).

    python higress/spec.py [--version 0.1.0]     # prints spec.yaml

The YAML is written here (no PyYAML needed to build the image); `spec(version)`
is the same document as a dict.
"""

import argparse
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.join(ROOT, "plugin") not in sys.path:
    sys.path.insert(0, os.path.join(ROOT, "plugin"))

from ai_load_balancer import config_fields  # noqa: E402

NAME = "ai-load-balancer"
CATEGORY = "ai"
PHASE = "UNSPECIFIED_PHASE"
PRIORITY = 50
TITLE = {"en-US": "AI Load Balancer", "zh-CN": "AI 负载均衡"}
DESCRIPTION = {
    "en-US": "LLM-aware load balancing for inference replicas (vLLM, SGLang, ...): prefix "
             "cache affinity, global least request over Redis, replica metrics (queue, "
             "KV cache, LoRA), classic policies, health checks and failover.",
    "zh-CN": "面向大模型推理服务（vLLM、SGLang 等）的负载均衡：前缀缓存亲和、基于 Redis 的"
             "全局最小请求数、按节点指标（队列、KV 缓存、LoRA）选择、经典策略、健康检查"
             "与故障转移。",
}
CONTACT = {"name": "ai-load-balancer"}

# lb_config fields of kind object whose own fields have a table.
NESTED = {"healthCheck": config_fields.HEALTH_FIELDS}

_TYPES = {"int": "integer", "number": "number", "bool": "boolean", "string": "string",
          "strings": "array", "object": "object", "map": "object", "list": "array"}
_ITEM_TYPES = ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
               (dict, "object"), (list, "array"))


def project_version():
    """pyproject.toml's [project] version."""
    import tomllib  # noqa: PLC0415 - only for the default version
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]["version"]


def policy_names():
    """Every accepted lb_policy name, aliases included, each once."""
    names = [name for policies in config_fields.LB_TYPES.values() for name in policies]
    names += list(config_fields.ALIASES)
    return list(dict.fromkeys(names))


def _item_type(values):
    types = {next((t for cls, t in _ITEM_TYPES if isinstance(v, cls)), None) for v in values}
    return types.pop() if len(types) == 1 and None not in types else None


def field_schema(field):
    """One Field as an openAPIV3Schema property."""
    schema = {"type": _TYPES[field.kind]}
    if field.kind == "strings":
        schema["items"] = {"type": "string"}
    elif field.kind == "map":
        schema["additionalProperties"] = {"type": "integer"}
    elif field.kind == "list" and field.default:
        item = _item_type(field.default)
        if item:
            schema["items"] = {"type": item}
    if field.name in NESTED and field.kind == "object":
        schema["properties"] = {f.name: field_schema(f) for f in NESTED[field.name]}
    if field.choices:
        schema["enum"] = list(field.choices)
    if field.low is not None:
        schema["minimum"] = field.low
    if field.high is not None:
        schema["maximum"] = field.high
    if field.default is not None:
        schema["default"] = field.default
    description = field.doc
    if field.unit:
        description += f" (unit: {field.unit})"
    schema["description"] = f"{description}. policies: {', '.join(field.policies)}"
    return schema


def config_schema():
    """The openAPIV3Schema of one plugin configuration (global or one rule)."""
    by_type = "; ".join(f"lb_type {lb_type}: {', '.join(policies)}"
                        for lb_type, policies in config_fields.LB_TYPES.items())
    aliases = ", ".join(f"{alias} = {name}" for alias, name in config_fields.ALIASES.items())
    return {
        "type": "object",
        "required": ["lb_policy"],
        "properties": {
            "lb_type": {"type": "string", "enum": list(config_fields.LB_TYPES),
                        "default": "endpoint",
                        "description": "endpoint: pick a replica of the routed service; "
                                       "cluster: pick a service"},
            "lb_policy": {"type": "string", "enum": policy_names(),
                          "description": f"the load-balancing policy ({by_type}; "
                                         f"aliases: {aliases})"},
            "lb_config": {"type": "object",
                          "description": "the policy's settings; each field names the "
                                         "policies that read it",
                          "properties": {f.name: field_schema(f)
                                         for f in config_fields.LB_CONFIG_FIELDS}},
        },
    }


def spec(version):
    """spec.yaml as a dict."""
    return {
        "apiVersion": "1.0.0",
        "info": {
            "category": CATEGORY,
            "name": NAME,
            "title": TITLE["en-US"],
            "x-title-i18n": dict(TITLE),
            "description": DESCRIPTION["en-US"],
            "x-description-i18n": dict(DESCRIPTION),
            "version": version,
            "contact": dict(CONTACT),
        },
        "spec": {
            "phase": PHASE,
            "priority": PRIORITY,
            "configSchema": {"openAPIV3Schema": config_schema()},
            "routeConfigSchema": {"openAPIV3Schema": config_schema()},
        },
    }


# --- a small YAML writer (block style, 2-space indent) ---------------------------------

_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_./-]*\Z")
_RESERVED = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"}


def _scalar(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        if "e" in text and "." not in text.split("e")[0]:
            text = text.replace("e", ".0e", 1)  # YAML 1.1 floats need a dot
        return text
    if isinstance(value, str):
        if _PLAIN.match(value) and value.lower() not in _RESERVED:
            return value
        return json.dumps(value, ensure_ascii=False)
    raise TypeError(f"cannot write {value!r} as YAML")


def _lines(value, indent):
    pad = " " * indent
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                yield f"{pad}{_scalar(str(key))}:"
                yield from _lines(item, indent + (2 if isinstance(item, dict) else 0))
            else:
                yield f"{pad}{_scalar(str(key))}: {_inline(item)}"
    else:
        for item in value:
            if isinstance(item, (dict, list)) and item:
                first, *rest = _lines(item, indent + 2)
                yield f"{pad}- {first[indent + 2:]}"
                yield from rest
            else:
                yield f"{pad}- {_inline(item)}"


def _inline(value):
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _scalar(value)


def to_yaml(document):
    return "\n".join(_lines(document, 0)) + "\n"


def spec_yaml(version):
    """spec.yaml's text."""
    return to_yaml(spec(version))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default=None, help="default: pyproject.toml's")
    args = parser.parse_args(argv)
    sys.stdout.write(spec_yaml(args.version or project_version()))


if __name__ == "__main__":
    main()
