"""The shim's C versions of hot pure functions answer as their Python
references do: in the built wasm they run in C (tests/plugins/fast_paths_plugin.py
says which ran), natively the reference itself."""

import json
import random

import pytest

from ai_load_balancer import llm_request, prefix_hash

PLUGIN = "fast_paths_plugin"


def answered(host, path, body, headers=()):
    """(answer body, "c" | "python") of the test plugin for `body` at `path`."""
    cid = host.init_http_context()
    host.call_on_request_headers(cid, [(":method", "POST"), (":path", path), *headers],
                                 end_of_stream=False)
    host.call_on_request_body(cid, body, end_of_stream=True)
    answer = host.get_sent_local_response(cid)
    host.complete_http_context(cid)
    assert answer is not None and answer.status_code == 200
    return answer.body, answer.header("x-answered-by")


def hashes_from(host, namespace, prompt, block_size, max_blocks):
    body, by = answered(host, "/hash", prompt, [("x-namespace", namespace),
                                                ("x-block-size", str(block_size)),
                                                ("x-max-blocks", str(max_blocks))])
    return (body.decode().split("\n") if body else []), by


def test_chained_prompt_hashes_match_the_reference(make_host):
    host = make_host(entry=PLUGIN, configuration=b"{}")
    rng = random.Random(11)
    expected_by = "python" if make_host.mode == "native" else "c"
    for case in range(60):
        namespace = rng.choice(["qwen\0", "llama\0salt", "模型\0", "Qwen/Qwen2.5-7B\0" * 3])
        size = rng.choice([0, 1, 63, 64, 65, 1000, 16384, 40000])
        alphabet = rng.choice([b"ab", bytes(range(256)), "好的 ".encode()])
        prompt = bytes(rng.choice(alphabet) for _ in range(size))
        block_size, max_blocks = rng.choice([16, 64, 100, 4096]), rng.choice([0, 1, 7, 256])
        hashes, by = hashes_from(host, namespace, prompt, block_size, max_blocks)
        assert by == expected_by
        assert hashes == prefix_hash.reference_hashes(namespace.encode(), prompt, block_size,
                                                      max_blocks), case


def test_the_reference_is_xxh64():
    """Vectors of the xxHash specification, and the chain built from them."""
    assert prefix_hash.xxh64(b"") == 0xEF46DB3751D8E999
    assert prefix_hash.xxh64(b"abc") == 0x44BC2CF5AD770999
    seed = prefix_hash.xxh64(b"qwen\0")
    first = prefix_hash.xxh64(b"a" * 64, seed)
    assert prefix_hash.reference_hashes(b"qwen\0", b"a" * 130, 64, 256) == [
        f"{first:016x}", f"{prefix_hash.xxh64(b'a' * 64, first):016x}"]


def random_index(rng, case):
    """Prompts of a few shared stems recorded on a few replicas at random
    times, with small slot tables (collisions), cache sizes and TTLs that
    forget some of them, and lookups of prompts recorded, extended or not."""
    stems = [[f"{rng.getrandbits(64):016x}" for _ in range(rng.randint(1, 40))]
             for _ in range(3)]

    def prompt():
        stem = rng.choice(stems)
        cut = rng.randint(0, len(stem))
        return stem[:cut] + [f"{rng.getrandbits(64):016x}" for _ in range(rng.randint(0, 5))]

    addresses = [f"10.0.0.{i}:8000" for i in range(rng.randint(1, 5))]
    # record times, TTLs and lookup times on a grid: expiries meet them exactly
    records = [[prompt(), rng.choice(addresses), rng.randrange(0, 101, 20), 0]
               for _ in range(rng.randint(0, 30))]
    for record in records:
        record[3] = rng.choice([0, 0, rng.randint(0, len(record[0]))])
    return {"namespace": f"t{case}", "capacity": rng.choice([3, 17, 1000]),
            "ttl_s": rng.choice([40, 60, 1000]),
            "sizes": {a: rng.choice([0, 10, 50]) for a in addresses if rng.random() < 0.7},
            "records": records,
            "queries": [[prompt(), rng.randrange(60, 141, 10)] for _ in range(10)]}


def test_prefix_index_in_c_matches_the_reference(make_host):
    host = make_host(entry=PLUGIN, configuration=b"{}")
    rng = random.Random(7)
    expected_by = "python" if make_host.mode == "native" else "c"
    found = aging = 0
    for case in range(40):
        body, by = answered(host, "/index", json.dumps(random_index(rng, case)).encode())
        assert by == expected_by
        answer = json.loads(body)
        assert "differ" not in answer, (case, answer)  # the slots record() wrote
        for fast, reference in answer:
            assert fast == reference, case
            found += bool(reference[0])
            aging += bool(reference[1])
    assert found > 100 and aging > 20  # the cases are not all empty


def random_inflight(rng):
    """A record of a few VMs (some of their leases expired) and steps of picks,
    releases and renewals by those VMs and new ones."""
    vms, addresses = [f"vm{i}" for i in range(4)], [f"10.0.0.{i}:8000" for i in range(5)]
    lines = []
    for vm in rng.sample(vms, rng.randint(0, 3)):
        slots = []
        for address in rng.sample(addresses, rng.randint(0, 3)):
            requests = rng.randint(0, 3)  # an address has requests or work (never 0 0)
            slots.append(f"{address} {requests} {rng.choice([0, 0, 40]) if requests else 40}")
        lines.append(" ".join([vm, str(rng.choice([950, 1000, 1050, 1100]))] + slots))
    steps = []
    for _ in range(rng.randint(1, 8)):
        unreleased = {a: [rng.randint(0, 2), rng.choice([0, 40])]
                      for a in rng.sample(addresses, rng.randint(0, 2))}
        choose = rng.choice([None, None, "none", "raise", [rng.choice(addresses),
                                                           rng.choice([0, 7])]])
        steps.append({"vm": rng.choice(vms), "now": rng.choice([950, 1000, 1050]), "lease": 50,
                      "unreleased": unreleased, "choose": choose})
    return {"record": "\n".join(lines), "steps": steps}


