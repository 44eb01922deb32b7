"""The stored rows of the current model as the Pareto, Layers and Export pages show them: loaded
(or the page stops, saying why), labelled, and picked in a selectbox kept in step with the row
selected app-wide (`state.selected_row_key`), so that a row chosen on one page shows on the
others; and a row's headline numbers (`explorer.ui.labels`) drawn as metrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import streamlit as st

from explorer.errors import ExplorerError
from explorer.sweep.context import ModelContext, ModelSource
from explorer.ui import state
from explorer.ui.labels import Headline


def rows_or_stop(then: str) -> tuple[ModelSource, ModelContext, list[dict[str, Any]]]:
    """The current model's source, context and stored rows. Where they cannot be loaded, or there
    are none yet, the page says so and stops; ``then`` ends the message that asks for a sweep."""
    source = state.current_source()
    try:
        ctx = state.context(source)
        rows = state.rows_for(source)
    except ExplorerError as exc:
        st.error(f"Cannot load this model's results: {exc}")
        st.stop()
    if not rows:
        st.info(
            f"No results for **{ctx.name}** yet. Start the default sweep on the Model page or run "
            f"one on the Sweep page{then}"
        )
        st.stop()
    return source, ctx, rows


def row_labels(rows: list[dict[str, Any]]) -> dict[str, str]:
    """``{row key: label}``, a label that several rows share followed by the start of the key."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.get("label") or ""] = counts.get(row.get("label") or "", 0) + 1
    return {
        row["key"]: (row.get("label") or "?")
        + (f" ({row['key'][:6]})" if counts[row.get("label") or ""] > 1 else "")
        for row in rows
    }


def _on_change(box: str) -> None:
    state.select_row(st.session_state[box])


def row_picker_ui(
    rows: list[dict[str, Any]],
    selected: str | None,
    *,
    box: str,
    label: str,
    help: str | None = None,
    placeholder: str | None = None,
) -> str | None:
    """A selectbox (session key ``box``) over the keys of ``rows`` showing ``selected``; choosing
    a row selects it app-wide. With a ``placeholder`` it may show none (``selected`` None, or a
    remembered choice that is no longer among the rows). Returns the chosen key."""
    labels = row_labels(rows)
    if selected is not None:
        if st.session_state.get(box) != selected:
            st.session_state[box] = selected
    elif st.session_state.get(box) not in labels:
        st.session_state.pop(box, None)
    empty = {} if placeholder is None else {"index": None, "placeholder": placeholder}
    return st.selectbox(
        label,
        list(labels),
        format_func=labels.__getitem__,
        key=box,
        on_change=_on_change,
        args=(box,),
        help=help,
        **empty,
    )


def headline_ui(items: Sequence[Headline]) -> None:
    """Headline numbers side by side, each change coloured by whether it is an improvement."""
    for col, item in zip(st.columns(len(items)), items, strict=True):
        col.metric(
            item.label,
            item.value,
            item.delta,
            delta_color="inverse" if item.lower_is_better else "normal",
        )
