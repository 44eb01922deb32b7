"""The pages' tables (explorer/ui/tables.py): columns in the pages' words, defaults for what a
row leaves out."""

from __future__ import annotations

from explorer.ui.tables import layer_report_frame, model_layers_frame, results_frame


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
