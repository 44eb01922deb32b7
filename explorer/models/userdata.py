"""Users' evaluation and calibration data, validated like their weights (it is untrusted too).

Formats (``--data FILE``; one file, chosen by its suffix):

- **Tensors** in ``.safetensors`` or ``.npz`` (no pickle): ``inputs`` (or ``x``), optional
  integer ``labels`` (or ``targets``, ``y``) with one entry per input. Read through
  `explorer.models.safe_load`, which checks the file size, headers and dtypes before any data.
  Floating inputs become float32; integer inputs (token ids) keep their dtype.
- **CSV** for tabular classifiers: a header row, numeric feature columns and an integer ``label``
  column. Parsed as a stream (one row at a time into a float32 buffer), so the memory it takes is
  that of the resulting tensors (4 bytes per feature, 8 per label), not of the text.
- **Text** (``.txt``, UTF-8) for byte-level language models: cut into sequences of ``seq_len``
  bytes with next-byte targets. Read in chunks straight into one int64 tensor that the inputs and
  the targets both view (8 bytes per byte of text; the model's embedding and the loss need int64).

Limits: the file's size (``max_bytes``, as for weights) and the bytes of the tensors it becomes
(``max_tensor_bytes``): refused before parsing where the file's size fixes that number (text,
tensors), and checked row by row where it does not (CSV).

Every problem gets a specific `ModelLoadError` naming the file and, where there is one, the row
(1-based; for CSV also the file's line), the column or the tensor index: a directory instead of a
file, empty file, size limits, missing ``inputs``, mismatched sample counts, non-integer or
overflowing labels, non-numeric cells, NaN or Inf values, too few samples for calibration. Once
the model is known, `check_for_model` runs it on one sample and checks labels (and token ids)
against the number of classes (vocabulary) it outputs, so a bad label is reported when the data
loads, not as an ``IndexError`` deep inside QAT.

Imports: `explorer.errors`, `explorer.models.safe_load`.
"""

from __future__ import annotations

import codecs
import csv
import math
import os
import stat
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from explorer.errors import ModelLoadError
from explorer.models.safe_load import DEFAULT_MAX_BYTES, load_tensors

INPUT_KEYS = ("inputs", "x")
LABEL_KEYS = ("labels", "targets", "y")
CSV_LABEL = "label"
FORMATS = (
    ".safetensors or .npz (tensors 'inputs' and optional integer 'labels'), .csv (numeric "
    f"feature columns and an integer '{CSV_LABEL}' column) or .txt (UTF-8 text)"
)
DEFAULT_MAX_TENSOR_BYTES = 4 * 1024**3
"""The default limit on the bytes of the tensors one data file becomes (e.g. 512 MiB of text)."""
MAX_CSV_LINE_CHARS = 1 << 20
"""A longer CSV line is refused: csv would build one string object per cell of it at once."""
IGNORE_INDEX = -100
"""Language-model targets equal to this are not scored (the convention of PyTorch's losses)."""

_CHUNK = 1 << 20
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class Dataset:
    """Samples and optional labels, with where they came from (for messages that name a row).

    ``kind`` is ``tensors``, ``csv`` or ``text``; ``lines`` (CSV only) holds each row's line
    number in the file, since blank lines and quoted newlines make the two differ."""

    inputs: torch.Tensor
    targets: torch.Tensor | None
    source: str
    kind: str = "tensors"
    lines: torch.Tensor | None = None
    first_row: int = 0  # rows before this one went to another split

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def batches(self, batch_size: int = 64) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        out = []
        for i in range(0, len(self), batch_size):
            t = None if self.targets is None else self.targets[i : i + batch_size]
            out.append((self.inputs[i : i + batch_size], t))
        return out

    def split(self, n_first: int) -> tuple[Dataset, Dataset]:
        """The first ``n_first`` samples (e.g. calibration) and the rest (evaluation)."""
        if not 0 < n_first < len(self):
            raise ModelLoadError(f"cannot take {n_first} of {len(self)} samples from {self.source}")

        def part(rows: slice, first_row: int) -> Dataset:
            t, lines = self.targets, self.lines
            return Dataset(
                self.inputs[rows],
                None if t is None else t[rows],
                self.source,
                self.kind,
                None if lines is None else lines[rows],
                first_row,
            )

        return part(slice(None, n_first), self.first_row), part(
            slice(n_first, None), self.first_row + n_first
        )


