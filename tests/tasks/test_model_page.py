"""The Model page on users' Hugging Face models (issue 12): it shows the recognised task, the
directory's tokenizer, the metric and what is evaluated, for a causal LM with text and an
encoder with scored sentence pairs (tiny models and tokenizers built in the test)."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from explorer.ui import state

from .builders import save_bert, save_llama, sentences, train_tokenizer

ROOT = Path(__file__).resolve().parents[2]
PAGE = str(ROOT / "pages" / "model.py")

pytest.importorskip("transformers")


@pytest.fixture
def app_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """The app's cache and results store in ``tmp_path`` (as tests/app's fixture does)."""
    cache, store = tmp_path / "cache", tmp_path / "results.sqlite"
    monkeypatch.setenv("EXPLORER_CACHE", str(cache))
    monkeypatch.setenv("EXPLORER_STORE", str(store))
    monkeypatch.setattr(state, "CACHE_DIR", cache)
    return {"cache": cache, "store": store}


def _open(cache: Path, run: str, source: dict[str, str]) -> AppTest:
    folder = cache / "runs" / run
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.json").write_text(json.dumps({"auto_sweep_started": True, "source": source}))
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.query_params["run"] = run
    return at.run()


def _text(at: AppTest) -> str:
    return "\n".join([m.value for m in at.markdown] + [c.value for c in at.caption])


def test_causal_lm_and_embedding_model_show_their_task(
    app_env: dict[str, Path], tmp_path: Path
) -> None:
    llama = tmp_path / "llama"
    tokenizer = train_tokenizer(llama, sentences(300, seed=1))
    save_llama(llama, len(tokenizer))
    text = tmp_path / "text.txt"
    text.write_text(" ".join(sentences(300, seed=2)))
    at = _open(app_env["cache"], "00000000001a", {"model": str(llama), "data": str(text)})
    assert not at.exception and not at.error
    shown = _text(at)
    assert "**Task:** lm (recognised from its architecture LlamaForCausalLM)" in shown
    assert "**Metric:** perplexity" in shown
    assert (
        f"Tokenizer: TokenizersBackend ({len(tokenizer)} tokens)" in shown or "Tokenizer: " in shown
    )
    assert "tokens of text.txt scored in" in shown
    assert any(m.label == "Float perplexity" for m in at.metric)

    bert = tmp_path / "bert"
    tokenizer = train_tokenizer(bert, sentences(300, seed=1))
    save_bert(bert, len(tokenizer))
    pairs = tmp_path / "pairs.csv"
    rng = random.Random(0)
    with pairs.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sentence1", "sentence2", "score"])
        for a, b in zip(sentences(40, seed=3), sentences(40, seed=4), strict=True):
            writer.writerow([a, b, rng.randint(0, 5)])
    at = _open(app_env["cache"], "00000000002b", {"model": str(bert), "data": str(pairs)})
    assert not at.exception and not at.error
    shown = _text(at)
    assert "**Task:** embedding (recognised from its architecture BertModel)" in shown
    assert "**Metric:** spearman" in shown and "pooling mean" in shown
    assert any(m.label == "Float spearman" for m in at.metric)
