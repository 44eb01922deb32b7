"""Hugging Face models from a local directory, built in the test (random init, `save_pretrained`,
no download): loaded by transformers inside our checks, quantized (W8A8 and W4 g32, Conv1D layers
included) and evaluated for fidelity.

Loading is compared with the model that was saved: outputs equal exactly (the same float32
weights run the same code), or, for fp16/bf16 checkpoints, weights equal to the stored values
cast to float32."""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch

from explorer.errors import ModelLoadError
from explorer.measure.evaluation import evaluate_pair
from explorer.models.hf import (
    DEFAULT_MAX_PARAMS,
    load_hf,
    load_hf_directory,
    random_token_batches,
    vocab_size,
)
from explorer.models.safe_load import safetensors_header
from explorer.models.source import load_model
from explorer.nn import quantize_model
from explorer.nn.convert import linear_parameter_count, quant_modules
from explorer.quant.config import Plan, QuantConfig

transformers = pytest.importorskip("transformers")

W8A8 = QuantConfig(act_bits=8)
W4G32 = QuantConfig(weight_bits=4, granularity="group", group_size=32)
VOCAB = 96
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def build(kind: str, *, tie: bool | None = None) -> torch.nn.Module:
    """A tiny randomly initialised model of ``kind``, in eval mode."""
    torch.manual_seed(0)
    t = transformers
    decoder = dict(**SMALL, vocab_size=VOCAB, num_key_value_heads=2, max_position_embeddings=64)
    if tie is not None:
        decoder["tie_word_embeddings"] = tie
    if kind == "llama":
        model = t.LlamaForCausalLM(t.LlamaConfig(**decoder))
    elif kind == "qwen2":
        model = t.Qwen2ForCausalLM(t.Qwen2Config(**decoder))
    elif kind == "mistral":
        model = t.MistralForCausalLM(t.MistralConfig(**decoder))
    elif kind == "gpt2":
        extra = {} if tie is None else {"tie_word_embeddings": tie}
        config = t.GPT2Config(
            n_embd=64, n_layer=2, n_head=2, vocab_size=128, n_positions=64,
            bos_token_id=0, eos_token_id=0, **extra,
        )  # fmt: skip
        model = t.GPT2LMHeadModel(config)
    elif kind in ("bert", "bert-mlm"):
        config = t.BertConfig(**SMALL, vocab_size=VOCAB, max_position_embeddings=64)
        model = t.BertModel(config) if kind == "bert" else t.BertForMaskedLM(config)
    elif kind == "vit":
        config = t.ViTConfig(**SMALL, image_size=32, patch_size=8, num_labels=3)
        model = t.ViTForImageClassification(config)
    elif kind == "whisper":
        config = t.WhisperConfig(
            d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=VOCAB,
            pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
            suppress_tokens=[], begin_suppress_tokens=[], num_mel_bins=8,
            max_source_positions=16, max_target_positions=32,
        )  # fmt: skip
        model = t.WhisperForConditionalGeneration(config)
    else:
        raise ValueError(kind)
    return model.eval()


def example(kind: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    if kind == "vit":
        return {"pixel_values": torch.randn(2, 3, 32, 32, generator=g)}
    if kind == "whisper":
        return {
            "input_features": torch.randn(2, 8, 32, generator=g),
            "decoder_input_ids": torch.randint(0, VOCAB, (2, 5), generator=g),
        }
    return {"input_ids": torch.randint(0, VOCAB, (2, 7), generator=g)}


def output(model: torch.nn.Module, kind: str) -> torch.Tensor:
    with torch.no_grad():
        out = model(**example(kind))
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def save(model: torch.nn.Module, path: Path, **kwargs: Any) -> Path:
    model.save_pretrained(path, **kwargs)
    return path


def edit_config(path: Path, **changes: Any) -> None:
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, **changes}))


# --- what transformers loads, we load -------------------------------------------------------

