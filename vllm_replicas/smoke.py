"""Smoke check of a vLLM-compatible replica: the same ~2k-token chat twice, streamed.

    python3 vllm_replicas/smoke.py --endpoint 127.0.0.1:PORT
    python3 vllm_replicas/smoke.py --ports-file /tmp/vllm.json      # every endpoint in it

Prints, per endpoint, both TTFTs (request sent -> first SSE chunk with a choice: vLLM
sends it with the first generated token), the prompt's token count (from the usage chunk), and the
change of vllm:prefix_cache_hits_total. The second TTFT should be far lower:
the prompt's leading full KV blocks are reused (automatic prefix caching).
Standard library only; works against the simulator (sim/) too.
"""

import argparse
import http.client
import json
import random
import sys
import time

WORDS = ("the a of to and in is it you that he was for on are with as his they be at one "
         "have this from or had by word but what some we can out other were all there when "
         "up use your how said an each she which do their time if will way about many then "
         "them write would like so these her long make thing see him two has look more day "
         "could go come did number sound no most people my over know water than call first "
         "who may down side been now find any new work part take get place made live where "
         "system user assistant request reply model answer question document context").split()


def prompt_text(n_words, seed):
    rnd = random.Random(seed)
    return " ".join(rnd.choice(WORDS) for _ in range(n_words))


def request(host, port, method, path, body=None, timeout=120):
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data,
                     headers={"content-type": "application/json"} if data else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def count_tokens(host, port, model, text):
    """Tokens of `text` by the server's tokenizer (vLLM's /tokenize), or None."""
    try:
        status, body = request(host, port, "POST", "/tokenize", {"model": model, "prompt": text})
    except OSError:
        return None
    if status != 200:
        return None
    return json.loads(body).get("count")


def prompt_of(host, port, model, tokens, seed):
    """A prompt of about `tokens` tokens: starts from 1 word per token, then rescales once."""
    words = tokens
    text = prompt_text(words, seed)
    for _ in range(3):  # bounded
        n = count_tokens(host, port, model, text)
        if not n:
            return text, None
        if abs(n - tokens) <= tokens // 50:
            return text, n
        words = max(1, int(words * tokens / n))
        text = prompt_text(words, seed)
    return text, count_tokens(host, port, model, text)


def metric(host, port, name):
    status, body = request(host, port, "GET", "/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def chat_stream(host, port, model, text, max_tokens, timeout=300):
    """Streams one chat completion; returns (ttft_s, total_s, usage, replica_header, text)."""
    body = {"model": model, "stream": True, "stream_options": {"include_usage": True},
            "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "system", "content": "You answer briefly."},
                         {"role": "user", "content": text}]}
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        start = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", body=json.dumps(body).encode(),
                     headers={"content-type": "application/json"})
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {response.read()[:500]!r}")
        ttft = None
        usage = None
        pieces = []
        for _ in range(100_000):  # bounded
            line = response.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                break
            chunk = json.loads(payload)
            choices = chunk.get("choices") or []
            if choices and ttft is None:  # vLLM sends the first chunk with the first token
                ttft = time.perf_counter() - start
            for choice in choices:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    pieces.append(content)
            if chunk.get("usage"):
                usage = chunk["usage"]
        total = time.perf_counter() - start
        return ttft, total, usage, response.getheader("x-replica"), "".join(pieces)
    finally:
        conn.close()


def check(endpoint, model, tokens, max_tokens, seed):
    host, port = endpoint.rsplit(":", 1)
    port = int(port)
    if model is None:
        status, body = request(host, port, "GET", "/v1/models")
        model = json.loads(body)["data"][0]["id"]
    text, counted = prompt_of(host, port, model, tokens, seed)
    hits_before = metric(host, port, "vllm:prefix_cache_hits_total")
    runs = []
    for attempt in ("cold", "warm"):
        ttft, total, usage, replica, out = chat_stream(host, port, model, text, max_tokens)
        runs.append({"run": attempt, "ttft_ms": round(ttft * 1000, 1) if ttft else None,
                     "total_ms": round(total * 1000, 1),
                     "prompt_tokens": (usage or {}).get("prompt_tokens"),
                     "completion_tokens": (usage or {}).get("completion_tokens"),
                     "x_replica": replica})
    hits_after = metric(host, port, "vllm:prefix_cache_hits_total")
    return {"endpoint": endpoint, "model": model, "prompt_chars": len(text),
            "prompt_tokens_tokenize": counted, "runs": runs,
            "prefix_cache_hits_delta": hits_after - hits_before}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", action="append", default=[],
                        help="host:port (repeatable)")
    parser.add_argument("--ports-file", help="JSON with an 'endpoints' list (start.py, sim.fleet)")
    parser.add_argument("--model", help="default: the first of /v1/models")
    parser.add_argument("--tokens", type=int, default=2000, help="prompt size in tokens")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--seed", type=int, default=None,
                        help="prompt seed (default: time-based, so the first run is cold)")
    args = parser.parse_args(argv)
    endpoints = list(args.endpoint)
    if args.ports_file:
        with open(args.ports_file) as f:
            endpoints += json.load(f)["endpoints"]
    if not endpoints:
        parser.error("give --endpoint or --ports-file")
    seed = args.seed if args.seed is not None else time.time_ns()
    failed = False
    for i, endpoint in enumerate(endpoints):
        result = check(endpoint, args.model, args.tokens, args.max_tokens, seed + i)
        print(json.dumps(result))
        cold, warm = result["runs"]
        ok = (cold["ttft_ms"] and warm["ttft_ms"] and warm["ttft_ms"] < cold["ttft_ms"]
              and result["prefix_cache_hits_delta"] > 0)
        print(f"{endpoint}: TTFT cold {cold['ttft_ms']} ms, warm {warm['ttft_ms']} ms, "
              f"prompt {cold['prompt_tokens']} tokens, prefix-cache hits "
              f"+{result['prefix_cache_hits_delta']:.0f} tokens: {'OK' if ok else 'FAIL'}")
        failed |= not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
