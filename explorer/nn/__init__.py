"""Quantized modules and model conversion (PTQ and QAT).

Imports from `explorer.quant` and `explorer.kernels`.
"""

from explorer.nn.convert import quantize_model, select_kernels
from explorer.nn.modules import QuantConv2d, QuantLinear
from explorer.nn.qat import convert, prepare_qat, train_qat

__all__ = [
    "QuantConv2d",
    "QuantLinear",
    "convert",
    "prepare_qat",
    "quantize_model",
    "select_kernels",
    "train_qat",
]
