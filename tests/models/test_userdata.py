"""Users' data files: each format loads, each problem gets its specific error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from explorer.errors import ModelLoadError
from explorer.models.userdata import load_dataset, require_samples


def test_safetensors_and_npz_round_trip(tmp_path: Path) -> None:
    x = torch.randn(20, 4)
    y = torch.randint(0, 3, (20,))
    save_file({"inputs": x, "labels": y}, str(tmp_path / "d.safetensors"))
    np.savez(tmp_path / "d.npz", inputs=x.numpy(), labels=y.numpy())
    for name in ("d.safetensors", "d.npz"):
        data = load_dataset(tmp_path / name)
        assert torch.equal(data.inputs, x) and torch.equal(data.targets, y) and len(data) == 20
    calib, rest = data.split(8)
    assert len(calib) == 8 and len(rest) == 12
    require_samples(calib, 8)
    with pytest.raises(ModelLoadError, match="at least 16 samples, d.npz has 8"):
        require_samples(calib, 16)


def test_unlabelled_tensors(tmp_path: Path) -> None:
    save_file({"inputs": torch.randn(5, 2)}, str(tmp_path / "u.safetensors"))
    assert load_dataset(tmp_path / "u.safetensors").targets is None


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"features": torch.randn(3, 2)}, "no 'inputs' tensor"),
        ({"inputs": torch.randn(3, 2), "labels": torch.rand(3)}, "labels must be integers"),
        (
            {"inputs": torch.randn(3, 2), "labels": torch.zeros(4, dtype=torch.long)},
            "3 inputs but 4 labels",
        ),
        ({"inputs": torch.tensor([[1.0, float("nan")]])}, "NaN"),
    ],
)
def test_bad_tensor_data(tmp_path: Path, tensors: dict, message: str) -> None:
    save_file(tensors, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ModelLoadError, match=message):
        load_dataset(tmp_path / "bad.safetensors")


def test_csv(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("a,b,label\n1,2,0\n3.5,-1,2\n\n")
    data = load_dataset(tmp_path / "t.csv")
    assert data.inputs.tolist() == [[1.0, 2.0], [3.5, -1.0]] and data.targets.tolist() == [0, 2]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b\n1,2\n", "data file bad.csv has no 'label' column (columns: ['a', 'b'])"),
        (
            "a,label\n1,0\nx,1\n",
            "data file bad.csv row 2 (line 3), column 'a': 'x' is not a number",
        ),
        ("a,label\n1,0\n2\n", "data file bad.csv row 2 (line 3) has 1 cells, expected 2"),
        ("a,label\n1,0.5\n", "data file bad.csv row 1 (line 2): label 0.5 is not an integer"),
        ("a,label\n1,x\n", "data file bad.csv row 1 (line 2), column 'label': 'x' is not a number"),
        # a quoted newline in a name: the rows' lines shift, the message stays on one line
        (
            '"a\nb",label\n1,0\nx,1\n',
            r"data file bad.csv row 2 (line 4), column 'a\nb': 'x' is not",
        ),
        (
            "a,label\n1,0\n\n\nnan,0\n",
            "data file bad.csv row 2 (line 5), column 'a': 'nan' is not a finite float32 value "
            "(NaN, Inf, or beyond ±3.403e+38)",
        ),
        (
            "label,a\n0,1\n1,1e39\n",
            "data file bad.csv row 2 (line 3), column 'a': '1e39' is not a finite float32 value",
        ),
        ("a,label\n", "data file bad.csv needs a header row and at least one data row"),
        ('a,label\n1,0\n"2"x,1\n', "data file bad.csv line 3: not valid CSV (',' expected"),
        ('a,"label\n1,0\n', "data file bad.csv line 1: not valid CSV (unexpected end of data)"),
    ],
)
def test_bad_csv(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(ModelLoadError) as raised:
        load_dataset(tmp_path / "bad.csv")
    assert str(raised.value).startswith(message)


def test_csv_quirks(tmp_path: Path) -> None:
    """A byte-order mark, quoted cells, spaces, rows of empty cells and '3.0' labels load."""
    (tmp_path / "q.csv").write_bytes('\ufeffa,label\n" 1.5",3.0\n,\n-2, 1\n'.encode())
    data = load_dataset(tmp_path / "q.csv")
    assert data.inputs.tolist() == [[1.5], [-2.0]] and data.targets.tolist() == [3, 1]
    assert data.targets.dtype == torch.int64 and data.lines.tolist() == [2, 4]


def test_text_for_language_models(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("hello world, " * 30)
    data = load_dataset(tmp_path / "t.txt", seq_len=16)
    assert data.inputs.shape[1] == 16
    assert torch.equal(data.inputs[0, 1:], data.targets[0, :-1])
    (tmp_path / "short.txt").write_text("hi")
    with pytest.raises(ModelLoadError, match="at least 17"):
        load_dataset(tmp_path / "short.txt", seq_len=16)
    (tmp_path / "bin.txt").write_bytes(b"a" * 300 + b"\xff\xfe\x00")
    with pytest.raises(
        ModelLoadError, match="bin.txt is not UTF-8 text: invalid start byte at byte 300$"
    ):
        load_dataset(tmp_path / "bin.txt")
    # a character cut by the end of the file, and one cut by a chunk boundary (valid)
    (tmp_path / "cut.txt").write_bytes(b"a" * 300 + "é".encode()[:1])
    with pytest.raises(ModelLoadError, match="ends inside a character"):
        load_dataset(tmp_path / "cut.txt")


def test_empty_oversized_and_unknown(tmp_path: Path) -> None:
    (tmp_path / "e.csv").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty"):
        load_dataset(tmp_path / "e.csv")
    (tmp_path / "big.txt").write_text("x" * 1000)
    with pytest.raises(ModelLoadError, match="over the limit of 100"):
        load_dataset(tmp_path / "big.txt", max_bytes=100)
    (tmp_path / "d.pkl").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="unsupported format .pkl"):
        load_dataset(tmp_path / "d.pkl")
