"""Privacy end-to-end (issue 12): with Envoy's log at debug and the plugin's
per-decision log and debug header on, prompt text never reaches Envoy's log,
the plugin's stats or the decision header; nor does the Redis password of a
configuration reach a line the plugin logs (stock Envoy keeps such a
configuration's state embedded and says so in a warning: the warning must not
carry the login). Envoy itself prints the whole plugin configuration, password
included, when it loads a listener at debug level: that is checked to be the
only place the password shows.

One Envoy (--concurrency 1, `-l debug`) with four listeners sharing one VM, one
policy each: prefix_cache (maxBodyBytes 4096, a Redis login configured),
global_least_request, least_busy (scraping the replicas' /metrics) and
consistent_hash keyed by a body field. Every request carries a unique marker in
its body only (Envoy's own debug lines print request headers, never bodies):
chat and completions prompts, a cache_salt, a hash key, a malformed JSON body,
a JSON body that is not an LLM request, a body nested too deeply, invalid UTF-8,
and bodies over maxBodyBytes (with a content-length, and chunked without one).
Each marker is checked to have reached a replica, so the test cannot pass by
not sending it; and the plugin's debug lines for those bodies are checked to be
in the log, so it cannot pass by not logging at debug.
"""

import json
import socket
import time
import uuid

import pytest

import envoy_harness as harness

RUN = uuid.uuid4().hex
PASSWORD = f"redis-pw-{uuid.uuid4().hex}"
CHAT_PATH = "/v1/chat/completions"
JSON = {"content-type": "application/json"}
MAX_BODY = 4096
POLICIES = {  # listener name -> lb_policy and its extra lb_config fields
    "prefix": ("prefix_cache", {"maxBodyBytes": MAX_BODY, "serviceFQDN": "redis.static",
                                "servicePort": 6379, "username": "ailb",
                                "password": PASSWORD}),
    "least": ("global_least_request", {}),
    "busy": ("least_busy", {"metricsCluster": "backend", "scrapeInterval": 200,
                            "scrapeTimeout": 500, "metricsStaleness": 3000}),
    "hash": ("consistent_hash", {"hashKey": {"bodyField": "user"}}),
}


def marker(name):
    """A unique word per use; its random part is also searched alone, so an
    escaped or cut copy is found too."""
    return f"zebra-secret-{name}-{RUN}-{uuid.uuid4().hex[:12]}"


def metrics_handler(replica, request):
    if request.path != "/metrics":
        return None
    text = ('vllm:num_requests_waiting{model_name="m"} 0\n'
            'vllm:num_requests_running{model_name="m"} 1\n'
            'vllm:kv_cache_usage_perc{model_name="m"} 0.1\n')
    return 200, {"content-type": "text/plain"}, text.encode()


@pytest.fixture(scope="module")
def fleet():
    with harness.ReplicaSet.start(3, handler=metrics_handler) as replicas:
        yield replicas


@pytest.fixture(scope="module")
def debug_envoy(module_envoys, fleet, production_wasm):
    listeners = []
    for name, (policy, fields) in POLICIES.items():
        plugin_config = {"lb_policy": policy, "lb_config": {
            "endpoints": fleet.endpoints, "debugHeader": True, "enableDetailLog": True,
            **fields}}
        listeners.append(harness.Listener(name, 0, "backend",
                                          harness.WasmFilter(production_wasm, plugin_config)))
    config = harness.EnvoyConfig(listeners=listeners,
                                 clusters=[harness.Cluster(fleet.endpoints, "backend")],
                                 concurrency=1, log_level="debug")
    envoy = module_envoys(config)
    for policy, _ in POLICIES.values():  # the main thread's VM and the worker's
        envoy.wait_for_log(f"configured, lb_policy={policy}", count=2)
    deadline = time.monotonic() + 10  # least_busy decides once it has scraped the replicas
    while "x-ailb-decision" not in post(envoy, "busy", chat("warm-up")).headers:
        assert time.monotonic() < deadline, "least_busy never decided"
        time.sleep(0.1)
    return envoy


def chat(*turns, **extra):
    roles = ["system"] + ["user", "assistant"] * len(turns)
    messages = [{"role": role, "content": t} for role, t in zip(roles, turns)]
    return json.dumps({"model": "m", "messages": messages, **extra}).encode()


def post(envoy, listener, body, headers=None):
    with harness.Client(envoy.listener_port(listener)) as client:
        return client.post(CHAT_PATH, body, {**JSON, **(headers or {})})


def post_chunked(envoy, listener, body, chunk=1024):
    """A POST without content-length: the plugin learns the size as it arrives."""
    with socket.create_connection((harness.LOOPBACK, envoy.listener_port(listener)), 10) as sock:
        head = (f"POST {CHAT_PATH} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                f"transfer-encoding: chunked\r\nconnection: close\r\n\r\n").encode()
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + chunk]), body[i:i + chunk])
                          for i in range(0, len(body), chunk))
        sock.sendall(head + chunks + b"0\r\n\r\n")
        answer = b""
        while True:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    status = int(answer.split(b" ", 2)[1])
    names = {}
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        names[name.strip().lower()] = value.strip()
    return harness.Response(status, names, answer.split(b"\r\n\r\n", 1)[1])


def seen_upstream(fleet, text):
    """True when some replica received a request whose body holds `text`."""
    needle = text.encode()
    return any(needle in r.body for replica in fleet for r in list(replica.requests))


def leaks(text, markers):
    """The markers (or their random parts) that occur in `text`."""
    found = []
    for m in markers:
        tail = m.rsplit("-", 2)[-2:]  # the run id and the per-use part
        if m in text or tail[0] + "-" + tail[1] in text or tail[1] in text:
            found.append(m)
    return found


