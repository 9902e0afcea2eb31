"""The configuration: rules.parse returns (PluginConfig, warnings) or raises
ConfigError for any bytes, and for documents with a wrong value in any field
of config_fields' tables."""

import json

from hypothesis import given, strategies as st

from ai_load_balancer import rules
from ai_load_balancer.config_fields import (ALIASES, CLUSTER_POLICIES, ENDPOINT_POLICIES,
                                            HEALTH_FIELDS, LB_CONFIG_FIELDS, ConfigError)
from tests.fuzz.common import JSON, SCALARS, fuzz, nested

POLICIES = list(ENDPOINT_POLICIES) + list(ALIASES) + list(CLUSTER_POLICIES)
ENDPOINTS = ["10.0.0.1:8000", "10.0.0.2:8000"]


def base(policy):
    """A valid lb_config for `policy`."""
    if policy == "cluster_metrics":
        return {"mode": "LeastBusy", "service_list": ["outbound|80||a.dns"]}
    return {"endpoints": ENDPOINTS}


def check(raw):
    try:
        config, warnings = rules.parse(raw)
    except ConfigError as exc:
        assert str(exc)
        return None
    assert isinstance(config, rules.PluginConfig)
    assert all(isinstance(w, str) for w in warnings)
    return config


def as_bytes(doc):
    return json.dumps(doc).encode()


@fuzz(1000)
@given(st.binary(max_size=120))
def test_any_bytes(raw):
    check(raw)


# A field's value: anything JSON holds, or a value of a neighbouring kind.
ODD = st.one_of(JSON, st.lists(SCALARS, max_size=3), st.dictionaries(
    st.sampled_from(["header", "bodyField", "name", "weight", "10.0.0.1:8000", ""]), SCALARS,
    max_size=2), st.lists(st.fixed_dictionaries({"name": SCALARS, "weight": SCALARS}),
                          max_size=2))


@fuzz(1000)
@given(st.sampled_from(POLICIES), st.lists(st.tuples(
    st.sampled_from([f.name for f in LB_CONFIG_FIELDS]), ODD), min_size=1, max_size=3))
def test_wrong_types_in_lb_config(policy, fields):
    lb_config = {**base(policy), **dict(fields)}
    lb_type = "cluster" if policy == "cluster_metrics" else "endpoint"
    check(as_bytes({"lb_type": lb_type, "lb_policy": policy, "lb_config": lb_config}))


@fuzz(600)
@given(st.sampled_from(POLICIES), st.dictionaries(
    st.sampled_from([f.name for f in HEALTH_FIELDS]), ODD, max_size=3))
def test_wrong_types_in_health_check(policy, health):
    check(as_bytes({"lb_policy": policy, "lb_config": {**base(policy), "healthCheck": health}}))


@fuzz(600)
@given(st.dictionaries(st.sampled_from(["lb_type", "lb_policy", "lb_config", "_rules_",
                                        "_plugin_id_"]), st.one_of(ODD, st.sampled_from(POLICIES)),
                       max_size=4))
def test_wrong_types_at_top_level(doc):
    check(as_bytes(doc))


RULE = st.dictionaries(st.sampled_from(list(rules.MATCH_KEYS) + ["lb_policy", "lb_config"]),
                       st.one_of(ODD, st.sampled_from(POLICIES), st.lists(st.text(max_size=8))),
                       max_size=4)


@fuzz(600)
@given(st.one_of(st.none(), st.fixed_dictionaries({"lb_policy": st.sampled_from(POLICIES)})),
       st.lists(RULE, max_size=3))
def test_rules(default, rule_docs):
    check(as_bytes({**(default or {}), "_rules_": rule_docs}))


@fuzz(200)
@given(st.sampled_from(POLICIES), st.sampled_from(
    [f for f in LB_CONFIG_FIELDS if f.kind in ("int", "number")]),
    st.sampled_from(["1e400", "-1e400", "NaN", "Infinity", "1" + "0" * 400, "-0.0", "4.5"]))
def test_numbers_json_cannot_write_safely(policy, field, number):
    """Python's json reads NaN, Infinity and 400-digit numbers."""
    lb_config = json.dumps({**base(policy)})[:-1] + f', "{field.name}": {number}}}'
    check(f'{{"lb_policy": "{policy}", "lb_config": {lb_config}}}'.encode())


FIXED_ODD = [None, True, 0, -1, 2**64, 10**400, 0.5, 1e400, float("nan"), "", "x", "--5", "\u00b2",
             "nan", [], [None], ["10.0.0.1:x"], {}, {"": None}, [{"name": []}]]


def test_every_field_gets_every_odd_value():
    """The sampled tests above, made certain for each field and each policy reading it."""
    for field in LB_CONFIG_FIELDS:
        for policy in field.policies:
            for value in FIXED_ODD:
                lb_type = "cluster" if policy == "cluster_metrics" else "endpoint"
                check(as_bytes({"lb_type": lb_type, "lb_policy": policy,
                                "lb_config": {**base(policy), field.name: value}}))
    for field in HEALTH_FIELDS:
        for value in FIXED_ODD:
            check(as_bytes({"lb_policy": "random",
                            "lb_config": {**base("random"), "healthCheck": {field.name: value}}}))


def test_deep_documents():
    for depth in range(800, 1100):
        check(nested(depth).encode())
        check(('{"lb_policy": "random", "lb_config": ' + nested(depth, "{}") + "}").encode())
