"""Text data and the model directory's tokenizer.

Text is untrusted data like weights: every file is size-checked before it is read, and every
problem names the file, line or row. Formats:
- ``.txt``: UTF-8 text (a language model reads it whole; an embedding model one sentence a line);
- ``.jsonl``: one JSON object a line, its fields named (``text``; or ``sentence1``,
  ``sentence2``, ``score``; or ``text``, ``label``);
- ``.csv``: a header row naming the same fields.

The tokenizer is the directory's own, loaded with ``AutoTokenizer.from_pretrained(dir,
local_files_only=True, trust_remote_code=False)``: nothing is downloaded and no custom code runs.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from explorer.models.safe_load import DEFAULT_MAX_BYTES
from explorer.tasks.task import TaskError

TEXT_SUFFIXES = (".txt", ".jsonl", ".csv")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
)


def is_text(path: Path) -> bool:
    return path.suffix.lower() in TEXT_SUFFIXES


def load_tokenizer(model_dir: Path | None) -> Any | None:
    """The directory's tokenizer, or None when it has no tokenizer files."""
    if model_dir is None or not any((model_dir / f).is_file() for f in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            str(model_dir), local_files_only=True, trust_remote_code=False
        )
    except Exception as exc:  # transformers raises many kinds; the user needs the message
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TaskError(f"{model_dir}: its tokenizer cannot be loaded: {first}") from None


def tokenizer_summary(tokenizer: Any) -> str:
    return f"{type(tokenizer).__name__} ({len(tokenizer):,} tokens)"


def read_text(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    if not path.is_file():
        raise TaskError(f"data file {path} does not exist")
    size = path.stat().st_size
    if size == 0:
        raise TaskError(f"data file {path} is empty")
    if size > max_bytes:
        raise TaskError(f"data file {path} is {size:,} bytes, over the limit of {max_bytes:,}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TaskError(f"{path.name} is not UTF-8 text (byte {exc.start})") from None


def read_records(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> list[dict[str, Any]]:
    """The rows of a ``.jsonl`` or ``.csv`` file as dicts (CSV cells stay strings)."""
    text = read_text(path, max_bytes)
    if path.suffix.lower() == ".csv":
        rows = list(csv.reader(io.StringIO(text)))
        if len(rows) < 2:
            raise TaskError(f"{path.name} needs a header row and at least one data row")
        header = [h.strip() for h in rows[0]]
        records = []
        for r, row in enumerate(rows[1:], start=2):
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise TaskError(f"{path.name} row {r} has {len(row)} cells, expected {len(header)}")
            records.append(dict(zip(header, row, strict=True)))
        return records
    records = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TaskError(f"{path.name} line {line_no} is not JSON: {exc.msg}") from None
        if not isinstance(record, dict):
            raise TaskError(f"{path.name} line {line_no} is not a JSON object")
        records.append(record)
    if not records:
        raise TaskError(f"{path.name} holds no records")
    return records


def text_field(path: Path, records: list[dict[str, Any]], name: str) -> list[str]:
    """Field ``name`` of every record, each a non-empty string."""
    out = []
    for i, record in enumerate(records, start=1):
        value = record.get(name)
        if not isinstance(value, str) or not value.strip():
            raise TaskError(f"{path.name} record {i}: field '{name}' must be non-empty text")
        out.append(value)
    return out


def number_field(path: Path, records: list[dict[str, Any]], name: str) -> list[float]:
    out = []
    for i, record in enumerate(records, start=1):
        value = record.get(name)
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise TaskError(
                f"{path.name} record {i}: field '{name}' is {value!r}, not a number"
            ) from None
        if number != number or number in (float("inf"), float("-inf")):
            raise TaskError(f"{path.name} record {i}: field '{name}' is {value!r}")
        out.append(number)
    return out


def documents(path: Path) -> list[str]:
    """A language model's text: the whole ``.txt``, or each ``.jsonl`` record's ``text``."""
    if path.suffix.lower() == ".txt":
        return [read_text(path)]
    if path.suffix.lower() == ".jsonl":
        return text_field(path, read_records(path), "text")
    raise TaskError(
        f"{path.name}: a language model reads .txt or .jsonl (a 'text' field), "
        "or token ids in .safetensors/.npz"
    )
