"""Tests for the native C kernels (explorer.kernels.native).

References are computed here, independently of the kernels: 4-bit codes are unpacked in this
file and every reference product is done in float64 (or int64 for the exact integer GEMM).
Each numerical test runs on the AVX2 path and on the portable scalar fallback.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from explorer.kernels import native, native_build

if not native.available():
    pytest.skip(
        f"native kernels unavailable: {native.unavailable_reason()}", allow_module_level=True
    )

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

REL_TOL = 1e-5
REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------------------
# independent references
# ----------------------------------------------------------------------------------------


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K/2] -> int64 [N, K]; element 2j is the low nibble of byte j."""
    p = packed.to(torch.int64)
    lo = p & 0xF
    hi = (p >> 4) & 0xF
    return torch.stack([lo, hi], dim=-1).reshape(p.shape[0], -1)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """int [N, K] in [0, 15] -> uint8 [N, K/2] (used only to build inputs)."""
    c = codes.to(torch.int64)
    return (c[:, 0::2] | (c[:, 1::2] << 4)).to(torch.uint8)


def ref_wo_linear(
    x: torch.Tensor,
    codes: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    bits: int,
    group: int,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    q = unpack_nibbles(codes) if bits == 4 else codes.to(torch.int64)
    n, k = q.shape
    if zeros is None:
        z = torch.full((n, k // group), 8.0 if bits == 4 else 0.0, dtype=torch.float64)
    else:
        z = zeros.double()
    w = scales.double().repeat_interleave(group, dim=1) * (
        q.double() - z.repeat_interleave(group, dim=1)
    )
    y = x.double().reshape(-1, k) @ w.T
    if bias is not None:
        y = y + bias.double()
    return y.reshape(*x.shape[:-1], n)


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.double() - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def make_wo_inputs(
    m: int, n: int, k: int, bits: int, group: int, zeros: bool, bias: bool, seed: int = 0
) -> tuple:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    if bits == 4:
        codes = pack_nibbles(torch.randint(0, 16, (n, k), generator=g))
    else:
        codes = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    scales = torch.rand(n, k // group, generator=g) * 0.1 + 0.01
    z = None
    if zeros:
        hi = 15.0 if bits == 4 else 20.0
        z = torch.rand(n, k // group, generator=g) * hi - (0.0 if bits == 4 else 10.0)
    b = torch.randn(n, generator=g) if bias else None
    return x, codes, scales, z, b


# ----------------------------------------------------------------------------------------
# int8_gemm: exact
# ----------------------------------------------------------------------------------------


def exact(xq: torch.Tensor, wq: torch.Tensor) -> torch.Tensor:
    return xq.to(torch.int64) @ wq.to(torch.int64).T


@pytest.mark.parametrize(
    ("m", "n", "k"),
    [(1, 64, 4096), (5, 33, 4096), (1, 1, 1), (3, 7, 33), (17, 9, 100), (8, 31, 4111)],
)
def test_int8_gemm_random_exact(isa: str, m: int, n: int, k: int) -> None:
    g = torch.Generator().manual_seed(m * 1000 + n + k)
    xq = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    wq = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    out = native.int8_gemm(xq, wq)
    assert out.dtype == torch.int32 and out.shape == (m, n)
    assert torch.equal(out.to(torch.int64), exact(xq, wq))


@pytest.mark.parametrize(("xv", "wv"), [(-128, -128), (127, -128), (-128, 127), (127, 127)])
def test_int8_gemm_extremes_k4096(isa: str, xv: int, wv: int) -> None:
    k = 4096
    xq = torch.full((3, k), xv, dtype=torch.int8)
    wq = torch.full((5, k), wv, dtype=torch.int8)
    out = native.int8_gemm(xq, wq)
    assert torch.equal(out.to(torch.int64), exact(xq, wq))
    assert int(out[0, 0]) == k * xv * wv


def test_int8_gemm_extremes_k65536(isa: str) -> None:
    k = 65536
    xq = torch.full((2, k), -128, dtype=torch.int8)
    wq = torch.full((3, k), -128, dtype=torch.int8)
    wq[1] = 127
    out = native.int8_gemm(xq, wq)
    assert torch.equal(out.to(torch.int64), exact(xq, wq))
    assert int(out[0, 0]) == k * 128 * 128 == 2**30


def test_int8_gemm_mixed_extremes(isa: str) -> None:
    g = torch.Generator().manual_seed(7)
    choices = torch.tensor([-128, 127, -1, 0, 1], dtype=torch.int8)
    xq = choices[torch.randint(0, 5, (6, 2000), generator=g)]
    wq = choices[torch.randint(0, 5, (11, 2000), generator=g)]
    assert torch.equal(native.int8_gemm(xq, wq).to(torch.int64), exact(xq, wq))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    m=st.integers(1, 12),
    n=st.integers(1, 40),
    k=st.integers(1, 300),
    seed=st.integers(0, 2**31 - 1),
)
def test_int8_gemm_property(isa: str, m: int, n: int, k: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    xq = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    wq = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    assert torch.equal(native.int8_gemm(xq, wq).to(torch.int64), exact(xq, wq))


def test_int8_gemm_empty() -> None:
    xq = torch.zeros((0, 64), dtype=torch.int8)
    wq = torch.zeros((5, 64), dtype=torch.int8)
    assert native.int8_gemm(xq, wq).shape == (0, 5)


# ----------------------------------------------------------------------------------------
# wo_linear
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("zeros", [False, True])
@pytest.mark.parametrize("group", [0, 32, 64, 128])  # 0: per channel (G = K)
@pytest.mark.parametrize("m", [1, 3, 8, 33])
def test_wo_linear_matches_reference(
    wo_isa: str, bits: int, zeros: bool, group: int, m: int
) -> None:
    n, k = 37, 512
    g = k if group == 0 else group
    x, codes, scales, z, b = make_wo_inputs(m, n, k, bits, g, zeros, bias=True, seed=m + g)
    y = native.wo_linear(x, codes, scales, z, bits=bits, group_size=g, bias=b)
    assert y.dtype == torch.float32 and y.shape == (m, n)
    assert rel_err(y, ref_wo_linear(x, codes, scales, z, bits, g, b)) <= REL_TOL


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize(
    ("k", "group"), [(4096, 128), (4096, 32), (96, 96), (40, 40), (200, 200), (192, 96)]
)
def test_wo_linear_shapes(wo_isa: str, bits: int, k: int, group: int) -> None:
    """Per-channel with K not a multiple of 32/64, and groups that straddle 64-blocks."""
    for m in (1, 5):
        x, codes, scales, z, b = make_wo_inputs(m, 19, k, bits, group, True, True, seed=k)
        y = native.wo_linear(x, codes, scales, z, bits=bits, group_size=group, bias=b)
        assert rel_err(y, ref_wo_linear(x, codes, scales, z, bits, group, b)) <= REL_TOL


def test_wo_linear_leading_dims() -> None:
    x, codes, scales, z, b = make_wo_inputs(6, 10, 128, 4, 32, False, True)
    x3 = x.reshape(2, 3, 128)
    y = native.wo_linear(x3, codes, scales, None, bits=4, group_size=32, bias=b)
    assert y.shape == (2, 3, 10)
    assert rel_err(y, ref_wo_linear(x3, codes, scales, None, 4, 32, b)) <= REL_TOL


def test_wo_linear_simd_matches_scalar() -> None:
    """The SIMD path the library takes against its scalar code. Without SIMD both would be the
    scalar code, and the test would compare it with itself: it skips, naming what is missing."""
    if native.isa() == "scalar":
        missing = ", ".join(native.missing_isa_features("avx2")) or "what the SIMD paths need"
        pytest.skip(f"this CPU lacks {missing}: the library takes the scalar path")
    x, codes, scales, z, b = make_wo_inputs(9, 50, 1024, 4, 64, True, True, seed=3)
    y1 = native.wo_linear(x, codes, scales, z, bits=4, group_size=64, bias=b)
    native.force_scalar(True)
    try:
        y2 = native.wo_linear(x, codes, scales, z, bits=4, group_size=64, bias=b)
    finally:
        native.force_scalar(False)
    assert rel_err(y1, y2.double()) <= REL_TOL


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    m=st.integers(1, 40),
    n=st.integers(1, 70),
    bits=st.sampled_from([4, 8]),
    group=st.sampled_from([32, 64, 128, 0]),
    ngroups=st.integers(1, 6),
    zeros=st.booleans(),
    bias=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_wo_linear_property(
    wo_isa: str,
    m: int,
    n: int,
    bits: int,
    group: int,
    ngroups: int,
    zeros: bool,
    bias: bool,
    seed: int,
) -> None:
    if group == 0:  # per channel, any even K
        k = 2 * ngroups * 17
        group = k
    else:
        k = group * ngroups
    x, codes, scales, z, b = make_wo_inputs(m, n, k, bits, group, zeros, bias, seed=seed)
    y = native.wo_linear(x, codes, scales, z, bits=bits, group_size=group, bias=b)
    assert y.shape == (m, n)
    assert rel_err(y, ref_wo_linear(x, codes, scales, z, bits, group, b)) <= REL_TOL


# ----------------------------------------------------------------------------------------
# w8a8_linear
# ----------------------------------------------------------------------------------------


def ref_w8a8(
    xq: torch.Tensor,
    xs: torch.Tensor,
    xz: torch.Tensor | None,
    wq: torch.Tensor,
    ws: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    m, k = xq.reshape(-1, xq.shape[-1]).shape
    xs = xs.double().reshape(-1).expand(m)
    xd = xq.reshape(m, k).double()
    if xz is not None:
        xd = xd - xz.double().reshape(-1).expand(m)[:, None]
    y = (xd * xs[:, None]) @ (wq.double() * ws.double()[:, None]).T
    if bias is not None:
        y = y + bias.double()
    return y.reshape(*xq.shape[:-1], wq.shape[0])


@pytest.mark.parametrize("asym", [False, True])
@pytest.mark.parametrize(("m", "n", "k"), [(1, 64, 4096), (7, 33, 1000), (32, 48, 256), (3, 5, 7)])
def test_w8a8_linear_matches_reference(isa: str, asym: bool, m: int, n: int, k: int) -> None:
    g = torch.Generator().manual_seed(m + n + k)
    xq = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    wq = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    xs = torch.rand(m, generator=g) * 0.05 + 0.001
    ws = torch.rand(n, generator=g) * 0.05 + 0.001
    bias = torch.randn(n, generator=g)
    xz = torch.randint(-20, 20, (m,), generator=g, dtype=torch.int32) if asym else None
    wsum = native.weight_row_sums(wq)
    assert torch.equal(wsum.to(torch.int64), wq.to(torch.int64).sum(1))
    y = native.w8a8_linear(xq, xs, xz, wq, ws, wsum if asym else None, bias)
    assert y.dtype == torch.float32 and y.shape == (m, n)
    assert rel_err(y, ref_w8a8(xq, xs, xz, wq, ws, bias)) <= REL_TOL


def test_w8a8_linear_per_tensor_scale_and_leading_dims() -> None:
    g = torch.Generator().manual_seed(1)
    xq = torch.randint(-128, 128, (2, 3, 160), generator=g, dtype=torch.int8)
    wq = torch.randint(-128, 128, (12, 160), generator=g, dtype=torch.int8)
    xs = torch.tensor(0.02)
    xz = torch.tensor([5], dtype=torch.int32)
    ws = torch.rand(12, generator=g) * 0.01
    y = native.w8a8_linear(xq, xs, xz, wq, ws, native.weight_row_sums(wq))
    assert y.shape == (2, 3, 12)
    assert rel_err(y, ref_w8a8(xq, xs, xz, wq, ws, None)) <= REL_TOL


def test_w8a8_extremes_exact_accumulation(isa: str) -> None:
    k = 8192
    xq = torch.full((2, k), -128, dtype=torch.int8)
    wq = torch.full((3, k), -128, dtype=torch.int8)
    y = native.w8a8_linear(xq, torch.ones(2), None, wq, torch.ones(3), None)
    assert torch.all(y == float(k * 128 * 128))


# ----------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------


def _wo_args(**over: object) -> dict:
    x, codes, scales, z, b = make_wo_inputs(2, 8, 128, 4, 32, True, True)
    args: dict = {
        "x": x,
        "codes": codes,
        "scales": scales,
        "zeros": z,
        "bits": 4,
        "group_size": 32,
        "bias": b,
    }
    args.update(over)
    return args


def _call_wo(a: dict) -> torch.Tensor:
    return native.wo_linear(
        a["x"],
        a["codes"],
        a["scales"],
        a["zeros"],
        bits=a["bits"],
        group_size=a["group_size"],
        bias=a["bias"],
    )


@pytest.mark.parametrize(
    ("over", "name"),
    [
        ({"x": torch.randn(2, 128, dtype=torch.float64)}, "x"),
        ({"x": torch.randn(128, 2).T}, "x"),
        ({"x": torch.randn(2, 128, device="meta")}, "x"),
        ({"x": torch.randn(2, 0)}, "x"),
        ({"codes": torch.zeros(8, 128, dtype=torch.uint8)}, "codes"),
        ({"codes": torch.zeros(8, 64, dtype=torch.int8)}, "codes"),
        ({"codes": torch.zeros(8 * 64, dtype=torch.uint8)}, "codes"),
        ({"scales": torch.rand(8, 3)}, "scales"),
        ({"scales": torch.rand(8, 4, dtype=torch.float16)}, "scales"),
        ({"zeros": torch.rand(7, 4)}, "zeros"),
        ({"bias": torch.rand(9)}, "bias"),
        ({"group_size": 48}, "group_size"),
        ({"group_size": 16, "scales": torch.rand(8, 8), "zeros": None}, "group_size"),
        ({"group_size": 0}, "group_size"),
        ({"bits": 3}, "bits"),
    ],
)
def test_wo_linear_rejects_bad_inputs(over: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        _call_wo(_wo_args(**over))


def test_int8_gemm_rejects_bad_inputs() -> None:
    xq = torch.zeros(2, 64, dtype=torch.int8)
    wq = torch.zeros(3, 64, dtype=torch.int8)
    with pytest.raises(ValueError, match="xq"):
        native.int8_gemm(xq.float(), wq)
    with pytest.raises(ValueError, match="xq"):
        native.int8_gemm(torch.zeros(2, 2, 64, dtype=torch.int8), wq)
    with pytest.raises(ValueError, match="wq"):
        native.int8_gemm(xq, torch.zeros(3, 65, dtype=torch.int8))
    with pytest.raises(ValueError, match="wq"):
        native.int8_gemm(xq, torch.zeros(64, 3, dtype=torch.int8).T)
    with pytest.raises(ValueError, match="xq"):
        native.int8_gemm(torch.zeros(64, 2, dtype=torch.int8).T, wq)
    with pytest.raises(ValueError, match="K"):
        native.int8_gemm(
            torch.zeros(1, 131072, dtype=torch.int8), torch.zeros(1, 131072, dtype=torch.int8)
        )


def test_w8a8_rejects_bad_inputs() -> None:
    xq = torch.zeros(2, 64, dtype=torch.int8)
    wq = torch.zeros(3, 64, dtype=torch.int8)
    xs, ws = torch.ones(2), torch.ones(3)
    with pytest.raises(ValueError, match="x_scale"):
        native.w8a8_linear(xq, torch.ones(3), None, wq, ws, None)
    with pytest.raises(ValueError, match="x_scale"):
        native.w8a8_linear(xq, torch.ones(2, dtype=torch.float64), None, wq, ws, None)
    with pytest.raises(ValueError, match="w_scale"):
        native.w8a8_linear(xq, xs, None, wq, torch.ones(4), None)
    with pytest.raises(ValueError, match="w_sum"):
        native.w8a8_linear(xq, xs, torch.zeros(2, dtype=torch.int32), wq, ws, None)
    with pytest.raises(ValueError, match="x_zero"):
        native.w8a8_linear(xq, xs, torch.zeros(2), wq, ws, torch.zeros(3, dtype=torch.int32))
    with pytest.raises(ValueError, match="bias"):
        native.w8a8_linear(xq, xs, None, wq, ws, None, torch.ones(2))
    with pytest.raises(ValueError, match="wq"):
        native.w8a8_linear(xq, xs, None, torch.zeros(3, 63, dtype=torch.int8), ws, None)


# ----------------------------------------------------------------------------------------
# build / availability
# ----------------------------------------------------------------------------------------


def test_available_and_build_info() -> None:
    assert native.available() is True
    assert native.unavailable_reason() is None
    info = native.build_info()
    assert info["available"] is True
    assert info["isa"] in native.ISAS and info["isa"] in info["isas"]
    library = Path(str(info["path"]))
    assert info["sha256"] == hashlib.sha256(library.read_bytes()).hexdigest()
    assert native_build.checksum_path(library).read_text().split()[0] == info["sha256"]


def _run_py(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=REPO,
        timeout=300,
    )


def test_disabled_by_env() -> None:
    proc = _run_py(
        """
        from explorer.kernels import native
        assert native.available() is False
        print(native.unavailable_reason())
        """,
        {"EXPLORER_NATIVE": "0"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "EXPLORER_NATIVE" in proc.stdout


def test_no_compiler_reason(tmp_path: Path) -> None:
    """Without a compiler and without a cached build: unavailable, with a clear reason."""
    env = {k: v for k, v in os.environ.items() if k != "CC"}
    env.update(PATH=str(tmp_path), EXPLORER_CACHE=str(tmp_path / "empty-cache"))
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from explorer.kernels import native\n"
            "assert native.available() is False\n"
            "print(native.unavailable_reason())",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "no C compiler found (looked for cc, gcc)" in proc.stdout


def test_concurrent_cold_builds(tmp_path: Path) -> None:
    """Two processes compiling into the same empty cache dir both succeed (lock + rename)."""
    code = """
        import torch
        from explorer.kernels import native
        assert native.available(), native.unavailable_reason()
        x = torch.full((1, 64), -128, dtype=torch.int8)
        assert int(native.int8_gemm(x, x)[0, 0]) == 64 * 128 * 128
        print("ok")
        """
    env = {"EXPLORER_CACHE": str(tmp_path / "cache")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
            cwd=REPO,
        )
        for _ in range(2)
    ]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        assert out.strip() == "ok"
    built = list((tmp_path / "cache" / "kernels").glob("qe_kernels-*.so"))
    assert len(built) == 1
    assert native_build.verify(built[0]) is None
    assert not list((tmp_path / "cache" / "kernels").glob("*.tmp"))


# --- a damaged cached library is rebuilt, not loaded --------------------------------------------

GEMM_CHECK = """
    import json, torch
    from explorer.kernels import native
    assert native.available(), native.unavailable_reason()
    x = torch.full((1, 64), -128, dtype=torch.int8)
    assert int(native.int8_gemm(x, x)[0, 0]) == 64 * 128 * 128
    print(json.dumps(native.build_info()))
    """


@pytest.fixture(scope="module")
def built_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding one good build (made by a child process, as a user's run would)."""
    cache = tmp_path_factory.mktemp("built-cache")
    proc = _run_py(GEMM_CHECK, {"EXPLORER_CACHE": str(cache)})
    assert proc.returncode == 0, proc.stderr
    return cache


def _copy_cache(built: Path, dest: Path) -> Path:
    """A copy of the good cache; returns the path of its library."""
    shutil.copytree(built, dest)
    (library,) = (dest / "kernels").glob("qe_kernels-*.so")
    return library


def _truncate(library: Path) -> None:
    with open(library, "r+b") as fh:
        fh.truncate(library.stat().st_size // 2)


def _flip_a_byte(library: Path) -> None:
    data = bytearray(library.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, valid header: only the checksum can tell
    library.write_bytes(bytes(data))


def _drop_checksum(library: Path) -> None:
    native_build.checksum_path(library).unlink()


@pytest.mark.slow
def test_loading_a_truncated_library_kills_the_process(built_cache: Path, tmp_path: Path) -> None:
    """Why the check exists: dlopen of the truncated file (what the old loader did) dies of
    SIGBUS (exit 135 in a shell) instead of raising; the rebuild test below loads such a file."""
    library = _copy_cache(built_cache, tmp_path / "cache")
    _truncate(library)
    code = f"import torch, ctypes; ctypes.CDLL({str(library)!r}); print('loaded')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "loaded" not in proc.stdout, proc
    assert native_build.elf_problem(library) is not None
    assert "truncated" in str(native_build.verify(library))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (_truncate, "truncated"),
        (_flip_a_byte, "sha256 does not match"),
        (_drop_checksum, "no checksum recorded"),
    ],
)
def test_a_damaged_cached_library_is_rebuilt(
    built_cache: Path, tmp_path: Path, damage: Callable[[Path], None], why: str
) -> None:
    library = _copy_cache(built_cache, tmp_path / "cache")
    good = library.read_bytes()
    damage(library)
    proc = _run_py(GEMM_CHECK, {"EXPLORER_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr  # before the fix: -7 (SIGBUS) for the truncation
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["path"] == str(library)
    assert why in info["rebuilt_because"]
    assert "compile_seconds" in info
    assert library.read_bytes() == good  # the compiler is deterministic for the same input
    assert native_build.verify(library) is None
    assert not list(library.parent.glob("*.tmp"))


@pytest.mark.slow
def test_a_damaged_library_without_a_compiler_is_a_message(
    built_cache: Path, tmp_path: Path
) -> None:
    library = _copy_cache(built_cache, tmp_path / "cache")
    _truncate(library)
    env = {k: v for k, v in os.environ.items() if k != "CC"}
    env.update(PATH=str(tmp_path / "no-bin"), EXPLORER_CACHE=str(tmp_path / "cache"))
    code = "from explorer.kernels import native\nprint(native.unavailable_reason())"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert f"cached kernel library {library} is damaged (truncated" in proc.stdout
    assert "no C compiler was found to rebuild it" in proc.stdout


def test_kernel_calls_without_the_library_raise_kernel_error() -> None:
    proc = _run_py(
        """
        import torch
        from explorer.errors import KernelError
        from explorer.kernels import native
        x = torch.zeros(1, 64, dtype=torch.int8)
        try:
            native.int8_gemm(x, x)
        except KernelError as exc:
            print(exc)
        """,
        {"EXPLORER_NATIVE": "0"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "native kernels unavailable: disabled by EXPLORER_NATIVE=0"


def test_elf_problem_names_what_is_wrong(tmp_path: Path) -> None:
    text = tmp_path / "text.so"
    text.write_bytes(b"not a library at all, but long enough to hold an ELF header......")
    assert native_build.elf_problem(text) == "not an ELF shared object"
    assert native_build.elf_problem(tmp_path / "missing.so").startswith("cannot read it")
    assert native_build.verify(tmp_path / "missing.so") == "not built yet"


def test_prebuild_command_prints_the_build(built_cache: Path) -> None:
    """``python -m explorer.kernels.native`` (run by the Dockerfile) verifies the cached build."""
    proc = subprocess.run(
        [sys.executable, "-m", "explorer.kernels.native"],
        capture_output=True,
        text=True,
        env={**os.environ, "EXPLORER_CACHE": str(built_cache)},
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["available"] is True and "compile_seconds" not in info  # reused, not rebuilt


# --- byte_sum: the streaming read behind the benchmark's bandwidth floor ----------------------


@pytest.mark.parametrize("nbytes", [1, 31, 128, 4095, 4097, (1 << 20) + 77])
@pytest.mark.parametrize("threads", [1, 2])
def test_byte_sum_equals_the_sum_of_the_bytes(wo_isa: str, nbytes: int, threads: int) -> None:
    gen = torch.Generator().manual_seed(nbytes)
    t = torch.randint(0, 256, (nbytes,), generator=gen, dtype=torch.uint8)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert native.byte_sum(t) == int(t.to(torch.int64).sum())
    finally:
        torch.set_num_threads(before)


def test_byte_sum_reads_any_dtype_as_bytes() -> None:
    w = torch.full((64, 33), -1.0)  # 0xBF800000: bytes 0x00 0x00 0x80 0xBF
    assert native.byte_sum(w) == 64 * 33 * (0x80 + 0xBF)
    assert native.byte_sum(torch.empty(0)) == 0
    with pytest.raises(ValueError, match="contiguous CPU tensor"):
        native.byte_sum(torch.zeros(8, 8).T)


# --- w8a8_dynamic_linear: activation quantization in C, bit-identical to the torch path -------


def _dynamic_reference(
    x: torch.Tensor, wq: torch.Tensor, ws: torch.Tensor, bias: torch.Tensor, gran: str, sym: bool
) -> torch.Tensor:
    """Quantize x with the torch primitives, then the plain int8 kernel."""
    from explorer.kernels.activation import quantize_activation, to_int8_domain
    from explorer.kernels.base import LinearSpec
    from explorer.quant.config import QuantConfig

    config = QuantConfig(weight_bits=8, act_bits=8, act_granularity=gran, act_symmetric=sym)
    spec = LinearSpec.from_config(config, wq.shape[0], wq.shape[1], "cpu")
    q, xs, xz = quantize_activation(x, spec, None)
    xq, xz = to_int8_domain(q, xz, sym)
    zx = None if sym else xz.reshape(-1).to(torch.int32).contiguous()
    wsum = native.weight_row_sums(wq)
    return native.w8a8_linear(xq.contiguous(), xs.reshape(-1).contiguous(), zx, wq, ws, wsum, bias)


@pytest.mark.parametrize("gran", ["token", "tensor"])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize(
    "inputs", ["gaussian", "positive", "zeros", "ties", "one_row_zero"], ids=str
)
@pytest.mark.parametrize("shape", [(1, 48, 4096), (3, 17, 100), (33, 40, 64), (2, 9, 1)])
def test_w8a8_dynamic_equals_quantizing_in_torch(
    isa: str, gran: str, sym: bool, inputs: str, shape: tuple[int, int, int]
) -> None:
    from explorer.quant.primitives import SCALE_EPS

    m, n, k = shape
    gen = torch.Generator().manual_seed(m * 1000 + k)
    x = {
        "gaussian": lambda: torch.randn(m, k, generator=gen) * 3,
        "positive": lambda: torch.rand(m, k, generator=gen) + 0.5,
        "zeros": lambda: torch.zeros(m, k),
        # multiples of half a step: x / scale lands on .5 ties, which round to even
        "ties": lambda: torch.randint(-254, 255, (m, k), generator=gen).float() / 2,
        "one_row_zero": lambda: torch.cat(
            [torch.zeros(1, k), torch.randn(m - 1, k, generator=gen)]
        ),
    }[inputs]()
    if inputs == "ties":
        x[:, 0] = 127.0  # symmetric scale exactly 1.0
    wq = torch.randint(-128, 128, (n, k), generator=gen, dtype=torch.int8)
    ws = torch.rand(n, generator=gen) + 0.1
    bias = torch.randn(n, generator=gen)
    ref = _dynamic_reference(x, wq, ws, bias, gran, sym)
    y = native.w8a8_dynamic_linear(
        x,
        wq,
        ws,
        native.weight_row_sums(wq),
        bias,
        per_token=gran == "token",
        symmetric=sym,
        eps=SCALE_EPS,
    )
    assert torch.equal(y, ref)


def test_w8a8_dynamic_rejects_bad_input() -> None:
    wq = torch.zeros(3, 64, dtype=torch.int8)
    x = torch.randn(2, 64)
    with pytest.raises(ValueError, match="w_sum is required"):
        native.w8a8_dynamic_linear(
            x, wq, torch.ones(3), None, per_token=True, symmetric=False, eps=1e-38
        )
    with pytest.raises(ValueError, match="x"):
        native.w8a8_dynamic_linear(
            x.double(), wq, torch.ones(3), None, per_token=True, symmetric=True, eps=1e-38
        )
    with pytest.raises(ValueError):
        native.w8a8_dynamic_linear(
            torch.randn(2, 63), wq, torch.ones(3), None, per_token=True, symmetric=True, eps=1e-38
        )
