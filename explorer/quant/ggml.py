"""ggml's quantization formats (llama.cpp's ``Q4_0``, ``Q4_K``, ``IQ4_NL``, ...), quantized by ggml
itself and dequantized from what ggml wrote, so an accuracy computed on these weights is the
accuracy of the weights llama.cpp runs.

Every ggml format cuts a row into blocks of 32 (legacy and IQ4_NL) or 256 weights (k-quants, "super
blocks" of 8 or 16 sub-blocks) and stores each block as a fixed number of bytes: the codes plus
the block's scale(s). Bits per weight follow from that layout alone (`GgmlFormat.bits`), scales
included: Q4_0 stores 32 four-bit codes and one fp16 scale, 18 bytes, 4.5 bits per weight; Q4_K
stores 256 codes, 8 six-bit sub-block scales and mins and two fp16 super-scales, 144 bytes, also
4.5 bits; Q6_K stores 210 bytes per 256 weights, 6.5625 bits. A row must be a whole number of
blocks: a k-quant needs rows (``in_features``) divisible by 256, and llama.cpp's quantizer then
falls back to a legacy type of about the same size (`FALLBACK`; ``llama-quant.cpp``).

Quantization calls ``ggml_quantize_chunk`` of the ggml library that ``llama-cpp-python`` ships
(through ctypes: one call per tensor, the function ``llama-quantize`` itself calls per tensor,
without an importance matrix), so the bytes are ggml's own. Dequantization reads those bytes
with the ``gguf`` package's numpy decoders (`dequantize`), which the tests check bit for bit
against ggml's own ``to_float`` (`ggml_dequantize`).

Imports: numpy, torch; ``gguf`` and ``llama_cpp`` (the ``llamacpp`` extra) when first used.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from explorer.errors import ExplorerError, QuantizationError

EXTRA_HINT = "pip install -e '.[llamacpp]'"


class GgmlError(ExplorerError, RuntimeError):
    """ggml's library or the gguf package is missing, or ggml cannot quantize a tensor."""


@dataclass(frozen=True)
class GgmlFormat:
    """One ggml type: its name as llama.cpp's tools spell it, its ``ggml_type`` number, the
    weights per block and the bytes per block, and what a block holds."""

    name: str
    ggml_type: int
    block: int
    block_bytes: int
    layout: str

    @property
    def bits(self) -> float:
        """Bits per weight as stored, block scales included."""
        return self.block_bytes * 8 / self.block

    @property
    def is_float(self) -> bool:
        return self.block == 1

    def row_bytes(self, n_per_row: int) -> int:
        return n_per_row // self.block * self.block_bytes


