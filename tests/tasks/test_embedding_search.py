"""`explorer search` on an embedding model: it has neither a metric drop (no scored pairs) nor a
KL, so its damage is ``cosine_loss``, 1 - mean cosine of the embeddings to float."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from explorer import cli
from explorer.errors import ExplorerError
from explorer.sweep.sensitivity import Cell, Sensitivity

from .builders import sentences

pytest.importorskip("transformers")


@pytest.mark.slow
def test_search_on_an_embedding_model_uses_cosine_loss(bert_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "sentences.txt"
    data.write_text("\n".join(sentences(48, seed=5)))
    out, err = io.StringIO(), io.StringIO()
    args = ["search", "--model", str(bert_dir), "--data", str(data), "--points", "2"]
    args += ["--settings", "W8 channel,W2 g32", "--repeats", "1", "--n-boot", "100"]
    args += ["--threads", "1", "--store", str(tmp_path / "r.sqlite"), "--json", "--no-uniform"]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(args)
    assert code == 0, err.getvalue()
    doc = json.loads(out.getvalue().strip().splitlines()[-1])
    assert len(doc["allocations"]) == 2
    damages = sorted(a["predicted_damage"] for a in doc["allocations"])
    assert 0.0 <= damages[0] < damages[1] <= 2.0  # sums of per-layer 1 - cosine
    assert [r for r in doc["rows"] if r["kind"] == "mixed"]


def test_table_falls_back_to_cosine_loss_without_metric_or_kl() -> None:
    cells = {
        ("a", s): Cell("a", s, None, size_bytes=b, cosine_loss=d)
        for s, b, d in (("W8 channel", 100, 0.001), ("W2 g32", 30, 0.2))
    }
    sens = Sensitivity(
        "m", None, None, ["a"], ["W8 channel", "W2 g32"], cells, {"a": 400}, 0, None, 0
    )
    for asked in ("metric_drop", "kl", "cosine_loss"):
        table = sens.to_search_table(asked)
        assert table.damage == ((0.001, 0.2),) and table.metric == "cosine_loss"
    with pytest.raises(ExplorerError, match="damage must be one of metric_drop, kl, cosine_loss"):
        sens.to_search_table("mse")
