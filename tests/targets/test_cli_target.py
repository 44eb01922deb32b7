"""``explorer sweep --target native,onnxruntime`` end to end on digits-cnn."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

from explorer import cli  # noqa: E402


@pytest.mark.slow
def test_sweep_on_both_targets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["sweep", "--model", "digits-cnn", "--bits", "8", "--target", "native,onnxruntime"]
    args += ["--store", str(tmp_path / "r.sqlite"), "--json", "--repeats", "2"]
    args += ["--n-boot", "100", "--calibration-samples", "16"]
    assert cli.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {(r["label"], r["target"]): r for r in out["rows"]}
    assert set(rows) == {
        ("fp32", "native"),
        ("bf16", "native"),
        ("W8 channel sym ptq", "native"),
        ("fp32", "onnxruntime"),
        ("W8 channel sym ptq", "onnxruntime"),
    }
    # bf16 is refused on ORT with its reason, as a failed row, not a crash
    assert out["failed"] == [
        {
            "config": "bf16",
            "reason": "onnxruntime cannot run layer features.1 as planned: bf16 layers: "
            "ONNX Runtime's CPU kernels have no bf16 Conv/Gemm",
        }
    ]
    ort_fp32, ort_w8 = rows["fp32", "onnxruntime"], rows["W8 channel sym ptq", "onnxruntime"]
    assert ort_fp32["metrics"]["sqnr_db"] > 100  # the same float model, another runtime
    assert ort_w8["metrics"]["sqnr_db"] >= 30
    native_w8 = rows["W8 channel sym ptq", "native"]
    assert abs(ort_w8["metrics"]["sqnr_db"] - native_w8["metrics"]["sqnr_db"]) < 6
    # weight-only int8 has no integer kernel in ORT, and the row says so per layer
    assert ort_w8["kernels"]["features.1"].startswith("DequantizeLinear + float")
    assert ort_w8["latency_ms"] > 0
    # the Layers page's figures for an ORT row: the runtime's kernels and profiled times
    layers = {lay["name"]: lay for lay in ort_w8["layers"]}
    assert set(layers) == {"features.1", "features.3", "features.5", "classifier.2"}
    for lay in layers.values():
        assert lay["fused"] and lay["kernel"] == " / ".join(lay["fused"])
        assert lay["latency_ms"] > 0 and 0 < lay["latency_share"] < 1
        assert lay["weight_sqnr_db"] > 30  # from the quantized model ORT was built from
    assert sum(lay["latency_share"] for lay in layers.values()) <= 1.0
    # the same plan on two targets is two rows with two keys, both stored
    assert cli.main(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["cached"] == 5 and again["evaluated"] == 0