@pytest.mark.parametrize("host_mode", ["wasm"], indirect=True)  # natively only the reference
def test_inflight_update_in_c_matches_the_reference(make_host):
    host = make_host(entry=PLUGIN, configuration=b"{}")
    rng = random.Random(3)
    picks = changed = 0
    for case in range(80):
        body, by = answered(host, "/inflight", json.dumps(random_inflight(rng)).encode())
        assert by == "c"
        for fast, reference in json.loads(body):
            assert fast == reference, case
            picks += fast[1] is not None
            changed += bool(fast[3])
    assert picks > 30 and changed > 100  # the cases are not all empty


TEXTS = ["hello", "", "a \"quoted\" \\ back\\slash / slash", "tab\tnew\nline\r\x00nul\x1f",
         "héllo wörld", "日本語のテキスト", "emoji 😀 and 𝄞", "\u2028\u2029", "<|user|>"]


def random_text(rng):
    return "".join(rng.choice(TEXTS) for _ in range(rng.randint(0, 4))) * rng.randint(1, 3)


def chat_doc(rng):
    """A chat completion body as clients send them, in a random key order."""
    doc = {"messages": [{"role": rng.choice(["system", "user", "assistant", "tool", "日"]),
                         "content": random_text(rng)} for _ in range(rng.randint(0, 5))]}
    extras = {"model": random_text(rng) or "qwen", "stream": True, "max_tokens": 64,
              "temperature": 0.7, "stop": ["\n", "x"], "n": None, "user": "u-1",
              "stream_options": {"include_usage": True}, "logit_bias": {"50256": -100},
              "cache_salt": random_text(rng), "seed": -12345678901234567890, "top_p": 1e-3}
    for key in rng.sample(sorted(extras), rng.randint(0, len(extras))):
        doc[key] = extras[key]
    for i, message in enumerate(doc["messages"]):
        if rng.random() < 0.2:
            message["name"] = "someone"
        if rng.random() < 0.3:  # content before role: read another way
            doc["messages"][i] = dict(reversed(list(message.items())))
    items = list(doc.items())
    rng.shuffle(items)
    return dict(items)


def encoded(rng, doc):
    separators = rng.choice([(",", ":"), (", ", ": "), (" ,\n", " :\t")])
    return json.dumps(doc, ensure_ascii=rng.random() < 0.3, separators=separators).encode()


def odd_body(rng):
    """Bodies the C reader must leave to the Python parser, or reject as it does."""
    doc, body = chat_doc(rng), None
    kind = rng.randrange(12)
    if kind == 0:
        doc["tools"] = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    elif kind == 1 and doc["messages"]:
        doc["messages"][0]["content"] = [{"type": "text", "text": "part"},
                                         {"type": "image_url", "image_url": {"url": "u"}}]
    elif kind == 2:
        doc = {"model": "m", "prompt": ["a prompt", "another"]}
    elif kind == 3:
        doc["messages"].append({"role": None, "content": 5})
    elif kind == 4:
        doc["messages"].append("not an object")
    body = encoded(rng, doc)
    if kind == 5:  # a key given twice: the last one counts
        body = body[:-1] + b', "model": "second", "messages": []}'
    elif kind == 6:
        body = body[:rng.randrange(len(body))]  # truncated
    elif kind == 7 and len(body) > 2:
        i = rng.randrange(1, len(body) - 1)
        body = body[:i] + bytes([rng.randrange(256)]) + body[i + 1:]  # one byte changed
    elif kind == 8:
        body = b"\xef\xbb\xbf" + body  # a UTF-8 byte order mark
    elif kind == 9:
        body = body[:-1] + b', "x": NaN, "y": [[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]}'
    elif kind == 10:
        body = body[:-1] + b', "messages": [{"role": "user", "content": "\\ud800 lone"}]}'
    elif kind == 11:
        body = body + rng.choice([b" ", b" x", b"{}", b"\n"])  # trailing bytes
    return body


def test_chat_bodies_read_in_c_match_the_python_parser(make_host):
    host = make_host(entry=PLUGIN, configuration=b"{}")
    rng = random.Random(5)
    fast_answers = 0
    cases = [encoded(rng, chat_doc(rng)) for _ in range(120)] + \
        [odd_body(rng) for _ in range(240)]
    for case, body in enumerate(cases):
        text, by = answered(host, "/parse", body)
        answer, fast = json.loads(text), by == "c"
        try:
            request = llm_request.parse_json(body)
            expected = {"model": request.model, "salt": request.cache_salt,
                        "prompt": request.prompt.decode("latin-1")}
        except llm_request.NotAnLLMRequest as exc:
            expected = {"error": str(exc)}
        if make_host.mode == "wasm" and body.startswith(b"\xef\xbb\xbf"):
            expected = {"error": "the VM embeds no utf-8-sig codec"}  # as llm_request says
        assert ("error" in answer) == ("error" in expected), (case, body[:120], answer)
        if "error" not in expected:
            assert answer == expected, (case, body[:200])
        fast_answers += fast and case < 120
    # In the VM the C reader takes the common bodies (not those with astral
    # characters escaped as surrogate pairs); natively there is no C reader.
    assert fast_answers >= (60 if make_host.mode == "wasm" else 0)
    assert make_host.mode == "wasm" or fast_answers == 0
