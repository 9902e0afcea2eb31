"""Higress's configuration as its controller delivers it: one document with the
global fields and `_rules_`, matched per request (route, domain, service).

The fixtures in tests/fixtures/higress are the exact bytes Higress's controller
produces from each shipped manifest (see that folder's README); they run
through the plugin in the Higress test host, natively and in the built wasm.
"""

import glob
import json
import os

import pytest
import yaml

from ai_load_balancer import config, config_fields, rules
from higress import wasmplugin
from tests.llm_traffic import (REDIS_CLUSTER, REPLICAS, chat_body, clear_redis, finish,
                               pinned, redis_inflight)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "higress")
VLLM = "outbound|8000||vllm.default.svc.cluster.local"
OTHER = "outbound|8000||chat.default.svc.cluster.local"


def manifest_and_fixture():
    for path in sorted(glob.glob(os.path.join(ROOT, "higress", "wasmplugin-*.yaml"))):
        name = os.path.basename(path)[:-len(".yaml")]
        with open(path, encoding="utf-8") as f:
            manifest = yaml.safe_load(f)
        with open(os.path.join(FIXTURES, name + ".json"), "rb") as f:
            yield pytest.param(manifest, f.read(), id=name)


# --- the controller's conversion --------------------------------------------------------

@pytest.mark.parametrize("manifest, fixture", list(manifest_and_fixture()))
def test_fixture_is_what_the_controller_delivers_for_the_shipped_manifest(manifest, fixture):
    assert wasmplugin.plugin_configuration(manifest) == fixture


def test_controller_conversion_follows_higress():
    """Worked from convertIstioWasmPlugin: rule fields next to the match keys,
    disabled rules and a disabled default left out, keys sorted, compact."""
    lb = {"serviceFQDN": "redis.dns", "servicePort": 6379, "password": "123456"}
    spec = {"defaultConfigDisable": True, "matchRules": [
        {"ingress": ["default/llm-route"], "config": {"lb_policy": "prefix_cache",
                                                       "lb_config": lb}},
        {"domain": ["*.example.com"], "configDisable": True, "config": {"lb_policy": "random"}},
        {"service": ["vllm.default.svc.cluster.local:8000"],
         "config": {"lb_policy": "round_robin", "lb_config": {"rate": 0.5, "n": 2.0}}}],
        "defaultConfig": {"lb_policy": "header"}}
    assert wasmplugin.plugin_configuration({"spec": spec}) == (
        b'{"_rules_":[{"_match_route_":["default/llm-route"],"lb_config":{"password":"123456",'
        b'"serviceFQDN":"redis.dns","servicePort":6379},"lb_policy":"prefix_cache"},'
        b'{"_match_service_":["vllm.default.svc.cluster.local:8000"],"lb_config":{"n":2,'
        b'"rate":0.5},"lb_policy":"round_robin"}]}')
    spec["defaultConfigDisable"] = False
    assert wasmplugin.plugin_configuration({"spec": spec}).endswith(b'],"lb_policy":"header"}')
    only_disabled = {"defaultConfigDisable": True, "matchRules": [
        {"ingress": ["a"], "configDisable": True, "config": {"lb_policy": "random"}}]}
    assert wasmplugin.plugin_configuration({"spec": only_disabled}) is None  # no filter at all
    with pytest.raises(wasmplugin.ConversionError, match="no match condition"):
        wasmplugin.plugin_configuration({"spec": {"matchRules": [{"config": {}}]}})


# --- parsing ---------------------------------------------------------------------------------

def parse(document):
    return rules.parse(json.dumps(document).encode())


