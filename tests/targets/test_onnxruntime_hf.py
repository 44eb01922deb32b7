"""Hugging Face models on the ONNX Runtime target: a tiny Llama exported on token ids (logits
out, prefill and decode timed), a tiny ViT on pixel values, and a model the
exporter cannot write refused with the operator's name."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")
transformers = pytest.importorskip("transformers")

from explorer.nn.convert import quantize_model  # noqa: E402
from explorer.quant.config import Plan, QuantConfig  # noqa: E402
from explorer.targets import TargetError, get_target  # noqa: E402

W8A8_DYNAMIC = QuantConfig(
    weight_bits=8, act_bits=8, act_mode="dynamic", act_granularity="tensor", act_symmetric=False
)
W4G32 = QuantConfig(weight_bits=4, granularity="group", group_size=32)


def sqnr_db(ref: torch.Tensor, x: torch.Tensor) -> float:
    ref, x = ref.double(), x.double()
    return float(10 * torch.log10((ref**2).sum() / ((ref - x) ** 2).sum().clamp_min(1e-300)))


@pytest.fixture(scope="module")
def llama() -> nn.Module:
    """Two Llama blocks at width 64 (GQA, RoPE, RMSNorm, SwiGLU) over a 256-token vocabulary."""
    config = transformers.LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def test_causal_lm_on_token_ids(llama: nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    calib = torch.randint(0, 256, (8, 32), generator=gen)
    x = torch.randint(0, 256, (2, 24), generator=gen)
    qmodel = quantize_model(llama, Plan.uniform(W8A8_DYNAMIC), calib)
    target = get_target("onnxruntime", threads=1)
    art = target.build(qmodel, x, calib)
    assert {k for v in art.layers.values() for k in v["kernels"]} == {"DynamicQuantizeMatMul"}
    assert len(art.layers) == 2 * 7 + 1  # q, k, v, o, gate, up, down per block; lm_head
    with torch.inference_mode():
        native = qmodel(input_ids=x, use_cache=False).logits
    # the same codes and the same dynamic activation quantization: summation order only
    assert sqnr_db(native, art.runner(x)) >= 30.0
    # the sequence axis is dynamic: another length runs
    longer = torch.randint(0, 256, (1, 40), generator=gen)
    with torch.inference_mode():
        assert sqnr_db(qmodel(input_ids=longer, use_cache=False).logits, art.runner(longer)) >= 30
    # prefill is timed on the artifact itself, decode on a second graph that keeps the KV cache
    # (tests/targets/test_onnx_decode.py)
    assert art.workloads["prefill"]().shape == (1, 48, 256)
    assert art.untimed == {} and art.workloads["decode"]().shape == (1, 1, 256)
    # the profiler's node times land on every layer (scope names such as
    # /inner/model/layers.0/self_attn/q_proj/MatMul)
    report = target.layer_report(art, art.workloads["prefill"], repeats=2)
    assert all(lay["latency_ms"] > 0 for lay in report.values()), report
    assert 0 < sum(lay["latency_share"] for lay in report.values()) < 1


def test_image_classifier_on_pixel_values() -> None:
    config = transformers.ViTConfig(
        image_size=16,
        patch_size=4,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=5,
    )
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(config).eval()
    qmodel = quantize_model(model, Plan.uniform(W8A8_DYNAMIC), torch.randn(8, 3, 16, 16))
    x = torch.randn(2, 3, 16, 16)
    art = get_target("onnxruntime", threads=1).build(qmodel, x)
    kinds = {n: v["kernels"] for n, v in art.layers.items()}
    assert kinds.pop("vit.embeddings.patch_embeddings.projection") == [
        "DequantizeLinear + float Conv"
    ]
    # the classifier's Gemm takes its bias into DynamicQuantizeMatMul; on (B, T, C) inputs the
    # export writes MatMul + Add, and the bias stays a float Add after the integer product
    # (unless ORT fuses it onward, as into fc1's BiasGelu)
    assert kinds.pop("classifier") == ["DynamicQuantizeMatMul"]
    assert all(k[0] == "DynamicQuantizeMatMul" and set(k[1:]) <= {"Add"} for k in kinds.values())
    with torch.inference_mode():
        assert sqnr_db(qmodel(pixel_values=x).logits, art.runner(x)) >= 30.0


class Differences(nn.Module):
    """A layer followed by an operator the TorchScript exporter has no ONNX form for."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.diff(self.fc(x), dim=-1)


def test_unexportable_operator_is_named() -> None:
    qmodel = quantize_model(Differences().eval(), Plan.uniform(W4G32, fallback="float"))
    with pytest.raises(TargetError) as err:
        get_target("onnxruntime").build(qmodel, torch.randn(2, 16))
    assert str(err.value) == (
        "torch.onnx cannot export Differences: operator aten::diff has no ONNX opset 17 "
        "export; the native target still runs this model"
    )
