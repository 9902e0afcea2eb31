"""Every configuration example in the docs is accepted by the plugin's own
validation, with no warning: the docs cannot drift from the code."""

import glob
import json
import os
import re

import pytest
import yaml

from ai_load_balancer import config_fields, rules
from higress import wasmplugin

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = sorted(glob.glob(os.path.join(ROOT, "*.md")) + glob.glob(os.path.join(ROOT, "docs", "*.md")))


def examples():
    for path in DOCS:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for n, block in enumerate(re.findall(r"```yaml\n(.*?)```", text, re.S)):
            for doc in yaml.safe_load_all(block):  # Kubernetes examples hold several
                if isinstance(doc, dict) and "lb_policy" in doc:
                    yield pytest.param(doc, id=f"{os.path.basename(path)}#{n}")


@pytest.mark.parametrize("doc", list(examples()))
def test_documented_config_is_accepted(doc):
    _, warnings = rules.parse(json.dumps(doc).encode())
    assert warnings == []


def test_docs_have_examples():
    assert len(list(examples())) >= 4


# --- Higress manifests and the docker-compose harness ------------------------------------

HIGRESS = os.path.join(ROOT, "higress")
COMPOSE = os.path.join(ROOT, "envoy-test", "docker-compose.yaml")
COMPOSE_ENVOY = os.path.join(ROOT, "envoy-test", "compose", "envoy.yaml")


def load_yaml(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def wasm_plugins():
    for path in sorted(glob.glob(os.path.join(HIGRESS, "*.yaml"))):
        doc = load_yaml(path)
        if doc.get("kind") == "WasmPlugin":
            yield pytest.param(doc, id=os.path.basename(path))


@pytest.mark.parametrize("plugin", list(wasm_plugins()))
def test_wasmplugin_manifest_is_complete_and_what_higress_delivers_is_accepted(plugin):
    assert plugin["apiVersion"] == "extensions.higress.io/v1alpha1"
    spec = plugin["spec"]
    assert spec["url"].startswith("oci://") and spec["failStrategy"] == "FAIL_OPEN"
    assert "phase" in spec and isinstance(spec["priority"], int)
    parsed, warnings = rules.parse(wasmplugin.plugin_configuration(plugin))
    assert warnings == []
    configured = [rule["config"]["lb_policy"] for rule in spec["matchRules"]
                  if not rule.get("configDisable")]
    assert [rule.config.policy for rule in parsed.rules] == [
        config_fields.ALIASES.get(p, p) for p in configured]


def test_manifests_have_distinct_names():
    names = [p.values[0]["metadata"]["name"] for p in wasm_plugins()]
    assert len(names) == len(set(names)) >= 3


def test_redis_service_registration_matches_the_manifests():
    bridge = load_yaml(os.path.join(HIGRESS, "redis-mcpbridge.yaml"))
    registry = bridge["spec"]["registries"][0]
    assert bridge["kind"] == "McpBridge" and registry["type"] == "static"
    for param in wasm_plugins():
        for rule in param.values[0]["spec"]["matchRules"]:
            lb = rule["config"]["lb_config"]
            if "serviceFQDN" in lb:
                assert lb["serviceFQDN"] == f"{registry['name']}.static"
                assert lb["servicePort"] == registry["port"]


def test_compose_harness_and_its_envoy_config_agree():
    compose = load_yaml(COMPOSE)
    envoy = load_yaml(COMPOSE_ENVOY)
    wasm = envoy["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]["http_filters"][0]["typed_config"]["config"]
    parsed, warnings = rules.parse(wasm["configuration"]["value"].encode())
    assert warnings == []
    plugin_config = parsed.default
    replicas = [f"{s['networks']['llm']['ipv4_address']}:8000"
                for name, s in compose["services"].items() if name.startswith("replica-")]
    assert sorted(plugin_config.endpoints) == sorted(replicas)
    cluster = envoy["static_resources"]["clusters"][0]
    listed = [f"{e['endpoint']['address']['socket_address']['address']}:"
              f"{e['endpoint']['address']['socket_address']['port_value']}"
              for e in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]]
    assert sorted(listed) == sorted(replicas)
    assert wasm["allow_on_headers_stop_iteration"] is True


def test_every_config_field_is_documented_in_both_languages():
    from ai_load_balancer.config_fields import HEALTH_FIELDS, LB_CONFIG_FIELDS
    for name in ("README.md", "README.zh-CN.md"):
        with open(os.path.join(ROOT, name), encoding="utf-8") as f:
            text = f.read()
        missing = [f.name for f in LB_CONFIG_FIELDS if f"`{f.name}`" not in text]
        missing += [f"healthCheck.{f.name}" for f in HEALTH_FIELDS
                    if f"`healthCheck.{f.name}`" not in text]
        assert missing == [], f"{name} does not document {missing}"
