"""Every page on users' Hugging Face models (issue 12): a tiny Llama with its BPE tokenizer and
text, and a tiny BERT embedding model with scored pairs, each the run's source, swept into the
test's store through the worker's own functions (`open_context`, `run_sweep`); then Sweep,
Pareto, Layers, Learn, Kernels and Export open without an exception and show the task's rows."""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest
from tasks.builders import save_bert, save_llama, sentences, train_tokenizer

from explorer.sweep.context import ModelSource, open_context
from explorer.sweep.runner import RunSettings, run_sweep
from explorer.sweep.space import SweepSpec, expand
from explorer.sweep.store import ResultStore
from explorer.ui import state

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]
PAGES = ("sweep", "pareto", "layers", "learn", "kernels", "export")
FAST = RunSettings(repeats=3, n_boot=200)
SPEC = SweepSpec(weight_bits=(8,), granularity=("channel",))
RUNS = {"lm": "0000000000c1", "embedding": "0000000000c2"}


def _sources(root: Path) -> dict[str, ModelSource]:
    llama = root / "llama"
    tokenizer = train_tokenizer(llama, sentences(300, seed=1))
    save_llama(llama, len(tokenizer))
    text = root / "text.txt"
    text.write_text(" ".join(sentences(200, seed=2)))
    bert = root / "bert"
    tokenizer = train_tokenizer(bert, sentences(300, seed=1))
    save_bert(bert, len(tokenizer))
    pairs = root / "pairs.csv"
    rng = random.Random(0)
    with pairs.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sentence1", "sentence2", "score"])
        for a, b in zip(sentences(40, seed=3), sentences(40, seed=4), strict=True):
            writer.writerow([a, b, rng.randint(0, 5)])
    return {
        "lm": ModelSource(model=str(llama), data=str(text)),
        "embedding": ModelSource(model=str(bert), data=str(pairs)),
    }


@pytest.fixture(scope="module")
def hf_swept(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Each model's fp32, bf16 and W8 rows in one store, owned by its run (as the worker stores
    an upload's rows), and each run's source in its run.json."""
    base = tmp_path_factory.mktemp("hf-pages")
    cache, store_path = base / "cache", base / "results.sqlite"
    sources = _sources(base)
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    with ResultStore(store_path) as store:
        for task, source in sources.items():
            ctx = open_context(source)
            entries, _ = expand(SPEC, ctx.model)
            events = list(run_sweep(ctx, entries, store, settings=FAST, owner=RUNS[task]))
            rows[task] = {e.row["label"]: e.row for e in events if e.kind in ("row", "cached")}
            assert len(rows[task]) == len(entries), [e for e in events if e.kind == "failed"]
            folder = cache / "runs" / RUNS[task]
            folder.mkdir(parents=True)
            (folder / "run.json").write_text(
                json.dumps({"auto_sweep_started": True, "source": source.to_dict()})
            )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EXPLORER_CACHE", str(cache))
        mp.setenv("EXPLORER_STORE", str(store_path))
        mp.setattr(state, "CACHE_DIR", cache)
        yield {"rows": rows, "store": store_path}


def _page(page: str, run: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / f"{page}.py"), default_timeout=180)
    at.query_params["run"] = run
    return at.run()


def _text(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    parts += [str(getattr(e, "value", "")) for e in at.get("selectbox")]
    return "\n".join(parts)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["lm", "embedding"])
@pytest.mark.parametrize("page", PAGES)
def test_every_page_opens_on_a_hugging_face_model(
    hf_swept: dict[str, Any], task: str, page: str
) -> None:
    at = _page(page, RUNS[task])
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    rows = hf_swept["rows"][task]
    w8 = next(r for label, r in rows.items() if label.startswith("W8"))
    if page == "pareto":
        specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
        assert specs, [i.value for i in at.info]
        points = [t for s in specs for t in s["data"] if t.get("x")]
        assert points
        titles = json.dumps([s["layout"] for s in specs])
        metric = "perplexity" if task == "lm" else "spearman"
        assert metric in titles.lower()  # the axis names the task's metric
    if page == "layers":
        assert any(
            "self_attn" in str(d.value) or "attention" in str(d.value) for d in at.dataframe
        ), "no layer table"
    if page == "learn":
        assert at.get("plotly_chart") or at.get("vega_lite_chart") or at.get("pyplot")
    if page == "export":
        labels = [b.proto.label for b in at.get("download_button")]
        assert any("plan" in label.lower() for label in labels), labels
        assert any("weights" in label.lower() or "safetensors" in label for label in labels)
    assert w8["task"] == task
