"""Model sources: a trusted factory named by the operator, weights as data, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from explorer.errors import ModelLoadError
from explorer.models.source import load_model

FACTORY = """
from torch import nn

def build():
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))

def not_a_module():
    return 42
"""


@pytest.fixture
def factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "user_factory.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_factory_with_safetensors_weights(factory: Path) -> None:
    torch.manual_seed(3)
    reference = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    save_file(reference.state_dict(), str(factory / "w.safetensors"))
    loaded = load_model(factory="user_factory:build", weights=factory / "w.safetensors")
    x = torch.randn(3, 8)
    torch.testing.assert_close(loaded.model(x), reference(x))
    assert not loaded.model.training


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"factory": "user_factory:build"}, "needs --weights"),
        ({"factory": "user_factory", "weights": "w.safetensors"}, "package.module:function"),
        ({"factory": "no_such_module_xyz:f", "weights": "w.safetensors"}, "cannot import"),
        ({"factory": "user_factory:missing", "weights": "w.safetensors"}, "no callable"),
        ({"factory": "user_factory:not_a_module", "weights": "w.safetensors"}, "not a torch"),
        ({"model": "x", "factory": "user_factory:build"}, "not both"),
        ({}, "no model given"),
        ({"model": "no-such-model"}, "neither a built-in model"),
    ],
)
def test_model_source_errors(factory: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        load_model(**kwargs)


def test_directory_without_config_is_explained(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path))


def test_cli_models_json_contract() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "explorer.cli", "models", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    for row in doc["models"]:
        assert {"name", "task", "params", "metric"} <= row.keys()
        assert {"name", "value"} <= row["metric"].keys()


def test_cli_train_unknown_model_is_one_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "explorer.cli", "train", "nope"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "unknown built-in model 'nope'" in out.stderr