def require_samples(dataset: Dataset, minimum: int, purpose: str = "calibration") -> None:
    if len(dataset) < minimum:
        raise ModelLoadError(
            f"{purpose} needs at least {minimum} samples, {dataset.source} has {len(dataset)}"
        )


def load_dataset(
    path: str | os.PathLike[str],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES,
    seq_len: int = 128,
) -> Dataset:
    """Load a data file (see the module docstring for the formats and their limits)."""
    path = Path(path)
    size = _size_checked(path, max_bytes)
    suffix = path.suffix.lower()
    if suffix in (".safetensors", ".npz"):
        return _tensor_dataset(path, max_bytes, max_tensor_bytes)
    if suffix == ".csv":
        return _csv_dataset(path, max_tensor_bytes)
    if suffix == ".txt":
        return _text_dataset(path, size, seq_len, max_tensor_bytes)
    raise ModelLoadError(
        f"data file {path.name}: unsupported format {suffix or '(none)'}; use {FORMATS}"
    )


def _size_checked(path: Path, max_bytes: int) -> int:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ModelLoadError(f"data file {path} does not exist") from None
    except OSError as exc:
        raise ModelLoadError(f"data file {path}: cannot read it ({exc.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise ModelLoadError(
            f"data path {path} is a directory; an image folder (one subfolder per class) is "
            f"read only for an image classifier (…ForImageClassification), otherwise --data "
            f"takes one file: {FORMATS} (audio folders are not read yet)"
        )
    if not stat.S_ISREG(info.st_mode):
        raise ModelLoadError(f"data path {path} is not a regular file; use {FORMATS}")
    if info.st_size == 0:
        raise ModelLoadError(f"data file {path} is empty")
    if info.st_size > max_bytes:
        raise ModelLoadError(
            f"data file {path} is {info.st_size:,} bytes, over the limit of {max_bytes:,}"
        )
    return info.st_size


def _over_tensor_limit(name: str, nbytes: int, max_tensor_bytes: int, what: str) -> ModelLoadError:
    return ModelLoadError(
        f"data file {name}: {what} would take {nbytes:,} bytes as tensors, over the limit of "
        f"{max_tensor_bytes:,}"
    )


# --- tensors ----------------------------------------------------------------------------------


def _tensor_dataset(path: Path, max_bytes: int, max_tensor_bytes: int) -> Dataset:
    # size, format, header and dtype checks; finiteness is worded below, for data
    tensors = load_tensors(path, max_bytes=max_bytes, check_finite=False)
    key = next((k for k in INPUT_KEYS if k in tensors), None)
    if key is None:
        raise ModelLoadError(
            f"data file {path.name} has no 'inputs' tensor "
            f"(found: {', '.join(sorted(tensors)) or 'none'})"
        )
    inputs = tensors[key]
    if inputs.dim() == 0 or inputs.shape[0] == 0:
        raise ModelLoadError(f"data file {path.name}: '{key}' holds no samples")
    label_key = next((k for k in LABEL_KEYS if k in tensors), None)
    labels = None if label_key is None else tensors[label_key]
    if labels is not None:
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ModelLoadError(
                f"data file {path.name}: labels must be integers, got {labels.dtype}"
            )
        if labels.dim() == 0:
            raise ModelLoadError(
                f"data file {path.name}: '{label_key}' is a single number; give one label per input"
            )
        if labels.shape[0] != inputs.shape[0]:
            raise ModelLoadError(
                f"data file {path.name}: {inputs.shape[0]} inputs but {labels.shape[0]} labels"
            )
    nbytes = inputs.numel() * (4 if inputs.dtype.is_floating_point else inputs.element_size())
    nbytes += 0 if labels is None else labels.numel() * 8
    if nbytes > max_tensor_bytes:
        names = f"'{key}'" + ("" if label_key is None else f" and '{label_key}'")
        raise _over_tensor_limit(path.name, nbytes, max_tensor_bytes, names)
    if inputs.dtype.is_floating_point:
        _check_finite(path.name, key, inputs)
        inputs = inputs.float()
    return Dataset(inputs, None if labels is None else labels.long(), path.name)


