"""Benchmark the native integer kernels against torch's CPU linear paths.

K = N = 4096 (one LLM-sized projection), M in {1, 8, 32} rows, 2 threads by default.  Every
candidate rotates over enough weight copies that its weights total more than 4 x 32 MiB, so
each call streams its weights from DRAM (defeating the 32 MiB L3) as in real decoding.
Candidates are interleaved (shuffled order every repetition) so drifting machine load hits
all of them alike; the reported figure is the median over the repetitions.

Candidates:
  fp32            torch F.linear, float32 weights
  bf16            torch F.linear, bfloat16 activations and weights
  int4pack-g128   torch._weight_int4pack_mm_for_cpu, bf16 activations, group 128
  fbgemm-dyn-int8 torch.ops.quantized.linear_dynamic (per-channel int8, dynamic activations)
  read-stream     native.byte_sum over 16 MiB buffers: the streaming read rate, the floor of
                  every weight-streaming kernel (its "weight GB/s" is the rate to compare with)
  wo4-g32/-g128/-pc
                  native.wo_linear, 4-bit, float32 activations (pc: per channel)
  wo8-pc          native.wo_linear, 8-bit per-channel, float32 activations
  w8a8            native.w8a8_linear on pre-quantized int8 activations (kernel only)
  w8a8+quant      the same plus per-token dynamic activation quantization in torch ops
  w4a8-g128/-pc   native W4A8 on repacked panels, per-token dynamic int8 activations quantized
                  in C (VNNI CPUs only: the layer's kernel there)
  wo3-g128, wo2-g128, wo2-g32, wo2-pc
                  lowbit.wo_linear: 3- and 2-bit weight-only, float32 activations (bit-plane
                  table lookup, explorer/kernels/csrc/qe_lowbit.c)
  w3a8-g128, w2a8-g128, w2a8-pc
                  int3/int2-w?a8-native layers: per-token int8 activations (quantized in C) x
                  3/2-bit codes decoded to bytes for vpdpbusd

``--clock cpu`` times each call in this thread's CPU time (``time.thread_time``; use it with
``--threads 1``): on a machine other jobs share, waiting for a core is not counted, and the
foreign-load filter below is off (memory traffic of others still slows a call down).

Shared machines: on Linux the CPU time used by *other* processes is measured over each batch
of repetitions (``/proc/stat`` minus this process's CPU time); a batch during which others used
more than ``--foreign-max`` of the machine is discarded and repeated (OpenMP kernels slow down
several-fold when a core is taken away from them mid-call).  ``--foreign-max 1`` disables this.

Prints a table, then one JSON line (the last line on stdout).

Usage: python benchmarks/native_kernels.py [--reps 30] [--threads 2] [--m 1 8 32] [--clock cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from explorer.kernels import lowbit, native  # noqa: E402

MIB = 1 << 20
ROTATE_BYTES = 4 * 32 * MIB  # > 4x the 32 MiB L3


def _copies(nbytes: int) -> int:
    return ROTATE_BYTES // nbytes + 1


class Candidate:
    """A named callable over a rotating list of weight sets."""

    clock: Callable[[], float] = time.perf_counter

    def __init__(self, name: str, fn: Callable[[object], object], weights: list, nbytes: int):
        self.name = name
        self.fn = fn
        self.weights = weights
        self.nbytes = nbytes  # bytes of weight data streamed per call
        self.i = 0
        self.times: list[float] = []

    def run(self, record: bool) -> None:
        w = self.weights[self.i % len(self.weights)]
        self.i += 1
        t0 = self.clock()
        self.fn(w)
        dt = self.clock() - t0
        if record:
            self.times.append(dt)


def _cpu_busy_seconds() -> float | None:
    """Machine-wide non-idle CPU seconds (Linux), or None where unavailable."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


class ForeignLoad:
    """Share of the machine's CPU capacity used by other processes during a time window."""

    def __init__(self) -> None:
        self.busy = _cpu_busy_seconds()
        self.own = time.process_time()
        self.wall = time.perf_counter()

    def share(self) -> float:
        busy = _cpu_busy_seconds()
        if busy is None or self.busy is None:
            return 0.0
        wall = time.perf_counter() - self.wall
        foreign = (busy - self.busy) - (time.process_time() - self.own)
        return max(0.0, foreign / (wall * (os.cpu_count() or 1)))


