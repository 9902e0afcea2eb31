"""Sizes a multi-round QA workload to the real replicas it runs on.

Real vLLM on a CPU differs by an order of magnitude from one machine to the
next (a 2k-token cold prefill: 0.2-0.5 s on an Intel Xeon with AMX, 1.7 s on
an AMD EPYC with AVX2 in float32), so a fixed load either idles one machine
or buries another. Before the runs, measure() times each replica directly
(not through Envoy): a cold prompt (nothing cached: the prefill rate), the
same prompt again (what a prefix hit leaves), and one answer's tokens (the
decode rate). size() then picks the workload and the replicas' KV cache so
that, on any machine:

  - the offered load is LOAD of the fleet's prefill capacity if nothing were
    cached (requests/s x mean prompt tokens / (replicas x prefill tokens/s));
  - every user sends TURNS requests inside the sending window, so
    conversations reach the turns where their prefix can be reused;
  - the conversations hold PRESSURE times one replica's KV cache, so a
    cache-blind balancer loses their prefixes while the fleet can keep them.

Those three fix the KV cache a replica may have: users x conversation =
PRESSURE x cache and users = window x rate / TURNS give
cache <= window x LOAD x replicas x prefill rate / (PRESSURE x TURNS). When
the replicas have much more than that, they are restarted with it.
"""

import dataclasses
import math
import statistics

from sim import client

LOAD = 0.6           # prefill utilisation if nothing were cached
TURNS = 5            # requests per user inside the sending window
PRESSURE = 1.4       # conversations' tokens / one replica's KV cache
MIN_USERS = 6
MIN_HISTORY = 300    # tokens of a user's own context, at least
MODEL_LEN = 4096     # the tiny model's context: a replica's cache holds at least one
RESTART_BELOW = 0.75  # restart the replicas when their cache is over 1/this of the size
QUESTION = 20        # tokens of a round's question (workloads._mrqa)
PROBE_TOKENS = 2000


@dataclasses.dataclass
class Rates:
    """One replica's measurements (seconds, tokens)."""
    endpoint: str
    prompt_tokens: int
    cold_ttft_s: float
    warm_ttft_s: float
    decode_s_per_token: float

    @property
    def prefill_tokens_per_s(self):
        return self.prompt_tokens / self.cold_ttft_s


def measure(endpoints, model, seed=7):
    """Rates of each replica, measured one at a time (each is idle then)."""
    out = []
    for i, endpoint in enumerate(endpoints):
        client.chat_stream(endpoint, model, [{"role": "user", "content": "Hello"}], 2)  # warm-up
        text = client.prompt_of(endpoint, model, PROBE_TOKENS, seed + i)
        messages = [{"role": "user", "content": text}]
        cold = client.chat_stream(endpoint, model, messages, 1)
        warm = client.chat_stream(endpoint, model, messages + [
            {"role": "assistant", "content": "Yes."}, {"role": "user", "content": "Go on."}], 1)
        decode = client.chat_stream(endpoint, model, [{"role": "user", "content": "Tell a story"}],
                                    33, extra={"ignore_eos": True})
        if None in (cold["ttft_s"], warm["ttft_s"]) or not decode["itl_s"]:
            raise RuntimeError(f"calibration: {endpoint} did not answer as expected: "
                               f"{cold.get('error') or warm.get('error') or decode.get('error')}")
        out.append(Rates(endpoint, (cold["usage"] or {}).get("prompt_tokens") or PROBE_TOKENS,
                         cold["ttft_s"], warm["ttft_s"], statistics.median(decode["itl_s"])))
    return out


@dataclasses.dataclass
class Sizing:
    params: dict             # the workload's parameters, sized
    num_blocks: int          # KV blocks per replica to run with
    restart: bool            # the replicas must be restarted with num_blocks
    load: float              # offered prefill load if nothing were cached
    turns_per_user: float    # requests per user inside the window
    pressure: float          # the conversations' tokens / one replica's cache
    prefill_tokens_per_s: float

    def describe(self):
        p = self.params
        return (f"prefill {self.prefill_tokens_per_s:,.0f} tokens/s per replica -> "
                f"{p['num_users']} users at {p['qps']:.2f} requests/s, "
                f"{p['user_history_prompt']}-token contexts, KV cache {self.num_blocks} blocks "
                f"per replica{' (replicas restarted)' if self.restart else ''}: "
                f"offered load {self.load:.0%} of the prefill capacity if nothing were "
                f"cached, {self.turns_per_user:.1f} requests per user in the window, "
                f"conversations {self.pressure:.1f}x one replica's cache")


def size(rates, params, duration, block_size, num_blocks, fixed=()):
    """The Sizing of an mrqa workload (its `params`) for replicas with these
    Rates, a sending window of `duration` s, and KV caches of `num_blocks`
    blocks of `block_size` tokens now. `fixed`: parameter names the user set
    (kept as given)."""
    replicas = len(rates)
    prefill = statistics.median(r.prefill_tokens_per_s for r in rates)
    p = dict(params)
    rounds, answer, system = p["num_rounds"], p["answer_len"], p["shared_system_prompt"]
    per_round = answer + QUESTION
    fits = math.floor(duration * LOAD * replicas * prefill / (PRESSURE * TURNS))
    min_blocks = math.ceil(MODEL_LEN / block_size)
    blocks = max(min_blocks, min(num_blocks, fits // block_size))
    restart = blocks < RESTART_BELOW * num_blocks
    if not restart:
        blocks = num_blocks
    cache = blocks * block_size
    if "user_history_prompt" not in fixed:
        # The given context, shortened when fewer than MIN_USERS conversations would fill it.
        longest = math.floor(PRESSURE * cache / MIN_USERS) - system - rounds * per_round
        p["user_history_prompt"] = max(MIN_HISTORY, min(p["user_history_prompt"], longest))
    conversation = system + p["user_history_prompt"] + rounds * per_round
    if "num_users" not in fixed:
        p["num_users"] = max(MIN_USERS, math.ceil(PRESSURE * cache / conversation))
    mean_prompt = system + p["user_history_prompt"] + (rounds - 1) / 2 * per_round
    if "qps" not in fixed:
        p["qps"] = round(LOAD * replicas * prefill / mean_prompt, 2)
    return Sizing(
        params=p, num_blocks=blocks, restart=restart,
        load=p["qps"] * mean_prompt / (replicas * prefill),
        turns_per_user=duration * p["qps"] / p["num_users"],
        pressure=p["num_users"] * conversation / cache, prefill_tokens_per_s=prefill)