def _check_finite(name: str, key: str, t: torch.Tensor) -> None:
    """Count NaN and Inf in chunks (a mask of the whole tensor would be a quarter of its size)."""
    flat = t.reshape(-1)
    nan = inf = 0
    first = None
    for start in range(0, flat.numel(), _CHUNK):
        chunk = flat[start : start + _CHUNK]
        bad = ~torch.isfinite(chunk)
        if not bool(bad.any()):
            continue
        n_nan = int(torch.isnan(chunk).sum())
        nan, inf = nan + n_nan, inf + int(bad.sum()) - n_nan
        if first is None:
            first = start + int(bad.to(torch.uint8).argmax())
    if first is None:
        return
    counts = " and ".join(f"{n:,} {label}" for n, label in ((nan, "NaN"), (inf, "Inf")) if n)
    index = _index(first, t.shape)
    raise ModelLoadError(
        f"data file {name}: tensor '{key}' has {counts} values (first at index {index}, "
        f"row {int(np.unravel_index(first, tuple(t.shape))[0]) + 1})"
    )


def _index(flat: int, shape: torch.Size | tuple[int, ...]) -> str:
    idx = tuple(int(i) for i in np.unravel_index(flat, tuple(shape)))
    return str(idx[0]) if len(idx) == 1 else f"({', '.join(map(str, idx))})"


# --- CSV --------------------------------------------------------------------------------------


def _csv_dataset(path: Path, max_tensor_bytes: int) -> Dataset:
    name = path.name
    try:
        # utf-8-sig: spreadsheet programs often open the file with a byte-order mark
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(_bounded_lines(f, name), strict=True)
            return _parse_csv(path, reader, max_tensor_bytes)
    except UnicodeDecodeError as exc:
        raise ModelLoadError(f"data file {name} is not UTF-8 text ({exc.reason})") from None


def _bounded_lines(f: Iterator[str], name: str) -> Iterator[str]:
    for number, line in enumerate(f, start=1):
        if len(line) > MAX_CSV_LINE_CHARS:
            raise ModelLoadError(
                f"data file {name} line {number} is longer than {MAX_CSV_LINE_CHARS:,} "
                "characters; is it a CSV file with one row per line?"
            )
        yield line


def _parse_csv(path: Path, reader: Any, max_tensor_bytes: int) -> Dataset:
    """Rows go one at a time into float32 / int64 buffers: no list of rows, no Python floats."""
    name = path.name
    try:
        header = [h.strip() for h in next(reader, [])]
    except csv.Error as exc:
        raise ModelLoadError(f"data file {name} line 1: not valid CSV ({exc})") from None
    if not header:
        raise ModelLoadError(f"data file {name} needs a header row and at least one data row")
    if CSV_LABEL not in header:
        raise ModelLoadError(f"data file {name} has no '{CSV_LABEL}' column (columns: {header})")
    n_cols = len(header)
    label_col = header.index(CSV_LABEL)
    row_bytes = 4 * (n_cols - 1) + 8  # float32 features, int64 label
    max_rows = max_tensor_bytes // row_bytes
    features, labels, lines = array("f"), array("q"), array("q")
    line = reader.line_num  # the header's last line (a quoted name may span lines)
    while True:
        start_line = line + 1
        try:
            row = next(reader, None)
        except csv.Error as exc:
            raise ModelLoadError(
                f"data file {name} line {start_line}: not valid CSV ({exc})"
            ) from None
        if row is None:
            break
        line = reader.line_num
        if len(row) != n_cols:
            if not any(cell.strip() for cell in row):
                continue  # blank line
            raise ModelLoadError(
                f"data file {name} row {len(labels) + 1} (line {start_line}) has {len(row)} "
                f"cells, expected {n_cols}"
            )
        before = len(features)
        try:
            features.extend(map(float, row[:label_col]))
            features.extend(map(float, row[label_col + 1 :]))
        except ValueError:
            del features[before:]
            if not any(cell.strip() for cell in row):
                continue  # a row of empty cells
            col = next(c for c, cell in enumerate(row) if c != label_col and not _is_float(cell))
            raise ModelLoadError(
                f"data file {name} row {len(labels) + 1} (line {start_line}), column "
                f"{header[col]!r}: {row[col]!r} is not a number"
            ) from None
        labels.append(_label(row[label_col], name, len(labels) + 1, start_line))
        lines.append(start_line)
        if len(labels) > max_rows:
            raise _over_tensor_limit(
                name, len(labels) * row_bytes, max_tensor_bytes, f"more than {max_rows:,} rows"
            )
    if not labels:
        raise ModelLoadError(f"data file {name} needs a header row and at least one data row")
    x = np.frombuffer(features, dtype=np.float32).reshape(len(labels), n_cols - 1)
    if not np.isfinite(x).all():
        # array("f") stores a value beyond float32's range as Inf, so one check covers all three
        bad_row, bad_col = (int(i) for i in np.argwhere(~np.isfinite(x))[0])
        file_col = bad_col + 1 if bad_col >= label_col else bad_col
        bad_line = lines[bad_row]
        raise ModelLoadError(
            f"data file {name} row {bad_row + 1} (line {bad_line}), column {header[file_col]!r}: "
            f"{_cell(path, bad_line, file_col)!r} is not a finite float32 value (NaN, Inf, "
            f"or beyond ±{_FLOAT32_MAX:.4g})"
        )
    return Dataset(
        torch.from_numpy(x),  # shares the buffer: no copy
        torch.from_numpy(np.frombuffer(labels, dtype=np.int64)),
        name,
        "csv",
        torch.from_numpy(np.frombuffer(lines, dtype=np.int64)),
    )


