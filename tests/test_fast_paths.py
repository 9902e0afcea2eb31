"""The shim's C versions of hot pure functions answer as their Python
references do: in the built wasm they run in C (tests/plugins/hash_plugin.py
says which ran), natively the reference itself."""

import hashlib
import random

from ai_load_balancer import prefix_hash

HASH_PLUGIN = "hash_plugin"


def hashes_from(host, namespace, prompt, block_size, max_blocks):
    cid = host.init_http_context()
    host.call_on_request_headers(cid, [(":method", "POST"), (":path", "/"),
                                       ("x-namespace", namespace),
                                       ("x-block-size", str(block_size)),
                                       ("x-max-blocks", str(max_blocks))], end_of_stream=False)
    host.call_on_request_body(cid, prompt, end_of_stream=True)
    answer = host.get_sent_local_response(cid)
    host.complete_http_context(cid)
    assert answer is not None and answer.status_code == 200
    hashes = answer.body.decode().split("\n") if answer.body else []
    return hashes, answer.header("x-hashed-by")


def test_chained_prompt_hashes_match_the_reference(make_host):
    host = make_host(entry=HASH_PLUGIN, configuration=b"{}")
    rng = random.Random(11)
    expected_by = "python" if make_host.mode == "native" else "c"
    for case in range(60):
        namespace = rng.choice(["qwen\0", "llama\0salt", "模型\0"])
        size = rng.choice([0, 1, 63, 64, 65, 1000, 16384, 40000])
        alphabet = rng.choice([b"ab", bytes(range(256)), "好的 ".encode()])
        prompt = bytes(rng.choice(alphabet) for _ in range(size))
        block_size, max_blocks = rng.choice([16, 64, 100, 4096]), rng.choice([0, 1, 7, 256])
        hashes, by = hashes_from(host, namespace, prompt, block_size, max_blocks)
        key = hashlib.blake2b(namespace.encode(), digest_size=16).digest()
        assert by == expected_by
        assert hashes == prefix_hash.reference_hashes(key, prompt, block_size, max_blocks), case
