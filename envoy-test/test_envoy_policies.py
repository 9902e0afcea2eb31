"""End-to-end: the LLM policies in a real Envoy 1.40 (--concurrency 2).

Two worker VMs share the in-flight counts and the prefix index through Envoy's
shared data (state=embedded); every request below opens its own connection, so
the kernel spreads them over both workers (checked with the per-worker listener
stats). The replicas hold a request for `x-hold-ms` milliseconds when asked, so
tests can keep requests in flight.
"""

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import envoy_harness as harness

REPLICAS = 4
HOLD_HEADER = "x-hold-ms"
CHAT_PATH = "/v1/chat/completions"
JSON = {"content-type": "application/json"}


def hold_handler(replica, request):
    """Sleeps for the request's x-hold-ms, then lets the default answer go out."""
    ms = request.headers.get(HOLD_HEADER)
    if ms:
        time.sleep(int(ms) / 1000)
    return None


@pytest.fixture(scope="module")
def replicas4():
    behaviours = [harness.Behaviour(handler=hold_handler) for _ in range(REPLICAS)]
    with harness.ReplicaSet.start(REPLICAS, behaviours) as replica_set:
        yield replica_set


def policy_envoy(module_envoys, replicas, wasm, policy, **fields):
    plugin_config = harness.plugin_config(policy, replicas.endpoints, debugHeader=True, **fields)
    config = harness.EnvoyConfig.simple(replicas.endpoints, wasm_path=wasm,
                                        plugin_config=plugin_config, concurrency=2)
    envoy = module_envoys(config)
    envoy.wait_for_log(f"configured, lb_policy={policy}, state=embedded", count=3)
    return envoy


@pytest.fixture(scope="module")
def least_envoy(module_envoys, replicas4, production_wasm):
    return policy_envoy(module_envoys, replicas4, production_wasm, "global_least_request")


@pytest.fixture(scope="module")
def prefix_envoy(module_envoys, replicas4, production_wasm):
    return policy_envoy(module_envoys, replicas4, production_wasm, "prefix_cache")


def decision(response):
    """x-ailb-decision parsed: {"address", "reason", "matched_blocks", "inflight", "state"}."""
    out = harness.decision(response.headers)
    assert out, f"no decision header: {response.status} {response.headers}"
    out["matched_blocks"], out["inflight"] = int(out["matched_blocks"]), int(out["inflight"])
    return out


def check_routed(response, replicas):
    """A 200 from the replica the decision names, decided on embedded state."""
    assert response.status == 200, (response.status, response.body[:200])
    d = decision(response)
    assert replicas.by_address(d["address"]).name == response.replica, (d, response.replica)
    assert d["state"] == "embedded"
    return d


def worker_connections(envoy):
    """Downstream connections each worker accepted on the main listener."""
    stats = envoy.stats(r"worker_\d+\.downstream_cx_total")
    return {name.split(".")[-2]: n for name, n in stats.items()
            if name.startswith("listener.127.0.0.1_")}


def wait_received(replicas, count, timeout=10):
    """Waits until the replicas together have received `count` requests."""
    deadline = time.monotonic() + timeout
    while sum(replicas.counts().values()) < count:
        assert time.monotonic() < deadline, f"replicas saw {replicas.counts()}, want {count}"
        time.sleep(0.01)


def assert_no_request_counted(envoy, replicas, hold_ms=300, tries=5):
    """Every replica's shared in-flight count is zero: 4 concurrent held requests
    then land on 4 different replicas, each seeing inflight=0 (one count left
    anywhere would put two on one replica, or show inflight>=1). A few tries:
    a stream's on_log may run just after its client has the answer."""
    for attempt in range(tries):
        got = harness.run_requests(envoy.port, [
            {"path": f"/idle/{attempt}/{i}", "headers": {HOLD_HEADER: str(hold_ms)}}
            for i in range(len(replicas))])
        decisions = [check_routed(r, replicas) for r in got]
        if (sorted(d["address"] for d in decisions) == sorted(replicas.endpoints)
                and all(d["inflight"] == 0 for d in decisions)):
            return
        time.sleep(0.2)
    raise AssertionError(f"counts did not return to zero: {decisions}")


# --- global_least_request -------------------------------------------------------------------

BURST = 200
BURST_HOLD_MS = 1000


