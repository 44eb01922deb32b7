"""Builders of tiny Hugging Face models and real tokenizers (no download): a byte-level BPE
tokenizer trained with `tokenizers` on generated text, a random-init Llama causal LM and a
random-init BERT encoder saved with ``save_pretrained``."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

WORDS = (
    "the a cat dog bird sat ran flew on under over mat tree house quickly slowly red green "
    "small big and then it was today yesterday morning night sun moon"
).split()
BPE_VOCAB = 384


def sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` seeded sentences of 4 to 12 words from a small vocabulary."""
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))).capitalize() + "."
        for _ in range(n)
    ]


def train_tokenizer(path: Path, texts: list[str]) -> transformers.PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer of `BPE_VOCAB` tokens trained on ``texts``, saved to ``path``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.save_pretrained(path)
    return fast


def save_llama(path: Path, vocab: int, *, max_positions: int = 256, seed: int = 0) -> None:
    tiny_llama(vocab, max_positions=max_positions, seed=seed).save_pretrained(path)


def tiny_llama(
    vocab: int, *, max_positions: int = 256, seed: int = 0
) -> transformers.PreTrainedModel:
    """Two seeded Llama blocks at width 64 with grouped-query attention (4 query, 2 KV heads)."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return transformers.LlamaForCausalLM(config).eval()


def bert_config(vocab: int, **overrides: object) -> transformers.BertConfig:
    """The tests' tiny BERT: two layers at width 64 (``overrides`` change any field)."""
    fields: dict[str, object] = {
        "vocab_size": vocab,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "max_position_embeddings": 128,
        "pad_token_id": 0,
    }
    return transformers.BertConfig(**{**fields, **overrides})


def save_bert(path: Path, vocab: int, *, seed: int = 0) -> None:
    torch.manual_seed(seed)
    transformers.BertModel(bert_config(vocab), add_pooling_layer=False).save_pretrained(path)


def cli_w8_row(model: Path, data: Path, store: Path, repeats: int = 3) -> dict:
    """``explorer sweep`` of ``model`` on ``data``: W8 per-channel weight-only, one thread, the
    row's JSON (the CLI must exit 0)."""
    import contextlib
    import io
    import json

    from explorer import cli

    out, err = io.StringIO(), io.StringIO()
    args = ["sweep", "--model", str(model), "--data", str(data)]
    args += ["--bits", "8", "--granularity", "channel", "--repeats", str(repeats), "--n-boot"]
    args += ["200", "--threads", "1", "--store", str(store), "--json"]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(args)
    assert code == 0, err.getvalue()
    rows = json.loads(out.getvalue().strip().splitlines()[-1])["rows"]
    (row,) = [r for r in rows if r["kind"] != "baseline" and r["act_bits"] is None]
    return row
