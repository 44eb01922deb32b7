"""Hugging Face models from a local directory: built in the test (no download), loaded safely,
quantized (W8A8 and W4 g32) with Conv1D layers included, and evaluated for fidelity."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from explorer.errors import ModelLoadError
from explorer.measure.evaluation import evaluate_pair
from explorer.models.hf import load_hf_directory, random_token_batches, vocab_size
from explorer.nn import quantize_model
from explorer.nn.convert import linear_parameter_count, quant_modules
from explorer.quant.config import Plan, QuantConfig

transformers = pytest.importorskip("transformers")

W8A8 = QuantConfig(act_bits=8)
W4G32 = QuantConfig(weight_bits=4, granularity="group", group_size=32)


def save_tiny(kind: str, path: Path) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "gpt2":
        config = transformers.GPT2Config(
            n_embd=64,
            n_layer=2,
            n_head=2,
            vocab_size=128,
            n_positions=64,
            bos_token_id=0,
            eos_token_id=0,
        )
        model = transformers.GPT2LMHeadModel(config)
    else:
        config = transformers.BertConfig(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            vocab_size=128,
            max_position_embeddings=64,
        )
        model = transformers.BertForMaskedLM(config)
    model.save_pretrained(path, safe_serialization=True)
    return model.eval()


def fidelity_batches(model: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Seeded random ids; the next id is the target (it only affects perplexity, not fidelity)."""
    out = []
    for ids, _ in random_token_batches(vocab_size(model), n=32, seq_len=17, batch=8):
        out.append((ids[:, :-1], ids[:, 1:]))
    return out


class Logits(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids).logits


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_hf_directory_loads_quantizes_and_reports_fidelity(kind: str, tmp_path: Path) -> None:
    original = save_tiny(kind, tmp_path / kind)
    model = load_hf_directory(tmp_path / kind)
    ids = torch.randint(0, 128, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, original(ids).logits)
    total = linear_parameter_count(model)
    for config in (W8A8, W4G32):
        q = quantize_model(model, Plan.uniform(config), example_input=ids)
        quantized = sum(m.weight_shape[0] * m.weight_shape[1] for m in quant_modules(q).values())
        assert quantized / total >= 0.9
        if kind == "gpt2":
            kinds = {n.rsplit(".", 1)[-1] for n in quant_modules(q)}
            assert {"c_attn", "c_fc", "c_proj"} <= kinds  # Conv1D layers are quantized
        result = evaluate_pair(
            Logits(model).eval(), Logits(q).eval(), fidelity_batches(model), "lm"
        )
        m = result.metrics
        assert m["sqnr_db"] > (15 if config is W4G32 else 20)
        assert 0.9 < m["cosine"] <= 1.0 and 0.0 <= m["kl"] < 0.5 and m["agreement"] > 0.5
        assert math.isfinite(m["perplexity"]) and result.n_samples == 32


def test_hf_directory_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_hf_directory(tmp_path)
    path = tmp_path / "gpt2"
    save_tiny("gpt2", path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "architectures": ["os.system"]}))
    with pytest.raises(ModelLoadError, match="not a model class"):
        load_hf_directory(path)
    (path / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "x.Y"}}))
    with pytest.raises(ModelLoadError, match="custom code"):
        load_hf_directory(path)
    (path / "config.json").write_text(json.dumps(config))
    (path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty"):
        load_hf_directory(path)
