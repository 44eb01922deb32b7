"""Real integer kernels behind one interface, each with a float reference computing the same
function; dispatch by device and, among equivalent kernels, by measured speed.

Imports from `explorer.quant` only.
"""
