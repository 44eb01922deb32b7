"""A leading underscore means "this module's own": no module of ``explorer/`` or ``pages/``
imports another module's underscore name or reads one off another module.

A name that two modules need is a public concept: it gets a public name (and a docstring) in the
module that owns it. Caught: ``from explorer.x import _y`` (and the relative form), and
``m._y`` where ``m`` is bound to one of our modules by ``import explorer.x as m`` or
``from explorer import x``. Dunder names are not private; attributes of objects are out of
scope (a test cannot tell a module's private from a class's protected member by the syntax alone).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str, root: Path) -> bool:
    """Whether dotted ``name`` is a module or package of the tree under ``root``."""
    base = root.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    package = module.split(".")
    package = package if is_package else package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def private_crossings(root: Path, units: tuple[str, ...] = ("explorer", "pages")) -> list[str]:
    """Every use of another module's underscore name in the modules of ``units`` under
    ``root``, as ``file:line: what``."""
    found = []
    for unit in units:
        for path in sorted((root / unit).rglob("*.py")):
            module = _module_name(path, root)
            tree = ast.parse(path.read_text())
            modules: dict[str, str] = {}  # local name -> our module it is bound to
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom):
                    source = _absolute(node, module, path.name == "__init__.py")
                    if source.split(".")[0] not in units or source == module:
                        continue
                    for alias in node.names:
                        if _private(alias.name):
                            found.append(
                                f"{path.relative_to(root)}:{node.lineno}: imports {alias.name} "
                                f"from {source}"
                            )
                        elif _is_module(f"{source}.{alias.name}", root):
                            modules[alias.asname or alias.name] = f"{source}.{alias.name}"
                elif isinstance(node, ast.Import):
                    for alias in node.names:
                        if alias.asname and alias.name.split(".")[0] in units:
                            modules[alias.asname] = alias.name
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Attribute)
                    and _private(node.attr)
                    and isinstance(node.value, ast.Name)
                    and node.value.id in modules
                    and modules[node.value.id] != module
                ):
                    found.append(
                        f"{path.relative_to(root)}:{node.lineno}: uses {node.attr} of "
                        f"{modules[node.value.id]}"
                    )
    return found


def test_no_private_name_crosses_a_module_boundary() -> None:
    assert private_crossings(ROOT) == []


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in {"explorer/__init__.py": "", **files}.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "from explorer.quant.config import _check\n",
            "explorer/sweep/runner.py:1: imports _check from explorer.quant.config",
        ),
        (
            "from ..quant.config import _check\n",
            "explorer/sweep/runner.py:1: imports _check from explorer.quant.config",
        ),
        (
            "from explorer.quant import config\n\nconfig._check()\n",
            "explorer/sweep/runner.py:3: uses _check of explorer.quant.config",
        ),
        (
            "import explorer.quant.config as qc\n\nqc._check()\n",
            "explorer/sweep/runner.py:3: uses _check of explorer.quant.config",
        ),
    ],
)
def test_a_crossing_is_named(tmp_path: Path, text: str, expected: str) -> None:
    root = _tree(
        tmp_path,
        {
            "explorer/quant/__init__.py": "",
            "explorer/quant/config.py": "def _check():\n    pass\n",
            "explorer/sweep/__init__.py": "",
            "explorer/sweep/runner.py": text,
        },
    )
    assert private_crossings(root) == [expected]


def test_own_privates_dunders_and_other_libraries_pass(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "explorer/quant/__init__.py": "from explorer.quant.config import __all__\n",
            "explorer/quant/config.py": (
                "import torch\nfrom torch.nn.modules.batchnorm import _BatchNorm\n\n"
                "__all__ = []\n\n\ndef _check():\n    return torch._int_mm\n\n\n_check()\n"
            ),
            "pages/model.py": "from explorer.quant import config\n\nconfig.__name__\n",
        },
    )
    assert private_crossings(root) == []
