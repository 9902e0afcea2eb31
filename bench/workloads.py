"""The workloads of bench/run.py: who sends what, and when. Pure: no I/O.

A workload turns its parameters (`WORKLOADS[name].params`, overridable from the
command line) into a list of Sessions. A session is one user: a start time, a
gap between its requests, and its turns. The runner sends turn k once turn k-1
has answered and no earlier than `gap` seconds after turn k-1 was sent (what
vLLM production-stack's multi-round-qa.py does); a multi-turn session keeps its
history (user messages and the answers it got), so each request's prompt
extends the previous one's.

Text is random English-like words (sim.client.WORDS), sized in tokens with the
simulator's tokenizer (about 1.2 tokens per word; a real tokenizer differs by a
few per cent). Everything is deterministic for a seed; `salt` (a few
characters, different for each policy's run) starts every session's first
message, so one policy's run can never hit a cache another one filled.

Workloads:
  mrqa          multi-round QA as in production-stack's multi-round-qa.py (and
                Alibaba Cloud ACK's prefix-aware routing guide): `num_users`
                users in the system at any time, each sending a request every
                num_users/qps seconds for `num_rounds` rounds; the first
                message is a shared system prompt + the user's own context
                (`user_history_prompt` tokens), then a short question per
                round; answers are `answer_len` tokens. Users join at a steady
                pace and the run starts in the steady state (the "ramp-up":
                users already part-way through their rounds, as the original
                does).
  mrqa-ack      mrqa with ACK's parameters (8 users, 15 rounds, QPS 0.1,
                100 + 2000 tokens, 100-token answers).
  mrqa-scaled   many users at a higher rate: where a cache-blind balancer
                spreads every conversation over every replica.
  mrqa-heavy    the same at twice the rate: more than the fleet can serve
                without prefix hits, so throughput differs too.
  doc-qa        a few long documents, many different questions about them
                (popularity Zipf-skewed); single-turn.
  sysprompt     system-prompt-heavy chat: a few apps, each with a long system
                prompt; short user turns, 3 turns per conversation.
  sharegpt      no sharing at all: unique prompts, ShareGPT-like lengths (log-
                normal input and output); routing must not hurt here.
  lora          a mix of LoRA adapters (Zipf popularity), unique prompts: for
                least_busy's adapter affinity (the fleet serves the adapters).
  demo          a small mrqa for scripts/demo.sh.
"""

import dataclasses
import math
import random

from sim import tokenizer
from sim.client import WORDS


@dataclasses.dataclass
class Turn:
    user: str                # the new user message
    max_tokens: int


@dataclasses.dataclass
class Session:
    id: str
    start: float             # seconds after the run's start
    gap: float               # least time between two sends of this session
    turns: list
    system: str = None       # a system message ahead of the turns
    model: str = None        # None: the served model; else a LoRA adapter's name
    keep_history: bool = True


@dataclasses.dataclass
class Workload:
    name: str
    kind: str                # the generator in GENERATORS
    params: dict
    doc: str
    needs_lora: bool = False
    sim: dict = dataclasses.field(default_factory=dict)  # simulator profile overrides

    def with_params(self, **changes):
        unknown = set(changes) - set(self.params)
        if unknown:
            raise ValueError(f"workload {self.name}: unknown parameter(s) {sorted(unknown)}; "
                             f"known: {sorted(self.params)}")
        merged = dict(self.params)
        for key, value in changes.items():
            merged[key] = type(self.params[key])(value)
        return dataclasses.replace(self, params=merged)

    def sessions(self, duration, seed=1, salt=""):
        """The sessions of a run whose sending window is `duration` seconds."""
        return GENERATORS[self.kind](self.params, duration, random.Random(seed), salt)

    def describe(self):
        return ", ".join(f"{k}={v}" for k, v in self.params.items())


# --- text ------------------------------------------------------------------------------------

