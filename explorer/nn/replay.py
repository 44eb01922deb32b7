"""Replaying a float prefix: skip the blocks that run before the first changed layer.

Per-layer sensitivity (`explorer.sweep.sensitivity`) quantizes one layer at a time and runs the
whole model over the same calibration batches each time. Every block that finishes before the
quantized layer is first called sees the float model's inputs and holds the float model's
weights, so it computes exactly what the float pass computed: its output can be recorded once and
replayed instead of recomputed. On a transformer whose layers sit in a `nn.ModuleList` this skips
the decoder layers before the quantized one (about a third of the forward passes of `tiny-lm`'s
sensitivity table), and the numbers do not change: the replayed tensors are the float pass's.

`PrefixRecorder` records, during one float pass over the batches: the order in which modules are
first called, and the output of each child of a `nn.ModuleList` that is called exactly once per
batch (a block). `PrefixCache.install` then finds, in a changed copy of the model, the modules
whose parameters or buffers differ from the float model's, and swaps each recorded block that
contains none of them and returns before the first of them is called for a `Replay` of its
outputs. A `Replay` refuses to be called more often than there were batches, and `PrefixCache.check`
that every one was called once per batch, so a pass over other data fails instead of returning
another model's numbers.

Imports: torch only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

REPLAY_BYTES = 1 << 30
"""Most bytes of block outputs a `PrefixCache` keeps; beyond it nothing is recorded."""


def _tensors(out: Any) -> list[torch.Tensor] | None:
    """The tensors of a block's output (a tensor, or a tuple/list of tensors and Nones); None
    for any other structure (not recorded)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, tuple | list) and all(t is None or isinstance(t, torch.Tensor) for t in out):
        return [t for t in out if t is not None]
    return None


def _copy(out: Any) -> Any:
    """A copy of a block's output (so that what later modules do to it never reaches the cache)."""
    if isinstance(out, torch.Tensor):
        return out.detach().clone()
    return type(out)(None if t is None else t.detach().clone() for t in out)


class Replay(nn.Module):
    """Stands in for a float block: returns its recorded output on the next batch."""

    def __init__(self, name: str, outputs: Sequence[Any]) -> None:
        super().__init__()
        self.name = name
        self.outputs = outputs
        self.calls = 0

    def forward(self, *_args: Any, **_kwargs: Any) -> Any:
        if self.calls >= len(self.outputs):
            raise RuntimeError(
                f"replayed block {self.name} called {self.calls + 1} times; it holds the float "
                f"outputs of {len(self.outputs)} batches"
            )
        out = _copy(self.outputs[self.calls])
        self.calls += 1
        return out


@dataclass
class PrefixCache:
    """What `PrefixRecorder` saw: each module's first call (in execution order), each block's
    return, and each block's outputs per batch."""

    batches: int
    first_call: dict[str, int]
    returned: dict[str, int]
    outputs: dict[str, list[Any]]

    def replayable(self, float_model: nn.Module, changed_model: nn.Module) -> list[str]:
        """The recorded blocks of ``changed_model`` that compute what they computed in the float
        pass: they contain no changed module and return before the first one is called."""
        changed = changed_modules(float_model, changed_model)
        if not changed:
            return []
        first = min(self._first_call(name) for name in changed)
        return [
            block
            for block, end in self.returned.items()
            if end < first and not any(_within(name, block) for name in changed)
        ]

    def install(self, float_model: nn.Module, changed_model: nn.Module) -> list[Replay]:
        """Swap the `replayable` blocks of ``changed_model`` (which the caller owns: it is
        changed in place) for their `Replay`; returns them (for `check`)."""
        replays = []
        for block in self.replayable(float_model, changed_model):
            parent_name, _, child = block.rpartition(".")
            parent = changed_model.get_submodule(parent_name) if parent_name else changed_model
            replay = Replay(block, self.outputs[block])
            setattr(parent, child, replay)
            replays.append(replay)
        return replays

    def check(self, replays: Sequence[Replay]) -> None:
        """Every replayed block was called once per recorded batch (else the pass was not the
        recorded one, and its numbers are not the model's)."""
        for replay in replays:
            if replay.calls != self.batches:
                raise RuntimeError(
                    f"replayed block {replay.name} was called {replay.calls} times for "
                    f"{self.batches} recorded batches"
                )

    def _first_call(self, name: str) -> int:
        """When the float pass first called ``name`` or, for a module the float model does not
        have (a part of a replaced layer), its nearest recorded ancestor; 0 (replay nothing)
        when none was called."""
        while name:
            if name in self.first_call:
                return self.first_call[name]
            name = name.rpartition(".")[0]
        return 0


