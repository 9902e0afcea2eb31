"""The saved corpus (tests/fuzz/corpus/) through the whole plugin, natively and
in the built wasm: the VM never traps, no Python error is logged, every
request still gets through, and a configuration is accepted or refused with
an "invalid configuration" line.

    corpus/request/     request bodies, sent to a prefix_cache configuration
    corpus/prometheus/  /metrics bodies, the answer to a least_busy scrape
    corpus/status/      status JSON bodies, the answer to a queue_depth scrape
    corpus/resp/        Redis replies, the answer to the pick (higress build)
    corpus/config/      configuration documents, sent to on_configure

Files named gen-* are outcomes the sibling test modules' strategies produced
(a few per distinct outcome); the others are picked by hand; bug-* found a
parser bug once.
"""

import os

from ai_load_balancer import redis_state
from proxywasm.context import CONTINUE, PAUSE
from tests.llm_traffic import CLUSTER, REPLICAS, chat_body, finish, pinned, send, start

CORPUS = os.path.join(os.path.dirname(__file__), "corpus")
PLUGIN_ERRORS = ("plugin error in", "Traceback")
QUESTION = chat_body("You are a careful assistant. " * 4, "What is the rent?", model="m")


def entries(kind):
    folder = os.path.join(CORPUS, kind)
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            yield name, f.read()


def replay(kind, make, feed):
    """Feeds every entry of corpus/<kind> to a host from make(): feed(host,
    data) returns a problem or None. Fails listing every entry with a problem."""
    problems, fed = [], 0
    host = make()
    for name, data in entries(kind):
        fed += 1
        mark = len(host.logs)
        try:
            problem = feed(host, data)
        except Exception as exc:  # a trap, or a host call the test host refused
            problem = f"{exc.__class__.__name__}: {str(exc)[:300]}"
        errors = [m for _, m in host.logs[mark:] if any(e in m for e in PLUGIN_ERRORS)]
        if errors:
            problem = f"logged: {errors[0][:3000]}"
        if problem:
            problems.append(f"{kind}/{name}: {problem}")
            host = make()  # a fresh VM for the next entries
    stdout, stderr = host.get_stdio()
    assert "Traceback" not in stdout + stderr, stderr[-2000:]
    assert fed and not problems, "\n".join(problems) or f"corpus/{kind} is empty"


def fail_callouts(host):
    """Answers every pending callout as a network failure (a Redis retry after
    NOSCRIPT, a release, a scrape)."""
    for _ in range(5):
        for callout in list(host.pending):
            if callout.kind == "redis":
                host.call_on_redis_call_response(callout.token, None)
            else:
                host.call_on_http_call_response(callout.token, None)


def went_through(host, cid, action, reply=None):
    """None when the request continued, pinned to a replica if at all. With
    the Redis `reply` to its pick: a 'limit' pick may answer 429 locally, and
    the address Redis named is pinned as is (Higress lets the service's load
    balancing route an address it does not know)."""
    local = host.get_sent_local_response(cid)
    if reply is not None and is_limit(reply) and local is not None and local.status_code == 429:
        return None
    if action != CONTINUE and not host.is_request_resumed(cid):
        return f"request stopped (action {action}, local reply {local})"
    if reply is None and pinned(host, cid) not in REPLICAS + [None]:
        return f"pinned to {pinned(host, cid)!r}"
    return None


def request(host, body):
    cid, action = send(host, body)
    if action == PAUSE:
        fail_callouts(host)
    problem = went_through(host, cid, action)
    finish(host, cid)
    fail_callouts(host)
    return problem


def test_request_bodies(make_host):
    replay("request", lambda: start(make_host, "prefix_cache"), request)


class Clock:
    def __init__(self):
        self.ns = 1_800_000_000_000 * 1_000_000

    def __call__(self):
        return self.ns


def scraping(make_host, policy):
    """(make, feed) for replay(): each entry answers one scrape round of
    `policy`, then a request is routed by what was read."""
    def make():
        host = start(make_host, policy, metricsCluster=CLUSTER, scrapeInterval=100,
                     metricsStaleness=5000, healthCheck={"enabled": False})
        host.add_cluster(CLUSTER, ("127.0.0.1", 9))  # never reached: answered here
        host.now_ns = Clock()
        return host

    def feed(host, body):
        host.now_ns.ns += 1_000_000_000
        host.tick()
        scrapes = [c for c in host.pending if c.kind == "http"]
        if not scrapes:
            return "no scrape was sent"
        for callout in scrapes:
            host.call_on_http_call_response(callout.token, [(":status", "200")], body)
        host.tick()
        return request(host, QUESTION)
    return make, feed


def test_prometheus_bodies(make_host):
    replay("prometheus", *scraping(make_host, "least_busy"))


def test_status_bodies(make_host):
    replay("status", *scraping(make_host, "queue_depth"))


def test_redis_replies(make_host):
    def make():
        return start(make_host, "prefix_cache", target="higress", redis_address=("127.0.0.1", 9))

    def feed(host, reply):
        cid, action = send(host, QUESTION)
        if action != PAUSE:
            return f"the request did not wait for Redis (action {action})"
        (pick,) = [c for c in host.pending if c.kind == "redis"]
        host.call_on_redis_call_response(pick.token, reply)
        fail_callouts(host)
        problem = went_through(host, cid, action, reply)
        finish(host, cid)
        fail_callouts(host)
        return problem
    replay("resp", make, feed)


def is_limit(reply):
    try:
        redis_state.parse_pick(reply)
    except redis_state.LimitReached:
        return True
    except Exception:
        pass
    return False


def test_configurations(make_host):
    def feed(host, document):
        mark = len(host.logs)
        if not host.start_plugin(document):
            refused = [m for _, m in host.logs[mark:] if "invalid configuration" in m]
            return None if refused else "refused without an 'invalid configuration' line"
        return request(host, QUESTION)
    replay("config", make_host, feed)
