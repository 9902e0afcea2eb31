"""Prometheus text and the replica metrics read from it: prometheus.parse and
replica_metrics.from_text never raise; from_status_json and from_json answer
None for what they cannot read."""

import json
import math
import re

from hypothesis import given, strategies as st

from ai_load_balancer import replica_metrics
from ai_load_balancer.replica_metrics import ReplicaMetrics
from proxywasm import prometheus
from tests.fuzz.common import JSON, NASTY_CHARS, NUMBERS, TEXT, fuzz, nested

KNOWN = [replica_metrics.VLLM_WAITING, replica_metrics.VLLM_RUNNING,
         replica_metrics.VLLM_KV_USAGE, replica_metrics.VLLM_GPU_CACHE_USAGE,
         replica_metrics.VLLM_LORA_INFO, replica_metrics.SGLANG_WAITING,
         replica_metrics.SGLANG_RUNNING, replica_metrics.SGLANG_USAGE]
NAMES = st.one_of(st.sampled_from(KNOWN + ["up", "a", "_", ":", "1bad", "vllm:", ""]),
                  st.text("az_:09Z-.", max_size=8))
GOOD_LABELS = st.one_of(st.sampled_from(["model_name", "engine", "max_lora", "le",
                                         "running_lora_adapters", "waiting_lora_adapters"]),
                        st.text("az_09Z", max_size=6).map(lambda t: "l" + t))
LABEL_NAMES = st.one_of(GOOD_LABELS, st.text("az_:09Z-", max_size=6))
VALID_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
VALUES = st.one_of(NUMBERS.map(repr), st.sampled_from(
    ["NaN", "+Inf", "-Inf", "1e400", "-0", "1_000", "0x1p3", "", "1 2 3", "1 # {a=\"b\"} 2"]))


def escape(text):
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


@st.composite
def sample_line(draw):
    """A line that is a sample, or nearly one."""
    labels = draw(st.lists(st.tuples(LABEL_NAMES, st.one_of(TEXT, st.sampled_from(
        ["a,b", " a , ,b", "4", "1e3", "x" * 200])).map(escape)), max_size=4))
    label_text = ",".join(f'{k}="{v}"' for k, v in labels)
    line = draw(NAMES)
    if labels or draw(st.booleans()):
        line += "{" + label_text + draw(st.sampled_from(["}", ",}", "", "}}", ' a="']))
    line += draw(st.sampled_from([" ", "\t", "  ", ""])) + draw(VALUES)
    if draw(st.booleans()):
        line += " " + draw(st.sampled_from(["1700000000000", "-1", "x", "1e99"]))
    noise = draw(st.lists(st.tuples(st.integers(0, len(line)), NASTY_CHARS), max_size=2))
    for at, char in noise:
        line = line[:at] + char + line[at:]
    return line


TEXTS = st.lists(st.one_of(sample_line(), st.sampled_from(
    ["", "#", "# HELP x y", "# TYPE vllm:num_requests_waiting gauge", "\r", "{}", "}"])),
    max_size=6).map("\n".join)


def check_text(text, extra=()):
    found = prometheus.parse(text)
    for name, samples in found.items():
        for labels, value in samples:
            assert isinstance(name, str) and isinstance(labels, dict) and isinstance(value, float)
    wanted = set(KNOWN) | {n for n in extra if VALID_NAME.fullmatch(n)}
    subset = prometheus.parse(text, wanted)  # the fast path agrees with the full parse
    assert {n: repr(s) for n, s in subset.items()} == {
        n: repr(s) for n, s in found.items() if n in wanted}
    m = replica_metrics.from_text(text, 7, extra)
    if m is not None:
        assert 0.0 <= m.kv_cache_usage <= 1.0 and m.max_adapters >= 0
        assert math.isfinite(m.waiting) and math.isfinite(m.running)
        assert replica_metrics.from_json(json.dumps(replica_metrics.to_json(m))) == m
    return found


@fuzz(800)
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200)))
def test_any_text(text):
    check_text(text)


@fuzz(700)
@given(TEXTS, st.lists(NAMES, max_size=2))
def test_near_valid_lines(text, extra):
    check_text(text, extra)


@fuzz(600)
@given(st.lists(st.tuples(
    st.sampled_from(KNOWN), st.dictionaries(GOOD_LABELS, TEXT, max_size=3),
    st.floats(allow_nan=False, allow_infinity=True)), min_size=1, max_size=6))
def test_written_samples_read_back(samples):
    lines = []
    for name, labels, value in samples:
        label_text = ",".join(f'{k}="{escape(v)}"' for k, v in labels.items())
        lines.append(f"{name}{{{label_text}}} {value!r}".replace(" inf", " +Inf"))
    found = check_text("\n".join(lines))
    expected = {}
    for name, labels, value in samples:
        expected.setdefault(name, []).append((labels, value))
    assert found == expected
    assert prometheus.parse("\n".join(lines), set(expected)) == expected


STATUS_FIELDS = st.sampled_from(["queue_depth", "stats.waiting", "a.0", "", ".", "a..b"])


@fuzz(1000)
@given(st.one_of(st.binary(max_size=100), JSON.map(lambda d: json.dumps(d).encode()),
                 st.fixed_dictionaries({"queue_depth": JSON}).map(json.dumps),
                 st.fixed_dictionaries({"queue_depth": NUMBERS}).map(json.dumps)),
       STATUS_FIELDS)
def test_status_json(body, field):
    m = replica_metrics.from_status_json(body, 5, field)
    assert m is None or (isinstance(m, ReplicaMetrics) and math.isfinite(m.waiting))


@fuzz(1000)
@given(st.one_of(st.binary(max_size=100), JSON, JSON.map(json.dumps),
                 st.lists(st.one_of(NUMBERS, TEXT, JSON), min_size=8, max_size=8),
                 st.lists(st.one_of(NUMBERS, TEXT, JSON), min_size=8, max_size=8).map(json.dumps)))
def test_shared_data_entries(entry):
    m = replica_metrics.from_json(entry)
    assert m is None or isinstance(m, ReplicaMetrics)


def test_deep_json():
    for depth in range(800, 1100):
        assert replica_metrics.from_status_json(nested(depth), 0, "queue_depth") is None
        assert replica_metrics.from_json(nested(depth)) is None
