"""End-to-end: Higress's configuration document in a stock Envoy 1.40.

The plugin gets the exact JSON Higress's controller makes from the shipped
prefix_cache manifest (tests/fixtures/higress), with the replicas added to the
rule's lb_config (stock Envoy cannot list a cluster's hosts). Envoy's route
named like the manifest's ingress is decided by prefix_cache; another route
of the same listener is left to the cluster's own load balancing.
"""

import json
import os

import envoy_harness as harness

JSON = {"content-type": "application/json"}

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "higress", "wasmplugin-prefix-cache.json")


def chat(history):
    messages = [{"role": "system", "content": "You answer questions about the long "
                 "document below. " + "Lorem ipsum dolor sit amet. " * 40}]
    messages += [{"role": "user", "content": turn} for turn in history]
    return json.dumps({"model": "qwen", "messages": messages}).encode()


def test_the_manifests_rule_decides_its_route_and_leaves_others_alone(
        start_envoy, replicas, production_wasm):
    with open(FIXTURE, "rb") as f:
        document = json.load(f)
    rule = document["_rules_"][0]
    route = rule["_match_route_"][0]
    rule["lb_config"].update(endpoints=replicas.endpoints, debugHeader=True)
    config = harness.EnvoyConfig.simple(replicas.endpoints, wasm_path=production_wasm,
                                        plugin_config=document)
    config.listeners[0].routes = [(route, "/v1/"), ("default/other-route", "/")]
    envoy = start_envoy(config)
    envoy.wait_for_log("configured _rules_[0], lb_policy=prefix_cache, state=embedded")
    with harness.Client(envoy.port) as client:
        first = client.post("/v1/chat/completions", chat(["What is it about?"]), JSON)
        again = client.post("/v1/chat/completions", chat(["What is it about?", "Who wrote it?"]),
                            JSON)
        other = [client.post("/other/chat/completions", chat(["What is it about?"]),
                             JSON) for _ in range(4)]
    decided = [harness.decision(r.headers) for r in (first, again)]
    assert [r.status for r in (first, again)] == [200, 200]
    assert decided[0]["reason"] in ("least_load", "bounded_load")
    assert decided[1]["reason"] == "prefix_match"  # the conversation stays on its replica
    assert again.replica == first.replica == replicas.by_address(decided[0]["address"]).name
    assert all(r.status == 200 and harness.decision(r.headers) is None for r in other)
    assert len({r.replica for r in other}) > 1  # the cluster's round robin spread them
    assert envoy.stats(r"wasmcustom\.ailb\.decisions\.prefix_cache\.")
    assert "Traceback" not in envoy.log()


def two_services_envoy(start_envoy, wasm, services, names, document):
    """An Envoy whose route sends each request to the cluster named in
    x-higress-target-cluster; one cluster per service, named `names`."""
    config = harness.EnvoyConfig.simple(services.endpoints[:1], wasm_path=wasm,
                                        plugin_config=document)
    config.clusters = [harness.Cluster([address], name, override_host=False)
                       for address, name in zip(services.endpoints, names)]
    config.listeners[0].cluster_header = "x-higress-target-cluster"
    envoy = start_envoy(config)
    envoy.wait_for_log(f"configured, lb_policy={document['lb_policy']}")
    return envoy


def test_cluster_metrics_routes_by_the_service_it_writes(start_envoy, production_wasm):
    """lb_type cluster in stock Envoy: the route's cluster_header reads the
    service the plugin chose (a client's value replaced); one request at a time
    leaves both idle, so both get requests."""
    with harness.ReplicaSet.start(2, prefix="svc") as services:
        names = ["llm-a", "llm-b"]
        document = {"lb_type": "cluster", "lb_policy": "cluster_metrics",
                    "lb_config": {"mode": "LeastBusy", "service_list": names}}
        envoy = two_services_envoy(start_envoy, production_wasm, services, names, document)
        with harness.Client(envoy.port) as client:
            answers = [client.post("/v1/chat/completions", chat(["hi"]),
                                   {**JSON, "x-higress-target-cluster": "no-such-cluster"})
                       for _ in range(20)]
    assert all(r.status == 200 for r in answers), [r.status for r in answers]
    served = [r.replica for r in answers]
    assert sorted(set(served)) == ["svc0", "svc1"] and served.count("svc0") >= 3, served
    assert envoy.stats(r"wasmcustom\.ailb\.decisions\.cluster_metrics\.LeastBusy")


def test_cluster_hash_keeps_a_consumer_on_one_service(start_envoy, production_wasm):
    """lb_type cluster, cluster_hash in stock Envoy: every request of one
    consumer reaches the same service through the route's cluster_header;
    consumers spread over both services."""
    with harness.ReplicaSet.start(2, prefix="svc") as services:
        names = ["llm-a", "llm-b"]
        document = {"lb_type": "cluster", "lb_policy": "cluster_hash",
                    "lb_config": {"clusters": [{"cluster": names[0], "weight": 50},
                                               {"cluster": names[1], "weight": 50}]}}
        envoy = two_services_envoy(start_envoy, production_wasm, services, names, document)
        served = {}
        with harness.Client(envoy.port) as client:
            for _turn in range(3):
                for user in range(12):
                    answer = client.post("/v1/chat/completions", chat(["hi"]),
                                         {**JSON, "x-mse-consumer": f"user-{user}",
                                          "x-higress-target-cluster": "no-such-cluster"})
                    assert answer.status == 200, answer.status
                    served.setdefault(user, set()).add(answer.replica)
    assert all(len(replicas) == 1 for replicas in served.values()), served
    assert {r for replicas in served.values() for r in replicas} == {"svc0", "svc1"}
    assert envoy.stats(r"wasmcustom\.ailb\.decisions\.cluster_hash\.hash")