def _quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    amax = x.abs().amax(dim=1).clamp_min(1e-8)
    scale = amax / 127.0
    xq = torch.round(x / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return xq, scale


def build_weights(n: int, k: int, seed: int = 0) -> dict[str, tuple[list, int]]:
    """Weight copies per format: name -> (list of weight objects, bytes per call)."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, tuple[list, int]] = {}

    nb = n * k * 4
    out["fp32"] = ([torch.randn(n, k, generator=g) for _ in range(_copies(nb))], nb)
    nb = n * k * 2
    out["bf16"] = (
        [torch.randn(n, k, generator=g).to(torch.bfloat16) for _ in range(_copies(nb))],
        nb,
    )

    # torch int4pack (group 128): scales_and_zeros bf16 [K/G, N, 2]
    nb = n * k // 2
    packs = []
    for _ in range(_copies(nb)):
        codes = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=g)
        packed = torch._convert_weight_to_int4pack_for_cpu(codes, 2)
        sz = torch.stack(
            [
                torch.rand(k // 128, n, generator=g).to(torch.bfloat16) * 0.02,
                torch.zeros(k // 128, n, dtype=torch.bfloat16),
            ],
            dim=-1,
        ).contiguous()
        packs.append((packed, sz))
    out["int4pack"] = (packs, nb + (k // 128) * n * 4)

    # fbgemm dynamic int8 (per-channel)
    nb = n * k
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pps = []
        for _ in range(_copies(nb)):
            qw = torch.quantize_per_channel(
                torch.randn(n, k, generator=g),
                torch.rand(n, generator=g, dtype=torch.float64) * 0.01 + 0.01,
                torch.zeros(n, dtype=torch.long),
                0,
                torch.qint8,
            )
            pps.append(torch.ops.quantized.linear_prepack(qw, None))
    out["fbgemm"] = (pps, nb)

    # native 4-bit: uint8 [N, K/2] codes (shared by g32 / g128), fp32 scales per group
    nb = 16 * MIB
    out["read-stream"] = (
        [torch.randint(0, 256, (nb,), dtype=torch.uint8, generator=g) for _ in range(_copies(nb))],
        nb,
    )

    nb = n * k // 2
    codes4 = [
        torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, generator=g)
        for _ in range(_copies(nb))
    ]
    for gs in (32, 128, k):
        ws = [(c, torch.rand(n, k // gs, generator=g) * 0.02) for c in codes4]
        out[f"wo4-{_gname(gs, k)}"] = (ws, nb + n * (k // gs) * 4)

    # native int8: int8 [N, K] (shared by wo8 and w8a8)
    nb = n * k
    codes8 = [
        torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g) for _ in range(_copies(nb))
    ]
    out["int8"] = (
        [
            (c, torch.rand(n, 1, generator=g) * 0.01, torch.rand(n, generator=g) * 0.01)
            for c in codes8
        ],
        nb,
    )
    for gs in (128, k) if native.available() and native.packed_path() else ():  # W4A8 panels
        nb = n * k // 2 + n * (k // gs) * 4
        zero_term = torch.zeros(n)
        out[f"w4a8-{_gname(gs, k)}"] = (
            [
                native.bind_w4a8_packed_dynamic(
                    native.pack_int4(c, torch.rand(n, k // gs, generator=g) * 0.02, None, gs),
                    zero_term,
                    None,
                    per_token=True,
                    symmetric=True,
                    eps=1e-8,
                )
                for c in codes4
            ],
            nb,
        )
    if not native.available():
        return out
    for bits, gs in ((2, 128), (3, 128), (2, k)):  # int8 activations x 2/3-bit codes
        nb = n * k * bits // 8 + n * (k // gs) * 12  # codes, fp32 scales, int32 zero terms
        copies_a8 = [_lowbit_a8_weight(n, k, bits, gs, g) for _ in range(_copies(nb))]
        out[f"w{bits}a8-{_gname(gs, k)}"] = (copies_a8, nb)
    for bits, gs in ((3, 128), (2, 128), (2, 32), (2, k)):  # the 2/3-bit kernels' own layout
        nb = n * k * bits // 8 + n * (k // gs) * 4  # codes + fp32 scales as the kernel reads them
        copies = [_lowbit_weight(n, k, bits, gs, g) for _ in range(_copies(nb))]
        out[f"wo{bits}-{_gname(gs, k)}"] = (copies, nb)
    return out


def _gname(gs: int, k: int) -> str:
    """A row name's group part: ``g128``, or ``pc`` for one group a row (per channel)."""
    return "pc" if gs == k else f"g{gs}"


def _lowbit_a8_weight(
    n: int, k: int, bits: int, gs: int, g: torch.Generator
) -> tuple[lowbit.NativeLowbitA8Kernel, object]:
    """A W{bits}A8 layer, group ``gs`` (random symmetric codes), prepared by its kernel: the call
    quantizes float activations per token (in C) and runs the integer kernel, as a layer does."""
    from explorer.kernels.base import LinearSpec
    from explorer.quant.config import QuantConfig
    from explorer.quant.qtensor import QuantizedWeight

    per_group = {"granularity": "group", "group_size": gs} if gs != k else {}
    config = QuantConfig(weight_bits=bits, act_bits=8, **per_group)
    half = 1 << (bits - 1)
    codes = torch.randint(-half, half, (n, k), dtype=torch.int32, generator=g)
    scale = (torch.rand(n, k // gs, generator=g) * 0.02).bfloat16()
    qw = QuantizedWeight.from_codes(codes, scale, None, bits, True, (1, gs))
    kernel = lowbit.NativeLowbitA8Kernel(bits)
    return kernel, kernel.prepare(LinearSpec.from_config(config, n, k), qw, None, None)


def _lowbit_weight(n: int, k: int, bits: int, gs: int, g: torch.Generator) -> lowbit.PackedLowbit:
    """Random symmetric codes and scales in the 2/3-bit kernels' layout (values do not change
    the speed)."""
    codes = torch.randint(0, 1 << bits, (n, k), dtype=torch.uint8, generator=g)
    scale = torch.rand(-(-n // lowbit.PANEL_ROWS), k // gs, lowbit.PANEL_ROWS, generator=g)
    return lowbit.PackedLowbit(lowbit.pack_planes(codes, bits), scale * 0.02, None, n, k, gs, bits)


def make_candidates(m: int, k: int, w: dict[str, tuple[list, int]]) -> list[Candidate]:
    x = torch.randn(m, k)
    xb = x.to(torch.bfloat16)
    xq, xs = _quantize_per_token(x)
    c: list[Candidate] = []
    ws, nb = w["fp32"]
    c.append(Candidate("fp32", lambda wt: F.linear(x, wt), ws, nb))
    ws, nb = w["bf16"]
    c.append(Candidate("bf16", lambda wt: F.linear(xb, wt), ws, nb))
    ws, nb = w["int4pack"]
    c.append(
        Candidate(
            "int4pack-g128",
            lambda p: torch._weight_int4pack_mm_for_cpu(xb, p[0], 128, p[1]),
            ws,
            nb,
        )
    )
    ws, nb = w["fbgemm"]
    c.append(
        Candidate("fbgemm-dyn-int8", lambda p: torch.ops.quantized.linear_dynamic(x, p), ws, nb)
    )
    if native.available():
        ws, nb = w["read-stream"]
        c.append(Candidate("read-stream", native.byte_sum, ws, nb))
        for gname, gs in (("g32", 32), ("g128", 128), ("pc", k)):
            ws, nb = w[f"wo4-{gname}"]
            c.append(
                Candidate(
                    f"wo4-{gname}",
                    lambda p, gs=gs: native.wo_linear(x, p[0], p[1], None, bits=4, group_size=gs),
                    ws,
                    nb,
                )
            )
        ws, nb = w["int8"]
        c.append(
            Candidate(
                "wo8-pc",
                lambda p: native.wo_linear(x, p[0], p[1], None, bits=8, group_size=k),
                ws,
                nb,
            )
        )
        c.append(
            Candidate("w8a8", lambda p: native.w8a8_linear(xq, xs, None, p[0], p[2], None), ws, nb)
        )

        def w8a8_quant(p: tuple) -> torch.Tensor:
            q, s = _quantize_per_token(x)
            return native.w8a8_linear(q, s, None, p[0], p[2], None)

        c.append(Candidate("w8a8+quant", w8a8_quant, ws, nb))
        for name in ("w4a8-g128", "w4a8-pc"):
            if name in w:
                ws, nb = w[name]
                c.append(Candidate(name, lambda call: call(x), ws, nb))
        for name in ("w3a8-g128", "w2a8-g128", "w2a8-pc"):
            ws, nb = w[name]
            c.append(Candidate(name, lambda p: p[0].run(p[1], x), ws, nb))
        for name in ("wo3-g128", "wo2-g128", "wo2-g32", "wo2-pc"):
            ws, nb = w[name]
            c.append(Candidate(name, lambda p: lowbit.wo_linear(x, p), ws, nb))
    return c


def run(
    ms: list[int],
    reps: int,
    threads: int,
    warmup: int = 3,
    seed: int = 0,
    foreign_max: float = 0.1,
    batch_seconds: float = 1.0,
    max_discards: int = 200,
    clock: str = "wall",
) -> dict:
    torch.set_num_threads(threads)
    Candidate.clock = time.thread_time if clock == "cpu" else time.perf_counter
    if clock == "cpu":
        foreign_max = 1.0  # CPU time does not count the waits the filter guards against
    if "fbgemm" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "fbgemm"
    n = k = 4096
    t0 = time.perf_counter()
    available = native.available()  # compiles (or loads the cached build) on first use
    load_s = time.perf_counter() - t0
    w = build_weights(n, k, seed)
    rng = random.Random(seed)
    results: dict[str, dict[str, float]] = {}
    discarded: dict[str, int] = {}
    rows = []
    for m in ms:
        cands = make_candidates(m, k, w)
        for _ in range(warmup):
            for cand in cands:
                cand.run(record=False)
        drops = 0
        while min(len(c.times) for c in cands) < reps:
            # one batch: whole interleaved passes until ~batch_seconds have elapsed
            window = ForeignLoad()
            kept = [len(c.times) for c in cands]
            while time.perf_counter() - window.wall < batch_seconds:
                rng.shuffle(cands)
                for cand in cands:
                    cand.run(record=True)
            if window.share() > foreign_max and drops < max_discards:
                drops += 1
                for cand, nkeep in zip(cands, kept, strict=True):
                    del cand.times[nkeep:]
        discarded[f"M={m}"] = drops
        cands.sort(key=lambda c: c.name)
        base = statistics.median(next(c for c in cands if c.name == "fp32").times)
        results[f"M={m}"] = {}
        for cand in sorted(cands, key=lambda c: statistics.median(c.times)):
            med = statistics.median(cand.times)
            results[f"M={m}"][cand.name] = round(med * 1e3, 4)
            rows.append((m, cand.name, med * 1e3, base / med, cand.nbytes / med / 1e9))
    info = native.build_info()
    return {
        "rows": rows,
        "json": {
            "benchmark": "native_kernels",
            "K": k,
            "N": n,
            "threads": threads,
            "min_reps": reps,
            "median_ms": results,
            "discarded_batches": discarded,
            "foreign_max": foreign_max,
            "clock": clock,
            "loadavg": _loadavg(),
            "native_available": available,
            "native_isa": info.get("isa"),
            "native_load_seconds": round(load_s, 3),
            "native_compile_seconds": info.get("compile_seconds"),
            "torch": torch.__version__,
            "machine": platform.machine(),
            "quantized_engine": torch.backends.quantized.engine,
        },
    }


def _loadavg() -> list[float] | None:
    try:
        with open("/proc/loadavg") as f:
            return [float(v) for v in f.read().split()[:3]]
    except (OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=30, help="timed repetitions (>= 20)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--m", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument(
        "--foreign-max",
        type=float,
        default=0.1,
        help="discard batches during which other processes used more than this share of the "
        "machine's CPU (1 disables the check)",
    )
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: this thread's CPU time per call (one thread; a shared machine's waits are "
        "not counted)",
    )
    args = ap.parse_args(argv)
    res = run(args.m, args.reps, args.threads, foreign_max=args.foreign_max, clock=args.clock)
    if not native.available():
        print(f"# native kernels unavailable: {native.unavailable_reason()}", file=sys.stderr)
    print(f"{'M':>3}  {'candidate':<16} {'median ms':>10} {'x fp32':>8} {'weight GB/s':>12}")
    last_m = None
    for m, name, ms, speedup, gbs in res["rows"]:
        if last_m is not None and m != last_m:
            print()
        last_m = m
        print(f"{m:>3}  {name:<16} {ms:>10.3f} {speedup:>8.2f} {gbs:>12.1f}")
    print(json.dumps(res["json"]))


if __name__ == "__main__":
    main()
