"""Building the native libraries once (`explorer.kernels.native_build`, ``explorer
build-kernels``): warnings are errors, the compiler is in the library name, a process without a
compiler loads what was built, and the kernels run clean under AddressSanitizer and
UndefinedBehaviorSanitizer."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from explorer.cli.main import main
from explorer.kernels import native_build

REPO = Path(__file__).resolve().parents[2]
COMPILER = native_build.find_compiler()
needs_compiler = pytest.mark.skipif(COMPILER is None, reason="no C compiler (cc, gcc) on PATH")


@needs_compiler
def test_a_warning_fails_the_build(tmp_path: Path) -> None:
    source = tmp_path / "warns.c"
    source.write_text("int f(int x) { int unused; return x; }\n")
    flags = native_build.flag_variants()[0]
    assert {"-Wall", "-Wextra", "-Werror"} <= set(flags)
    out = tmp_path / "warns.so"
    result = native_build.compile_library(COMPILER, flags, out, source)  # type: ignore[arg-type]
    assert isinstance(result, str) and "unused" in result and "-Werror" in result
    assert not out.exists()


@needs_compiler
def test_the_compiler_and_its_version_name_the_library() -> None:
    ident = native_build.compiler_id(COMPILER)
    family, _, version = ident.partition("-")
    assert family in ("gcc", "clang") and version[0].isdigit(), ident
    name = native_build.library_name(b"int x;", ("-O3",), COMPILER, "qe_conv")
    assert name.startswith(f"qe_conv-{ident}-")
    other = native_build.library_name(b"int x;", ("-O3",), "/usr/bin/some-other-cc", "qe_conv")
    assert other.rsplit("-", 1)[1] == name.rsplit("-", 1)[1]  # same source hash, other compiler
    assert other != name


@needs_compiler
def test_build_kernels_then_load_without_a_compiler(tmp_path: Path, capsys) -> None:
    """``explorer build-kernels`` builds (or verifies) both libraries and exits 0 with one JSON
    line; a process with no compiler on its PATH then loads them; with neither a compiler nor a
    build it exits 2 with a one-line reason."""
    assert main(["build-kernels", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result["libraries"]) == {"qe_kernels", "qe_conv"}
    assert result["compiler"] == native_build.compiler_id(COMPILER)
    cache = Path(result["cache"]).parent
    env = {k: v for k, v in os.environ.items() if k != "CC"}
    env.update(PATH=str(tmp_path / "no-bin"), EXPLORER_CACHE=str(cache))
    code = textwrap.dedent(
        """
        from explorer.kernels import conv_ops, native
        print(native.unavailable_reason(), conv_ops.unavailable_reason())
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout.split() == ["None", "None"], proc
    env["EXPLORER_CACHE"] = str(tmp_path / "empty")
    proc = subprocess.run(
        [sys.executable, "-m", "explorer.cli", "build-kernels"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "explorer build-kernels: error: could not build qe_kernels: no C compiler found "
        "(looked for cc, gcc)"
    )


SANITIZED_CALLS = """
import torch
from explorer.kernels import conv_ops, native
from explorer.kernels.conv_ops import ConvGeometry
assert "-fsanitize=address,undefined" in native.build_info()["flags"], native.build_info()
assert native.available() and conv_ops.unavailable_reason() is None
torch.manual_seed(0)
x = torch.randint(-128, 128, (3, 70), dtype=torch.int8)
w = torch.randint(-128, 128, (5, 70), dtype=torch.int8)
assert torch.equal(native.int8_gemm(x, w).long(), x.long() @ w.long().T)
xf = torch.randn(3, 64)
codes = torch.randint(0, 256, (6, 32), dtype=torch.uint8)
native.wo_linear(xf, codes, torch.rand(6, 2), None, bits=4, group_size=32)
for isa in native.supported_isas():  # M = 1 (the AVX-512 row kernels): K tails, g32 in a block
    native.set_isa(isa)
    w8 = torch.randint(-128, 128, (17, 1056), dtype=torch.int8)
    native.wo_linear(torch.randn(1, 1056), w8, torch.rand(17, 33), None, bits=8, group_size=32)
    w4 = torch.randint(0, 256, (17, 100), dtype=torch.uint8)
    s4, z4 = torch.rand(17, 1), torch.rand(17, 1)
    native.wo_linear(torch.randn(1, 200), w4, s4, z4, bits=4, group_size=200)
native.set_isa(None)
g = ConvGeometry(5, 5, (3, 3), (2, 1), (1, 2), (1, 2), 1)
img = torch.randn(2, 5, 7, 9)
conv_ops.im2col(img, g, 64)
conv_ops.quantize_u8_nhwc(img, 0.1, 3, 8, False)
dw = ConvGeometry(5, 5, (3, 3), (2, 2), (1, 1), (2, 2), 5)
from explorer.kernels.conv_ops import DWCONV_WO, DepthwiseWOState
for bits in (8, 3):
    data = torch.randint(0, 4, (45 * bits // 8 + 1,), dtype=torch.uint8)
    state = DepthwiseWOState(dw, bits, data, torch.rand(5), torch.zeros(5), None)
    DWCONV_WO.run(state, img)
from explorer.kernels import lowbit
from explorer.quant.config import QuantConfig
from explorer.quant.qtensor import QuantizedWeight
w3 = QuantConfig(weight_bits=3, granularity="group", group_size=32, symmetric=False)
for cfg, k in ((QuantConfig(weight_bits=2), 100), (w3, 64)):
    packed = lowbit.pack(QuantizedWeight.from_float(torch.randn(17, k), cfg))
    for isa in native.supported_isas():
        native.set_isa(isa)
        lowbit.wo_linear(torch.randn(5, k), packed, torch.randn(17))
    qw = QuantizedWeight.from_float(torch.randn(17, k), cfg)
    xq = torch.randint(-128, 128, (9, k), dtype=torch.int8)  # an 8-row tile, then one row
    dyn = lowbit.bind_a8_dynamic(lowbit.pack_a8(qw), None, per_token=True, symmetric=False)
    for isa in native.supported_isas():
        native.set_isa(isa)
        lowbit.a8_linear(xq, torch.rand(9), torch.arange(9), lowbit.pack_a8(qw), torch.randn(17))
        dyn(torch.randn(9, k))  # activations quantized in C (qe_lb8_dyn_linear)
native.set_isa(None)
from explorer.kernels.base import LinearSpec
from explorer.kernels.conv_ops import CONV_A8, DWCONV_A8
pw = ConvGeometry(5, 7, (1, 1), (1, 1), (0, 0), (1, 1), 1)
same = ConvGeometry(5, 17, (3, 3), (1, 1), (1, 1), (1, 1), 1)
for geom in (g, pw, same, dw):  # every activation mode of both int8 kernels, every path
    k = geom.in_channels // geom.groups * geom.kernel_size[0] * geom.kernel_size[1]
    for gran in ("tensor", "token"):
        gran = "tensor" if geom.depthwise else gran
        cfg = QuantConfig(act_bits=8, act_granularity=gran, act_symmetric=gran == "tensor")
        spec = LinearSpec.from_config(cfg, geom.out_channels, k)
        qw = QuantizedWeight.from_float(torch.randn(geom.out_channels, k), cfg)
        kernel = DWCONV_A8 if geom.depthwise else CONV_A8
        state = kernel.prepare(spec, geom, qw, torch.randn(geom.out_channels), None)
        for isa in ("scalar", "avx2", "avx512_vnni"):
            if conv_ops.conv_isa_supported(isa):
                conv_ops.force_conv_isa(isa)
                kernel.run(state, img)
                kernel.run(state, img.contiguous(memory_format=torch.channels_last))
conv_ops.force_conv_isa(None)
print("clean")
# an output buffer one row short: the sanitizer must stop this write
small = torch.empty(1, 64)
conv_ops._lib().qe_im2col_f32(img.data_ptr(), small.data_ptr(), 2, 5, 7, 9, 3, 3, 2, 1, 1, 2,
                              1, 2, 4, 9, 64, 1)
print("not caught")
"""


@pytest.mark.slow
@needs_compiler
def test_kernels_under_address_and_undefined_behaviour_sanitizers(tmp_path: Path) -> None:
    """Both libraries built with ``-fsanitize=address,undefined`` (``EXPLORER_SANITIZE=1``)
    into a temporary cache, a few calls of every kernel family in a subprocess with the
    sanitizer runtimes preloaded: they run clean, and an overflowing write is caught."""
    runtimes = []
    for lib in ("libasan.so", "libubsan.so"):
        path = subprocess.run(
            [COMPILER, f"-print-file-name={lib}"],
            capture_output=True,
            text=True,  # type: ignore[list-item]
        ).stdout.strip()
        if not os.path.isabs(path) or not os.path.exists(path):
            pytest.skip(f"{lib} not found by {COMPILER}: no sanitizer runtime to preload")
        runtimes.append(path)
    env = {
        **os.environ,
        "EXPLORER_SANITIZE": "1",
        "EXPLORER_CACHE": str(tmp_path / "cache"),
        "LD_PRELOAD": " ".join(runtimes),
        "ASAN_OPTIONS": "detect_leaks=0",  # CPython's own allocations live to exit by design
    }
    proc = subprocess.run(
        [sys.executable, "-c", SANITIZED_CALLS],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )
    assert "clean" in proc.stdout, proc.stderr[-3000:]
    assert "not caught" not in proc.stdout
    assert proc.returncode != 0 and "heap-buffer-overflow" in proc.stderr, proc.stderr[-3000:]
    assert "qe_im2col_f32" in proc.stderr
    built = sorted(p.name for p in (tmp_path / "cache" / "kernels").glob("*.so"))
    assert [n.split("-")[0] for n in built] == ["qe_conv", "qe_kernels"]
    shutil.rmtree(tmp_path / "cache")
