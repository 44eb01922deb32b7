"""Quantization Explorer: quantize a PyTorch model per layer and measure it on real integer kernels.

The import direction, declared (``tests/test_layering.py`` holds the same table and enforces it):
a module may import its own unit and the units of a lower rank, never one of the same rank or above.

====  =====================================================================================
rank  units
====  =====================================================================================
0     ``errors`` (exceptions), ``machine`` (CPU features, caches, threads, bandwidth),
      ``paths`` (cache and store locations): stdlib and torch only, usable everywhere
1     ``quant``: the numerics (configs, plans, qparams, packing, GPTQ/AWQ/SmoothQuant)
2     ``kernels``: real integer kernels, each with a float reference
3     ``nn``: quantized modules, ``quantize_model``, batch-norm folding, QAT
4     ``measure``: size, latency, metrics and evaluation statistics of any ``nn.Module``
5     ``models``: built-in models, the registry, safe loading of users' weights and data
6     ``tasks``: what a model does and how it is judged (data, metric, outputs, workloads)
      and ``export``: writing and loading a quantized model as it ships (neither uses the other)
7     ``targets``: where a configuration runs (native engine, ONNX Runtime, llama.cpp)
8     ``sweep``: spaces, the runner, the results store, sensitivity, search, Pareto fronts
9     the app services ``bundle``, ``inspect``, ``lesson``, ``uploads``, ``whatif``, ``guide``,
      and the figure builders ``plots``: each uses the sweep, none uses another
10    the shells: ``ui`` (Streamlit state and widgets) and ``cli`` (the ``explorer`` command)
11    ``pages/`` (UI only; models only through ``models.catalog`` and ``models.registry``)
====  =====================================================================================

Measurement ranks below models because it measures any module and imports none of ours, while the
built-in models' training scripts and the tasks use its statistics. Nothing outside
``explorer.ui`` (and the pages) imports streamlit.
"""

__version__ = "0.1.0"
