"""A GGUF file (llama.cpp's model format) for a Llama-architecture Hugging Face model, with the
plan's ggml type per tensor, quantized by ggml itself (`explorer.quant.ggml`).

What goes in, as llama.cpp's own ``convert_hf_to_gguf.py`` writes it:

- tensors under llama.cpp's names (`gguf_name`: ``model.layers.3.mlp.down_proj`` →
  ``blk.3.ffn_down``), norms and biases in F32, every matrix in its planned type. For the
  ``llama`` architecture (Llama, Mistral) the query and key rows are permuted: Hugging Face's
  rotary embedding rotates the two halves of each head (``rotate_half``), llama.cpp's the
  interleaved pairs, so each head's rows ``[x0..x(d/2-1), y0..]`` become ``[x0, y0, x1, y1, ...]``
  (`permute_rope`); ``qwen2`` uses the half-rotation in llama.cpp too and keeps its rows;
- hyperparameters (context, width, layers, heads, KV heads, RMS epsilon, rope base);
- the tokenizer: a byte-level BPE ``tokenizer.json`` as ``gpt2``-model vocabulary (tokens in
  their byte-to-unicode spelling, merges as ``"a b"``, token types, bos/eos/pad, whether bos is
  added), with the pre-tokenizer named by its split regex (`PRE_TOKENIZERS`).

The per-tensor types are a `GgufPlan`: a default format, ``--tensor-type``-style overrides (a
regex searched in the tensor name, first match wins, as ``llama-quantize`` does), and the token
embedding and output types. `GgufPlan.quantize_command` prints the ``llama-quantize`` command
that applies the same plan to a user's full-size F16 GGUF.

Imports: `explorer.quant.ggml`, numpy, torch, and ``gguf`` / ``transformers`` when called.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from explorer.errors import ExplorerError
from explorer.quant import ggml
from explorer.quant.ggml import FORMATS, GgmlFormat, format_of

PLAN_VERSION = 1
ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}
"""Hugging Face ``model_type`` → llama.cpp architecture this writer supports."""

PERMUTED = {"llama"}
"""Architectures whose query/key rows llama.cpp wants interleaved (see the module docstring)."""

LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
TOP_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}

GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
PRE_TOKENIZERS = {GPT2_SPLIT: "gpt-2"}
"""A byte-level pre-tokenizer's split regex → llama.cpp's ``tokenizer.ggml.pre``."""

FTYPE_NAMES = {
    "f32": "F32",
    "f16": "F16",
    "bf16": "BF16",
    "q8_0": "Q8_0",
    "q6_k": "Q6_K",
    "q5_k": "Q5_K_M",
    "q5_0": "Q5_0",
    "q5_1": "Q5_1",
    "q4_k": "Q4_K_M",
    "q4_0": "Q4_0",
    "q4_1": "Q4_1",
    "iq4_nl": "IQ4_NL",
    "q3_k": "Q3_K_M",
    "q2_k": "Q2_K",
    "tq2_0": "TQ2_0",
}
"""The ``llama-quantize`` type argument whose default tensor type (with ``--pure``) is the
format: the ``_M`` mixes only differ from it in the tensors ``--pure`` leaves alone."""


class GgufError(ExplorerError, ValueError):
    """A model or tokenizer cannot be written as GGUF (unsupported architecture, tokenizer)."""


def gguf_name(hf_name: str) -> str | None:
    """llama.cpp's name of a Hugging Face module (``model.layers.3.mlp.down_proj`` →
    ``blk.3.ffn_down``), None when it has none."""
    if hf_name in TOP_NAMES:
        return TOP_NAMES[hf_name]
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", hf_name)
    if m and m.group(2) in LAYER_NAMES:
        return f"blk.{m.group(1)}.{LAYER_NAMES[m.group(2)]}"
    return None


def gguf_names(model: nn.Module) -> dict[str, str]:
    """llama.cpp's tensor name (`gguf_name`) of each of ``model``'s modules that has one, when
    this writer supports the model (Llama, Mistral, Qwen2); empty for any other model, whose
    module names may look alike but are not llama.cpp's. A head tied to the embedding is
    ``token_embd``: llama.cpp runs the embedding's tensor in its place."""
    try:
        architecture(getattr(model, "config", None))
    except GgufError:
        return {}
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    names = {}
    for module_name, _ in model.named_modules():
        name = gguf_name(module_name)
        if name is not None:
            names[module_name] = "token_embd" if name == "output" and tied else name
    return names


