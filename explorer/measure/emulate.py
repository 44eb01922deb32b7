"""Benchmarks as they would run on a smaller x86 machine: an instruction set emulated by
restricting every library that dispatches on the CPU, and a record of what each one really ran.

Issue 15's latency targets must hold on AVX2 machines as on AVX-512 VNNI ones. Forcing only our
own kernels to their AVX2 code says little: the baselines they are compared with dispatch by
themselves. Each library has its own switch, read once when it first runs, so the benchmark is
re-run in a child process (`rerun`) with all of them set (`child_env`):

- torch's own kernels (ATen): ``ATEN_CPU_CAPABILITY``, checked with
  ``torch.backends.cpu.get_cpu_capability()``;
- oneDNN (bf16 matmul, convolutions, int8 convolutions): ``ONEDNN_MAX_CPU_ISA``, checked in its
  verbose log (the ISA line and each primitive's implementation, ``jit:avx2``);
- MKL (fp32 matmul): ``MKL_ENABLE_INSTRUCTIONS``; its verbose header names the code branch. On a
  non-Intel CPU it says "Intel(R) Architecture processors": MKL's default branch, whatever the
  switch (on the AMD EPYC this was written on its sgemm/sgemv kernels use no zmm register);
- fbgemm: ``FBGEMM_ENABLE_INSTRUCTIONS`` (fbgemm's ``fbgemmEnvGetIsa``), checked by behaviour:
  without VNNI its ``vpmaddubsw`` saturates int16 pair sums, so 255 x -128 pairs come out wrong;
- our kernels: `explorer.kernels.native.set_isa` (the 2/3-bit kernels follow it) and
  `explorer.kernels.conv_ops.force_conv_isa`, in the child (`apply`);
- what the rest of the explorer reads about the CPU (`explorer.machine.cpu_flags`: which kernels
  register, e.g. fbgemm only with VNNI) sees the flags the emulated machine would lack hidden;
- llama.cpp's ggml is compiled for the CPU it was built on and has no switch: its rows say the
  instruction set it was compiled with (`ggml_isa`), never the emulated one. A build for the
  emulated set (``EXPLORER_GGML_LIB_DIR``, `explorer.quant.ggml.library_dir`: e.g. ggml compiled
  for AVX2 only) runs instead where that variable names it; ``restricted`` then says whether
  every instruction set it was compiled with is one the emulated machine has (`ggml_build`).

`libraries` reports what each library says it runs; `dispatch` labels one call by the library
code that ran it (oneDNN's primitive, MKL, fbgemm, else ATen at its capability). Every benchmark
row's ``isa`` comes from these checks, not from what was requested.

Imports: the standard library, torch, `explorer.errors`, `explorer.machine`, `explorer.kernels`.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from explorer.errors import ExplorerError

MARKER = "EXPLORER_EMULATE_ISA"
"""Set in the child: the instruction set it emulates (`apply` forces our kernels to it)."""
NATIVE = "native"
ISA_CHOICES: tuple[str, ...] = (NATIVE, "avx2", "avx_vnni", "avx512_vnni")

LIBRARY_ENV: dict[str, dict[str, str]] = {
    "avx2": {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2",
    },
    "avx_vnni": {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2_VNNI",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2_E1",
        "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2",  # fbgemm has no AVX-VNNI code
    },
    "avx512_vnni": {
        "ATEN_CPU_CAPABILITY": "avx512",
        "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI",
        "MKL_ENABLE_INSTRUCTIONS": "AVX512_E1",
        "FBGEMM_ENABLE_INSTRUCTIONS": "AVX512_E1",
    },
}
"""Each library's switch per emulated instruction set (read when the library first runs)."""
CONV_PATH = {"avx2": "avx2", "avx_vnni": "avx2", "avx512_vnni": "avx512_vnni"}
"""The int8 convolution library's path per emulated set (it has no AVX-VNNI code)."""
_KEPT_EXTRA = {"avx512_vnni": frozenset({"avx512dq", "avx512cd"})}  # Cascade Lake has them
_ABOVE_AVX2 = ("avx512", "amx", "avx_vnni", "avx_ne_convert", "avx_ifma")


class EmulationError(ExplorerError, ValueError):
    """An instruction set that cannot be emulated here (unknown, or missing from this CPU)."""


def _features(isa: str) -> tuple[str, ...]:
    from explorer.kernels.native import ISA_FEATURES

    return ISA_FEATURES[isa]


