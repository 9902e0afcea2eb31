"""Privacy (issue 12): the higress build keeping its state in a Redis that
requires a password, logging everything (the test host collects every level,
trace and debug included; enableDetailLog and debugHeader on), never puts prompt
text into Redis (keys, values, or even a command's arguments: Redis's slow log
records every command here) nor into a log line, shared data, a metric name or
the decision header; and never logs the Redis password, the right one or a
wrong one (the NOAUTH path), nor echoes it when it rejects a configuration.

The markers travel in request bodies the plugin reads (their prompts' block
hashes are checked to be in Redis and in the commands Redis ran, a later turn
matches an earlier one), and the plugin's debug line for an unreadable body and
its per-decision lines are checked to be there, so the test cannot pass by not
handling the markers or by not logging.
"""

import json
import uuid

import pytest

from proxywasm import resp
from proxywasm.context import PAUSE
from tests.conftest import running_redis
from tests.llm_traffic import (CLUSTER, REDIS_CLUSTER, REPLICAS, chat_body, clear_redis, decision,
                               finish, pinned, plugin_config, send, start)

RUN = uuid.uuid4().hex
PASSWORD = f"redis-pw-{uuid.uuid4().hex}"
WRONG = f"wrong-pw-{uuid.uuid4().hex}"
MAX_BODY = 4096


@pytest.fixture(scope="module")
def locked_redis():
    for server in running_redis(requirepass=PASSWORD):
        # The slow log keeps every command (and its arguments) from now on.
        server.command("CONFIG", "SET", "slowlog-log-slower-than", "0")
        server.command("CONFIG", "SET", "slowlog-max-len", "100000")
        yield server


def marker(name):
    return f"zebra-secret-{name}-{RUN}-{uuid.uuid4().hex[:12]}"


def found(text, secrets):
    """The secrets (or their random parts, should a copy be escaped or cut)
    that occur in `text` (str or bytes)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    hits = [s for s in secrets if s in text or s.rsplit("-", 1)[-1] in text]
    return hits + (["(this run's marker id)"] if RUN in text else [])


# --- reading everything a Redis holds ----------------------------------------------------

def databases(server):
    info = resp.reply(server.command("INFO", "keyspace")).decode()
    return [int(line.split(":")[0][2:]) for line in info.split("\r\n") if line.startswith("db")]


def flatten(value):
    if isinstance(value, list):
        return b"\n".join(flatten(v) for v in value)
    if isinstance(value, bytes):
        return value
    return str(value).encode()


READERS = {"string": ("GET",), "hash": ("HGETALL",), "list": ("LRANGE", 0, -1),
           "set": ("SMEMBERS",), "zset": ("ZRANGE", 0, -1, "WITHSCORES"),
           "stream": ("XRANGE", "-", "+")}


def redis_contents(server):
    """{(db, key): value bytes} of every key in every database."""
    out = {}
    for db in databases(server):
        cursor = b"0"
        while True:
            cursor, keys = resp.reply(server.command("SCAN", cursor, "COUNT", 1000, db=db))
            for key in keys:
                kind = resp.reply(server.command("TYPE", key, db=db))  # a status reply
                reader = READERS[kind.decode() if isinstance(kind, bytes) else kind]
                value = resp.reply(server.command(reader[0], key, *reader[1:], db=db))
                out[(db, key)] = flatten(value)
            if cursor == b"0":
                break
    return out


def slowlog(server):
    """Every command Redis ran since the last SLOWLOG RESET, with its arguments."""
    return flatten(resp.reply(server.command("SLOWLOG", "GET", -1)))


def everything_the_host_kept(host):
    """The plugin's log lines (every level), its stdio, shared data and metric names."""
    stdout, stderr = host.get_stdio()
    shared = [k if isinstance(k, bytes) else k.encode() for k in host.shared.data()] + [
        v if isinstance(v, bytes) else str(v).encode() for v in host.shared.data().values()]
    return "\n".join([host.logs_text(), stdout, stderr,
                      b"\n".join(shared).decode("utf-8", "replace"),
                      "\n".join(host.shared.metrics)])


# --- traffic ---------------------------------------------------------------------------------

def route(host, body, reason=None):
    """One whole request through `host`; returns its decision header value."""
    cid, action = send(host, body)
    if action == PAUSE:
        host.run_callouts()
        assert host.is_request_resumed(cid), host.logs_text()
    assert pinned(host, cid) in REPLICAS
    d = decision(host, cid)
    if reason:
        assert d["reason"] == reason, d
    finish(host, cid)
    host.run_callouts()  # the release
    return d


