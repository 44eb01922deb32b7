"""The numerics: configs and plans, qparams, (fake-)quantization, observers, bit packing, and
the error-compensating PTQ algorithms (`gptq`, `awq`, `smoothquant`) that work on a weight and
the statistics of its layer's inputs.

Imports only torch and `explorer.errors`; every other layer of the explorer builds on this one.
"""

from explorer.quant.config import Plan, QuantConfig, parse_granularity
from explorer.quant.primitives import (
    block_size,
    choose_qparams,
    dequantize,
    fake_quantize,
    qrange,
    quantize,
)

__all__ = [
    "Plan",
    "QuantConfig",
    "block_size",
    "choose_qparams",
    "dequantize",
    "fake_quantize",
    "parse_granularity",
    "qrange",
    "quantize",
]
