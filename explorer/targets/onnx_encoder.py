"""Text encoders (BERT-family models, sentence-transformers directories, sequence classifiers)
on the ONNX Runtime target.

An encoder reads a padded batch: token ids *and* the attention mask that says which positions
are padding (and, for BERT-like models, token type ids). So its graph is exported with those
inputs, batch and sequence axes both dynamic, and returns what the tasks compare by name:

- ``last_hidden_state`` (batch, tokens, hidden): the embedding task pools it into sentence
  embeddings *outside* the graph, with the very `explorer.tasks.embedding.pool` the native
  target uses (mean over the mask, [CLS], max, ... as the directory's pooling config says), so
  the two targets' cosines, Spearman correlations and latencies measure the same computation;
- ``logits`` (batch, classes) too, for a class with a head: a sequence classifier's accuracy
  and macro-F1 come from them. Such a graph also returns the encoder's last hidden state
  (``hidden_states[-1]``, what the embedding task pools for a class with a head).

The quantized linear layers are written into the graph as for every other model
(`explorer.targets.onnx_qdq`). The artifact's runner takes the tasks' keyword call
(``model(input_ids=..., attention_mask=...)``) and returns those outputs by name, like a
``ModelOutput``; `recipe_script` writes the ``run_onnx.py`` that feeds the same inputs and pools
the same way with numpy alone.

Imports: `explorer.tasks` (pooling), `explorer.targets.base`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from explorer.targets.base import TargetError
from explorer.tasks.embedding import Pooling
from explorer.tasks.task import is_transformers_model

HIDDEN = "last_hidden_state"
LOGITS = "logits"
UNUSED = "not in the exported graph: none of its outputs needs this layer, so ORT never runs it"


@dataclass(frozen=True)
class EncoderGraph:
    """The interface of an encoder's exported graph: input names (``input_ids``,
    ``attention_mask``, and ``token_type_ids`` when the model takes them) and output names
    (``last_hidden_state``, then ``logits`` for a class with a head)."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    vocab_size: int

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "sequence"} for n in self.inputs}
        axes[HIDDEN] = {0: "batch", 1: "sequence"}
        if LOGITS in self.outputs:
            axes[LOGITS] = {0: "batch"}
        return axes

    def example(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Export arguments from a task's batch: (n, T) token ids (the calibration layout, every
        token real) or the tasks' padded layouts (n, 2, T) and (n, k, 2, T), whose axis -2
        stacks token ids and attention mask."""
        if x.dim() == 2:
            ids, mask = x, torch.ones_like(x)
        elif x.dim() >= 3 and x.shape[-2] == 2:
            flat = x.reshape(-1, 2, x.shape[-1])[:2]  # (≤2, 2, T): enough to trace
            ids, mask = flat[:, 0], flat[:, 1]
        else:
            raise TargetError(
                f"an encoder's example input is (n, T) token ids or (..., 2, T) ids and mask, "
                f"not {tuple(x.shape)}"
            )
        args = (ids.long(), mask.long())
        return args + ((torch.zeros_like(args[0]),) if len(self.inputs) == 3 else ())

    def feeds(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> dict[str, np.ndarray]:
        """The session's inputs: int64 arrays; a missing mask is all ones (every token real)
        and missing token types are zeros, as the model itself defaults them."""
        ids = input_ids.detach().long().contiguous().numpy()
        mask = np.ones_like(ids) if attention_mask is None else _int64(attention_mask)
        out = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.inputs:
            types = np.zeros_like(ids) if token_type_ids is None else _int64(token_type_ids)
            out["token_type_ids"] = types
        return out

    def runner(self, sess: Any) -> Callable[..., dict[str, torch.Tensor]]:
        """``run(input_ids=..., attention_mask=..., token_type_ids=...)`` (or token ids as the
        one positional argument) → the graph's outputs by name, like a ``ModelOutput``. Options
        the tasks pass to a ``transformers`` model (``output_hidden_states``, ...) are moot:
        the graph returns its fixed outputs."""
        outputs = list(self.outputs)

        def run(
            x: torch.Tensor | None = None,
            *,
            input_ids: torch.Tensor | None = None,
            attention_mask: torch.Tensor | None = None,
            token_type_ids: torch.Tensor | None = None,
            **_options: Any,
        ) -> dict[str, torch.Tensor]:
            ids = input_ids if input_ids is not None else x
            if ids is None:
                raise TargetError("the encoder graph needs input_ids")
            values = sess.run(outputs, self.feeds(ids, attention_mask, token_type_ids))
            return {n: torch.from_numpy(v) for n, v in zip(outputs, values, strict=True)}

        return run


def _int64(x: torch.Tensor) -> np.ndarray:
    return x.detach().long().contiguous().numpy()


def encoder_graph(model: nn.Module) -> EncoderGraph | None:
    """The graph interface for ``model`` when it is a ``transformers`` text encoder: a model
    that reads token ids (``main_input_name``), takes an attention mask and does not generate
    text (a causal LM exports on token ids alone). None for every other model."""
    if not is_transformers_model(model) or getattr(model, "main_input_name", "") != "input_ids":
        return None
    can_generate = getattr(model, "can_generate", None)
    if callable(can_generate) and can_generate():
        return None
    params = inspect.signature(model.forward).parameters
    if "attention_mask" not in params:
        return None
    inputs = ("input_ids", "attention_mask")
    if "token_type_ids" in params and getattr(model.config, "type_vocab_size", 0):
        inputs += ("token_type_ids",)
    headed = getattr(model, "base_model", model) is not model
    outputs = (HIDDEN, LOGITS) if headed else (HIDDEN,)
    return EncoderGraph(inputs, outputs, int(getattr(model.config, "vocab_size", 2) or 2))


def check_single_use(g: Any, mods: dict[str, nn.Module], prefix: str) -> None:
    """Refuse a quantized layer whose weight the graph reads more than once: a module called
    several times, as ALBERT's one set of layers shared by every block. The plan is written
    into the graph once per layer, at the node that reads its weight
    (`explorer.targets.onnx_qdq`), so the other calls would lose it."""
    for name in mods:
        users = len(g.consumers(f"{prefix}{name}.weight"))
        if users > 1:
            raise TargetError(
                f"onnxruntime cannot run layer {name} as planned: the graph calls it {users} "
                "times (a layer shared across blocks) and the plan is written at one call; the "
                "native target still runs this model"
            )


class EncoderOutput(nn.Module):
    """An encoder as positional tensors in, its named outputs out, for ``torch.onnx.export``.
    Its weights are named ``inner.<our layer name>``."""

    def __init__(self, inner: nn.Module, graph: EncoderGraph) -> None:
        super().__init__()
        self.inner = inner
        self.graph = graph

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        kwargs = dict(zip(self.graph.inputs, args, strict=True))
        if LOGITS not in self.graph.outputs:
            return (self.inner(**kwargs)[HIDDEN],)
        out = self.inner(**kwargs, output_hidden_states=True)
        return out["hidden_states"][-1], out[LOGITS]


RUN_SCRIPT = '''"""Run the quantized encoder as the explorer measured it: model.onnx in ONNX Runtime
(measured with onnxruntime {version}, {threads} thread(s), all graph optimisations).

    pip install onnxruntime numpy
    python run_onnx.py                                 # one random sentence of {length} tokens
    python run_onnx.py inputs.npz [labels.npy] [--save out.npy]

