"""CTranslate2 ``model.bin``: named arrays of every dtype round-trip exactly, aliases resolve, and
damaged files are refused with a message naming the problem (no file is read past its end)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch

from explorer.errors import ModelLoadError
from explorer.models.whisper_ct2 import DTYPES, Ct2Model, read_ct2, write_ct2


def _model() -> Ct2Model:
    g = torch.Generator().manual_seed(0)
    variables = {
        "encoder/conv1/weight": torch.randn(4, 3, 3, generator=g),  # float32
        "decoder/embeddings/weight": torch.randn(7, 5, generator=g).half(),
        "decoder/layer_0/ffn/linear_0/weight": torch.randn(6, 5, generator=g).bfloat16(),
        "decoder/layer_0/ffn/linear_0/weight_scale": torch.randint(-128, 127, (6,), generator=g).to(
            torch.int8
        ),
        "decoder/num_heads": torch.tensor(6, dtype=torch.int16),
        "decoder/pre_norm": torch.tensor(1, dtype=torch.int8),
        "decoder/alignment_layer": torch.tensor(-1, dtype=torch.int16),
        "ids": torch.tensor([1, -2, 2**30], dtype=torch.int32),
        "empty": torch.empty(0, 3),
    }
    return Ct2Model(
        "WhisperSpec", 3, variables, {"decoder/projection/weight": "decoder/embeddings/weight"}
    )


def test_round_trip_of_named_arrays(tmp_path: Path) -> None:
    written = _model()
    write_ct2(tmp_path / "model.bin", written)
    read = read_ct2(tmp_path / "model.bin")
    assert (read.spec, read.revision, read.binary_version) == ("WhisperSpec", 3, 6)
    assert list(read.variables) == list(written.variables)  # the file's order
    for name, value in written.variables.items():
        assert read.variables[name].dtype == value.dtype, name
        assert read.variables[name].shape == value.shape, name
        assert torch.equal(read.variables[name], value), name  # bit for bit
    assert {v.dtype for v in read.variables.values()} == set(DTYPES)
    assert read.get("decoder/projection/weight") is read.variables["decoder/embeddings/weight"]
    assert read.scalar("decoder/num_heads") == 6 and read.scalar("decoder/alignment_layer") == -1
    assert read.scalar("missing", 3) == 3


def _bytes(tmp_path: Path) -> bytes:
    write_ct2(tmp_path / "ok.bin", _model())
    return (tmp_path / "ok.bin").read_bytes()


def _refused(tmp_path: Path, data: bytes) -> str:
    (tmp_path / "bad.bin").write_bytes(data)
    with pytest.raises(ModelLoadError) as info:
        read_ct2(tmp_path / "bad.bin")
    return str(info.value)


def test_truncated_file_names_what_runs_past_the_end(tmp_path: Path) -> None:
    data = _bytes(tmp_path)
    message = _refused(tmp_path, data[:200])
    assert "runs past the end of the file" in message and "bad.bin" in message


def test_trailing_bytes_are_refused(tmp_path: Path) -> None:
    assert "4 bytes after the aliases" in _refused(tmp_path, _bytes(tmp_path) + b"\0" * 4)


def test_byte_count_must_match_the_shape(tmp_path: Path) -> None:
    data = bytearray(_bytes(tmp_path))
    name = b"encoder/conv1/weight\0"
    at = data.index(name) + len(name) + 1 + 3 * 4 + 1  # rank, 3 dims, dtype id
    struct.pack_into("<I", data, at, 4 * 36 - 4)
    message = _refused(tmp_path, bytes(data))
    assert "variable encoder/conv1/weight of shape [4, 3, 3]" in message
    assert "has 140 bytes, expected 144" in message


def test_old_binary_versions_are_refused(tmp_path: Path) -> None:
    data = struct.pack("<I", 3) + _bytes(tmp_path)[4:]
    assert "binary version 3 is not supported" in _refused(tmp_path, data)


def test_unknown_dtype_id(tmp_path: Path) -> None:
    data = bytearray(_bytes(tmp_path))
    name = b"ids\0"
    data[data.index(name) + len(name) + 1 + 4] = 9
    assert "variable ids has unknown dtype id 9" in _refused(tmp_path, bytes(data))


def test_missing_file() -> None:
    with pytest.raises(ModelLoadError, match="no CTranslate2 model at /nonexistent/model.bin"):
        read_ct2("/nonexistent/model.bin")
