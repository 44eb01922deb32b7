"""QAT recovers accuracy that low-bit PTQ loses, on a small seeded classifier (held-out data)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from explorer.nn import quantize_model, train_qat
from explorer.nn.qat import FakeQuantLayer, convert, prepare_qat
from explorer.quant.config import Plan, QuantConfig


def make_data(seed: int = 0, classes: int = 20, dim: int = 32, n: int = 4000):
    """Gaussian blobs around random centres, noisy enough that accuracy is not trivially 100%."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=gen) * 0.45
    labels = torch.randint(0, classes, (n,), generator=gen)
    x = centres[labels] + torch.randn(n, dim, generator=gen)
    split = n * 3 // 4
    return (x[:split], labels[:split]), (x[split:], labels[split:])


def mlp(dim: int = 32, classes: int = 20) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(dim, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, classes)
    )


def train_float(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 400) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (128,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).float().mean())


def test_qat_recovers_at_least_half_of_the_ptq_drop() -> None:
    (xtr, ytr), (xte, yte) = make_data()
    model = mlp()
    train_float(model, xtr, ytr)
    float_acc = accuracy(model, xte, yte)
    config = QuantConfig(weight_bits=2, granularity="channel", method="qat")
    ptq_acc = accuracy(quantize_model(model, Plan.uniform(config)), xte, yte)
    assert float_acc - ptq_acc >= 0.05, (float_acc, ptq_acc)

    gen = torch.Generator().manual_seed(2)

    def batches(step: int):
        idx = torch.randint(0, xtr.shape[0], (128,), generator=gen)
        return xtr[idx], ytr[idx]

    qat_model = train_qat(model, Plan.uniform(config), batches, steps=300, lr=1e-3)
    qat_acc = accuracy(qat_model, xte, yte)
    recovered = (qat_acc - ptq_acc) / (float_acc - ptq_acc)
    assert recovered >= 0.5, (float_acc, ptq_acc, qat_acc)


def test_lsq_learned_scales_are_used_by_convert() -> None:
    (xtr, ytr), _ = make_data(n=800)
    model = mlp()
    train_float(model, xtr, ytr, steps=50)
    config = QuantConfig(weight_bits=4, method="qat", learn_scales=True)
    qat = prepare_qat(model, Plan.uniform(config))
    layer = qat[0]
    assert isinstance(layer, FakeQuantLayer) and layer.w_scale.requires_grad
    opt = torch.optim.SGD([layer.w_scale], lr=1e-2)
    F.cross_entropy(qat(xtr[:64]), ytr[:64]).backward()
    assert layer.w_scale.grad is not None and float(layer.w_scale.grad.abs().sum()) > 0
    opt.step()
    converted = convert(qat)
    stored = converted[0].scale.float()
    torch.testing.assert_close(stored, layer.w_scale.detach().float(), rtol=0, atol=0)
    # the converted model computes what the fake-quant model computed (same weights and grid)
    qat.eval()
    with torch.no_grad():
        torch.testing.assert_close(converted(xtr[:16]), qat(xtr[:16]), rtol=1e-4, atol=1e-4)
