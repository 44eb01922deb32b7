"""The import direction of the package, declared as a table and enforced.

House rule 1: the engine (explorer/ outside explorer/ui/) never imports streamlit.
House rule 2: dependencies point one way. `LAYERS` gives each top-level unit of ``explorer/`` (a
subpackage or a top-level module) and the pages a rank; a module may import its own unit and any
unit of a *lower* rank, never one of the same rank or above. The same table is the docstring of
``explorer/__init__.py``.

Measurement (``measure``: size, latency, metrics, evaluation statistics) ranks below ``models``:
it measures any ``nn.Module`` and imports no model, while built-in models' training scripts and the
tasks use its metrics. Pages sit on top, but reach models only through the registry and the
catalog (never a model's own module).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "explorer"
PAGES = ROOT / "pages"

LAYERS: dict[str, int] = {
    # facts and errors every layer may use (stdlib and torch only)
    "errors": 0,
    "machine": 0,
    "paths": 0,
    # the engine, bottom up
    "quant": 1,
    "kernels": 2,
    "nn": 3,
    "measure": 4,
    "models": 5,
    "tasks": 6,
    "export": 6,
    "targets": 7,
    "sweep": 8,
    # the app services and the figure builders: each uses the sweep, none uses another
    "bundle": 9,
    "inspect": 9,
    "lesson": 9,
    "uploads": 9,
    "whatif": 9,
    "guide": 9,
    "plots": 9,
    # the two shells
    "ui": 10,
    "cli": 10,
    "pages": 11,
}
PAGE_MODEL_MODULES = ("explorer.models.catalog", "explorer.models.registry")
"""The only ways a page reaches the models."""


def _unit(path: Path, engine: Path) -> str:
    if path.is_relative_to(engine):
        return path.relative_to(engine).with_suffix("").parts[0]
    return "pages"


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            # ``from explorer import plots`` names the unit in the imported names
            if node.module == "explorer":
                out += [(node.lineno, f"explorer.{a.name}") for a in node.names]
    return out


def layer_violations(
    engine: Path, pages: Path | None = None, layers: dict[str, int] = LAYERS
) -> list[str]:
    """Every import of ``engine`` (and ``pages``) that breaks the declared direction."""
    files = sorted(engine.rglob("*.py"))
    if pages is not None:
        files += sorted(pages.glob("*.py"))
    found = []
    for path in files:
        unit = _unit(path, engine)
        if unit == "__init__":
            continue
        where = path.relative_to(engine.parent)
        if unit not in layers:
            found.append(f"{where}: unit {unit!r} has no rank in LAYERS (declare it)")
            continue
        for line, module in _imports(path):
            parts = module.split(".")
            if parts[0] != "explorer" or len(parts) < 2:
                continue
            target = parts[1]
            if target == unit:
                continue
            if target not in layers:
                found.append(f"{where}:{line} imports {module}: {target!r} has no rank")
            elif layers[target] >= layers[unit]:
                found.append(
                    f"{where}:{line} imports {module}: {unit} (rank {layers[unit]}) may not "
                    f"import {target} (rank {layers[target]})"
                )
            elif (
                unit == "pages" and target == "models" and not module.startswith(PAGE_MODEL_MODULES)
            ):
                found.append(
                    f"{where}:{line} imports {module}: pages reach models only through "
                    f"{' and '.join(PAGE_MODEL_MODULES)}"
                )
    return found


def test_engine_does_not_import_streamlit() -> None:
    offenders = []
    for path in ENGINE.rglob("*.py"):
        if "ui" in path.relative_to(ENGINE).parts[:1]:
            continue
        for _, name in _imports(path):
            if name == "streamlit" or name.startswith("streamlit."):
                offenders.append(str(path))
    assert not offenders, offenders


def test_every_import_follows_the_declared_direction() -> None:
    assert layer_violations(ENGINE, PAGES) == []


def test_the_declared_table_is_the_package_docstring() -> None:
    import explorer

    doc = explorer.__doc__ or ""
    for unit in LAYERS:
        if unit != "pages":
            assert f"`{unit}`" in doc, f"explorer/__init__.py does not declare {unit}"


def _tree(tmp_path: Path, files: dict[str, str]) -> tuple[Path, Path]:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path / "explorer", tmp_path / "pages"


def test_a_back_edge_is_caught(tmp_path: Path) -> None:
    engine, pages = _tree(
        tmp_path,
        {
            "explorer/__init__.py": "",
            "explorer/quant/__init__.py": "",
            "explorer/quant/config.py": "import torch\n",
            "explorer/sweep/runner.py": "from explorer.quant.config import x\n",
            # the synthetic back-edge: numerics importing the sweep
            "explorer/quant/bad.py": "import os\nfrom explorer.sweep.runner import run\n",
        },
    )
    found = layer_violations(engine, pages)
    assert found == [
        "explorer/quant/bad.py:2 imports explorer.sweep.runner: quant (rank 1) may not import "
        "sweep (rank 8)"
    ]


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (  # two app services at the same rank
            {"explorer/whatif.py": "from explorer.inspect import f\n"},
            "explorer/whatif.py:1 imports explorer.inspect: whatif (rank 9) may not import "
            "inspect (rank 9)",
        ),
        (  # a page reaching into a model's own module
            {"pages/kernels.py": "from explorer.models.tinylm import cpu_features\n"},
            "pages/kernels.py:1 imports explorer.models.tinylm: pages reach models only through "
            "explorer.models.catalog and explorer.models.registry",
        ),
        (  # a new unit nobody ranked
            {"explorer/newthing.py": "import json\n"},
            "explorer/newthing.py: unit 'newthing' has no rank in LAYERS (declare it)",
        ),
        (  # `from explorer import plots` inside the sweep
            {"explorer/sweep/x.py": "from explorer import plots\n"},
            "explorer/sweep/x.py:1 imports explorer.plots: sweep (rank 8) may not import plots "
            "(rank 9)",
        ),
    ],
)
def test_each_kind_of_break_is_named(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    engine, pages = _tree(tmp_path, {"explorer/__init__.py": "", **files})
    assert layer_violations(engine, pages) == [expected]


def test_allowed_edges_pass(tmp_path: Path) -> None:
    engine, pages = _tree(
        tmp_path,
        {
            "explorer/__init__.py": "",
            "explorer/sweep/runner.py": "from explorer.models.registry import x\nimport torch\n",
            "explorer/models/tinylm.py": "from explorer.measure.latency import y\n",
            "pages/model.py": "from explorer.models.catalog import z\nfrom explorer.ui import s\n",
        },
    )
    assert layer_violations(engine, pages) == []
