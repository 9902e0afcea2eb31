"""End-to-end: the classic policies, health checks, failover and the plugin's
stats in a real Envoy 1.40 (--concurrency 2).

Every scenario has its own replicas, so switching one replica's health cannot
leak into another Envoy's view. A replica here is switched by two attributes:
`health_status` (what its /health answers the plugin's probes) and
`chat_status` (what it answers everything else; 200 = the normal answer).
`Replica.count` counts the real requests only, never the probes.
"""

import collections
import json
import re
import threading
import time

import pytest

import envoy_harness as harness

PROBE_MS = 200          # healthCheck.interval of the health scenarios
CHAT_PATH = "/v1/chat/completions"
CHAT = json.dumps({"model": "base", "messages": [{"role": "user", "content": "hi"}]}).encode()
JSON = {"content-type": "application/json"}


# --- replicas the tests switch -------------------------------------------------------------

def control_handler(replica, request):
    """/health answers `health_status`; anything else answers `chat_status`
    with an error body, or the default answer when it is 200."""
    if request.path == "/health":
        status = getattr(replica, "health_status", 200)
        return status, {"content-type": "text/plain"}, b"ok\n" if status == 200 else b"sick\n"
    status = getattr(replica, "chat_status", 200)
    if status != 200:
        body = json.dumps({"error": {"message": f"{replica.name} is down"}}).encode()
        return status, dict(JSON), body
    return None


def switch(replica, health=200, chat=200):
    replica.health_status, replica.chat_status = health, chat


def controlled_replicas(count=3, prefix="r"):
    behaviours = [harness.Behaviour(handler=control_handler) for _ in range(count)]
    return harness.ReplicaSet.start(count, behaviours, prefix)


def probes(replica):
    return sum(1 for r in list(replica.requests) if r.path == "/health")


# --- Envoys --------------------------------------------------------------------------------

def start_policy_envoy(starter, endpoints, wasm, policy, retry=None, **fields):
    plugin_config = harness.plugin_config(policy, endpoints, debugHeader=True, **fields)
    config = harness.EnvoyConfig.simple(list(endpoints), wasm_path=wasm,
                                        plugin_config=plugin_config, concurrency=2,
                                        retry_policy=retry)
    envoy = starter(config)
    envoy.wait_for_log(f"configured, lb_policy={policy}, state=embedded", count=3)
    return envoy


def prime(envoy, replicas):
    """A few requests on several connections (both workers learn the routed
    cluster, the health checks' target), then waits for a probe at every replica."""
    send(envoy, 6, connections=6)
    assert wait_until(lambda: all(probes(r) >= 1 for r in replicas), 5), \
        [probes(r) for r in replicas]
    replicas.reset()


def wait_until(check, timeout=10, step=0.02):
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)


def send(envoy, count, connections=1, path="/r", headers=None):
    """`count` sequential requests, taking turns over `connections` keep-alive
    connections (the kernel spreads connections over both workers)."""
    clients = [harness.Client(envoy.port) for _ in range(connections)]
    try:
        return [clients[i % connections].post(f"{path}/{i}", CHAT, {**JSON, **(headers or {})})
                for i in range(count)]
    finally:
        for client in clients:
            client.close()


def decision(response):
    return harness.decision(response.headers)


def log_count(envoy, text):
    return envoy.log().count(text)


def wait_log(envoy, text, count, timeout=5):
    """Waits until `text` is in the log `count` times; returns the seconds waited."""
    started = time.monotonic()
    envoy.wait_for_log(text, timeout=timeout, count=count)
    return time.monotonic() - started


def custom_stats(envoy):
    """The plugin's counters from /stats: {"ailb.x.y": n} (Envoy shows wasmcustom.ailb.x.y)."""
    return {name[len("wasmcustom."):]: n for name, n in envoy.stats(r"^wasmcustom\.").items()}


def label(address):
    return address.replace(".", "_").replace(":", "_")


def unhealthy_line(address):
    return f"ai-load-balancer: endpoint {address} is unhealthy: "


def healthy_line(address):
    return f"ai-load-balancer: endpoint {address} is healthy: "


# --- 1. weighted_round_robin ------------------------------------------------------------------

