"""Shared-data changes under compare-and-swap follow one give-up rule: a
change that loses every race is counted and logged, and one that must land (a
release, a health transition) is applied again on the next tick. Native and in
wasm; the test host's SharedStore makes this VM lose the races, as a busy
worker next to it would."""

from tests.llm_traffic import embedded_inflight, finish, pinned, send, start
from tests.test_policy_classic import Fleet, health_host

TRIES = 16  # shared_record.TRIES


def gave_up(host):
    return host.get_counter_metric("ailb.shared.gave_up") or 0


def test_a_release_that_loses_every_race_is_written_on_the_next_tick(make_host):
    host = start(make_host, "global_least_request")
    cid, _ = send(host)
    address = pinned(host, cid)
    assert embedded_inflight(host) == {address: 1}
    host.shared.lose_cas_races("ailb:inflight:", TRIES)
    finish(host, cid)
    assert embedded_inflight(host) == {address: 1}  # not written yet...
    assert gave_up(host) == 1
    assert any("compare-and-swap attempts" in m for m in host.get_warn_logs())
    host.tick()
    assert embedded_inflight(host) == {}  # ...but not lost
    assert host.get_error_logs() == []


def test_a_pick_that_loses_every_race_fails_open_and_counts_nothing(make_host):
    host = start(make_host, "global_least_request")
    host.shared.lose_cas_races("ailb:inflight:", TRIES)
    cid, _ = send(host)
    assert pinned(host, cid) is None  # the service's own load balancing decides
    assert host.get_counter_metric("ailb.fallbacks.contention") == 1
    finish(host, cid)
    assert embedded_inflight(host) == {}
    cid, _ = send(host)  # the races are won again
    assert embedded_inflight(host) == {pinned(host, cid): 1}


def test_a_health_transition_that_loses_every_race_is_applied_on_the_next_tick(
        make_host, make_http_server):
    fleet = Fleet(make_http_server, 2)
    host = health_host(make_host, fleet, consecutiveErrors=1, baseEjectionTime=60000)
    bad = fleet.addresses[0]
    host.shared.lose_cas_races("ailb:health:", TRIES)
    while True:  # round robin: the next request or the one after goes to `bad`
        cid, _ = send(host)
        to_bad = pinned(host, cid) == bad
        host.call_on_response_headers(cid, [(":status", "503" if to_bad else "200")],
                                      end_of_stream=True)
        host.complete_http_context(cid)
        if to_bad:
            break
    assert gave_up(host) == 1
    assert not any("is unhealthy" in m for m in host.get_logs())
    host.tick()
    assert any(f"endpoint {bad} is unhealthy: 1 failed requests" in m for m in host.get_logs())
    picks = set()
    for _ in range(6):
        cid, _ = send(host)
        picks.add(pinned(host, cid))
        finish(host, cid)
    assert picks == {fleet.addresses[1]}


def test_on_higress_a_lost_passive_health_change_is_applied_on_the_next_tick(make_host):
    # Higress checks health itself: this gateway never probes, but its passive
    # changes that lost their races must still land.
    host = start(make_host, "round_robin", target="higress",
                 healthCheck={"consecutiveErrors": 1, "baseEjectionTime": 60000})
    host.shared.lose_cas_races("ailb:health:", TRIES)
    cid, _ = send(host)
    bad = pinned(host, cid)
    host.call_on_response_headers(cid, [(":status", "503")], end_of_stream=True)
    host.complete_http_context(cid)
    assert gave_up(host) == 1
    assert not any("is unhealthy" in m for m in host.get_logs())
    host.tick()
    assert any(f"endpoint {bad} is unhealthy" in m for m in host.get_logs()), host.logs_text()
