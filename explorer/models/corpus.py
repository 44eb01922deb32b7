"""The tiny-lm text corpus: the English prose of CPython's standard library, and its fixed splits.

Source. Every docstring (module, class, function) and every comment of the ``.py`` files of the
standard library of the Python that runs `build_corpus` (tests, codec tables and vendored
packages excluded), in file order and line order within a file. The standard library is
distributed under the PSF License Agreement version 2 (permissive; see ``LICENSE-PSF.txt`` next to
the corpus, which the licence asks to keep with any derivative work). It is English technical
writing: explanations, argument descriptions, doctest examples, the reasons behind code.

Cleaning is deliberately light, so the text stays what a reader of the library sees: docstrings
are dedented (``inspect.cleandoc``, via ``ast.get_docstring``); consecutive comment lines become
one paragraph with their ``#`` markers stripped; shebangs, coding cookies, separator lines and
comment paragraphs that look like commented-out code (fewer than `MIN_PROSE_FRACTION` letters and
spaces) are dropped; a paragraph that already appeared verbatim (licence headers, repeated
boilerplate) is kept only the first time, so the held-out text cannot be memorised from a copy.
Paragraphs are joined by blank lines.

Splits. The corpus is cut into `STRETCHES` equal stretches. The end of each stretch is held out:
`EVAL_ROWS` rows of ``T + 1`` bytes for evaluation, before them `CALIBRATION_ROWS` rows for
calibration; the rest of each stretch is training text. Held-out text is therefore contiguous
(1 KiB chunks) and spread over the whole library, not one alphabetical corner of it, and the
same bytes land in the same split on every machine.

Imports nothing from the explorer.
"""

from __future__ import annotations

import ast
import gzip
import io
import re
import sys
import sysconfig
import tokenize
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

EXCLUDED_DIRS = frozenset(
    {"test", "tests", "idle_test", "site-packages", "__pycache__", "encodings", "lib-dynload"}
)
"""Test suites (synthetic strings), codec tables (``# 0x80 -> EURO SIGN`` by the thousand) and
third-party packages."""

MIN_PROSE_FRACTION = 0.8
"""A comment paragraph is kept if at least this fraction of its characters are letters or
whitespace: English prose sits near 0.95, commented-out code well below."""

STRETCHES = 32
EVAL_ROWS = 4
CALIBRATION_ROWS = 2

_CODING = re.compile(r"^[ \t\f]*#.*?coding[:=]")
_SEPARATOR = re.compile(r"^[\W_]*$")


@dataclass(frozen=True)
class Splits:
    """Byte tensors (uint8, 1-D) of the three splits; held-out splits are a whole number of rows
    of ``row_bytes`` bytes, each row cut from one contiguous chunk of the corpus."""

    train: torch.Tensor
    calibration: torch.Tensor
    eval: torch.Tensor
    row_bytes: int


def stdlib_files(root: Path | None = None) -> list[Path]:
    """The standard library's ``.py`` files that feed the corpus, in sorted path order."""
    root = Path(sysconfig.get_paths()["stdlib"]) if root is None else root
    files = []
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).parts
        if any(part in EXCLUDED_DIRS or part.startswith("config-") for part in parts[:-1]):
            continue
        if parts[-1].startswith("_sysconfigdata"):
            continue
        files.append(path)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _docstrings(tree: ast.Module) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            text = ast.get_docstring(node, clean=True)
            if text:
                line = node.body[0].lineno if node.body else 0
                yield line, text


def _comment_lines(source: bytes) -> Iterator[tuple[int, int, str]]:
    """(line, column, text without the leading ``#`` markers) of every comment token."""
    for tok in tokenize.tokenize(io.BytesIO(source).readline):
        if tok.type != tokenize.COMMENT:
            continue
        line, col = tok.start
        if line <= 2 and (tok.string.startswith("#!") or _CODING.match(tok.line)):
            continue
        yield line, col, tok.string.lstrip("#").removeprefix(" ").rstrip()


def _comment_paragraphs(source: bytes) -> Iterator[tuple[int, str]]:
    """Runs of comments on consecutive lines at one column, as paragraphs (first line, text)."""
    run: list[str] = []
    start = last = col = -1
    for line, column, text in _comment_lines(source):
        if run and (line != last + 1 or column != col or not text):
            yield start, "\n".join(run)
            run = []
        if text and not _SEPARATOR.match(text):
            if not run:
                start, col = line, column
            run.append(text)
        last = line
    if run:
        yield start, "\n".join(run)


def _is_prose(text: str) -> bool:
    kept = sum(ch.isalpha() or ch.isspace() for ch in text)
    return kept >= MIN_PROSE_FRACTION * len(text) and any(ch.isalpha() for ch in text)


def file_paragraphs(source: bytes) -> list[str]:
    """Docstrings and prose comment paragraphs of one Python source, in line order.

    A file that does not parse on this Python (none in the standard library) gives nothing.
    """
    try:
        tree = ast.parse(source)
        comments = list(_comment_paragraphs(source))
    except (SyntaxError, tokenize.TokenError, ValueError):
        return []
    pieces = list(_docstrings(tree)) + [(line, t) for line, t in comments if _is_prose(t)]
    return [text for _, text in sorted(pieces, key=lambda p: p[0])]


def build_corpus(files: Iterable[Path]) -> bytes:
    """The corpus text (UTF-8) of ``files``: paragraphs in order, exact repeats dropped."""
    seen: set[str] = set()
    out: list[str] = []
    for path in files:
        for paragraph in file_paragraphs(path.read_bytes()):
            if paragraph not in seen:
                seen.add(paragraph)
                out.append(paragraph)
    return ("\n\n".join(out) + "\n").encode("utf-8")


def python_version() -> str:
    return ".".join(str(v) for v in sys.version_info[:3])


def write_gzip(data: bytes, path: Path) -> None:
    """Gzip ``data`` reproducibly: no file name, modification time 0."""
    path.write_bytes(gzip.compress(data, compresslevel=9, mtime=0))


def read_gzip(path: Path, max_bytes: int = 64 << 20) -> bytes:
    with gzip.open(path, "rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"{path}: more than {max_bytes} bytes uncompressed")
    return data


def split_corpus(data: bytes, row_bytes: int) -> Splits:
    """Cut ``data`` into the train / calibration / eval splits described in the module docstring.

    ``row_bytes`` is ``T + 1``: a held-out row gives ``T`` inputs and ``T`` shifted targets.
    """
    held = (EVAL_ROWS + CALIBRATION_ROWS) * row_bytes
    stretch = len(data) // STRETCHES
    if stretch < 2 * held:
        raise ValueError(
            f"corpus of {len(data)} bytes is too short for {STRETCHES} stretches holding out "
            f"{held} bytes each"
        )
    everything = torch.frombuffer(bytearray(data), dtype=torch.uint8)  # (N,)
    train, calibration, evaluation = [], [], []
    for i in range(STRETCHES):
        begin = i * stretch
        end = len(data) if i == STRETCHES - 1 else begin + stretch
        calib_at = end - held
        eval_at = calib_at + CALIBRATION_ROWS * row_bytes
        train.append(everything[begin:calib_at])
        calibration.append(everything[calib_at:eval_at])
        evaluation.append(everything[eval_at : eval_at + EVAL_ROWS * row_bytes])
    return Splits(
        train=torch.cat(train),
        calibration=torch.cat(calibration),
        eval=torch.cat(evaluation),
        row_bytes=row_bytes,
    )
