"""prefix_cache: a prompt goes where its prefix is cached, without hot-spotting."""

import json

import pytest

from ai_load_balancer import llm_request, prefix_hash
from proxywasm import resp
from proxywasm.context import CONTINUE, PAUSE
from tests.llm_traffic import (CLUSTER, REPLICAS, chat_body, clear_redis, decision,
                               embedded_inflight, finish, pinned, redis_calls, redis_inflight,
                               send, start)

SYSTEM = "You are a careful assistant. Answer in English. " * 8   # ~390 bytes, 6 blocks
DOCUMENT = "".join(f"Clause {i}: the tenant pays rent on day {i % 28 + 1}. " for i in range(120))


def route(host, body):
    """Sends one whole request and ends it; returns its decision."""
    cid, action = send(host, body)
    if action == PAUSE:  # Redis: the pick is one round trip away
        host.run_callouts()
        assert host.is_request_resumed(cid)
    d = decision(host, cid)
    assert d["address"] == pinned(host, cid)
    finish(host, cid)
    host.run_callouts()  # Redis: the release, sent as the stream ended
    return d


def conversation(turns):
    """The request bodies of one growing conversation."""
    history, bodies = [SYSTEM], []
    for turn in range(turns):
        history.append(f"Question {turn}: tell me about topic {turn * 7919}.")
        bodies.append(chat_body(*history))
        history.append(f"Answer {turn}: " + "details " * 40)
    return bodies


def test_multi_turn_conversation_sticks_to_one_replica(make_host):
    host = start(make_host, "prefix_cache")
    others = [chat_body(f"Other system prompt {i}. " * 20, "hi") for i in range(12)]
    replicas = []
    for turn, body in enumerate(conversation(6)):
        replicas.append(route(host, body))
        route(host, others[2 * turn]), route(host, others[2 * turn + 1])
    assert len({d["address"] for d in replicas}) == 1
    assert all(d["reason"] == "prefix_match" for d in replicas[1:])
    assert [int(d["matched_blocks"]) for d in replicas] == sorted(
        int(d["matched_blocks"]) for d in replicas)


def test_turn_order_matters(make_host):
    host = start(make_host, "prefix_cache")
    a, b = "Alpha turn. " * 30, "Bravo turn. " * 30
    route(host, chat_body(a, b))
    swapped = route(host, chat_body(b, a))
    assert swapped["reason"] == "least_load" and swapped["matched_blocks"] == "0"


def test_shared_document_with_different_questions_matches(make_host):
    host = start(make_host, "prefix_cache")
    first = route(host, chat_body(DOCUMENT, "Which day is rent due in clause 3?"))
    second = route(host, chat_body(DOCUMENT, "Who pays the rent?"))
    assert second["address"] == first["address"] and second["reason"] == "prefix_match"
    assert int(second["matched_blocks"]) >= len(DOCUMENT) // 64 - 1


def test_hot_prefix_is_spread_by_bounded_load(make_host):
    host = start(make_host, "prefix_cache", maxLoadGap=2)
    held = [send(host, chat_body(SYSTEM, f"request {i}")) for i in range(24)]
    per_replica = {}
    for cid, action in held:
        assert action == CONTINUE
        per_replica[pinned(host, cid)] = per_replica.get(pinned(host, cid), 0) + 1
    assert sorted(per_replica) == REPLICAS  # all replicas serve the hot prefix
    assert max(per_replica.values()) - min(per_replica.values()) <= 2 + 1


def test_bounded_load_can_be_turned_tight(make_host):
    host = start(make_host, "prefix_cache", maxLoadGap=0)
    held = [send(host, chat_body(SYSTEM, f"q{i}"))[0] for i in range(8)]
    counts = [sum(pinned(host, c) == r for c in held) for r in REPLICAS]
    assert counts == [2, 2, 2, 2]


def test_unparsable_and_oversized_bodies_still_get_routed(make_host):
    host = start(make_host, "prefix_cache", maxBodyBytes=2048)
    assert route(host, b"definitely not json")["reason"] == "least_load"
    big = route(host, chat_body("x" * 4096))
    assert big["reason"] == "least_load"
    assert any("over maxBodyBytes" in m for m in host.get_logs())


