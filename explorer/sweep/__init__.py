"""Sweeps over quantization plans: the sweep space, the runner, the results store, per-layer
sensitivity, mixed-precision search, Pareto fronts and export."""
