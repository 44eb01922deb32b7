"""Quantization Explorer: quantize a PyTorch model per layer and measure it on real integer kernels.

Layers (each imports only from those above it): ``quant`` (numerics) ← ``kernels`` (integer kernels
with float references) ← ``nn`` (quantized modules, ``quantize_model``) ← ``measure`` (size,
latency, metrics) ← ``cli``. Nothing outside ``explorer.ui`` imports streamlit.
"""

__version__ = "0.1.0"
