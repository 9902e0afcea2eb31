"""The Envoy harness: simulated replicas, Envoy bootstraps, an Envoy process, a
small HTTP client, plugin builds. Everything listens on 127.0.0.1 only. No
dependency beyond the standard library (and PyYAML for the stats tags, the
project's build/make.py for builds).

    import envoy_harness as harness

    replicas = harness.ReplicaSet.start(3)         # r0, r1, r2 on free ports
    config = harness.EnvoyConfig.simple(replicas.endpoints, wasm_path=harness.build_plugin(),
                                        plugin_config={"lb_policy": "header"})
    with harness.Envoy(config) as envoy:           # starts, waits for /ready
        client = harness.Client(envoy.port)
        response = client.get("/", headers={"x-ailb-endpoint": replicas[1].address})
        assert response.headers["x-replica"] == "r1"

Command line: `python -m envoy_harness replicas --count 3` serves replicas until its
standard input closes; `python -m envoy_harness config ...` prints a bootstrap.

Modules: common (paths and names), replicas, bootstrap, process (the Envoy
process), client, builds.
"""

from .bootstrap import (FALLBACK_POLICIES, Cluster, EnvoyConfig, Listener, WasmFilter,
                        plugin_config, prometheus_samples, retry_policy, stats_tags_fragment)
from .builds import build_plugin, build_test_plugin, load_make
from .client import Client, Response, async_request, decision, run_requests
from .common import (ENVOY_TEST, LOOPBACK, OVERRIDE_HEADER, PRODUCTION_ENTRY, PRODUCTION_NAME,
                     ROOT, TEST_PLUGINS_DIR, TMP_DIR)
from .process import Envoy, EnvoyStartError, find_envoy
from .replicas import Behaviour, Replica, ReplicaProcess, ReplicaSet, SeenRequest

__all__ = [
    "FALLBACK_POLICIES", "Cluster", "EnvoyConfig", "Listener", "WasmFilter", "plugin_config",
    "prometheus_samples", "retry_policy", "stats_tags_fragment", "build_plugin",
    "build_test_plugin", "load_make", "Client", "Response", "async_request", "decision",
    "run_requests", "ENVOY_TEST", "LOOPBACK", "OVERRIDE_HEADER", "PRODUCTION_ENTRY",
    "PRODUCTION_NAME", "ROOT", "TEST_PLUGINS_DIR", "TMP_DIR", "Envoy", "EnvoyStartError",
    "find_envoy", "Behaviour", "Replica", "ReplicaProcess", "ReplicaSet", "SeenRequest"
]
