"""Row keys know the code that produced them (`explorer.sweep.version`): an edit to a kernel's
source, in Python or C, gives every row a new key, so the store never serves stale numbers."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from explorer.kernels import conv_ops, native
from explorer.quant.config import Plan, QuantConfig
from explorer.sweep import runner, version
from explorer.sweep.context import environment
from explorer.sweep.runner import RunSettings, entry_key
from explorer.sweep.space import entry_for_plan
from explorer.sweep.store import ResultStore


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the package's hashed sources plus one file outside the list."""
    root = tmp_path / "explorer"
    for part in version.SOURCE_PARTS:
        src = version.PACKAGE / part
        if src.is_dir():
            shutil.copytree(src, root / part, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.is_file():
            (root / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / part)
    (root / "plots").mkdir()
    (root / "plots" / "pareto.py").write_text("# figures\n")
    return root


def _edit_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_the_copy_hashes_like_the_package(tree: Path) -> None:
    assert version.source_digest(tree) == version.source_digest()
    names = {p.relative_to(tree).as_posix() for p in version.source_files(tree)}
    assert "kernels/csrc/qe_kernels.c" in names and "sweep/runner.py" in names
    assert "quant/primitives.py" in names and not any("pycache" in n for n in names)


@pytest.mark.parametrize(
    "edited", ["kernels/csrc/qe_kernels.c", "kernels/native_ops.py", "quant/primitives.py"]
)
def test_editing_a_kernel_or_quantizer_changes_the_digest(tree: Path, edited: str) -> None:
    before = version.source_digest(tree)
    _edit_a_byte(tree / edited)
    assert version.source_digest(tree) != before


def test_files_outside_the_list_do_not_count(tree: Path) -> None:
    before = version.source_digest(tree)
    (tree / "plots" / "pareto.py").write_text("# other figures\n")
    assert version.source_digest(tree) == before


def test_a_changed_kernel_source_invalidates_a_stored_row(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row stored under one kernel source is not found under the edited one."""
    ctx: Any = SimpleNamespace(name="m", fingerprint="f" * 16, data_fingerprint="d" * 16)
    entry = entry_for_plan(Plan.uniform(QuantConfig(weight_bits=4)))
    settings, env = RunSettings(), environment()

    def code_from(root: Path) -> dict[str, Any]:
        return {"source": version.source_digest(root), "native": version.native_version()}

    monkeypatch.setattr(runner, "code_version", lambda: code_from(tree))
    key = entry_key(ctx, entry, settings, env)
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.put(key, {"row": "numbers of the old kernel"})
        assert store.has(entry_key(ctx, entry, settings, env))  # unchanged code: reused
        _edit_a_byte(tree / "kernels" / "csrc" / "qe_kernels.c")
        assert not store.has(entry_key(ctx, entry, settings, env))  # edited: re-evaluated


def test_code_part_names_the_native_build_and_isa() -> None:
    code = runner.row_parts(
        SimpleNamespace(name="m", fingerprint="f", data_fingerprint="d"),  # type: ignore[arg-type]
        entry_for_plan(Plan.uniform(QuantConfig(weight_bits=8))),
        RunSettings(),
        {},
    )["code"]
    assert code is version.code_version()  # computed once per process
    assert len(code["source"]) == version.DIGEST_CHARS
    if native.available():
        info = native.build_info()
        expected = {"build": str(info["sha256"])[:16], "isa": info["isa"]}
        conv = conv_ops.conv_isa()  # the int8 convolutions' own library and path
        assert code["native"] == ({**expected, "conv_isa": conv} if conv else expected)
    else:
        assert code["native"] is None


def test_the_convolution_path_is_part_of_the_native_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rows measured with the int8 convolutions on another instruction-set path are other
    rows: the path is in the key's native part (and so in the row, for the Layers view)."""
    if not native.available():
        pytest.skip(f"native kernels unavailable: {native.build_info().get('reason')}")
    monkeypatch.setattr(conv_ops, "conv_isa", lambda: "avx2")
    on_avx2 = version.native_version()
    monkeypatch.setattr(conv_ops, "conv_isa", lambda: "avx512_vnni")
    on_vnni = version.native_version()
    assert on_avx2 is not None and on_vnni is not None
    assert on_avx2["conv_isa"] == "avx2" and on_vnni["conv_isa"] == "avx512_vnni"
    assert on_avx2 != on_vnni
    monkeypatch.setattr(conv_ops, "conv_isa", lambda: None)  # no convolution library
    assert "conv_isa" not in version.native_version()  # type: ignore[operator]
