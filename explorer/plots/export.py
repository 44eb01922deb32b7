"""A figure as a standalone HTML page that opens offline (`to_html`)."""

from __future__ import annotations

import plotly.graph_objects as go

# plotly.js's only network address: the default base URL of the topojson files of geo maps,
# which no figure here draws. Pointed at a relative path so a saved page never reaches out.
_TOPOJSON_CDN = '"https://cdn.plot.ly/un/"'


def to_html(fig: go.Figure) -> str:
    """A standalone HTML page of ``fig`` with plotly.js inlined: it opens offline."""
    html = fig.to_html(include_plotlyjs=True, full_html=True, config={"displaylogo": False})
    return html.replace(_TOPOJSON_CDN, '"./topojson/"')
