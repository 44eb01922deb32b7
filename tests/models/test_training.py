"""The built-in LMs' shared training pieces: AdamW decaying matrices only, and a checkpoint that
a run of the same key resumes to the same weights as an uninterrupted run (a different key
starts over)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from explorer.models.training import adamw, resume, save_checkpoint


def run(steps: range, model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator) -> None:
    for _ in steps:
        x = torch.randn(8, 4, generator=gen)
        loss = (model(x) - x.sum(dim=1, keepdim=True)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def fresh() -> tuple[nn.Module, torch.optim.Optimizer, torch.Generator]:
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    return model, adamw(model, 1e-2, (0.9, 0.99), 0.1), torch.Generator().manual_seed(1)


def test_adamw_decays_matrices_but_not_biases() -> None:
    model, opt, _ = fresh()
    (decay, plain) = opt.param_groups
    assert [p.dim() for p in decay["params"]] == [2] and decay["weight_decay"] == 0.1
    assert [p.dim() for p in plain["params"]] == [1] and plain["weight_decay"] == 0.0


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path: Path) -> None:
    model, opt, gen = fresh()
    run(range(10), model, opt, gen)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    path = tmp_path / "state.pt"
    model, opt, gen = fresh()
    run(range(4), model, opt, gen)
    save_checkpoint(path, "k", model, opt, gen, step=4, seconds=1.5, losses=[(0, 2.0)], resumed=[])
    assert not path.with_suffix(".tmp").exists()
    model, opt, gen = fresh()  # a new process: nothing but the file survives
    assert resume(path, "other key", model, opt, gen) is None
    state = resume(path, "k", model, opt, gen)
    assert state is not None and state["step"] == 4 and state["seconds"] == 1.5
    assert [tuple(x) for x in state["losses"]] == [(0, 2.0)]
    run(range(4, 10), model, opt, gen)
    for name, value in model.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_no_checkpoint_resumes_nothing(tmp_path: Path) -> None:
    model, opt, gen = fresh()
    assert resume(None, "k", model, opt, gen) is None
    assert resume(tmp_path / "missing.pt", "k", model, opt, gen) is None
