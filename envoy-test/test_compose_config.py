"""The Envoy configurations users start from are accepted by Envoy 1.40 with the
built plugin (Envoy's validate mode runs the plugin's configure): the Docker
compose harness's and the plain-Kubernetes manifest's (deploy/kubernetes). Both
carry the documented stats tags."""

import os
import subprocess

import yaml

import envoy_harness as harness

COMPOSE_ENVOY = os.path.join(harness.ENVOY_TEST, "compose", "envoy.yaml")
KUBERNETES = os.path.join(harness.ROOT, "deploy", "kubernetes", "envoy-ai-load-balancer.yaml")
MODULE = "/etc/envoy/ai-load-balancer-envoy.wasm"


def validate(text, tmp_path, wasm, envoy_binary):
    """Envoy's validate mode on a bootstrap whose module path is the built one;
    returns its output."""
    local = tmp_path / "envoy.yaml"
    local.write_text(text.replace(MODULE, wasm))
    result = subprocess.run([envoy_binary, "--mode", "validate", "-c", str(local)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def kubernetes_bootstrap():
    with open(KUBERNETES) as f:
        config_map = next(d for d in yaml.safe_load_all(f) if d and d["kind"] == "ConfigMap")
    return config_map["data"]["envoy.yaml"]


def test_compose_envoy_config_validates_with_the_plugin(tmp_path, production_wasm, envoy_binary):
    with open(COMPOSE_ENVOY) as f:
        output = validate(f.read(), tmp_path, production_wasm, envoy_binary)
    assert "ai-load-balancer: configured, lb_policy=prefix_cache" in output


def test_kubernetes_bootstrap_validates_with_the_plugin(tmp_path, production_wasm, envoy_binary):
    output = validate(kubernetes_bootstrap(), tmp_path, production_wasm, envoy_binary)
    assert "ai-load-balancer: configured, lb_policy=prefix_cache" in output


def test_both_have_the_documented_stats_tags():
    with open(COMPOSE_ENVOY) as f:
        compose = yaml.safe_load(f)
    documented = harness.stats_tags_fragment()["stats_config"]
    assert compose["stats_config"] == documented
    assert yaml.safe_load(kubernetes_bootstrap())["stats_config"] == documented
