"""Load weights from files we did not write: every byte is data, never code.

Threat model. A user hands the explorer a weights file or a zipped Hugging Face model directory,
and the process that loads it also serves every other browser session. The file may be crafted.
It must not be able to run code, exhaust memory or disk, or write outside the directory we extract
into; the worst it may do is make loading fail with a message the user can act on.

Pickle is a program, not a data format: its GLOBAL opcodes import any callable by name and REDUCE
calls it, and ``pickle.dump`` writes exactly that for any object whose ``__reduce__`` returns
``(callable, args)``, so ``(os.system, ("...",))`` runs a shell command while the file is being
*loaded* ("The pickle module is not secure. [...] It is possible to construct malicious pickle data
which will execute arbitrary code during unpickling", https://docs.python.org/3/library/pickle.html,
and ``object.__reduce__`` there). TorchScript archives carry code that ``torch.jit.load`` compiles
and runs. Hence:

- **safetensors** is the preferred format: an 8-byte little-endian header length, a JSON header
  ``{name: {"dtype", "shape", "data_offsets"}}`` and raw bytes
  (https://github.com/huggingface/safetensors#format). We parse and check the header ourselves
  (length, JSON, dtypes, offsets) so a crafted header gets a message naming the problem, then let
  ``safetensors`` read the tensors.
- **PyTorch checkpoints** (``.pt``, ``.pth``, ``.bin``) go only through
  ``torch.load(weights_only=True)``, whose restricted unpickler accepts tensors, plain containers
  and an allow-list of torch globals. TorchScript archives are refused before torch sees them.
- **NumPy** ``.npz`` goes through ``numpy.load(allow_pickle=False)``; object arrays (which need
  pickle) are refused.
- Sizes are checked before parsing (file size, declared zip sizes, ``.npy`` headers); after
  loading, dtypes are checked against `ALLOWED_DTYPES` and floating tensors must be finite.
- Zip archives are checked for path traversal ("zip slip"), symbolic links, entry count, and
  declared and actual uncompressed size (zip bombs).

Every failure raises `ModelLoadError` naming the file, the tensors, the counts and the limits.

Imports only ``explorer.errors`` from the explorer.
"""

from __future__ import annotations

import copy
import json
import math
import os
import pickle
import pickletools
import re
import shutil
import stat
import struct
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, TypeAlias

import numpy as np
import safetensors
import safetensors.torch
import torch
from torch import nn

from explorer.errors import ModelLoadError

StrPath: TypeAlias = str | os.PathLike[str]

DEFAULT_MAX_BYTES = 2 * 1024**3
DEFAULT_MAX_FILES = 10_000
ALLOWED_DTYPES: frozenset[torch.dtype] = frozenset(
    {
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.float64,
        torch.int8,
        torch.uint8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.bool,
    }
)
ACCEPTED_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".npz")

_SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
SAFETENSORS_MAX_HEADER_BYTES = 16 * 1024**2
"""Largest safetensors JSON header read. Headers take about 100 bytes a tensor, so 16 MiB is
room for ~150k tensors, while parsing a 60 MB header took 2.25 GB and 45 s (issue 18); the
limit is checked from the 8-byte length prefix, before a byte of the header is read."""
_NUMPY_DTYPES: dict[np.dtype[Any], torch.dtype] = {
    np.dtype(np.float64): torch.float64,
    np.dtype(np.float32): torch.float32,
    np.dtype(np.float16): torch.float16,
    np.dtype(np.int64): torch.int64,
    np.dtype(np.int32): torch.int32,
    np.dtype(np.int16): torch.int16,
    np.dtype(np.int8): torch.int8,
    np.dtype(np.uint8): torch.uint8,
    np.dtype(np.bool_): torch.bool,
}
_LIST_LIMIT = 10
_NAME_LIMIT = 80
_CHUNK = 1 << 20
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STATE_DICT_ADVICE = "save `model.state_dict()` with safetensors instead"
_TORCHSCRIPT_REFUSAL = (
    "TorchScript archives run code and are not accepted; export the state_dict as safetensors"
)


