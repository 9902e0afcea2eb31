"""Pure parts of the load balancer: config, request extraction, prefix hashing,
pick rules, and the Redis script held to the same answers as the Python rules."""

import json
import math
import random
from types import SimpleNamespace

import pytest

from ai_load_balancer import config, llm_request, picking, pipeline, prefix_hash, redis_state
from ai_load_balancer.pipeline import Inputs
from ai_load_balancer.policies import prefix_cache
from proxywasm import resp
from tests.llm_traffic import policy_for


# --- configuration ---------------------------------------------------------------

def test_higress_example_config_is_accepted():
    cfg, warnings = config.parse_doc({
        "lb_policy": "prefix_cache", "lb_type": "endpoint",
        "lb_config": {"serviceFQDN": "redis.static", "servicePort": 6379, "username": "default",
                      "password": "123456", "timeout": 3000, "database": 0, "redisKeyTTL": 1800,
                      "maxRequestCount": 64, "cleanInterval": 60000, "enableDetailLog": True}})
    assert warnings == ["lb_config.cleanInterval: not used by lb_policy prefix_cache (it is read "
                        "by global_least_request), ignored"]
    assert cfg.policy == "prefix_cache"
    assert cfg.redis == config.RedisConfig("outbound|6379||redis.static", "default", "123456",
                                           3000, 0)
    assert (cfg.key_ttl_s, cfg.max_request_count, cfg.detail_log) == (1800, 64, True)


def test_config_without_redis_is_embedded():
    cfg, _ = config.parse_doc({"lb_policy": "global_least_request",
                               "lb_config": {"endpoints": ["10.0.0.2:80", "10.0.0.1:80"]}})
    assert cfg.redis is None
    assert cfg.endpoints == ("10.0.0.1:80", "10.0.0.2:80")


@pytest.mark.parametrize("doc, field", [
    ({"lb_policy": "nope"}, "lb_policy"),
    ({"lb_policy": "prefix_cache", "lb_type": "cluster"}, "lb_policy"),
    ({"lb_policy": "prefix_cache", "lb_type": "pods"}, "lb_type"),
    ({"lb_config": {"serviceFQDN": "r", "servicePort": 6379}}, "lb_policy"),
    ({"lb_policy": "prefix_cache", "lb_config": {"serviceFQDN": "r"}}, "lb_config.servicePort"),
    ({"lb_policy": "prefix_cache", "lb_config": {"servicePort": "63x9", "serviceFQDN": "r"}},
     "lb_config.servicePort"),
    ({"lb_policy": "prefix_cache", "lb_config": {"timeout": -1}}, None),
    ({"lb_policy": "prefix_cache", "lb_config": {"redisKeyTTL": 0}}, "lb_config.redisKeyTTL"),
    ({"lb_policy": "prefix_cache", "lb_config": {"endpoints": ["10.0.0.1"]}},
     "lb_config.endpoints"),
    ({"lb_policy": "prefix_cache", "lb_config": {"debugHeader": "yes"}}, "lb_config.debugHeader"),
    ({"lb_policy": "prefix_cache", "lb_config": []}, "lb_config"),
])
def test_invalid_config_names_the_field(doc, field):
    if field is None:  # timeout is only read with serviceFQDN: no error without it
        config.parse_doc(doc)
        return
    with pytest.raises(config.ConfigError, match=f"^{field}"):
        config.parse_doc(doc)


def test_unknown_field_is_a_warning_not_an_error():
    _, warnings = config.parse_doc({"lb_policy": "prefix_cache",
                                    "lb_config": {"redisKeyTtl": 5, "hashKey": {"header": "a"}}})
    assert warnings == ["lb_config.hashKey: not used by lb_policy prefix_cache (it is read by "
                        "consistent_hash), ignored",
                        "lb_config.redisKeyTtl: unknown field, ignored"]


# --- request extraction ------------------------------------------------------------

def chat(*turns, model="m", **extra):
    roles = ["system", "user", "assistant"]
    return json.dumps({"model": model, "messages": [
        {"role": roles[min(i, 1) if i < 2 else 1 + i % 2], "content": t}
        for i, t in enumerate(turns)], **extra}).encode()


def test_next_turn_extends_the_previous_prompt():
    first = llm_request.parse(chat("sys", "question"))
    second = llm_request.parse(chat("sys", "question", "answer", "follow-up"))
    assert second.prompt.startswith(first.prompt)


def test_content_parts_and_string_content_agree():
    parts = json.dumps({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "hello "}, {"type": "text", "text": "world"}]}]}).encode()
    plain = json.dumps({"model": "m", "messages": [
        {"role": "user", "content": "hello world"}]}).encode()
    assert llm_request.parse(parts).prompt == llm_request.parse(plain).prompt


