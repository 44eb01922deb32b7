"""Plotly figures: the module moves into this package (split by concept in the next commit)."""

from explorer.plots.pareto import *  # noqa: F403
