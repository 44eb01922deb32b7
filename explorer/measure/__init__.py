"""Measurement: size as stored, latency on real kernels, output fidelity.

Imports from `explorer.quant`, `explorer.kernels` and `explorer.nn`.
"""

from explorer.measure.evaluation import Evaluation, evaluate_pair, summarize
from explorer.measure.latency import (
    LatencyResult,
    measure_callable,
    measure_latency,
    measure_model_latency,
)
from explorer.measure.metrics import cosine_similarity, sqnr_db
from explorer.measure.size import SizeReport, export_safetensors, size_bytes, size_report

__all__ = [
    "Evaluation",
    "evaluate_pair",
    "summarize",
    "LatencyResult",
    "SizeReport",
    "cosine_similarity",
    "export_safetensors",
    "measure_callable",
    "measure_latency",
    "measure_model_latency",
    "size_bytes",
    "size_report",
    "sqnr_db",
]
