"""README's "Writing a policy", done literally: its new file and its
registration line are added to a copy of the plugin, built, and run in a real
Envoy 1.40 (--concurrency 2) in front of four replicas."""

import os
import re
import shutil

import pytest

import envoy_harness as harness
from test_envoy_policies import (CHAT_PATH, HOLD_HEADER, JSON, REPLICAS, chat, check_routed,
                                 hold_handler, policy_envoy, post_chat)


def readme_example():
    """(file path, its code, the registration line) from README.md."""
    with open(os.path.join(harness.ROOT, "README.md"), encoding="utf-8") as f:
        section = f.read().split("## Writing a policy", 1)[1].split("\n## ", 1)[0]
    module, registration = re.findall(r"```python\n(.*?)```", section, re.S)[:2]
    path = module.splitlines()[0].lstrip("# ").strip()
    return path, module, registration.splitlines()[-1]


@pytest.fixture(scope="module")
def extended_wasm(tmp_path_factory):
    path, module, registration = readme_example()
    copy = tmp_path_factory.mktemp("plugin")
    shutil.copytree(os.path.join(harness.ROOT, "plugin", "ai_load_balancer"),
                    copy / "ai_load_balancer", ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / os.path.relpath(path, "plugin")
    target.write_text(module)
    with open(copy / "ai_load_balancer" / "policies" / "__init__.py", "a") as f:
        f.write(registration + "\n")
    return harness.build_plugin(name="fewest-tokens", extra_path=[str(copy)])


def test_the_readme_policy_runs_in_envoy_with_its_state(start_envoy, extended_wasm):
    behaviours = [harness.Behaviour(handler=hold_handler) for _ in range(REPLICAS)]
    with harness.ReplicaSet.start(REPLICAS, behaviours) as fleet:
        envoy = policy_envoy(start_envoy, fleet, extended_wasm, "fewest_tokens")
        # Eight equal prompts at once, each held in flight: the work waiting on a
        # replica (its uncached prompt blocks) pushes the next one elsewhere.
        prompt = "Summarise this clause for me, please. " * 80
        burst = [{"method": "POST", "path": CHAT_PATH, "headers": {**JSON, HOLD_HEADER: "1500"},
                  "body": chat([{"role": "user", "content": f"{i} {prompt}"}])}
                 for i in range(8)]
        decisions = [check_routed(r, fleet)
                     for r in harness.run_requests(envoy.port, burst, timeout=30)]
        assert {d["reason"] for d in decisions} == {"fewest_tokens"}
        per_replica = {n: c for n, c in fleet.counts().items() if c}
        assert len(per_replica) == REPLICAS and max(per_replica.values()) <= 3, per_replica
        # Every stream ended: nothing stays counted where the next requests land.
        later = [check_routed(post_chat(envoy, chat([{"role": "user", "content": f"hi {i}"}])),
                              fleet) for i in range(8)]
        assert all(d["inflight"] == 0 for d in later), later