@dataclass(frozen=True)
class GgufPlan:
    """The ggml type of every matrix: ``tensors`` (regex, format) pairs searched in order in the
    tensor name (``blk\\.3\\.ffn_down``), then ``token_embedding``/``output`` for those two, then
    ``default``. Norms and biases stay F32."""

    default: str = "f16"
    tensors: tuple[tuple[str, str], ...] = ()
    token_embedding: str | None = None
    output: str | None = None
    version: int = PLAN_VERSION

    def __post_init__(self) -> None:
        if self.version != PLAN_VERSION:
            raise GgufError(f"GGUF plan version {self.version} is not supported")
        for name in (self.default, self.token_embedding, self.output):
            if name is not None:
                format_of(name)
        for pattern, name in self.tensors:
            format_of(name)
            try:
                re.compile(pattern)
            except re.error as e:
                raise GgufError(f"tensor pattern {pattern!r} is not a regex: {e}") from None

    def asked(self, name: str) -> GgmlFormat:
        """The type the plan asks for the matrix ``name`` (e.g. ``blk.0.attn_q.weight``)."""
        for pattern, fmt in self.tensors:
            if re.search(pattern, name):
                return format_of(fmt)
        if name.startswith("token_embd.") and self.token_embedding:
            return format_of(self.token_embedding)
        if name.startswith("output.") and self.output:
            return format_of(self.output)
        return format_of(self.default)

    def type_for(self, name: str, shape: tuple[int, ...]) -> GgmlFormat:
        """The type written: the asked one, or llama.cpp's fallback when rows do not fit it."""
        return ggml.resolve(self.asked(name), shape)

    def is_uniform(self) -> bool:
        return (
            not self.tensors
            and self.token_embedding in (None, self.default)
            and (self.output in (None, self.default))
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "default": self.default,
            "tensors": [list(p) for p in self.tensors],
            "token_embedding": self.token_embedding,
            "output": self.output,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GgufPlan:
        return cls(
            default=d["default"],
            tensors=tuple((str(p), str(f)) for p, f in d.get("tensors", [])),
            token_embedding=d.get("token_embedding"),
            output=d.get("output"),
            version=d.get("version", PLAN_VERSION),
        )

    def quantize_command(self, src: str = "model-f16.gguf", dst: str = "model.gguf") -> str:
        """The ``llama-quantize`` command that applies this plan to ``src`` (an F16/F32 GGUF
        written by llama.cpp's ``convert_hf_to_gguf.py``). ``--pure`` keeps llama-quantize from
        re-mixing types by its own rules; overrides only apply to a quantized default."""
        args = ["llama-quantize", "--pure"]
        for pattern, fmt in self.tensors:
            args += ["--tensor-type", f"{pattern}={fmt}"]
        if self.token_embedding:
            args += ["--token-embedding-type", self.token_embedding]
        if self.output:
            args += ["--output-tensor-type", self.output]
        args += [src, dst, FTYPE_NAMES[self.default]]
        return " ".join(shlex.quote(a) for a in args)


def permute_rope(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rows of each head's query/key projection from halves order to interleaved pairs (see
    the module docstring): (n_head, 2, d/2, in) → (n_head, d/2, 2, in)."""
    out = w.shape[0]
    return w.reshape(n_head, 2, out // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def architecture(config: Any) -> str:
    model_type = getattr(config, "model_type", None)
    arch = ARCHITECTURES.get(model_type or "")
    if arch is None:
        raise GgufError(
            f"llama.cpp export supports {', '.join(sorted(ARCHITECTURES))} models, not "
            f"{model_type!r}"
        )
    scaling = getattr(config, "rope_scaling", None)
    if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
        raise GgufError(f"rope scaling {scaling} is not written to GGUF by this exporter")
    return arch


def _rope_theta(config: Any) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


@dataclass
class GgufReport:
    """What was written: the path, each matrix's asked and written type, and the file size."""

    path: Path
    types: dict[str, str] = field(default_factory=dict)
    asked: dict[str, str] = field(default_factory=dict)
    weights: dict[str, int] = field(default_factory=dict)
    file_bytes: int = 0

    @property
    def bits_per_weight(self) -> float:
        """Bits per weight of the matrices, from their block layouts."""
        bits = sum(FORMATS[t].bits * self.weights[n] for n, t in self.types.items())
        return bits / max(1, sum(self.weights.values()))

    def fallbacks(self) -> dict[str, str]:
        return {n: f"{self.asked[n]} -> {t}" for n, t in self.types.items() if self.asked[n] != t}


def _tensors(model: nn.Module, arch: str) -> list[tuple[str, torch.Tensor]]:
    config = model.config
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("rotary_emb.inv_freq")}
    tied = bool(getattr(config, "tie_word_embeddings", False))
    out = []
    for key, value in state.items():
        base, _, kind = key.rpartition(".")
        name = gguf_name(base)
        if name is None:
            raise GgufError(f"tensor {key} has no llama.cpp name in a {arch} GGUF")
        if name == "output" and tied:
            continue  # llama.cpp reads a missing output.weight as the tied embedding
        t = value.detach().float()
        if arch in PERMUTED and name.endswith(("attn_q", "attn_k")):
            heads = config.num_attention_heads
            if name.endswith("attn_k"):
                heads = getattr(config, "num_key_value_heads", None) or heads
            t = permute_rope(t, heads)
        out.append((f"{name}.{kind}", t))
    return out


