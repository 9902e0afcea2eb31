"""Shared hypothesis settings and strategies for the fuzz tests."""

import math

from hypothesis import HealthCheck, settings, strategies as st

# Deterministic (the same cases every run), no deadline (wasm-sized inputs and
# a busy 2-core machine), no example database written to disk.
FUZZ = settings(derandomize=True, deadline=None, database=None, print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])


def fuzz(examples):
    """FUZZ with `examples` cases."""
    return settings(FUZZ, max_examples=examples)


# Text with what breaks naive code: NUL, controls, quotes, backslashes, lone
# surrogates (JSON "\ud800" decodes to one), astral characters.
NASTY_CHARS = st.sampled_from(["\0", "\n", "\r", "\t", '"', "\\", "\x7f", "\ud800", "\udfff",
                               "\u2028", "\ufeff", "é", "\U0001F600", "{", "}", ",", "="])
TEXT = st.text(st.one_of(st.characters(), NASTY_CHARS), max_size=40)

# Numbers JSON can carry that Python turns into surprises: huge ints, floats that
# overflow to infinity, NaN / Infinity (Python's json reads and writes them).
NUMBERS = st.one_of(
    st.integers(), st.integers(min_value=-10**400, max_value=10**400),
    st.sampled_from([0, -1, 1, 2**31, 2**32, 2**63, 2**64, 10**300, -10**300]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.inf, -math.inf, math.nan, 1e308, 5e-324, -0.0, 0.5]))
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT,
                    st.sampled_from(["", "0", "-1", "--5", "1e400", "nan", "inf", "true",
                                     "\u00b2", "\u0663", " 7 ", "1_000", "0x10"]))
JSON = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)), max_leaves=12)


def nested(depth, leaf="1", open_="[", close="]"):
    """A JSON text nested `depth` levels deep."""
    return open_ * depth + leaf + close * depth
