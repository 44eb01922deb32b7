"""Facts about the machine that the kernels' speed depends on, read in one place.

- **CPU**: model name and instruction-set flags from ``/proc/cpuinfo`` (Linux); `cpu_features`
  summarises the ones our kernels care about (AVX2, AVX-512, VNNI int8 dot products, bf16
  arithmetic). Elsewhere the features are ``{}`` / False, never guessed.
- **Instruction set torch dispatches to**: ``torch.backends.cpu.get_cpu_capability()``.
  The path *our* C kernels take (``avx2`` or ``scalar``) is the native build's business
  (`explorer.kernels.native.build_info`), since only the loaded library knows it.
- **Threads**: the intra-op threads torch uses now, and the CPUs this process may run on
  (its affinity mask, which is what a container or ``taskset`` gives it, not the host's count).
- **Caches**: levels, types and sizes from ``/sys/devices/system/cpu/cpu0/cache/index*/``.
  Where sysfs does not say, the last-level cache is *assumed* to be `ASSUMED_LLC_BYTES`, and
  `last_level_cache` labels it so (``source == "assumed"``), so a benchmark that sizes its
  weight rotation from it says on what basis.

Memory read bandwidth is not a fact that can be read, it is measured: the kernel benchmark
(`explorer.measure.bench`) times a streaming read alongside the kernels.

Every value is read once per process (cached): the machine does not change under a process.
Tests point `PROC_CPUINFO` and `SYS_CPU_CACHE` elsewhere and clear the caches with
`clear_cache`.

Imports: the standard library and torch only, so every layer (kernels, models, measure, sweep,
pages) may import it.
"""

from __future__ import annotations

import functools
import os
import platform
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

PROC_CPUINFO = Path("/proc/cpuinfo")
SYS_CPU_CACHE = Path("/sys/devices/system/cpu/cpu0/cache")
ASSUMED_LLC_BYTES = 32 * 2**20  # a common desktop/server L3 per core complex; only a fallback

VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})

_SIZE = re.compile(r"^\s*(\d+)\s*([KMG]?)i?B?\s*$", re.IGNORECASE)
_UNIT = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}


@dataclass(frozen=True)
class CacheLevel:
    """One CPU cache as sysfs describes it (``type``: Data, Instruction or Unified)."""

    level: int
    type: str
    size_bytes: int


@dataclass(frozen=True)
class LastLevelCache:
    """The largest cache level; ``source`` is ``sysfs`` (read) or ``assumed`` (the fallback)."""

    level: int | None
    size_bytes: int
    source: str

    @property
    def label(self) -> str:
        mib = f"{self.size_bytes / 2**20:g} MiB"
        if self.source == "assumed":
            return f"{mib} (assumed: {SYS_CPU_CACHE} does not say)"
        return f"L{self.level} {mib}"


def clear_cache() -> None:
    """Forget what was read (tests that point the paths elsewhere call it)."""
    for fn in (_cpuinfo, cpu_caches):
        fn.cache_clear()


@functools.cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """(model name, flags) of the first processor in ``/proc/cpuinfo``; ("", {}) if unreadable."""
    try:
        text = PROC_CPUINFO.read_text()
    except OSError:
        return "", frozenset()
    model, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:  # x86 / arm64 spelling
            flags = frozenset(value.split())
    return model, flags


def cpu_model() -> str:
    """The CPU's model name, else what :mod:`platform` says (e.g. ``x86_64``)."""
    return _cpuinfo()[0] or platform.processor() or platform.machine()


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (empty when ``/proc/cpuinfo`` cannot be read)."""
    return _cpuinfo()[1]


def has_vnni() -> bool:
    """int8 dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX-INT8)."""
    return bool(cpu_flags() & VNNI_FLAGS)


def cpu_features() -> dict[str, Any]:
    """The CPU's model and the instruction sets our kernels' speed depends on (``{}`` when
    ``/proc/cpuinfo`` cannot be read, rather than a guess)."""
    model, flags = _cpuinfo()
    if not model and not flags:
        return {}
    return {
        "model": model,
        "avx2": "avx2" in flags,
        "avx512": "avx512f" in flags,
        "vnni": bool(flags & VNNI_FLAGS),
        "bf16": bool(flags & BF16_FLAGS),
    }


def torch_capability() -> str:
    """The instruction set torch's own CPU kernels dispatch to (``AVX2``, ``AVX512``, ...)."""
    return str(torch.backends.cpu.get_cpu_capability())


def threads() -> int:
    """The intra-op threads torch (and our OpenMP kernels) use now."""
    return torch.get_num_threads()


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages (None where the OS has none): benchmarks record
    them before and after a run, since other jobs on the machine inflate wall-clock times."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask where the OS has one, else the count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def parse_size(text: str) -> int:
    """Bytes of a sysfs cache size such as ``32K``, ``1024K`` or ``32768K`` (binary units)."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"not a cache size: {text!r}")
    return int(match.group(1)) * _UNIT[match.group(2).upper()]


@functools.cache
def cpu_caches() -> tuple[CacheLevel, ...]:
    """cpu0's caches in sysfs order (empty when sysfs does not say)."""
    out = []
    for index in sorted(SYS_CPU_CACHE.glob("index*"), key=lambda p: p.name):
        try:
            level = int((index / "level").read_text())
            kind = (index / "type").read_text().strip()
            size = parse_size((index / "size").read_text())
        except (OSError, ValueError):
            continue
        out.append(CacheLevel(level, kind, size))
    return tuple(out)


def last_level_cache() -> LastLevelCache:
    """The highest data/unified cache level and its size, or the labelled assumption."""
    usable = [c for c in cpu_caches() if c.type != "Instruction"]
    if not usable:
        return LastLevelCache(None, ASSUMED_LLC_BYTES, "assumed")
    top = max(usable, key=lambda c: (c.level, c.size_bytes))
    return LastLevelCache(top.level, top.size_bytes, "sysfs")


def facts() -> dict[str, Any]:
    """Everything above as one JSON-ready dict (for benchmark output and result rows)."""
    llc = last_level_cache()
    return {
        "cpu": cpu_model(),
        "features": cpu_features(),
        "torch_capability": torch_capability(),
        "threads": threads(),
        "usable_cpus": usable_cpus(),
        "caches": [asdict(c) for c in cpu_caches()],
        "llc_bytes": llc.size_bytes,
        "llc_source": llc.source,
    }