def test_images_are_part_of_the_prompt():
    def with_image(url):
        return json.dumps({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "what?"}]}]})
    assert (llm_request.parse(with_image("a.png")).prompt
            != llm_request.parse(with_image("b.png")).prompt)


@pytest.mark.parametrize("prompt, expected", [
    ("once upon", b"once upon"), (["first", "second"], b"first"), ([1, 2, 3], b"1 2 3"),
    ([[4, 5], [6]], b"4 5")])
def test_completion_prompts(prompt, expected):
    assert llm_request.parse(json.dumps({"model": "m", "prompt": prompt})).prompt == expected


def test_model_and_salt_namespace_the_cache():
    a = llm_request.parse(chat("x", model="a"))
    b = llm_request.parse(chat("x", model="b"))
    salted = llm_request.parse(chat("x", model="a", cache_salt="tenant-1"))
    assert len({a.cache_namespace, b.cache_namespace, salted.cache_namespace}) == 3


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"model": "m"}', b"[" * 100000,
                                  b'{"messages": 5}'])
def test_non_llm_bodies_are_refused_with_a_reason(body):
    with pytest.raises(llm_request.NotAnLLMRequest):
        llm_request.parse(body)


# --- prefix hashing ------------------------------------------------------------------

def test_hashes_are_chained_and_order_sensitive():
    a, b = b"A" * 64, b"B" * 64
    ab = prefix_hash.block_hashes(b"m", a + b)
    ba = prefix_hash.block_hashes(b"m", b + a)
    assert len(ab) == 2 and ab[0] != ba[0] and ab[1] != ba[1]
    assert prefix_hash.block_hashes(b"m", a + b + b"C" * 64)[:2] == ab


