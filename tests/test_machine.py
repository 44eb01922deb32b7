"""Machine facts (`explorer.machine`) against /proc/cpuinfo and /sys, read here independently,
and the fallbacks when they cannot be read."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from explorer import machine

CPUINFO = Path("/proc/cpuinfo")
CACHE = Path("/sys/devices/system/cpu/cpu0/cache")


@pytest.fixture
def fresh() -> Iterator[None]:
    machine.clear_cache()
    yield
    machine.clear_cache()


def _first(key: str) -> str:
    for line in CPUINFO.read_text().splitlines():
        if line.split(":")[0].strip() == key:
            return line.split(":", 1)[1]
    return ""


@pytest.mark.skipif(not CPUINFO.exists(), reason="no /proc/cpuinfo")
def test_cpu_features_match_cpuinfo(fresh: None) -> None:
    flags = set(_first("flags").split())
    features = machine.cpu_features()
    assert features["model"] == _first("model name").strip()
    assert features["avx2"] == ("avx2" in flags)
    assert features["avx512"] == ("avx512f" in flags)
    assert features["vnni"] == bool({"avx512_vnni", "avx_vnni", "amx_int8"} & flags)
    assert machine.has_vnni() == features["vnni"]
    assert machine.cpu_flags() == frozenset(flags)


@pytest.mark.skipif(not (CACHE / "index0").exists(), reason="no cache info in sysfs")
def test_caches_match_sysfs(fresh: None) -> None:
    expected = []
    for index in sorted(CACHE.glob("index*")):
        size = (index / "size").read_text().strip()
        assert size.endswith("K")  # what Linux writes; parsed here without explorer code
        expected.append(
            (
                int((index / "level").read_text()),
                (index / "type").read_text().strip(),
                1024 * int(size[:-1]),
            )
        )
    got = [(c.level, c.type, c.size_bytes) for c in machine.cpu_caches()]
    assert got == expected
    top = max((e for e in expected if e[1] != "Instruction"), key=lambda e: (e[0], e[2]))
    llc = machine.last_level_cache()
    assert (llc.level, llc.size_bytes, llc.source) == (top[0], top[2], "sysfs")


def test_fallbacks_are_labelled(
    fresh: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(machine, "PROC_CPUINFO", tmp_path / "missing")
    monkeypatch.setattr(machine, "SYS_CPU_CACHE", tmp_path / "nocache")
    assert machine.cpu_features() == {} and not machine.has_vnni()
    assert machine.cpu_model()  # platform's answer, never empty
    llc = machine.last_level_cache()
    assert (llc.size_bytes, llc.source) == (32 * 2**20, "assumed")
    assert "assumed" in llc.label


def test_a_fake_sysfs_is_read(fresh: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for i, (level, kind, size) in enumerate(
        [(1, "Data", "48K"), (2, "Unified", "2048K"), (3, "Unified", "96M")]
    ):
        d = tmp_path / f"index{i}"
        d.mkdir()
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
    (tmp_path / "index9").mkdir()  # unreadable entries are skipped
    monkeypatch.setattr(machine, "SYS_CPU_CACHE", tmp_path)
    llc = machine.last_level_cache()
    assert (llc.level, llc.size_bytes, llc.label) == (3, 96 * 2**20, "L3 96 MiB")
    with pytest.raises(ValueError, match="not a cache size"):
        machine.parse_size("lots")


def test_threads_and_cpus() -> None:
    assert machine.threads() == torch.get_num_threads()
    assert machine.usable_cpus() == len(os.sched_getaffinity(0))
    facts = machine.facts()
    assert facts["threads"] == torch.get_num_threads() and facts["llc_bytes"] > 0


def test_every_reader_uses_the_one_module() -> None:
    """The four places that read machine facts agree because they are one."""
    from explorer.measure import bench
    from explorer.sweep import context

    card = importlib.import_module("explorer.models.tinylm.train")  # the card's latency table
    assert card.cpu_features is machine.cpu_features
    assert bench.L3_BYTES == machine.last_level_cache().size_bytes
    assert bench.environment()["llc_source"] == machine.last_level_cache().source
    assert context.environment()["cpu"] == machine.cpu_model()
    page = (Path(__file__).resolve().parents[1] / "pages" / "kernels.py").read_text()
    assert "from explorer.machine import cpu_features" in page
