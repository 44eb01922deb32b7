"""Session fixtures: a tiny Llama and a tiny BERT with their trained tokenizers (see
`tests.tasks.builders`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .builders import save_bert, save_llama, sentences, train_tokenizer


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama with its tokenizer, and ``text.txt`` (held-out text) beside it."""
    root = tmp_path_factory.mktemp("llama")
    model_dir = root / "model"
    tokenizer = train_tokenizer(model_dir, sentences(400, seed=1))
    save_llama(model_dir, len(tokenizer))
    (root / "text.txt").write_text(" ".join(sentences(500, seed=2)))
    return model_dir


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bert")
    model_dir = root / "model"
    tokenizer = train_tokenizer(model_dir, sentences(400, seed=1))
    save_bert(model_dir, len(tokenizer))
    return model_dir
