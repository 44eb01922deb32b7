"""Former home of what the figures share, now in modules named for what they hold: `rows`
(reading result rows), `series` (legend series, colours, markers), `hover` (hover texts and
intervals) and `layout` (axis titles, empty notes). Kept only until the last importer moves."""

from __future__ import annotations

from explorer.measure.display import format_metric
from explorer.plots.hover import (  # noqa: F401
    _bits,
    _fmt_bytes,
    _hover,
    _interval,
    _kernels_summary,
    _method_line,
    _seconds,
    _size_unit,
)
from explorer.plots.layout import (  # noqa: F401
    _axis_title,
    _empty_note,
)
from explorer.plots.rows import (  # noqa: F401
    TASK_METRICS,
    Row,
    _get,
    _is_fp32,
    _metric_name,
    _metric_path,
    _number,
    _plotted,
    _quality_axis,
    _sense,
    _simulated,
    float_metric,
    metric_of,
)
from explorer.plots.series import (  # noqa: F401
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
    _base_symbol,
    _kernel_palette,
    _series_colors,
    _series_rank,
    _symbol,
    algorithm_name,
    ptq_series,
    series_of,
)

_fmt_metric = format_metric
