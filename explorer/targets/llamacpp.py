"""llama.cpp as a target: the float model is written as a GGUF file whose matrices are in ggml
formats (``q8_0``, ``q4_k``, ... quantized by ggml itself; see `explorer.quant.ggml` and
`explorer.export.gguf`), and that file is run by llama.cpp through ``llama-cpp-python``:

- evaluation: each window of token ids is decoded in one llama.cpp batch with the logits of every
  position kept (``logits_all``), so perplexity, KL to float and same-top-token come from the
  runtime's own logits, on the same windows and against the same float reference as the native
  target;
- latency: ``prefill`` decodes the 128-token prompt into an empty KV cache; ``decode`` is one token
  at batch 1 after that 128-token prompt, the cache cut back to 128 before each step (as the native
  decode workload crops its ``DynamicCache``). Both keep every position's logits, as the native
  workloads compute them;
- threads: the same count as the native target (``n_threads`` and ``n_threads_batch``).

The target runs one format per row (``llamacpp:q4_k``; ``--formats`` on the command line) or a
mixed `GgufPlan`. It quantizes the float model itself, so it takes the sweep's float plan and
refuses a plan that quantized layers already (the explorer's own formats are the native target's).
Architectures the writer does not know (not Llama, Mistral or Qwen2) are refused by name.

Imports: `explorer.quant.ggml`, `explorer.export.gguf`, `explorer.targets.base`; ``llama_cpp``
(the ``llamacpp`` extra).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from explorer.export.gguf import GgufError, GgufPlan, gguf_name, write_gguf
from explorer.measure.latency import LatencyResult, measure_callable
from explorer.quant import ggml
from explorer.quant.config import QuantConfig
from explorer.targets.base import Artifact, Target, TargetError

PROMPT_TOKENS = 128
MAX_CONTEXT = 2048


def _llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise TargetError(
            f"target llamacpp needs llama-cpp-python (llama_cpp is missing): {ggml.EXTRA_HINT}"
        ) from None
    return llama_cpp


class LlamaCppModel:
    """A GGUF file loaded in llama.cpp: logits of token windows, tokenization, and the decode
    and prefill calls that are timed."""

    def __init__(self, path: str | Path, n_ctx: int, threads: int) -> None:
        llama_cpp = _llama_cpp()
        self.path = Path(path)
        self.n_ctx = n_ctx
        try:
            self.llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_batch=n_ctx,
                n_ubatch=n_ctx,
                n_threads=threads,
                n_threads_batch=threads,
                logits_all=True,
                verbose=False,
            )
        except (ValueError, RuntimeError) as e:
            raise TargetError(f"llama.cpp could not load {path}: {e}") from None
        self.vocab = self.llm.n_vocab()
        self._cached: list[int] | None = None  # the prompt the KV cache holds for decode

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` without bos, special-token strings read as text."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) float32 of windows ``ids`` (B, T), each from an empty cache."""
        batch, length = ids.shape
        if length > self.n_ctx:
            raise TargetError(
                f"a window of {length} tokens exceeds llama.cpp's context {self.n_ctx}"
            )
        out = torch.empty(batch, length, self.vocab, dtype=torch.float32)
        self._cached = None
        for b, row in enumerate(ids.tolist()):
            self.llm.reset()
            self.llm.eval(row)
            out[b] = torch.from_numpy(np.array(self.llm.scores[:length], dtype=np.float32))
        return out

    def prefill(self, prompt: Sequence[int]) -> Callable[[], None]:
        def run() -> None:
            self.llm.reset()
            self.llm.eval(prompt)
            self._cached = None

        return run

    def decode(self, prompt: Sequence[int]) -> Callable[[], None]:
        """One token after ``prompt`` in the KV cache; ``eval`` first drops every cached position
        from ``n_tokens`` on, so each call sees the same cache length. The prompt is decoded
        again (untimed in steady state) whenever another call used the cache in between."""
        context = len(prompt)
        prompt = list(prompt)
        token = 0

        def fill() -> None:
            nonlocal token
            self.llm.reset()
            self.llm.eval(prompt)
            token = int(np.argmax(self.llm.scores[context - 1]))
            self._cached = prompt

        def step() -> None:
            if self._cached is not prompt:
                fill()
            self.llm.n_tokens = context
            self.llm.eval([token])

        fill()
        return step


