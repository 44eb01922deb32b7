"""The pages' tables (explorer/ui/tables.py): columns in the pages' words, defaults for what a
row leaves out."""

from __future__ import annotations

import pytest

from explorer.ui.tables import (
    BYTE_TIME_COLUMNS,
    layer_report_frame,
    model_layers_frame,
    results_frame,
)


def test_model_layers_frame() -> None:
    frame = model_layers_frame(
        [
            {
                "name": "features.0",
                "type": "Conv2d",
                "shape": (16, 1, 3, 3),
                "parameters": 160,
                "float_bytes": 640,
                "quantizable": True,
            }
        ]
    )
    assert frame.to_dict("records") == [
        {
            "layer": "features.0",
            "type": "Conv2d",
            "shape": "16 × 1 × 3 × 3",
            "parameters": 160,
            "float KiB": 0.625,
            "quantizable": True,
        }
    ]


def test_layer_report_frame_names_float_layers() -> None:
    layers = [{"name": "head", "type": "Linear", "bytes": 40}, {"name": "fc", "config": "W4"}]
    frame = layer_report_frame({"layers": layers})
    head = frame.to_dict("records")[0]
    assert (head["setting"], head["kernel"], head["simulated"], head["fallback"]) == (
        "fp32",
        "float",
        False,
        "",
    )
    assert list(frame["setting"]) == ["fp32", "W4"]
    assert layer_report_frame({"layers": None}).empty
    assert not set(BYTE_TIME_COLUMNS) & set(frame)  # no read rate: nothing predicted


def test_layer_report_frame_sets_measured_time_against_bytes() -> None:
    layers = [
        # 1 MB at 2 GB/s: 0.5 ms predicted, 5 ms measured, 0.25 multiply-adds per byte
        {"name": "a", "read_bytes": 900_000, "activation_bytes": 100_000, "macs": 250_000},
        {"name": "b", "read_bytes": 100, "activation_bytes": 100, "macs": 1_000_000},
        {"name": "c", "read_bytes": 400_000, "activation_bytes": 600_000, "macs": 0},
    ]
    for lay, ms in zip(layers, (5.0, 1.0, 0.5), strict=True):
        lay["latency_ms"] = ms
    frame = layer_report_frame({"layers": layers, "read_rate": {"bytes_per_s": 2e9}})
    assert list(frame.columns[-5:]) == list(BYTE_TIME_COLUMNS)
    assert list(frame["bytes per call"]) == [1_000_000, 200, 1_000_000]
    assert list(frame["ms predicted from bytes"]) == pytest.approx([0.5, 1e-4, 0.5], rel=1e-12)
    assert list(frame["measured ÷ predicted"]) == pytest.approx([10.0, 1e4, 1.0], rel=1e-12)
    assert list(frame["verdict"]) == [
        "overhead: 10.0x the byte time",
        "compute-bound",
        "bound by bytes",
    ]


def test_results_frame_names_the_metric_and_its_interval() -> None:
    row = {
        "label": "W8 channel",
        "weight_bits": 8,
        "act_bits": None,
        "granularity": "channel",
        "method": "ptq",
        "algorithm": "rtn",
        "calibrate_s": None,
        "train_s": None,
        "size_kib": 12.5,
        "bits_per_weight": 8.25,
        "latency_ms": 0.4,
        "latency_kind": "measured",
        "metric": "accuracy",
        "value": 0.981,
        "ci_lo": -0.004,
        "ci_hi": 0.002,
        "pareto": True,
    }
    frame = results_frame([row])
    assert frame["accuracy"].tolist() == [0.981]
    assert frame["95% CI of the change"].tolist() == ["[-0.40 points, +0.20 points]"]
    unlabelled = results_frame([{**row, "metric": "sqnr_db", "value": 30.0}])
    assert "95% CI" in unlabelled.columns