def _within(name: str, block: str) -> bool:
    return name == block or name.startswith(block + ".")


def changed_modules(float_model: nn.Module, changed_model: nn.Module) -> set[str]:
    """The modules owning a parameter or buffer that ``changed_model`` lacks, adds, or holds
    with other values than ``float_model`` (the root as ``""``)."""

    def state(model: nn.Module) -> dict[str, torch.Tensor]:
        return {
            **dict(model.named_parameters(remove_duplicate=False)),
            **dict(model.named_buffers(remove_duplicate=False)),
        }

    old, new = state(float_model), state(changed_model)
    names = {n for n in old.keys() ^ new.keys()}
    for n in old.keys() & new.keys():
        a, b = old[n], new[n]
        same = a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
        if not same and not (a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)):
            names.add(n)
    return {n.rpartition(".")[0] for n in names}


@dataclass
class PrefixRecorder:
    """Forward hooks on a float model that build a `PrefixCache` from the passes run inside
    `record` (one call of the model per batch)."""

    max_bytes: int = REPLAY_BYTES
    first_call: dict[str, int] = field(default_factory=dict)
    returned: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, list[Any]] = field(default_factory=dict)
    calls: dict[str, list[int]] = field(default_factory=dict)  # per block: calls in each batch
    batches: int = 0
    _tick: int = 0
    _bytes: int = 0
    _unrecordable: set[str] = field(default_factory=set)

    @contextmanager
    def record(self, model: nn.Module) -> Iterator[PrefixRecorder]:
        """Hooks on ``model`` while the block runs: every call of ``model`` is one batch."""
        blocks = {
            f"{parent}.{child}" if parent else child
            for parent, module in model.named_modules()
            if isinstance(module, nn.ModuleList)
            for child in module._modules
        }
        hooks = [model.register_forward_pre_hook(lambda _m, _a: self._batch())]
        for name, module in model.named_modules():
            hooks.append(module.register_forward_pre_hook(lambda _m, _a, n=name: self._call(n)))
            if name in blocks:
                hooks.append(
                    module.register_forward_hook(lambda _m, _a, out, n=name: self._keep(n, out))
                )
        try:
            yield self
        finally:
            for hook in hooks:
                hook.remove()

    def cache(self) -> PrefixCache | None:
        """The blocks called once in every recorded batch, with their outputs; None if there
        are none, or if their outputs would take more than ``max_bytes``."""
        if self._bytes > self.max_bytes:
            return None
        kept = {
            n: outs
            for n, outs in self.outputs.items()
            if n not in self._unrecordable and self.calls.get(n) == [1] * self.batches
        }
        if not kept:
            return None
        returned = {n: self.returned[n] for n in kept}
        return PrefixCache(self.batches, dict(self.first_call), returned, kept)

    def _batch(self) -> None:
        self.batches += 1
        for calls in self.calls.values():
            calls.append(0)

    def _call(self, name: str) -> None:
        if self.batches == 1 and name not in self.first_call:
            self.first_call[name] = self._tick
            self._tick += 1

    def _keep(self, name: str, out: Any) -> None:
        if self.batches == 0:  # called outside a call of the model (an encoder run first)
            self._unrecordable.add(name)
            return
        calls = self.calls.setdefault(name, [0] * self.batches)
        calls[-1] += 1
        if self.batches == 1 and name not in self.returned:
            self.returned[name] = self._tick
            self._tick += 1
        tensors = _tensors(out)
        if tensors is None:
            self._unrecordable.add(name)
        if name in self._unrecordable or self._bytes > self.max_bytes:
            return
        self._bytes += sum(t.numel() * t.element_size() for t in tensors)
        if self._bytes > self.max_bytes:
            self.outputs.clear()  # too large to keep: replay nothing
            return
        self.outputs.setdefault(name, []).append(_copy(out))
