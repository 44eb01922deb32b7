"""One decode step of a causal language model in ONNX Runtime, with the model's KV cache.

The ONNX Runtime target's main graph maps token ids to logits and keeps no cache, which is what
evaluation and the prefill workload need. Generating text needs a second graph that carries the
cache between calls. Its inputs follow the layout Hugging Face Optimum's decoder exports and
onnxruntime-genai use:

- ``input_ids`` (batch, new tokens), ``attention_mask`` (batch, past + new) and, for models that
  take them, ``position_ids`` (batch, new tokens);
- ``past_key_values.{i}.key`` / ``.value`` for every layer i, (batch, kv heads, past, head dim),
  the past length free (zero for the first call);

and its outputs are ``logits`` (batch, new tokens, vocabulary) and ``present.{i}.key`` /
``.value``, the cache grown by the new tokens. `CacheStep` is the module that makes this a
function of flat tensors: it rebuilds a ``DynamicCache`` from the past tensors, runs the model,
and flattens the grown cache back into tensors, so the TorchScript exporter traces one step.

The plan is written into this graph exactly as into the main one (`explorer.targets.onnx_qdq`,
the same codes, scales and zero points), so the decode step timed is the same quantized model
that was evaluated. `decode_step` builds the graph, runs the 128-token prompt through it once to
fill the cache, and returns the timed call: one token at batch 1 on that cache. The cache it is
given never changes (the grown cache is returned, not kept), so every call sees the same 128
cached tokens, as the native target's decode workload does by cropping its cache back.

A model whose cache is not a plain per-layer key/value cache (sliding windows, linear attention,
encoder-decoder caches) is refused with a `TargetError` naming the cache, and the row keeps its
decode workload untimed with that reason.

Imports: `explorer.targets.onnxruntime` (the float twin, the sessions), `explorer.targets.onnx_qdq`,
`explorer.models.hf_workloads`, `explorer.tasks`.
"""

from __future__ import annotations

import inspect
import io
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from explorer.models.hf_workloads import cache_argument, returned_cache
from explorer.nn.convert import quant_modules
from explorer.targets.base import TargetError
from explorer.targets.onnx_qdq import Graph, write_plan
from explorer.targets.onnxruntime import OPSET, PROMPT_TOKENS, OnnxRuntimeTarget, float_clone
from explorer.tasks.causal_lm import max_positions
from explorer.tasks.detect import detect_task

PAST = "past_key_values.{}.{}"
PRESENT = "present.{}.{}"
KV = ("key", "value")
# the traced example: past and new lengths distinct from each other and from 0 and 1, so no
# shape the tracer sees can be mistaken for a constant of the decode call
EXAMPLE_PAST, EXAMPLE_NEW = 3, 2

# per layer: (kv heads, head dim) of the key and of the value
Layout = list[tuple[tuple[int, int], tuple[int, int]]]


def is_causal_lm(model: nn.Module) -> bool:
    """A model the ``lm`` task runs (``…ForCausalLM``, ``…LMHeadModel``): the one kind whose
    workloads include a decode step."""
    return detect_task({"architectures": [type(model).__name__]}) == "lm"


def cache_layout(model: nn.Module) -> Layout:
    """The shape of ``model``'s KV cache per layer, read from a two-token call; a cache that is
    not one full-attention ``DynamicLayer`` per layer is a `TargetError` saying what it is."""
    name = type(model).__name__
    try:
        with torch.no_grad():
            out = model(input_ids=torch.zeros(1, 2, dtype=torch.long), use_cache=True)
        cache = returned_cache(out)
    except Exception as e:  # a model's own forward: any type
        raise TargetError(f"no decode graph: {name} did not return a KV cache: {e}") from None
    layers = getattr(cache, "layers", None)
    if not layers:
        raise TargetError(
            f"no decode graph: {name} returns a {type(cache).__name__} cache, not per-layer "
            "key/value tensors"
        )
    odd = sorted({type(lay).__name__ for lay in layers} - {"DynamicLayer"})
    if odd:
        raise TargetError(
            f"no decode graph: {name}'s KV cache has {', '.join(odd)} layers; only full-attention "
            "DynamicLayer caches export with a free past length"
        )
    return [((k.shape[1], k.shape[-1]), (v.shape[1], v.shape[-1])) for k, v in _tensors(layers)]


def _tensors(layers: list[Any]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in layers]


