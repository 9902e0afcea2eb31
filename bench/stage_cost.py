"""Where one request's time goes in the plugin: per callback and per stage.

    .venv/bin/python bench/stage_cost.py [--requests 200] [--wasm PATH] [--out FILE]
    .venv/bin/python bench/stage_cost.py --envoy [--requests 600] [--out FILE]

Builds the plugin with bench/stage_probe.py as its entry (the plugin with a
stopwatch on its callbacks, host calls and decision stages), unless --wasm
names such a build, and drives whole requests (context create, request
headers, body, response headers, a streamed answer's first chunk, done/log/
delete) through it in the wasmtime test host and natively in CPython, with
state embedded in shared data. Per policy and body size it reports, per
request:
  host-side callback time   what the test host measured around each call into
                            the VM (wasmtime entering and leaving, the shim,
                            CPython, the plugin)
  python-side callback time the probe's own measure of the same callback inside
                            CPython: the difference is the price of entering
  stages and host calls     the decision's parts: inclusive, and without the
                            host calls inside them (the test host's host calls
                            are Python, far dearer than Envoy's)
wasmtime is not V8: the absolute numbers are not Envoy's (bench/gateway_cost.py
measures Envoy), the proportions are what this table is for.

--envoy runs the same probe build in Envoy 1.40 (one worker) in front of
bench/gateway_cost.py's replicas, one request at a time with
bench/gateway_cost.py's bodies (half shared, half unique), and reads the
probe's table from Envoy's log: there the host calls are Envoy's own, timed
from inside the VM, and the time outside Python (V8 entering the module, the
shim) is what bench/gateway_cost.py adds over this table.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, os.path.join(ROOT, "plugin"), HERE]

import envoy_harness as harness  # noqa: E402
from plugin_cost import body_of  # noqa: E402
from routing_quality import chat_body  # noqa: E402
from tests.host.emulator import HostEmulator  # noqa: E402
from tests.host.native import NativePlugin  # noqa: E402
from tests.host.wasm import WasmPlugin  # noqa: E402
from tests.llm_traffic import plugin_config, send  # noqa: E402

PROBE = "stage_probe"
REPORT_KEY = b"stage-probe"
REPORT_EVERY = 50  # as stage_probe.REPORT_EVERY
CASES = [("header", None), ("round_robin", 32 * 1024), ("global_least_request", 32 * 1024),
         ("prefix_cache", 1024), ("prefix_cache", 32 * 1024), ("prefix_cache", 256 * 1024)]
CHUNK = b'data: {"choices": [{"delta": {"content": " token"}}]}\n\n'


def build_probe(out_dir):
    subprocess.run([sys.executable, os.path.join(ROOT, "build", "make.py"), "--target", "envoy",
                    "--path", HERE, "--entry", PROBE, "--name", "stage-probe", "--out", out_dir],
                   check=True, stdout=subprocess.DEVNULL)
    return os.path.join(out_dir, "stage-probe-envoy.wasm")


class TimedHost(HostEmulator):
    """The test host, timing each call into the plugin by callback name."""

    def __init__(self):
        super().__init__(target="envoy")
        self.times = {}

    def _call(self, callback, context_id, *args):
        started = time.perf_counter_ns()
        try:
            return super()._call(callback, context_id, *args)
        finally:
            entry = self.times.setdefault(callback[len("proxy_on_"):], [0, 0])
            entry[0] += 1
            entry[1] += time.perf_counter_ns() - started


def one_request(host, body):
    cid, _ = send(host, body)
    host.call_on_response_headers(cid, [(":status", "200")], end_of_stream=False)
    host.call_on_response_body(cid, CHUNK, end_of_stream=False)
    host.call_on_response_body(cid, CHUNK, end_of_stream=False)
    host.call_on_response_body(cid, b"data: [DONE]\n\n", end_of_stream=True)
    host.complete_http_context(cid)


def measure(mode, policy, size, requests, wasm):
    """{"host": {callback: us per request}, "probe": {name: us per request}}."""
    host = TimedHost()
    host.attach(NativePlugin(host, PROBE) if mode == "native" else WasmPlugin(host, wasm))
    host.set_property(["xds", "cluster_name"], b"outbound|8000||vllm")
    assert host.start_plugin(plugin_config(policy, debugHeader=False)), host.logs_text()
    body = body_of(size) if size else None
    for _ in range(REPORT_EVERY):  # warm up; the probe reports after the last
        one_request(host, body)
    before, host.times = json.loads(host.shared.get("", REPORT_KEY)[1]), {}
    for _ in range(requests):
        one_request(host, body)
    after = json.loads(host.shared.get("", REPORT_KEY)[1])
    host.close()
    zero = [0, 0, 0]
    probe = {name: ((ns - before.get(name, zero)[1]) / requests / 1000,
                    (calls - before.get(name, zero)[0]) / requests,
                    (own - before.get(name, zero)[2]) / requests / 1000)
             for name, (calls, ns, own) in after.items()}
    return {"host": {name: ns / requests / 1000 for name, (_, ns) in host.times.items()},
            "probe": probe}


def table(case, native, wasm):
    policy, size = case
    lines = [f"### {policy}, body {f'{size // 1024} KB' if size else 'none'}", "",
             "| part | calls/request | native µs/request | wasm µs/request "
             "| wasm, without host calls |", "|---|---:|---:|---:|---:|"]
    total = sum(wasm["host"].values())
    lines.append(f"| **all callbacks, host side** | | {sum(native['host'].values()):.1f} "
                 f"| **{total:.1f}** | |")
    for name in sorted(wasm["host"], key=lambda n: -wasm["host"][n]):
        inside = wasm["probe"].get(f"callback.{name}", (0.0, 0, 0.0))
        lines.append(f"| callback {name}: host side / in Python | {inside[1]:g} | "
                     f"{native['host'].get(name, 0):.1f} / "
                     f"{native['probe'].get(f'callback.{name}', (0.0, 0))[0]:.1f} | "
                     f"{wasm['host'][name]:.1f} / {inside[0]:.1f} | {inside[2]:.1f} |")
    rest = [n for n in wasm["probe"] if not n.startswith("callback.")]
    for name in sorted(rest, key=lambda n: -wasm["probe"][n][0]):
        us, calls, own = wasm["probe"][name]
        lines.append(f"| {name} | {calls:g} | {native['probe'].get(name, (0.0, 0))[0]:.1f} "
                     f"| {us:.1f} | {'' if name.startswith('host.') else f'{own:.1f}'} |")
    return "\n".join(lines)


def envoy_reports(envoy):
    """{streams: table} of the probe's reports in Envoy's log."""
    reports = {}
    for line in envoy.log().splitlines():
        _, found, rest = line.partition("stage-probe ")
        if found and rest[:1].isdigit():
            count, _, table_text = rest.partition(" ")
            reports[int(count)] = json.loads(table_text)
    return reports


def measure_envoy(policy, size, requests, wasm, endpoints, workdir):
    """{name: (µs per request, calls per request, µs without host calls)} of the
    probe in Envoy, over `requests` after REPORT_EVERY of warm-up."""
    config = harness.EnvoyConfig.simple(
        endpoints, wasm_path=wasm, concurrency=1, fallback_policy="least_request",
        plugin_config=harness.plugin_config(policy, endpoints))
    with harness.Envoy(config, os.path.join(workdir, f"{policy}-{size}")) as envoy:
        client = harness.Client(envoy.port)
        for i in range(REPORT_EVERY + requests):
            if size:
                client.post("/v1/chat/completions", chat_body(size, i),
                            {"content-type": "application/json"})
            else:
                client.request("GET", "/v1/models")
        client.close()
        deadline = time.monotonic() + 10
        while (reports := envoy_reports(envoy)).get(REPORT_EVERY + requests) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no probe report in {envoy.log_path}")
            time.sleep(0.1)
    before, after = reports[REPORT_EVERY], reports[REPORT_EVERY + requests]
    zero = [0, 0, 0]
    return {name: ((ns - before.get(name, zero)[1]) / requests / 1000,
                   (calls - before.get(name, zero)[0]) / requests,
                   (own - before.get(name, zero)[2]) / requests / 1000)
            for name, (calls, ns, own) in after.items()}


def envoy_table(case, probe):
    policy, size = case
    lines = [f"### {policy}, body {f'{size // 1024} KB' if size else 'none'}, in Envoy", "",
             "| part | calls/request | µs/request | without host calls |", "|---|---:|---:|---:|"]
    callbacks = [n for n in probe if n.startswith("callback.")]
    total = sum(probe[n][0] for n in callbacks)
    lines.append(f"| **all callbacks, inside Python** | | **{total:.1f}** | "
                 f"{sum(probe[n][2] for n in callbacks):.1f} |")
    for name in sorted(probe, key=lambda n: (not n.startswith("callback."), -probe[n][0])):
        us, calls, own = probe[name]
        if calls:
            lines.append(f"| {name} | {calls:g} | {us:.1f} | "
                         f"{'' if name.startswith('host.') else f'{own:.1f}'} |")
    return "\n".join(lines)


def cases_in_envoy(requests, wasm):
    """(case, raw numbers, table) per case, in Envoy."""
    from gateway_cost import replica_process
    with replica_process(4) as replicas, tempfile.TemporaryDirectory() as workdir:
        for case in CASES:
            probe = measure_envoy(*case, requests, wasm, replicas.endpoints, workdir)
            yield case, {"envoy": probe}, envoy_table(case, probe)


def cases_in_test_host(requests, wasm):
    """(case, raw numbers, table) per case, natively and in the test host."""
    for case in CASES:
        native = measure("native", *case, requests, wasm)
        measured = measure("wasm", *case, requests, wasm)
        yield case, {"native": native, "wasm": measured}, table(case, native, measured)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200,
                        help=f"per case, a multiple of {REPORT_EVERY}")
    parser.add_argument("--wasm", help="a stage_probe build (default: build one)")
    parser.add_argument("--out", help="also write the tables and raw numbers here (.md, .json)")
    parser.add_argument("--envoy", action="store_true", help="measure in Envoy instead")
    args = parser.parse_args()
    if args.requests % REPORT_EVERY:
        parser.error(f"--requests must be a multiple of {REPORT_EVERY}")
    with tempfile.TemporaryDirectory() as tmp:
        wasm = args.wasm or build_probe(tmp)
        results, text = [], []
        cases = cases_in_envoy if args.envoy else cases_in_test_host
        for case, numbers, case_table in cases(args.requests, wasm):
            results.append({"policy": case[0], "body": case[1], **numbers})
            text.append(case_table)
            print(case_table + "\n", flush=True)
    if args.out:
        with open(args.out + ".md", "w", encoding="utf-8") as f:
            f.write("\n\n".join(text) + "\n")
        with open(args.out + ".json", "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
