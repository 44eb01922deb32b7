"""House rule 1: the engine (explorer/ outside explorer/ui/) never imports streamlit."""

from __future__ import annotations

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[1] / "explorer"


def test_engine_does_not_import_streamlit() -> None:
    offenders = []
    for path in ENGINE.rglob("*.py"):
        if "ui" in path.relative_to(ENGINE).parts[:1]:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "streamlit" or n.startswith("streamlit.") for n in names):
                offenders.append(str(path))
    assert not offenders, offenders