def check_isa(isa: str, flags: frozenset[str] | None = None) -> None:
    """Refuse an unknown set, or one whose ``/proc/cpuinfo`` flags this CPU lacks."""
    if isa not in ISA_CHOICES:
        raise EmulationError(f"unknown instruction set {isa!r}; choose one of {ISA_CHOICES}")
    if isa == NATIVE:
        return
    if flags is None:
        from explorer import machine

        flags = machine.cpu_flags()
    missing = [f for f in _features(isa) if f not in flags]
    if missing:
        raise EmulationError(
            f"cannot emulate {isa}: this CPU lacks {', '.join(missing)} "
            "(not in /proc/cpuinfo flags); an emulated machine must be a subset of this one"
        )


def hidden_flags(isa: str, flags: frozenset[str]) -> list[str]:
    """The flags of ``flags`` an ``isa`` machine would not have (instruction sets above it)."""
    kept = set(_features(isa)) | _KEPT_EXTRA.get(isa, frozenset())
    return sorted(f for f in flags if f.startswith(_ABOVE_AVX2) and f not in kept)


def child_env(isa: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a child that emulates ``isa``: ``base`` (default ``os.environ``) with
    every library's switch set, the marker, and this explorer on ``PYTHONPATH``."""
    env = dict(os.environ if base is None else base)
    env.update(LIBRARY_ENV[isa])
    env[MARKER] = isa
    root = str(Path(__file__).resolve().parents[2])
    path = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = root + (os.pathsep + path if path else "")
    return env


def active() -> str | None:
    """The instruction set this process emulates (it is the child), else None."""
    return os.environ.get(MARKER) or None


def rerun(isa: str, argv: Sequence[str]) -> int:
    """Run ``python argv...`` with ``isa`` emulated; its output streams straight through (the
    child inherits stdout and stderr). Returns its exit status."""
    check_isa(isa)
    return subprocess.run([sys.executable, *argv], env=child_env(isa), check=False).returncode


_forced: dict[str, Any] | None = None
_real_cpuinfo = Path("/proc/cpuinfo")


def apply() -> dict[str, Any] | None:
    """In the child: force our kernels to the emulated set, hide the CPU flags it lacks from
    `explorer.machine`, and check that torch took its switch. Returns what was forced (also
    `forced`); None outside a child. Idempotent."""
    global _forced, _real_cpuinfo
    isa = active()
    if isa is None or _forced is not None:
        return _forced
    check_isa(isa)
    import torch

    from explorer import machine
    from explorer.kernels import conv_ops, native

    want = LIBRARY_ENV[isa]["ATEN_CPU_CAPABILITY"].upper()
    if machine.torch_capability() != want:
        raise EmulationError(
            f"torch runs {machine.torch_capability()} although ATEN_CPU_CAPABILITY asked for "
            f"{want}: this torch build cannot emulate {isa}"
        )
    hidden = hidden_flags(isa, machine.cpu_flags())
    if hidden:
        text = machine.PROC_CPUINFO.read_text()
        pattern = re.compile(r"(?<=\s)(" + "|".join(map(re.escape, hidden)) + r")(?=\s|$)")
        folder = tempfile.mkdtemp(prefix="qe-emulate-")
        atexit.register(shutil.rmtree, folder, True)
        fake = Path(folder) / "cpuinfo"
        fake.write_text("\n".join(_strip(line, pattern) for line in text.splitlines()) + "\n")
        _real_cpuinfo = machine.PROC_CPUINFO
        machine.PROC_CPUINFO = fake
        machine.clear_cache()
    record: dict[str, Any] = {
        "isa": isa,
        "env": dict(LIBRARY_ENV[isa]),
        "hidden_cpu_flags": hidden,
        "torch_capability": str(torch.backends.cpu.get_cpu_capability()),
    }
    if native.available():
        record["native"] = native.set_isa(isa)
    if conv_ops.unavailable_reason() is None:
        conv_ops.force_conv_isa(CONV_PATH[isa])
        record["native_conv"] = conv_ops.conv_isa()
    _forced = record
    return record


def _strip(line: str, pattern: re.Pattern[str]) -> str:
    key = line.partition(":")[0].strip()
    return pattern.sub("", line) if key in ("flags", "Features") else line


@contextlib.contextmanager
def real_cpu() -> Iterator[None]:
    """Within: `explorer.machine` reads this CPU's own flags again (outside a child, a no-op)."""
    from explorer import machine

    if _forced is None or not _forced["hidden_cpu_flags"]:
        yield
        return
    fake = machine.PROC_CPUINFO
    machine.PROC_CPUINFO = _real_cpuinfo
    machine.clear_cache()
    try:
        yield
    finally:
        machine.PROC_CPUINFO = fake
        machine.clear_cache()


def forced() -> dict[str, Any] | None:
    """What `apply` forced in this process (None: nothing, the native run)."""
    return _forced


def script_guard(isa: str, script: str) -> None:
    """For a benchmark script's ``--isa``: in the parent re-run the script emulated and exit with
    its status; in the child apply the emulation. An impossible set exits 2 with one line."""
    try:
        if isa != NATIVE and active() is None:
            sys.exit(rerun(isa, [script, *sys.argv[1:]]))
        apply()
    except ExplorerError as exc:
        print(f"{Path(script).name}: error: {exc}", file=sys.stderr)
        sys.exit(2)


# --- what each library ran ----------------------------------------------------------------------

_seen: dict[str, str] = {}  # the libraries' verbose headers: printed once per process


def capture_verbose(call: Callable[[], object]) -> str:
    """Run ``call`` with MKL's and oneDNN's verbose logs on; return what they wrote to fd 1."""
    import torch

    sys.stdout.flush()
    with tempfile.TemporaryFile() as f:
        saved = os.dup(1)
        os.dup2(f.fileno(), 1)
        try:
            with (
                torch.backends.mkl.verbose(torch.backends.mkl.VERBOSE_ON),
                torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON),
            ):
                call()
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
        f.seek(0)
        text = f.read().decode(errors="replace")
    for line in text.splitlines():
        if line.startswith("MKL_VERBOSE oneMKL") or line.startswith("MKL_VERBOSE Intel"):
            _seen.setdefault("mkl", line)
        elif ",info,cpu,isa:" in line:
            _seen.setdefault("onednn", line.split("isa:", 1)[1].strip())
    return text


