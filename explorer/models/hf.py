"""Users' Hugging Face models from a local directory (``config.json`` + safetensors weights).

The architecture comes from the config's ``architectures`` entry, which must name a model class
of the installed ``transformers`` package (an optional extra: ``pip install
'quant-explorer[hf]'``); remote code is never run, nothing is downloaded (``local_files_only``),
and the weights are read with `explorer.models.safe_load` (safetensors, or ``.bin`` through
``torch.load(weights_only=True)``), validated against the architecture's names and shapes.
Both ``nn.Linear`` and transformers' ``Conv1D`` (GPT-2) layers are quantized. Without a tokenizer
or data, evaluation uses seeded random token ids (`random_token_batches`): fidelity metrics to the
float model still make the model explorable.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from explorer.errors import ModelLoadError
from explorer.models.safe_load import DEFAULT_MAX_BYTES, load_tensors, validate_state_dict

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
SHARD_INDEX = "model.safetensors.index.json"


def is_hf_directory(path: str | os.PathLike[str]) -> bool:
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()


def _import_transformers():  # noqa: ANN202 - the module, typed loosely on purpose
    try:
        import transformers
    except ImportError:
        raise ModelLoadError(
            "loading a Hugging Face model needs the optional `transformers` package: "
            "pip install 'quant-explorer[hf]'"
        ) from None
    return transformers


def _architecture(path: Path) -> str:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path / 'config.json'} is not readable JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path / 'config.json'} must hold a JSON object")
    if config.get("auto_map"):
        raise ModelLoadError(
            f"{path} asks for custom code (auto_map); custom model code is never run here"
        )
    archs = config.get("architectures") or []
    if not archs or not isinstance(archs[0], str):
        raise ModelLoadError(
            f"{path / 'config.json'} has no `architectures` entry naming the model class"
        )
    return archs[0]


def _read_weights(path: Path, max_bytes: int) -> dict[str, torch.Tensor]:
    index = path / SHARD_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"{index} is not a valid shard index: {exc}") from None
        tensors: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = (path / shard).resolve()
            if path.resolve() not in shard_path.parents:
                raise ModelLoadError(f"shard {shard!r} in {index} points outside {path}")
            tensors.update(load_tensors(shard_path, max_bytes=max_bytes))
        return tensors
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return load_tensors(path / name, max_bytes=max_bytes)
    raise ModelLoadError(f"{path} has no weights: expected one of {', '.join(WEIGHT_FILES)}")


def load_hf_directory(
    path: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES
) -> nn.Module:
    """The float model of a local Hugging Face directory, in eval mode."""
    path = Path(path)
    if not is_hf_directory(path):
        raise ModelLoadError(f"{path} is not a model directory (no config.json)")
    transformers = _import_transformers()
    arch = _architecture(path)
    cls = getattr(transformers, arch, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ModelLoadError(
            f"architecture {arch!r} is not a model class of transformers {transformers.__version__}"
        )
    config = transformers.AutoConfig.from_pretrained(
        str(path), local_files_only=True, trust_remote_code=False
    )
    model = cls(config)
    tensors = _read_weights(path, max_bytes)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    # Tied weights (GPT-2's lm_head = wte) are saved once; the model re-ties them on load.
    tied = {k for k in expected if k not in tensors and _is_tied(model, k)}
    validate_state_dict(
        {k: v for k, v in expected.items() if k not in tied}, tensors, source=str(path)
    )
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if set(missing) - tied or unexpected:
        raise ModelLoadError(
            f"{path}: weights do not match {arch}: missing {missing}, unexpected {unexpected}"
        )
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model.eval()


def _is_tied(model: nn.Module, key: str) -> bool:
    module_name, _, attr = key.rpartition(".")
    try:
        t = getattr(model.get_submodule(module_name), attr)
    except AttributeError:
        return False
    ptr = t.data_ptr()
    return any(k != key and v.data_ptr() == ptr for k, v in model.state_dict().items())


def vocab_size(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    size = getattr(config, "vocab_size", None)
    if not isinstance(size, int) or size < 2:
        raise ModelLoadError("the model's config has no usable vocab_size")
    return size


def random_token_batches(
    vocab: int, n: int = 64, seq_len: int = 32, batch: int = 16, seed: int = 0
) -> list[tuple[torch.Tensor, None]]:
    """Seeded random token ids, unlabelled: evaluation data for fidelity metrics only."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, seq_len), generator=gen)
    return [(ids[i : i + batch], None) for i in range(0, n, batch)]
