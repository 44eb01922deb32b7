"""The Layers page in llama.cpp's words (issue 14): each layer of a model llama.cpp runs is named
as llama.cpp names its tensor (``blk.3.ffn_down``) next to ours, and a llama.cpp row shows the
ggml type each tensor got (with the asked one where llama.cpp fell back). The names come from
`explorer.export.gguf.gguf_names`, the table from `explorer.ui.tables.layer_report_frame`; the
page test sweeps a tiny Llama on the native and the llama.cpp target into its own store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from streamlit.testing.v1 import AppTest
from torch import nn

from explorer.export.gguf import gguf_names
from explorer.ui import state
from explorer.ui.tables import layer_report_frame

transformers = pytest.importorskip("transformers")

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "layers.py")
RUN = "0000000000d1"
FAST = {"warmup": 1, "repeats": 2, "n_boot": 100, "calibration_samples": 4, "eval_budget": 128}
COLUMNS = [
    "layer",
    "type",
    "setting",
    "algorithm",
    "kernel",
    "simulated",
    "weight SQNR (dB)",
    "output SQNR (dB)",
    "share of latency",
    "bytes",
    "fallback",
]


def _tiny(kind: str, *, tied: bool = False) -> nn.Module:
    """A random two-layer model of ``kind`` (``llama``, ``mistral``, ``qwen2``), 16 wide."""
    config_class, model_class = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }[kind]
    sizes = {"vocab_size": 32, "hidden_size": 16, "intermediate_size": 32}
    heads = {"num_attention_heads": 2, "num_key_value_heads": 1}
    config = config_class(num_hidden_layers=2, tie_word_embeddings=tied, **sizes, **heads)
    return model_class(config)


@pytest.mark.parametrize("kind", ["llama", "mistral", "qwen2"])
def test_names_of_every_tensor_llama_cpp_holds(kind: str) -> None:
    names = gguf_names(_tiny(kind))
    per_block = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    expected = {
        f"model.layers.{i}.{ours}": f"blk.{i}.{theirs}"
        for i in range(2)
        for ours, theirs in per_block.items()
    }
    expected |= {"model.embed_tokens": "token_embd", "model.norm": "output_norm"}
    expected |= {"lm_head": "output"}
    assert names == expected


def test_a_tied_head_is_the_embeddings_tensor() -> None:
    names = gguf_names(_tiny("llama", tied=True))
    assert names["lm_head"] == names["model.embed_tokens"] == "token_embd"


def test_models_llama_cpp_does_not_run_get_no_names() -> None:
    lookalike = nn.Module()  # Llama's module names, another architecture
    lookalike.model = nn.Module()
    lookalike.model.layers = nn.ModuleList([nn.Module()])
    lookalike.model.layers[0].mlp = nn.Module()
    lookalike.model.layers[0].mlp.down_proj = nn.Linear(4, 4)
    lookalike.config = SimpleNamespace(model_type="gemma")
    assert gguf_names(lookalike) == {}
    assert gguf_names(nn.Sequential(nn.Linear(4, 4))) == {}


def _layer(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "Linear", "config": None, "kernel": None, **extra}


def test_layer_table_columns() -> None:
    q, down = "model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj"
    native = {"target": "native", "layers": [_layer(q), _layer(down)]}
    assert list(layer_report_frame(native).columns) == COLUMNS
    assert list(layer_report_frame(native, {}).columns) == COLUMNS
    named = layer_report_frame(native, {q: "blk.0.attn_q", down: "blk.0.ffn_down"})
    assert list(named.columns) == ["layer", "llama.cpp name", *COLUMNS[1:]]
    assert list(named["llama.cpp name"]) == ["blk.0.attn_q", "blk.0.ffn_down"]
    # a llama.cpp row carries its own names and types (the target's layer_report)
    ggml = {
        "target": "llamacpp",
        "layers": [
            _layer(q, gguf="blk.0.attn_q", ggml_type="q5_0", ggml_asked="q4_k"),
            _layer(down, gguf="blk.0.ffn_down", ggml_type="q4_k", ggml_asked="q4_k"),
            _layer("lm_head"),  # tied: the file holds no tensor of its own
        ],
    }
    table = layer_report_frame(ggml, {"lm_head": "token_embd"})
    assert list(table.columns)[:5] == ["layer", "llama.cpp name", "type", "setting", "ggml type"]
    assert list(table["llama.cpp name"]) == ["blk.0.attn_q", "blk.0.ffn_down", "token_embd"]
    assert list(table["ggml type"]) == ["q5_0 (asked q4_k)", "q4_k", ""]
    assert list(layer_report_frame({"layers": []}).columns) == []


@pytest.fixture(scope="module")
def lm_swept(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A tiny Llama (its MLP 256 wide, so ``ffn_down`` takes Q4_K's 256-weight blocks) swept
    into its own store: W8 per channel on the native target and Q4_K on llama.cpp."""
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gguf")
    from targets.llamacpp_model import save_tiny_llama
    from tasks.builders import sentences

    from explorer.sweep.context import ModelSource, open_context
    from explorer.sweep.runner import RunSettings, run_sweep
    from explorer.sweep.space import SweepSpec, expand
    from explorer.sweep.store import ResultStore

    base = tmp_path_factory.mktemp("layers-llamacpp")
    cache, store_path = base / "cache", base / "results.sqlite"
    (base / "text.txt").write_text(" ".join(sentences(60, seed=2)))
    source = ModelSource(model=str(save_tiny_llama(base / "llama")), data=str(base / "text.txt"))
    ctx = open_context(source)
    entries, _ = expand(SweepSpec(weight_bits=(8,), granularity=("channel",)), ctx.model)
    rows = {}
    threads = torch.get_num_threads()
    # one thread (llama.cpp takes torch's count): on a loaded 2-core machine the spinning
    # threads of OpenMP and ggml cost 20x the work of a model this small (measured 2.9 s vs
    # 0.13 s of CPU for the W8 row)
    torch.set_num_threads(1)
    try:
        with ResultStore(store_path) as store:
            for target, label in (("native", "W8 channel sym ptq"), ("llamacpp:q4_k", "fp32")):
                settings = RunSettings(target=target, **FAST)
                chosen = [e for e in entries if e.label == label]
                events = list(run_sweep(ctx, chosen, store, settings=settings, owner=RUN))
                (row,) = [e.row for e in events if e.kind in ("row", "cached")]
                rows[target] = row
    finally:
        torch.set_num_threads(threads)
    folder = cache / "runs" / RUN
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"source": source.to_dict()}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EXPLORER_CACHE", str(cache))
        mp.setenv("EXPLORER_STORE", str(store_path))
        mp.setattr(state, "CACHE_DIR", cache)
        yield rows


