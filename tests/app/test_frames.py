"""Pages are frames (house rule 1, Streamlit's demo apps): each file in ``pages/`` holds imports,
constants (session keys, choices), ``*_ui`` functions that draw, and a ``main()`` that the file's
last line calls; nothing else runs at import. What a page computes or formats lives in
``explorer/`` (the tables and labels in `explorer.ui.tables` and `explorer.ui.labels`)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PAGES = sorted((Path(__file__).resolve().parents[2] / "pages").glob("*.py"))


def frame_problems(source: str) -> list[str]:
    """What keeps a page's source from being a frame, one line per statement."""
    body = ast.parse(source).body
    problems = []
    functions = {n.name for n in body if isinstance(n, ast.FunctionDef)}
    if "main" not in functions:
        problems.append("no main()")
    if not any(name.endswith("_ui") for name in functions):
        problems.append("no *_ui() function")
    last = body[-1] if body else None
    calls_main = (
        isinstance(last, ast.Expr)
        and isinstance(last.value, ast.Call)
        and isinstance(last.value.func, ast.Name)
        and last.value.func.id == "main"
        and not last.value.args
    )
    if not calls_main:
        problems.append("the last statement is not main()")
    for i, node in enumerate(body[:-1] if calls_main else body):
        if isinstance(node, ast.Import | ast.ImportFrom | ast.FunctionDef):
            continue
        if i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the docstring
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            continue
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            try:
                ast.literal_eval(node.value)
                continue
            except ValueError:
                pass
        problems.append(f"line {node.lineno} runs at import: {ast.unparse(node)[:60]}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_each_page_is_a_frame(page: Path) -> None:
    assert frame_problems(page.read_text()) == []


def test_what_is_not_a_frame_is_named() -> None:
    script = "import streamlit as st\n\nX = len([1])\nst.divider()\n"
    assert frame_problems(script) == [
        "no main()",
        "no *_ui() function",
        "the last statement is not main()",
        "line 3 runs at import: X = len([1])",
        "line 4 runs at import: st.divider()",
    ]
    frame = '"""Doc."""\nimport streamlit as st\n\nKEY = "k"\n\n\ndef title_ui():\n    pass\n\n\n'
    assert frame_problems(frame + "def main():\n    title_ui()\n\n\nmain()\n") == []