def test_no_prompt_text_or_password_in_the_debug_log_or_stats(debug_envoy, fleet):
    envoy = debug_envoy
    sent = []  # (listener, marker, expected reason or None)

    def send(listener, body, mark, reason=None, chunked=False):
        response = (post_chunked if chunked else post)(envoy, listener, body)
        assert response.status == 200, (listener, response.status, response.body[:200])
        value = response.headers.get("x-ailb-decision", "")
        assert value, (listener, response.headers)
        if reason:
            assert f"reason={reason}" in value, (listener, value)
        sent.append((listener, mark))
        return value

    # prefix_cache: a conversation (the second turn matches the first's blocks),
    # a completion, a salted prompt, then bodies it cannot read or will not read.
    system = marker("system")
    first = marker("turn1")
    send("prefix", chat(f"{system} " * 12, first), system)
    second = marker("turn2")
    send("prefix", chat(f"{system} " * 12, first, "an answer", second), second,
         reason="prefix_match")
    completion = marker("completion")
    send("prefix", json.dumps({"model": "m", "prompt": f"{completion} " * 5}).encode(),
         completion)
    salt = marker("salt")
    send("prefix", chat(marker("salted") + " " * 100, cache_salt=salt), salt)
    broken = marker("malformed")
    send("prefix", b'{"model": "m", "messages": [{"role": "user", "content": "'
         + broken.encode() + b' and no end', broken, reason="least_load")
    odd = marker("notllm")
    send("prefix", json.dumps({"model": "m", "input": odd}).encode(), odd,
         reason="least_load")
    deep = marker("deep")
    send("prefix", b"[" * 5000 + json.dumps(deep).encode() + b"]" * 5000, deep,
         reason="least_load")
    latin = marker("latin1")
    send("prefix", b'{"model": "m", "prompt": "\xff\xfe ' + latin.encode() + b'"}', latin)
    big = marker("oversized")
    send("prefix", chat(f"{big} " * (MAX_BODY // 40)), big, reason="least_load")
    chunked = marker("chunked")
    send("prefix", chat(f"{chunked} " * (MAX_BODY // 40)), chunked, reason="least_load",
         chunked=True)
    # the other policies read the same kinds of bodies
    for listener in ("least", "busy", "hash"):
        for body_of in (lambda m: chat(f"{m} " * 8, m, user=m),
                        lambda m: b'{"user": "' + m.encode() + b'", "messages": [',
                        lambda m: json.dumps({"prompt": m, "user": {"id": m}}).encode()):
            mark = marker(listener)
            send(listener, body_of(mark), mark)

    markers = [m for _, m in sent]
    missing = [m for m in markers if not seen_upstream(fleet, m)]
    assert not missing, f"never reached a replica: {missing}"

    time.sleep(0.3)  # the last streams' on_log lines
    log = envoy.log()
    # The log is at debug, and the plugin logged these very requests.
    assert "[debug]" in log
    wasm_lines = envoy.wasm_log_lines()
    assert any("no prompt to match: body is not JSON" in line for line in wasm_lines), \
        wasm_lines[-20:]
    assert any("over maxBodyBytes" in line for line in wasm_lines), wasm_lines[-20:]
    assert sum(" -> " in line for line in wasm_lines) >= len(sent), "detail log lines missing"
    assert any("Redis needs the higress build" in line for line in wasm_lines)

    assert leaks(log, markers) == [], "prompt text in Envoy's log"
    # The password: never in a line the plugin logged. Envoy itself, at debug,
    # prints each listener's configuration as it loads it ([config] "config: {...}"),
    # the plugin's configuration string (and so its login) included: Envoy's
    # doing, which the plugin cannot change (`--component-log-level wasm:debug`
    # with a global level of info shows the plugin's debug lines without it).
    secret = PASSWORD.split("-")[-1]
    assert not [line for line in wasm_lines if secret in line], "password in a plugin log line"
    envoy_dumps = [line for line in log.splitlines() if secret in line]
    assert all("][debug][config] " in line and " config: {" in line for line in envoy_dumps), \
        [line[:300] for line in envoy_dumps]
    _, stats = envoy.admin("/stats")
    assert "ailb." in stats
    assert leaks(stats, markers) == [] and PASSWORD not in stats
    _, prometheus = envoy.admin("/stats/prometheus")
    assert leaks(prometheus, markers) == [] and PASSWORD not in prometheus


def test_plugin_debug_lines_without_envoys_config_dump(start_envoy, fleet, production_wasm):
    """`-l info --component-log-level wasm:debug`: the plugin's debug lines, and
    the password nowhere in the log."""
    name, (policy, fields) = "prefix", POLICIES["prefix"]
    plugin_config = {"lb_policy": policy, "lb_config": {
        "endpoints": fleet.endpoints, "debugHeader": True, "enableDetailLog": True, **fields}}
    config = harness.EnvoyConfig(
        listeners=[harness.Listener(name, 0, "backend",
                                    harness.WasmFilter(production_wasm, plugin_config))],
        clusters=[harness.Cluster(fleet.endpoints, "backend")],
        concurrency=1, log_level="info", component_log_level="wasm:debug")
    envoy = start_envoy(config)
    envoy.wait_for_log(f"configured, lb_policy={policy}", count=2)
    broken = marker("malformed-info")
    response = post(envoy, name, b'{"messages": [{"content": "' + broken.encode())
    assert response.status == 200 and "reason=least_load" in response.headers.get(
        "x-ailb-decision", "")
    assert seen_upstream(fleet, broken)
    log = envoy.wait_for_log("no prompt to match: body is not JSON")
    assert leaks(log, [broken]) == []
    assert PASSWORD.split("-")[-1] not in log
