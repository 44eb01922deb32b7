"""CTranslate2's ``model.bin``, read (and written) by our own code: a flat file of named arrays.

CTranslate2 (OpenNMT) stores a converted model as one little-endian binary; its Python
converter (``ctranslate2/specs/model_spec.py``, ``_serialize``) writes and its C++ loader
(``src/models/model.cc``) reads this layout, binary version 6 today::

    uint32  binary version
    string  spec name ("WhisperSpec")            string = uint16 length (with the NUL),
    uint32  spec revision                                 the UTF-8 bytes, a NUL byte
    uint32  number of variables
    per variable:
        string  name ("encoder/layer_0/self_attention/linear_0/weight")
        uint8   rank, then rank x uint32 dimensions
        uint8   dtype id (order of CTranslate2's DataType enum, `DTYPES`)
        uint32  byte count, then the raw bytes (C order, no padding)
    uint32  number of aliases
    per alias: string alias, string name of the variable it shares (tied weights)

Scalars (rank 0) carry the spec's flags and small integers (``decoder/num_heads``,
``decoder/pre_norm``). Versions before 4 stored an item size instead of a dtype id, which does
not tell int16 from float16; they are refused rather than guessed.

The reader treats the file as untrusted data: sizes are checked against the file before any
array is built, every byte count must equal its shape times its item size, and the file must end
exactly after the aliases. Nothing is executed and nothing is unpickled.

Imports: ``explorer.errors`` only.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch

from explorer.errors import ModelLoadError

DTYPES: tuple[torch.dtype, ...] = (
    torch.float32,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.float16,
    torch.bfloat16,
)
"""Index = CTranslate2's dtype id (its ``DataType`` enum order)."""

BINARY_VERSION = 6
MIN_BINARY_VERSION = 4  # the first with dtype ids
MAX_BYTES = 2 * 1024**3
MAX_VARIABLES = 100_000
MAX_RANK = 8


@dataclass(frozen=True)
class Ct2Model:
    """The contents of a ``model.bin``: its spec, and its variables by name (aliases resolved
    through `get`)."""

    spec: str
    revision: int
    variables: dict[str, torch.Tensor]
    aliases: dict[str, str] = field(default_factory=dict)
    binary_version: int = BINARY_VERSION

    def get(self, name: str) -> torch.Tensor | None:
        """The variable ``name``, following an alias; None when neither exists."""
        return self.variables.get(self.aliases.get(name, name))

    def scalar(self, name: str, default: int | float | None = None) -> int | float | None:
        """The value of a rank-0 variable (flags, head counts), or ``default``."""
        value = self.get(name)
        return default if value is None else value.item()


class _Reader:
    """Bounds-checked cursor over the file's bytes; errors name the file and the offset."""

    def __init__(self, data: memoryview, path: Path):
        self.data, self.path, self.pos = data, path, 0

    def fail(self, what: str) -> ModelLoadError:
        return ModelLoadError(
            f"{self.path}: not a CTranslate2 model.bin ({what} at byte {self.pos})"
        )

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"{what} runs past the end of the file")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        length = self.unpack("H", what)
        raw = bytes(self.take(length, what))
        if length == 0 or raw[-1] != 0:
            raise self.fail(f"{what} is not NUL-terminated")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not UTF-8") from None


def read_ct2(path: str | os.PathLike[str], max_bytes: int = MAX_BYTES) -> Ct2Model:
    """Read a CTranslate2 ``model.bin`` into CPU tensors of their stored dtype."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"no CTranslate2 model at {path}")
    size = path.stat().st_size
    if size > max_bytes:
        raise ModelLoadError(f"{path} is {size:,} bytes, over the limit of {max_bytes:,}")
    buffer = bytearray(path.read_bytes())  # writable, so the tensors below may share it
    reader = _Reader(memoryview(buffer), path)
    version = reader.unpack("I", "binary version")
    if not MIN_BINARY_VERSION <= version <= BINARY_VERSION:
        raise ModelLoadError(
            f"{path}: CTranslate2 binary version {version} is not supported (versions "
            f"{MIN_BINARY_VERSION} to {BINARY_VERSION}); convert it with a recent ctranslate2"
        )
    spec = reader.string("spec name")
    revision = reader.unpack("I", "spec revision")
    count = reader.unpack("I", "variable count")
    if count > MAX_VARIABLES:
        raise reader.fail(f"{count:,} variables")
    variables: dict[str, torch.Tensor] = {}
    for _ in range(count):
        name = reader.string("variable name")
        rank = reader.unpack("B", f"rank of {name}")
        if rank > MAX_RANK:
            raise reader.fail(f"variable {name} has rank {rank}")
        shape = tuple(reader.unpack("I", f"shape of {name}") for _ in range(rank))
        type_id = reader.unpack("B", f"dtype of {name}")
        if type_id >= len(DTYPES):
            raise reader.fail(f"variable {name} has unknown dtype id {type_id}")
        dtype = DTYPES[type_id]
        n_bytes = reader.unpack("I", f"byte count of {name}")
        expected = math.prod(shape) * dtype.itemsize
        if n_bytes != expected:
            raise reader.fail(
                f"variable {name} of shape {list(shape)} and dtype {dtype} has {n_bytes} bytes, "
                f"expected {expected}"
            )
        raw = reader.take(n_bytes, f"data of {name}")
        if name in variables:
            raise reader.fail(f"variable {name} appears twice")
        if n_bytes == 0:
            variables[name] = torch.empty(shape, dtype=dtype)
        else:
            variables[name] = torch.frombuffer(raw, dtype=dtype).reshape(shape)
    aliases: dict[str, str] = {}
    for _ in range(reader.unpack("I", "alias count")):
        alias = reader.string("alias name")
        target = reader.string(f"target of alias {alias}")
        if target not in variables:
            raise reader.fail(f"alias {alias} names the unknown variable {target}")
        aliases[alias] = target
    if reader.pos != len(buffer):
        raise reader.fail(f"{len(buffer) - reader.pos} bytes after the aliases")
    return Ct2Model(spec, revision, variables, aliases, version)


def write_ct2(path: str | os.PathLike[str], model: Ct2Model) -> None:
    """Write ``model`` in binary version 6 (the layout `read_ct2` reads); used by the tests to
    build small model files, and by nothing that ships weights."""

    def string(value: str) -> bytes:
        raw = value.encode("utf-8") + b"\0"
        return struct.pack("<H", len(raw)) + raw

    parts = [
        struct.pack("<I", BINARY_VERSION),
        string(model.spec),
        struct.pack("<I", model.revision),
        struct.pack("<I", len(model.variables)),
    ]
    for name, value in model.variables.items():
        if value.dtype not in DTYPES:
            raise ModelLoadError(f"variable {name}: dtype {value.dtype} has no CTranslate2 id")
        raw = value.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        parts += [
            string(name),
            struct.pack("<B", value.dim()),
            struct.pack(f"<{value.dim()}I", *value.shape),
            struct.pack("<B", DTYPES.index(value.dtype)),
            struct.pack("<I", len(raw)),
            raw,
        ]
    parts.append(struct.pack("<I", len(model.aliases)))
    for alias, target in model.aliases.items():
        parts += [string(alias), string(target)]
    Path(path).write_bytes(b"".join(parts))