QK = 256  # weights per k-quant super-block
FORMATS: dict[str, GgmlFormat] = {
    f.name: f
    for f in (
        GgmlFormat("f32", 0, 1, 4, "float32"),
        GgmlFormat("f16", 1, 1, 2, "float16"),
        GgmlFormat("bf16", 30, 1, 2, "bfloat16 (float32 with the low 16 bits rounded off)"),
        GgmlFormat("q8_0", 8, 32, 2 + 32, "fp16 scale, 32 int8 codes"),
        GgmlFormat("q6_k", 14, QK, QK // 2 + QK // 4 + QK // 16 + 2, "16 int8 sub-scales, fp16"),
        GgmlFormat("q5_k", 13, QK, 2 + 2 + 12 + QK // 8 + QK // 2, "fp16 d, dmin, 8 x 6-bit"),
        GgmlFormat("q5_0", 6, 32, 2 + 4 + 16, "fp16 scale, 32 five-bit codes, offset 16"),
        GgmlFormat("q5_1", 7, 32, 2 + 2 + 4 + 16, "fp16 scale and min, 32 five-bit codes"),
        GgmlFormat("q4_k", 12, QK, 2 + 2 + 12 + QK // 2, "fp16 d, dmin, 8 x 6-bit scale/min"),
        GgmlFormat("q4_0", 2, 32, 2 + 16, "fp16 scale, 32 four-bit codes, offset 8"),
        GgmlFormat("q4_1", 3, 32, 2 + 2 + 16, "fp16 scale and min, 32 four-bit codes"),
        GgmlFormat("iq4_nl", 20, 32, 2 + 16, "fp16 scale, 32 four-bit indices into a table"),
        GgmlFormat("q3_k", 11, QK, 2 + 12 + QK // 8 + QK // 4, "fp16 d, 16 x 6-bit scales"),
        GgmlFormat("q2_k", 10, QK, 2 + 2 + QK // 16 + QK // 4, "fp16 d, dmin, 16 x 4-bit"),
        GgmlFormat("tq2_0", 35, QK, 2 + QK // 4, "fp16 scale, ternary codes in 2 bits"),
    )
}
"""The formats the explorer offers, widest first (``f32`` only as the float reference)."""

FALLBACK = {
    "q2_k": "q4_0",
    "q3_k": "q4_0",
    "tq2_0": "q4_0",
    "q4_k": "q5_0",
    "q5_k": "q5_1",
    "q6_k": "q8_0",
}
"""What llama.cpp's quantizer writes instead when a row is not a multiple of 256 (it warns and
falls back; ``tensor_type_fallback`` in ``llama-quant.cpp``; a row that fits no block at all is
written as F16)."""


def format_of(name: str) -> GgmlFormat:
    """The format called ``name`` (case-insensitive: ``Q4_K`` or ``q4_k``)."""
    fmt = FORMATS.get(name.strip().lower())
    if fmt is None:
        raise QuantizationError(
            f"unknown ggml format {name!r}; choose from {', '.join(f for f in FORMATS)}"
        )
    return fmt


def why_not(fmt: GgmlFormat, shape: tuple[int, ...]) -> str | None:
    """``None`` when a weight of ``shape`` (rows, row length) quantizes to ``fmt``, else why."""
    n_per_row = shape[-1]
    if n_per_row % fmt.block:
        return (
            f"{fmt.name} packs rows in blocks of {fmt.block}; a row of {n_per_row} is not a "
            "whole number of blocks"
        )
    return None


def resolve(fmt: GgmlFormat, shape: tuple[int, ...]) -> GgmlFormat:
    """The format llama.cpp actually writes for a weight of ``shape`` asked to be ``fmt``."""
    if why_not(fmt, shape) is None:
        return fmt
    alt = FORMATS.get(FALLBACK.get(fmt.name, ""), FORMATS["f16"])
    return alt if why_not(alt, shape) is None else FORMATS["f16"]


# --- ggml's library ---------------------------------------------------------------------------


class _TypeTraits(ctypes.Structure):
    """``struct ggml_type_traits`` (ggml.h)."""

    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ctypes.c_void_p),
        ("from_float_ref", ctypes.c_void_p),
    ]


_TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


LIB_DIR_ENV = "EXPLORER_GGML_LIB_DIR"
"""Names a folder of ggml's own libraries to use instead of llama-cpp-python's: another build of
the same ggml version (e.g. compiled for AVX2 only, for ``explorer bench --isa avx2``)."""
LIBRARIES = ("libggml-base", "libggml-cpu", "libggml")


def library_dir() -> Path:
    """Where ggml's libraries are: the folder `LIB_DIR_ENV` names, checked once per process to
    hold them at llama-cpp-python's ggml version (the structs read here are that version's),
    else the folder in which ``llama-cpp-python`` keeps its ggml and llama libraries."""
    folder = os.environ.get(LIB_DIR_ENV)
    if folder:
        return _checked_dir(folder)
    try:
        import llama_cpp
    except ImportError:
        raise GgmlError(f"ggml's quantizer needs llama-cpp-python: {EXTRA_HINT}") from None
    return Path(llama_cpp.__file__).parent / "lib"


@functools.cache
def _checked_dir(folder: str) -> Path:
    path = Path(folder)
    missing = [n for n in LIBRARIES if not any(path.glob(f"{n}.*"))]
    if missing:
        raise GgmlError(
            f"{LIB_DIR_ENV}={folder} holds no {', '.join(missing)}: point it at the folder of a "
            "ggml build's shared libraries (see the README), or unset it"
        )
    if "llama_cpp" in sys.modules:  # its libggml-base came first and would serve ours too
        raise GgmlError(
            f"{LIB_DIR_ENV} is set but llama_cpp already loaded its own ggml; set it before "
            "anything imports llama_cpp, or unset it"
        )
    lib = ctypes.CDLL(str(next(path.glob("libggml-base.*"))))
    lib.ggml_version.restype = ctypes.c_char_p
    have, want = lib.ggml_version().decode(), _packaged_version()
    if want is not None and have != want:
        raise GgmlError(
            f"{LIB_DIR_ENV}={folder} holds ggml {have}, llama-cpp-python ships {want}: build "
            f"ggml {want} (llama-cpp-python's sdist) or unset it"
        )
    return path


def _packaged_version() -> str | None:
    """The ggml version llama-cpp-python ships, from its library's file name (``llama_cpp`` is
    found, not imported: importing it loads its own ggml)."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return None
    names = (Path(spec.origin).parent / "lib").glob("libggml-base.so.*.*.*")
    return next((n.name.removeprefix("libggml-base.so.") for n in names), None)


@functools.cache
def ggml_base() -> ctypes.CDLL:
    """``libggml-base``: quantization, type traits (shared with the llama library loaded by
    ``llama_cpp``, so both see the same ggml)."""
    path = next(library_dir().glob("libggml-base.*"), None)
    if path is None:
        raise GgmlError(f"libggml-base is missing from {library_dir()}; reinstall: {EXTRA_HINT}")
    lib = ctypes.CDLL(str(path))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
    ]
    lib.ggml_get_type_traits.restype = ctypes.POINTER(_TypeTraits)
    lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    return lib


def _as_rows(weight: torch.Tensor) -> np.ndarray:
    w = weight.detach().to(torch.float32).reshape(weight.shape[0], -1)
    if not torch.isfinite(w).all():
        raise QuantizationError("the weight has non-finite values; fix it before quantizing")
    return np.ascontiguousarray(w.cpu().numpy())


def quantize(weight: torch.Tensor, fmt: GgmlFormat) -> np.ndarray:
    """ggml's bytes of ``weight`` (rows, row length) in ``fmt``: uint8 (rows, row bytes)."""
    if (why := why_not(fmt, tuple(weight.shape))) is not None:
        raise QuantizationError(why)  # ggml would abort the process on this assertion
    rows = _as_rows(weight)
    n, k = rows.shape
    out = np.empty((n, fmt.row_bytes(k)), dtype=np.uint8)
    lib = ggml_base()
    written = lib.ggml_quantize_chunk(
        fmt.ggml_type, rows.ctypes.data, out.ctypes.data, 0, n, k, None
    )
    if written != out.nbytes:
        raise GgmlError(f"ggml wrote {written} bytes for {fmt.name}, expected {out.nbytes}")
    return out


def ggml_dequantize(data: np.ndarray, fmt: GgmlFormat, shape: tuple[int, int]) -> torch.Tensor:
    """ggml's own ``to_float`` of ``data``: the reference that `dequantize` must match."""
    traits = ggml_base().ggml_get_type_traits(fmt.ggml_type).contents
    if not traits.to_float:
        raise GgmlError(f"ggml has no to_float for {fmt.name}")
    src = np.ascontiguousarray(data, dtype=np.uint8)
    out = np.empty(shape, dtype=np.float32)
    _TO_FLOAT(traits.to_float)(src.ctypes.data, out.ctypes.data, out.size)
    return torch.from_numpy(out)


def dequantize(data: np.ndarray, fmt: GgmlFormat, shape: tuple[int, int]) -> torch.Tensor:
    """The float32 weight (rows, row length) that ggml's bytes ``data`` stand for, decoded by
    the ``gguf`` package (bit for bit ggml's ``to_float``; tested)."""
    quants = _gguf_quants()
    raw = np.ascontiguousarray(data, dtype=np.uint8).reshape(shape[0], -1)
    if fmt.name == "f32":
        values = raw.view(np.float32)
    elif fmt.name == "f16":
        values = raw.view(np.float16)
    else:
        values = quants.dequantize(raw, _gguf_type(fmt))
    return torch.from_numpy(np.asarray(values, dtype=np.float32).reshape(shape).copy())


def round_trip(weight: torch.Tensor, fmt: GgmlFormat) -> torch.Tensor:
    """``weight`` as llama.cpp runs it in ``fmt`` (quantized by ggml, dequantized), its dtype
    kept."""
    shape = (weight.shape[0], int(np.prod(weight.shape[1:])))
    deq = dequantize(quantize(weight, fmt), fmt, shape)
    return deq.reshape(weight.shape).to(weight.dtype)


def _gguf_quants() -> Any:
    try:
        from gguf import quants
    except ImportError:
        raise GgmlError(f"decoding ggml formats needs the gguf package: {EXTRA_HINT}") from None
    return quants


def _gguf_type(fmt: GgmlFormat) -> Any:
    from gguf import GGMLQuantizationType

    return GGMLQuantizationType(fmt.ggml_type)
