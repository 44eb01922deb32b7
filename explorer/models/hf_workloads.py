"""Latency workloads of Hugging Face causal language models: one decode step in the model's own
KV cache, and a prefill. They live with the models (not with the causal-LM task that also uses
them) so that a built-in model shipped as a Hugging Face directory (``tiny-lm``) can name its
workloads without importing the task layer above it.

``decode`` is one step at batch 1 after the prompt's tokens are cached (``DynamicCache``): the
cache is built once from a prefill of the prompt, and each call runs one token and crops the
cache back, so every call sees the same cache length. ``prefill`` runs the prompt at batch 1 into
a fresh cache.

Imports: `explorer.errors`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from explorer.errors import TaskError

Workload = Callable[[nn.Module], Callable[[], Any]]


def cache_argument(model: nn.Module) -> str:
    """The keyword a model's forward takes its KV cache by: ``cache`` (transformers >= 5.x),
    ``past_key_values`` before."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def returned_cache(out: Any) -> Any:
    cache = out.get("cache") if hasattr(out, "get") else None
    return cache if cache is not None else out.get("past_key_values")


def decode_workload(prompt: torch.Tensor) -> Workload:
    """One decode step at batch 1 after ``prompt`` (1, P) in the model's own KV cache; the call
    returned has the cache as ``.cache`` (its length is P after every call)."""

    def make(model: nn.Module) -> Callable[[], Any]:
        context = prompt.shape[1]
        with torch.no_grad():
            out = model(input_ids=prompt, use_cache=True)
        cache = returned_cache(out)
        if cache is None or not hasattr(cache, "crop"):
            raise TaskError(
                f"{type(model).__name__} keeps a {type(cache).__name__}, which cannot be cropped "
                "back after a decode step; the decode workload needs a DynamicCache"
            )
        token = out["logits"][:, -1:].argmax(dim=-1)  # (1, 1)
        kwargs = {cache_argument(model): cache, "use_cache": True}

        def step() -> torch.Tensor:
            with torch.no_grad():
                logits = model(input_ids=token, **kwargs)["logits"]
            # Remove the token just cached (a negative count: both the old and the new crop API
            # read it so), and the next call sees the same cache length.
            cache.crop(-(cache.get_seq_length() - context))
            return logits

        step.cache = cache  # type: ignore[attr-defined]
        return step

    return make


def prefill_workload(prompt: torch.Tensor) -> Workload:
    """``prompt`` (1, P) at batch 1 into a fresh cache, as the first step of generation."""

    def make(model: nn.Module) -> Callable[[], Any]:
        def run() -> torch.Tensor:
            with torch.no_grad():
                return model(input_ids=prompt, use_cache=True)["logits"]

        return run

    return make