def _is_float(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _label(cell: str, name: str, row: int, line: int) -> int:
    """An int64 class index from a cell: ``3`` and ``3.0`` pass, ``3.5`` and ``1e30`` do not."""
    try:
        value = int(cell)
    except ValueError:
        where = f"data file {name} row {row} (line {line})"
        try:
            number = float(cell)
        except ValueError:
            raise ModelLoadError(
                f"{where}, column '{CSV_LABEL}': {cell!r} is not a number"
            ) from None
        if not math.isfinite(number) or number != int(number):
            raise ModelLoadError(f"{where}: label {cell.strip()} is not an integer") from None
        value = int(number)
    if not -(2**63) <= value < 2**63:
        raise ModelLoadError(
            f"data file {name} row {row} (line {line}), column '{CSV_LABEL}': label "
            f"{cell.strip()} is too large for a class index"
        )
    return value


def _cell(path: Path, line: int, col: int) -> str:
    """The text of one cell, read again for an error message (the parse kept only floats)."""
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        previous = 0
        for row in reader:
            if previous + 1 == line:
                return row[col]
            previous = reader.line_num
    return "?"


# --- text -------------------------------------------------------------------------------------


def _text_dataset(path: Path, size: int, seq_len: int, max_tensor_bytes: int) -> Dataset:
    n = (size - 1) // seq_len
    if n < 1:
        raise ModelLoadError(
            f"data file {path.name} has {size} bytes; at least {seq_len + 1} are needed"
        )
    used = n * seq_len + 1  # the tail that does not fill a sequence is dropped
    if used * 8 > max_tensor_bytes:
        raise _over_tensor_limit(path.name, used * 8, max_tensor_bytes, f"{size:,} bytes of text")
    data = torch.empty(used, dtype=torch.int64)
    decoder = codecs.getincrementaldecoder("utf-8")()
    buffer = bytearray(_CHUNK)
    chunk = torch.frombuffer(buffer, dtype=torch.uint8)
    pos = 0
    with path.open("rb") as f:
        while k := f.readinto(buffer):
            try:
                decoder.decode(memoryview(buffer)[:k])  # validates; the str is dropped
            except UnicodeDecodeError as exc:
                raise ModelLoadError(
                    f"data file {path.name} is not UTF-8 text: {exc.reason} at byte "
                    f"{pos + exc.start:,}"
                ) from None
            take = min(k, used - pos)
            if take > 0:
                data[pos : pos + take].copy_(chunk[:take])
            pos += k
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise ModelLoadError(
            f"data file {path.name} is not UTF-8 text: it ends inside a character ({exc.reason})"
        ) from None
    if pos < used:
        raise ModelLoadError(f"data file {path.name} shrank while it was being read")
    inputs = data[: n * seq_len].view(n, seq_len)  # (n, T)
    targets = data[1:].view(n, seq_len)  # (n, T), the same storage shifted by one byte
    return Dataset(inputs, targets, path.name, "text")


# --- against the model ------------------------------------------------------------------------


def check_labels(
    dataset: Dataset, n_classes: int, *, what: str = "label", tensor: str = "labels"
) -> None:
    """Refuse a dataset whose ``targets`` (or ``inputs``, with ``tensor="inputs"``) fall outside
    ``[0, n_classes)``, naming the file, the first bad row and its value.

    ``what`` words the value: ``label`` (class indices: "a model with 10 classes (0–9)") or
    ``token`` (token ids: "a vocabulary of 256 tokens (0–255)"; targets may also equal
    `IGNORE_INDEX`, which the losses skip)."""
    t = dataset.inputs if tensor == "inputs" else dataset.targets
    if t is None or t.numel() == 0 or t.dtype.is_floating_point:
        return
    if 0 <= int(t.min()) and int(t.max()) < n_classes:
        return  # the common case, without a mask as large as the tensor
    bad = (t < 0) | (t >= n_classes)
    if what == "token" and tensor != "inputs":
        bad &= t != IGNORE_INDEX
    count = int(bad.sum())
    if count == 0:
        return
    flat = int(bad.reshape(-1).to(torch.uint8).argmax())
    value = int(t.reshape(-1)[flat])
    limit = (
        f"a model with {n_classes} classes (0–{n_classes - 1})"
        if what == "label"
        else f"a model with a vocabulary of {n_classes} tokens (0–{n_classes - 1})"
    )
    more = f"; {count:,} values of '{tensor}' are out of range" if count > 1 else ""
    raise ModelLoadError(
        f"data file {_where(dataset, tensor, flat, t.shape)}: {what} {value} is out of range "
        f"for {limit}{more}"
    )


def _where(dataset: Dataset, tensor: str, flat: int, shape: torch.Size) -> str:
    row = int(np.unravel_index(flat, tuple(shape))[0])
    number = dataset.first_row + row + 1
    if dataset.kind == "csv" and dataset.lines is not None:
        return f"{dataset.source} row {number} (line {int(dataset.lines[row])})"
    if dataset.kind == "text":
        seq_len = int(shape[-1])
        offset = (dataset.first_row * seq_len) + flat + (tensor != "inputs")
        return f"{dataset.source} byte {offset:,}"
    index = ", ".join(str(int(i)) for i in np.unravel_index(flat, tuple(shape)))
    return f"{dataset.source} row {number} ({tensor}[{index}])"


def check_for_model(dataset: Dataset, model: nn.Module, task: str) -> None:
    """Run ``model`` on one sample and check the data against what it outputs.

    The width of the output's last dimension is the number of classes (``classification``) or
    the vocabulary (``lm``): exact for any architecture, and one forward pass is cheap. Token ids
    in ``inputs`` are checked first, against the input embedding (an ``IndexError`` otherwise),
    or for a language model without one, against its output vocabulary. Other tasks are not
    checked."""
    if task not in ("classification", "lm"):
        return
    x = dataset.inputs[:1]
    token_ids = not x.dtype.is_floating_point
    vocab = _input_vocabulary(model) if token_ids else None
    if vocab is not None:
        check_labels(dataset, vocab, what="token", tensor="inputs")
    if token_ids:
        x = torch.zeros_like(x)  # id 0 is valid in any vocabulary; ids do not change widths
    try:
        with torch.inference_mode():
            out = model(x)
    except Exception as exc:  # the user's model on the user's data: any failure is theirs
        lines = str(exc).strip().splitlines()
        raise ModelLoadError(
            f"data file {dataset.source}: the model cannot run on its evaluation data (one "
            f"sample of shape {tuple(x.shape)}, {str(x.dtype).removeprefix('torch.')}): "
            f"{lines[0] if lines else type(exc).__name__}. Check that the data's inputs have "
            "the shape and type the model expects"
        ) from None
    logits = getattr(out, "logits", out)
    if not isinstance(logits, torch.Tensor) or logits.dim() == 0:
        return
    width = int(logits.shape[-1])
    if task == "lm":
        if token_ids and vocab is None:
            check_labels(dataset, width, what="token", tensor="inputs")
        check_labels(dataset, width, what="token")
    else:
        check_labels(dataset, width, what="label")


def _input_vocabulary(model: nn.Module) -> int | None:
    get = getattr(model, "get_input_embeddings", None)
    embedding = get() if callable(get) else None
    if not isinstance(embedding, nn.Embedding):
        embedding = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    return None if embedding is None else int(embedding.num_embeddings)
