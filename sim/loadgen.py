"""A small asyncio load generator for vLLM-compatible endpoints (bounded in count and time).

    python -m sim.loadgen --ports-file /tmp/ports.json --requests 2000 --concurrency 256 \
        --prompt-tokens 1000 --max-tokens 64 --shared-prefixes 8 --duration 120

Each request is a streamed chat completion sent to an endpoint picked at
random (or to a single --endpoint, e.g. a gateway in front of the replicas).
`--shared-prefixes K` makes prompts start with one of K long system prompts
(what prefix-aware routing exploits). Prints a JSON summary: requests/s,
tokens/s, TTFT and end-to-end percentiles, and which replica answered
(x-replica) how often.
"""

import argparse
import asyncio
import json
import random
import sys
import time

from sim import client


async def _one(host, port, body, timeout):
    start = time.perf_counter()
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        data = json.dumps(body).encode()
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: sim\r\n"
                     b"content-type: application/json\r\nconnection: close\r\n"
                     b"content-length: %d\r\n\r\n%s" % (len(data), data))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status = int(head.split(b" ", 2)[1])
        replica = None
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"x-replica:"):
                replica = line.split(b":", 1)[1].strip().decode()
        ttft = None
        usage = None
        deadline = start + timeout
        for _ in range(1_000_000):  # bounded
            left = max(0.001, deadline - time.perf_counter())
            line = await asyncio.wait_for(reader.readline(), left)
            if not line:
                break
            if not line.startswith(b"data: "):
                continue
            payload = line[6:].strip()
            if payload == b"[DONE]":
                break
            if ttft is None:
                ttft = time.perf_counter() - start
            if b'"usage"' in payload:
                usage = json.loads(payload).get("usage")
        return {"status": status, "replica": replica, "ttft": ttft,
                "e2e": time.perf_counter() - start, "usage": usage}
    finally:
        writer.close()


def _pct(values, q):
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 1)


async def run(endpoints, model, requests, concurrency, prompt_tokens, max_tokens,
              shared_prefixes, duration, timeout, seed):
    rnd = random.Random(seed)
    prefixes = [client.words(int(prompt_tokens * 0.6), seed * 1000 + k)
                for k in range(shared_prefixes)]
    sem = asyncio.Semaphore(concurrency)
    results = []
    stop_at = time.perf_counter() + duration

    async def task(i):
        async with sem:
            if time.perf_counter() > stop_at:
                return
            host, port = client.split(rnd.choice(endpoints))
            if prefixes:
                system = prefixes[rnd.randrange(len(prefixes))]
                user = client.words(int(prompt_tokens * 0.4), seed * 7 + i)
            else:
                system, user = "You are helpful.", client.words(prompt_tokens, seed * 7 + i)
            body = {"model": model, "stream": True, "max_tokens": max_tokens,
                    "stream_options": {"include_usage": True},
                    "messages": [{"role": "system", "content": system},
                                 {"role": "user", "content": user}]}
            try:
                results.append(await _one(host, port, body, timeout))
            except (OSError, asyncio.TimeoutError, ValueError, asyncio.IncompleteReadError) as e:
                results.append({"status": 0, "error": type(e).__name__})

    start = time.perf_counter()
    await asyncio.gather(*(task(i) for i in range(requests)))
    elapsed = time.perf_counter() - start
    ok = [r for r in results if r.get("status") == 200]
    tokens = sum((r.get("usage") or {}).get("completion_tokens", 0) for r in ok)
    replicas = {}
    for r in ok:
        replicas[r["replica"]] = replicas.get(r["replica"], 0) + 1
    return {"requests": len(results), "ok": len(ok), "elapsed_s": round(elapsed, 2),
            "requests_per_s": round(len(ok) / elapsed, 1),
            "output_tokens_per_s": round(tokens / elapsed, 1),
            "ttft_ms": {"p50": _pct([r["ttft"] for r in ok if r["ttft"]], 0.5),
                        "p90": _pct([r["ttft"] for r in ok if r["ttft"]], 0.9),
                        "p99": _pct([r["ttft"] for r in ok if r["ttft"]], 0.99)},
            "e2e_ms": {"p50": _pct([r["e2e"] for r in ok], 0.5),
                       "p99": _pct([r["e2e"] for r in ok], 0.99)},
            "by_replica": dict(sorted(replicas.items()))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", action="append", default=[])
    parser.add_argument("--ports-file")
    parser.add_argument("--model")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=500)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--shared-prefixes", type=int, default=0)
    parser.add_argument("--duration", type=float, default=300, help="stop sending after N s")
    parser.add_argument("--timeout", type=float, default=120, help="per request")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    endpoints = list(args.endpoint)
    if args.ports_file:
        with open(args.ports_file) as f:
            endpoints += json.load(f)["endpoints"]
    if not endpoints:
        parser.error("--endpoint or --ports-file")
    model = args.model or client.models(endpoints[0])[0]
    summary = asyncio.run(run(endpoints, model, args.requests, args.concurrency,
                              args.prompt_tokens, args.max_tokens, args.shared_prefixes,
                              args.duration, args.timeout, args.seed))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