def write_gguf(
    model: nn.Module, tokenizer_dir: str | Path, path: str | Path, plan: GgufPlan | None = None
) -> GgufReport:
    """Write ``model`` (a ``LlamaForCausalLM``-like ``transformers`` model; float weights) with
    the tokenizer of ``tokenizer_dir`` to ``path`` as GGUF, each matrix in ``plan``'s type."""
    gguf = _gguf()
    plan = plan or GgufPlan()
    config = getattr(model, "config", None)
    if config is None:
        raise GgufError("llama.cpp export needs a Hugging Face model (it has no config)")
    arch = architecture(config)
    path = Path(path)
    report = GgufReport(path)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(Path(str(getattr(config, "_name_or_path", "") or "model")).name)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(_file_type(plan))
    _add_tokenizer(writer, Path(tokenizer_dir), config.vocab_size)
    for name, t in _tensors(model, arch):
        if t.dim() < 2:
            writer.add_tensor(name, np.ascontiguousarray(t.numpy(), dtype=np.float32))
            continue
        rows = t.reshape(t.shape[0], -1)
        fmt = plan.type_for(name, tuple(rows.shape))
        report.asked[name] = plan.asked(name).name
        report.types[name] = fmt.name
        report.weights[name] = rows.numel()
        if fmt.name in ("f32", "f16"):  # numpy's fp16 rounds to nearest even, as ggml's
            dtype = np.float32 if fmt.name == "f32" else np.float16
            writer.add_tensor(name, np.ascontiguousarray(rows.numpy().astype(dtype)))
        else:
            data = ggml.quantize(rows, fmt)
            writer.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType(fmt.ggml_type))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    report.file_bytes = path.stat().st_size
    return report


def _file_type(plan: GgufPlan) -> int:
    """``general.file_type``: llama.cpp's ``llama_ftype`` number of the default format."""
    return {
        "f32": 0,
        "f16": 1,
        "q4_0": 2,
        "q4_1": 3,
        "q8_0": 7,
        "q5_0": 8,
        "q5_1": 9,
        "q2_k": 10,
        "q3_k": 12,
        "q4_k": 15,
        "q5_k": 17,
        "q6_k": 18,
        "iq4_nl": 25,
        "bf16": 32,
        "tq2_0": 37,
    }[plan.default]


def _add_tokenizer(writer: Any, directory: Path, vocab_size: int) -> None:
    """The byte-level BPE vocabulary of ``directory/tokenizer.json`` (see the module docstring)."""
    gguf = _gguf()
    file = directory / "tokenizer.json"
    if not file.exists():
        raise GgufError(f"llama.cpp export needs {file} (a byte-level BPE tokenizer)")
    spec = json.loads(file.read_text())
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise GgufError(
            f"{file}: a {model.get('type')} tokenizer; this exporter writes byte-level BPE only"
        )
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(spec, file))
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    by_id = {i: tok for tok, i in model["vocab"].items()}
    by_id.update({i: t["content"] for i, t in added.items()})
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            special = added[i].get("special", False)
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_token_merges(merges)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(directory))
    for key, value in (
        ("bos", tok.bos_token_id),
        ("eos", tok.eos_token_id),
        ("pad", tok.pad_token_id),
    ):
        if value is not None:
            getattr(writer, f"add_{key}_token_id")(value)
    probe = tok("a")["input_ids"]
    writer.add_add_bos_token(bool(tok.bos_token_id is not None and probe[:1] == [tok.bos_token_id]))
    writer.add_add_eos_token(
        bool(tok.eos_token_id is not None and probe[-1:] == [tok.eos_token_id])
    )


def _pre_tokenizer(spec: dict[str, Any], file: Path) -> str:
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    splits = [p for p in pre.get("pretokenizers", []) if p.get("type") == "Split"]
    for p in splits:
        regex = p.get("pattern", {}).get("Regex")
        if regex in PRE_TOKENIZERS:
            return PRE_TOKENIZERS[regex]
    raise GgufError(
        f"{file}: its pre-tokenizer ({pre.get('type')}) is not one this exporter can name for "
        "llama.cpp (byte-level BPE with GPT-2's split)"
    )


def read_types(path: str | Path) -> dict[str, str]:
    """Each tensor's ggml type in a GGUF file, by name (``blk.0.attn_q.weight``: ``q4_k``)."""
    reader = _gguf().GGUFReader(str(path))
    by_number = {f.ggml_type: f.name for f in FORMATS.values()}
    return {t.name: by_number.get(int(t.tensor_type), t.tensor_type.name) for t in reader.tensors}


def read_weight(path: str | Path, name: str) -> torch.Tensor:
    """A matrix of a GGUF file dequantized as llama.cpp reads it (rows, row length)."""
    reader = _gguf().GGUFReader(str(path))
    for t in reader.tensors:
        if t.name == name:
            fmt = next(f for f in FORMATS.values() if f.ggml_type == int(t.tensor_type))
            shape = (int(t.shape[1]), int(t.shape[0])) if len(t.shape) > 1 else (1, int(t.shape[0]))
            raw = np.ascontiguousarray(t.data).view(np.uint8)  # F32/F16 come typed
            return ggml.dequantize(raw, fmt, shape)
    raise GgufError(f"{path} has no tensor {name}")


def _gguf() -> Any:
    try:
        import gguf
    except ImportError:
        raise GgufError(f"writing GGUF needs the gguf package: {ggml.EXTRA_HINT}") from None
    return gguf