def load_tensors(
    path: StrPath, *, max_bytes: int = DEFAULT_MAX_BYTES, check_finite: bool = True
) -> dict[str, torch.Tensor]:
    """Load a flat ``{name: tensor}`` mapping from an untrusted file, choosing the reader by suffix.

    Accepts ``.safetensors``, ``.pt``/``.pth``/``.bin`` (a ``torch.save`` state_dict, optionally
    under a ``"state_dict"`` key) and ``.npz``. Raises `ModelLoadError` if the file is larger than
    ``max_bytes``, malformed, holds anything but tensors, has a dtype outside `ALLOWED_DTYPES`, or
    (unless ``check_finite`` is False: data files word that check themselves) has NaN or Inf in
    a floating tensor.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in ACCEPTED_SUFFIXES:
        raise ModelLoadError(
            f"{path}: unsupported weights format {suffix or '(no suffix)'!r}; accepted: "
            f"{', '.join(ACCEPTED_SUFFIXES)} (safetensors preferred)"
        )
    size = _checked_size(path, max_bytes)
    if suffix == ".safetensors":
        tensors = _load_safetensors(path, size)
    elif suffix == ".npz":
        tensors = _load_npz(path, max_bytes)
    else:
        tensors = _load_torch(path, max_bytes)
    _check_tensors(path, tensors, check_finite=check_finite)
    return tensors


def safetensors_header(
    path: StrPath, *, max_bytes: int = DEFAULT_MAX_BYTES
) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """``{name: (dtype, shape)}`` of a safetensors file, from its checked header alone.

    The same checks as `load_tensors` that need no tensor data: file size against ``max_bytes``,
    header length against `SAFETENSORS_MAX_HEADER_BYTES`, JSON, dtypes and data offsets.
    """
    path = Path(path)
    header = _read_safetensors_header(path, _checked_size(path, max_bytes))
    return {
        name: (_SAFETENSORS_DTYPES[info["dtype"]], tuple(info["shape"]))
        for name, info in header.items()
        if name != "__metadata__"
    }


def validate_state_dict(
    expected: Mapping[str, torch.Size | tuple[int, ...]],
    got: Mapping[str, torch.Tensor],
    *,
    source: str | None = None,
) -> None:
    """Check that ``got`` has exactly the names and shapes of ``expected``.

    Raises `ModelLoadError` listing the missing names, the unexpected names and every shape
    mismatch (``name: expected (a, b), got (c, d)``); ``source`` (a file name) prefixes the message.
    """
    missing = [name for name in expected if name not in got]
    unexpected = [name for name in got if name not in expected]
    mismatched = [
        f"{_clip(name)}: expected {_shape(shape)}, got {_shape(got[name].shape)}"
        for name, shape in expected.items()
        if name in got and tuple(got[name].shape) != tuple(shape)
    ]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if missing:
        parts.append(f"Missing ({len(missing)}): {_listing(missing)}.")
    if unexpected:
        parts.append(f"Unexpected ({len(unexpected)}): {_listing(unexpected)}.")
    if mismatched:
        parts.append(f"Shape mismatches ({len(mismatched)}): {_listing(mismatched, sep='; ')}.")
    prefix = f"{source}: " if source else ""
    raise ModelLoadError(f"{prefix}weights do not match the model. " + " ".join(parts))


def load_into(model: nn.Module, path: StrPath, *, max_bytes: int = DEFAULT_MAX_BYTES) -> nn.Module:
    """Return a copy of ``model`` with the weights from ``path``; ``model`` itself is never changed.

    Names and shapes must match ``model.state_dict()`` exactly (tied weights saved once, as
    ``safetensors.torch.save_model`` does, fill every name they are tied to). Floating tensors are
    cast to the model's dtypes; a floating tensor where the model has an integer one, or the
    reverse, is an error.
    """
    tensors = load_tensors(path, max_bytes=max_bytes)
    reference = model.state_dict()
    tensors = fill_tied(reference, tensors)
    validate_state_dict({name: t.shape for name, t in reference.items()}, tensors, source=str(path))
    kind_mismatches = [
        f"{_clip(name)}: model has {_dtype_name(reference[name].dtype)}, file has "
        f"{_dtype_name(t.dtype)}"
        for name, t in tensors.items()
        if t.is_floating_point() != reference[name].is_floating_point()
    ]
    if kind_mismatches:
        raise ModelLoadError(
            f"{path}: {len(kind_mismatches)} tensor(s) are integer where the model is floating "
            f"point or the reverse: {_listing(kind_mismatches, sep='; ')}"
        )
    cast = {
        name: t.to(reference[name].dtype) if t.is_floating_point() else t
        for name, t in tensors.items()
    }
    loaded = copy.deepcopy(model)
    try:
        loaded.load_state_dict(cast, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"{path}: {_first_line(exc)}") from exc
    return loaded


def safe_extract_zip(
    zip_path: StrPath,
    dest_dir: StrPath,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
) -> Path:
    """Extract a zipped model directory into ``dest_dir`` (absent or empty) and return it.

    If every entry lies under one top-level folder, that folder is returned. Refuses, before
    writing anything, entries with absolute paths or ``..`` components, symbolic links and other
    special files, more than ``max_files`` entries and more than ``max_bytes`` declared
    uncompressed; while streaming, counts the bytes actually produced and aborts past
    ``max_bytes`` in case the headers lie. On any failure everything extracted is removed.
    ``__MACOSX/`` resource-fork entries are checked but not extracted.
    """
    zip_path, dest = Path(zip_path), Path(dest_dir)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ModelLoadError(f"{dest}: extraction destination must be absent or an empty directory")
    try:
        archive = zipfile.ZipFile(zip_path)
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{zip_path}: no such file") from exc
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelLoadError(f"{zip_path}: not a readable zip archive ({exc})") from exc
    with archive:
        plan = _plan_extraction(zip_path, archive.infolist(), max_bytes, max_files)
        created = not dest.exists()
        dest.mkdir(parents=True, exist_ok=True)
        try:
            _extract(zip_path, archive, plan, dest.resolve(), max_bytes)
        except BaseException:
            _discard(dest, created)
            raise
    tops = {rel.parts[0] for _, rel in plan}
    if len(tops) == 1 and (dest / next(iter(tops))).is_dir():
        return dest / next(iter(tops))
    return dest


def _checked_size(path: Path, max_bytes: int) -> int:
    try:
        info = path.stat()
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{path}: no such file") from exc
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read ({exc.strerror})") from exc
    if stat.S_ISDIR(info.st_mode):
        raise ModelLoadError(f"{path}: is a directory; expected a weights file")
    if not stat.S_ISREG(info.st_mode):
        raise ModelLoadError(f"{path}: not a regular file")
    if info.st_size == 0:
        raise ModelLoadError(f"{path}: empty file (0 bytes); the upload or download failed")
    if info.st_size > max_bytes:
        raise ModelLoadError(
            f"{path}: file is {_fmt_bytes(info.st_size)}, over the limit of "
            f"{_fmt_bytes(max_bytes)} for weight files"
        )
    return info.st_size


def _read_safetensors_header(path: Path, size: int) -> dict[str, Any]:
    """The checked JSON header of a safetensors file; no tensor data is read."""
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ModelLoadError(
                f"{path}: file is {size} bytes, too short for the 8-byte safetensors header "
                "length; it is truncated or not a safetensors file"
            )
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > size - 8:
            raise ModelLoadError(
                f"{path}: header claims {header_len} bytes but only {size - 8} bytes follow the "
                "length prefix; the file is truncated or not a safetensors file"
            )
        if header_len > SAFETENSORS_MAX_HEADER_BYTES:
            raise ModelLoadError(
                f"{path}: safetensors header of {_fmt_bytes(header_len)} is over the limit of "
                f"{_fmt_bytes(SAFETENSORS_MAX_HEADER_BYTES)}; a real checkpoint's header is a "
                "few hundred KiB"
            )
        raw = f.read(header_len)
    header = _parse_header(path, raw)
    _check_header(path, header, data_len=size - 8 - header_len)
    return header


def _load_safetensors(path: Path, size: int) -> dict[str, torch.Tensor]:
    _read_safetensors_header(path, size)
    try:
        return safetensors.torch.load_file(path, device="cpu")
    except (safetensors.SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: safetensors cannot read the file: {exc}") from exc


def _parse_header(path: Path, raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelLoadError(
            f"{path}: malformed safetensors header: not UTF-8 ({exc.reason} at header byte "
            f"{exc.start})"
        ) from exc
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except (ValueError, RecursionError) as exc:
        # RecursionError: deeply nested JSON; ValueError covers JSONDecodeError and huge integers.
        raise ModelLoadError(f"{path}: malformed JSON in safetensors header: {exc}") from exc
    if not isinstance(header, dict):
        raise ModelLoadError(
            f"{path}: malformed safetensors header: JSON {type(header).__name__}, expected an "
            "object mapping tensor names to dtype, shape and data_offsets"
        )
    return header


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {_clip(key)!r}")
        result[key] = value
    return result


def _check_header(path: Path, header: dict[str, Any], data_len: int) -> None:
    """Mirror the checks of the safetensors library, one message per kind of problem."""
    metadata = header.get("__metadata__")
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise ModelLoadError(f"{path}: __metadata__ must map strings to strings")
    entries = {name: info for name, info in header.items() if name != "__metadata__"}
    unsupported = []
    for name, info in entries.items():
        if not (
            isinstance(info, dict)
            and isinstance(info.get("dtype"), str)
            and _is_index_list(info.get("shape"))
            and _is_index_list(info.get("data_offsets"), length=2)
            and info["data_offsets"][0] <= info["data_offsets"][1]
        ):
            raise ModelLoadError(
                f"{path}: malformed safetensors header entry for tensor `{_clip(name)}`: "
                f"{_clip(json.dumps(info))}; expected dtype (string), shape (list of sizes) and "
                "data_offsets ([begin, end])"
            )
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            unsupported.append(f"{_clip(name)} ({_clip(info['dtype'])})")
    if unsupported:
        raise ModelLoadError(
            f"{path}: {len(unsupported)} tensor(s) have unsupported dtypes: "
            f"{_listing(unsupported)}; accepted: {', '.join(_SAFETENSORS_DTYPES)}"
        )
    problems = []
    spans = []
    for name, info in entries.items():
        begin, end = info["data_offsets"]
        needed = math.prod(info["shape"]) * _SAFETENSORS_DTYPES[info["dtype"]].itemsize
        if end - begin != needed:
            problems.append(
                f"`{_clip(name)}` spans {end - begin} bytes but {info['dtype']} "
                f"{_shape(info['shape'])} needs {needed}"
            )
        spans.append((begin, end, name))
    cursor = 0
    for begin, end, name in sorted(spans):
        if end > data_len:
            problems.append(f"`{_clip(name)}` ends at byte {end} of a {data_len}-byte data section")
        elif begin < cursor:
            problems.append(f"`{_clip(name)}` overlaps the tensor before it")
        elif begin > cursor:
            problems.append(f"bytes {cursor}..{begin} before `{_clip(name)}` belong to no tensor")
        cursor = max(cursor, end)
    if cursor < data_len:
        problems.append(f"{data_len - cursor} bytes after the last tensor belong to no tensor")
    if problems:
        raise ModelLoadError(
            f"{path}: safetensors file is truncated or malformed: {_listing(problems, sep='; ')}"
        )


def _is_index_list(value: object, length: int | None = None) -> bool:
    return (
        isinstance(value, list)
        and (length is None or len(value) == length)
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    )


def _load_torch(path: Path, max_bytes: int) -> dict[str, torch.Tensor]:
    if zipfile.is_zipfile(path):
        names = [info.filename for info in _zip_infos(path, max_bytes)]
        if any("/code/" in name or name.rsplit("/", 1)[-1] == "constants.pkl" for name in names):
            raise ModelLoadError(f"{path}: {_TORCHSCRIPT_REFUSAL}")
    try:
        with warnings.catch_warnings():
            # torch warns (two lines, on stderr) about pickle protocols 4 and 5 before refusing
            # them; our message below is the one a user needs.
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # untrusted bytes can make torch raise anything
        message = _ANSI.sub("", str(exc))
        if "TorchScript" in message:  # torch's reader found what Python's zipfile could not
            raise ModelLoadError(f"{path}: {_TORCHSCRIPT_REFUSAL}") from exc
        refused = _refused_globals(path, message)
        if refused or (isinstance(exc, pickle.UnpicklingError) and _starts_as_pickle(path)):
            detail = f" (refused: {_listing(refused)})" if refused else ""
            raise ModelLoadError(
                f"{path}: contains pickled Python objects, not just tensors (a whole module?)"
                f"{detail}; {_STATE_DICT_ADVICE}"
            ) from exc
        reason = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", message)
        raise ModelLoadError(
            f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): "
            f"{reason.group(1) if reason else _first_line(exc)}"
        ) from exc
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ModelLoadError(
            f"{path}: holds a {type(obj).__name__}, expected a dict of tensors (a state_dict); "
            f"{_STATE_DICT_ADVICE}"
        )
    not_tensors = [
        f"{_clip(str(name))} ({type(value).__name__})"
        for name, value in obj.items()
        if not (isinstance(name, str) and isinstance(value, torch.Tensor))
    ]
    if not_tensors:
        raise ModelLoadError(
            f"{path}: {len(not_tensors)} entries are not named tensors: {_listing(not_tensors)}; "
            f"{_STATE_DICT_ADVICE}"
        )
    return {name: value.detach() for name, value in obj.items()}


def _refused_globals(path: Path, message: str) -> list[str]:
    """Name the Python globals a rejected checkpoint would import, without unpickling it."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # it only improves the message, and legacy (non-zip) files are not supported
        names = []
    if not names:
        names = re.findall(r"GLOBAL (\S+) was not an allowed global", message)
    if not names and not zipfile.is_zipfile(path):
        names = [n for n in _pickle_globals(path) if not n.startswith(("torch.", "collections."))]
    return sorted(set(names))


