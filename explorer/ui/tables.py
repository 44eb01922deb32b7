"""The tables the pages show, as DataFrames with the columns in the pages' words: a model's
layers, a configuration's per-layer report, the results of a sweep and kernel timings. Plain
pandas, no streamlit; the pages choose how each column is drawn."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from explorer.measure.readrate import byte_time
from explorer.ui.labels import interval_text


def model_layers_frame(table: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """`explorer.inspect.layer_table`'s rows: name, type, weight shape, parameters, float KiB
    and whether a sweep can quantize the layer."""
    return pd.DataFrame(
        {
            "layer": [r["name"] for r in table],
            "type": [r["type"] for r in table],
            "shape": [" × ".join(str(d) for d in r["shape"]) for r in table],
            "parameters": [r["parameters"] for r in table],
            "float KiB": [r["float_bytes"] / 1024 for r in table],
            "quantizable": [r["quantizable"] for r in table],
        }
    )


def layer_report_frame(
    row: Mapping[str, Any], gguf_names: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """A result row's per-layer report: setting, algorithm, kernel, SQNRs, share of latency,
    bytes and fallback; a layer left in float reads ``fp32`` and ``float``.

    Two columns speak llama.cpp's language: ``llama.cpp name`` (``blk.3.ffn_down``) when the
    layers have one (a llama.cpp row's own, else ``gguf_names``, `explorer.export.gguf.gguf_names`
    of a model llama.cpp runs), and ``ggml type`` on a llama.cpp row: the type the GGUF file
    holds, with the one asked for where llama.cpp fell back (rows not a multiple of the block).

    A row whose layers were profiled adds what their bytes predict (`byte_time_columns`)."""
    layers = row.get("layers") or []
    names = dict(gguf_names or {})
    named = bool(names) or any(lay.get("gguf") for lay in layers)
    llamacpp = row.get("target") == "llamacpp" or any(lay.get("ggml_type") for lay in layers)
    records = []
    for lay in layers:
        record: dict[str, Any] = {"layer": lay.get("name")}
        if named:
            record["llama.cpp name"] = lay.get("gguf") or names.get(lay.get("name") or "", "")
        record["type"] = lay.get("type")
        record["setting"] = lay.get("config") or "fp32"
        if llamacpp:
            record["ggml type"] = ggml_type_text(lay.get("ggml_type"), lay.get("ggml_asked"))
        record.update(
            {
                "algorithm": lay.get("algorithm") or "",
                "kernel": lay.get("kernel") or "float",
                "simulated": bool(lay.get("simulated")),
                "weight SQNR (dB)": lay.get("weight_sqnr_db"),
                "output SQNR (dB)": lay.get("output_sqnr_db"),
                "share of latency": lay.get("latency_share"),
                "bytes": lay.get("bytes"),
                "fallback": lay.get("fallback") or "",
            }
        )
        records.append(record)
    frame = pd.DataFrame(records)
    for name, values in byte_time_columns(row).items():
        frame[name] = values
    return frame


BYTE_TIME_COLUMNS = (
    "ms per call",
    "bytes per call",
    "ms predicted from bytes",
    "measured ÷ predicted",
    "verdict",
)


def byte_time_columns(row: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Each layer's measured milliseconds per call of the row's primary workload next to the
    time its bytes take at the read rate measured with the row (`explorer.measure.readrate`):
    the columns of `BYTE_TIME_COLUMNS`, or none for a row without that rate (simulated latency,
    another runtime, rows stored before it was recorded)."""
    rate = (row.get("read_rate") or {}).get("bytes_per_s")
    layers = row.get("layers") or []
    if not rate or not any(lay.get("latency_ms") is not None for lay in layers):
        return {}
    times = [byte_time(lay, rate) for lay in layers]
    values = (
        [lay.get("latency_ms") for lay in layers],
        [t["bytes_per_call"] for t in times],
        [t["predicted_ms"] for t in times],
        [t["ratio"] for t in times],
        [t["verdict"] for t in times],
    )
    return dict(zip(BYTE_TIME_COLUMNS, values, strict=True))


def ggml_type_text(written: str | None, asked: str | None) -> str:
    """A tensor's ggml type as the Layers table shows it: ``q5_0 (asked q4_k)`` where llama.cpp
    fell back from the asked type, ``""`` for a layer the GGUF file holds no tensor of."""
    if not written:
        return ""
    return written if not asked or asked == written else f"{written} (asked {asked})"


def results_frame(table: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """`explorer.inspect.result_table`'s rows as the Sweep page lists them, the task metric's
    column named after it and its 95 % interval written by `interval_text`."""
    metric = table[0]["metric"] if table else "metric"
    return pd.DataFrame(
        {
            "configuration": [r["label"] for r in table],
            "weight bits": [r["weight_bits"] for r in table],
            "activation bits": [r["act_bits"] for r in table],
            "granularity": [r["granularity"] for r in table],
            "method": [r["method"] for r in table],
            "algorithm": [r["algorithm"] for r in table],
            "calibration s": [r["calibrate_s"] for r in table],
            "QAT training s": [r["train_s"] for r in table],
            "size KiB": [r["size_kib"] for r in table],
            "bits/weight": [r["bits_per_weight"] for r in table],
            "latency ms": [r["latency_ms"] for r in table],
            "latency": [r["latency_kind"] for r in table],
            metric: [r["value"] for r in table],
            "95% CI" + (" of the change" if metric != "sqnr_db" else ""): [
                interval_text(r["ci_lo"], r["ci_hi"], metric) for r in table
            ],
            "on the front": [r["pareto"] for r in table],
        }
    )


def kernel_timings_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """`explorer.measure.bench` rows: op, kernel, format, shape, median ms, weight GB/s and the
    speed-ups against fp32 and bf16."""
    return pd.DataFrame(
        [
            {
                "op": r.get("op"),
                "kernel": r.get("kernel"),
                "format": r.get("format"),
                "M": r.get("M"),
                "K": r.get("K"),
                "N": r.get("N"),
                "ms (median)": r.get("ms"),
                "weight GB/s": r.get("gbps"),
                "× fp32": r.get("speedup_vs_fp32"),
                "× bf16": r.get("speedup_vs_bf16"),
            }
            for r in rows
        ]
    )
