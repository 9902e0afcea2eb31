"""The config checker: a manifest or raw configuration in, what the plugin will
do per rule out, or the error naming rule and field."""

import io
import os

import pytest

from higress import check_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(tmp_path, text, *args):
    path = tmp_path / "input.yaml"
    path.write_text(text)
    out = io.StringIO()
    code = check_config.main([str(path), *args], out=out)
    return code, out.getvalue()


@pytest.mark.parametrize("name, policy", [("prefix-cache", "prefix_cache"),
                                          ("global-least-request", "global_least_request"),
                                          ("least-busy", "least_busy")])
def test_shipped_manifests_pass_and_show_their_policy(tmp_path, name, policy):
    with open(os.path.join(ROOT, "higress", f"wasmplugin-{name}.yaml"), encoding="utf-8") as f:
        code, out = run(tmp_path, f.read())
    assert code == 0, out
    assert "_rules_[0] (" in out and f"lb_policy={policy}" in out
    assert "requests no rule matches: untouched" in out


MANIFEST = """
apiVersion: extensions.higress.io/v1alpha1
kind: WasmPlugin
metadata: {name: lb, namespace: higress-system}
spec:
  defaultConfig: {lb_policy: round_robin}
  matchRules:
  - domain: ["*.example.com"]
    config: {lb_policy: random}
  - ingress: [default/llm]
    config:
      lb_policy: prefix_cache
      lb_config: {serviceFQDN: redis.static, servicePort: "6379x"}
"""


def test_an_error_names_the_rule_and_the_field(tmp_path):
    code, out = run(tmp_path, MANIFEST)
    assert code == 1
    assert "error: _rules_[1].lb_config.servicePort: must be a whole number" in out


def test_rules_default_and_warnings_are_listed(tmp_path):
    code, out = run(tmp_path, MANIFEST.replace('"6379x"', "6379, hashKey: {header: x}"),
                    "--target", "envoy")
    assert code == 0, out
    assert "_rules_[0] (domain suffix:.example.com): lb_policy=random" in out
    assert "requests no rule matches: lb_policy=round_robin" in out
    assert "note: the envoy build has no Redis" in out
    assert "warning: _rules_[1].lb_config.hashKey: not used by lb_policy prefix_cache" in out


def test_a_raw_configuration_without_policy_is_refused(tmp_path):
    code, out = run(tmp_path, '{"lb_config": {"endpoints": ["10.0.0.1:80"]}}')
    assert code == 1 and "lb_policy: required" in out
