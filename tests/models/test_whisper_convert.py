"""CTranslate2 Whisper -> Hugging Face: a tiny random Whisper written in CTranslate2's format is
converted, opened by ``transformers``, and computes what CTranslate2 computes on the same
features (encoder outputs and greedy tokens); fused projections split exactly; every mapping
error names the variable. The synthetic-audio recipe is checked without espeak-ng."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from explorer.errors import ModelLoadError
from explorer.models.whisper_convert import SPECIAL_TOKENS, cached_conversion, hf_state_dict
from explorer.models.whisper_ct2 import Ct2Model, write_ct2

pytest.importorskip("transformers")

D, HEADS, FFN, MELS, FRAMES, TARGETS, LAYERS = 32, 2, 64, 8, 16, 12, 2
SPECIAL = list(SPECIAL_TOKENS)


def _tokenizer(path: Path) -> list[str]:
    """A byte-level tokenizer without merges plus Whisper's special tokens; its vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL)
    tok.save(str(path))
    return alphabet + SPECIAL


def _attention(g: torch.Generator, prefix: str, fused: int, layers: int) -> dict:
    out = {}
    for j in range(layers):
        rows = D * (fused if j == (1 if fused == 2 else 0) else 1)
        bias = torch.randn(rows, generator=g) * 0.1
        if j == (1 if fused == 2 else 0):  # the fused projection: zeros where k's bias would be
            k = slice(D, 2 * D) if fused == 3 else slice(0, D)
            bias[k] = 0
        out[f"{prefix}/linear_{j}/weight"] = torch.randn(rows, D, generator=g) / D**0.5
        out[f"{prefix}/linear_{j}/bias"] = bias
    out[f"{prefix}/layer_norm/gamma"] = 1 + 0.1 * torch.randn(D, generator=g)
    out[f"{prefix}/layer_norm/beta"] = 0.1 * torch.randn(D, generator=g)
    return out


def _ffn(g: torch.Generator, prefix: str) -> dict:
    return {
        f"{prefix}/linear_0/weight": torch.randn(FFN, D, generator=g) / D**0.5,
        f"{prefix}/linear_0/bias": 0.1 * torch.randn(FFN, generator=g),
        f"{prefix}/linear_1/weight": torch.randn(D, FFN, generator=g) / FFN**0.5,
        f"{prefix}/linear_1/bias": 0.1 * torch.randn(D, generator=g),
        f"{prefix}/layer_norm/gamma": 1 + 0.1 * torch.randn(D, generator=g),
        f"{prefix}/layer_norm/beta": 0.1 * torch.randn(D, generator=g),
    }


def tiny_ct2(vocab: int, seed: int = 0) -> Ct2Model:
    """A random Whisper in CTranslate2's variable layout (``WhisperSpec`` revision 3), float16."""
    g = torch.Generator().manual_seed(seed)
    v: dict[str, torch.Tensor] = {
        "encoder/num_heads": torch.tensor(HEADS, dtype=torch.int16),
        "encoder/conv1/weight": torch.randn(D, MELS, 3, generator=g) / 5,
        "encoder/conv1/bias": 0.1 * torch.randn(D, generator=g),
        "encoder/conv2/weight": torch.randn(D, D, 3, generator=g) / 10,
        "encoder/conv2/bias": 0.1 * torch.randn(D, generator=g),
        "encoder/position_encodings/encodings": torch.randn(FRAMES, D, generator=g) / 4,
        "encoder/layer_norm/gamma": torch.ones(D),
        "encoder/layer_norm/beta": torch.zeros(D),
        "decoder/num_heads": torch.tensor(HEADS, dtype=torch.int16),
        "decoder/activation": torch.tensor(3, dtype=torch.int8),
        "decoder/pre_norm": torch.tensor(1, dtype=torch.int8),
        "decoder/scale_embeddings": torch.tensor(0, dtype=torch.int8),
        "decoder/alibi": torch.tensor(0, dtype=torch.int8),
        "decoder/start_from_zero_embedding": torch.tensor(0, dtype=torch.int8),
        "decoder/alignment_layer": torch.tensor(-1, dtype=torch.int16),
        "decoder/alignment_heads": torch.tensor(1, dtype=torch.int16),
        "decoder/embeddings/weight": torch.randn(vocab, D, generator=g),
        "decoder/position_encodings/encodings": torch.randn(TARGETS, D, generator=g) / 4,
        "decoder/layer_norm/gamma": torch.ones(D),
        "decoder/layer_norm/beta": torch.zeros(D),
    }
    for i in range(LAYERS):
        v |= _attention(g, f"encoder/layer_{i}/self_attention", 3, 2)
        v |= _ffn(g, f"encoder/layer_{i}/ffn")
        v |= _attention(g, f"decoder/layer_{i}/self_attention", 3, 2)
        v |= _attention(g, f"decoder/layer_{i}/attention", 2, 3)
        v |= _ffn(g, f"decoder/layer_{i}/ffn")
    v = {k: t.half() if t.is_floating_point() else t for k, t in v.items()}
    return Ct2Model("WhisperSpec", 3, v, {"decoder/projection/weight": "decoder/embeddings/weight"})