def test_request_without_body_is_least_request(make_host):
    host = start(make_host, "prefix_cache")
    cid, action = send(host)
    assert action == CONTINUE and pinned(host, cid) in REPLICAS


def test_embedded_index_stays_within_its_capacity(make_host):
    host = start(make_host, "prefix_cache", indexCapacity=16)
    for i in range(40):
        route(host, chat_body(f"Distinct prompt number {i}. " * 12))
    slots = [k for k in host.shared.data() if (k.decode() if isinstance(k, bytes) else k)
             .startswith("ailb:pc:")]
    assert 0 < len(slots) <= 16


def test_a_slot_collision_costs_one_block_not_the_match(make_host):
    host = start(make_host, "prefix_cache")
    first = chat_body(DOCUMENT, "q1")
    second = chat_body(DOCUMENT, "q1", "An answer. " * 10, "q2")
    request = llm_request.parse(second)
    hashes = prefix_hash.block_hashes(request.cache_namespace, request.prompt)
    held = route(host, first)
    # A later block lands in the slot of the block the next lookup reads first.
    taken = hashes[(len(hashes) + 1) // 2 - 1]
    slot = next(k for k, v in host.shared.data().items() if v.startswith(taken.encode()))
    host.shared.set("", slot, b"%s 10.9.9.9:80 %d 0" % (b"0" * len(taken), 2 ** 40), 0)
    again = route(host, second)
    assert (again["address"], again["reason"]) == (held["address"], "prefix_match")
    assert int(again["matched_blocks"]) >= len(prefix_hash.block_hashes(
        request.cache_namespace, llm_request.parse(first).prompt)) - 1


def blocks_of(body):
    return len(llm_request.parse(body).prompt) // 64


def fill_replica(host, address, blocks, salt):
    """Routes distinct prompts until `address` was sent `blocks` prompt blocks."""
    sent = 0
    for i in range(60):
        body = chat_body(f"Unrelated {salt} {i}. " * 150, "hi")
        if route(host, body)["address"] == address:
            sent += blocks_of(body)
            if sent >= blocks:
                return
    raise AssertionError(f"{address} got only {sent} blocks")


@pytest.mark.parametrize("kv_tokens, forgotten", [(1200, True), (-1, False)])
@pytest.mark.parametrize("state", ["embedded", "redis"])
def test_the_index_forgets_what_the_replica_evicted(make_host, redis_server, state, kv_tokens,
                                                    forgotten):
    # 1200 tokens = 75 blocks of 64 bytes: once the replica computed twice that
    # (replica_capacity.MARGIN) since, the index takes the document as evicted.
    host = start_in(state, make_host, redis_server, kvCacheTokens=kv_tokens)
    first = route(host, chat_body(DOCUMENT, "q1"))
    assert route(host, chat_body(DOCUMENT, "q2"))["reason"] == "prefix_match"
    fill_replica(host, first["address"], 150, "a")
    again = route(host, chat_body(DOCUMENT, "q3"))
    if forgotten:
        assert (again["reason"], again["matched_blocks"]) == ("least_load", "0")
    else:
        assert (again["address"], again["reason"]) == (first["address"], "prefix_match")


def test_higress_host_metrics_give_each_replica_its_cache_size(make_host):
    # Higress hands over each host's metrics: the cache size is read from their
    # vllm:cache_config_info, no scrape of our own.
    host = start(make_host, "prefix_cache", target="higress")
    host.set_upstream_hosts([(r, {"health_status": "Healthy", "metrics": (
        "vllm:num_requests_waiting 0\n"
        'vllm:cache_config_info{block_size="16",num_gpu_blocks="75"} 1\n')}) for r in REPLICAS])
    # 75 x 16 tokens x 4 bytes / 64 bytes per block = 75 blocks, forgotten after 2 x 75
    first = route(host, chat_body(DOCUMENT, "q1"))
    assert route(host, chat_body(DOCUMENT, "q2"))["reason"] == "prefix_match"
    fill_replica(host, first["address"], 150, "h")
    again = route(host, chat_body(DOCUMENT, "q3"))
    assert (again["reason"], again["matched_blocks"]) == ("least_load", "0")


def test_a_prefix_in_use_is_not_forgotten(make_host):
    host = start(make_host, "prefix_cache", kvCacheTokens=1200)  # forgotten after 150 blocks
    first = route(host, chat_body(DOCUMENT, "q0"))
    for turn in range(1, 5):  # 4 x 60 blocks sent to its replica, more than it holds
        fill_replica(host, first["address"], 60, turn)
        again = route(host, chat_body(DOCUMENT, f"q{turn}"))
        assert (again["address"], again["reason"]) == (first["address"], "prefix_match")


def start_in(state, make_host, redis_server, **fields):
    """prefix_cache with its state embedded (stock Envoy) or in Redis (Higress)."""
    if state == "redis":
        clear_redis(redis_server)
        return start(make_host, "prefix_cache", target="higress", redis_server=redis_server,
                     **fields)
    return start(make_host, "prefix_cache", **fields)


def send_decided(host, body):
    """Starts a request and lets it be decided (Redis: its reply), not ended."""
    cid, action = send(host, body)
    if action == PAUSE:
        host.run_callouts()
    return cid, decision(host, cid)


@pytest.mark.parametrize("state", ["embedded", "redis"])
def test_a_prefix_on_two_replicas_is_matched_on_both(make_host, redis_server, state):
    # decodeCost 1000: a request in flight outweighs any prefix, so each request
    # goes to an idle replica, a holder of its prefix if one is idle.
    host = start_in(state, make_host, redis_server, decodeCost=1000)
    a = route(host, chat_body(DOCUMENT, "q1"))["address"]
    on_a, first = send_decided(host, chat_body(DOCUMENT, "q2"))
    assert first["address"] == a
    on_b, b = send_decided(host, chat_body(DOCUMENT, "q3"))  # a is busy: computed on another
    assert b["address"] != a and b["reason"] == "least_load"
    finish(host, on_a)
    host.run_callouts()
    again = route(host, chat_body(DOCUMENT, "q4"))  # b is busy, a still holds the document
    assert (again["address"], again["reason"]) == (a, "prefix_match")
    finish(host, on_b)


def test_replica_that_left_is_not_chosen(make_host):
    host = start(make_host, "prefix_cache", target="higress")
    first = route(host, chat_body(DOCUMENT, "q1"))
    host.set_upstream_hosts([(r, {"health_status": "Healthy"}) for r in REPLICAS
                             if r != first["address"]])
    again = route(host, chat_body(DOCUMENT, "q2"))
    assert again["address"] != first["address"] and again["reason"] == "least_load"


# --- Redis (higress build): the index is shared by every gateway --------------------------

def test_conversation_sticks_across_gateways_through_redis(make_host, redis_server):
    clear_redis(redis_server)
    gateways = [start(make_host, "prefix_cache", target="higress", redis_server=redis_server,
                      redisKeyTTL=120) for _ in range(3)]
    decisions = [route(gateways[turn % 3], body) for turn, body in enumerate(conversation(6))]
    assert len({d["address"] for d in decisions}) == 1
    assert all(d["state"] == "redis" for d in decisions)
    assert all(d["reason"] == "prefix_match" for d in decisions[1:])
    keys = redis_keys(redis_server, f"ailb:{{{CLUSTER}}}:pc:*")
    ttl = int(redis_server.command("TTL", keys[0]).strip(b":\r\n"))
    assert 100 < ttl <= 120
    for host in gateways:
        host.run_callouts()  # the releases each gateway sent as its streams ended
    assert redis_inflight(redis_server) == {}


def test_redis_records_only_the_blocks_a_replica_does_not_hold_yet(make_host, redis_server):
    clear_redis(redis_server)
    host = start(make_host, "prefix_cache", target="higress", redis_server=redis_server,
                 redisKeyTTL=120)
    bodies = conversation(3)
    blocks = [len(prefix_hash.block_hashes(llm_request.parse(b).cache_namespace,
                                           llm_request.parse(b).prompt)) for b in bodies]
    written = []
    for turn, body in enumerate(bodies):
        if turn == 2:  # the chain's first block is aging: the whole chain is rewritten
            for key in redis_keys(redis_server, f"ailb:{{{CLUSTER}}}:pc:*"):
                redis_server.command("EXPIRE", key, 30)
        redis_server.command("CONFIG", "RESETSTAT")
        route(host, body)
        host.run_callouts()
        written.append(redis_calls(redis_server, "set"))
    assert written == [blocks[0], blocks[1] - blocks[0], blocks[2]]


def redis_keys(redis_server, pattern):
    return resp.reply(redis_server.command("KEYS", pattern))


@pytest.mark.parametrize("policy", ["prefix_cache", "global_least_request"])
def test_debug_header_is_off_by_default(make_host, policy):
    host = make_host()
    assert host.start_plugin(json.dumps({"lb_policy": policy, "lb_config": {
        "endpoints": REPLICAS}}).encode())
    cid, _ = send(host, chat_body("hello"))
    assert decision(host, cid) is None and pinned(host, cid) in REPLICAS


def test_prompt_work_counts_until_the_first_answer_byte(make_host):
    host = start(make_host, "prefix_cache")
    body = chat_body(DOCUMENT, "q1")
    cid, _ = send(host, body)
    address = pinned(host, cid)
    blocks = len(llm_request.parse(body).prompt) // 64
    assert embedded_inflight(host, "work") == {address: blocks}
    host.call_on_response_headers(cid, [(":status", "200")], end_of_stream=False)
    host.call_on_response_body(cid, b"data: {}\n\n", end_of_stream=False)
    assert embedded_inflight(host, "work") == {}  # computed: it no longer waits there
    assert embedded_inflight(host) == {address: 1}  # ...but it is still in flight
    host.call_on_response_body(cid, b"data: [DONE]\n\n", end_of_stream=True)
    host.complete_http_context(cid)
    assert embedded_inflight(host) == {} and embedded_inflight(host, "work") == {}


def test_prompt_work_counts_until_the_first_answer_byte_in_redis(make_host, redis_server):
    clear_redis(redis_server)
    host = start(make_host, "prefix_cache", target="higress", redis_server=redis_server)
    body = chat_body(DOCUMENT, "q1")
    cid, _ = send(host, body)
    host.run_callouts()
    address = pinned(host, cid)
    work_key = f"ailb:{{{CLUSTER}}}:w:*"
    blocks = len(llm_request.parse(body).prompt) // 64
    assert redis_work(redis_server, work_key) == {address: blocks}
    host.call_on_response_headers(cid, [(":status", "200")], end_of_stream=False)
    host.call_on_response_body(cid, b"data: {}\n\n", end_of_stream=False)
    host.run_callouts()
    assert redis_work(redis_server, work_key) == {}
    assert redis_inflight(redis_server) == {address: 1}
    finish(host, cid)
    host.run_callouts()
    assert redis_inflight(redis_server) == {}


def redis_work(redis_server, pattern):
    work = {}
    for key in redis_keys(redis_server, pattern):
        pairs = resp.reply(redis_server.command("HGETALL", key))
        for address, n in zip(pairs[::2], pairs[1::2]):
            work[address.decode()] = work.get(address.decode(), 0) + int(n)
    return work


def test_a_profile_of_its_own_decides_on_embedded_state_even_with_redis(make_host, redis_server):
    clear_redis(redis_server)
    host = start(make_host, "prefix_cache", target="higress", redis_server=redis_server,
                 scorers=[{"name": "prefill_cost"}, {"name": "least_request", "weight": 0.5}])
    assert "Redis runs the preset prefix_cache only" in host.logs_text()
    first = route(host, chat_body(DOCUMENT, "q1"))
    again = route(host, chat_body(DOCUMENT, "q2"))
    assert first["state"] == again["state"] == "embedded"
    assert (again["address"], again["reason"]) == (first["address"], "prefix_match")
    assert redis_keys(redis_server, f"ailb:{{{CLUSTER}}}:*") == []
