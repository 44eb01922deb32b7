"""Building and caching the native kernel library (``csrc/qe_kernels.c``) safely.

The library is compiled once per source, flags and platform (the file name carries a hash of
the three) into ``<cache>/kernels/`` (see `explorer.paths`) and loaded from there by every later
process. A cached file is only as good as the last write to it: a build killed half-way, a full
disk or a copy interrupted can leave a *truncated* ``.so``, and ``dlopen`` maps such a file and
the first touch of a missing page kills the process with ``SIGBUS`` (exit 135), before Python
can report anything. So the cache is written and read like a database:

1. compile to a temporary name in the same folder, ``fsync`` it, hash it (sha256);
2. rename it into place (atomic), ``fsync`` the folder;
3. write ``<name>.sha256`` the same way (temporary name, ``fsync``, rename, ``fsync``).

Before loading, `verify` checks that the checksum file exists and matches the library and that
the file is a plausible ELF object (its header's section table lies inside the file). A library
that fails is rebuilt under an ``fcntl`` lock (concurrent processes wait for one build, then
re-verify) and replaced by rename, never overwritten in place, so a process that has the old
file mapped keeps a complete copy. Every failure (no compiler, compile error, unwritable cache
folder, damaged library without a compiler) comes back as a reason string, never a crash.

The build runs ``cc``/``gcc -O3 -fPIC -shared -std=c11 -Wall -Wextra -Werror`` (``-fopenmp``
first, without it if that fails): a warning is a build error, so a kernel change that warns never
ships. No ``-march=native``: the C code picks its instruction-set path at run time, so one cached
library is portable across CPUs of an architecture. The library name hashes the source, the
flags, the platform and the compiler's name and version (``gcc-12.2.0``): a compiler upgrade
builds a new library instead of reusing one an older compiler made.

Two libraries are built the same way: `SOURCE` (``qe_kernels.c``, the linear kernels,
`explorer.kernels.native`) and `CONV_SOURCE` (``qe_conv.c``, the convolution helpers,
`explorer.kernels.conv_ops`); ``qe_lowbit.c`` (the 2/3-bit kernels) is compiled into the first
(`LINKED_SOURCES`), and its text is part of that library's hash. `build_all` builds both
(``explorer build-kernels``, the Docker image); ``EXPLORER_SANITIZE=1`` adds `SANITIZE_FLAGS` to
every build (a separate library, by its hash), which the sanitizer test runs under
``LD_PRELOAD`` of the sanitizer runtimes.

Imports: the standard library and `explorer.paths`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import platform
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from explorer import paths

try:  # POSIX only; without it concurrent builds still end in an atomic rename.
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None  # type: ignore[assignment]

SOURCE = Path(__file__).resolve().parent / "csrc" / "qe_kernels.c"
CONV_SOURCE = SOURCE.with_name("qe_conv.c")
LOWBIT_SOURCE = SOURCE.with_name("qe_lowbit.c")
LINKED_SOURCES: dict[Path, tuple[Path, ...]] = {SOURCE: (LOWBIT_SOURCE,)}
"""Further files compiled into a library with its main source (the 2/3-bit kernels share the
linear library: one build hash and one instruction-set switch for every linear kernel)."""
WARNING_FLAGS: tuple[str, ...] = ("-Wall", "-Wextra", "-Werror")
BASE_FLAGS: tuple[str, ...] = ("-O3", "-fPIC", "-shared", "-std=c11", *WARNING_FLAGS)
OMP_FLAG = "-fopenmp"
SANITIZE_ENV = "EXPLORER_SANITIZE"
SANITIZE_FLAGS: tuple[str, ...] = (
    "-O0",  # last -O wins: a quarter of -O3's compile time, and the checks see every access
    "-fsanitize=address,undefined",
    "-fno-sanitize-recover=undefined",  # undefined behaviour aborts, so a test cannot miss it
    "-fno-omit-frame-pointer",
)
COMPILERS: tuple[str, ...] = ("cc", "gcc")
ABI_VERSION = 1
COMPILE_TIMEOUT_S = 300
ELF_MAGIC = b"\x7fELF"


@dataclass(frozen=True)
class Built:
    """A verified library: its path, sha256 and, if this process compiled it, the seconds."""

    path: Path
    sha256: str
    compile_seconds: float | None = None
    replaced: str | None = None  # why the cached file it replaced was rejected


def cache_dir() -> Path:
    """Folder of the compiled library (``<EXPLORER_CACHE>/kernels``; created on demand)."""
    return paths.kernels_dir()


def sources(source_path: Path) -> tuple[Path, ...]:
    """The files compiled into the library of ``source_path``, itself first."""
    return (source_path, *LINKED_SOURCES.get(source_path, ()))


def source_bytes(source_path: Path) -> bytes:
    """What a library's name hashes: its source's text, or every file compiled into it, each
    behind its name."""
    if source_path not in LINKED_SOURCES:
        return source_path.read_bytes()
    return b"".join(p.name.encode() + b"\0" + p.read_bytes() for p in sources(source_path))


def flag_variants() -> tuple[tuple[str, ...], ...]:
    """The flag sets to try, best first (with OpenMP, without), plus `SANITIZE_FLAGS` when the
    environment sets ``EXPLORER_SANITIZE=1``."""
    # without OpenMP the `#pragma omp` lines are meant to be ignored: not a warning to fail on
    variants = ((*BASE_FLAGS, OMP_FLAG), (*BASE_FLAGS, "-Wno-unknown-pragmas"))
    if os.environ.get(SANITIZE_ENV, "").strip() in ("", "0"):
        return variants
    return tuple((*flags, *SANITIZE_FLAGS) for flags in variants)


FLAG_VARIANTS = flag_variants()
"""`flag_variants` as this process started (read by `explorer.kernels.native`)."""


def find_compiler() -> str | None:
    names = [os.environ["CC"]] if os.environ.get("CC") else []
    for name in (*names, *COMPILERS):
        path = shutil.which(name)
        if path:
            return path
    return None


@functools.lru_cache(maxsize=8)
def compiler_id(compiler: str | None) -> str:
    """``<name>-<version>`` of ``compiler`` (``gcc-12.2.0``, ``clang-16.0.6``), from the first
    line of ``--version``; ``none`` without a compiler, ``<name>-unknown`` if it does not say."""
    if compiler is None:
        return "none"
    name = Path(compiler).name
    try:
        out = subprocess.run(
            [compiler, "--version"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return f"{name}-unknown"
    first = out.splitlines()[0] if out.strip() else ""
    gnu = "gcc" in first or "Free Software Foundation" in out  # Debian's cc says "cc (Debian...)"
    family = "clang" if "clang" in first else "gcc" if gnu else name
    version = re.search(r"(\d+\.\d+(?:\.\d+)?)", first)
    return f"{family}-{version.group(1) if version else 'unknown'}"


def library_name(
    source: bytes, flags: tuple[str, ...], compiler: str | None = None, stem: str = "qe_kernels"
) -> str:
    """``<stem>-<compiler id>-<hash of source, flags and platform>``: one library per compiler
    (`compiler_id`), so a new compiler never loads what an older one built."""
    h = hashlib.sha256()
    h.update(source)
    h.update(b"\0" + " ".join(flags).encode())
    h.update(b"\0" + f"{sys.platform}-{platform.machine()}-abi{ABI_VERSION}".encode())
    return f"{stem}-{compiler_id(compiler)}-{h.hexdigest()[:20]}"


def _prebuilt(directory: Path, stem: str, name: str) -> Path:
    """Without a compiler: the library some compiler built for the same source and flags (the
    newest, if several did), else the name a build would have had."""
    digest = name.rsplit("-", 1)[1]
    found = sorted(
        directory.glob(f"{stem}-*-{digest}.so"), key=lambda p: p.stat().st_mtime, reverse=True
    )
    return found[0] if found else directory / f"{name}.so"


def checksum_path(library: Path) -> Path:
    return library.with_name(library.name + ".sha256")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def elf_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete ELF object (None if it looks whole).

    Reads the ELF header and checks that the section header table, which linkers put at the end
    of the file, lies inside it: a truncated file fails this without reading the rest.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        return f"cannot read it ({exc.strerror or exc})"
    if len(head) < 52 or head[:4] != ELF_MAGIC:
        return "not an ELF shared object"
    endian = {1: "<", 2: ">"}.get(head[5])
    if head[4] == 2 and len(head) >= 64 and endian:  # 64-bit
        (shoff,) = struct.unpack_from(endian + "Q", head, 0x28)
        shentsize, shnum = struct.unpack_from(endian + "HH", head, 0x3A)
    elif head[4] == 1 and endian:  # 32-bit
        (shoff,) = struct.unpack_from(endian + "I", head, 0x20)
        shentsize, shnum = struct.unpack_from(endian + "HH", head, 0x2E)
    else:
        return "unknown ELF class or byte order"
    end = shoff + shentsize * shnum
    if end > size:
        return f"truncated ({size} bytes, its section table ends at byte {end})"
    return None


def verify(library: Path) -> str | None:
    """Why the cached ``library`` must not be loaded (None: its checksum and header are good)."""
    if not library.exists():
        return "not built yet"
    problem = elf_problem(library)
    if problem is not None:
        return problem
    try:
        recorded = checksum_path(library).read_text().split()
    except OSError:
        return "no checksum recorded (an interrupted or older build)"
    try:
        actual = sha256_file(library)
    except OSError as exc:
        return f"cannot read it ({exc.strerror or exc})"
    if not recorded or recorded[0] != actual:
        return "its sha256 does not match the one recorded after the build"
    return None


def recorded_sha256(library: Path) -> str:
    return checksum_path(library).read_text().split()[0]


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some file systems do not open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` by temporary file, fsync and rename."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), 0o644)  # mkstemp's 0600 would hide it from other users
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _fsync_dir(path.parent)


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def compile_library(
    compiler: str, flags: tuple[str, ...], out: Path, source_path: Path = SOURCE
) -> Built | str:
    """Compile into ``out`` durably (see the module docstring); a `Built` or an error message."""
    fd, tmp = tempfile.mkstemp(prefix=out.stem + ".", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        cmd = [compiler, *flags, "-o", tmp, *map(str, sources(source_path))]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
        if proc.returncode != 0:
            return f"compiler failed ({' '.join(cmd)}):\n{_tail(proc.stderr or proc.stdout)}"
        seconds = time.perf_counter() - t0
        os.chmod(tmp, 0o755)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        problem = elf_problem(Path(tmp))
        if problem is not None:
            return f"the compiler wrote a library that cannot be loaded: {problem}"
        digest = sha256_file(Path(tmp))
        os.replace(tmp, out)
        _fsync_dir(out.parent)
        _write_durably(checksum_path(out), f"{digest}  {out.name}\n".encode())
        return Built(out, digest, seconds)
    except subprocess.TimeoutExpired:
        return f"compiler did not finish within {COMPILE_TIMEOUT_S} s"
    except (OSError, subprocess.SubprocessError) as exc:
        return f"compiler could not run: {exc}"
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def ensure_built(
    source: bytes,
    flags: tuple[str, ...],
    compiler: str | None,
    source_path: Path = SOURCE,
) -> Built | str:
    """A verified library for ``source`` (the text of ``source_path``) and ``flags``, built if
    missing or damaged, or a message saying why there is none."""
    directory = cache_dir()
    stem = source_path.stem
    name = library_name(source, flags, compiler, stem)
    out = directory / f"{name}.so" if compiler is not None else _prebuilt(directory, stem, name)
    problem = verify(out)
    if problem is None:
        return Built(out, recorded_sha256(out))
    if compiler is None:
        if out.exists():
            return (
                f"cached kernel library {out} is damaged ({problem}) and no C compiler was "
                f"found to rebuild it (looked for {', '.join(COMPILERS)}); delete it or install one"
            )
        return f"no C compiler found (looked for {', '.join(COMPILERS)})"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / f"{out.stem}.lock", "w") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if verify(out) is None:  # another process finished the build while we waited
                    return Built(out, recorded_sha256(out))
                damaged = out.exists()
                built = compile_library(compiler, flags, out, source_path)
                if isinstance(built, Built) and damaged:
                    built = dataclasses.replace(built, replaced=problem)
                return built
            finally:
                if fcntl is not None:
                    fcntl.flock(lock, fcntl.LOCK_UN)
    except OSError as exc:
        return f"cannot use cache directory {directory}: {exc}"


def build_source(source_path: Path, compiler: str | None = None) -> Built | str:
    """Build (or verify) the library of one source with the first flag set that compiles."""
    compiler = compiler if compiler is not None else find_compiler()
    try:
        source = source_bytes(source_path)
    except OSError as exc:
        return f"kernel source missing: {exc}"
    errors = []
    for flags in flag_variants():
        built = ensure_built(source, flags, compiler, source_path)
        if isinstance(built, Built):
            return built
        errors.append(built)
        if compiler is None:
            break
    return "\n".join(errors)


def build_all() -> dict[str, Built | str]:
    """Every native library (`SOURCE`, `CONV_SOURCE`), built or verified: ``{stem: result}``."""
    return {path.stem: build_source(path) for path in (SOURCE, CONV_SOURCE)}
