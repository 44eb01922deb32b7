"""The version of the code that produced a result row, derived rather than bumped by hand.

A row is reused only while the code that computed its numbers is the same, so its key's ``code``
part holds:

- ``source``: sha256 (first 16 hex digits) over the relative path and bytes of every file in
  `SOURCE_PARTS`, in path order: the quantization numerics (``explorer/quant``), the kernels and
  their C source (``explorer/kernels``, ``*.c`` and ``*.h`` included), the quantized modules and
  conversion (``explorer/nn``), measurement and evaluation statistics (``explorer/measure``), the
  tasks' metrics (``explorer/tasks``, where present), the targets that build, run and time
  another runtime's artifact (``explorer/targets``), and the sweep's own row-making code
  (``explorer/sweep/runner.py``, ``context.py`` and this file). Left out on purpose: the model
  architectures (a model's weights are keyed by ``model_fingerprint``; built-in models' training
  scripts and cards change often and do not change a row), the store, the search, the plots,
  the app and the command line, none of which computes a row's numbers.
- ``native``: the sha256 of the compiled kernel library that was loaded (a different compiler
  or flags give different machine code, hence possibly different float rounding and speed) and
  the instruction-set path its kernels take (``avx2`` or ``scalar``); null when the native
  kernels are unavailable.

Any edit to a file in the list (a comment included: cheaper than deciding which edits matter)
re-evaluates every row. The hash is computed once per process (about 60 files, a few ms).

Imports: `explorer.kernels.native` (for the build's hash), the standard library.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parents[1]  # explorer/
SOURCE_PARTS: tuple[str, ...] = (
    "quant",
    "kernels",
    "nn",
    "measure",
    "tasks",
    "targets",
    "sweep/runner.py",
    "sweep/context.py",
    "sweep/version.py",
)
SOURCE_SUFFIXES = frozenset({".py", ".c", ".h"})
DIGEST_CHARS = 16


def source_files(root: Path = PACKAGE, parts: Iterable[str] = SOURCE_PARTS) -> list[Path]:
    """The files of ``parts`` under ``root`` (folders recursively; missing parts skipped)."""
    files: set[Path] = set()
    for part in parts:
        path = root / part
        if path.is_file():
            files.add(path)
        elif path.is_dir():
            files.update(
                p
                for p in path.rglob("*")
                if p.is_file() and p.suffix in SOURCE_SUFFIXES and "__pycache__" not in p.parts
            )
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def source_digest(root: Path = PACKAGE, parts: Iterable[str] = SOURCE_PARTS) -> str:
    """sha256 over each file's path relative to ``root`` and its bytes (first 16 hex digits)."""
    digest = hashlib.sha256()
    for path in source_files(root, parts):
        data = path.read_bytes()
        digest.update(f"{path.relative_to(root).as_posix()}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()[:DIGEST_CHARS]


def native_version() -> dict[str, Any] | None:
    """The loaded native library's sha256 and instruction-set path (None when unavailable),
    with ``conv_isa``: the path of the int8 convolution kernels, which live in a library of
    their own with its own instruction-set switch (`explorer.kernels.conv_ops.conv_isa`; absent
    when that library is unavailable). Its source is in `source_digest` like every kernel's."""
    from explorer.kernels import conv_ops, native

    stamp = native.build_stamp()
    if stamp is None:
        return None
    conv = conv_ops.conv_isa()
    return {**stamp, "conv_isa": conv} if conv is not None else dict(stamp)


@functools.cache
def code_version() -> dict[str, Any]:
    """The ``code`` part of a row's key (computed once per process)."""
    return {"source": source_digest(), "native": native_version()}