def text_of(tokens, rng):
    """About `tokens` tokens (simulator tokenizer) of random words."""
    if tokens <= 0:
        return ""
    words = [rng.choice(WORDS) for _ in range(max(1, int(tokens / 1.25)))]
    text = " ".join(words)
    for _ in range(6):  # bounded: converges in one or two rounds
        n = tokenizer.count(" " + text)
        if abs(n - tokens) <= max(1, tokens // 100):
            break
        if n < tokens:
            words += [rng.choice(WORDS) for _ in range(max(1, int((tokens - n) / 1.25)))]
        else:
            words = words[:max(1, len(words) - max(1, int((n - tokens) / 1.25)))]
        text = " ".join(words)
    return text


def zipf_weights(n, s):
    return [1.0 / (i + 1) ** s for i in range(n)]


def lognormal_int(rng, median, sigma, low, high):
    return int(min(high, max(low, round(median * math.exp(rng.gauss(0.0, sigma))))))


def poisson_times(rng, qps, duration):
    """Arrival times of a Poisson process of rate qps in [0, duration)."""
    times, t = [], 0.0
    for _ in range(10_000_000):  # bounded
        t += rng.expovariate(qps)
        if t >= duration:
            break
        times.append(t)
    return times


# --- generators --------------------------------------------------------------------------------

def _mrqa(p, duration, rng, salt):
    """production-stack multi-round-qa.py's schedule (see the module docstring)."""
    users, rounds, qps = p["num_users"], p["num_rounds"], p["qps"]
    gap = users / qps                                  # between one user's requests
    user_gap = gap * (rounds - 1) / users              # between two users joining
    system = text_of(p["shared_system_prompt"], rng)
    sessions = []

    def new_session(uid, start, first_round):
        history = text_of(p["user_history_prompt"], rng)
        turns = []
        for q in range(first_round, rounds):
            question = (f"Here's question #{q + 1}: can you tell me a new long story "
                        "with a happy ending?")
            if not turns:
                question = (f"{salt}Hi, here's some system prompt: {system}. For user {uid}, "
                            f"here are some other context: {history}. {question}")
            turns.append(Turn(question, p["answer_len"]))
        if turns:
            sessions.append(Session(f"u{uid}", start, gap, turns))

    uid = 0
    # Ramp-up: users already in the system at the start, part-way through.
    for i in range(users):
        offset = (users - i) * user_gap
        done = int(offset / gap) + 1
        if done >= rounds:
            continue
        new_session(uid, done * gap - offset, done)
        uid += 1
    # Then one new user every user_gap seconds.
    t = 0.0
    for _ in range(1_000_000):  # bounded
        if t >= duration:
            break
        new_session(uid, t, 0)
        uid += 1
        t += user_gap
    return sessions


def _doc_qa(p, duration, rng, salt):
    docs = [text_of(p["doc_tokens"], rng) for _ in range(p["num_docs"])]
    weights = zipf_weights(p["num_docs"], p["zipf"])
    sessions = []
    for i, t in enumerate(poisson_times(rng, p["qps"], duration)):
        d = rng.choices(range(p["num_docs"]), weights)[0]
        question = text_of(p["question_tokens"], rng)
        user = (f"{salt}Document {d}:\n{docs[d]}\n\nQuestion {i}: {question}?")
        sessions.append(Session(f"q{i}", t, 0.0, [Turn(user, p["answer_len"])],
                                system="Answer the question from the document only.",
                                keep_history=False))
    return sessions


def _sysprompt(p, duration, rng, salt):
    prompts = [f"{salt}You are assistant #{a} of the ACME app store. " +
               text_of(p["system_tokens"], rng) for a in range(p["num_apps"])]
    weights = zipf_weights(p["num_apps"], p["zipf"])
    turns = p["turns"]
    sessions = []
    for i, t in enumerate(poisson_times(rng, p["qps"] / turns, duration)):
        a = rng.choices(range(p["num_apps"]), weights)[0]
        session_turns = [Turn(f"[chat {i}] " + text_of(p["user_tokens"], rng) + "?",
                              p["answer_len"]) for _ in range(turns)]
        sessions.append(Session(f"c{i}", t, p["think_s"], session_turns, system=prompts[a]))
    return sessions


def _sharegpt(p, duration, rng, salt):
    sessions = []
    for i, t in enumerate(poisson_times(rng, p["qps"], duration)):
        n_in = lognormal_int(rng, p["input_median"], p["input_sigma"], 8, p["input_max"])
        n_out = lognormal_int(rng, p["output_median"], p["output_sigma"], 4, p["output_max"])
        # The request's own number first: no two prompts share a block.
        user = f"{i} {salt}" + text_of(n_in, rng)
        sessions.append(Session(f"s{i}", t, 0.0, [Turn(user, n_out)], keep_history=False))
    return sessions


def lora_names(p):
    return [f"lora-{k}" for k in range(p["num_adapters"])]


def _lora(p, duration, rng, salt):
    names = lora_names(p)
    weights = zipf_weights(len(names), p["zipf"])
    sessions = []
    for i, t in enumerate(poisson_times(rng, p["qps"], duration)):
        adapter = rng.choices(names, weights)[0]
        user = f"{i} {salt}" + text_of(p["prompt_tokens"], rng)
        sessions.append(Session(f"l{i}", t, 0.0, [Turn(user, p["answer_len"])],
                                model=adapter, keep_history=False))
    return sessions


GENERATORS = {"mrqa": _mrqa, "doc_qa": _doc_qa, "sysprompt": _sysprompt,
              "sharegpt": _sharegpt, "lora": _lora}

_MRQA = dict(num_users=8, num_rounds=15, qps=0.1, shared_system_prompt=100,
             user_history_prompt=2000, answer_len=100)

WORKLOADS = {w.name: w for w in (
    Workload("mrqa-ack", "mrqa", dict(_MRQA),
             "multi-round QA with ACK's parameters (QPS 0.1: requests never overlap)"),
    Workload("mrqa-scaled", "mrqa",
             dict(_MRQA, num_users=64, num_rounds=10, qps=8.0),
             "multi-round QA, 64 users at 8 QPS: more conversations than one replica's "
             "KV cache holds"),
    Workload("mrqa-heavy", "mrqa",
             dict(_MRQA, num_users=64, num_rounds=10, qps=16.0),
             "multi-round QA, 64 users at 16 QPS: beyond what the fleet serves without "
             "prefix hits (throughput shows)"),
    Workload("doc-qa", "doc_qa",
             dict(num_docs=12, doc_tokens=3000, question_tokens=30, answer_len=64, qps=6.0,
                  zipf=0.8),
             "long shared documents (Zipf-popular), a different question each time"),
    Workload("sysprompt", "sysprompt",
             dict(num_apps=8, system_tokens=1500, user_tokens=60, answer_len=100, turns=3,
                  think_s=3.0, qps=8.0, zipf=0.8),
             "system-prompt-heavy chat: 8 apps' long system prompts, short 3-turn chats"),
    Workload("sharegpt", "sharegpt",
             dict(qps=8.0, input_median=250, input_sigma=0.9, input_max=3000,
                  output_median=120, output_sigma=0.8, output_max=512),
             "ShareGPT-like lengths, nothing shared: routing must not hurt"),
    Workload("lora", "lora",
             dict(num_adapters=16, zipf=1.0, prompt_tokens=400, answer_len=64, qps=24.0),
             "16 LoRA adapters (Zipf-popular), unique prompts; 2 adapters per batch "
             "(vLLM --max-loras 2)", needs_lora=True, sim={"max_loras": 2}),
    Workload("demo-real", "mrqa",
             dict(_MRQA, num_users=20, num_rounds=6, qps=2.0, user_history_prompt=2000,
                  answer_len=32),
             "multi-round QA for 2 real vLLM CPU replicas, more conversations than one "
             "replica's KV cache holds (bench/run.py sizes users, rate and contexts to the "
             "replicas' measured speed: bench/calibrate.py)"),
    Workload("demo", "mrqa",
             dict(_MRQA, num_users=24, num_rounds=6, qps=4.0, user_history_prompt=2000),
             "multi-round QA, 24 users at 4 QPS (the README demo)"),
)}


def get(name, **changes):
    try:
        workload = WORKLOADS[name]
    except KeyError:
        raise ValueError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}") from None
    return workload.with_params(**changes) if changes else workload