inputs.npz holds input_ids and attention_mask (n, T) as a tokenizer returns them, e.g.
np.savez("inputs.npz", **tokenizer(texts, padding=True, return_tensors="np")); its
token_type_ids are used when the graph takes them (zeros otherwise). {what}
"""

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

THREADS = {threads}
VOCAB = {vocab}
OUTPUT = "{output}"
POOLING = "{pooling}"  # over the attention mask: mean, cls, max or mean_sqrt_len
NORMALIZE = {normalize}  # unit-length embeddings (a sentence-transformers Normalize module)


def pool(states, mask):
    """Sentence embeddings (n, H) from token states (n, T, H): padding never counts."""
    weights = mask.astype(states.dtype)[..., None]  # (n, T, 1)
    if POOLING == "cls":
        out = states[:, 0]
    elif POOLING == "max":
        out = np.where(weights > 0, states, -np.inf).max(axis=1)
    else:
        lengths = np.maximum(weights.sum(axis=1), 1.0)  # (n, 1)
        summed = (states * weights).sum(axis=1)
        out = summed / (lengths if POOLING == "mean" else np.sqrt(lengths))
    if NORMALIZE:
        out = out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
    return out


def macro_f1(pred, labels):
    scores = []
    for c in np.union1d(pred, labels):
        tp = np.sum((pred == c) & (labels == c))
        scores.append(2 * tp / (np.sum(pred == c) + np.sum(labels == c)))
    return float(np.mean(scores))


args = sys.argv[1:]
save = None
if "--save" in args:
    i = args.index("--save")
    save = args[i + 1]
    del args[i : i + 2]
options = ort.SessionOptions()
options.intra_op_num_threads = THREADS
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
model = Path(__file__).with_name("model.onnx")
session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
names = [i.name for i in session.get_inputs()]
if args:
    data = np.load(args[0])
    feeds = {{k: np.asarray(data[k], dtype=np.int64) for k in names if k in data.files}}
else:
    feeds = {{"input_ids": np.random.default_rng(0).integers(0, VOCAB, (1, {length}))}}
feeds.setdefault("attention_mask", np.ones_like(feeds["input_ids"]))
if "token_type_ids" in names:
    feeds.setdefault("token_type_ids", np.zeros_like(feeds["input_ids"]))
(out,) = session.run([OUTPUT], feeds)
if OUTPUT == "last_hidden_state":
    result = pool(out, feeds["attention_mask"])
    first = np.array2string(result[0, :4], precision=4)
    print(f"embeddings {{result.shape}}, the first begins {{first}}")
else:
    result = out
    print(f"logits {{result.shape}}")
    if len(args) > 1:
        labels = np.load(args[1])
        pred = result.argmax(-1)
        accuracy, f1 = float((pred == labels).mean()), macro_f1(pred, labels)
        print(f"accuracy {{accuracy:.4f}}, macro-F1 {{f1:.4f}} on {{len(labels)}} texts")
if save:
    np.save(save, result)
'''


def recipe_script(
    graph: EncoderGraph,
    threads: int,
    version: str,
    pooling: Pooling | None,
    length: int,
    task: str | None = None,
) -> str:
    """``run_onnx.py`` for an encoder graph: embeddings pooled as ``pooling`` says (the
    embedding task's default, mean over the mask, when None), or a classifier's logits scored
    against labels. ``task``: the row's task name (a headed model run as an embedding model
    pools its hidden states)."""
    pooling = pooling or Pooling()
    classify = LOGITS in graph.outputs and task != "embedding"
    what = (
        "With labels.npy (class indices) it prints accuracy and macro-F1."
        if classify
        else f"Embeddings: the last hidden state pooled by {pooling.mode} over the attention mask"
        f"{', then normalised' if pooling.normalize else ''}, as the explorer pools them."
    )
    return RUN_SCRIPT.format(
        version=version,
        threads=threads,
        length=max(1, length),
        what=what,
        vocab=graph.vocab_size,
        output=LOGITS if classify else HIDDEN,
        pooling=pooling.mode,
        normalize=pooling.normalize,
    )
