"""Drives LLM requests through a test host (helpers for the policy tests)."""

import json
from types import SimpleNamespace

import envoy_harness as harness
from ai_load_balancer import config
from ai_load_balancer import embedded_inflight as embedded_inflight_record
from ai_load_balancer.policies import POLICIES
from proxywasm import resp

CLUSTER = "outbound|8000||vllm.default.svc.cluster.local"
REDIS_CLUSTER = "outbound|6379||redis.static"
REPLICAS = ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000", "10.0.0.4:8000"]
OVERRIDE = "x-gateway-destination-endpoint"


def policy_for(name, **lb_config):
    """The policy object of `lb_policy: name` with these lb_config fields, to
    call choose() on pipeline.Inputs directly (native only)."""
    cfg, _ = config.parse_doc({"lb_policy": name, "lb_config": lb_config})
    return POLICIES[name](SimpleNamespace(config=cfg, state_id="test", vm_id="vm"))


def plugin_config(policy, target="envoy", redis=None, **fields):
    """JSON configuration (envoy_harness.plugin_config's): the replicas in
    lb_config.endpoints for stock Envoy (Higress lists its own), Redis for
    Higress with `redis` (the call timeout, ms)."""
    if redis is not None:
        fields.update(serviceFQDN="redis.static", servicePort=6379, timeout=redis)
    endpoints = fields.pop("endpoints", REPLICAS if target == "envoy" else [])
    document = harness.plugin_config(policy, endpoints, **{"debugHeader": True, **fields})
    return json.dumps(document).encode()


def start(make_host, policy, target="envoy", redis_server=None, redis_address=None,
          shared=None, replicas=REPLICAS, timeout=3000, **fields):
    """A started host for `policy`. With redis_server (or a bare address) the
    higress build keeps its state in that Redis."""
    address = redis_address or (redis_server.address if redis_server else None)
    clusters = {REDIS_CLUSTER: address} if address else None
    host = make_host(target=target, clusters=clusters, shared=shared)
    host.set_property(["xds", "cluster_name"], CLUSTER.encode())
    if target == "higress":
        host.set_upstream_hosts([(r, {"health_status": "Healthy"}) for r in replicas])
    config = plugin_config(policy, target, redis=timeout if address else None, **fields)
    assert host.start_plugin(config), host.logs_text()
    return host


def chat_body(*turns, model="qwen", **extra):
    roles = ["user", "assistant"]
    messages = [{"role": "system", "content": turns[0]}] + [
        {"role": roles[i % 2], "content": t} for i, t in enumerate(turns[1:])]
    return json.dumps({"model": model, "messages": messages, **extra}).encode()


def send(host, body=None):
    """Starts one request (headers, then body if any); returns (context id, action)."""
    cid = host.init_http_context()
    headers = [(":method", "POST" if body else "GET"), (":path", "/v1/chat/completions"),
               (":authority", "vllm"), ("content-type", "application/json")]
    action = host.call_on_request_headers(cid, headers, end_of_stream=body is None)
    if body is not None:
        action = host.call_on_request_body(cid, body, end_of_stream=True)
    return cid, action


def pinned(host, cid):
    """Where the plugin pinned the request: the override header's first address
    (the rest are fallbacks for Envoy's retries), or Higress's override host."""
    if host.target == "higress":
        return host.get_override_host(cid)
    value = host.get_request_header(cid, OVERRIDE)
    return value.split(",")[0] if value else None


def fallbacks(host, cid):
    """The fallback addresses after the primary in the override header (Envoy)."""
    value = host.get_request_header(cid, OVERRIDE) or ""
    return value.split(",")[1:]


def decision(host, cid):
    """The x-ailb-decision response header, parsed: {"address":..., "reason":...}."""
    host.call_on_response_headers(cid, [(":status", "200")], end_of_stream=False)
    value = host.get_response_header(cid, "x-ailb-decision")
    if value is None:
        return None
    address, *fields = [part.strip() for part in value.split(";")]
    return {"address": address, **dict(f.split("=", 1) for f in fields)}


def finish(host, cid, respond=True):
    """Ends a stream: with a response, or as a client abort (no response at all)."""
    if respond:
        host.call_on_response_headers(cid, [(":status", "200")], end_of_stream=True)
    host.complete_http_context(cid)


def embedded_inflight(host, field="counts"):
    """{replica: in flight} summed over the VMs, from the gateway's shared data;
    field="work": the prompt blocks still to compute instead."""
    counts = {}
    for key, value in host.shared.data().items():
        key = key.decode() if isinstance(key, bytes) else key
        if key.startswith("ailb:inflight:"):
            for _, slots in embedded_inflight_record.decode(value).values():
                for address, (requests, work) in slots.items():
                    n = requests if field == "counts" else work
                    if n:
                        counts[address] = counts.get(address, 0) + n
    return counts


def redis_calls(redis_server, command):
    """How many times Redis ran `command` since its last CONFIG RESETSTAT."""
    info = resp.reply(redis_server.command("INFO", "commandstats")).decode(errors="replace")
    for line in info.split("\r\n"):
        if line.startswith(f"cmdstat_{command}:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


def redis_inflight(redis_server, cluster=CLUSTER):
    """{replica: in flight} summed over the gateways' hashes in Redis."""
    counts = {}
    prefix = f"ailb:{{{cluster}}}:n:"
    keys = resp.reply(redis_server.command("KEYS", prefix + "*"))
    for key in keys:
        pairs = resp.reply(redis_server.command("HGETALL", key))
        for address, n in zip(pairs[::2], pairs[1::2]):
            counts[address.decode()] = counts.get(address.decode(), 0) + int(n)
    return counts


def clear_redis(redis_server, cluster=CLUSTER):
    redis_server.command("EVAL", "for _, k in ipairs(redis.call('KEYS', ARGV[1])) do "
                         "redis.call('DEL', k) end return 1", "0", f"ailb:{{{cluster}}}*")
