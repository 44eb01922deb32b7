"""Plotly figures of sweep results, sensitivity tables, per-layer reports, kernel benchmarks and
quantization lessons: plain data in, a `plotly.graph_objects.Figure` out.

Conventions every figure keeps, so a page can rely on them:

- Each point of a result row carries the row's key as its ``customdata`` (a page opens a point's
  per-layer view from a selection event; `selected_keys` reads the keys back).
- Simulated numbers say so: a simulated latency is drawn with a hollow marker and "(simulated)" in
  its hover text; a layer without a real kernel is drawn hatched.
- Confidence intervals are error bars. The task metric's interval (accuracy, perplexity) is of the
  *delta* against float, so the bar spans ``float + lo`` to ``float + hi``; a fidelity metric's
  interval (``sqnr_db``, ``cosine``, ...) is of the metric itself.
- Traces say what they are in ``meta``: ``"series"``, ``"front"``, ``"selected"``, ``"legend"``
  (a legend-only explanation), ``"rug"``; layout annotations and shapes carry a ``name``.

Modules, by what they hold: shared by the figures of result rows, `rows` (reading a row's
values, the metric and the float reference), `axes` (which axes a task is drawn on: a
speech recognizer's word error rate in percent against its real-time factor), `series`
(legend series, colours, markers), `hover` (hover texts and confidence intervals) and
`layout` (axis titles, empty notes); by what they draw, `pareto` (the Pareto scatter, 2-D and
3-D, with reference points of other runtimes), `formats` (the metric per storage format),
`targets` (deployed vs explorer latency per configuration), `layers`
(sensitivity heatmap and per-layer bars), `learn` (the lessons' histogram), `kernels` (the kernel
benchmark) and `export` (a figure as offline HTML). Pages import
from this package, which re-exports every public name.

Imports: plotly, numpy, `explorer.sweep.pareto`. No streamlit.
"""

from explorer.plots.axes import latency_axis, latency_title, metric_title, rtf_path
from explorer.plots.export import to_html
from explorer.plots.formats import setting_figure, setting_of
from explorer.plots.kernels import kernel_speedup_figure
from explorer.plots.layers import (
    HATCH_NOTE,
    LAYER_VALUES,
    SENSITIVITY_VALUES,
    compare_layers_figure,
    layer_figure,
    sensitivity_heatmap,
)
from explorer.plots.learn import GRID_LINES_MAX, histogram_figure
from explorer.plots.pareto import (
    FRONT_COLOR,
    SIMULATED_NOTE,
    X_AXES,
    Cliff,
    bit_cliff,
    cliff_text,
    pareto_3d_figure,
    pareto_figure,
    selected_keys,
)
from explorer.plots.rows import TASK_METRICS, Row, float_metric, metric_of
from explorer.plots.series import (
    ALGORITHM_NAMES,
    ALGORITHM_SYMBOLS,
    BASELINE_SERIES,
    BASELINE_SYMBOLS,
    BASELINE_SYMBOLS_3D,
    MIXED_SERIES,
    OPEN_3D,
    PALETTE,
    QAT_SERIES,
    SELECTED_COLOR,
    SERIES_COLORS,
    algorithm_name,
    ptq_series,
    series_of,
)
from explorer.plots.targets import deployed_figure, latency_pairs

__all__ = [
    "ALGORITHM_NAMES",
    "ALGORITHM_SYMBOLS",
    "BASELINE_SERIES",
    "BASELINE_SYMBOLS",
    "BASELINE_SYMBOLS_3D",
    "FRONT_COLOR",
    "GRID_LINES_MAX",
    "HATCH_NOTE",
    "LAYER_VALUES",
    "MIXED_SERIES",
    "OPEN_3D",
    "PALETTE",
    "QAT_SERIES",
    "SELECTED_COLOR",
    "SENSITIVITY_VALUES",
    "SERIES_COLORS",
    "SIMULATED_NOTE",
    "TASK_METRICS",
    "X_AXES",
    "Cliff",
    "Row",
    "algorithm_name",
    "bit_cliff",
    "cliff_text",
    "deployed_figure",
    "compare_layers_figure",
    "float_metric",
    "histogram_figure",
    "kernel_speedup_figure",
    "latency_axis",
    "latency_pairs",
    "latency_title",
    "layer_figure",
    "metric_of",
    "metric_title",
    "pareto_3d_figure",
    "pareto_figure",
    "ptq_series",
    "rtf_path",
    "selected_keys",
    "sensitivity_heatmap",
    "series_of",
    "setting_figure",
    "setting_of",
    "to_html",
]
