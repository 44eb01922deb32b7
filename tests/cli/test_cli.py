"""The `explorer` command: help, the bench JSON contract, clean errors."""

from __future__ import annotations

import json
import subprocess
import sys

EXPLORER = [sys.executable, "-m", "explorer.cli"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EXPLORER, *args], capture_output=True, text=True, timeout=600)


def test_help_lists_subcommands() -> None:
    out = run("--help")
    assert out.returncode == 0 and "bench" in out.stdout


def test_bench_json_contract() -> None:
    out = run("bench", "--json", "--m", "1,4", "--k", "256", "--n", "128", "--repeats", "3")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"env", "rows"} <= doc.keys()
    linear = [r for r in doc["rows"] if r["op"] == "linear"]
    conv = [r for r in doc["rows"] if r["op"] == "conv2d"]
    assert {r["M"] for r in linear} == {1, 4}
    kernels = {r["kernel"] for r in linear}
    assert {"fp32", "bf16"} <= kernels
    assert any(k.startswith("int8-") for k in kernels) and any(
        k.startswith("int4-") for k in kernels
    )
    for r in linear:
        assert {"op", "kernel", "M", "K", "N", "ms", "gbps", "speedup_vs_fp32"} <= r.keys()
        assert r["ms"] > 0 and r["K"] == 256 and r["N"] == 128
    fp32 = [r for r in linear if r["kernel"] == "fp32"]
    assert all(r["speedup_vs_fp32"] == 1.0 for r in fp32)
    assert conv and all({"kernel", "shape", "ms", "speedup_vs_fp32"} <= r.keys() for r in conv)
    assert "bench:" in out.stderr  # progress on stderr


def test_bad_arguments_exit_nonzero_with_one_line() -> None:
    out = run("bench", "--m", "0")
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    assert "positive" in out.stderr
