"""Emulating a smaller instruction set for the benchmarks (explorer.measure.emulate, explorer
bench --isa)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from explorer import machine
from explorer.cli.main import main
from explorer.measure import emulate

AVX512_FLAGS = frozenset(
    "fpu sse2 avx avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni avx512_bf16 "
    "avx512vbmi amx_int8".split()
)


def test_child_env_sets_every_library_switch_and_keeps_the_rest() -> None:
    base = {"PATH": "/bin", "PYTHONPATH": "/elsewhere", "ATEN_CPU_CAPABILITY": "default"}
    env = emulate.child_env("avx2", base)
    assert env["ATEN_CPU_CAPABILITY"] == "avx2"
    assert env["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert env["MKL_ENABLE_INSTRUCTIONS"] == "AVX2"
    assert env["FBGEMM_ENABLE_INSTRUCTIONS"] == "AVX2"
    assert env[emulate.MARKER] == "avx2" and env["PATH"] == "/bin"
    first, rest = env["PYTHONPATH"].split(os.pathsep)
    assert rest == "/elsewhere" and os.path.isdir(os.path.join(first, "explorer"))
    assert base["ATEN_CPU_CAPABILITY"] == "default" and emulate.MARKER not in base  # a copy


def test_an_instruction_set_the_cpu_lacks_is_refused_with_the_missing_flags() -> None:
    emulate.check_isa("avx2", AVX512_FLAGS)
    emulate.check_isa("native", frozenset())
    with pytest.raises(emulate.EmulationError, match=r"cannot emulate avx2: this CPU lacks fma "):
        emulate.check_isa("avx2", frozenset({"avx2"}))
    with pytest.raises(emulate.EmulationError, match="lacks avx_vnni"):
        emulate.check_isa("avx_vnni", AVX512_FLAGS)
    with pytest.raises(emulate.EmulationError, match="unknown instruction set 'sse9'"):
        emulate.check_isa("sse9", AVX512_FLAGS)


def test_hidden_flags_are_those_above_the_emulated_set() -> None:
    above = ["amx_int8", "avx512_bf16", "avx512_vnni", "avx512bw", "avx512cd", "avx512dq"]
    above += ["avx512f", "avx512vbmi", "avx512vl"]
    assert emulate.hidden_flags("avx2", AVX512_FLAGS) == above
    # a Cascade Lake (AVX-512 VNNI) keeps its foundation flags, loses bf16, VBMI and AMX
    assert emulate.hidden_flags("avx512_vnni", AVX512_FLAGS) == [
        "amx_int8",
        "avx512_bf16",
        "avx512vbmi",
    ]


def test_library_logs_are_read() -> None:
    log = (
        "onednn_verbose,v1,info,cpu,isa:Intel AVX2\n"
        "onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src:f32,,8x8,0.1\n"
        "onednn_verbose,v1,primitive,exec,cpu,convolution,jit:avx2,forward_training,src,,mb1,2\n"
    )
    assert emulate._onednn_impls(log) == ["jit:avx2"]  # reorders are not the op's code
    saved = dict(emulate._seen)
    try:
        emulate._seen["mkl"] = "MKL_VERBOSE oneMKL 2024.0 ... Intel(R) Architecture processors, Lnx"
        assert emulate.mkl_branch() == "default"  # a non-Intel CPU: MKL's default branch
        emulate._seen["mkl"] = (
            "MKL_VERBOSE oneMKL 2024.0 ... Intel(R) Advanced Vector Extensions 2 (Intel(R) AVX2) "
            "enabled processors, Lnx"
        )
        assert emulate.mkl_branch() == "avx2"
    finally:
        emulate._seen.clear()
        emulate._seen.update(saved)


def test_bench_refuses_an_isa_with_a_missing_flag(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(emulate.MARKER, raising=False)
    monkeypatch.setattr(machine, "cpu_flags", lambda: frozenset({"avx2"}))
    assert main(["bench", "--isa", "avx2", "--json"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("explorer bench: error: cannot emulate avx2: this CPU lacks fma")
    assert len(err.splitlines()) == 1
    assert main(["bench", "--isa", "avx9"]) == 2
    assert "invalid choice: 'avx9'" in capsys.readouterr().err


@pytest.mark.skipif(
    not {"avx2", "fma"} <= machine.cpu_flags(), reason="avx2 or fma not in /proc/cpuinfo flags"
)
def test_bench_isa_avx2_runs_every_library_on_avx2() -> None:
    cmd = [sys.executable, "-m", "explorer.cli", "bench", "--isa", "avx2", "--m", "1"]
    cmd += ["--k", "256", "--n", "256", "--no-conv", "--json", "--repeats", "3", "--threads", "1"]
    cmd += ["--clock", "cpu"]
    env = {k: v for k, v in os.environ.items() if k != emulate.MARKER}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    forced, libs = doc["env"]["isa_forced"], doc["env"]["libraries"]
    assert forced["isa"] == "avx2" and forced["torch_capability"] == "AVX2"
    assert doc["env"]["cpu_capability"] == "AVX2" and libs["torch"]["capability"] == "AVX2"
    assert libs["onednn"]["conv"] == "jit:avx2"
    assert doc["env"]["clock"] == "cpu" and len(doc["env"]["loadavg_after"]) == 3
    assert not doc["env"]["cpu_features"]["avx512"]  # the explorer sees an AVX2 machine
    rows = {(r["kernel"], r["format"]): r for r in doc["rows"]}
    if doc["env"]["native_kernels"]:
        assert forced["native"] == libs["native"]["isa"] == doc["env"]["native_isa"] == "avx2"
        assert rows[("int8-w8a8-native", "w8a8-token")]["isa"] == "avx2"
        assert rows[("int4-w4a8-native", "w4a8-g128")]["isa"] == "avx2"
        assert rows[("int2-wo-native", "w2-g128")]["isa"] == "avx2"
    assert not any("avx512" in r["isa"] or r["isa"] == "torch-AVX512" for r in doc["rows"])
    assert rows[("bf16", "bf16")]["isa"] == "torch-AVX2"  # oneDNN's bf16 matmul needs AVX-512
    fbgemm = rows.get(("int8-w8a8-fbgemm", "w8a8-tensor"))
    if fbgemm is not None:  # timed as the baseline, refused for models: it saturates on AVX2
        assert fbgemm["isa"] == "fbgemm-avx2" and "saturates" in fbgemm["refused"]
