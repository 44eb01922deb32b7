"""Users' uploads turned into a model source: files under the run's folder, checked twice.

An upload arrives as bytes with a name chosen by the user's browser, so both are untrusted. The
size is checked *before* anything is written; the name is reduced to its last component in a
small alphabet (never a path) behind a hash of the content, so an upload can neither escape
``<run dir>/uploads/`` nor overwrite another one. What was written is then validated by loading
it the way a sweep will: the safe loaders of `explorer.models.safe_load` (safetensors parsed
without pickle, zips checked for path traversal, links and bombs before extraction) and then
`open_context`, plus one float forward pass over the evaluation data, which catches data whose
shape the model cannot take. Any failure raises an `ExplorerError` whose message a user can act
on, and removes what this call wrote, so a failed upload changes nothing.

Three kinds, as the Model page offers them:
- ``weights``: a state dict (safetensors preferred) for a built-in architecture;
- ``hf-zip``: a zipped Hugging Face directory (``config.json`` and ``model.safetensors``);
- ``data``: evaluation and calibration data for the current model (safetensors or npz with
  ``inputs`` and optional ``labels``, CSV with a ``label`` column, or UTF-8 text).

Imports: `explorer.models`, `explorer.sweep.context`.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from explorer.errors import ExplorerError, ModelLoadError
from explorer.models.hf import is_hf_directory
from explorer.models.registry import builtin_models
from explorer.models.safe_load import ACCEPTED_SUFFIXES, safe_extract_zip
from explorer.sweep.context import ModelContext, ModelSource, open_context

MAX_UPLOAD_BYTES = 200 * 1024**2
"""Largest upload accepted (the same 200 MB as ``server.maxUploadSize``)."""
MAX_EXTRACTED_BYTES = 1024**3
"""Largest total a zipped model directory may unpack to."""
UPLOADS = "uploads"
KINDS = ("weights", "hf-zip", "data")
SUFFIXES: dict[str, tuple[str, ...]] = {
    "weights": tuple(s for s in ACCEPTED_SUFFIXES if s != ".npz"),
    "hf-zip": (".zip",),
    "data": (".safetensors", ".npz", ".csv", ".txt", ".jsonl", ".zip"),
}
LOCAL_MODELS_ENV = "EXPLORER_LOCAL_MODELS"
"""Set to 1 by a server's operator to let the Model page open directories on the server by
path. Off by default: the server's files are the operator's, not every visitor's."""
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_NAME_CHARS = 60
_HASH_CHARS = 12

OpenContext = Callable[[ModelSource], ModelContext]


class UploadError(ExplorerError, ValueError):
    """An upload cannot be accepted (too large, wrong kind of file, not a model or data)."""


def _human(n: int) -> str:
    return f"{n / 1024**2:.1f} MB" if n >= 1024**2 else f"{n:,} bytes"


def check_size(size: int, name: str, max_bytes: int = MAX_UPLOAD_BYTES) -> None:
    """Refuse an empty upload or one over ``max_bytes``, before anything is written."""
    if size <= 0:
        raise UploadError(f"{name} is empty")
    if size > max_bytes:
        raise UploadError(
            f"{name} is {_human(size)}, over the upload limit of {_human(max_bytes)}; "
            "use the command line (`explorer sweep --model PATH`) for larger models"
        )


def safe_name(name: str, kind: str) -> str:
    """The last component of ``name`` in ``[A-Za-z0-9._-]``, with a suffix allowed for ``kind``."""
    if kind not in SUFFIXES:
        raise UploadError(f"unknown upload kind {kind!r}; expected one of {list(KINDS)}")
    base = re.split(r"[\\/]", name)[-1]
    suffix = Path(base).suffix.lower()
    if suffix not in SUFFIXES[kind]:
        raise UploadError(
            f"{base or '(no name)'}: expected a {' or '.join(SUFFIXES[kind])} file, "
            f"got {suffix or 'no suffix'}"
        )
    stem = _UNSAFE.sub("_", Path(base).stem).strip("._") or "upload"
    return stem[:_NAME_CHARS] + suffix


