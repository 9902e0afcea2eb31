"""End-to-end: the built .wasm inside a real Envoy 1.40 in front of loopback replicas.

One Envoy per scenario group, shared by the group's tests:
- the production plugin (policy "header"), concurrency 2, round-robin fallback;
- Envoy without the wasm filter (least-request fallback), as the control;
- the faulty test plugin, one listener per callback that raises, all listeners
  sharing one VM per worker, failure_policy FAIL_CLOSED (a trap would turn
  into 503s instead of hiding behind fail-open).
"""

import collections
import time

import pytest

import envoy_harness as harness

CONFIGURED = "ai-load-balancer: configured, lb_policy=header"
# What Envoy logs when a module does not fit its host or the VM dies.
HOST_FAILURES = ("missing import", "Failed to load Wasm", "Wasm VM failed", "Uncaught",
                 "RuntimeError: unreachable", "failed to load", "mismatch")


def no_host_failure(log):
    found = [text for text in HOST_FAILURES if text in log]
    assert not found, f"Envoy log reports {found}"


# --- production plugin -------------------------------------------------------------------

@pytest.fixture(scope="module")
def plugin_envoy(module_envoys, replicas, production_wasm):
    config = harness.EnvoyConfig.simple(replicas.endpoints, wasm_path=production_wasm,
                                        plugin_config={"lb_policy": "header"}, concurrency=2)
    return module_envoys(config)


@pytest.fixture(scope="module")
def plain_envoy(module_envoys, replicas):
    config = harness.EnvoyConfig.simple(replicas.endpoints, fallback_policy="least_request")
    return module_envoys(config)


@pytest.fixture
def client(plugin_envoy, replicas):
    replicas.reset()
    with harness.Client(plugin_envoy.port) as c:
        yield c


def test_production_plugin_loads_and_configures(plugin_envoy):
    assert plugin_envoy.running and plugin_envoy.startup_s is not None
    log = plugin_envoy.wait_for_log(CONFIGURED)
    no_host_failure(log)
    # The line comes from Python (proxy_log through the shim), in the main
    # thread's VM and in each worker's clone.
    lines = plugin_envoy.wasm_log_lines()
    assert lines.count(CONFIGURED) >= 1 + 2, lines
    assert not any("Traceback" in line for line in lines), lines


def test_pins_request_to_named_replica(client, replicas):
    target = replicas[1]
    seen = [client.get("/pin", {"x-ailb-endpoint": target.address}) for _ in range(20)]
    assert [r.status for r in seen] == [200] * 20
    assert {r.replica for r in seen} == {"r1"}
    assert replicas.counts() == {"r0": 0, "r1": 20, "r2": 0}
    # The plugin set the override header the cluster's override_host policy reads.
    assert seen[-1].json()["headers"][harness.OVERRIDE_HEADER] == target.address


def test_without_header_fallback_spreads(client, replicas):
    seen = collections.Counter(client.get("/spread").replica for _ in range(21))
    assert set(seen) == {"r0", "r1", "r2"}, seen
    assert min(seen.values()) >= 5, seen  # round robin on one worker: 7 each


def test_client_sent_override_header_is_stripped(client, replicas):
    target = replicas[2]
    seen = [client.get("/strip", {harness.OVERRIDE_HEADER: target.address}) for _ in range(21)]
    assert all(r.status == 200 for r in seen)
    assert len({r.replica for r in seen}) == 3, collections.Counter(r.replica for r in seen)
    assert not any(harness.OVERRIDE_HEADER in r.json()["headers"] for r in seen)


def test_plugin_header_wins_over_client_override(client, replicas):
    r = client.get("/both", {harness.OVERRIDE_HEADER: replicas[2].address,
                             "x-ailb-endpoint": replicas[0].address})
    assert r.status == 200 and r.replica == "r0"
    assert r.json()["headers"][harness.OVERRIDE_HEADER] == replicas[0].address


def test_unknown_endpoint_falls_back(client):
    seen = [client.get("/unknown", {"x-ailb-endpoint": "127.0.0.1:1"}) for _ in range(6)]
    assert [r.status for r in seen] == [200] * 6
    assert len({r.replica for r in seen}) >= 2


def test_without_plugin_client_header_would_pin(plain_envoy, replicas):
    """Control: with no plugin the client's override header reaches the LB (which is
    why the plugin strips it), and the least_request fallback spreads the rest."""
    with harness.Client(plain_envoy.port) as c:
        pinned = {c.get("/", {harness.OVERRIDE_HEADER: replicas[2].address}).replica
                  for _ in range(10)}
        spread = {c.get("/").replica for _ in range(30)}
    assert pinned == {"r2"}
    assert len(spread) >= 2
    assert plain_envoy.wasm_log_lines() == []


def test_stats_count_the_requests(plugin_envoy):
    stats = plugin_envoy.stats("cluster.backend.upstream_rq_")
    assert stats.get("cluster.backend.upstream_rq_200", 0) >= 20 + 21 + 21
    assert stats.get("cluster.backend.upstream_rq_503", 0) == 0


# --- invalid configuration ---------------------------------------------------------------

