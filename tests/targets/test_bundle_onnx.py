"""The Export page's files for a row measured in ONNX Runtime: the measured ``model.onnx``
(rebuilt from the row as the sweep built it) and ``run_onnx.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime")
import onnxruntime as ort  # noqa: E402

from explorer.bundle import target_bundle  # noqa: E402
from explorer.models.catalog import ModelSource  # noqa: E402
from explorer.quant.config import Plan, QuantConfig  # noqa: E402
from explorer.sweep.context import open_context  # noqa: E402

W8A8 = QuantConfig(weight_bits=8, act_bits=8, act_mode="static", act_granularity="tensor")


def test_onnx_row_exports_the_measured_model(tmp_path: Path) -> None:
    ctx = open_context(ModelSource(model="digits-cnn"))
    row = {"key": "k", "label": W8A8.name, "config": Plan.uniform(W8A8).to_dict()}
    assert target_bundle(ctx, {**row, "target": "native"}, tmp_path) == {}
    files = target_bundle(ctx, {**row, "target": "onnxruntime"}, tmp_path)
    assert set(files) == {"model.onnx", "run_onnx.py"}
    session = ort.InferenceSession(files["model.onnx"], providers=["CPUExecutionProvider"])
    x = ctx.compute_reference().batches[0][0][:8]
    (logits,) = session.run(None, {"input": x.numpy()})
    with torch.inference_mode():
        reference = ctx.model(x)
    # int8 weights and activations in ORT against the float model: same decisions
    assert (torch.from_numpy(logits).argmax(-1) == reference.argmax(-1)).float().mean() >= 0.75
    assert b"intra_op_num_threads" in files["run_onnx.py"]