def test_shared_document_matches_until_the_question():
    document = ("Annual report, page %d. " * 400 % tuple(range(400))).encode()
    one = prefix_hash.block_hashes(b"m", document + b"What was the revenue?")
    two = prefix_hash.block_hashes(b"m", document + b"Who is the CEO?")
    shared = len(document) // 64
    assert one[:shared] == two[:shared][:len(one[:shared])]
    assert len(one) == len(two) == min(256, (len(document) + 21) // 64)


def test_partial_block_namespace_and_cap():
    assert prefix_hash.block_hashes(b"m", b"x" * 63) == []
    assert prefix_hash.block_hashes(b"m", b"x" * 64) != prefix_hash.block_hashes(b"n", b"x" * 64)
    assert len(prefix_hash.block_hashes(b"m", b"x" * 64 * 1000, max_blocks=256)) == 256


# --- pick rules -----------------------------------------------------------------------

A, B, C = "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"


def test_least_request_takes_the_idlest_and_rotates_ties():
    policy = policy_for("global_least_request")
    pick = policy.choose(Inputs((A, B, C), 0, inflight={A: 3, B: 1, C: 2}))
    assert (pick.address, pick.inflight, pick.reason) == (B, 1, "least_request")
    assert {policy.choose(Inputs((A, B, C), r)).address for r in range(3)} == {A, B, C}


def test_under_limit():
    policy = policy_for("global_least_request", maxRequestCount=2)
    assert policy.choose(Inputs((A, B), 0, inflight={A: 2, B: 1})).address == B
    with pytest.raises(picking.LimitReached):
        policy.choose(Inputs((A, B), 0, inflight={A: 2, B: 2}))


def cost_pick(inflight, matched, prompt_blocks=100, work=None, decode_cost=4, hashed=100,
              **fields):
    policy = policy_for("prefix_cache", decodeCost=decode_cost, **fields)
    return policy.choose(Inputs((A, B, C), 0, prompt_blocks=prompt_blocks,
                                hashes=tuple(range(hashed)), matched=matched,
                                inflight=inflight, work=work or {}))


def test_the_cost_model_keeps_a_request_with_its_prefix_until_the_queue_costs_more():
    pick = cost_pick({A: 2, B: 0, C: 0}, {A: 90, B: 30})
    assert (pick.address, pick.reason, pick.matched_blocks, pick.work) == (A, "prefix_match",
                                                                           90, 10)
    # A holds 90 of 100 blocks, but 95 blocks of other prompts wait there: B is
    # cheaper (by this prefill alone: moveCost 0).
    pick = cost_pick({A: 2, B: 0, C: 0}, {A: 90}, work={A: 95}, moveCost=0)
    assert (pick.address, pick.reason, pick.work) == (B, "least_load", 100)


def test_a_second_turn_that_doubles_the_prompt_stays_where_the_first_is():
    # The old minMatchRatio 0.5 dropped this match (50 of 101 blocks): a full recompute.
    assert cost_pick({A: 1, B: 0, C: 0}, {A: 50}, prompt_blocks=101).address == A


def test_a_short_shared_prefix_does_not_pull_new_prompts_onto_a_busy_replica():
    # Every new conversation shares a 4-block system prompt, last served by A.
    pick = cost_pick({A: 3, B: 0, C: 1}, {A: 4}, work={A: 200, C: 100})
    assert pick.address == B


# A holds the conversation (140 of 143 blocks); a new user's 125-block first
# turn waits there, and A has one more request in flight than B.
HOME_TURN = dict(inflight={A: 2, B: 1, C: 1}, matched={A: 140}, prompt_blocks=143,
                 work={A: 125}, decode_cost=16)


def test_move_cost_keeps_a_conversation_home_when_a_new_prompt_queues_there():
    assert cost_pick(**HOME_TURN, moveCost=0).address == B  # by this prefill alone, it moves
    assert cost_pick(**HOME_TURN, moveCost=1).address == A  # moving duplicates 140 blocks
    # A short shared system prompt is worth little to duplicate: a new prompt still
    # goes where the queue is short.
    assert cost_pick({A: 3, B: 0, C: 1}, {A: 4}, work={A: 200, C: 100}, moveCost=1).address == B


def test_unset_move_cost_keeps_a_conversation_home_on_a_small_fleet_only():
    # HOME_TURN: on 3 replicas moveCost is 1/4, and it stays home;
    # on 16, 1/225: the conversation goes to an idle replica.
    assert cost_pick(**HOME_TURN).address == A
    fleet = tuple(sorted(f"10.1.0.{i}:80" for i in range(16)))
    home_address, policy = fleet[0], policy_for("prefix_cache", decodeCost=16)
    pick = policy.choose(Inputs(fleet, 0, prompt_blocks=143, hashes=tuple(range(143)),
                                matched={home_address: 140},
                                inflight={a: 1 for a in fleet} | {home_address: 2},
                                work={home_address: 125}))
    assert pick.address != home_address and pick.reason == "least_load"


def test_the_optional_filters_still_apply():
    pick = cost_pick({A: 9, B: 5, C: 0}, {A: 90, B: 3}, maxLoadGap=4)
    assert (pick.address, pick.reason) == (C, "bounded_load")
    pick = cost_pick({A: 0, B: 0, C: 0}, {A: 2}, hashed=10, minMatchRatio=0.5, decode_cost=0)
    assert pick.matched_blocks == 0 and pick.reason == "least_load"


def test_a_profile_from_lb_config_replaces_the_preset():
    # prefix_cache scored by in-flight requests alone: the prefix no longer pulls.
    pick = cost_pick({A: 2, B: 0, C: 1}, {A: 90}, scorers=[{"name": "least_request"}])
    assert (pick.address, pick.reason) == (B, "least_load")
    assert policy_for("prefix_cache", scorers=[{"name": "least_request"}]).custom
    with pytest.raises(config.ConfigError, match="lb_config.filters: unknown filter 'nope'"):
        policy_for("prefix_cache", filters=["nope"])


@pytest.mark.parametrize("policy, fields, refused", [
    ("prefix_cache", {"scorers": [{"name": "queue"}]}, "queue reads metrics"),
    ("global_least_request", {"filters": ["gie_tree"]}, "gie_tree reads metrics"),
    ("round_robin", {"picker": "hash_ring"}, "hash_ring reads key"),
])
def test_a_profile_part_the_policy_cannot_feed_is_refused(policy, fields, refused):
    with pytest.raises(config.ConfigError, match=refused):
        policy_for(policy, **fields)


def test_a_filter_that_leaves_no_candidate_is_reported():
    pipeline.filter("test_none_pass")(lambda inputs, policy, addresses: [])
    try:
        policy = policy_for("global_least_request", filters=["test_none_pass"])
        with pytest.raises(pipeline.NoCandidate, match="test_none_pass"):
            policy.choose(Inputs((A, B), 0))
    finally:
        del pipeline.FILTERS["test_none_pass"]


def owners_to_matches(owners):
    """What the Redis script derives from the holders of each block: a replica
    that served block i holds blocks 0..i; the walk stops at the first block
    nobody holds (None)."""
    matched = {}
    for i, holders in enumerate(owners):
        if holders is None:
            break
        for address in holders:
            matched[address] = i + 1
    return matched


# --- the Redis script applies the same rules --------------------------------------------

def python_pick(candidates, inflight, work, owners, costed, gap, limit, rotation, min_ratio,
                hashes, prompt_blocks, decode_cost, move_cost=None):
    if not costed:
        policy = policy_for("global_least_request", maxRequestCount=limit)
    else:
        policy = policy_for("prefix_cache", maxRequestCount=limit, maxLoadGap=gap,
                            minMatchRatio=min_ratio, decodeCost=decode_cost,
                            moveCost=move_cost)
    try:
        pick = policy.choose(Inputs(tuple(candidates), rotation, prompt_blocks=prompt_blocks,
                                    hashes=tuple(hashes), matched=owners_to_matches(owners),
                                    inflight=inflight, work=work))
    except picking.LimitReached:
        return "limit"
    return picking.Pick(pick.address, pick.inflight, pick.matched_blocks, pick.reason)


def test_redis_script_and_python_pick_alike(redis_server):
    rng = random.Random(7)
    cluster = "outbound|80||equivalence"
    prefix = redis_state.key_prefix(cluster)
    for case in range(150):
        redis_server.command("EVAL", "for _, k in ipairs(redis.call('KEYS', ARGV[1])) do "
                             "redis.call('DEL', k) end", "0", prefix + "*")
        candidates = sorted(f"10.0.{case % 7}.{i}:8000" for i in range(rng.randint(1, 6)))
        inflight, work = {}, {}
        for gw in ("gw-a", "gw-b"):  # counts and work from two other gateways add up
            for address in candidates:
                count, blocks = rng.randint(0, 4), rng.choice([0, 3, 40])
                inflight[address] = inflight.get(address, 0) + count
                work[address] = work.get(address, 0) + blocks
                redis_server.command("HSET", f"{prefix}:n:{gw}", address, count)
                redis_server.command("HSET", f"{prefix}:w:{gw}", address, blocks)
            redis_server.command("ZADD", f"{prefix}:gws", 9e15, gw)
        hashes = [f"{case:04x}{i:012x}" for i in range(rng.randint(0, 8))]
        # Each replica's clock and cache size: an entry older than the size is evicted.
        clocks = {a: rng.choice([0, 50, 500]) for a in candidates}
        sizes = [rng.choice([0, 0, 100, 400]) for _ in candidates]
        for address, clock in clocks.items():
            redis_server.command("HSET", f"{prefix}:clk", address, clock)
        owners = []  # per block: its holders that count (an evicted one does not)
        for h in hashes[:rng.randint(0, len(hashes))]:
            pool = candidates + ["10.9.9.9:1"]
            holders = rng.sample(pool, rng.randint(1, min(3, len(pool))))
            stamps = [rng.choice([0, 40, 450]) for _ in holders]
            size = dict(zip(candidates, sizes))
            owners.append([a for a, st in zip(holders, stamps)
                           if not (size.get(a, 0) > 0 and clocks.get(a, 0) - st >= size[a])])
            redis_server.command("SET", f"{prefix}:pc:{h}",
                                 " ".join(f"{a} {st}" for a, st in zip(holders, stamps)))
        gap, limit, rotation = rng.choice([-1, 0, 2]), rng.choice([0, 0, 3]), rng.randint(0, 99)
        min_ratio, costed = rng.choice([0.0, 0.2, 0.5]), rng.random() < 0.7
        min_blocks = math.ceil(min_ratio * len(hashes))
        prompt_blocks = len(hashes) + rng.choice([0, 0, 5, 60])
        # None: moveCost unset, by fleet size: the Redis call gets what the scorer uses.
        decode_cost, move_cost = rng.choice([0, 4, 30]), rng.choice([None, 0.0, 0.5, 1.0, 3.0])
        expected = python_pick(candidates, inflight, work, owners, costed, gap, limit, rotation,
                               min_ratio, hashes, prompt_blocks, decode_cost, move_cost)
        reply = redis_server.command(*resp_args(redis_state.pick_command(
            cluster, "me", 60000, rotation, candidates, hashes, costed, gap, limit, 600,
            min_blocks, str(case), prompt_blocks, decode_cost, sizes=sizes,
            move_cost=prefix_cache.move_cost(SimpleNamespace(move_cost=move_cost), candidates))))
        if expected == "limit":
            with pytest.raises(redis_state.LimitReached):
                redis_state.parse_pick(reply)
            continue
        assert redis_state.parse_pick(reply) == expected, (case, candidates, inflight, owners)
        # ...and the pick is counted for this gateway with its work, the prompt recorded for it.
        assert redis_server.command("HGET", f"{prefix}:n:me", expected.address) == b"$1\r\n1\r\n"
        blocks = prompt_blocks - expected.matched_blocks if costed else 0
        assert resp.reply(redis_server.command("HGET", f"{prefix}:w:me", expected.address)) == \
            (str(blocks).encode() if blocks else None)
        held = owners_to_matches(owners).get(expected.address, 0)
        clock = clocks[expected.address] + (max(0, prompt_blocks - held) if hashes else 0)
        for h in hashes:
            owner = resp.reply(redis_server.command("GET", f"{prefix}:pc:{h}")).decode()
            assert owner.split(" ")[0] == expected.address and len(owner.split(" ")) <= 6
        if hashes:  # the last block is always written, stamped with the advanced clock
            assert owner.startswith(f"{expected.address} {clock}")


def resp_args(command):
    """A RESP command's arguments, to send them again through the test client."""
    return resp.parse(command)[0]


def test_redis_releases_are_idempotent_and_may_come_before_their_pick(redis_server):
    cluster = "outbound|80||release"
    prefix = redis_state.key_prefix(cluster)
    redis_server.command("DEL", f"{prefix}:n:me", f"{prefix}:r:me")

    def pick(request_id):
        return redis_state.parse_pick(redis_server.command(*resp_args(redis_state.pick_command(
            cluster, "me", 60000, 0, [A], request_id=request_id))))

    def release(request_id):
        redis_server.command(*resp_args(redis_state.release_command(cluster, "me", request_id,
                                                                    60000)))

    def count():
        return resp.reply(redis_server.command("HGET", f"{prefix}:n:me", A))

    assert pick("1").address == A and pick("2").address == A and count() == b"2"
    release("1")
    release("1")  # sent again (no answer seen): never below the requests still in flight
    assert count() == b"1"
    release("3")  # the pick of request 3 has not run yet (Redis paused, the plugin gave up)
    assert pick("3").reason == "released" and count() == b"1"  # ...so it counts nothing
    release("2")
    assert count() is None


def test_redis_prompt_work_is_uncounted_at_the_first_byte_then_with_the_request(redis_server):
    cluster = "outbound|80||work"
    prefix = redis_state.key_prefix(cluster)
    redis_server.command("DEL", f"{prefix}:n:me", f"{prefix}:w:me", f"{prefix}:r:me")

    def run(command):
        return redis_server.command(*resp_args(command))

    def state():
        return [resp.reply(redis_server.command("HGET", f"{prefix}:{kind}:me", A))
                for kind in ("n", "w")]

    run(redis_state.pick_command(cluster, "me", 60000, 0, [A], costed=True, request_id="7",
                                 prompt_blocks=30, decode_cost=4))
    assert state() == [b"1", b"30"]
    for _ in range(2):  # idempotent
        run(redis_state.release_command(cluster, "me", "7", 60000, work_only=True))
        assert state() == [b"1", None]
    run(redis_state.release_command(cluster, "me", "7", 60000))
    assert state() == [None, None]
    run(redis_state.release_command(cluster, "me", "8", 60000, work_only=True))  # no pick:
    assert resp.reply(redis_server.command("EXISTS", f"{prefix}:x:me:8")) == 0  # no marker


def test_least_busy_config_and_higress_aliases():
    for name in ("least_busy", "endpoint_metrics", "metrics_based"):
        cfg, warnings = config.parse_doc({"lb_policy": name, "lb_config": {
            "criticalModels": ["meta-llama/Llama-2-7b-hf", "sql-lora"], "metric_policy": "least",
            "target_metric": "vllm:num_requests_running", "rate_limit": 0.6}})
        assert warnings == [] and cfg.policy == "least_busy"
        assert cfg.metrics.critical_models == {"meta-llama/Llama-2-7b-hf", "sql-lora"}
        assert (cfg.metrics.metric_policy, cfg.metrics.rate_limit) == ("least", 0.6)


@pytest.mark.parametrize("fields, field", [
    ({"metric_policy": "fastest"}, "lb_config.metric_policy"),
    ({"rate_limit": 1.5}, "lb_config.rate_limit"),
    ({"criticalModels": "sql-lora"}, "lb_config.criticalModels"),
    ({"scorers": [{"name": "vibes", "weight": 1}]}, "lb_config.scorers"),
    ({"scorers": [{"name": "queue", "weight": -1}]}, "lb_config.scorers"),
    ({"scrapeInterval": 1}, "lb_config.scrapeInterval"),
])
def test_invalid_least_busy_config_names_the_field(fields, field):
    with pytest.raises(config.ConfigError, match=f"^{field}"):
        config.parse_doc({"lb_policy": "least_busy", "lb_config": fields})
