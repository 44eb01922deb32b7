"""Users' evaluation and calibration data, validated like their weights (it is untrusted too).

Accepted: tensors in safetensors or ``.npz`` (``inputs``, optional ``labels``; no pickle),
CSV for tabular classifiers (numeric feature columns and an integer ``label`` column), and plain
UTF-8 text for byte-level language models (cut into sequences of ``seq_len + 1`` bytes: inputs and
next-byte targets). Every problem gets a specific `ModelLoadError`: size limit, empty file, missing
``inputs``, mismatched sample counts, non-integer labels, non-numeric CSV cells (with row and
column), NaN or Inf inputs, too few samples for calibration.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from explorer.errors import ModelLoadError
from explorer.models.safe_load import DEFAULT_MAX_BYTES, load_tensors

INPUT_KEYS = ("inputs", "x")
LABEL_KEYS = ("labels", "targets", "y")
CSV_LABEL = "label"


@dataclass
class Dataset:
    inputs: torch.Tensor
    targets: torch.Tensor | None
    source: str

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
        t = self.targets
        return (
            Dataset(self.inputs[:n_first], None if t is None else t[:n_first], self.source),
            Dataset(self.inputs[n_first:], None if t is None else t[n_first:], self.source),
        )


def require_samples(dataset: Dataset, minimum: int, purpose: str = "calibration") -> None:
    if len(dataset) < minimum:
        raise ModelLoadError(
            f"{purpose} needs at least {minimum} samples, {dataset.source} has {len(dataset)}"
        )


def _size_checked(path: Path, max_bytes: int) -> int:
    if not path.is_file():
        raise ModelLoadError(f"data file {path} does not exist")
    size = path.stat().st_size
    if size == 0:
        raise ModelLoadError(f"data file {path} is empty")
    if size > max_bytes:
        raise ModelLoadError(f"data file {path} is {size:,} bytes, over the limit of {max_bytes:,}")
    return size


def load_dataset(
    path: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES, seq_len: int = 128
) -> Dataset:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".safetensors", ".npz"):
        return _tensor_dataset(path, max_bytes)
    _size_checked(path, max_bytes)
    if suffix == ".csv":
        return _csv_dataset(path)
    if suffix == ".txt":
        return _text_dataset(path, seq_len)
    raise ModelLoadError(
        f"data file {path.name}: unsupported format {suffix or '(none)'}; use .safetensors or "
        ".npz (inputs, labels), .csv (features and a 'label' column) or .txt (text)"
    )


def _tensor_dataset(path: Path, max_bytes: int) -> Dataset:
    tensors = load_tensors(path, max_bytes=max_bytes)  # size, format, dtype and finiteness
    key = next((k for k in INPUT_KEYS if k in tensors), None)
    if key is None:
        raise ModelLoadError(
            f"{path.name} has no 'inputs' tensor (found: {', '.join(sorted(tensors)) or 'none'})"
        )
    inputs = tensors[key]
    if inputs.dim() == 0 or inputs.shape[0] == 0:
        raise ModelLoadError(f"{path.name}: 'inputs' holds no samples")
    label_key = next((k for k in LABEL_KEYS if k in tensors), None)
    labels = None if label_key is None else tensors[label_key]
    if labels is not None:
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ModelLoadError(f"{path.name}: labels must be integers, got {labels.dtype}")
        if labels.shape[0] != inputs.shape[0]:
            raise ModelLoadError(
                f"{path.name}: {inputs.shape[0]} inputs but {labels.shape[0]} labels"
            )
        labels = labels.long()
    if inputs.dtype.is_floating_point:
        inputs = inputs.float()
    return Dataset(inputs, labels, path.name)


def _csv_dataset(path: Path) -> Dataset:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ModelLoadError(f"{path.name} is not UTF-8 text") from None
    rows = list(csv.reader(io.StringIO(text)))
    if len(rows) < 2:
        raise ModelLoadError(f"{path.name} needs a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    if CSV_LABEL not in header:
        raise ModelLoadError(f"{path.name} has no '{CSV_LABEL}' column (columns: {header})")
    label_col = header.index(CSV_LABEL)
    features, labels = [], []
    for r, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise ModelLoadError(
                f"{path.name} row {r} has {len(row)} cells, expected {len(header)}"
            )
        values = []
        for c, cell in enumerate(row):
            try:
                v = float(cell)
            except ValueError:
                raise ModelLoadError(
                    f"{path.name} row {r}, column '{header[c]}': {cell!r} is not a number"
                ) from None
            if not math.isfinite(v):
                raise ModelLoadError(f"{path.name} row {r}, column '{header[c]}' is {cell}")
            values.append(v)
        label = values.pop(label_col)
        if label != int(label):
            raise ModelLoadError(f"{path.name} row {r}: label {label} is not an integer")
        features.append(values)
        labels.append(int(label))
    if not features:
        raise ModelLoadError(f"{path.name} has no data rows")
    return Dataset(torch.tensor(features, dtype=torch.float32), torch.tensor(labels), path.name)


def _text_dataset(path: Path, seq_len: int) -> Dataset:
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelLoadError(f"{path.name} is not UTF-8 text: {exc}") from None
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8).long()
    n = (data.numel() - 1) // seq_len
    if n < 1:
        raise ModelLoadError(
            f"{path.name} has {data.numel()} bytes; at least {seq_len + 1} are needed"
        )
    inputs = data[: n * seq_len].reshape(n, seq_len)
    targets = data[1 : n * seq_len + 1].reshape(n, seq_len)
    return Dataset(inputs, targets, path.name)