def mkl_branch() -> str | None:
    """MKL's code branch from its verbose header: ``avx512``, ``avx2``, ..., or ``default`` (a
    non-Intel CPU: "Intel(R) Architecture processors"); None before MKL logged its header."""
    header = _seen.get("mkl")
    if header is None:
        return None
    if "Intel(R) Architecture processors" in header:
        return "default"
    for phrase, name in (
        ("AVX-512", "avx512"),
        ("Advanced Vector Extensions 512", "avx512"),
        ("AVX2", "avx2"),
        ("Advanced Vector Extensions 2", "avx2"),
        ("AVX", "avx"),
        ("SSE4", "sse4_2"),
    ):
        if phrase in header:
            return name
    return "unknown"


def _onednn_impls(text: str) -> list[str]:
    """Implementations of the oneDNN primitives executed (reorders left out): ``jit:avx2``."""
    out = []
    for line in text.splitlines():
        parts = line.split(",")
        if len(parts) > 6 and parts[2] == "primitive" and parts[3] == "exec":
            if parts[5] != "reorder":
                out.append(parts[6])
    return out


def dispatch(call: Callable[[], object], kernel: str = "") -> str:
    """The library code that ran ``call``: ``onednn-<isa>`` (its primitive's implementation),
    ``mkl-<branch>``, ``fbgemm-<isa>`` for fbgemm's kernel, else ``torch-<capability>``."""
    import torch

    text = capture_verbose(call)
    impls = _onednn_impls(text)
    if impls:
        return "onednn-" + impls[-1].rpartition(":")[2]
    if any(line.startswith("MKL_VERBOSE") and "(" in line for line in text.splitlines()):
        branch = mkl_branch()  # None: MKL ran before its verbose log was on
        return f"mkl-{branch}" if branch else "mkl"
    if "fbgemm" in kernel:
        return f"fbgemm-{fbgemm_isa()}"
    return f"torch-{torch.backends.cpu.get_cpu_capability()}"


def fbgemm_saturates() -> bool:
    """Whether fbgemm's int8 linear saturates int16 pair sums (its AVX2/AVX-512 code without
    VNNI): 64 products 255 x -128 sum to -2088960 exactly, and to 32 x -32768 when saturated."""
    import torch

    k = 64
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized tensors are deprecated; fbgemm takes them
        w = torch._make_per_channel_quantized_tensor(
            torch.full((16, k), -128, dtype=torch.int8),
            torch.ones(16, dtype=torch.double),
            torch.zeros(16, dtype=torch.long),
            0,
        )
        packed = torch.ops.quantized.linear_prepack(w, None)
    op = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32
    y = op(torch.full((1, k), 255.0), 1.0, 0, packed)
    return float(y[0, 0]) != -128.0 * 255 * k


def fbgemm_isa() -> str:
    """``vnni`` when fbgemm's int8 products are exact, else the set it was restricted to
    (``FBGEMM_ENABLE_INSTRUCTIONS``) or ``no-vnni``."""
    if not fbgemm_saturates():
        return "vnni"
    return os.environ.get("FBGEMM_ENABLE_INSTRUCTIONS", "no-vnni").lower()


