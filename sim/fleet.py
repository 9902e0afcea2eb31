"""A fleet of simulated vLLM replicas in one process (one asyncio loop).

Command line:

    python -m sim.fleet --replicas 16 --base-port 0 --profile a100-7b --ports-file /tmp/ports.json
    # prints {"endpoints": ["127.0.0.1:P0", ...], "names": ["r0", ...], ...} and serves
    # until SIGINT/SIGTERM (or stdin closes with --stdin, or --duration seconds pass)

    options: --set num_blocks=64 --set time_scale=0.5 (any Profile field),
             --lora adapterA,adapterB (served LoRA adapters), --max-loras 2,
             --name-prefix r, --host 127.0.0.1, --list-profiles

Python, in-process (the loop runs in a background thread):

    from sim.fleet import Fleet
    with Fleet.start(16, "a100-7b") as fleet:
        fleet.addresses          # ["127.0.0.1:P0", ...]
        fleet.replicas[0].engine # the engine, for inspection (read it via fleet.call)

or in a child process (no GIL shared with the caller):

    with Fleet.start(64, "a10-7b", subprocess=True) as fleet: ...

or on the caller's own asyncio loop:

    replicas = await start_replicas(4, "vllm-cpu-tiny")
"""

import argparse
import asyncio
import json
import os
import signal
import subprocess as _subprocess
import sys
import threading

from sim import profiles
from sim.server import LOOPBACK, Replica

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


async def start_replicas(count, profile="a100-7b", base_port=0, host=LOOPBACK,
                         name_prefix="r", **overrides):
    """Starts `count` replicas on the running loop; returns them (started)."""
    replicas = []
    try:
        for i in range(count):
            port = base_port + i if base_port else 0
            replica = Replica(f"{name_prefix}{i}", profile, host=host, port=port, seed=i,
                              **overrides)
            await replica.start()
            replicas.append(replica)
    except BaseException:
        for r in replicas:
            await r.stop()
        raise
    return replicas


class Fleet:
    """Replicas served by a background event loop (or a child process)."""

    def __init__(self):
        self.replicas = []
        self.addresses = []
        self.names = []
        self.profile = None
        self._loop = None
        self._thread = None
        self._proc = None

    @property
    def endpoints(self):
        return self.addresses

    @classmethod
    def start(cls, count, profile="a100-7b", *, base_port=0, host=LOOPBACK, name_prefix="r",
              subprocess=False, timeout=30, **overrides):
        fleet = cls()
        fleet.profile = profiles.get(profile, **overrides)
        if subprocess:
            fleet._start_process(count, profile, base_port, host, name_prefix, timeout,
                                 overrides)
            return fleet
        ready = threading.Event()
        box = {}

        def run():
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            fleet._loop = loop
            try:
                box["replicas"] = loop.run_until_complete(start_replicas(
                    count, profile, base_port, host, name_prefix, **overrides))
            except BaseException as e:  # reported to the caller
                box["error"] = e
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(asyncio.gather(
                    *(r.stop() for r in box["replicas"]), return_exceptions=True))
                loop.close()

        fleet._thread = threading.Thread(target=run, name="sim-fleet", daemon=True)
        fleet._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError("fleet did not start")
        if "error" in box:
            raise box["error"]
        fleet.replicas = box["replicas"]
        fleet.addresses = [r.address for r in fleet.replicas]
        fleet.names = [r.name for r in fleet.replicas]
        return fleet

    def _start_process(self, count, profile, base_port, host, name_prefix, timeout, overrides):
        name = profile if isinstance(profile, str) else profile.name
        cmd = [sys.executable, "-m", "sim.fleet", "--replicas", str(count), "--profile", name,
               "--base-port", str(base_port), "--host", host, "--name-prefix", name_prefix,
               "--stdin"]
        if not isinstance(profile, str):  # a Profile object: pass its fields
            overrides = {**{k: v for k, v in vars(profile).items() if k != "name"}, **overrides}
        for key, value in overrides.items():
            if isinstance(value, (tuple, list)):
                value = ",".join(value)
            cmd += ["--set", f"{key}={value}"]
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        self._proc = _subprocess.Popen(cmd, stdin=_subprocess.PIPE, stdout=_subprocess.PIPE,
                                       text=True, cwd=ROOT, env=env)
        box = {}
        reader = threading.Thread(target=lambda: box.setdefault("line",
                                                                self._proc.stdout.readline()),
                                  daemon=True)
        reader.start()
        reader.join(timeout)
        if not box.get("line"):
            self.stop()
            raise RuntimeError("fleet process did not start")
        info = json.loads(box["line"])
        self.addresses = info["endpoints"]
        self.names = info["names"]

    def call(self, fn, *args, timeout=10):
        """Runs fn(*args) on the fleet's loop (in-process fleets); returns its result.
        fn may be a coroutine function."""
        if self._loop is None:
            raise RuntimeError("only for in-process fleets")

        async def run():
            result = fn(*args)
            if asyncio.iscoroutine(result):
                result = await result
            return result
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def stop(self):
        if self._loop is not None and self._thread is not None:
            if self._loop.is_running():
                self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None
        if self._proc is not None:
            if self._proc.poll() is None:
                try:
                    self._proc.stdin.close()
                    self._proc.wait(10)
                except (_subprocess.TimeoutExpired, OSError):
                    self._proc.kill()
                    self._proc.wait(5)
            self._proc = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def __iter__(self):
        return iter(self.addresses)

    def __len__(self):
        return len(self.addresses)