def _format_plan(fmt: str | None, plan: GgufPlan | dict[str, Any] | None) -> GgufPlan:
    if isinstance(plan, dict):
        plan = GgufPlan.from_dict(plan)
    if plan is not None:
        return plan
    return GgufPlan(default=ggml.format_of(fmt or "f16").name)


class LlamaCppTarget(Target):
    name = "llamacpp"

    def __init__(
        self,
        format: str | None = None,  # noqa: A002 - the CLI's word (--formats)
        plan: GgufPlan | dict[str, Any] | None = None,
        threads: int | None = None,
        model_dir: str | None = None,
    ) -> None:
        self.plan = _format_plan(format, plan)
        self.threads = threads or torch.get_num_threads()
        self.model_dir = model_dir

    @property
    def format(self) -> str:
        """The row's ``format``: the ggml type, or ``mixed``."""
        return self.plan.default if self.plan.is_uniform() else "mixed"

    def version(self) -> str:
        return str(_llama_cpp().__version__)

    def settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {"threads": self.threads, "format": self.format}
        if not self.plan.is_uniform():
            out["plan"] = self.plan.to_dict()
        return out

    def support(self, config: QuantConfig, module: nn.Module | None = None) -> str | None:
        if config.is_float and config.float_dtype == "fp32":
            return None
        return (
            "llama.cpp quantizes the float model itself in ggml formats (--formats q8_0,q4_k,...); "
            "the explorer's own formats run on the native target"
        )

    def build(
        self,
        qmodel: nn.Module,
        example_input: torch.Tensor,
        calibration: Iterable[torch.Tensor] | None = None,
    ) -> Artifact:
        from explorer.nn.convert import quant_modules

        if quant_modules(qmodel):
            raise TargetError(
                "llamacpp takes the float model (the fp32 row) and quantizes it in ggml formats; "
                "this plan already quantized layers"
            )
        config = getattr(qmodel, "config", None)
        model_dir = self.model_dir or str(getattr(config, "_name_or_path", "") or "")
        if not model_dir or not (Path(model_dir) / "tokenizer.json").exists():
            raise TargetError(
                "llamacpp needs the model's Hugging Face directory with its tokenizer.json "
                f"(got {model_dir or 'none'})"
            )
        folder = Path(tempfile.mkdtemp(prefix="explorer-gguf-"))
        path = folder / f"model-{self.format}.gguf"
        try:
            report = write_gguf(qmodel, model_dir, path, self.plan)
        except GgufError as e:
            shutil.rmtree(folder, ignore_errors=True)
            raise TargetError(f"llamacpp: {e}") from None
        positions = int(getattr(config, "max_position_embeddings", MAX_CONTEXT))
        n_ctx = min(MAX_CONTEXT, max(positions, example_input.shape[-1], PROMPT_TOKENS + 1))
        runtime = LlamaCppModel(path, n_ctx, self.threads)
        prompt = example_input.reshape(-1)[:PROMPT_TOKENS].tolist()

        art = Artifact(self.name, runtime.logits, payload=path)
        art.layers = _layers(qmodel, report)
        art.runtime = runtime  # type: ignore[attr-defined]
        art.report = report  # type: ignore[attr-defined]
        art.workloads = {  # type: ignore[attr-defined]
            "decode": runtime.decode(prompt),
            "prefill": runtime.prefill(prompt),
        }
        art.size_bytes = _tensor_bytes(path)  # type: ignore[attr-defined]
        art.bits_per_weight = report.bits_per_weight  # type: ignore[attr-defined]
        return art

    def time(
        self,
        artifact: Artifact,
        workloads: Sequence[torch.Tensor],
        warmup: int = 3,
        repeats: int = 20,
    ) -> list[LatencyResult]:
        """The artifact's own decode and prefill calls (``workloads`` are not used: llama.cpp
        is timed on the task's prompt given at build)."""
        runs = artifact.workloads.values()  # type: ignore[attr-defined]
        return [measure_callable(run, warmup, repeats) for run in runs]

    def layer_report(
        self, artifact: Artifact, run: Callable[[], Any], repeats: int = 5
    ) -> dict[str, dict[str, Any]]:
        """Per layer, what a row's ``layers[*]`` gets: llama.cpp's tensor name (``gguf``:
        ``blk.3.ffn_down``), the ggml type written (``ggml_type``) and the one asked for, and the
        kernel. llama.cpp has no per-layer profiler in its Python binding: no time per layer."""
        return {
            name: {
                "gguf": info["gguf"],
                "ggml_type": info["type"],
                "ggml_asked": info["asked"],
                "kernel": info["kernels"][0],
            }
            for name, info in artifact.layers.items()
        }

    def export(self, artifact: Artifact, path: str) -> None:
        shutil.copyfile(artifact.payload, path)

    def export_recipe(self, artifact: Artifact, folder: str | Path) -> dict[str, Path]:
        """The measured ``model.gguf``, ``quantize.sh`` (the same plan with ``llama-quantize``
        for a full-size model) and ``plan.json`` in ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        files = {
            "gguf": folder / "model.gguf",
            "command": folder / "quantize.sh",
            "plan": folder / "plan.json",
        }
        self.export(artifact, str(files["gguf"]))
        report = artifact.report  # type: ignore[attr-defined]
        files["command"].write_text(
            "#!/bin/sh\n# The plan measured here, applied by llama.cpp's own tools to a full-size"
            " model:\n# 1. an F16 GGUF: python convert_hf_to_gguf.py MODEL_DIR --outtype f16 "
            "--outfile model-f16.gguf\n# 2. the same per-tensor types:\n"
            + self.plan.quantize_command("model-f16.gguf", f"model-{self.format}.gguf")
            + "\n"
        )
        os.chmod(files["command"], 0o755)
        files["plan"].write_text(
            json.dumps(
                {
                    "target": self.name,
                    "llama_cpp_python": self.version(),
                    "format": self.format,
                    "plan": self.plan.to_dict(),
                    "tensors": report.types,
                    "fallbacks": report.fallbacks(),
                    "bits_per_weight": report.bits_per_weight,
                },
                indent=2,
            )
        )
        return files


def _tensor_bytes(path: Path) -> int:
    """Bytes of tensor data in a GGUF file (weights as stored; metadata and tokenizer not)."""
    from gguf import GGUFReader

    return int(sum(t.n_bytes for t in GGUFReader(str(path)).tensors))


def _layers(model: nn.Module, report: Any) -> dict[str, dict[str, Any]]:
    """Per linear layer (our name): llama.cpp's tensor name, the asked and written ggml type."""
    out = {}
    for name, module in model.named_modules():
        tensor = gguf_name(name)
        if tensor is None or not isinstance(module, (nn.Linear, nn.Embedding)):
            continue
        written = report.types.get(f"{tensor}.weight")
        if written is None:  # a tied output: llama.cpp runs the embedding
            continue
        out[name] = {
            "gguf": tensor,
            "type": written,
            "asked": report.asked[f"{tensor}.weight"],
            "kernels": [f"ggml {written}"],
        }
    return out


def check_runtime() -> None:
    """Raise `TargetError` naming the extra when llama-cpp-python or gguf is missing."""
    _llama_cpp()
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise TargetError(f"target llamacpp needs the gguf package: {ggml.EXTRA_HINT}") from None