WRR_REQUESTS = 6000
WRR_THREADS = 6


@pytest.fixture(scope="module")
def wrr_fleet():
    with harness.ReplicaSet.start(3) as replicas:
        yield replicas


@pytest.fixture(scope="module")
def wrr_envoy(module_envoys, wrr_fleet, production_wasm):
    weights = dict(zip(wrr_fleet.endpoints, [3, 2, 1]))
    return start_policy_envoy(module_envoys, wrr_fleet.endpoints, production_wasm,
                              "weighted_round_robin", weights=weights)


def test_weighted_round_robin_splits_6000_requests_3_2_1(wrr_envoy, wrr_fleet):
    wrr_fleet.reset()
    answered = collections.Counter()
    lock = threading.Lock()

    def worker(k):
        seen = collections.Counter()
        with harness.Client(wrr_envoy.port) as client:
            for i in range(WRR_REQUESTS // WRR_THREADS):
                response = client.get(f"/wrr/{k}/{i}")
                seen[(response.status, response.replica)] += 1
        with lock:
            answered.update(seen)

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(WRR_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    elapsed = time.monotonic() - started
    assert sum(answered.values()) == WRR_REQUESTS, answered
    assert {status for status, _ in answered} == {200}, answered
    counts = wrr_fleet.counts()
    assert sum(counts.values()) == WRR_REQUESTS, counts
    for name, expected in zip(["r0", "r1", "r2"], [3 / 6, 2 / 6, 1 / 6]):
        share = counts[name] / WRR_REQUESTS
        assert abs(share - expected) <= 0.02, (counts, f"{elapsed:.1f} s")
    assert elapsed < 30, f"{WRR_REQUESTS} requests took {elapsed:.1f} s"


def test_weighted_round_robin_is_smooth(wrr_envoy, wrr_fleet):
    """One connection (one worker): every 6 picks in a row are 3/2/1, and the
    picks interleave (A B A C A B, never A A A B B C: at most two in a row, where
    one cycle of 6 ends and the next begins)."""
    names = [r.replica for r in send(wrr_envoy, 36)]
    for i in range(len(names) - 5):
        window = collections.Counter(names[i:i + 6])
        assert window == {"r0": 3, "r1": 2, "r2": 1}, names
    assert all(len(set(names[i:i + 3])) > 1 for i in range(len(names) - 2)), names


# --- 2. round_robin and consistent_hash ----------------------------------------------------

@pytest.fixture(scope="module")
def rr_fleet():
    with harness.ReplicaSet.start(3) as replicas:
        yield replicas


@pytest.fixture(scope="module")
def rr_envoy(module_envoys, rr_fleet, production_wasm):
    return start_policy_envoy(module_envoys, rr_fleet.endpoints, production_wasm, "round_robin")


def test_round_robin_spreads_evenly(rr_envoy, rr_fleet):
    rr_fleet.reset()
    names = [r.replica for r in send(rr_envoy, 30)]  # one connection: one worker's cycle
    for i in range(len(names) - 2):
        assert sorted(names[i:i + 3]) == ["r0", "r1", "r2"], names
    responses = send(rr_envoy, 600, connections=4)   # both workers, each its own cycle
    assert {r.status for r in responses} == {200}
    counts = rr_fleet.counts()
    assert sum(counts.values()) == 630
    assert max(counts.values()) - min(counts.values()) <= 2, counts
    assert {decision(r)["reason"] for r in responses} == {"round_robin"}


@pytest.fixture(scope="module")
def hash_fleet():
    with harness.ReplicaSet.start(3) as replicas:
        yield replicas


@pytest.fixture(scope="module")
def hash_envoy(module_envoys, hash_fleet, production_wasm):
    return start_policy_envoy(module_envoys, hash_fleet.endpoints, production_wasm,
                              "consistent_hash", hashKey={"header": "x-session-id"})


def test_consistent_hash_keeps_sessions_and_spreads_them(hash_envoy, hash_fleet):
    sessions = [f"session-{i}" for i in range(60)]
    landed = collections.defaultdict(set)
    reasons = collections.Counter()
    clients = [harness.Client(hash_envoy.port) for _ in range(4)]
    try:
        for round_ in range(3):  # every session 3 times, each time on another connection
            for i, session in enumerate(sessions):
                client = clients[(i + round_) % len(clients)]
                response = client.post(f"{CHAT_PATH}?s={session}", CHAT,
                                       {**JSON, "x-session-id": session})
                assert response.status == 200
                d = decision(response)
                assert hash_fleet.by_address(d["address"]).name == response.replica
                landed[session].add(response.replica)
                reasons[d["reason"]] += 1
    finally:
        for client in clients:
            client.close()
    moved = {s: names for s, names in landed.items() if len(names) != 1}
    assert not moved, (moved, reasons)
    assert reasons == {"hash": 180}, reasons
    per_replica = collections.Counter(next(iter(names)) for names in landed.values())
    assert set(per_replica) == {"r0", "r1", "r2"}, per_replica
    assert min(per_replica.values()) >= 10, per_replica  # 20 each expected


@pytest.fixture(scope="module")
def sticky_envoy(module_envoys, hash_fleet, production_wasm):
    return start_policy_envoy(module_envoys, hash_fleet.endpoints, production_wasm,
                              "endpoint_hash", hash_header="x-user")


def test_endpoint_hash_binds_a_session_to_the_replica_that_answered_it(sticky_envoy,
                                                                       hash_fleet):
    """A new session goes where Envoy's own load balancing sends it; from then
    on it is pinned there, from every worker (the binding is in shared data)."""
    users = [f"user-{i}" for i in range(30)]
    landed = collections.defaultdict(list)
    clients = [harness.Client(sticky_envoy.port) for _ in range(4)]
    try:
        for round_ in range(3):
            for i, user in enumerate(users):
                client = clients[(i + round_) % len(clients)]
                response = client.post(CHAT_PATH, CHAT, {**JSON, "x-user": user})
                assert response.status == 200
                d = decision(response)
                if round_ == 0:
                    assert d is None  # placed by the cluster's own load balancing
                else:
                    assert (d["reason"], hash_fleet.by_address(d["address"]).name) == \
                        ("sticky", response.replica)
                landed[user].append(response.replica)
    finally:
        for client in clients:
            client.close()
    assert all(len(set(names)) == 1 for names in landed.values()), landed
    assert len({names[0] for names in landed.values()}) == 3  # round robin spread them
    counts = custom_stats(sticky_envoy)
    assert (counts["ailb.decisions.endpoint_hash.new"],
            counts["ailb.decisions.endpoint_hash.sticky"]) == (30, 60), counts


# --- 3 and 6a. active health checks; all unhealthy -> the service's own LB -------------------

@pytest.fixture(scope="module")
def health_fleet():
    with controlled_replicas() as replicas:
        yield replicas


@pytest.fixture(scope="module")
def health_envoy(module_envoys, health_fleet, production_wasm):
    envoy = start_policy_envoy(module_envoys, health_fleet.endpoints, production_wasm,
                               "round_robin", healthCheck={"interval": PROBE_MS, "timeout": 500})
    prime(envoy, health_fleet)
    return envoy


@pytest.fixture
def health_reset(health_envoy, health_fleet):
    """Every replica healthy again after the test (waits for the probes to say so)."""
    yield
    for replica in health_fleet:
        switch(replica)
    for replica in health_fleet:
        # healthy when no line, or the last state line says healthy
        assert wait_until(lambda replica=replica:
                          log_count(health_envoy, unhealthy_line(replica.address))
                          == log_count(health_envoy, healthy_line(replica.address)), 5)


def test_active_health_takes_a_killed_replica_out_and_back(health_envoy, health_fleet,
                                                           health_reset):
    victim = health_fleet[1]
    before = custom_stats(health_envoy)
    switch(victim, health=500, chat=503)               # killed: /health 500, chat 503
    probes_before = probes(victim)
    waited = wait_log(health_envoy, unhealthy_line(victim.address), 1 +
                      log_count(health_envoy, unhealthy_line(victim.address)))
    # 3 failed probes (unhealthyThreshold) 200 ms apart: not at once, well within 3 s
    assert 0.3 <= waited <= 3, waited
    assert probes(victim) - probes_before >= 3
    assert "3 failed health checks in a row" in health_envoy.log()

    health_fleet.reset()
    lines_before = len(health_envoy.wasm_log_lines())
    responses = send(health_envoy, 60, connections=4)
    assert {r.status for r in responses} == {200}, [r.status for r in responses]
    counts = health_fleet.counts()
    assert counts[victim.name] == 0, counts
    assert counts["r0"] + counts["r2"] == 60 and min(counts["r0"], counts["r2"]) >= 25, counts
    assert len(health_envoy.wasm_log_lines()) == lines_before  # nothing logged per request

    switch(victim)                                      # back: /health 200
    waited = wait_log(health_envoy, healthy_line(victim.address),
                      1 + log_count(health_envoy, healthy_line(victim.address)))
    assert 0.15 <= waited <= 3, waited                  # healthyThreshold: 2 good probes
    assert "health checks pass" in health_envoy.log()
    health_fleet.reset()
    responses = send(health_envoy, 60, connections=4)
    assert {r.status for r in responses} == {200}
    assert health_fleet.counts()[victim.name] >= 15, health_fleet.counts()

    # one line per state change, never one per request or probe
    lines = [line for line in health_envoy.wasm_log_lines() if victim.address in line]
    assert len(lines) == 2, lines
    after = custom_stats(health_envoy)
    for state in ("unhealthy", "healthy"):
        name = f"ailb.health.{label(victim.address)}.{state}"
        assert after.get(name, 0) - before.get(name, 0) == 1, (name, after)


def test_all_unhealthy_goes_to_the_service_load_balancing(health_envoy, health_fleet,
                                                          health_reset):
    before = custom_stats(health_envoy)
    marks = {r.address: log_count(health_envoy, unhealthy_line(r.address)) for r in health_fleet}
    for replica in health_fleet:
        switch(replica, health=500)                     # every probe fails; chat still answers
    for replica in health_fleet:
        wait_log(health_envoy, unhealthy_line(replica.address), marks[replica.address] + 1)
    health_fleet.reset()
    responses = send(health_envoy, 30, connections=3)
    assert {r.status for r in responses} == {200}
    assert all(decision(r) is None for r in responses)  # not pinned: Envoy's round robin chose
    counts = health_fleet.counts()
    assert all(n >= 5 for n in counts.values()), counts
    after = custom_stats(health_envoy)
    name = "ailb.fallbacks.no_usable_replica"
    assert after.get(name, 0) - before.get(name, 0) == 30, after
    # logged at most once per 30 s per VM, not per request
    assert log_count(health_envoy, "no usable replica; the service's load balancing") <= 3


# --- 6b. all unhealthy -> a local 503 -------------------------------------------------------

@pytest.fixture(scope="module")
def down_fleet():
    with controlled_replicas() as replicas:
        yield replicas


@pytest.fixture(scope="module")
def down_envoy(module_envoys, down_fleet, production_wasm):
    envoy = start_policy_envoy(module_envoys, down_fleet.endpoints, production_wasm,
                               "least_connections", allDownBehavior="503",
                               healthCheck={"interval": PROBE_MS, "timeout": 500})
    prime(envoy, down_fleet)
    return envoy


def test_all_unhealthy_with_all_down_503_answers_locally(down_envoy, down_fleet):
    try:
        for replica in down_fleet:
            switch(replica, health=500)
        for replica in down_fleet:
            wait_log(down_envoy, unhealthy_line(replica.address), 1)
        down_fleet.reset()
        responses = send(down_envoy, 10, connections=2)
        assert sum(down_fleet.counts().values()) == 0, down_fleet.counts()
        for response in responses:
            assert response.status == 503, (response.status, response.body)
            assert response.headers["content-type"] == "application/json"
            assert "x-replica" not in response.headers
            assert response.json() == {"error": {
                "message": "no replica of this service is available",
                "type": "service_unavailable", "param": None, "code": 503}}
        assert custom_stats(down_envoy)["ailb.fallbacks.no_usable_replica"] >= 10
    finally:
        for replica in down_fleet:
            switch(replica)
    for replica in down_fleet:
        wait_log(down_envoy, healthy_line(replica.address), 1)
    responses = send(down_envoy, 6, connections=2)
    assert {r.status for r in responses} == {200}
    assert {decision(r)["reason"] for r in responses} == {"least_request"}


# --- 4. passive ejection --------------------------------------------------------------------

EJECTION_MS = 2000


@pytest.fixture(scope="module")
def passive_fleet():
    with controlled_replicas() as replicas:
        yield replicas


@pytest.fixture(scope="module")
def passive_envoy(module_envoys, passive_fleet, production_wasm):
    envoy = start_policy_envoy(module_envoys, passive_fleet.endpoints, production_wasm,
                               "round_robin", healthCheck={
                                   "interval": PROBE_MS, "timeout": 500, "consecutiveErrors": 3,
                                   "baseEjectionTime": EJECTION_MS})
    prime(envoy, passive_fleet)
    return envoy


def test_passive_ejection_backs_off_then_rejoins(passive_envoy, passive_fleet):
    victim = passive_fleet[1]
    before = custom_stats(passive_envoy)
    ejected = f"{unhealthy_line(victim.address)}3 failed requests in a row; " \
              f"ejected for {EJECTION_MS} ms"
    switch(victim, health=200, chat=503)      # its /health says fine; real requests fail
    try:
        statuses = []
        with harness.Client(passive_envoy.port) as client:  # one worker: r1 every third request
            for i in range(30):
                response = client.post(f"/passive/{i}", CHAT, JSON)
                statuses.append((response.status, response.replica))
                if len([s for s in statuses if s[0] != 200]) == 3:
                    break
        ejected_at = time.monotonic()   # the third failure was observed before it was answered
        wait_log(passive_envoy, ejected, 1)
        assert [s for s in statuses if s[0] != 200] == [(503, victim.name)] * 3, statuses

        passive_fleet.reset()                 # during the back-off: nothing reaches it
        responses = []
        while time.monotonic() - ejected_at < EJECTION_MS / 1000 - 0.4:
            responses += send(passive_envoy, 10, connections=2)
        assert passive_fleet.counts()[victim.name] == 0, passive_fleet.counts()
        assert {r.status for r in responses} == {200}
        assert len(responses) >= 20
    finally:
        switch(victim)                        # recovered; it may come back after the back-off
    wait_log(passive_envoy, healthy_line(victim.address), 1, timeout=EJECTION_MS / 1000 + 3)
    back_after = time.monotonic() - ejected_at
    assert back_after >= EJECTION_MS / 1000 - 0.2, back_after
    passive_fleet.reset()
    responses = send(passive_envoy, 30, connections=1)
    assert {r.status for r in responses} == {200}
    assert passive_fleet.counts()[victim.name] == 10, passive_fleet.counts()
    after = custom_stats(passive_envoy)
    for state in ("unhealthy", "healthy"):
        name = f"ailb.health.{label(victim.address)}.{state}"
        assert after.get(name, 0) - before.get(name, 0) == 1, (name, after)


# --- 5. failover through Envoy's retries ----------------------------------------------------

@pytest.fixture(scope="module")
def failover_fleet():
    """r0 answers 503, r1 is stopped (connection refused), r2 is fine."""
    with controlled_replicas() as replicas:
        switch(replicas[0], chat=503)
        replicas[1].stop()
        yield replicas


@pytest.fixture(scope="module")
def failover_envoy(module_envoys, failover_fleet, production_wasm):
    # Health checks out of the way (probes would take the stopped one out, passive
    # ejection the failing one): here the retries must do the work.
    return start_policy_envoy(module_envoys, failover_fleet.endpoints, production_wasm,
                              "round_robin", retry=harness.retry_policy(2),
                              healthCheck={"enabled": False, "consecutiveErrors": 1000},
                              failoverEndpoints=2)


def test_failover_retries_the_next_address_of_the_override_list(failover_envoy,
                                                                failover_fleet):
    bad, stopped, good = failover_fleet
    retries_before = failover_envoy.stats(r"cluster\.backend\.upstream_rq_retry$").get(
        "cluster.backend.upstream_rq_retry", 0)
    responses = send(failover_envoy, 30, connections=2, path="/failover")
    primaries = collections.Counter()
    for _i, response in enumerate(responses):
        assert response.status == 200, (response.status, response.body)
        assert response.replica == good.name
        primaries[decision(response)["address"]] += 1
    assert primaries[bad.address] >= 5 and primaries[stopped.address] >= 5, primaries
    # The override list each attempt carried: primary first, then the fallbacks;
    # r0 was tried exactly when it came before r2 in the list (the stopped r1
    # cannot tell, but a request it headed still reached r2).
    good_seen = {r.path: r.headers[harness.OVERRIDE_HEADER] for r in list(good.requests)
                 if r.path.startswith("/failover/")}
    bad_seen = {r.path for r in list(bad.requests) if r.path.startswith("/failover/")}
    assert len(good_seen) == 30
    for i, response in enumerate(responses):
        path = f"/failover/{i}"
        order = good_seen[path].split(",")
        assert sorted(order) == sorted(failover_fleet.endpoints), order
        assert order[0] == decision(response)["address"]
        assert (path in bad_seen) == (order.index(bad.address) < order.index(good.address)), \
            (path, order)
    retries = failover_envoy.stats(r"cluster\.backend\.upstream_rq_retry$")[
        "cluster.backend.upstream_rq_retry"] - retries_before
    assert retries >= primaries[bad.address] + primaries[stopped.address], retries


# --- 7. the plugin's stats in Envoy ---------------------------------------------------------

def test_stats_show_decisions_endpoints_and_health(health_envoy, health_fleet, health_reset):
    victim = health_fleet[0]
    switch(victim, health=500)        # one transition each way, counted
    wait_log(health_envoy, unhealthy_line(victim.address),
             1 + log_count(health_envoy, unhealthy_line(victim.address)))
    switch(victim)
    wait_log(health_envoy, healthy_line(victim.address),
             1 + log_count(health_envoy, healthy_line(victim.address)))
    before = custom_stats(health_envoy)
    health_fleet.reset()
    assert {r.status for r in send(health_envoy, 30)} == {200}
    after = custom_stats(health_envoy)

    def delta(name):
        return after.get(name, 0) - before.get(name, 0)

    assert delta("ailb.decisions.round_robin.round_robin") == 30
    for replica in health_fleet:
        assert delta(f"ailb.endpoint.{label(replica.address)}.requests") == replica.count == 10
    # the health counters agree with the state-change log lines
    log = health_envoy.log()
    for replica in health_fleet:
        for state, line in (("unhealthy", unhealthy_line), ("healthy", healthy_line)):
            assert after.get(f"ailb.health.{label(replica.address)}.{state}", 0) == \
                log.count(line(replica.address)), (replica, state, after)
    assert after[f"ailb.health.{label(victim.address)}.unhealthy"] >= 1

    # /stats: wasmcustom.<name>; /stats/prometheus: with the stats tags of
    # observability/envoy-stats-tags.yaml, a few families with labels, no prefix
    _, text = health_envoy.admin("/stats?filter=wasmcustom")
    assert re.search(r"^wasmcustom\.ailb\.decisions\.round_robin\.round_robin: \d+$", text, re.M)
    assert "wasmcustom.ailb.decision_us: " in text  # histogram (filled at each stats flush)
    _, prom = health_envoy.admin("/stats/prometheus")
    values = harness.prometheus_samples(prom)
    assert "# TYPE ailb_decisions counter" in prom
    assert values[("ailb_decisions", (("ailb_policy", "round_robin"),
                                      ("ailb_reason", "round_robin")))] == \
        after["ailb.decisions.round_robin.round_robin"]
    for replica in health_fleet:
        assert values[("ailb_endpoint_requests", (("ailb_endpoint", label(replica.address)),))] \
            == after[f"ailb.endpoint.{label(replica.address)}.requests"]
    assert values[("ailb_health", (("ailb_endpoint", label(victim.address)),
                                   ("ailb_state", "unhealthy")))] >= 1
    assert values.get(("ailb_fallbacks", (("ailb_fallback", "no_usable_replica"),)), 0) == \
        after.get("ailb.fallbacks.no_usable_replica", 0)
    assert "# TYPE ailb_decision_us histogram" in prom
    assert "wasmcustom" not in prom
    assert not [name for name, _ in values if re.search(r"\d+_\d+_\d+_\d+", name)]  # in labels
