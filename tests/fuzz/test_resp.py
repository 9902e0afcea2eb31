"""RESP replies from Redis: resp.parse returns a reply or raises ValueError
(Incomplete when the bytes end early); redis_state.parse_pick returns a Pick
or raises LimitReached, NoScript, RedisError or ValueError."""

import pytest
from hypothesis import given, strategies as st

from ai_load_balancer import redis_state
from ai_load_balancer.picking import Pick
from proxywasm import resp
from tests.fuzz.common import fuzz

LINE = st.binary(max_size=12).filter(lambda b: b"\r\n" not in b and not b.endswith(b"\r"))
REPLIES = st.recursive(
    st.one_of(LINE.map(lambda b: ("+", b)), LINE.map(lambda b: ("-", b)),
              st.integers(-2**70, 2**70).map(lambda n: (":", n)),
              st.binary(max_size=20).map(lambda b: ("$", b)), st.just(("$", None)),
              st.just(("*", None))),
    lambda inner: st.lists(inner, max_size=4).map(lambda items: ("*", items)), max_leaves=10)


def encode(reply):
    """RESP bytes of a reply tree (the tests' own encoder: the SDK only writes commands)."""
    kind, value = reply
    if kind in "+-":
        return kind.encode() + value + b"\r\n"
    if kind == ":":
        return b":%d\r\n" % value
    if value is None:
        return kind.encode() + b"-1\r\n"
    if kind == "$":
        return b"$%d\r\n%s\r\n" % (len(value), value)
    return b"*%d\r\n" % len(value) + b"".join(encode(item) for item in value)


def decoded(reply):
    """What resp.parse should return for a reply tree."""
    kind, value = reply
    if kind == "+":
        return value.decode("utf-8", "replace")
    if kind == "-":
        return ("error", value.decode("utf-8", "replace"))
    if kind == "*" and value is not None:
        return [decoded(item) for item in value]
    return value


def comparable(value):
    if isinstance(value, resp.RedisError):
        return ("error", str(value))
    if isinstance(value, list):
        return [comparable(item) for item in value]
    return value


def check(data):
    try:
        value, end = resp.parse(data)
    except ValueError:
        return None
    assert 0 < end <= len(data)
    return value


@fuzz(1500)
@given(st.binary(max_size=60))
def test_any_bytes(data):
    check(data)
    check(b"*3\r\n" + data)


@fuzz(800)
@given(REPLIES)
def test_replies_round_trip_and_every_cut_is_incomplete(reply):
    data = encode(reply)
    value, end = resp.parse(data + b"+next\r\n")
    assert comparable(value) == decoded(reply) and end == len(data)
    for cut in range(len(data)):
        with pytest.raises(resp.Incomplete):
            resp.parse(data[:cut])


@fuzz(700)
@given(REPLIES, st.data())
def test_wrong_lengths_and_flipped_bytes(reply, data):
    raw = bytearray(encode(reply))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at:at + 1] = data.draw(st.sampled_from(
            [b"", b"0", b"9", b"-", b"*", b"$", b"\r", b"\n", b"\r\n", b"99999999999", b"\xff"]))
    check(bytes(raw))


@fuzz(400)
@given(st.lists(st.one_of(st.binary(max_size=30), st.text(max_size=10),
                          st.integers(-2**63, 2**63)), max_size=6))
def test_commands_parse_back(args):
    value, end = resp.parse(resp.command(*args))
    expected = [a.encode("utf-8") if isinstance(a, str) else b"%d" % a if isinstance(a, int)
                else a for a in args]
    assert value == expected


def check_pick(data):
    try:
        pick = redis_state.parse_pick(data)
    except (redis_state.LimitReached, redis_state.NoScript, resp.RedisError, ValueError):
        return None
    assert isinstance(pick, Pick) and isinstance(pick.address, str)
    return pick


PICK_ITEMS = st.one_of(REPLIES, st.sampled_from([
    ("$", b"10.0.0.1:8000"), ("$", b"limit"), ("$", b"prefix_match"), (":", 3), ("$", b"3"),
    ("$", b"\xff\xfe"), ("-", b"NOSCRIPT No matching script"), ("-", b"NOAUTH")]))


@fuzz(700)
@given(st.one_of(REPLIES, st.lists(PICK_ITEMS, min_size=3, max_size=5).map(lambda i: ("*", i))))
def test_pick_replies(reply):
    check_pick(encode(reply))


@fuzz(400)
@given(st.text(st.characters(exclude_categories=("Cs",)), max_size=30),
       st.integers(0, 2**40), st.integers(0, 2**40),
       st.sampled_from(["least_request", "prefix_match", "bounded_load"]))
def test_script_replies_round_trip(address, inflight, matched, reason):
    data = encode(("*", [("$", address.encode()), (":", inflight), (":", matched),
                         ("$", reason.encode())]))
    assert check_pick(data) == Pick(address, inflight, matched, reason)


def test_deep_arrays():
    for depth in (10, 100, 1000, 5000):
        check(b"*1\r\n" * depth + b":1\r\n")
        check_pick(b"*1\r\n" * depth)
