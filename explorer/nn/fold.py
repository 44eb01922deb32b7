"""Batch-norm folding: ``BN(conv(x)) = conv'(x)`` with ``w' = w * γ/σ`` and
``b' = (b - μ) * γ/σ + β``, where ``σ = sqrt(running_var + eps)`` — done before quantization, as
deployment toolchains do (Krishnamoorthi 2018, section 3.2; Jacob et al., arXiv 1712.05877).

Folding is why per-tensor weight scales collapse on some networks: γ/σ differs widely between
channels, so the folded channels' ranges do too (trend 2, docs/trends.md).
"""

from __future__ import annotations

import torch
from torch import fx, nn


def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    with torch.no_grad():
        factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        conv.weight.mul_(factor.reshape(-1, 1, 1, 1))
        new_bias = (bias - bn.running_mean) * factor + bn.bias
        conv.bias = nn.Parameter(new_bias.detach().clone())


def fold_batch_norm(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """Fold every BatchNorm2d that directly follows a Conv2d (whose output nothing else reads).

    Works on ``nn.Sequential`` neighbours in place (the model keeps its class), then on whatever a
    ``torch.fx`` trace can see. Mutates ``model``: call it on a copy. Returns the model and the
    names of the folded convolutions.
    """
    folded: list[str] = []
    for prefix, module in model.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for a, b in zip(names, names[1:], strict=False):
            conv, bn = module._modules[a], module._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                _fold_into(conv, bn)
                module._modules[b] = nn.Identity()
                folded.append(f"{prefix}.{a}" if prefix else a)
    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return model, folded
    try:
        traced = fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - untraceable models keep their remaining batch norms
        return model, folded
    modules = dict(traced.named_modules())
    changed = False
    for node in list(traced.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0]
        if not (isinstance(src, fx.Node) and src.op == "call_module"):
            continue
        conv = modules.get(src.target)
        if not isinstance(conv, nn.Conv2d) or len(src.users) != 1:
            continue
        _fold_into(conv, modules[node.target])
        node.replace_all_uses_with(src)
        traced.graph.erase_node(node)
        folded.append(str(src.target))
        changed = True
    if not changed:
        return model, folded
    traced.graph.lint()
    traced.recompile()
    return traced, folded