ARCHITECTURES = ["llama", "qwen2", "mistral", "gpt2", "bert", "vit", "whisper"]


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_architectures_load_with_their_own_outputs(kind: str, tmp_path: Path) -> None:
    original = build(kind)
    loaded = load_hf(save(original, tmp_path / kind))
    assert loaded.architecture == type(original).__name__
    assert loaded.stored_dtype == "float32" and loaded.warnings == ()
    unique = {id(p): p.numel() for p in [*original.parameters(), *original.buffers()]}
    assert loaded.parameters == sum(unique.values())
    assert not loaded.model.training
    torch.testing.assert_close(output(loaded.model, kind), output(original, kind), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_checkpoints_load_as_float32_and_report_the_stored_dtype(
    dtype: torch.dtype, tmp_path: Path
) -> None:
    original = build("llama")
    save(original.to(dtype), tmp_path / "half")
    loaded = load_hf(tmp_path / "half")
    assert loaded.stored_dtype == str(dtype).removeprefix("torch.")
    state = loaded.model.state_dict()
    for name, t in original.state_dict().items():
        assert state[name].dtype == torch.float32, name
        torch.testing.assert_close(state[name], t.float(), rtol=0, atol=0)  # exact upcast


def test_sharded_safetensors_with_an_index(tmp_path: Path) -> None:
    original = build("llama")
    path = save(original, tmp_path / "sharded", max_shard_size="20KB")
    shards = sorted(p.name for p in path.glob("model-*.safetensors"))
    assert len(shards) > 2 and (path / "model.safetensors.index.json").is_file()
    model = load_hf_directory(path)
    torch.testing.assert_close(output(model, "llama"), output(original, "llama"), rtol=0, atol=0)


def test_shard_names_may_not_leave_the_directory(tmp_path: Path) -> None:
    path = save(build("llama"), tmp_path / "sharded", max_shard_size="20KB")
    index = json.loads((path / "model.safetensors.index.json").read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "../elsewhere.safetensors"
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match=r"names shards outside .*\.\./elsewhere"):
        load_hf(path)


def test_legacy_position_ids_buffer_of_old_checkpoints(tmp_path: Path) -> None:
    """Older transformers saved BERT's ``embeddings.position_ids`` buffer; the old matcher
    refused such checkpoints ("Unexpected (1): embeddings.position_ids")."""
    original = build("bert")
    path = save(original, tmp_path / "old-bert")
    weights = path / "model.safetensors"
    tensors = safetensors.torch.load_file(weights)
    assert "embeddings.position_ids" not in tensors
    tensors["embeddings.position_ids"] = torch.arange(64)[None]
    safetensors.torch.save_file(tensors, weights, metadata={"format": "pt"})
    loaded = load_hf(path)
    torch.testing.assert_close(output(loaded.model, "bert"), output(original, "bert"))


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("tie", [True, False])
def test_tied_heads_saved_once_and_untied_heads(kind: str, tie: bool, tmp_path: Path) -> None:
    original = build(kind, tie=tie)
    path = save(original, tmp_path / kind)
    stored = safetensors_header(path / "model.safetensors")
    model = load_hf_directory(path)
    head = model.lm_head.weight
    embed = model.get_input_embeddings().weight
    head_name = "lm_head.weight"
    if tie:
        assert head_name not in stored  # saved once
        assert head.data_ptr() == embed.data_ptr()
    else:
        assert head_name in stored
        assert head.data_ptr() != embed.data_ptr()
        torch.testing.assert_close(head, original.lm_head.weight, rtol=0, atol=0)
    torch.testing.assert_close(output(model, kind), output(original, kind), rtol=0, atol=0)


def test_base_checkpoint_into_a_head_class_warns_of_random_weights(tmp_path: Path) -> None:
    path = save(build("bert"), tmp_path / "encoder")
    edit_config(path, architectures=["BertForSequenceClassification"])
    loaded = load_model(str(path))
    assert loaded.architecture == "BertForSequenceClassification" and loaded.path == str(path)
    assert len(loaded.warnings) == 1
    assert loaded.warnings[0].startswith(
        "2 weight(s) of BertForSequenceClassification are not in the checkpoint and were "
        "initialised at random (classifier.bias, classifier.weight)"
    )


def test_pickle_bin_checkpoint_loads_weights_only(tmp_path: Path) -> None:
    original = build("llama", tie=False)
    path = save(original, tmp_path / "bin")
    (path / "model.safetensors").unlink()
    torch.save(original.state_dict(), path / "pytorch_model.bin")
    loaded = load_hf(path)
    assert loaded.stored_dtype == "float32"
    torch.testing.assert_close(output(loaded.model, "llama"), output(original, "llama"))


def test_bin_is_refused_where_transformers_cannot_promise_weights_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older transformers whose ``load_state_dict`` has no ``weights_only`` would unpickle
    fully: the .bin is refused before transformers sees it."""
    from transformers import modeling_utils

    original = build("llama")
    path = save(original, tmp_path / "bin")
    (path / "model.safetensors").unlink()
    torch.save(original.state_dict(), path / "pytorch_model.bin")

    def load_state_dict(checkpoint_file: str, map_location: str = "cpu") -> dict:
        raise AssertionError("must not be called")

    monkeypatch.setattr(modeling_utils, "load_state_dict", load_state_dict)
    with pytest.raises(
        ModelLoadError, match=r"pickle checkpoints \(pytorch_model.bin\) are refused"
    ):
        load_hf(path)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("protocol", [2, 4])
def test_malicious_pickle_bin_never_runs(protocol: int, tmp_path: Path) -> None:
    path = save(build("llama"), tmp_path / "evil")
    (path / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    with (path / "pytorch_model.bin").open("wb") as f:
        pickle.dump({"lm_head.weight": _Payload(marker)}, f, protocol=protocol)
    with pytest.raises(ModelLoadError, match=r"pickled Python objects.*refused: posix\.system"):
        load_hf(path)
    assert not marker.exists()


# --- refusals -----------------------------------------------------------------------------


def test_refusals_before_loading(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_hf_directory(tmp_path)
    path = save(build("gpt2"), tmp_path / "gpt2")
    config = json.loads((path / "config.json").read_text())
    edit_config(path, architectures=["os.system"])
    with pytest.raises(ModelLoadError, match="'os.system' is not a model class"):
        load_hf_directory(path)
    edit_config(path, architectures=["GPT2Config"])  # in transformers, but not a model
    with pytest.raises(ModelLoadError, match="'GPT2Config' is not a model class"):
        load_hf_directory(path)
    (path / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "x.Y"}}))
    with pytest.raises(ModelLoadError, match="custom code"):
        load_hf_directory(path)
    (path / "config.json").write_text(
        json.dumps({**config, "quantization_config": {"quant_method": "gptq"}})
    )
    with pytest.raises(ModelLoadError, match="pre-quantized"):
        load_hf_directory(path)
    (path / "config.json").write_text(json.dumps(config))
    size = (path / "model.safetensors").stat().st_size
    with pytest.raises(ModelLoadError, match=f"hold {size:,} bytes, over the limit of 1,000"):
        load_hf_directory(path, max_bytes=1000)
    (path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty"):
        load_hf_directory(path)
    (path / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="has no weights"):
        load_hf_directory(path)


def test_non_finite_weights_are_named(tmp_path: Path) -> None:
    model = build("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, :3] = float("nan")
        model.model.norm.weight[0] = float("inf")
    path = save(model, tmp_path / "nan")
    with pytest.raises(ModelLoadError) as info:
        load_hf(path)
    message = str(info.value)
    assert "2 tensor(s) hold NaN or Inf values" in message
    assert "model.layers.1.mlp.up_proj.weight (3 NaN)" in message
    assert "model.norm.weight (1 Inf)" in message


def test_parameter_limit_counts_on_the_meta_device(tmp_path: Path) -> None:
    path = save(build("llama"), tmp_path / "llama")
    params = load_hf(path).parameters
    with pytest.raises(ModelLoadError, match=f"describes {params:,} parameters .* limit of 1,000;"):
        load_hf(path, max_params=1000)
    edit_config(path, num_hidden_layers=100_000)
    with pytest.raises(
        ModelLoadError, match="num_hidden_layers=100,000 is over the limit of 1,024"
    ):
        load_hf(path)


@pytest.mark.slow
def test_huge_config_is_refused_quickly_in_little_memory(tmp_path: Path) -> None:
    """Issue 18: a 1 KB config.json asked for a 17 GB allocation. A 65536-wide, 64-layer Llama
    (4.4 T parameters) must be refused from its meta-device count, in a process whose peak
    resident memory stays under 1.5 GB (importing torch and transformers alone takes ~0.4 GB)."""
    path = save(build("llama"), tmp_path / "huge")
    h, layers = 65536, 64
    config = json.loads((path / "config.json").read_text())
    del config["head_dim"]  # then hidden_size / num_attention_heads = 128
    config.update(hidden_size=h, intermediate_size=4 * h, num_hidden_layers=layers,
                  num_attention_heads=512, num_key_value_heads=512)  # fmt: skip
    (path / "config.json").write_text(json.dumps(config))
    assert (path / "config.json").stat().st_size < 2048
    # per layer: q, k, v, o (4 h^2), gate, up, down (3 * 4 h^2), two norms; embeddings and an
    # untied head (2 * vocab * h), the final norm, rotary inv_freq buffers (2 * 64)
    expected = layers * (16 * h * h + 2 * h) + 2 * VOCAB * h + h + 2 * 64
    script = textwrap.dedent(
        f"""
        import time
        from explorer.errors import ModelLoadError
        from explorer.models.hf import load_hf
        start = time.perf_counter()
        try:
            load_hf({str(path)!r})
        except ModelLoadError as exc:
            print(exc)
        print(time.perf_counter() - start)
        # VmHWM, not ru_maxrss: that keeps the test runner's size from the fork
        print(next(int(l.split()[1]) * 1024 for l in open("/proc/self/status")
                   if l.startswith("VmHWM:")))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    )
    message, seconds, peak = done.stdout.strip().splitlines()
    assert f"over the limit of {DEFAULT_MAX_PARAMS:,}; nothing was allocated" in message
    assert f"describes {expected:,} parameters (16," in message  # 4.4 T: 16,384 GiB
    assert float(seconds) < 20
    assert int(peak) < 1.5 * 1024**3


# --- quantization and fidelity of loaded models --------------------------------------------


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


@pytest.mark.parametrize("kind", ["gpt2", "bert-mlm"])
def test_hf_directory_loads_quantizes_and_reports_fidelity(kind: str, tmp_path: Path) -> None:
    original = build(kind)
    model = load_hf_directory(save(original, tmp_path / kind))
    ids = torch.randint(0, VOCAB, (2, 10))
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