def test_an_error_in_a_rule_names_the_rule_and_the_field():
    document = {"_rules_": [
        {"_match_route_": ["a"], "lb_policy": "round_robin"},
        {"_match_route_": ["b"], "lb_policy": "prefix_cache",
         "lb_config": {"serviceFQDN": "redis.static", "servicePort": "six"}}]}
    with pytest.raises(config.ConfigError, match=r"^_rules_\[1\]\.lb_config\.servicePort"):
        parse(document)
    with pytest.raises(config.ConfigError, match=r"^_rules_\[0\]\.lb_policy: required"):
        parse({"_rules_": [{"_match_route_": ["a"], "lb_config": {}}]})
    with pytest.raises(config.ConfigError, match=r"^_rules_\[0\]: needs one of"):
        parse({"_rules_": [{"lb_policy": "random"}]})


def test_a_config_without_lb_policy_is_an_error_not_a_silent_policy():
    for raw in (b"", b"{}", b'{"lb_config": {"header": "x-replica"}}'):
        with pytest.raises(config.ConfigError, match="lb_policy: required"):
            rules.parse(raw)


def test_a_bad_global_configuration_is_dropped_when_rules_exist():
    parsed, warnings = parse({"lb_policy": "nope", "_rules_": [
        {"_match_route_": ["a"], "lb_policy": "random"}]})
    assert parsed.default is None and [r.config.policy for r in parsed.rules] == ["random"]
    assert warnings and "global configuration ignored" in warnings[0]


def test_higress_values_are_read_leniently():
    parsed, warnings = parse({"lb_policy": "global_least_request", "lb_config": {
        "serviceFQDN": "redis.static", "servicePort": "6379", "timeout": "500",
        "maxRequestCount": "8", "enableDetailLog": "true", "cleanInterval": "30"}})
    cfg = parsed.default
    assert warnings == []
    assert (cfg.redis.cluster, cfg.redis.timeout_ms, cfg.max_request_count, cfg.detail_log) == (
        "outbound|6379||redis.static", 500, 8, True)


def test_rules_sharing_a_redis_cluster_must_share_its_login():
    rule = {"_match_route_": ["a"], "lb_policy": "prefix_cache",
            "lb_config": {"serviceFQDN": "redis.static", "servicePort": 6379, "database": 1}}
    other = {**rule, "_match_route_": ["b"],
             "lb_config": {**rule["lb_config"], "database": 2}}
    with pytest.raises(config.ConfigError, match=r"^_rules_\[1\]\.lb_config: Redis"):
        parse({"_rules_": [rule, other]})
    parse({"_rules_": [rule, {**rule, "_match_route_": ["b"]}]})  # the same login is fine


# --- matching, as wasm-go's rule matcher -----------------------------------------------------

MATCHING = {"lb_policy": "round_robin", "_rules_": [
    {"_match_domain_": ["*.example.com", "chat.*"], "lb_policy": "random"},
    {"_match_route_": ["default/llm-route"], "lb_policy": "prefix_cache"},
    {"_match_route_": ["default/both"], "_match_service_": ["vllm.default.svc.cluster.local"],
     "lb_policy": "least_connections"},
    {"_match_service_": ["vllm.default.svc.cluster.local:8000", "llm"],
     "lb_policy": "global_least_request"},
]}


@pytest.mark.parametrize("route, authority, cluster, policy", [
    ("default/llm-route", "api.example.com:443", VLLM, "random"),      # first match wins
    ("default/llm-route", "example.com", VLLM, "prefix_cache"),         # *.x does not match x
    ("x", "chat.internal", OTHER, "random"),                            # prefix form
    ("default/both", "h", VLLM, "least_connections"),                   # route and service
    ("default/both", "h", OTHER, "round_robin"),                        # ... both needed
    ("x", "h", VLLM, "global_least_request"),                           # fqdn:port
    ("x", "h", "outbound|9000||vllm.default.svc.cluster.local", "round_robin"),
    ("x", "h", "llm", "global_least_request"),                          # stock Envoy cluster
    ("x", "API.EXAMPLE.COM", OTHER, "round_robin"),                     # case-sensitive, as Higress
])
def test_requests_match_rules_as_higress_does(route, authority, cluster, policy):
    parsed, _ = parse(MATCHING)
    rule = rules.match(parsed, route, authority, cluster)
    assert (rule.config if rule else parsed.default).policy == policy


