"""Measures a vLLM-compatible endpoint the same way for the real engine and the simulator.

    python3 -m sim.calibrate --endpoint 127.0.0.1:PORT --out real.json
    python3 -m sim.calibrate --compare real.json sim.json

Measurements (standard library only, streamed chat completions):
- prefill: TTFT of a fresh prompt ("cold") and of the same prompt again ("warm",
  a prefix-cache hit) for several prompt sizes; median of `--repeat` runs;
- decode: time per output token after the first (TPOT = (total - TTFT) /
  (tokens - 1)) with 1, 4, 16 concurrent requests
  (short prompts, `--decode-tokens` tokens each);
- queueing: the largest vllm:num_requests_waiting and kv_cache_usage_perc seen
  while `--burst` requests of `--burst-tokens` tokens are sent at once.
Prompt sizes are in the server's tokens (vLLM's /tokenize when it has it).
"""

import argparse
import json
import statistics
import sys
import threading
import time

from sim import client

SYSTEM = "You answer briefly."


def _messages(text):
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]


def prefill(endpoint, model, sizes, repeat, seed):
    rows = []
    for size in sizes:
        cold, warm, prompt_tokens = [], [], None
        for r in range(repeat):
            text = client.prompt_of(endpoint, model, size, seed + size * 1000 + r)
            a = client.chat_stream(endpoint, model, _messages(text), max_tokens=2)
            b = client.chat_stream(endpoint, model, _messages(text), max_tokens=2)
            cold.append(a["ttft_s"])
            warm.append(b["ttft_s"])
            prompt_tokens = (a["usage"] or {}).get("prompt_tokens")
        rows.append({"target_tokens": size, "prompt_tokens": prompt_tokens,
                     "cold_ttft_ms": round(statistics.median(cold) * 1000, 1),
                     "warm_ttft_ms": round(statistics.median(warm) * 1000, 1),
                     "cold_all_ms": [round(x * 1000, 1) for x in cold],
                     "warm_all_ms": [round(x * 1000, 1) for x in warm]})
        print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def _concurrent(endpoint, model, prompts, max_tokens, timeout=600, on_poll=None):
    results = [None] * len(prompts)

    def one(i):
        results[i] = client.chat_stream(endpoint, model, _messages(prompts[i]),
                                        max_tokens=max_tokens, timeout=timeout,
                                        extra={"ignore_eos": True})

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(prompts))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        if on_poll:
            on_poll()
        time.sleep(0.05)
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic()))
    return results


