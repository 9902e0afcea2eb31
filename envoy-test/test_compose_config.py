"""The docker-compose harness's Envoy config is accepted by Envoy 1.40 with the
built plugin (Envoy's validate mode runs the plugin's configure)."""

import os
import subprocess

import harness

COMPOSE_ENVOY = os.path.join(harness.HERE, "compose", "envoy.yaml")


def test_compose_envoy_config_validates_with_the_plugin(tmp_path, production_wasm, envoy_binary):
    with open(COMPOSE_ENVOY) as f:
        text = f.read().replace("/etc/envoy/ai-load-balancer-envoy.wasm", production_wasm)
    local = tmp_path / "envoy.yaml"
    local.write_text(text)
    result = subprocess.run([envoy_binary, "--mode", "validate", "-c", str(local)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "ai-load-balancer: configured, lb_policy=prefix_cache" in result.stdout + result.stderr


def test_compose_envoy_has_the_documented_stats_tags():
    import yaml
    with open(COMPOSE_ENVOY) as f:
        compose = yaml.safe_load(f)
    assert compose["stats_config"] == harness.stats_tags_fragment()["stats_config"]