def _table(at: AppTest) -> Any:
    return next(d.value for d in at.dataframe if "share of latency" in d.value.columns)


def test_layers_page_names_tensors_as_llama_cpp_does(lm_swept: dict[str, Any]) -> None:
    native, ggml = lm_swept["native"], lm_swept["llamacpp:q4_k"]
    state.save_run_settings({state.SELECTED_ROW: native["key"]}, RUN)
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.query_params["run"] = RUN
    at.run()
    assert not at.exception, at.exception
    table = _table(at).set_index("layer")
    assert table.loc["model.layers.1.mlp.down_proj", "llama.cpp name"] == "blk.1.ffn_down"
    assert table.loc["model.layers.0.self_attn.o_proj", "llama.cpp name"] == "blk.0.attn_output"
    assert table.loc["lm_head", "llama.cpp name"] == "output"
    assert "ggml type" not in table

    at.selectbox(key="layers.row").select(ggml["key"]).run()
    assert not at.exception, at.exception
    table = _table(at).set_index("layer")
    # rows of 64 do not fit Q4_K's 256-weight blocks: llama.cpp writes Q5_0 instead
    assert table.loc["model.layers.0.mlp.down_proj", "ggml type"] == "q4_k"
    assert table.loc["model.layers.0.self_attn.q_proj", "ggml type"] == "q5_0 (asked q4_k)"
    assert table.loc["model.layers.0.self_attn.q_proj", "llama.cpp name"] == "blk.0.attn_q"
    assert any("*ggml type*" in c.value for c in at.caption)