def decode(endpoint, model, batches, tokens, seed):
    rows = []
    for n in batches:
        prompts = [client.words(48, seed + 7919 * n + i) for i in range(n)]
        results = _concurrent(endpoint, model, prompts, tokens)
        # Time per output token after the first: chunks may arrive in bursts
        # when the API server falls behind, so per-chunk gaps are noisy.
        tpot = [(r["total_s"] - r["ttft_s"]) / (r["usage"]["completion_tokens"] - 1)
                for r in results if r and r.get("usage") and r["usage"]["completion_tokens"] > 1]
        rows.append({"concurrency": n, "itl_ms_mean": round(statistics.mean(tpot) * 1000, 2),
                     "itl_ms_median": round(statistics.median(tpot) * 1000, 2),
                     "ttft_ms_median": round(statistics.median(
                         r["ttft_s"] for r in results if r and r["ttft_s"]) * 1000, 1)})
        print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def burst(endpoint, model, count, tokens, max_tokens, seed):
    seen = {"waiting": 0.0, "running": 0.0, "kv": 0.0}

    def poll():
        try:
            samples = client.metrics(endpoint)
        except OSError:
            return
        seen["waiting"] = max(seen["waiting"],
                              client.metric_value(samples, "vllm:num_requests_waiting"))
        seen["running"] = max(seen["running"],
                              client.metric_value(samples, "vllm:num_requests_running"))
        seen["kv"] = max(seen["kv"], client.metric_value(samples, "vllm:kv_cache_usage_perc"))

    base_words = len(client.prompt_of(endpoint, model, tokens, seed).split())
    prompts = [client.words(base_words, seed + 31 * i) for i in range(count)]
    before = client.metrics(endpoint)
    start = time.perf_counter()
    results = _concurrent(endpoint, model, prompts, max_tokens, on_poll=poll)
    elapsed = time.perf_counter() - start
    after = client.metrics(endpoint)

    def delta(name):
        return client.metric_value(after, name) - client.metric_value(before, name)

    def mean_ms(name):
        n = delta(name + "_count")
        return round(delta(name + "_sum") / n * 1000, 1) if n else None

    ttfts = sorted(r["ttft_s"] for r in results if r and r["ttft_s"])
    return {"requests": count, "prompt_tokens": tokens, "max_tokens": max_tokens,
            "server_steps": delta("vllm:iteration_tokens_total_count"),
            "server_queue_ms_mean": mean_ms("vllm:request_queue_time_seconds"),
            "server_prefill_ms_mean": mean_ms("vllm:request_prefill_time_seconds"),
            "server_ttft_ms_mean": mean_ms("vllm:time_to_first_token_seconds"),
            "server_e2e_ms_mean": mean_ms("vllm:e2e_request_latency_seconds"),
            "prefix_cache_hits": delta("vllm:prefix_cache_hits_total"),
            "preemptions": delta("vllm:num_preemptions_total"),
            "max_waiting": seen["waiting"], "max_running": seen["running"],
            "max_kv_cache_usage": round(seen["kv"], 3), "elapsed_s": round(elapsed, 2),
            "ttft_ms_p50": round(ttfts[len(ttfts) // 2] * 1000, 1) if ttfts else None,
            "ttft_ms_max": round(ttfts[-1] * 1000, 1) if ttfts else None,
            "ok": sum(1 for r in results if r and r.get("status") == 200)}


def measure(endpoint, sizes=(128, 512, 1024, 2048, 3072), repeat=3, batches=(1, 4, 16),
            decode_tokens=48, burst_count=24, burst_tokens=2000, burst_max_tokens=32, seed=None):
    seed = time.time_ns() % 1_000_000_007 if seed is None else seed
    model = client.models(endpoint)[0]
    client.chat_stream(endpoint, model, _messages("warm up"), max_tokens=4)
    out = {"endpoint": endpoint, "model": model}
    out["prefill"] = prefill(endpoint, model, sizes, repeat, seed)
    out["decode"] = decode(endpoint, model, batches, decode_tokens, seed)
    if burst_count:
        out["burst"] = burst(endpoint, model, burst_count, burst_tokens, burst_max_tokens, seed)
        print(json.dumps(out["burst"]), file=sys.stderr)
    return out


def compare(a, b):
    """A side-by-side text table of two measure() results."""
    lines = [f"{'':28}{a.get('label', 'A'):>22}{b.get('label', 'B'):>22}"]
    for ra, rb in zip(a["prefill"], b["prefill"]):
        lines.append(f"cold TTFT {ra['target_tokens']:>5} tok (ms)    "
                     f"{ra['cold_ttft_ms']:>22}{rb['cold_ttft_ms']:>22}")
        lines.append(f"warm TTFT {ra['target_tokens']:>5} tok (ms)    "
                     f"{ra['warm_ttft_ms']:>22}{rb['warm_ttft_ms']:>22}")
    for ra, rb in zip(a["decode"], b["decode"]):
        lines.append(f"ITL at concurrency {ra['concurrency']:>3} (ms)  "
                     f"{ra['itl_ms_mean']:>22}{rb['itl_ms_mean']:>22}")
    if "burst" in a and "burst" in b:
        for key in ("max_waiting", "max_running", "max_kv_cache_usage", "ttft_ms_p50",
                    "ttft_ms_max", "elapsed_s", "server_steps", "server_queue_ms_mean",
                    "server_prefill_ms_mean", "server_ttft_ms_mean", "server_e2e_ms_mean",
                    "preemptions"):
            lines.append(f"burst {key:<22}{a['burst'].get(key)!s:>22}"
                         f"{b['burst'].get(key)!s:>22}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint")
    parser.add_argument("--label", default="")
    parser.add_argument("--out")
    parser.add_argument("--sizes", default="128,512,1024,2048,3072")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batches", default="1,4,16")
    parser.add_argument("--decode-tokens", type=int, default=48)
    parser.add_argument("--burst", type=int, default=24)
    parser.add_argument("--burst-tokens", type=int, default=2000)
    parser.add_argument("--burst-max-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"))
    args = parser.parse_args(argv)
    if args.compare:
        with open(args.compare[0]) as fa, open(args.compare[1]) as fb:
            print(compare(json.load(fa), json.load(fb)))
        return 0
    if not args.endpoint:
        parser.error("--endpoint or --compare")
    out = measure(args.endpoint, [int(x) for x in args.sizes.split(",")], args.repeat,
                  [int(x) for x in args.batches.split(",")], args.decode_tokens, args.burst,
                  args.burst_tokens, args.burst_max_tokens, args.seed)
    out["label"] = args.label or args.endpoint
    text = json.dumps(out, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
