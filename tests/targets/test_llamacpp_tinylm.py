"""The built-in tiny-lm on llama.cpp (issue 14's acceptance): its GGUF loads in llama.cpp, whose
tokenizer gives the Hugging Face ids and whose F16 logits agree with ours; every matrix takes the
k-quant it is asked for (no fallback: its input widths are multiples of 256), and the sweep over
ggml types shows the bit-width cliff in KL and perplexity with every latency measured."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("gguf")
pytest.importorskip("llama_cpp", reason="the llamacpp extra is not installed")

from explorer import cli  # noqa: E402

pytestmark = pytest.mark.slow


def test_tiny_lm_in_llama_cpp_tokenizes_and_computes_as_transformers(tmp_path) -> None:
    from explorer.export.gguf import GgufPlan, write_gguf
    from explorer.models import tinylm
    from explorer.targets.llamacpp import LlamaCppModel

    model, directory = tinylm.load(), tinylm.TINY_LM.asset_dir
    write_gguf(model, directory, tmp_path / "f16.gguf", GgufPlan("f16"))
    runtime = LlamaCppModel(tmp_path / "f16.gguf", 256, threads=1)
    text = tinylm.split_text("eval")[:2000]
    ids = tinylm.encode(tinylm.load_tokenizer(), text)
    assert runtime.tokenize(text) == ids.tolist()
    windows = ids[:256].view(2, 128)
    ours = runtime.logits(windows).double()
    with torch.inference_mode():
        ref = model(input_ids=windows).logits.double()
    same_top = float((ours.argmax(-1) == ref.argmax(-1)).double().mean())
    kl = float((ref.softmax(-1) * (ref.log_softmax(-1) - ours.log_softmax(-1))).sum(-1).mean())
    assert same_top >= 0.99 and kl <= 1e-3, (same_top, kl)


def test_the_k_quant_cliff_on_tiny_lm(
    tmp_path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["sweep", "--model", "tiny-lm", "--target", "llamacpp"]
    args += ["--formats", "q8_0,q4_k,q2_k", "--store", str(tmp_path / "r.db"), "--json"]
    args += ["--eval-tokens", "2048", "--repeats", "2", "--n-boot", "200"]
    # one thread: ggml's workers spin at barriers on a loaded 2-core machine (test_llamacpp.py)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert cli.main(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = {r["format"]: r for r in out["rows"] if r.get("target") == "llamacpp"}
    assert set(rows) == {"q8_0", "q4_k", "q2_k"}
    for fmt, row in rows.items():
        matrices = [lay for lay in row["layers"] if lay.get("ggml_asked")]
        assert len(matrices) == 4 * 7, fmt  # q k v o gate up down per block
        assert all(lay["ggml_type"] == lay["ggml_asked"] == fmt for lay in matrices), fmt
        assert row["latency_kind"] == "measured" and set(row["latency"]) == {"decode", "prefill"}
        assert row["tokens_evaluated"] > 1000
    kl = {fmt: rows[fmt]["metrics"]["kl"] for fmt in rows}
    ppl = {fmt: rows[fmt]["metrics"]["perplexity"] for fmt in rows}
    assert kl["q8_0"] < kl["q4_k"] < kl["q2_k"], kl
    assert 4 * kl["q4_k"] < kl["q2_k"], kl  # the cliff: 2 bits cost far more than 4
    assert ppl["q8_0"] < ppl["q2_k"] and ppl["q4_k"] < ppl["q2_k"], ppl
    assert rows["q2_k"]["size_bytes"] < rows["q4_k"]["size_bytes"] < rows["q8_0"]["size_bytes"]