def _parse_value(text):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text in ("None", "none", "null"):
        return None
    return text


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="A fleet of simulated vLLM replicas.")
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--profile", default="a100-7b", help=f"one of {sorted(profiles.PROFILES)}")
    parser.add_argument("--base-port", type=int, default=0,
                        help="first port (then +1, ...); 0 = free ports")
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--name-prefix", default="r")
    parser.add_argument("--ports-file", default="")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a profile field (repeatable)")
    parser.add_argument("--lora", default="", help="comma-separated LoRA adapter names")
    parser.add_argument("--max-loras", type=int)
    parser.add_argument("--time-scale", type=float)
    parser.add_argument("--stdin", action="store_true", help="stop when stdin closes")
    parser.add_argument("--duration", type=float, default=0, help="stop after N seconds")
    parser.add_argument("--list-profiles", action="store_true")
    return parser.parse_args(argv)


async def _serve(args):
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key.strip()] = _parse_value(value.strip())
    if args.lora:
        overrides["lora_adapters"] = args.lora
    if args.max_loras is not None:
        overrides["max_loras"] = args.max_loras
    if args.time_scale is not None:
        overrides["time_scale"] = args.time_scale
    replicas = await start_replicas(args.replicas, args.profile, args.base_port, args.host,
                                    args.name_prefix, **overrides)
    profile = replicas[0].profile
    info = {"endpoints": [r.address for r in replicas], "names": [r.name for r in replicas],
            "profile": profile.name, "model": profile.model,
            "lora_adapters": list(profile.lora_adapters), "pid": os.getpid()}
    if args.ports_file:
        tmp = args.ports_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(info, f)
        os.replace(tmp, args.ports_file)
    print(json.dumps(info), flush=True)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if args.stdin:
        def watch_stdin():
            sys.stdin.read()
            loop.call_soon_threadsafe(stop.set)
        threading.Thread(target=watch_stdin, daemon=True).start()
    try:
        if args.duration:
            await asyncio.wait_for(stop.wait(), args.duration)
        else:
            await stop.wait()
    except asyncio.TimeoutError:
        pass
    finally:
        await asyncio.gather(*(r.stop() for r in replicas), return_exceptions=True)
        if args.ports_file:
            try:
                os.unlink(args.ports_file)
            except OSError:
                pass


def main(argv=None):
    args = parse_args(argv)
    if args.list_profiles:
        for p in profiles.PROFILES.values():
            print(json.dumps({k: v for k, v in vars(p).items()}))
        return 0
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
