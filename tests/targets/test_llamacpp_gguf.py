"""The GGUF writer: llama.cpp's names, the rope permutation (checked as the same rotation, not
as the same code), tokenizer metadata, per-tensor types from a plan read back from the file, bits
per weight against the file's tensor bytes, and the equivalent llama-quantize command."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

gguf = pytest.importorskip("gguf")
pytest.importorskip("transformers")

from explorer.export.gguf import (  # noqa: E402
    GgufError,
    GgufPlan,
    gguf_name,
    permute_rope,
    read_types,
    read_weight,
    write_gguf,
)
from explorer.quant import ggml  # noqa: E402

from .llamacpp_model import load_float, save_tiny_llama  # noqa: E402


def _has_ggml() -> bool:
    try:
        ggml.ggml_base()
    except ggml.GgmlError:
        return False
    return True


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    path = save_tiny_llama(tmp_path_factory.mktemp("gguf") / "model")
    return path, load_float(path)


def test_names_follow_llama_cpp() -> None:
    assert gguf_name("model.layers.3.mlp.down_proj") == "blk.3.ffn_down"
    assert gguf_name("model.layers.0.self_attn.o_proj") == "blk.0.attn_output"
    assert gguf_name("model.embed_tokens") == "token_embd"
    assert gguf_name("lm_head") == "output"
    assert gguf_name("model.layers.0.mlp") is None


def _rotate_half(x: torch.Tensor, pos: int, base: float = 10000.0) -> torch.Tensor:
    """Hugging Face's rotary embedding of one head vector: pairs (i, i + d/2)."""
    d = x.shape[-1]
    freq = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    cos, sin = torch.cos(pos * freq).repeat(2), torch.sin(pos * freq).repeat(2)
    rot = torch.cat([-x[..., d // 2 :], x[..., : d // 2]], dim=-1)
    return x * cos + rot * sin


def _rotate_pairs(x: torch.Tensor, pos: int, base: float = 10000.0) -> torch.Tensor:
    """llama.cpp's rope for the llama architecture: adjacent pairs (2i, 2i + 1)."""
    d = x.shape[-1]
    freq = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    a, b = x[..., 0::2], x[..., 1::2]
    c, s = torch.cos(pos * freq), torch.sin(pos * freq)
    return torch.stack([a * c - b * s, a * s + b * c], dim=-1).reshape(x.shape)


def test_permuted_rows_make_llama_cpp_rope_equal_hugging_faces() -> None:
    """q·k after each runtime's rope is the same number, for every head and position pair."""
    gen = torch.Generator().manual_seed(0)
    heads, d, width = 4, 16, 32
    wq, wk = (torch.randn(heads * d, width, generator=gen, dtype=torch.float64) for _ in "qk")
    x = torch.randn(2, width, generator=gen, dtype=torch.float64)
    hq, hk = (wq @ x[0]).view(heads, d), (wk @ x[1]).view(heads, d)
    pq, pk = (permute_rope(wq, heads) @ x[0]).view(heads, d), (permute_rope(wk, heads) @ x[1])
    pk = pk.view(heads, d)
    hf = (_rotate_half(hq, 5) * _rotate_half(hk, 2)).sum(-1)
    cpp = (_rotate_pairs(pq, 5) * _rotate_pairs(pk, 2)).sum(-1)
    torch.testing.assert_close(cpp, hf, rtol=1e-12, atol=1e-12)


def test_float_file_holds_names_hyperparameters_and_tokenizer(
    llama: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    path, model = llama
    report = write_gguf(model, path, tmp_path / "m.gguf", GgufPlan("f32"))
    reader = gguf.GGUFReader(str(report.path))
    fields = reader.fields

    def value(key: str) -> object:
        f = fields[key]
        return f.contents()

    assert value("general.architecture") == "llama"
    assert value("llama.block_count") == 2 and value("llama.attention.head_count_kv") == 2
    assert value("tokenizer.ggml.model") == "gpt2" and value("tokenizer.ggml.pre") == "gpt-2"
    tokens = value("tokenizer.ggml.tokens")
    assert len(tokens) == model.config.vocab_size and tokens[1] == "<s>"
    assert (
        value("tokenizer.ggml.bos_token_id") == 1 and value("tokenizer.ggml.add_bos_token") is False
    )
    names = {t.name for t in reader.tensors}
    assert {"token_embd.weight", "output.weight", "blk.1.ffn_down.weight"} <= names
    # the query rows are permuted for llama.cpp's rope, the value rows are not
    q = model.model.layers[0].self_attn.q_proj.weight.detach()
    assert torch.equal(read_weight(report.path, "blk.0.attn_q.weight"), permute_rope(q, 4))
    v = model.model.layers[0].self_attn.v_proj.weight.detach()
    assert torch.equal(read_weight(report.path, "blk.0.attn_v.weight"), v)


@pytest.mark.skipif(not _has_ggml(), reason="llama-cpp-python (ggml) not installed")
def test_mixed_types_round_trip_and_bits_match_the_file(
    llama: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    path, model = llama
    plan = GgufPlan(
        default="q5_0",
        tensors=((r"blk\.0\.ffn_down", "q4_k"), (r"attn_v", "q8_0"), (r"blk\.1\.ffn_up", "q2_k")),
        token_embedding="q6_k",  # rows of 64: llama.cpp's fallback for q6_k is q8_0
        output="iq4_nl",
    )
    report = write_gguf(model, path, tmp_path / "mixed.gguf", plan)
    types = read_types(report.path)
    assert types["blk.0.ffn_down.weight"] == "q4_k" and types["blk.1.ffn_down.weight"] == "q5_0"
    assert types["blk.0.attn_v.weight"] == "q8_0" and types["blk.1.ffn_up.weight"] == "q4_0"
    assert types["token_embd.weight"] == "q8_0" and types["output.weight"] == "iq4_nl"
    assert types["blk.0.attn_norm.weight"] == "f32"
    assert report.fallbacks()["token_embd.weight"] == "q6_k -> q8_0"
    assert {n: t for n, t in types.items() if n in report.types} == report.types
    down = model.model.layers[0].mlp.down_proj.weight.detach()
    fmt = ggml.format_of("q4_k")
    assert torch.equal(
        read_weight(report.path, "blk.0.ffn_down.weight"), ggml.round_trip(down, fmt)
    )
    # bits per weight from the block layouts = the matrices' bytes in the file
    reader = gguf.GGUFReader(str(report.path))
    matrix_bytes = sum(int(t.n_bytes) for t in reader.tensors if t.name in report.types)
    assert math.isclose(matrix_bytes * 8 / sum(report.weights.values()), report.bits_per_weight)


def test_quantize_command_names_every_override() -> None:
    plan = GgufPlan("q4_k", tensors=((r"blk\.3\.ffn_down", "q6_k"),), output="q8_0")
    assert plan.quantize_command("in.gguf", "out.gguf") == (
        "llama-quantize --pure --tensor-type 'blk\\.3\\.ffn_down=q6_k' --output-tensor-type q8_0 "
        "in.gguf out.gguf Q4_K_M"
    )
    assert GgufPlan.from_dict(plan.to_dict()) == plan
    with pytest.raises(ggml.QuantizationError, match="unknown ggml format 'q7_k'"):
        GgufPlan("q7_k")


def test_unsupported_architecture_is_named(tmp_path: Path) -> None:
    import transformers

    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2))
    with pytest.raises(GgufError, match="supports llama, mistral, qwen2 models, not 'gpt2'"):
        write_gguf(model, tmp_path, tmp_path / "x.gguf")