def test_least_request_spreads_200_concurrent_exactly(least_envoy, replicas4):
    replicas4.reset()
    cx_before = worker_connections(least_envoy)
    started = time.monotonic()
    responses = harness.run_requests(least_envoy.port, [
        {"path": f"/burst/{i}", "headers": {HOLD_HEADER: str(BURST_HOLD_MS)}}
        for i in range(BURST)], timeout=60)
    elapsed = time.monotonic() - started
    decisions = [check_routed(r, replicas4) for r in responses]
    # Every request was decided while all earlier ones were still held (the
    # burst reached the replicas well within one hold time), so the shared,
    # atomically updated counts split 200 exactly 50/50/50/50.
    assert replicas4.counts() == {f"r{i}": BURST // REPLICAS for i in range(REPLICAS)}, \
        (replicas4.counts(), f"{elapsed:.2f} s")
    assert {d["reason"] for d in decisions} == {"least_request"}
    # In-flight seen at decision time: each replica's count went 0, 1, ..., 49.
    for address in replicas4.endpoints:
        seen = sorted(d["inflight"] for d in decisions if d["address"] == address)
        assert seen == list(range(BURST // REPLICAS)), (address, seen)
    cx_after = worker_connections(least_envoy)
    per_worker = {w: cx_after[w] - cx_before.get(w, 0) for w in cx_after}
    assert len(per_worker) == 2 and all(n > 0 for n in per_worker.values()), per_worker
    assert sum(per_worker.values()) >= BURST

    # Afterwards the counts are back at zero: sequential requests see inflight=0.
    with harness.Client(least_envoy.port) as client:
        for i in range(8):
            d = check_routed(client.get(f"/after/{i}"), replicas4)
            assert d["inflight"] == 0, d
    assert_no_request_counted(least_envoy, replicas4)


def test_least_request_client_aborts_do_not_leak(least_envoy, replicas4):
    replicas4.reset()
    aborts = 20
    resets_before = least_envoy.stats("downstream_cx_destroy_remote_active_rq").get(
        "http.main.downstream_cx_destroy_remote_active_rq", 0)

    async def abort_mid_flight():
        go = asyncio.Event()
        tasks = [asyncio.ensure_future(harness.async_request(
            least_envoy.port, path=f"/abort/{i}", headers={HOLD_HEADER: "1500"},
            abort_after=go)) for i in range(aborts)]
        for _ in range(1000):  # until every request is held by a replica (bounded)
            if sum(replicas4.counts().values()) >= aborts:
                break
            await asyncio.sleep(0.01)
        go.set()  # the clients hang up while their requests are in flight
        await asyncio.wait_for(asyncio.gather(*tasks), 10)

    asyncio.run(abort_mid_flight())
    assert sum(replicas4.counts().values()) == aborts
    assert set(replicas4.counts().values()) == {aborts // REPLICAS}
    deadline = time.monotonic() + 5
    resets = 0
    while time.monotonic() < deadline and resets < aborts:
        resets = least_envoy.stats("downstream_cx_destroy_remote_active_rq").get(
            "http.main.downstream_cx_destroy_remote_active_rq", 0) - resets_before
        time.sleep(0.05)
    assert resets == aborts  # Envoy saw them as client aborts, not completions
    time.sleep(1.6)  # the replicas finish their (now orphaned) requests
    with harness.Client(least_envoy.port) as client:
        for i in range(8):
            assert check_routed(client.get(f"/after-abort/{i}"), replicas4)["inflight"] == 0
    assert_no_request_counted(least_envoy, replicas4)


# --- prefix_cache -----------------------------------------------------------------------------

SYSTEM = "You are a careful assistant who answers in plain English. " * 8
DOCUMENT = "".join(f"Clause {i}: the tenant pays rent on day {i % 28 + 1} of the month. "
                   for i in range(150))


def chat(messages, model="qwen"):
    return json.dumps({"model": model, "messages": messages}).encode()


def post_chat(envoy, body, path=CHAT_PATH):
    """One request on a new connection (so any worker may get it)."""
    return harness.run_requests(envoy.port, [{"method": "POST", "path": path, "headers": JSON,
                                              "body": body}])[0]


@pytest.fixture
def prefix(prefix_envoy, replicas4):
    replicas4.reset()
    return prefix_envoy


def test_prefix_cache_multi_turn_conversation_sticks(prefix, replicas4):
    cx_before = worker_connections(prefix)
    messages = [{"role": "system", "content": SYSTEM}]
    ours, others = [], []
    for turn in range(6):
        messages.append({"role": "user", "content": f"Question {turn}: what about topic "
                                                    f"{turn * 7919}? " * 3})
        response = post_chat(prefix, chat(messages))
        ours.append(check_routed(response, replicas4))
        assert json.loads(response.body)["body_bytes"] == len(chat(messages))
        messages.append({"role": "assistant", "content": f"Answer {turn}: " + "details " * 60})
        for other in range(2):  # other users, other prompts, in between
            other_messages = [{"role": "system", "content": f"Other user {turn}-{other}. " * 20},
                              {"role": "user", "content": "hello"}]
            others.append(check_routed(post_chat(prefix, chat(other_messages)), replicas4))
    assert len({d["address"] for d in ours}) == 1, ours
    assert ours[0]["reason"] == "least_load"
    assert [d["reason"] for d in ours[1:]] == ["prefix_match"] * 5, ours
    blocks = [d["matched_blocks"] for d in ours]
    assert blocks[1] >= len(SYSTEM) // 64 and blocks == sorted(blocks) and blocks[5] > blocks[1]
    assert {d["reason"] for d in others} == {"least_load"}
    assert len({d["address"] for d in others}) >= 2  # the others spread
    cx_after = worker_connections(prefix)
    assert all(cx_after[w] > cx_before.get(w, 0) for w in cx_after) and len(cx_after) == 2


def test_prefix_cache_second_message_that_doubles_the_prompt_stays(prefix, replicas4):
    """The new part of a prompt may be longer than the cached part: still a match
    (a ratio rule such as the old minMatchRatio 0.5 moved this turn and recomputed
    all of it)."""
    messages = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": "Summarise: " + "a long first question. " * 40}]
    first = check_routed(post_chat(prefix, chat(messages)), replicas4)
    history = len(chat(messages))
    messages += [{"role": "assistant", "content": "A summary."},
                 {"role": "user", "content": "Now this: " + "a longer new question. " * 80}]
    assert len(chat(messages)) > 2 * history  # the new message outweighs the history
    for other in range(3):  # other users in between
        check_routed(post_chat(prefix, chat([{"role": "user", "content": f"hi {other}"}])),
                     replicas4)
    second = check_routed(post_chat(prefix, chat(messages)), replicas4)
    assert (second["address"], second["reason"]) == (first["address"], "prefix_match"), second
    assert second["matched_blocks"] >= history // 64 - 1


def test_prefix_cache_hot_system_prompt_does_not_pull_every_conversation_to_one_replica(
        prefix, replicas4):
    """Every new conversation starts with one shared system prompt. Sent one at
    a time they may all reuse it on one replica; arriving together (each held
    in flight), the prompt work queued on its holder soon costs more than the
    shared prefix saves, and the rest spread."""
    first = check_routed(post_chat(prefix, chat([{"role": "system", "content": SYSTEM},
                                                 {"role": "user", "content": "warm up"}])),
                         replicas4)
    replicas4.reset()
    burst = [{"method": "POST", "path": CHAT_PATH,
              "headers": {**JSON, HOLD_HEADER: "1500"},
              "body": chat([{"role": "system", "content": SYSTEM},
                            {"role": "user", "content": f"Conversation {i}: "
                                                        + f"question {i * 7919} " * 30}])}
             for i in range(16)]
    decisions = [check_routed(r, replicas4) for r in harness.run_requests(prefix.port, burst,
                                                                          timeout=30)]
    per_replica = {name: n for name, n in replicas4.counts().items() if n}
    assert max(per_replica.values()) <= 8 and len(per_replica) >= 3, (per_replica, decisions)
    reused = [d for d in decisions if d["reason"] == "prefix_match"]
    assert reused and all(d["matched_blocks"] >= len(SYSTEM) // 64 - 2 for d in reused)
    assert any(d["address"] == first["address"] for d in reused)


def next_turn_while_a_prompt_queues_at_home(envoy, fleet):
    """(first turn's decision, next turn's): a conversation's next turn comes
    while a new user's long prompt, sharing its history's first blocks (so sent
    to the same replica), is still being computed there."""
    history = [{"role": "user", "content": DOCUMENT[:6000]}]  # ~93 blocks
    first = check_routed(post_chat(envoy, chat(history)), fleet)
    queued = [{"method": "POST", "path": CHAT_PATH, "headers": {**JSON, HOLD_HEADER: "2000"},
               "body": chat([{"role": "user", "content": DOCUMENT[:6000]
                              + " A new user's own long text." * 250}])}]  # ~110 new blocks
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(harness.run_requests, envoy.port, queued, timeout=10)
        time.sleep(0.5)  # decided and held: its uncached blocks wait at home
        turn = check_routed(post_chat(envoy, chat(history + [
            {"role": "assistant", "content": "A summary."},
            {"role": "user", "content": "And clause 7?"}])), fleet)
        assert check_routed(held.result()[0], fleet)["address"] == first["address"]
    return first, turn


def test_prefix_cache_conversation_stays_home_on_two_replicas_unless_move_cost_is_0(
        start_envoy, production_wasm):
    """By this turn's prefill alone the other, idle replica is as quick (it
    computes the history again while home computes the queued prompt); moving
    would hold the history twice. Unset, moveCost is 1 on two replicas: it stays."""
    behaviours = [harness.Behaviour(handler=hold_handler) for _ in range(2)]
    with harness.ReplicaSet.start(2, behaviours) as fleet:
        for fields, stays in (({}, True), ({"moveCost": 0}, False)):
            envoy = policy_envoy(start_envoy, fleet, production_wasm, "prefix_cache", **fields)
            first, turn = next_turn_while_a_prompt_queues_at_home(envoy, fleet)
            if stays:
                assert (turn["address"], turn["reason"]) == (first["address"], "prefix_match")
            else:
                assert turn["address"] != first["address"] and turn["reason"] == "least_load"


def test_prefix_cache_shared_document_two_questions(prefix, replicas4):
    first = check_routed(post_chat(prefix, chat([
        {"role": "system", "content": DOCUMENT},
        {"role": "user", "content": "Which day is rent due under clause 3?"}])), replicas4)
    second = check_routed(post_chat(prefix, chat([
        {"role": "system", "content": DOCUMENT},
        {"role": "user", "content": "Who pays the rent?"}])), replicas4)
    assert second["address"] == first["address"]
    assert second["reason"] == "prefix_match"
    assert second["matched_blocks"] >= min(256, len(DOCUMENT) // 64 - 1)


def small_cache_handler(replica, request):
    """A vLLM whose KV cache holds 40 blocks of 16 tokens (40 prompt blocks of 64
    bytes; the index forgets after twice that): /metrics says so in
    vllm:cache_config_info."""
    if request.path == "/metrics":
        return 200, {"content-type": "text/plain"}, (
            b'vllm:num_requests_waiting{model_name="qwen"} 0\n'
            b'vllm:cache_config_info{block_size="16",num_gpu_blocks="40"} 1.0\n')
    return None


def test_prefix_cache_forgets_what_a_replica_evicted_by_its_scraped_cache_size(
        start_envoy, production_wasm):
    behaviours = [harness.Behaviour(handler=small_cache_handler) for _ in range(3)]
    with harness.ReplicaSet.start(3, behaviours) as fleet:
        envoy = policy_envoy(start_envoy, fleet, production_wasm, "prefix_cache",
                             metricsCluster="backend")
        check_routed(post_chat(envoy, chat([{"role": "user", "content": "warm up"}])), fleet)
        deadline = time.time() + 20  # the first scrape: at a tick once the cluster is known
        while not all(any(r.path == "/metrics" for r in list(rep.requests))
                      for rep in fleet.replicas):
            assert time.time() < deadline, "no scrape reached every replica"
            time.sleep(0.2)
        time.sleep(0.5)  # the scraped table is written when the round's last answer came
        document = [{"role": "system", "content": DOCUMENT[:6000]}]  # ~93 blocks
        first = check_routed(post_chat(envoy, chat(document + [
            {"role": "user", "content": "q1"}])), fleet)
        kept = check_routed(post_chat(envoy, chat(document + [
            {"role": "user", "content": "q2"}])), fleet)
        assert (kept["address"], kept["reason"]) == (first["address"], "prefix_match")
        sent = 0
        for i in range(40):  # other prompts until the holder computed a cache's worth
            body = chat([{"role": "user", "content": f"Unrelated {i}. " * 300}])
            if check_routed(post_chat(envoy, body), fleet)["address"] == first["address"]:
                sent += len(body) // 64
                if sent >= 80:
                    break
        assert sent >= 80
        gone = check_routed(post_chat(envoy, chat(document + [
            {"role": "user", "content": "q3"}])), fleet)
        assert (gone["reason"], gone["matched_blocks"]) == ("least_load", 0), gone


def test_prefix_cache_non_json_body_still_routed(prefix, replicas4):
    for body in (b"definitely not json {", b'["a", "list"]', b'{"no": "prompt"}'):
        response = post_chat(prefix, body)
        d = check_routed(response, replicas4)
        assert d["reason"] == "least_load" and d["matched_blocks"] == 0
        assert json.loads(response.body)["body_bytes"] == len(body)


def test_prefix_cache_get_without_body(prefix, replicas4):
    with harness.Client(prefix.port) as client:
        assert check_routed(client.get("/v1/models"), replicas4)["reason"] == "least_load"


ENVOY_BUFFER_LIMIT = 1024 * 1024  # per_connection_buffer_limit_bytes, Envoy's default


def big_chat(size):
    return chat([{"role": "system", "content": DOCUMENT},
                 {"role": "user", "content": "x" * size}])


def test_prefix_cache_body_over_max_body_bytes_is_routed_without_prompt(
        start_envoy, replicas4, production_wasm):
    """maxBodyBytes below Envoy's buffer limit: a larger body goes on, by load alone."""
    replicas4.reset()
    plugin_config = {"lb_policy": "prefix_cache", "lb_config": {
        "endpoints": replicas4.endpoints, "debugHeader": True, "maxBodyBytes": 256 * 1024}}
    envoy = start_envoy(harness.EnvoyConfig.simple(
        replicas4.endpoints, wasm_path=production_wasm, plugin_config=plugin_config))
    body = big_chat(600 * 1024)
    response = post_chat(envoy, body)
    d = check_routed(response, replicas4)
    assert d["reason"] == "least_load" and d["matched_blocks"] == 0
    assert json.loads(response.body)["body_bytes"] == len(body)
    envoy.wait_for_log("over maxBodyBytes")


def test_prefix_cache_body_over_envoy_buffer_limit_fails_open(prefix, replicas4):
    """A prompt larger than Envoy's buffer (e.g. base64 images) must still reach a
    replica: the plugin must stop buffering before Envoy's limit."""
    body = big_chat(ENVOY_BUFFER_LIMIT + 100 * 1024)
    response = post_chat(prefix, body)
    assert response.status == 200, (response.status, response.body[:100])
    assert json.loads(response.body)["body_bytes"] == len(body)


def test_prefix_cache_abort_while_waiting_for_body(prefix, replicas4):
    """A client that leaves while the plugin waits for the rest of the body
    (nothing counted yet) leaks nothing and breaks nothing."""
    async def send_half_and_leave():
        reader, writer = await asyncio.open_connection(harness.LOOPBACK, prefix.port)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                     b"content-type: application/json\r\ncontent-length: 5000\r\n\r\n"
                     + chat([{"role": "user", "content": "x" * 100}])[:80])
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.close()

    async def ten():
        await asyncio.wait_for(asyncio.gather(*(send_half_and_leave() for _ in range(10))), 10)

    asyncio.run(ten())
    assert sum(replicas4.counts().values()) == 0
    assert_no_request_counted(prefix, replicas4)


# --- maxRequestCount ----------------------------------------------------------------------------

@pytest.mark.parametrize("policy", ["global_least_request", "prefix_cache"])
def test_max_request_count_answers_429_in_openai_format(start_envoy, replicas4, production_wasm,
                                                        policy):
    replicas4.reset()
    plugin_config = {"lb_policy": policy, "lb_config": {
        "endpoints": replicas4.endpoints, "debugHeader": True, "maxRequestCount": 1}}
    envoy = start_envoy(harness.EnvoyConfig.simple(
        replicas4.endpoints, wasm_path=production_wasm, plugin_config=plugin_config,
        concurrency=2))
    body = chat([{"role": "user", "content": "Tell me a story. " * 10}])
    request = {"method": "POST", "path": CHAT_PATH, "body": body,
               "headers": {**JSON, HOLD_HEADER: "1500"}}

    async def scenario():
        held = [asyncio.ensure_future(harness.async_request(envoy.port, **request))
                for _ in range(REPLICAS)]
        for _ in range(1000):  # until each replica holds one (bounded)
            if sum(replicas4.counts().values()) >= REPLICAS:
                break
            await asyncio.sleep(0.01)
        fifth = await harness.async_request(envoy.port, **request)
        return await asyncio.gather(*held), fifth

    held, fifth = asyncio.run(asyncio.wait_for(scenario(), 20))
    assert sorted(r.replica for r in held) == [f"r{i}" for i in range(REPLICAS)]
    assert all(decision(r)["inflight"] == 0 for r in held)
    assert fifth.status == 429, (fifth.status, fifth.body)
    assert fifth.replica is None and "x-ailb-decision" not in fifth.headers
    assert fifth.headers["content-type"].startswith("application/json")
    error = json.loads(fifth.body)["error"]  # OpenAI: {"error": {"message", "type", "code"}}
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == "rate_limit_exceeded" and error["code"] == 429
    assert sum(replicas4.counts().values()) == REPLICAS  # the 5th never went upstream
    # Once the held requests are done, requests are accepted again.
    with harness.Client(envoy.port) as client:
        again = client.post(CHAT_PATH, body=body, headers=JSON)
    assert again.status == 200 and decision(again)["inflight"] == 0