# --- the built plugin, in the Higress test host ------------------------------------------

def higress_host(make_host, configuration, redis_server=None):
    clusters = {REDIS_CLUSTER: redis_server.address} if redis_server else None
    host = make_host(target="higress", clusters=clusters)
    host.set_upstream_hosts([(r, {"health_status": "Healthy"}) for r in REPLICAS])
    assert host.start_plugin(configuration), host.logs_text()
    return host


def request(host, route="", cluster=VLLM, authority="llm.example.com"):
    """One chat request on a route; returns its context id (run to the body)."""
    cid = host.init_http_context()
    host.set_property(["route_name"], route, context_id=cid)
    host.set_property(["cluster_name"], cluster, context_id=cid)
    host.call_on_request_headers(cid, [(":method", "POST"), (":path", "/v1/chat/completions"),
                                       (":authority", authority)], end_of_stream=False)
    host.call_on_request_body(cid, chat_body("You are helpful.", "hello"), end_of_stream=True)
    host.run_callouts()
    return cid


def decisions(host, policy):
    """Decisions the plugin counted for `policy`, whatever their reason."""
    prefix = f"ailb.decisions.{policy}."
    return sum(m.value for name, m in host.shared.metrics.items() if name.startswith(prefix))


@pytest.mark.parametrize("manifest, fixture", list(manifest_and_fixture()))
def test_the_configured_policy_decides_for_matching_requests_and_nothing_else(
        make_host, redis_server, manifest, fixture):
    rule = manifest["spec"]["matchRules"][0]
    policy = config_fields.ALIASES.get(rule["config"]["lb_policy"], rule["config"]["lb_policy"])
    clear_redis(redis_server, VLLM)
    host = higress_host(make_host, fixture, redis_server)
    if "ingress" in rule:
        matching = {"route": rule["ingress"][0]}
        other = {"route": "default/another-route"}
    else:
        matching = {"cluster": f"outbound|8000||{rule['service'][0]}"}
        other = {"cluster": OTHER}
    if policy == "least_busy":  # Higress hands over the hosts' metrics
        host.set_upstream_hosts([(r, {"health_status": "Healthy", "metrics": (
            "vllm:num_requests_waiting 0\nvllm:num_requests_running 1\n"
            "vllm:kv_cache_usage_perc 0.1\n")}) for r in REPLICAS])
    cids = [request(host, **matching) for _ in range(4)]
    assert all(pinned(host, cid) in REPLICAS for cid in cids)
    assert decisions(host, policy) == 4, host.logs_text()
    if rule["config"]["lb_config"].get("serviceFQDN"):  # counted in Redis while in flight
        assert sum(redis_inflight(redis_server, cluster=VLLM).values()) == 4
    untouched = request(host, **other)
    assert pinned(host, untouched) is None and decisions(host, policy) == 4
    for cid in cids + [untouched]:
        finish(host, cid)
    host.run_callouts()  # the releases in Redis
    assert sum(redis_inflight(redis_server, cluster=VLLM).values()) == 0
    assert host.get_error_logs() == []


def test_each_rule_runs_its_own_policy_and_a_disabled_rule_passes_through(make_host):
    manifest = {"metadata": {"name": "two", "namespace": "higress-system"}, "spec": {
        "defaultConfigDisable": True, "matchRules": [
            {"ingress": ["default/a"], "config": {"lb_policy": "round_robin"}},
            {"ingress": ["default/b"], "config": {"lb_policy": "least_connections"}},
            {"ingress": ["default/c"], "configDisable": True,
             "config": {"lb_policy": "random"}}]}}
    host = higress_host(make_host, wasmplugin.plugin_configuration(manifest))
    a = [request(host, route="default/a") for _ in range(4)]
    assert sorted(pinned(host, cid) for cid in a) == REPLICAS  # round robin: each once
    assert pinned(host, request(host, route="default/b")) in REPLICAS
    assert host.get_counter_metric("ailb.decisions.least_connections.least_request") == 1
    assert pinned(host, request(host, route="default/c")) is None  # disabled: untouched
    assert pinned(host, request(host, route="")) is None           # no rule, no default


