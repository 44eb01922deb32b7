"""`DIMENSIONS`: the one list of a sweep's axes, used by the spec and both CLI commands."""

from __future__ import annotations

import dataclasses

import pytest

from explorer.cli.main import build_parser
from explorer.sweep.space import DIMENSIONS, SweepSpec


def test_dimensions_are_the_spec_fields_that_hold_tuples() -> None:
    spec = SweepSpec()
    fields = {f.name for f in dataclasses.fields(SweepSpec)}
    assert set(DIMENSIONS) <= fields
    for name in DIMENSIONS:
        assert isinstance(getattr(spec, name), tuple) and getattr(spec, name), name
    others = fields - set(DIMENSIONS)
    assert not any(isinstance(getattr(spec, n), tuple) and n != "layers" for n in others)


@pytest.mark.parametrize(
    "argv", [["sweep", "--model", "digits-cnn"], ["export", "--model", "digits-cnn", "--out", "x"]]
)
def test_every_dimension_is_an_option_of_the_command(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    command = argv[0]
    for name in DIMENSIONS:
        option = "bits" if name == "weight_bits" else name
        assert hasattr(args, option), f"explorer {command} has no --{option.replace('_', '-')}"