GGML_FLAGS: dict[str, str] = {
    "avx": "avx",
    "avx2": "avx2",
    "fma": "fma",
    "f16c": "f16c",
    "bmi2": "bmi2",
    "avx_vnni": "avx_vnni",
    "avx512": "avx512f",
    "avx512_vbmi": "avx512vbmi",
    "avx512_vnni": "avx512_vnni",
    "avx512_bf16": "avx512_bf16",
    "amx_int8": "amx_int8",
}
"""ggml's ``ggml_cpu_has_<name>`` (true when its CPU library was compiled with that set) and
the ``/proc/cpuinfo`` flag of the same set."""
_GGML_BEST = ("amx_int8", "avx512_vnni", "avx512", "avx_vnni", "avx2", "avx")


def ggml_uses(lib: Any) -> list[str]:
    """The ``/proc/cpuinfo`` flags of the sets ggml's CPU library ``lib`` was compiled with."""
    out = []
    for name, flag in GGML_FLAGS.items():
        fn = getattr(lib, f"ggml_cpu_has_{name}", None)
        if fn is not None and fn():
            out.append(flag)
    return out


def ggml_label(uses: Sequence[str]) -> str:
    """The best instruction set among ``uses`` (`ggml_uses`), as ggml names it, or generic."""
    return next((n for n in _GGML_BEST if GGML_FLAGS[n] in uses), "generic")


def ggml_restricted(uses: Sequence[str], hidden: Sequence[str] | None) -> bool:
    """Whether a ggml build that ``uses`` these flags runs within an emulated machine that
    lacks ``hidden`` (`hidden_flags`; None: nothing is emulated, so nothing is restricted)."""
    return hidden is not None and not set(uses) & set(hidden)


@functools.cache
def ggml_build() -> dict[str, Any] | None:
    """ggml's CPU library as this process loads it: the best set it was compiled with
    (``compiled``: it has no run-time switch), every set it uses and its folder; None without
    the llamacpp extra."""
    import ctypes

    try:
        from explorer.quant import ggml

        folder = ggml.library_dir()
        path = next(folder.glob("libggml-cpu.*"), None)
        if path is None:
            return None
        uses = ggml_uses(ctypes.CDLL(str(path)))
    except (ImportError, OSError, ExplorerError):
        return None
    return {"compiled": ggml_label(uses), "uses": uses, "dir": str(folder)}


def ggml_isa() -> str | None:
    """The best instruction set ggml's CPU library was compiled with; None without it."""
    build = ggml_build()
    return None if build is None else build["compiled"]


def libraries(ggml: bool = False) -> dict[str, Any]:
    """What each library reports it runs here. Call it before MKL or oneDNN first run in the
    process: their verbose headers are printed only once."""
    import torch
    import torch.nn.functional as F

    from explorer.kernels import conv_ops, lowbit, native

    def first_use() -> None:
        F.linear(torch.randn(4, 64), torch.randn(64, 64))  # MKL sgemm
        if torch.backends.mkldnn.is_available():
            x, w = torch.randn(1, 8, 8, 8), torch.randn(8, 8, 3, 3)
            torch.ops.aten.mkldnn_convolution(x, w, None, [1, 1], [1, 1], [1, 1], 1)

    impls = _onednn_impls(capture_verbose(first_use))
    out: dict[str, Any] = {
        "torch": {
            "capability": str(torch.backends.cpu.get_cpu_capability()),
            "forced": os.environ.get("ATEN_CPU_CAPABILITY"),
        },
        "onednn": {
            "reports": _seen.get("onednn"),
            "conv": impls[-1] if impls else None,
            "forced": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        },
        "mkl": {
            "reports": _seen.get("mkl"),
            "branch": mkl_branch(),
            "forced": os.environ.get("MKL_ENABLE_INSTRUCTIONS"),
        },
        "fbgemm": {
            "isa": fbgemm_isa(),
            "forced": os.environ.get("FBGEMM_ENABLE_INSTRUCTIONS"),
        },
    }
    if native.available():
        out["native"] = {"isa": native.isa(), "lowbit": lowbit.isa_taken()}
    if conv_ops.unavailable_reason() is None:
        out.setdefault("native", {})["conv"] = conv_ops.conv_isa()
    if ggml:
        build = ggml_build() or {"compiled": None, "uses": []}
        hidden = None if _forced is None else _forced["hidden_cpu_flags"]
        out["ggml"] = {**build, "restricted": ggml_restricted(build["uses"], hidden)}
    return out
