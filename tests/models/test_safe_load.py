"""The bad-file suite for `explorer.models.safe_load`.

Every hostile or broken input is refused with a specific message, no payload runs, and nothing
lands outside the extraction directory.

Every file is built inside the test, in ``tmp_path``.
"""

from __future__ import annotations

import json
import pickle
import stat
import struct
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn

from explorer.errors import ModelLoadError
from explorer.models.safe_load import (
    SAFETENSORS_MAX_HEADER_BYTES,
    fill_tied,
    load_into,
    load_tensors,
    safe_extract_zip,
    safetensors_header,
    validate_state_dict,
)


class _Payload:
    """Pickles to a call of ``Path.touch(marker)``: the shape of every pickle exploit."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.marker,))


class _TiedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(5, 3)
        self.head = nn.Linear(3, 5, bias=False)
        self.head.weight = self.emb.weight


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), name


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _st_raw(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


def _st(header: dict[str, object], data: bytes = b"") -> bytes:
    return _st_raw(json.dumps(header).encode(), data)


_GOOD = safetensors.torch.save({"w": torch.arange(64, dtype=torch.float32)})
_F32x2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}

BAD_SAFETENSORS = [
    ("empty", b"", r"empty file \(0 bytes\)"),
    ("shorter-than-prefix", b"\x01\x02", r"too short for the 8-byte safetensors header length"),
    ("cut-in-half", _GOOD[: len(_GOOD) // 2], r"truncated or malformed: `w` ends at byte 256"),
    ("cut-in-header", _GOOD[:20], r"header claims \d+ bytes but only 12 bytes follow.*truncated"),
    (
        "header-claims-2**63",
        struct.pack("<Q", 2**63) + b"{}",
        r"header claims 9223372036854775808 bytes but only 2 bytes follow",
    ),
    ("malformed-json", _st_raw(b'{"w": {"dtype": "F32",'), r"malformed JSON in safetensors header"),
    ("deeply-nested-json", _st_raw(b"[" * 100_000), r"malformed JSON in safetensors header"),
    ("not-utf8", _st_raw(b'{"\xff": 1}'), r"malformed safetensors header: not UTF-8"),
    ("json-list", _st_raw(b"[1, 2]"), r"JSON list, expected an object"),
    (
        "duplicate-name",
        _st_raw(b'{"w": %s, "w": %s}' % ((json.dumps(_F32x2).encode(),) * 2), bytes(8)),
        r"duplicate key 'w'",
    ),
    (
        "bad-entry",
        _st({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, bytes(8)),
        r"malformed safetensors header entry for tensor `w`",
    ),
    (
        "unsupported-dtype",
        _st(
            {
                "ok": _F32x2,
                "w8": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [8, 10]},
                "u16": {"dtype": "U16", "shape": [1], "data_offsets": [10, 12]},
            },
            bytes(12),
        ),
        r"2 tensor\(s\) have unsupported dtypes: w8 \(F8_E4M3\), u16 \(U16\); accepted: F64",
    ),
    (
        "offsets-past-end",
        _st({"w": _F32x2}, bytes(4)),
        r"truncated or malformed: `w` ends at byte 8 of a 4-byte data section",
    ),
    (
        "offsets-overlap",
        _st({"a": _F32x2, "b": {**_F32x2, "data_offsets": [4, 12]}}, bytes(12)),
        r"truncated or malformed: `b` overlaps the tensor before it",
    ),
    (
        "offsets-disagree-with-shape",
        _st({"w": {**_F32x2, "shape": [3]}}, bytes(8)),
        r"`w` spans 8 bytes but F32 \(3,\) needs 12",
    ),
    (
        "trailing-bytes",
        _GOOD + bytes(4),
        r"truncated or malformed: 4 bytes after the last tensor belong to no tensor",
    ),
    ("no-tensors", _st({"__metadata__": {"format": "pt"}}), r"contains no tensors"),
]


@pytest.mark.parametrize(
    ("data", "pattern"), [c[1:] for c in BAD_SAFETENSORS], ids=[c[0] for c in BAD_SAFETENSORS]
)
def test_bad_safetensors_files_are_refused(tmp_path: Path, data: bytes, pattern: str) -> None:
    path = _write(tmp_path / "bad.safetensors", data)
    with pytest.raises(ModelLoadError, match=pattern):
        load_tensors(path)


def test_pickle_payload_is_live_when_unpickled_unsafely(tmp_path: Path) -> None:
    """Control for the next tests: the payload really runs under plain pickle."""
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()


def test_malicious_reduce_in_torch_save_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2), "x": _Payload(marker)}, path)
    with pytest.raises(ModelLoadError, match=r"evil\.pt: contains pickled Python objects") as err:
        load_tensors(path)
    assert "pathlib" in str(err.value)  # the refused globals are named
    assert "state_dict()" in str(err.value)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_malicious_raw_pickle_is_refused_and_never_runs(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    path = _write(tmp_path / "evil.bin", pickle.dumps(_Payload(marker), protocol=protocol))
    with pytest.raises(ModelLoadError, match=r"contains pickled Python objects"):
        load_tensors(path)
    assert not marker.exists()
    with pytest.raises(ModelLoadError, match=r"contains pickled Python objects"):
        load_tensors(_write(tmp_path / "evil.pt", path.read_bytes()))
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [4, 5])
def test_pickle_protocol_refusal_shows_only_our_message(tmp_path: Path, protocol: int) -> None:
    """torch warns "Detected pickle protocol 4 in the checkpoint ..." (two lines on stderr) before
    its weights-only unpickler refuses the payload; the user should see our one line only."""
    marker = tmp_path / "pwned"
    path = _write(tmp_path / "evil.bin", pickle.dumps(_Payload(marker), protocol=protocol))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(
            ModelLoadError, match=r"pickled Python objects.*refused: pathlib\.Path\.touch"
        ):
            load_tensors(path)
    assert [str(w.message) for w in caught] == []
    assert not marker.exists()


def test_env_var_cannot_switch_weights_only_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"x": _Payload(marker)}, path)
    with pytest.raises(ModelLoadError, match=r"contains pickled Python objects"):
        load_tensors(path)
    assert not marker.exists()


def test_pickled_whole_module_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "module.pt"
    torch.save(nn.Linear(2, 2), path)
    with pytest.raises(
        ModelLoadError,
        match=r"pickled Python objects, not just tensors \(a whole module\?\) "
        r"\(refused: torch\.nn\.modules\.linear\.Linear\); save `model\.state_dict\(\)`",
    ):
        load_tensors(path)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_archive_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), path)
    with pytest.raises(
        ModelLoadError,
        match=r"TorchScript archives run code and are not accepted; export the state_dict as "
        r"safetensors",
    ):
        load_tensors(path)


def test_checkpoint_with_non_tensor_entries_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mixed.pt"
    torch.save({"w": torch.zeros(2), "epoch": 3, "opt": {"lr": 0.1}}, path)
    with pytest.raises(ModelLoadError, match=r"2 entries are not named tensors: epoch \(int\)"):
        load_tensors(path)


def test_checkpoint_that_is_not_a_dict_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(ModelLoadError, match=r"holds a list, expected a dict of tensors"):
        load_tensors(path)


@pytest.mark.parametrize(
    "data", [b"not a checkpoint at all", b"PK\x03\x04" + bytes(40)], ids=["garbage", "broken-zip"]
)
def test_corrupt_checkpoint_is_refused(tmp_path: Path, data: bytes) -> None:
    path = _write(tmp_path / "corrupt.pth", data)
    with pytest.raises(ModelLoadError, match=r"corrupt\.pth: not a readable PyTorch checkpoint"):
        load_tensors(path)


def test_truncated_torch_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "full.pt"
    torch.save(_tiny_net().state_dict(), path)
    cut = _write(tmp_path / "cut.pt", path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match=r"cut\.pt: not a readable PyTorch checkpoint"):
        load_tensors(cut)


def test_dtype_outside_allow_list_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "complex.pt"
    torch.save({"w": torch.zeros(2, dtype=torch.complex64), "b": torch.zeros(2)}, path)
    with pytest.raises(
        ModelLoadError, match=r"1 tensor\(s\) have dtypes outside the allow-list: w \(complex64\)"
    ):
        load_tensors(path)


@pytest.mark.parametrize(
    ("tensor", "pattern"),
    [
        (torch.eye(2).to_sparse(), r"not dense CPU tensors: w \(torch\.sparse_coo, cpu\)"),
        (torch.empty(2, device="meta"), r"not dense CPU tensors: w \(torch\.strided, meta\)"),
    ],
    ids=["sparse", "meta"],
)
def test_non_dense_tensors_are_refused(tmp_path: Path, tensor: torch.Tensor, pattern: str) -> None:
    path = tmp_path / "odd.pt"
    torch.save({"w": tensor}, path)
    with pytest.raises(ModelLoadError, match=pattern):
        load_tensors(path)


def test_nan_and_inf_weights_are_named(tmp_path: Path) -> None:
    nan = torch.ones(3, 4)
    nan[0, 0] = nan[2, 1] = float("nan")
    inf = torch.ones(5, dtype=torch.float16)
    inf[4] = float("-inf")
    path = tmp_path / "nonfinite.safetensors"
    safetensors.torch.save_file({"a.weight": nan, "b.bias": inf, "c.weight": torch.ones(2)}, path)
    with pytest.raises(
        ModelLoadError,
        match=r"2 tensor\(s\) hold NaN or Inf values: a\.weight \(2 NaN\), b\.bias \(1 Inf\);",
    ):
        load_tensors(path)


def test_many_nonfinite_tensors_are_listed_up_to_ten(tmp_path: Path) -> None:
    path = tmp_path / "nan.pt"
    torch.save({f"t{i:02d}": torch.full((2,), float("nan")) for i in range(13)}, path)
    with pytest.raises(ModelLoadError, match=r"13 tensor.*t09 \(2 NaN\) and 3 more;"):
        load_tensors(path)


def test_npz_object_array_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "objects.npz"
    np.savez(path, w=np.zeros(2, dtype=np.float32), o=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(
        ModelLoadError, match=r"arrays o hold Python objects \(dtype=object\), which need pickle"
    ):
        load_tensors(path)


def test_npz_unsupported_dtype_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "complex.npz"
    np.savez(path, c=np.zeros(2, dtype=np.complex64), s=np.array(["a"]))
    with pytest.raises(ModelLoadError, match=r"unsupported dtypes: c \(complex64\), s \(<U1\)"):
        load_tensors(path)


def test_npy_file_named_npz_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "single.npz"
    with path.open("wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(ModelLoadError, match=r"not an \.npz archive"):
        load_tensors(path)


def test_size_limit_is_checked_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file(_tiny_net().state_dict(), path)
    size = path.stat().st_size
    with pytest.raises(
        ModelLoadError, match=rf"file is {size} bytes, over the limit of 64 bytes for weight files"
    ):
        load_tensors(path, max_bytes=64)


@pytest.mark.parametrize(
    ("name", "pattern"),
    [
        ("weights.onnx", r"unsupported weights format '\.onnx'; accepted: \.safetensors, \.pt"),
        ("weights", r"unsupported weights format '\(no suffix\)'"),
        ("absent.safetensors", r"absent\.safetensors: no such file"),
    ],
    ids=["onnx", "no-suffix", "absent"],
)
def test_unusable_paths_are_refused(tmp_path: Path, name: str, pattern: str) -> None:
    with pytest.raises(ModelLoadError, match=pattern):
        load_tensors(tmp_path / name)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".npz"])
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    source = _tiny_net()
    state = {name: t.detach().clone() for name, t in source.state_dict().items()}
    path = tmp_path / f"model{suffix}"
    if suffix == ".safetensors":
        safetensors.torch.save_file(state, path)
    elif suffix == ".pt":
        torch.save(state, path)
    else:
        np.savez(path, **{name: t.numpy() for name, t in state.items()})
    _assert_same(load_tensors(path), state)

    target = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    before = _snapshot(target)
    loaded = load_into(target, path)
    assert loaded is not target
    _assert_same(_snapshot(loaded), state)
    _assert_same(_snapshot(target), before)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(loaded(x), source(x), rtol=0, atol=0)


def test_legacy_torch_save_format_is_accepted(tmp_path: Path) -> None:
    state = _tiny_net().state_dict()
    path = tmp_path / "legacy.bin"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    _assert_same(load_tensors(path), dict(state))


def test_state_dict_nested_in_training_checkpoint_is_accepted(tmp_path: Path) -> None:
    state = _tiny_net().state_dict()
    path = tmp_path / "checkpoint.pth"
    torch.save({"state_dict": state, "epoch": 7, "optimizer": {"lr": 0.1}}, path)
    _assert_same(load_tensors(path), dict(state))


def test_big_endian_npz_loads_as_native(tmp_path: Path) -> None:
    path = tmp_path / "be.npz"
    np.savez(path, w=np.arange(4, dtype=">f4"))
    tensors = load_tensors(path)
    assert tensors["w"].dtype == torch.float32
    assert tensors["w"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_load_into_reports_shape_mismatches_and_leaves_model_unchanged(tmp_path: Path) -> None:
    state = dict(_tiny_net().state_dict())
    state["0.weight"] = torch.zeros(4, 3)
    state["2.bias"] = torch.zeros(5)
    path = tmp_path / "shapes.safetensors"
    safetensors.torch.save_file(state, path)
    model = _tiny_net()
    before = _snapshot(model)
    with pytest.raises(
        ModelLoadError,
        match=r"shapes\.safetensors: weights do not match the model\. Shape mismatches \(2\): "
        r"0\.weight: expected \(3, 4\), got \(4, 3\); 2\.bias: expected \(2,\), got \(5,\)\.",
    ):
        load_into(model, path)
    _assert_same(_snapshot(model), before)


def test_load_into_reports_missing_and_unexpected_names(tmp_path: Path) -> None:
    state = dict(_tiny_net().state_dict())
    del state["2.bias"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "names.pt"
    torch.save(state, path)
    model = _tiny_net()
    before = _snapshot(model)
    with pytest.raises(
        ModelLoadError,
        match=r"Missing \(1\): 2\.bias\. Unexpected \(1\): extra\.weight\.$",
    ):
        load_into(model, path)
    _assert_same(_snapshot(model), before)


def test_validate_state_dict_truncates_long_lists() -> None:
    expected = {f"layer{i:02d}.weight": (2, 2) for i in range(15)}
    with pytest.raises(
        ModelLoadError, match=r"Missing \(15\): layer00\.weight, .*layer09\.weight and 5 more\.$"
    ):
        validate_state_dict(expected, {})
    validate_state_dict(expected, {name: torch.zeros(2, 2) for name in expected})


def test_load_into_casts_floats_to_the_model_dtype(tmp_path: Path) -> None:
    state = {name: t.half() for name, t in _tiny_net().state_dict().items()}
    path = tmp_path / "half.safetensors"
    safetensors.torch.save_file(state, path)
    model = _tiny_net().to(torch.bfloat16)
    loaded = load_into(model, path)
    for name, t in loaded.state_dict().items():
        assert t.dtype == torch.bfloat16
        torch.testing.assert_close(t, state[name].to(torch.bfloat16), rtol=0, atol=0)


def test_load_into_refuses_integer_weights_for_float_parameters(tmp_path: Path) -> None:
    state = dict(_tiny_net().state_dict())
    state["0.weight"] = torch.zeros(3, 4, dtype=torch.int8)
    path = tmp_path / "int.pt"
    torch.save(state, path)
    with pytest.raises(ModelLoadError, match=r"0\.weight: model has float32, file has int8"):
        load_into(_tiny_net(), path)


def test_fill_tied_ties_only_identical_views() -> None:
    """Views that share storage and offset but differ in shape or stride are different tensors:
    the head's weight saved once fills its tied twin, never ``w[:2]`` or ``w.t()``."""
    w = torch.arange(12.0).reshape(4, 3)
    reference = {"emb": w, "head": w.view(4, 3), "rows": w[:2], "transposed": w.t()}
    assert all(t.untyped_storage().data_ptr() == w.data_ptr() for t in reference.values())
    saved = {"emb": torch.ones(4, 3)}
    filled = fill_tied(reference, saved)
    assert sorted(filled) == ["emb", "head"]
    assert filled["head"] is saved["emb"]
    assert fill_tied(reference, {"rows": torch.ones(2, 3)}).keys() == {"rows"}