@pytest.mark.parametrize("plugin_config, message", [
    ({"lb_policy": "nope"},
     "invalid configuration: lb_policy: 'nope' is not an lb_type endpoint policy"),
    ("{not json", "invalid configuration: configuration is not valid JSON"),
])
def test_invalid_configuration_is_rejected(start_envoy, replicas, production_wasm,
                                           plugin_config, message):
    """What Envoy 1.40 does: the plugin's on_configure returns false, the base VM
    fails to configure, and Envoy refuses the static listener's filter and exits
    non-zero before ever becoming ready (fail_open does not apply at load)."""
    config = harness.EnvoyConfig.simple(replicas.endpoints, wasm_path=production_wasm,
                                        plugin_config=plugin_config)
    envoy = start_envoy(config, wait=False)
    code = envoy.wait_exit(timeout=60)
    assert code != 0
    log = envoy.log()
    assert message in log
    assert "Unable to create Wasm plugin ailb" in log
    assert envoy.startup_s is None
    errors = [line for line in envoy.wasm_log_lines() if "invalid configuration" in line]
    assert len(errors) == 1, errors


# --- the exception boundary, with a plugin that raises on purpose ------------------------

FAULTS = ["on_request_headers", "on_request_body", "on_response_headers",
          "http_call_response", "on_log"]
FOLLOW_UPS = 50
CALLOUT_DELAY_S = 0.3


@pytest.fixture(scope="module")
def faulty_envoy(module_envoys, replicas, faulty_wasm):
    listeners = []
    for case in ["none", "on_configure", *FAULTS]:
        wasm = harness.WasmFilter(faulty_wasm,
                                  {"raise_in": "" if case == "none" else case,
                                   "cluster": "backend"},
                                  fail_open=False, name=f"faulty-{case}", vm_id="faulty")
        listeners.append(harness.Listener(case, 0, "backend", wasm))
    config = harness.EnvoyConfig(listeners, [harness.Cluster(replicas.endpoints)], concurrency=1)
    return module_envoys(config)


def _send(client, fault, i=0):
    """Alternates GET and POST; POST when the body callback is the one that raises.
    GET only for the callout case: see test_post_waits_for_callout."""
    if fault == "on_request_body" or (i % 2 and fault != "http_call_response"):
        return client.post(f"/{fault}/{i}", body=b'{"prompt": "hello"}' * 10,
                           headers={"content-type": "application/json"})
    return client.get(f"/{fault}/{i}")


def test_faulty_plugin_runs_when_nothing_raises(faulty_envoy):
    with harness.Client(faulty_envoy.listener_port("none")) as c:
        get, post = c.get("/"), _send(c, "on_request_body")
    assert get.status == 200 and get.replica
    assert get.headers["x-faulty-ran"] == "on_request_headers,on_response_headers"
    # on_request_body runs once per body chunk Envoy delivers (one or more).
    steps = post.headers["x-faulty-ran"].split(",")
    assert steps[0] == "on_request_headers" and steps[-1] == "on_response_headers"
    assert set(steps[1:-1]) == {"on_request_body"}, steps
    no_host_failure(faulty_envoy.log())


@pytest.mark.parametrize("fault", FAULTS)
def test_exception_in_callback_fails_open(faulty_envoy, replicas, fault):
    marker = f"Boom: {fault} (on purpose)"
    with harness.Client(faulty_envoy.listener_port(fault)) as c:
        first = _send(c, fault)
        assert first.status == 200, first
        assert first.replica in {"r0", "r1", "r2"}
        assert "x-faulty-ran" not in first.headers or fault == "on_log"
        log = faulty_envoy.wait_for_log(marker)
        assert "Traceback (most recent call last):" in log
        # The VM survives: many more requests succeed, and each one runs the
        # plugin again (raising again), so it is not a dead VM being skipped.
        later = [_send(c, fault, i) for i in range(1, FOLLOW_UPS + 1)]
    assert [r.status for r in later] == [200] * FOLLOW_UPS
    faulty_envoy.wait_for_log(marker, count=1 + FOLLOW_UPS)
    if fault == "on_log":  # raised after the response: the earlier callbacks ran
        assert first.headers["x-faulty-ran"] == "on_request_headers,on_response_headers"
    if fault == "http_call_response":  # the callout reached a replica
        assert sum(1 for r in replicas for s in r.requests if s.path == "/") >= 1
    with harness.Client(faulty_envoy.listener_port("none")) as c:
        assert c.get("/after").headers["x-faulty-ran"] == "on_request_headers,on_response_headers"
    no_host_failure(faulty_envoy.log())


def test_exception_in_on_configure_passes_streams_through(faulty_envoy):
    log = faulty_envoy.wait_for_log("Boom: on_configure (on purpose)")
    assert "plugin error in on_configure" in log
    with harness.Client(faulty_envoy.listener_port("on_configure")) as c:
        seen = [_send(c, "on_configure", i) for i in range(10)]
    assert [r.status for r in seen] == [200] * 10
    assert not any("x-faulty-ran" in r.headers for r in seen)


def test_post_waits_for_callout(faulty_envoy, replicas):
    """A request paused in its headers for a callout must stay paused through its
    body: the upstream sees it only after the callout answered (slowly, here)."""
    def slow_callout(replica, request):
        if request.path == "/":
            time.sleep(CALLOUT_DELAY_S)
        return None

    for r in replicas:
        r.behaviour.handler = slow_callout
    try:
        before = faulty_envoy.log().count("Boom: http_call_response (on purpose)")
        with harness.Client(faulty_envoy.listener_port("http_call_response")) as c:
            started = time.monotonic()
            response = c.post("/post-callout", body=b"x" * 200)
            elapsed = time.monotonic() - started
    finally:
        for r in replicas:
            r.behaviour.handler = None
    assert response.status == 200
    assert elapsed >= CALLOUT_DELAY_S, "the request went upstream before the callout answered"
    faulty_envoy.wait_for_log("Boom: http_call_response (on purpose)", count=before + 1,
                              timeout=3)