def _pickle_globals(path: Path) -> list[str]:
    """The ``module.name`` globals a raw pickle imports, read from its opcodes, never executed.

    ``GLOBAL`` carries the name as its argument; ``STACK_GLOBAL`` (protocol 4+) takes the last
    two values pushed, which may be strings fetched back from the memo."""
    names: list[str] = []
    pushed: list[object] = []
    memo: dict[int, object] = {}
    try:
        with path.open("rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if op.name == "GLOBAL" and isinstance(arg, str):
                    names.append(arg.replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(pushed) >= 2:
                    module, name = pushed[-2], pushed[-1]
                    if isinstance(module, str) and isinstance(name, str):
                        names.append(f"{module}.{name}")
                elif op.name == "MEMOIZE" and pushed:
                    memo[len(memo)] = pushed[-1]
                elif op.name in ("PUT", "BINPUT", "LONG_BINPUT") and pushed:
                    memo[int(arg)] = pushed[-1]
                elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                    pushed.append(memo.get(int(arg)))
                elif "UNICODE" in op.name or "STRING" in op.name:
                    pushed.append(arg)
                else:
                    pushed.append(None)
    except Exception:  # a malformed pickle: the globals only improve the message
        pass
    return names


def _starts_as_pickle(path: Path) -> bool:
    """A raw pickle of protocol 2 or later opens with PROTO; random bytes almost never do.

    The weights-only unpickler reports garbage and a refused protocol-5 payload alike
    ("Unsupported operand"), so this tells a pickled object from a corrupt file.
    """
    if zipfile.is_zipfile(path):
        return False
    with path.open("rb") as f:
        head = f.read(2)
    return len(head) == 2 and head[0] == pickle.PROTO[0] and 2 <= head[1] <= pickle.HIGHEST_PROTOCOL


def _load_npz(path: Path, max_bytes: int) -> dict[str, torch.Tensor]:
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(f"{path}: not an .npz archive (a zip of .npy arrays)")
    infos = _zip_infos(path, max_bytes)
    dtypes, problems = _npz_headers(path, infos, max_bytes)
    if problems:
        raise ModelLoadError(f"{path}: {'; '.join(problems)}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise ModelLoadError(f"{path}: not a readable .npz archive: {exc}") from exc
    tensors = {}
    for name, array in arrays.items():
        if array.dtype != dtypes[name]:
            array = array.astype(dtypes[name])
        tensors[name] = torch.from_numpy(array).contiguous()  # Fortran-order arrays too
    return tensors


def _npz_headers(
    path: Path, infos: list[zipfile.ZipInfo], max_bytes: int
) -> tuple[dict[str, np.dtype[Any]], list[str]]:
    """Read each ``.npy`` header (a literal dict, parsed without pickle) before any array data."""
    dtypes: dict[str, np.dtype[Any]] = {}
    objects, unsupported, malformed = [], [], []
    total = 0
    try:
        with zipfile.ZipFile(path) as archive:
            for info in infos:
                name = info.filename.removesuffix(".npy")
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(member)
                    else:
                        shape, _, dtype = np.lib.format.read_array_header_2_0(member)
                    header_len = member.tell()
                if dtype.hasobject:
                    objects.append(name)
                    continue
                if dtype.newbyteorder("=") not in _NUMPY_DTYPES:
                    unsupported.append(f"{_clip(name)} ({dtype})")
                    continue
                nbytes = math.prod(shape) * dtype.itemsize
                total += nbytes
                if header_len + nbytes != info.file_size:
                    malformed.append(f"{_clip(name)} declares {nbytes} bytes of data")
                dtypes[name] = dtype.newbyteorder("=")
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        return dtypes, [f"not a readable .npz archive: {exc}"]
    problems = []
    if objects:
        problems.append(
            f"arrays {_listing(objects)} hold Python objects (dtype=object), which need pickle "
            "to load; save numeric arrays only"
        )
    if unsupported:
        allowed = ", ".join(str(d) for d in _NUMPY_DTYPES)
        problems.append(f"unsupported dtypes: {_listing(unsupported)}; accepted: {allowed}")
    if malformed:
        problems.append(f"truncated or malformed arrays: {_listing(malformed)}")
    if total > max_bytes:
        problems.append(
            f"arrays declare {_fmt_bytes(total)}, over the limit of {_fmt_bytes(max_bytes)}"
        )
    return dtypes, problems


def _zip_infos(path: Path, max_bytes: int) -> list[zipfile.ZipInfo]:
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelLoadError(f"{path}: not a readable zip archive ({exc})") from exc
    declared = sum(info.file_size for info in infos)
    if declared > max_bytes:
        raise ModelLoadError(
            f"{path}: zip entries declare {_fmt_bytes(declared)} uncompressed, over the limit of "
            f"{_fmt_bytes(max_bytes)} (a zip bomb?)"
        )
    return infos


def _check_tensors(
    path: Path, tensors: Mapping[str, torch.Tensor], *, check_finite: bool = True
) -> None:
    if not tensors:
        raise ModelLoadError(f"{path}: contains no tensors")
    bad_dtypes = [
        f"{_clip(name)} ({_dtype_name(t.dtype)})"
        for name, t in tensors.items()
        if t.dtype not in ALLOWED_DTYPES
    ]
    if bad_dtypes:
        allowed = ", ".join(sorted(_dtype_name(d) for d in ALLOWED_DTYPES))
        raise ModelLoadError(
            f"{path}: {len(bad_dtypes)} tensor(s) have dtypes outside the allow-list: "
            f"{_listing(bad_dtypes)}; allowed: {allowed}"
        )
    not_dense = [
        f"{_clip(name)} ({t.layout}, {t.device})"
        for name, t in tensors.items()
        if t.layout != torch.strided or t.device.type != "cpu"
    ]
    if not_dense:
        raise ModelLoadError(
            f"{path}: {len(not_dense)} tensor(s) are not dense CPU tensors: {_listing(not_dense)}"
        )
    if not check_finite:
        return
    non_finite = []
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            nan = int(torch.isnan(t).sum())
            inf = int(torch.isinf(t).sum())
            counts = [f"{n} {label}" for n, label in ((nan, "NaN"), (inf, "Inf")) if n]
            non_finite.append(f"{_clip(name)} ({', '.join(counts)})")
    if non_finite:
        raise ModelLoadError(
            f"{path}: {len(non_finite)} tensor(s) hold NaN or Inf values: {_listing(non_finite)}; "
            "the checkpoint is corrupt or training diverged"
        )


def fill_tied(
    reference: Mapping[str, torch.Tensor], tensors: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Give names tied to one tensor of ``reference`` the tensor saved for any of them.

    Checkpoints store a tied tensor once (``safetensors.torch.save_model``, our exports). Two
    names are tied when they are the same view of the same storage: storage pointer, offset,
    shape and stride all equal. Pointer and offset alone would tie a view to a differently
    shaped view that starts at the same byte (``w`` and ``w[:2]``, or ``w.t()``), and then load a
    tensor of the wrong shape into it. Empty and meta tensors have no storage to compare.
    """
    groups: dict[tuple[int, int, tuple[int, ...], tuple[int, ...]], list[str]] = {}
    for name, t in reference.items():
        if t.numel() and t.device.type != "meta":
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())
            groups.setdefault(key, []).append(name)
    filled = dict(tensors)
    for names in groups.values():
        present = [name for name in names if name in tensors]
        for name in names:
            if present and name not in filled:
                filled[name] = tensors[present[0]]
    return filled


def _plan_extraction(
    zip_path: Path, infos: list[zipfile.ZipInfo], max_bytes: int, max_files: int
) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    if len(infos) > max_files:
        raise ModelLoadError(
            f"{zip_path}: {len(infos)} entries, over the limit of {max_files} files"
        )
    declared = sum(info.file_size for info in infos)
    if declared > max_bytes:
        raise ModelLoadError(
            f"{zip_path}: entries declare {_fmt_bytes(declared)} uncompressed, over the limit of "
            f"{_fmt_bytes(max_bytes)} (a zip bomb?)"
        )
    escaping, links, special, encrypted, duplicates = [], [], [], [], []
    plan: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
    seen: set[PurePosixPath] = set()
    for info in infos:
        name = info.filename
        mode = info.external_attr >> 16
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or ".." in parts or re.match(r"[A-Za-z]:[/\\]", name):
            escaping.append(name)
        elif stat.S_ISLNK(mode):
            links.append(name)
        elif stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            special.append(name)
        elif info.flag_bits & 0x1:
            encrypted.append(name)
        elif parts and parts[0] != "__MACOSX":
            rel = PurePosixPath(*parts)
            if rel in seen and not info.is_dir():
                duplicates.append(name)
            seen.add(rel)
            plan.append((info, rel))
    refusals = [
        (escaping, "entries that would be written outside the destination (absolute or '..')"),
        (links, "symbolic links, which could point outside the destination"),
        (special, "special files (devices, FIFOs, sockets)"),
        (encrypted, "encrypted entries"),
        (duplicates, "duplicate entries"),
    ]
    found = [f"{what}: {_listing(names)}" for names, what in refusals if names]
    if found:
        raise ModelLoadError(f"{zip_path}: refusing to extract; {'; '.join(found)}")
    if not any(not info.is_dir() for info, _ in plan):
        raise ModelLoadError(f"{zip_path}: contains no files")
    return plan


def _extract(
    zip_path: Path,
    archive: zipfile.ZipFile,
    plan: list[tuple[zipfile.ZipInfo, PurePosixPath]],
    dest: Path,
    max_bytes: int,
) -> None:
    total = 0
    for info, rel in plan:
        target = dest / rel
        try:
            if not target.parent.resolve().is_relative_to(dest):
                raise ModelLoadError(f"{zip_path}: entry {info.filename} escapes {dest}")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, target.open("xb") as out:
                while chunk := src.read(_CHUNK):
                    total += len(chunk)
                    if total > max_bytes:
                        raise ModelLoadError(
                            f"{zip_path}: more than {_fmt_bytes(max_bytes)} came out while "
                            f"extracting {info.filename}, more than the headers declare "
                            "(a zip bomb?)"
                        )
                    out.write(chunk)
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError) as exc:
            raise ModelLoadError(f"{zip_path}: cannot extract {info.filename}: {exc}") from exc


def _discard(dest: Path, created: bool) -> None:
    if created:
        shutil.rmtree(dest, ignore_errors=True)
        return
    for child in dest.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _listing(items: Iterable[str], sep: str = ", ", limit: int = _LIST_LIMIT) -> str:
    items = [_clip(item, 3 * _NAME_LIMIT) for item in items]
    shown = sep.join(items[:limit])
    return f"{shown} and {len(items) - limit} more" if len(items) > limit else shown


def _clip(text: str, limit: int = _NAME_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _shape(shape: Iterable[int]) -> str:
    return str(tuple(int(d) for d in shape))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _first_line(exc: BaseException) -> str:
    lines = _ANSI.sub("", str(exc)).strip().splitlines()
    return _clip(lines[0] if lines else type(exc).__name__, 300)


def _fmt_bytes(n: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f} {unit} ({n} bytes)"
    return f"{n} bytes"