def prefix_traffic(host, sent):
    system, first, second = marker("system"), marker("turn1"), marker("turn2")
    route(host, chat_body(f"{system} " * 12, first))
    again = route(host, chat_body(f"{system} " * 12, first, "an answer", second),
                  reason="prefix_match")
    assert again["state"] == "redis", again
    completion, salt, salted = marker("completion"), marker("salt"), marker("salted")
    route(host, json.dumps({"model": "m", "prompt": f"{completion} " * 5}).encode())
    route(host, chat_body(f"{salted} " * 4, cache_salt=salt))
    malformed, other, big = marker("malformed"), marker("notllm"), marker("oversized")
    route(host, b'{"model": "m", "messages": [{"role": "user", "content": "' + malformed.encode()
          + b" and no end", reason="least_load")
    route(host, json.dumps({"model": "m", "input": other}).encode(), reason="least_load")
    route(host, chat_body(f"{big} " * (MAX_BODY // 40)), reason="least_load")
    sent += [system, first, second, completion, salt, salted, malformed, other, big]


def least_request_traffic(host, sent):
    for name in ("glr-chat", "glr-completion"):
        mark = marker(name)
        body = (chat_body(f"{mark} " * 8, mark) if name == "glr-chat"
                else json.dumps({"prompt": mark}).encode())
        d = route(host, body)
        assert d["state"] == "redis", d
        sent.append(mark)


def test_no_prompt_or_password_in_redis_or_the_logs(make_host, locked_redis):
    clear_redis(locked_redis)
    locked_redis.command("SLOWLOG", "RESET")
    sent = []
    fields = dict(target="higress", redis_address=locked_redis.address, password=PASSWORD,
                  enableDetailLog=True, maxBodyBytes=MAX_BODY, redisKeyTTL=120)
    prefix = start(make_host, "prefix_cache", **fields)
    prefix_traffic(prefix, sent)
    least = start(make_host, "global_least_request", **fields)
    least_request_traffic(least, sent)
    # A gateway with the wrong password: every Redis reply is a refusal, the
    # plugin decides on its own state and logs in again; its logs name neither.
    wrong = start(make_host, "prefix_cache", **{**fields, "password": WRONG})
    for name in ("noauth-1", "noauth-2"):
        mark = marker(name)
        d = route(wrong, chat_body(f"{mark} " * 8, mark))
        assert d["state"] == "embedded", d
        sent.append(mark)
    hosts = [prefix, least, wrong]

    # The markers were there to be leaked: the plugin hashed their prompts
    # into Redis, the Redis gateways decided there, the refusals were logged,
    # and the plugin logged at debug about the bodies it could not read.
    contents = redis_contents(locked_redis)
    assert any(b":pc:" in key for _, key in contents), contents
    logs = [m for host in hosts for m in host.get_logs()]
    assert any("no prompt to match: body is not JSON" in m for m in logs), logs
    assert any("over maxBodyBytes" in m for m in logs), logs
    assert any(" -> " in m and "redis" in m for m in logs), logs  # enableDetailLog lines
    assert any("Redis unusable" in m for m in wrong.get_logs()), wrong.logs_text()
    # The slow log holds the plugin's commands with their arguments: the block
    # hashes of the prompts, where prompt text would be if it were sent.
    commands = slowlog(locked_redis)
    hashes = [key.rsplit(b":", 1)[-1] for _, key in contents if b":pc:" in key]
    assert any(h in commands for h in hashes), commands[:500]

    secrets = sent + [PASSWORD, WRONG]
    for (db, key), value in contents.items():
        assert found(key, secrets) == [] and found(value, secrets) == [], (db, key, value)
    assert found(commands, sent) == [], "prompt text sent to Redis"
    for host in hosts:
        assert found(everything_the_host_kept(host), secrets) == [], host.logs_text()


@pytest.mark.parametrize("password", [["{secret}"], {"value": "{secret}"}],
                         ids=["list", "object"])
def test_a_rejected_password_is_not_echoed(make_host, password):
    secret = marker("password")
    password = json.loads(json.dumps(password).replace("{secret}", secret))
    host = make_host(target="higress", clusters={REDIS_CLUSTER: ("127.0.0.1", 1)})
    host.set_property(["xds", "cluster_name"], CLUSTER.encode())
    config = plugin_config("prefix_cache", "higress", redis=1000, password=password)
    assert not host.start_plugin(config)
    errors = host.get_error_logs()
    assert any("password" in m for m in errors), host.logs_text()  # it names the field...
    assert found(host.logs_text(), [secret]) == [], host.logs_text()  # ...not its value