def write_ct2_whisper(folder: Path) -> Ct2Model:
    folder.mkdir(parents=True)
    vocabulary = _tokenizer(folder / "tokenizer.json")
    model = tiny_ct2(len(vocabulary))
    write_ct2(folder / "model.bin", model)
    (folder / "vocabulary.txt").write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
    config = {
        "suppress_ids": [5],
        "suppress_ids_begin": [vocabulary.index("<|endoftext|>")],
        "lang_ids": [],
        "alignment_heads": [[1, 0]],
    }
    (folder / "config.json").write_text(json.dumps(config))
    return model


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Ct2Model]:
    root = tmp_path_factory.mktemp("whisper")
    model = write_ct2_whisper(root / "ct2")
    out = cached_conversion(root / "ct2", "tiny", cache=root / "cache")
    return root / "ct2", out, model


def test_fused_projections_split_exactly(converted: tuple[Path, Path, Ct2Model]) -> None:
    _, _, ct2 = converted
    state = hf_state_dict(ct2)
    x = torch.randn(5, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for stack, part, names in (
        ("encoder", "self_attention/linear_0", ("q", "k", "v")),
        ("decoder", "self_attention/linear_0", ("q", "k", "v")),
        ("decoder", "attention/linear_1", ("k", "v")),
    ):
        w = ct2.variables[f"{stack}/layer_1/{part}/weight"].double()
        b = ct2.variables[f"{stack}/layer_1/{part}/bias"].double()
        fused = x @ w.T + b  # (5, n*D): the float64 reference
        attn = "encoder_attn" if part.startswith("attention") else "self_attn"
        prefix = f"model.{stack}.layers.1.{attn}"
        split = torch.cat(
            [
                x @ state[f"{prefix}.{n}_proj.weight"].double().T
                + state.get(f"{prefix}.{n}_proj.bias", torch.zeros(D)).double()
                for n in names
            ],
            dim=1,
        )
        torch.testing.assert_close(split, fused, rtol=0, atol=1e-12)
        assert f"{prefix}.k_proj.bias" not in state


@pytest.mark.slow  # loads CTranslate2 (about 6 s on a loaded machine)
def test_transformers_opens_it_and_matches_ctranslate2(
    converted: tuple[Path, Path, Ct2Model],
) -> None:
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    ct2_dir, out, _ = converted
    model = WhisperForConditionalGeneration.from_pretrained(out, local_files_only=True).eval()
    processor = WhisperProcessor.from_pretrained(out, local_files_only=True)
    assert model.config.d_model == D and model.config.encoder_layers == LAYERS
    assert model.config.vocab_size == len(SPECIAL) + 256
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    assert (
        processor.tokenizer.decode(processor.tokenizer("a cat").input_ids, skip_special_tokens=True)
        == "a cat"
    )
    features = torch.randn(2, MELS, 2 * FRAMES, generator=torch.Generator().manual_seed(2))
    prompt = processor.tokenizer.convert_tokens_to_ids(
        ["<|startoftranscript|>", "<|notimestamps|>"]
    )
    with torch.inference_mode():
        encoded = model.model.encoder(features).last_hidden_state
        ids = model.generate(
            features,
            decoder_input_ids=torch.tensor([prompt] * 2),
            max_new_tokens=6,
            suppress_tokens=None,
            begin_suppress_tokens=None,
        )
    ctranslate2 = pytest.importorskip("ctranslate2")
    reference = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="float32")
    view = ctranslate2.StorageView.from_array(features.numpy())
    torch.testing.assert_close(
        encoded,
        torch.from_numpy(np.array(reference.encode(view, to_cpu=True))),
        rtol=1e-4,
        atol=1e-4,
    )
    out_ct2 = reference.generate(view, [prompt] * 2, beam_size=1, max_length=len(prompt) + 6)
    ours = [[t for t in row.tolist()[len(prompt) :]] for row in ids]
    theirs = [r.sequences_ids[0] for r in out_ct2]
    assert ours[0][: len(theirs[0])] == theirs[0] and ours[1][: len(theirs[1])] == theirs[1]