def save_upload(
    data: bytes,
    name: str,
    run_dir: str | os.PathLike[str],
    kind: str,
    *,
    max_bytes: int = MAX_UPLOAD_BYTES,
) -> tuple[Path, bool]:
    """Write ``data`` to ``<run_dir>/uploads/<content hash>-<safe name>``; return the path and
    whether this call created it (the same bytes uploaded again reuse the file)."""
    check_size(len(data), name, max_bytes)
    file_name = safe_name(name, kind)
    digest = hashlib.sha256(data).hexdigest()[:_HASH_CHARS]
    folder = Path(run_dir) / UPLOADS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{digest}-{file_name}"
    if path.is_file() and path.stat().st_size == len(data):
        return path, False
    tmp = folder / f".{digest}-{secrets.token_hex(4)}.part"
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path, True


# --- sources of each kind -------------------------------------------------------------------


def weights_source(
    data: bytes,
    name: str,
    run_dir: str | os.PathLike[str],
    architecture: str,
    *,
    max_bytes: int = MAX_UPLOAD_BYTES,
) -> tuple[ModelSource, list[Path]]:
    """A built-in architecture with the uploaded weights; also the paths this call created."""
    if architecture not in builtin_models():
        names = ", ".join(sorted(builtin_models()))
        raise UploadError(f"unknown architecture {architecture!r}; built-in models: {names}")
    path, created = save_upload(data, name, run_dir, "weights", max_bytes=max_bytes)
    return ModelSource(model=architecture, weights=str(path)), [path] if created else []


def hf_zip_source(
    data: bytes,
    name: str,
    run_dir: str | os.PathLike[str],
    *,
    max_bytes: int = MAX_UPLOAD_BYTES,
    max_extracted: int = MAX_EXTRACTED_BYTES,
) -> tuple[ModelSource, list[Path]]:
    """A zipped Hugging Face directory, extracted safely next to the other uploads."""
    zip_path, zip_created = save_upload(data, name, run_dir, "hf-zip", max_bytes=max_bytes)
    dest = zip_path.with_name(zip_path.name.removesuffix(".zip") + ".model")
    created: list[Path] = []
    try:
        if dest.is_dir() and any(dest.iterdir()):
            root = _model_root(dest)
        else:
            root = safe_extract_zip(zip_path, dest, max_bytes=max_extracted)
            created.append(dest)
            if not is_hf_directory(root):
                raise UploadError(
                    f"{name}: no config.json at the top of the archive; zip the folder that "
                    "`save_pretrained` wrote (config.json and model.safetensors)"
                )
    except BaseException:
        _remove(created)
        raise
    finally:
        if zip_created:
            zip_path.unlink(missing_ok=True)  # the extracted folder is what a sweep reads
    return ModelSource(model=str(root)), created


def _model_root(dest: Path) -> Path:
    entries = [p for p in dest.iterdir() if p.name != "__MACOSX"]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return dest


def data_source(
    data: bytes,
    name: str,
    run_dir: str | os.PathLike[str],
    base: ModelSource,
    *,
    max_bytes: int = MAX_UPLOAD_BYTES,
) -> tuple[ModelSource, list[Path]]:
    """``base`` (the current model) evaluated and calibrated on the uploaded data; a ``.zip``
    is an image folder (one subfolder per class), extracted safely."""
    path, created = save_upload(data, name, run_dir, "data", max_bytes=max_bytes)
    if path.suffix.lower() != ".zip":
        return replace(base, data=str(path)), [path] if created else []
    dest = path.with_name(path.name.removesuffix(".zip") + ".data")
    made: list[Path] = []
    try:
        if not (dest.is_dir() and any(dest.iterdir())):
            safe_extract_zip(path, dest, max_bytes=MAX_EXTRACTED_BYTES)
            made.append(dest)
        root = _model_root(dest)  # a zip of one folder: that folder holds the classes
    except BaseException:
        _remove(made)
        raise
    finally:
        if created:
            path.unlink(missing_ok=True)  # the extracted folder is what a sweep reads
    return replace(base, data=str(root)), made


