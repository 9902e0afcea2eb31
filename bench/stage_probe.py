"""The plugin with a stopwatch on its parts: an entry module for bench/stage_cost.py.

Imported instead of ai_load_balancer.main (natively, or built into a .wasm
with `build/make.py --path bench --entry stage_probe`). It registers the
plugin as main does, then wraps, in place, every callback the shim enters,
every host call, and the stages of a decision (request parsing, JSON, prompt
hashing, the prefix index, the in-flight counts, the policy) so that each call
adds its time (time.perf_counter_ns: the WASI clock in a VM) to a table, both
inclusive and without the host calls made inside it (which cost what the host
makes them cost: the test host's are Python, Envoy's C++). Every REPORT_EVERY
streams (at proxy_on_delete, outside the timed part) the table goes to shared
data under REPORT_KEY as JSON {name: [calls, ns, ns without host calls]}, for
the driver to read, and to the log (how it is read in Envoy).
"""

import json
import time

import ai_load_balancer.main  # noqa: F401  registers the plugin
from ai_load_balancer import (embedded_inflight, embedded_prefix_index, lb_filter, llm_request,
                              pipeline, prefix_hash)
from proxywasm import dispatcher, hostcalls

REPORT_KEY = b"stage-probe"
REPORT_EVERY = 50
TABLE = {}
HOST_NS = [0]  # time spent in host calls so far
_clock = time.perf_counter_ns
_shared_set = hostcalls.set_shared_data  # unwrapped: the report is not measured


def timed(name, fn, host_call=False):
    """fn, adding each call's time to TABLE[name] (and to HOST_NS for a host call)."""
    def wrapper(*args, **kwargs):
        host_before, started = HOST_NS[0], _clock()
        try:
            return fn(*args, **kwargs)
        finally:
            elapsed = _clock() - started
            entry = TABLE.get(name)
            if entry is None:
                entry = TABLE[name] = [0, 0, 0]
            entry[0] += 1
            entry[1] += elapsed
            if host_call:
                HOST_NS[0] = host_before + elapsed
            else:
                entry[2] += elapsed - (HOST_NS[0] - host_before)
    return wrapper


def wrap(owner, attribute, name, host_call=False):
    setattr(owner, attribute, timed(name, getattr(owner, attribute), host_call))


def _wrap_everything():
    for attribute in [a for a in vars(dispatcher) if a.startswith("proxy_on_")]:
        wrap(dispatcher, attribute, "callback." + attribute[len("proxy_on_"):])
    for attribute, value in list(vars(hostcalls).items()):
        if callable(value) and not attribute.startswith("_") and not isinstance(value, type) \
                and getattr(value, "__module__", "") == hostcalls.__name__:
            wrap(hostcalls, attribute, "host." + attribute, host_call=True)
    wrap(llm_request, "parse", "stage.parse_request (json + prompt)")
    wrap(llm_request.json, "loads", "stage.json.loads")
    wrap(prefix_hash, "block_hashes", "stage.hash_prompt")
    wrap(pipeline, "run", "stage.pipeline")
    wrap(embedded_prefix_index.EmbeddedPrefixIndex, "matches", "stage.index_matches")
    wrap(embedded_prefix_index.EmbeddedPrefixIndex, "record", "stage.index_record")
    wrap(embedded_inflight.EmbeddedInflight, "take", "stage.inflight_take (+ pipeline)")
    wrap(embedded_inflight.EmbeddedInflight, "release", "stage.inflight_release")
    stream = lb_filter.LoadBalancerStream
    for method in ("_decide", "_gather", "_apply", "_record_prefix"):
        wrap(stream, method, f"stage.{method.strip('_')}")


def _report_on_delete(original):
    streams = [0]

    def on_delete(context_id):
        result = original(context_id)
        streams[0] += 1
        if streams[0] % REPORT_EVERY == 0:
            report = json.dumps(TABLE)
            _shared_set(REPORT_KEY, report.encode(), 0)
            hostcalls.log(hostcalls.INFO, f"stage-probe {streams[0]} {report}")  # in Envoy's log
        return result
    return on_delete


_wrap_everything()
dispatcher.proxy_on_delete = _report_on_delete(dispatcher.proxy_on_delete)