def test_safetensors_header_reads_names_dtypes_and_shapes(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    tensors = {"a": torch.zeros(2, 3, dtype=torch.bfloat16), "b": torch.zeros(4, dtype=torch.int8)}
    safetensors.torch.save_file(tensors, path, metadata={"format": "pt"})
    assert safetensors_header(path) == {"a": (torch.bfloat16, (2, 3)), "b": (torch.int8, (4,))}
    with pytest.raises(ModelLoadError, match="over the limit of 10 bytes"):
        safetensors_header(path, max_bytes=10)


def test_safetensors_header_is_capped_before_it_is_read(tmp_path: Path) -> None:
    """Issue 18: a 60 MB header took 2.25 GB and 45 s to parse. The length prefix alone decides
    (the file is sparse: 60 MB of zeros that are never read)."""
    assert SAFETENSORS_MAX_HEADER_BYTES == 16 * 1024**2
    header_len = 60 * 1000**2
    path = tmp_path / "huge-header.safetensors"
    with path.open("wb") as f:
        f.write(struct.pack("<Q", header_len))
        f.truncate(8 + header_len)
    start = time.perf_counter()
    for read in (load_tensors, safetensors_header):
        with pytest.raises(
            ModelLoadError,
            match=r"safetensors header of 57\.2 MiB \(60000000 bytes\) is over the limit of "
            r"16\.0 MiB \(16777216 bytes\)",
        ):
            read(path)
    assert time.perf_counter() - start < 1.0


def test_load_into_fills_tied_weights_saved_once(tmp_path: Path) -> None:
    torch.manual_seed(2)
    source = _TiedNet()
    path = tmp_path / "tied.safetensors"
    safetensors.torch.save_model(source, path)
    assert len(load_tensors(path)) == 1  # save_model keeps one name per shared tensor
    loaded = load_into(_TiedNet(), path)
    torch.testing.assert_close(loaded.head.weight, source.emb.weight, rtol=0, atol=0)
    assert loaded.head.weight is loaded.emb.weight


def _zip(path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for info, data in entries:
            archive.writestr(info, data)
    return path


def _zip_bomb(path: Path, size: int) -> Path:
    """One entry of ``size`` zero bytes, deflated to about size / 1000."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("model/weights.bin", "w") as out:
            chunk = bytes(1 << 20)
            for _ in range(size // len(chunk)):
                out.write(chunk)
    return path


def _understate_size(path: Path, name: str, claimed: int) -> None:
    """Rewrite the central directory so that entry ``name`` claims ``claimed`` bytes."""
    data = bytearray(path.read_bytes())
    start = 0
    while (start := data.find(b"PK\x01\x02", start)) != -1:
        name_len = struct.unpack_from("<H", data, start + 28)[0]
        if data[start + 46 : start + 46 + name_len] == name.encode():
            struct.pack_into("<I", data, start + 24, claimed)
        start += 4
    path.write_bytes(bytes(data))


def _symlink_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def _only_entries(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize(
    ("entry", "pattern"),
    [
        ("../evil", r"outside the destination \(absolute or '\.\.'\): \.\./evil"),
        (
            "model/../../evil",
            r"outside the destination \(absolute or '\.\.'\): model/\.\./\.\./evil",
        ),
        (None, r"outside the destination \(absolute or '\.\.'\): /"),
        (_symlink_info("model/link"), r"symbolic links, which could point outside"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink"],
)
def test_hostile_zip_entries_are_refused_and_nothing_is_written(
    tmp_path: Path, entry: zipfile.ZipInfo | str | None, pattern: str
) -> None:
    if entry is None:
        entry = str(tmp_path / "evil")  # an absolute path that would land beside dest
    archive = _zip(tmp_path / "model.zip", [("model/config.json", b"{}"), (entry, b"../../evil")])
    dest = tmp_path / "dest"
    with pytest.raises(ModelLoadError, match=pattern):
        safe_extract_zip(archive, dest)
    assert _only_entries(tmp_path) == {"model.zip"}


def test_zip_bomb_is_refused_from_its_declared_size(tmp_path: Path) -> None:
    archive = _zip_bomb(tmp_path / "bomb.zip", 50 << 20)
    assert archive.stat().st_size < 1 << 20
    with pytest.raises(
        ModelLoadError,
        match=r"entries declare 50\.0 MiB \(52428800 bytes\) uncompressed, over the limit of "
        r"1\.0 MiB \(1048576 bytes\) \(a zip bomb\?\)",
    ):
        safe_extract_zip(archive, tmp_path / "dest", max_bytes=1 << 20)
    assert _only_entries(tmp_path) == {"bomb.zip"}


def test_zip_bomb_with_lying_header_is_stopped_and_cleaned_up(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "bomb.zip", [("model/config.json", b"{}")])
    with zipfile.ZipFile(archive, "a", zipfile.ZIP_DEFLATED) as z, z.open("model/w.bin", "w") as f:
        for _ in range(50):
            f.write(bytes(1 << 20))
    _understate_size(archive, "model/w.bin", 1000)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ModelLoadError, match=r"bomb\.zip: cannot extract model/w\.bin: Bad CRC"):
        safe_extract_zip(archive, dest, max_bytes=1 << 20)
    # dest existed (empty) before the call, so it stays, emptied again.
    assert _only_entries(tmp_path) == {"bomb.zip", "dest"}


def test_zip_with_too_many_entries_is_refused(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "many.zip", [(f"m/{i}.txt", b"x") for i in range(5)])
    with pytest.raises(ModelLoadError, match=r"5 entries, over the limit of 3 files"):
        safe_extract_zip(archive, tmp_path / "dest", max_files=3)


def test_zip_refuses_a_non_empty_destination(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "m.zip", [("m/a.txt", b"x")])
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "keep.txt").write_text("mine")
    with pytest.raises(ModelLoadError, match=r"must be absent or an empty directory"):
        safe_extract_zip(archive, tmp_path / "dest")
    assert (tmp_path / "dest" / "keep.txt").read_text() == "mine"


def test_good_zip_of_a_model_folder_extracts(tmp_path: Path) -> None:
    folder = tmp_path / "src" / "tiny-model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"hidden": 3}')
    safetensors.torch.save_file(_tiny_net().state_dict(), folder / "sub" / "model.safetensors")
    archive = tmp_path / "tiny-model.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(folder, "tiny-model/")
        for path in sorted(folder.rglob("*")):
            z.write(path, str(path.relative_to(folder.parent)))
        z.writestr("__MACOSX/tiny-model/._config.json", b"resource fork")

    root = safe_extract_zip(archive, tmp_path / "dest")

    assert root == tmp_path / "dest" / "tiny-model"
    assert _only_entries(root) == {"config.json", "sub", "sub/model.safetensors"}
    for path in folder.rglob("*"):
        if path.is_file():
            assert (root / path.relative_to(folder)).read_bytes() == path.read_bytes()
    _assert_same(load_tensors(root / "sub" / "model.safetensors"), dict(_tiny_net().state_dict()))


def test_flat_zip_returns_the_destination(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "flat.zip", [("config.json", b"{}"), ("model.safetensors", _GOOD)])
    root = safe_extract_zip(archive, tmp_path / "dest")
    assert root == tmp_path / "dest"
    assert _only_entries(root) == {"config.json", "model.safetensors"}
