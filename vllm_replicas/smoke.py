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
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sim import client  # noqa: E402  (standard library only)

HITS = "vllm:prefix_cache_hits_total"


def check(endpoint, model, tokens, max_tokens, seed):
    model = model or client.models(endpoint)[0]
    text = client.prompt_of(endpoint, model, tokens, seed)
    messages = [{"role": "system", "content": "You answer briefly."},
                {"role": "user", "content": text}]
    hits_before = client.metric_value(client.metrics(endpoint), HITS)
    runs = []
    for attempt in ("cold", "warm"):
        r = client.chat_stream(endpoint, model, messages, max_tokens)
        usage = r.get("usage") or {}
        runs.append({"run": attempt,
                     "ttft_ms": round(r["ttft_s"] * 1000, 1) if r["ttft_s"] else None,
                     "total_ms": round(r.get("total_s", 0) * 1000, 1),
                     "prompt_tokens": usage.get("prompt_tokens"),
                     "completion_tokens": usage.get("completion_tokens"),
                     "x_replica": r.get("replica")})
    hits_after = client.metric_value(client.metrics(endpoint), HITS)
    return {"endpoint": endpoint, "model": model, "prompt_chars": len(text), "runs": runs,
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