class CacheStep(nn.Module):
    """One generation step on flat tensors: ``(input_ids, attention_mask, position_ids, k0, v0,
    k1, v1, ...)`` → ``(logits, k0', v0', ...)``, the model's own ``DynamicCache`` rebuilt from
    the past tensors and flattened after the call. Its model is ``inner``, so the exported
    weights are named ``inner.<our layer name>.weight`` as in the main graph."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.cache_arg = cache_argument(inner)
        # a model that numbers positions itself gets none (the graph then has no such input)
        self.positions = "position_ids" in inspect.signature(inner.forward).parameters

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, S)
        attention_mask: torch.Tensor,  # (B, P + S)
        position_ids: torch.Tensor,  # (B, S)
        *past: torch.Tensor,  # 2 per layer, each (B, heads, P, head dim)
    ) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        cache = DynamicCache(ddp_cache_data=list(zip(past[0::2], past[1::2], strict=True)))
        kwargs: dict[str, Any] = {self.cache_arg: cache, "use_cache": True}
        if self.positions:
            kwargs["position_ids"] = position_ids
        out = self.inner(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        grown = returned_cache(out).layers
        return (out["logits"], *(t for pair in _tensors(grown) for t in pair))


def export_decode(model: nn.Module, layout: Layout) -> onnx.ModelProto:
    """``model`` (a Hugging Face causal LM in float) as the decode graph of the module
    docstring, every batch and length axis free."""
    n = len(layout)
    past_names = [PAST.format(i, kv) for i in range(n) for kv in KV]
    present_names = [PRESENT.format(i, kv) for i in range(n) for kv in KV]
    past = [torch.zeros(1, heads, EXAMPLE_PAST, dim) for shapes in layout for heads, dim in shapes]
    total = EXAMPLE_PAST + EXAMPLE_NEW
    args = (
        torch.zeros(1, EXAMPLE_NEW, dtype=torch.long),
        torch.ones(1, total, dtype=torch.long),
        torch.arange(EXAMPLE_PAST, total).unsqueeze(0),
        *past,
    )
    axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "new"},
        "attention_mask": {0: "batch", 1: "total"},
        "position_ids": {0: "batch", 1: "new"},
        "logits": {0: "batch", 1: "new"},
        **{name: {0: "batch", 2: "past"} for name in past_names},
        **{name: {0: "batch", 2: "total"} for name in present_names},
    }
    f = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                CacheStep(model).eval(),
                args,
                f,
                dynamo=False,
                do_constant_folding=False,
                opset_version=OPSET,
                input_names=["input_ids", "attention_mask", "position_ids", *past_names],
                output_names=["logits", *present_names],
                dynamic_axes=axes,
            )
    except Exception as e:  # the exporter raises many unrelated types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TargetError(
            f"no decode graph: torch.onnx cannot export {type(model).__name__} with its KV cache: "
            f"{first}"
        ) from None
    return onnx.load_from_string(f.getvalue())


class DecodeGraph:
    """The decode graph with the plan written in, loaded in ONNX Runtime. ``payload`` is the
    graph's bytes and ``session`` the session that runs it (the profiler swaps it for its own)."""

    def __init__(self, target: OnnxRuntimeTarget, payload: bytes, layout: Layout) -> None:
        self.payload = payload
        self.layout = layout
        try:
            self.session = target.session(payload)
        except Exception as e:  # ORT's own errors carry no common base class
            msg = str(e).splitlines()[0]
            raise TargetError(f"onnxruntime could not load the decode graph: {msg}") from None
        self.inputs = {i.name for i in self.session.get_inputs()}

    def feed(self, ids: np.ndarray, past: list[np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """The inputs for ``ids`` (B, S) after ``past`` (the ``present`` outputs of the previous
        call, or ``None`` for an empty cache)."""
        batch, new = ids.shape
        if past is None:
            past = [
                np.zeros((batch, heads, 0, dim), np.float32)
                for shapes in self.layout
                for heads, dim in shapes
            ]
        cached = past[0].shape[2]
        feed = {
            "input_ids": ids.astype(np.int64),
            "attention_mask": np.ones((batch, cached + new), np.int64),
            # a model without position ids leaves the input out of the graph
            "position_ids": np.broadcast_to(np.arange(cached, cached + new), (batch, new)).copy(),
        }
        names = [PAST.format(i, kv) for i in range(len(self.layout)) for kv in KV]
        feed.update(zip(names, past, strict=True))
        return {k: v for k, v in feed.items() if k in self.inputs}

    def run(
        self, ids: np.ndarray, past: list[np.ndarray] | None = None
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """(logits (B, S, V), the grown cache) for ``ids`` (B, S) after ``past``."""
        logits, *present = self.session.run(None, self.feed(ids, past))
        return logits, present

    def step(self, prompt: torch.Tensor) -> Callable[[], np.ndarray]:
        """The decode workload: ``prompt`` (1, P) fills the cache once; each call then runs the
        prompt's greedy next token on those P cached tokens and returns its logits (1, 1, V).
        The call carries this graph as ``.graph``."""
        try:
            logits, past = self.run(prompt.numpy())
        except Exception as e:  # ORT's own errors carry no common base class
            msg = str(e).splitlines()[0]
            raise TargetError(f"onnxruntime could not run the decode graph: {msg}") from None
        token = logits[:, -1:].argmax(-1)  # (1, 1)
        feed = self.feed(token, past)

        def run() -> np.ndarray:
            # every output, the grown cache included, as a generation loop would take them
            return self.session.run(None, feed)[0]

        run.graph = self  # type: ignore[attr-defined]
        return run


def build_decode(target: OnnxRuntimeTarget, qmodel: nn.Module) -> DecodeGraph:
    """``qmodel``'s decode graph with its plan written in (see the module docstring)."""
    mods = quant_modules(qmodel)
    twin = float_clone(qmodel, mods)
    layout = cache_layout(twin)
    graph = Graph(export_decode(twin, layout))
    # Linear layers need no calibration (their activation parameters are ours); only a Conv's
    # output range would, and causal LMs have none
    write_plan(graph, mods, None, "inner.")
    return DecodeGraph(target, graph.model.SerializeToString(), layout)


def decode_step(
    target: OnnxRuntimeTarget, qmodel: nn.Module, tokens: torch.Tensor
) -> Callable[[], Any]:
    """The timed decode workload of ``qmodel`` in ORT on a prompt of the first tokens of
    ``tokens`` (128, or one short of the model's position limit, as the native task's)."""
    limit = max_positions(qmodel)
    length = PROMPT_TOKENS if limit is None else min(PROMPT_TOKENS, limit - 1)
    prompt = tokens.reshape(-1)[:length].long().unsqueeze(0)  # (1, P)
    return build_decode(target, qmodel).step(prompt)