def test_conversion_is_cached(converted: tuple[Path, Path, Ct2Model]) -> None:
    ct2_dir, out, _ = converted
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    again = cached_conversion(ct2_dir, "tiny", cache=out.parents[2])
    assert again == out and (out / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary folder left


def _without(ct2: Ct2Model, name: str) -> Ct2Model:
    return Ct2Model(
        ct2.spec, ct2.revision, {k: v for k, v in ct2.variables.items() if k != name}, ct2.aliases
    )


def _with(ct2: Ct2Model, name: str, value: torch.Tensor) -> Ct2Model:
    return Ct2Model(ct2.spec, ct2.revision, {**ct2.variables, name: value}, ct2.aliases)


def test_mapping_errors_name_the_variable(converted: tuple[Path, Path, Ct2Model]) -> None:
    _, _, ct2 = converted
    name = "decoder/layer_1/attention/linear_2/bias"
    with pytest.raises(ModelLoadError, match=f"variable {name} is missing from model.bin"):
        hf_state_dict(_without(ct2, name))
    extra = "decoder/layer_0/attention/linear_3/weight"
    with pytest.raises(ModelLoadError, match=f"the mapping does not know {extra}"):
        hf_state_dict(_with(ct2, extra, torch.zeros(2, 2)))
    with pytest.raises(ModelLoadError, match="decoder/pre_norm = 0, but Whisper needs 1"):
        hf_state_dict(_with(ct2, "decoder/pre_norm", torch.tensor(0, dtype=torch.int8)))
    weight = "encoder/layer_0/ffn/linear_0/weight"
    int8 = ct2.variables[weight].to(torch.int8)
    with pytest.raises(ModelLoadError, match=f"variable {weight} is torch.int8; only float32"):
        hf_state_dict(_with(ct2, weight, int8))
    odd = "encoder/layer_0/self_attention/linear_0"
    with pytest.raises(ModelLoadError, match=f"{odd} of shape \\[95, 32\\] does not split into 3"):
        hf_state_dict(
            _with(_with(ct2, f"{odd}/weight", torch.zeros(95, D)), f"{odd}/bias", torch.zeros(95))
        )
    with pytest.raises(ModelLoadError, match="CTranslate2 model is a TransformerSpec"):
        hf_state_dict(Ct2Model("TransformerSpec", 1, ct2.variables, ct2.aliases))


def test_audio_recipe_is_seeded_disjoint_and_at_the_stated_snr() -> None:
    from explorer.models.whisper_audio import (
        SNRS_DB,
        SPEEDS,
        VOICES,
        add_noise,
        plan,
        read_sentences,
    )

    sentences = read_sentences()
    assert len(sentences) >= 300 and len(set(sentences)) == len(sentences)
    evaluation, training = plan(sentences, "eval"), plan(sentences, "train")
    assert len(evaluation) == 200 and plan(sentences, "eval") == evaluation  # seeded
    assert not {u.text for u in evaluation} & {u.text for u in training}
    assert {u.voice for u in evaluation} == set(VOICES)
    assert {u.speed for u in evaluation} == set(SPEEDS)
    assert {u.snr_db for u in evaluation} == set(SNRS_DB)
    rng = np.random.default_rng(0)
    speech = (0.3 * np.sin(np.linspace(0, 2000, 16_000))).astype(np.float32)
    for snr in (30.0, 10.0):
        noisy = add_noise(speech, snr, rng).astype(np.float64)
        measured = 10 * np.log10(
            np.mean(speech.astype(np.float64) ** 2) / np.mean((noisy - speech) ** 2)
        )
        assert abs(measured - snr) < 0.05, (snr, measured)
    assert add_noise(speech, None, rng) is speech
