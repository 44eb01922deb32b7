"""Built-in models and loaders for users' models and weights.

Imports from `explorer.errors`, `explorer.quant`, `explorer.kernels` and `explorer.nn`; never from
`explorer.measure`, `explorer.sweep`, `explorer.plots` or `explorer.ui`.
"""