@pytest.mark.parametrize("target", ["higress", "envoy"])
def test_cluster_metrics_chooses_the_service_and_learns_from_answers(make_host, target):
    """lb_type cluster: the service goes into the route's cluster_header (a
    client's value replaced); the service slower to its first answer byte gets
    few requests once measured."""
    fast, slow = "outbound|80||llm-a.dns", "outbound|80||llm-b.dns"
    document = {"_rules_": [{"_match_route_": ["ai-route"], "lb_type": "cluster",
                             "lb_policy": "cluster_metrics", "lb_config": {
                                 "mode": "LeastFirstTokenLatency",
                                 "service_list": [fast, slow]}}]}
    host = make_host(target=target)
    assert host.start_plugin(json.dumps(document)), host.logs_text()
    clock = [1_000_000_000]
    host.now_ns = lambda: clock[0]
    chosen = []
    for _ in range(40):
        cid = host.init_http_context()
        host.set_property(["route_name"], "ai-route", context_id=cid)
        host.call_on_request_headers(cid, [(":method", "POST"), (":path", "/v1/x"),
                                           (":authority", "a"),
                                           ("x-higress-target-cluster", "client-choice")], True)
        service = host.get_request_header(cid, "x-higress-target-cluster")
        chosen.append(service)
        clock[0] += (20 if service == fast else 400) * 1_000_000
        host.call_on_response_headers(cid, [(":status", "200")], False)
        host.call_on_response_body(cid, b"data: {}", False)
        host.call_on_response_body(cid, b"data: [DONE]", True)
        host.complete_http_context(cid)
    assert set(chosen) == {fast, slow}  # both tried (no sample counts as 0)
    assert chosen[-20:].count(fast) >= 18, chosen
    assert host.get_counter_metric(
        "ailb.decisions.cluster_metrics.LeastFirstTokenLatency") == 40
    assert host.get_error_logs() == []


@pytest.mark.parametrize("target", ["higress", "envoy"])
def test_cluster_hash_keeps_each_key_on_its_service(make_host, target):
    """lb_type cluster, cluster_hash: a consumer's requests all go to one service
    (the client's cluster header replaced), consumers spread by weight, and a
    request without the key still gets a service (Higress refuses it)."""
    a, b = "outbound|80||llm-a.dns", "outbound|80||llm-b.dns"
    document = {"_rules_": [{"_match_route_": ["ai-route"], "lb_type": "cluster",
                             "lb_policy": "cluster_hash", "lb_config": {
                                 "clusters": [{"cluster": a, "weight": "25"},
                                              {"cluster": b, "weight": 75}]}}]}
    host = make_host(target=target)
    assert host.start_plugin(json.dumps(document)), host.logs_text()

    def service_of(consumer):
        cid = host.init_http_context()
        host.set_property(["route_name"], "ai-route", context_id=cid)
        headers = [(":method", "POST"), (":path", "/v1/x"), (":authority", "a"),
                   ("x-higress-target-cluster", "client-choice")]
        if consumer:
            headers.append(("x-mse-consumer", consumer))
        host.call_on_request_headers(cid, headers, True)
        host.call_on_response_headers(cid, [(":status", "200")], True)
        host.complete_http_context(cid)
        return host.get_request_header(cid, "x-higress-target-cluster")

    first = {f"consumer-{i}": service_of(f"consumer-{i}") for i in range(200)}
    again = {consumer: service_of(consumer) for consumer in first}
    assert again == first
    assert 25 <= list(first.values()).count(a) <= 75, first  # ~50 of 200
    assert {service_of("") for _ in range(30)} == {a, b}
    assert host.get_counter_metric("ailb.decisions.cluster_hash.hash") == 400
    assert host.get_counter_metric("ailb.decisions.cluster_hash.no_key") == 30
    assert host.get_error_logs() == []
    assert "no x-mse-consumer header" in host.logs_text()
