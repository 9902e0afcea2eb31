"""The README's demo: the built plugin in a real Envoy in front of 3 replicas.

    scripts/demo.sh          (builds first; or: .venv/bin/python envoy-test/demo.py)

Shows the plugin deciding the upstream per request: without a decision Envoy's
own load balancing spreads requests; with one, every request lands where the
plugin pinned it, and a client cannot pin requests itself.
"""

import collections
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WASM = os.path.join(ROOT, "dist", "ai-load-balancer-envoy.wasm")
REQUESTS = 30


def spread(client, headers):
    seen = collections.Counter(client.get("/v1/models", headers).replica for _ in range(REQUESTS))
    return ", ".join(f"{name}: {seen[name]:2d}" for name in sorted(seen))


def main():
    if not os.path.exists(WASM):
        raise SystemExit(f"demo: {WASM} is missing; run scripts/demo.sh (it builds first)")
    with harness.ReplicaSet.start(3) as replicas:
        config = harness.EnvoyConfig.simple(replicas.endpoints, wasm_path=WASM,
                                            plugin_config='{"lb_policy": "header"}',
                                            concurrency=2)
        with harness.Envoy(config) as envoy:
            print(f"Envoy 1.40 with {os.path.basename(WASM)} "
                  f"({os.path.getsize(WASM) / 1e6:.1f} MB) ready in {envoy.startup_s:.2f} s; "
                  f"replicas {', '.join(replicas.endpoints)}")
            for line in envoy.wasm_log_lines():
                if "configured" in line:
                    print(f"  plugin log: {line.strip()[-60:]}")
                    break
            client = harness.Client(envoy.port)
            target = replicas.endpoints[1]
            print(f"\n{REQUESTS} requests each:")
            print(f"  no decision (service LB, round robin)     -> {spread(client, {})}")
            print(f"  plugin pins to {target:<15} -> "
                  f"{spread(client, {'x-ailb-endpoint': target})}")
            print(f"  client sends the override header itself   -> "
                  f"{spread(client, {'x-gateway-destination-endpoint': target})}  (ignored)")
            client.close()


if __name__ == "__main__":
    main()
