"""What one pick costs Redis with the script sent each time (EVAL) or by its SHA1
(EVALSHA), for global_least_request and prefix_cache (256 block hashes), with
the release each pick is followed by (always EVAL: it is short).

    .venv/bin/python bench/redis_pick_cost.py [--picks 3000]

Starts a redis-server on loopback, runs the plugin's own pick and release commands
over one connection, and reports bytes per pick, Redis's own time per pick and
release (INFO commandstats) and the client's round trip for both. Every pick
sends the same prompt, so after the first the chosen replica holds its blocks.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "plugin")]

from ai_load_balancer import redis_state  # noqa: E402
from tests.conftest import RedisServer  # noqa: E402
from tests.host.upstream import RedisClient  # noqa: E402

REPLICAS = [f"10.0.0.{i}:8000" for i in range(1, 9)]


def script_usec(server):
    """Redis's total time in EVAL and EVALSHA calls since the last RESETSTAT (µs)."""
    total = 0
    for line in server.command("INFO", "commandstats").decode().split("\r\n"):
        if line.startswith(("cmdstat_eval:", "cmdstat_evalsha:")):
            total += int(line.split("usec=")[1].split(",")[0])
    return total


def measure(server, picks, cached, hashes):
    client = RedisClient(server.address)
    gap = 4 if hashes else -1
    command = lambda i: redis_state.pick_command(  # noqa: E731
        "outbound|8000||vllm", "gw1", 30000, i, REPLICAS, hashes, gap, request_id=str(i),
        cached=cached)
    client.call(redis_state.pick_command("outbound|8000||vllm", "gw1", 30000, 0, REPLICAS,
                                         hashes, gap))  # loads the script
    server.command("CONFIG", "RESETSTAT")
    started = time.perf_counter()
    for i in range(picks):
        pick = redis_state.parse_pick(client.call(command(i)))
        assert pick.address in REPLICAS
        client.call(redis_state.release_command("outbound|8000||vllm", "gw1", str(i), 30000))
    round_trip = (time.perf_counter() - started) / picks
    client.close()
    return len(command(0)), script_usec(server) / picks, round_trip


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--picks", type=int, default=3000)
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="ailb-redis-bench-")
    server = RedisServer(shutil.which("redis-server"), directory)
    try:
        hashes = [f"{i:016x}" for i in range(256)]
        print("| pick | sent as | bytes per pick | Redis µs (pick + release) "
              "| round trip µs (pick + release) |")
        print("|---|---|---:|---:|---:|")
        for label, blocks in (("global_least_request", []), ("prefix_cache, 256 blocks", hashes)):
            for cached in (False, True, False, True):  # interleaved
                size, redis_us, rtt = measure(server, args.picks, cached, blocks)
                print(f"| {label} | {'EVALSHA' if cached else 'EVAL'} | {size} | "
                      f"{redis_us:.1f} | {rtt * 1e6:.0f} |")
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
