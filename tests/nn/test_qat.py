"""QAT recovers accuracy that low-bit PTQ loses, on a small seeded classifier (held-out data)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from explorer.nn import quantize_model, train_qat
from explorer.nn.qat import FakeQuantLayer, convert, prepare_qat, qat_lr_at
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


def test_the_rate_warms_up_linearly_then_decays_by_cosine_to_zero() -> None:
    steps, peak = 100, 3e-4
    rates = [qat_lr_at(s, steps, peak) for s in range(steps)]
    assert rates[:10] == pytest.approx([peak * (s + 1) / 10 for s in range(10)], rel=1e-12)
    assert max(rates) == pytest.approx(peak, rel=1e-12)
    decay = rates[9:]
    assert all(a > b for a, b in zip(decay[1:], decay[2:], strict=False))
    # halfway through the decay the cosine is at half the peak; the last step is just above 0
    assert rates[9 + 45] == pytest.approx(peak / 2, rel=0.05)
    assert 0 < rates[-1] < peak * 1e-3
    assert qat_lr_at(0, 1, peak) == peak  # a one-step budget trains at the peak
    assert qat_lr_at(0, 5, peak) == peak  # warm-up is at least one step


def test_training_follows_the_schedule_and_clips_the_gradient(monkeypatch) -> None:
    """The optimizer sees `qat_lr_at`'s rate at every step and a gradient of norm at most 1."""
    (xtr, ytr), _ = make_data(n=400)
    model = mlp()
    seen_lr, seen_norm = [], []
    step_fn = torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        seen_lr.append(self.param_groups[0]["lr"])
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        seen_norm.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        return step_fn(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    config = QuantConfig(weight_bits=2, granularity="channel", method="qat")
    # labels scrambled and a large output scale: unclipped gradients would be far above 1
    loud = nn.Sequential(model, nn.Linear(20, 20))
    with torch.no_grad():
        loud[1].weight.mul_(50)
    train_qat(loud, Plan.uniform(config), lambda s: (xtr[:64], ytr[torch.randperm(64)]), 8, 1e-2)
    assert seen_lr == pytest.approx([qat_lr_at(s, 8, 1e-2) for s in range(8)], rel=1e-12)
    assert max(seen_norm) <= 1.0 + 1e-5


@pytest.mark.parametrize(
    ("act_granularity", "act_mode", "groups"),
    [
        ("token", "dynamic", 1),
        ("tensor", "dynamic", 1),
        ("tensor", "static", 1),
        ("token", "dynamic", 4),
    ],
)
def test_qat_forward_computes_what_the_converted_model_runs(
    act_granularity: str, act_mode: str, groups: int
) -> None:
    """Before training moves anything, the fake-quant model and its conversion are the same
    function (relative error <= 1e-5), convolutions included: a dense convolution with per-token
    activations quantizes each im2col patch row, as `QuantConv2d` does; a grouped one per tensor."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=groups),
        nn.Flatten(),
        nn.Linear(8 * 5 * 5, 10),
    ).eval()
    config = QuantConfig(
        weight_bits=8,
        act_bits=8,
        act_granularity=act_granularity,
        act_mode=act_mode,
        method="qat",
    )
    x = torch.randn(8, 4, 10, 10) * torch.linspace(0.1, 3, 10)  # patches of very different range
    qat = prepare_qat(model, Plan.uniform(config), calibration_data=x).eval()
    with torch.no_grad():
        fake = qat(x)
        real = convert(qat)(x)
    err = float((fake - real).norm() / real.norm())
    assert err <= 1e-5, err
