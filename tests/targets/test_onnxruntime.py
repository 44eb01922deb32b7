"""The ONNX Runtime target: our codes written into the graph bit for bit, outputs that agree with
the native quantized model, and the settings ORT cannot run refused with their reasons."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from explorer.models import digits, mobile  # noqa: E402
from explorer.nn.convert import quant_modules, quantize_model  # noqa: E402
from explorer.quant.config import Plan, QuantConfig  # noqa: E402
from explorer.targets import TargetError, get_target  # noqa: E402
from explorer.targets.onnxruntime import pack_nbits, support  # noqa: E402

W8 = QuantConfig(weight_bits=8)
W8A8_STATIC = QuantConfig(weight_bits=8, act_bits=8, act_mode="static", act_granularity="tensor")
W8A8_DYNAMIC = QuantConfig(
    weight_bits=8, act_bits=8, act_mode="dynamic", act_granularity="tensor", act_symmetric=False
)
W4G32 = QuantConfig(weight_bits=4, granularity="group", group_size=32)


class TinyBlock(nn.Module):
    """A transformer-like block: single-head attention and an MLP on (B, T, C) inputs."""

    def __init__(self, c: int = 64) -> None:
        super().__init__()
        self.qkv = nn.Linear(c, 3 * c)
        self.proj = nn.Linear(c, c)
        self.up = nn.Linear(c, 4 * c)
        self.down = nn.Linear(4 * c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        att = torch.softmax(q @ k.transpose(1, 2) / 8.0, dim=-1)
        x = x + self.proj(att @ v)
        return x + self.down(torch.relu(self.up(x)))


def sqnr_db(ref: torch.Tensor, x: torch.Tensor) -> float:
    ref, x = ref.double(), x.double()
    return float(10 * torch.log10((ref**2).sum() / ((ref - x) ** 2).sum().clamp_min(1e-300)))


def _case(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    if name == "digits-cnn":
        return digits.build().eval(), (16, 1, 8, 8)
    if name == "mobile-cnn":
        model = mobile.build().eval()
        for m in model.modules():  # random BN statistics of a realistic size
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
                m.running_mean.uniform_(-0.2, 0.2)
        return model, (4, 3, 32, 32)
    return TinyBlock().eval(), (4, 16, 64)


def _quantized(name: str, config: QuantConfig):
    model, shape = _case(name)
    gen = torch.Generator().manual_seed(1)
    calib = [torch.randn(*shape, generator=gen) for _ in range(2)]
    x = torch.randn(*shape, generator=gen)
    return quantize_model(model, Plan.uniform(config), calib), x, calib


# what ORT's optimiser must turn each layer into (read from the optimised graph)
INTEGER_KERNELS = {
    ("digits-cnn", W8A8_STATIC.name): {"QLinearConv", "QGemm"},
    ("mobile-cnn", W8A8_STATIC.name): {"QLinearConv", "QLinearGlobalAveragePool", "QGemm"},
    ("tiny-block", W8A8_STATIC.name): {"MatMulIntegerToFloat", "Add"},
    ("tiny-block", W8A8_DYNAMIC.name): {"DynamicQuantizeMatMul", "Add"},
}


@pytest.mark.parametrize("name", ["digits-cnn", "mobile-cnn", "tiny-block"])
@pytest.mark.parametrize("config", [W8, W8A8_STATIC, W8A8_DYNAMIC], ids=lambda c: c.name)
def test_int8_qdq_matches_native(name: str, config: QuantConfig) -> None:
    qmodel, x, calib = _quantized(name, config)
    target = get_target("onnxruntime", threads=1)
    art = target.build(qmodel, x, calib)
    with torch.inference_mode():
        native = qmodel(x)
    # same codes, same input qparams: float summation order differs, static activations may
    # round a handful of values differently (one step each), and a convolution's output is
    # quantized once more (uint8 over its calibrated range) so that ORT fuses it
    assert sqnr_db(native, art.runner(x)) >= 30.0
    expected = INTEGER_KERNELS.get((name, config.name))
    if expected is not None:
        kinds = {k for v in art.layers.values() for k in v["kernels"]}
        assert kinds == expected, art.layers


def test_codes_scales_zeros_bit_identical() -> None:
    qmodel, x, _ = _quantized("digits-cnn", W8A8_STATIC)
    graph = get_target("onnxruntime").to_onnx(qmodel, x).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for name, module in quant_modules(qmodel).items():
        qw = module.qweight_view()
        codes = inits[f"{name}.qweight"].reshape(qw.shape)
        assert codes.dtype.name == "int8"
        assert torch.equal(torch.from_numpy(codes.astype("int32")), qw.stored_codes())
        assert torch.equal(
            torch.from_numpy(inits[f"{name}.scale"]).reshape(-1), qw.scale.reshape(-1)
        )
        zero = torch.from_numpy(inits[f"{name}.zero"].astype("int32")).reshape(-1)
        assert torch.equal(zero, qw.stored_zero().reshape(-1))
        act = module.act_qparams()
        assert float(inits[f"{name}.act_scale"]) == act.scale
        assert int(inits[f"{name}.act_zero"]) == act.zero
    assert not any(t.name.endswith(".weight") for t in graph.initializer)


def _dequantize_nbits(packed: dict, n: int, k: int, block: int) -> torch.Tensor:
    """MatMulNBits' documented dequantization, written independently: low nibble first, zero
    point 8 when none is given, weight = (u - zp) * scale per block."""
    b = torch.from_numpy(packed["B"].astype("int32")).reshape(n, -1)
    u = torch.stack([b & 0xF, b >> 4], dim=-1).reshape(n, k)
    scale = torch.from_numpy(packed["scales"]).reshape(n, k // block)
    return ((u - 8).float().reshape(n, -1, block) * scale[..., None]).reshape(n, k)


def test_int4_matmulnbits_matches_w4_reference() -> None:
    qmodel, x, _ = _quantized("tiny-block", W4G32)
    for module in quant_modules(qmodel).values():
        n, k = module.weight_shape
        deq = _dequantize_nbits(pack_nbits(module), n, k, 32)
        assert torch.equal(deq, module.qweight_view().dequantize())  # bit-identical weights
    art = get_target("onnxruntime", threads=1).build(qmodel, x)
    assert all(v["kernels"] == ["MatMulNBits"] for v in art.layers.values()), art.layers
    with torch.inference_mode():
        native = qmodel(x)
    # identical weights, float activations: only accumulation order differs
    torch.testing.assert_close(art.runner(x), native, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            QuantConfig(weight_bits=3),
            "3-bit weights: ONNX Runtime has int4 and int8 weight kernels only",
        ),
        (
            QuantConfig(weight_bits=2, granularity="group", group_size=32),
            "2-bit weights: ONNX Runtime has int4 and int8 weight kernels only",
        ),
        (
            QuantConfig(weight_bits=8, act_bits=4, act_mode="static", act_granularity="tensor"),
            "4-bit activations: ONNX Runtime quantizes activations to 8 bits",
        ),
        (
            QuantConfig(weight_bits=8, act_bits=8),
            "per-token dynamic activations: ONNX Runtime's DynamicQuantizeLinear is per tensor",
        ),
        (
            QuantConfig(weight_bits=4),
            "4-bit weights: ONNX Runtime runs them only per group (MatMulNBits)",
        ),
        (
            QuantConfig(weight_bits=4, granularity="group", group_size=8),
            "group size 8: MatMulNBits needs a power of two from 16 to 256",
        ),
    ],
    ids=lambda v: v.name if isinstance(v, QuantConfig) else "",
)
def test_unsupported_settings_are_refused(config: QuantConfig, message: str) -> None:
    assert support(config) == message
    qmodel, x, _ = _quantized("tiny-block", config)
    with pytest.raises(TargetError, match="onnxruntime cannot run layer qkv as planned: "):
        get_target("onnxruntime").build(qmodel, x)


def test_exported_file_reloads_with_identical_outputs(tmp_path) -> None:
    qmodel, x, calib = _quantized("digits-cnn", W8A8_STATIC)
    target = get_target("onnxruntime", threads=1)
    art = target.build(qmodel, x, calib)
    files = target.export_recipe(art, tmp_path)
    assert files["onnx"].read_bytes() == art.payload  # the measured file itself
    onnx.checker.check_model(str(files["onnx"]))
    fresh = ort.InferenceSession(str(files["onnx"]), providers=["CPUExecutionProvider"])
    (out,) = fresh.run(None, {"input": x.numpy()})
    assert torch.equal(torch.from_numpy(out), art.runner(x))
    # the script runs it on the user's inputs and scores it against their labels
    labels = art.runner(x).argmax(-1).numpy()
    labels[:4] = (labels[:4] + 1) % 10  # 4 of 16 wrong
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "y.npy", labels)
    done = subprocess.run(
        [sys.executable, str(files["script"]), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "output (16, 10) float32",
        "accuracy 0.7500 on 16 samples",
    ]


def test_profiler_times_map_to_layers() -> None:
    qmodel, x, calib = _quantized("digits-cnn", W8A8_STATIC)
    target = get_target("onnxruntime", threads=1)
    art = target.build(qmodel, x, calib)
    times = target.layer_times(art, x, repeats=2)
    assert set(times) == set(art.layers)
    assert all(t > 0 for t in times.values())


def test_relu_into_a_linear_layer_fuses_to_qgemm() -> None:
    """A Gemm whose output (through the Relu) reaches the next layer's QuantizeLinear becomes
    QGemm with a quantized output, the Relu folded into it; the last Gemm, whose output stays
    float, becomes QGemm with a float output (int32 bias at s_x * s_w)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    config = QuantConfig(
        weight_bits=8, act_bits=8, act_mode="static", act_granularity="tensor", act_symmetric=False
    )
    qmodel = quantize_model(model, Plan.uniform(config), [torch.randn(16, 64)])
    x = torch.randn(8, 64)
    art = get_target("onnxruntime", threads=1).build(qmodel, x)
    assert art.layers == {"0": {"kernels": ["QGemm"]}, "2": {"kernels": ["QGemm"]}}
    with torch.inference_mode():
        assert sqnr_db(qmodel(x), art.runner(x)) >= 30.0


def test_conv_output_without_calibration_stays_float() -> None:
    """A convolution whose output feeds no quantized layer needs a calibrated output scale for
    QLinearConv; without calibration data it is reported as not fused, with the reason."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()).eval()
    qmodel = quantize_model(model, Plan.uniform(W8A8_STATIC), [torch.randn(8, 16, 8, 8)])
    x = torch.randn(2, 16, 8, 8)
    target = get_target("onnxruntime", threads=1)
    bare = target.build(qmodel, x).layers["0"]
    assert bare["kernels"][0].startswith("DequantizeLinear + float "), bare
    assert bare["note"] == "output not quantized (no calibration data): no QLinearConv"
    art = target.build(qmodel, x, torch.randn(8, 16, 8, 8))
    assert art.layers == {"0": {"kernels": ["QLinearConv"]}}
    with torch.inference_mode():
        assert sqnr_db(qmodel(x), art.runner(x)) >= 30.0