def local_models_enabled() -> bool:
    """Whether the operator allowed local paths (``EXPLORER_LOCAL_MODELS=1``)."""
    return os.environ.get(LOCAL_MODELS_ENV, "").strip().lower() in ("1", "true", "yes")


def local_source(model: str, data: str = "") -> ModelSource:
    """A Hugging Face directory (and optional data file or folder) on the server, by path;
    refused unless the operator enabled `LOCAL_MODELS_ENV`."""
    if not local_models_enabled():
        raise UploadError(
            f"local paths are off on this server (its operator can set {LOCAL_MODELS_ENV}=1)"
        )
    root = Path(model.strip()).expanduser()
    if not root.is_absolute() or not root.is_dir():
        raise UploadError(f"{model.strip() or '(empty)'}: give the absolute path of a directory")
    if not is_hf_directory(root):
        raise UploadError(f"{root}: no config.json (give the folder `save_pretrained` wrote)")
    data_path = Path(data.strip()).expanduser() if data.strip() else None
    if data_path is not None and not (data_path.is_absolute() and data_path.exists()):
        raise UploadError(f"{data.strip()}: give the absolute path of a data file or folder")
    return ModelSource(model=str(root), data=None if data_path is None else str(data_path))


# --- validation -------------------------------------------------------------------------------


def check_context(ctx: ModelContext) -> None:
    """Run the float model once over the evaluation data (the float reference every row is
    compared with); a model that cannot take the data raises `ModelLoadError`."""
    try:
        ctx.reference  # noqa: B018 - computed and cached on first access
    except ExplorerError:
        raise
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"{ctx.name} cannot run on its evaluation data: {first}. Check that the data's "
            "inputs have the shape and type the model expects"
        ) from exc


def load_upload(
    kind: str,
    data: bytes,
    name: str,
    run_dir: str | os.PathLike[str],
    *,
    base: ModelSource | None = None,
    architecture: str | None = None,
    open_fn: OpenContext = open_context,
    max_bytes: int = MAX_UPLOAD_BYTES,
) -> tuple[ModelSource, ModelContext]:
    """Save an upload of ``kind``, open it as a model source and check it runs; on any failure
    remove what was written and raise an `ExplorerError` (or `OSError` from the disk).

    ``weights`` needs ``architecture``; ``data`` needs ``base`` (the model it is for).
    ``open_fn`` opens the context (the app passes its cached opener)."""
    if kind == "weights":
        if architecture is None:
            raise UploadError("choose the built-in architecture these weights are for")
        source, created = weights_source(data, name, run_dir, architecture, max_bytes=max_bytes)
    elif kind == "hf-zip":
        source, created = hf_zip_source(data, name, run_dir, max_bytes=max_bytes)
    elif kind == "data":
        if base is None:
            raise UploadError("choose a model before uploading data for it")
        source, created = data_source(data, name, run_dir, base, max_bytes=max_bytes)
    else:
        raise UploadError(f"unknown upload kind {kind!r}; expected one of {list(KINDS)}")
    try:
        ctx = open_fn(source)
        check_context(ctx)
    except BaseException:
        _remove(created)
        raise
    return source, ctx


def error_message(exc: BaseException, run_dir: str | os.PathLike[str]) -> str:
    """``exc``'s message with the server's upload paths shortened to the uploaded file names
    (``<run dir>/uploads/<hash>-cut.safetensors`` → ``cut.safetensors``)."""
    folder = re.escape(str(Path(run_dir) / UPLOADS))
    return re.sub(folder + rf"/(?:[0-9a-f]{{{_HASH_CHARS}}}-)?", "", str(exc))


def _remove(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
