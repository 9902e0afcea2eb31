"""A stream paused on a callout made on its behalf is resumed exactly once,
whatever fails: the answer's handler raising, the timeout's handler raising;
and the rest of the tick still runs. Native and in wasm, against real Redis.

The fault: a Higress whose proxy_set_upstream_override_host answers
Unimplemented, so applying a decision raises inside the Redis reply handler
(or the timeout handler), where no stream callback is there to catch it.
"""

import time

from ai_load_balancer import redis_state
from proxywasm import PAUSE

from tests.llm_traffic import clear_redis, finish, redis_inflight, send, start

BROKEN_PIN = "proxy_set_upstream_override_host"


def raised_in(host, where):
    return [m for m in host.get_error_logs() if f"plugin error in {where}" in m]


def test_a_redis_reply_handler_that_raises_resumes_the_stream_and_leaks_nothing(
        make_host, redis_server):
    clear_redis(redis_server)
    host = start(make_host, "global_least_request", target="higress",
                 redis_server=redis_server)
    host.unimplemented.add(BROKEN_PIN)
    for attempt in (1, 2):
        cid, action = send(host)
        assert action == PAUSE
        host.run_callouts()  # the pick arrives; applying it raises
        assert host.is_request_resumed(cid), host.logs_text()
        assert len(host.get_continue_records(cid)) == 1
        assert len(raised_in(host, "redis call response")) == attempt
        finish(host, cid)
        host.run_callouts()  # the release of the count Redis made
        assert redis_inflight(redis_server) == {}


def test_a_timeout_handler_that_raises_resumes_the_stream_and_the_tick_goes_on(
        make_host, redis_server):
    clear_redis(redis_server)
    host = start(make_host, "global_least_request", target="higress",
                 redis_server=redis_server, timeout=200)
    cid, _ = send(host)  # one good request: this VM now renews its lease in Redis
    host.run_callouts()
    finish(host, cid)
    host.run_callouts()
    host.unimplemented.add(BROKEN_PIN)
    cid, action = send(host)
    assert action == PAUSE
    now = time.time_ns()
    host.now_ns = lambda: now + 300_000_000  # 300 ms later, the pick still unanswered
    host.tick()
    assert host.is_request_resumed(cid), host.logs_text()
    assert len(raised_in(host, "callout timeout")) == 1
    renewals = [c for c in host.pending
                if c.kind == "redis" and redis_state.RENEW_SCRIPT.encode() in c.query]
    assert renewals, "the tick stopped at the timeout"
    host.run_callouts()  # the late pick, its release (sent at the timeout), the renewal
    assert len(host.get_continue_records(cid)) == 1  # resumed once, not again by the reply
    finish(host, cid)
    host.run_callouts()
    assert redis_inflight(redis_server) == {}


def test_a_release_the_host_refuses_is_sent_again_on_the_next_tick(make_host, redis_server):
    clear_redis(redis_server)
    host = start(make_host, "global_least_request", target="higress",
                 redis_server=redis_server)
    cid, _ = send(host)
    host.run_callouts()
    assert sum(redis_inflight(redis_server).values()) == 1
    host.unimplemented.add("proxy_redis_call")  # the host refuses Redis calls for a while
    finish(host, cid)
    host.run_callouts()
    assert sum(redis_inflight(redis_server).values()) == 1  # not sent...
    host.unimplemented.discard("proxy_redis_call")
    host.tick()
    host.run_callouts()
    assert redis_inflight(redis_server) == {}  # ...but not lost
