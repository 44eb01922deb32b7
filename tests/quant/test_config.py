"""`QuantConfig` and `Plan`: validation, JSON round trips, hashing, rule matching."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from explorer.errors import QuantConfigError
from explorer.quant.config import (
    CONFIG_VERSION,
    Plan,
    QuantConfig,
    parse_granularity,
    why_not_applicable,
)


@st.composite
def configs(draw: st.DrawFn) -> QuantConfig:
    """Any valid config, float layers included."""
    if draw(st.booleans()):
        return QuantConfig.float(draw(st.sampled_from(["fp32", "bf16"])))
    granularity = draw(st.sampled_from(["tensor", "channel", "group"]))
    act_bits = draw(st.sampled_from([None, 4, 8]))
    act_mode = draw(st.sampled_from(["dynamic", "static"]))
    act_granularity = (
        "tensor" if act_mode == "static" else draw(st.sampled_from(["tensor", "token"]))
    )
    method = draw(st.sampled_from(["ptq", "qat"]))
    return QuantConfig(
        weight_bits=draw(st.integers(2, 8)),
        granularity=granularity,
        group_size=draw(st.sampled_from([16, 32, 64, 128])) if granularity == "group" else None,
        symmetric=draw(st.booleans()),
        calibration=draw(st.sampled_from(["minmax", "percentile", "mse"])),
        percentile=draw(st.floats(50.0, 100.0, exclude_min=True)),
        act_bits=act_bits,
        act_mode=act_mode,
        act_granularity=act_granularity,
        act_symmetric=draw(st.booleans()),
        method=method,
        learn_scales=method == "qat" and draw(st.booleans()),
    )


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    names = st.sampled_from(["head", "blocks.0.mlp.fc1", "blocks.*.mlp.*", "blocks.?.attn.*", "*"])
    rules = draw(st.lists(st.tuples(names, st.none() | configs()), max_size=4))
    return Plan(
        default=draw(st.none() | configs()),
        rules=tuple(rules),
        fallback=draw(st.sampled_from(["channel", "float", "error"])),
    )


# --- JSON round trips, equality, hashing ------------------------------------------------------


@settings(deadline=None, max_examples=60)
@given(configs())
def test_config_round_trips_through_dict_and_json(config: QuantConfig) -> None:
    data = config.to_dict()
    assert data["version"] == CONFIG_VERSION
    assert QuantConfig.from_dict(data) == config
    assert QuantConfig.from_dict(json.loads(json.dumps(data))) == config


@settings(deadline=None, max_examples=40)
@given(plans())
def test_plan_round_trips_through_json(plan: Plan) -> None:
    text = plan.to_json()
    again = Plan.from_json(text)
    assert again == plan
    assert again.to_json() == text
    assert Plan.from_dict(plan.to_dict()) == plan


@settings(deadline=None, max_examples=40)
@given(plans())
def test_plan_json_is_canonical(plan: Plan) -> None:
    text = plan.to_json()
    # Sorted keys and no whitespace: re-serialising the parsed text canonically changes nothing.
    assert json.dumps(json.loads(text), sort_keys=True, separators=(",", ":")) == text


def test_equal_plans_built_differently_give_equal_json() -> None:
    w4 = QuantConfig(weight_bits=4, granularity="group", group_size=32)
    a = Plan(default=QuantConfig(), rules=(("blocks.*.mlp.*", w4), ("head", None)))
    w4_again = QuantConfig().with_(weight_bits=4, granularity="group", group_size=32)
    rules_as_lists: Any = [["blocks.*.mlp.*", w4_again], ["head", None]]  # as JSON would give
    b = Plan(default=QuantConfig(weight_bits=8, granularity="channel"), rules=rules_as_lists)
    assert a == b
    assert hash(a) == hash(b)
    assert a.to_json() == b.to_json()
    # A change anywhere changes the text.
    c = Plan(default=QuantConfig(), rules=(("blocks.*.mlp.*", w4.with_(symmetric=False)),))
    assert c.to_json() != a.to_json()


@settings(deadline=None, max_examples=30)
@given(configs())
def test_config_is_hashable_and_frozen(config: QuantConfig) -> None:
    copy = QuantConfig.from_dict(config.to_dict())
    assert hash(copy) == hash(config)
    assert len({config, copy}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.weight_bits = 3  # type: ignore[misc]


def test_plan_is_hashable_and_frozen() -> None:
    plan = Plan(default=QuantConfig(), rules=(("head", None),))
    assert len({plan, Plan.from_json(plan.to_json())}) == 1
    assert {plan: "cached"}[Plan.from_json(plan.to_json())] == "cached"
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.fallback = "float"  # type: ignore[misc]


def test_distinct_configs_are_distinct() -> None:
    a = QuantConfig(weight_bits=4, granularity="group", group_size=32)
    assert a != a.with_(group_size=64)
    assert a != a.with_(symmetric=False)
    assert len({a, a.with_(group_size=64), a.with_(symmetric=False)}) == 3


def test_with_validates_the_new_config() -> None:
    with pytest.raises(QuantConfigError, match="group_size"):
        QuantConfig().with_(granularity="group")


# --- validation ------------------------------------------------------------------------------

# (constructor arguments, substrings that the message must contain: the offending value)
INVALID: list[tuple[dict[str, Any], list[str]]] = [
    ({"weight_bits": 1}, ["weight_bits", "1"]),
    ({"weight_bits": 9}, ["weight_bits", "9"]),
    ({"weight_bits": 4.0}, ["weight_bits", "4.0"]),
    ({"granularity": "group"}, ["group_size", "None"]),
    ({"granularity": "group", "group_size": 1}, ["group_size", "1"]),
    ({"granularity": "channel", "group_size": 32}, ["group_size=32", "channel"]),
    ({"granularity": "tensor", "group_size": 64}, ["group_size=64", "tensor"]),
    ({"granularity": "row"}, ["granularity", "'row'"]),
    ({"calibration": "kl"}, ["calibration", "'kl'"]),
    ({"percentile": 50.0}, ["percentile", "50"]),
    ({"percentile": 100.5}, ["percentile", "100.5"]),
    ({"act_bits": 6}, ["act_bits", "6"]),
    ({"act_mode": "static", "act_granularity": "token"}, ["static", "token"]),
    ({"act_mode": "lazy"}, ["act_mode", "'lazy'"]),
    ({"learn_scales": True, "method": "ptq"}, ["learn_scales", "qat"]),
    ({"method": "gptq"}, ["method", "'gptq'"]),
    ({"float_dtype": "fp16"}, ["float_dtype", "'fp16'"]),
    ({"weight_bits": None, "act_bits": 8}, ["act_bits=8"]),
    ({"version": 2}, ["version 2"]),
    ({"version": 0}, ["version 0"]),
]


@pytest.mark.parametrize(("kwargs", "fragments"), INVALID, ids=lambda v: repr(v))
def test_invalid_config_names_the_bad_value(kwargs: dict[str, Any], fragments: list[str]) -> None:
    with pytest.raises(QuantConfigError) as info:
        QuantConfig(**kwargs)
    for fragment in fragments:
        assert fragment in str(info.value)
    # The same config arriving as JSON fails the same way.
    with pytest.raises(QuantConfigError) as info:
        QuantConfig.from_dict(json.loads(json.dumps(kwargs)))
    for fragment in fragments:
        assert fragment in str(info.value)


def test_from_dict_rejects_unknown_field_by_name() -> None:
    with pytest.raises(QuantConfigError, match="weight_bit"):
        QuantConfig.from_dict({"weight_bit": 4})


def test_from_dict_rejects_non_object() -> None:
    with pytest.raises(QuantConfigError, match="list"):
        QuantConfig.from_dict([8, "channel"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"percentile": "99.9"}, "99.9"),
        ({"symmetric": "false"}, "symmetric"),
        ({"act_bits": 8.0}, "8.0"),
    ],
)
def test_from_dict_rejects_wrongly_typed_values(data: dict[str, Any], fragment: str) -> None:
    """JSON from a user may carry strings or floats where ints and bools belong; such a config
    must fail with a QuantConfigError naming the value, not a TypeError or a silent
    reinterpretation (``"false"`` is truthy)."""
    with pytest.raises(QuantConfigError, match=fragment):
        QuantConfig.from_dict(data)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"version": 2}, "version 2"),
        ({"rulez": []}, "rulez"),
        ({"fallback": "guess"}, "'guess'"),
        ({"rules": [["head"]]}, "head"),
        ({"rules": [["", None]]}, "empty"),
        ({"rules": [["head", {"weight_bits": 11}]]}, "11"),
        ({"default": {"weight_bits": 4, "granularity": "group"}}, "group_size"),
    ],
)
def test_invalid_plan_names_the_bad_value(data: dict[str, Any], fragment: str) -> None:
    with pytest.raises(QuantConfigError, match=fragment):
        Plan.from_dict(data)


def test_plan_from_json_rejects_malformed_text() -> None:
    with pytest.raises(QuantConfigError, match="not valid JSON"):
        Plan.from_json("{'default': None")
    with pytest.raises(QuantConfigError, match="JSON object"):
        Plan.from_json("[1, 2]")


def test_plan_rejects_a_non_config_rule() -> None:
    with pytest.raises(QuantConfigError, match="head"):
        Plan(rules=(("head", {"weight_bits": 4}),))  # type: ignore[arg-type]


# --- plan matching -----------------------------------------------------------------------------

W8 = QuantConfig()
W4 = QuantConfig(weight_bits=4, granularity="group", group_size=32)
W2 = QuantConfig(weight_bits=2, granularity="channel")
W3 = QuantConfig(weight_bits=3, granularity="channel")


def test_match_explicit_then_pattern_then_default() -> None:
    plan = Plan(
        default=W8,
        rules=(("blocks.0.mlp.fc1", W2), ("blocks.*.mlp.*", W4), ("head", None)),
    )
    assert plan.match("blocks.0.mlp.fc1") == (W2, "explicit")
    assert plan.match("blocks.0.mlp.fc2") == (W4, "pattern:blocks.*.mlp.*")
    assert plan.match("blocks.11.mlp.fc1") == (W4, "pattern:blocks.*.mlp.*")
    assert plan.match("head") == (None, "explicit")
    assert plan.match("blocks.0.attn.qkv") == (W8, "default")
    # An explicit name matches only itself: no prefix, suffix or case-insensitive match.
    assert plan.match("blocks.0.mlp.fc10") == (W4, "pattern:blocks.*.mlp.*")
    assert plan.match("lm_head") == (W8, "default")
    assert plan.match("Head") == (W8, "default")
    assert plan.explicit_layers() == ["blocks.0.mlp.fc1", "head"]


def test_match_first_rule_wins() -> None:
    pattern_first = Plan(default=W8, rules=(("blocks.*.mlp.*", W4), ("blocks.0.mlp.fc1", W2)))
    assert pattern_first.match("blocks.0.mlp.fc1") == (W4, "pattern:blocks.*.mlp.*")
    two_patterns = Plan(default=W8, rules=(("blocks.?.mlp.*", W3), ("blocks.*", W4)))
    assert two_patterns.match("blocks.1.mlp.fc1") == (W3, "pattern:blocks.?.mlp.*")
    assert two_patterns.match("blocks.12.mlp.fc1") == (W4, "pattern:blocks.*")


def test_match_character_class_pattern() -> None:
    plan = Plan(default=None, rules=(("blocks.[01].attn.*", W4),))
    assert plan.match("blocks.1.attn.proj") == (W4, "pattern:blocks.[01].attn.*")
    assert plan.match("blocks.2.attn.proj") == (None, "default")


def test_uniform_plan() -> None:
    plan = Plan.uniform(W4, fallback="float")
    assert plan.is_uniform
    assert plan.fallback == "float"
    assert plan.match("anything.at.all") == (W4, "default")
    assert not Plan(rules=(("head", None),)).is_uniform


# --- granularity names and applicability ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tensor", ("tensor", None)),
        ("channel", ("channel", None)),
        ("group32", ("group", 32)),
        ("g64", ("group", 64)),
        ("  Group128 ", ("group", 128)),
        ("G16", ("group", 16)),
    ],
)
def test_parse_granularity(text: str, expected: tuple[str, int | None]) -> None:
    assert parse_granularity(text) == expected


@pytest.mark.parametrize("text", ["group", "g", "grp32", "32", "group-32", "group 32", "", "row"])
def test_parse_granularity_rejects_and_names_the_text(text: str) -> None:
    with pytest.raises(QuantConfigError) as info:
        parse_granularity(text)
    assert repr(text.strip().lower()) in str(info.value)


@settings(deadline=None, max_examples=30)
@given(configs())
def test_granularity_name_parses_back(config: QuantConfig) -> None:
    if config.is_float:
        return
    assert parse_granularity(config.granularity_name) == (config.granularity, config.group_size)


def test_why_not_applicable() -> None:
    g7 = QuantConfig(weight_bits=4, granularity="group", group_size=7)
    assert why_not_applicable(g7, 4096) == "group size 7 does not divide in_features 4096"
    assert why_not_applicable(g7, 7 * 300) is None
    assert why_not_applicable(W4, 4096) is None
    assert why_not_applicable(W4, 48) == "group size 32 does not divide in_features 48"
    assert why_not_applicable(W2, 7) is None
    assert why_not_applicable(QuantConfig.float(), 7) is None


def test_names() -> None:
    assert W4.name == "W4 group32 sym ptq"
    assert QuantConfig.float("bf16").name == "bf16"
    assert QuantConfig.float().is_float
    lsq = QuantConfig(
        weight_bits=4,
        symmetric=False,
        calibration="mse",
        act_bits=8,
        method="qat",
        learn_scales=True,
    )
    assert lsq.name == "W4 channel asym mse A8 token dynamic qat+lsq"
