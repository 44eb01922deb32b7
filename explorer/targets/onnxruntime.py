"""ONNX Runtime as a target: the float model is exported with ``torch.onnx.export`` (the
TorchScript exporter, ``dynamo=False``: it works offline and names each node after its module,
``/features/features.1/Conv`` for ``features.1``; a Hugging Face model through `TaskOutput`, token
ids or pixel values in, logits out; a text encoder with ids and attention mask in and its hidden
states out, `explorer.targets.onnx_encoder`), then the plan is written into the graph layer by
layer from the SAME quantized model the native target measures, in the QDQ form ORT's optimiser
fuses (`explorer.targets.onnx_qdq`): our int8 codes, scales and zero points; static activations as
QuantizeLinear→DequantizeLinear with our calibrated parameters; int32 biases; convolution outputs
quantized; dynamic activations as ``DynamicQuantizeMatMul``; 4/8-bit weight-only groups as
``MatMulNBits`` (whose unsigned codes are our stored codes, so the dequantized weights are
bit-identical).

`OnnxRuntimeTarget.build` loads the graph with every optimisation on, reads the optimised graph
back and reports, per layer, the node kinds ORT kept (`fused_kinds`: QLinearConv, QGemm,
MatMulIntegerToFloat, ... or "DequantizeLinear + float Conv" where it did not fuse);
`profile` / `layer_report` map ORT's profiler node times to our layer names; `export_recipe`
writes the measured ``model.onnx`` and a script that runs it.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper
from torch import nn

from explorer.nn.convert import quant_modules, set_submodule
from explorer.nn.modules import Bf16Conv2d, Bf16Linear, QuantConv2d, QuantModule
from explorer.quant.config import QuantConfig
from explorer.targets.base import Artifact, Target, TargetError
from explorer.targets.onnx_encoder import (
    UNUSED,
    EncoderGraph,
    EncoderOutput,
    check_single_use,
    encoder_graph,
    recipe_script,
)
from explorer.targets.onnx_qdq import MSDOMAIN, Graph, batches_of, pack_nbits, write_plan
from explorer.tasks.task import is_transformers_model

__all__ = ["OnnxRuntimeTarget", "fused_kinds", "pack_nbits", "support"]

OPSET = 17
PROMPT_TOKENS = 128  # a language model's prefill, as the native workloads run it
ONNX_FILE = "model.onnx"
DECODE_FILE = "model_decode.onnx"  # a causal LM's decode step with its KV cache
SCRIPT_FILE = "run_onnx.py"
RUN_SCRIPT = '''"""Run the quantized model as the explorer measured it: model.onnx in ONNX Runtime
(measured with onnxruntime {version}, {threads} thread(s), all graph optimisations).

    pip install onnxruntime numpy
    python run_onnx.py                          # a random input of the measured shape
    python run_onnx.py inputs.npy [labels.npy]  # your inputs; with labels, the score

Labels are class indices (prints accuracy) or, for a language model, next-token ids with -100
where a token is not scored (prints perplexity).
"""

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

THREADS = {threads}
INPUT_SHAPE = {shape}  # as measured; the batch axis (and a token sequence's length) is free
INPUT_DTYPE = "{dtype}"

options = ort.SessionOptions()
options.intra_op_num_threads = THREADS
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
model = Path(__file__).with_name("model.onnx")
session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])

if len(sys.argv) > 1:
    x = np.load(sys.argv[1]).astype(INPUT_DTYPE)
elif INPUT_DTYPE == "int64":
    x = np.random.default_rng(0).integers(0, 2, INPUT_SHAPE, dtype=np.int64)
else:
    x = np.random.default_rng(0).standard_normal(INPUT_SHAPE).astype(np.float32)
(out,) = session.run(["output"], {"input": x})
print(f"output {out.shape} {out.dtype}")
if len(sys.argv) > 2:
    labels = np.load(sys.argv[2])
    if out.ndim == 3:  # (batch, tokens, vocabulary) logits
        logits = out - out.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        scored = labels != -100
        nll = -np.take_along_axis(logp, np.where(scored, labels, 0)[..., None], -1)[..., 0]
        print(f"perplexity {float(np.exp(nll[scored].mean())):.4f} on {scored.sum()} tokens")
    else:
        print(f"accuracy {float((out.argmax(-1) == labels).mean()):.4f} on {len(labels)} samples")
'''
# nodes around a layer's kernel that move or (de)quantize data without computing the layer
PLUMBING = ("QuantizeLinear", "DequantizeLinear", "Transpose", "Flatten", "Reshape", "Identity")


def _float_twin(module: QuantModule) -> nn.Module:
    """A float layer of the same geometry holding the dequantized weight (placeholder: its
    weight initializer is replaced by our codes after export)."""
    w = module.qweight_view().dequantize()
    bias = module.bias is not None
    if isinstance(module, QuantConv2d):
        c = module.conv
        layer = nn.Conv2d(
            c["in_channels"],
            c["out_channels"],
            c["kernel_size"],
            c["stride"],
            c["padding"],
            c["dilation"],
            c["groups"],
            bias=bias,
        )
    else:
        layer = nn.Linear(module.in_features, module.out_features, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(w.reshape(layer.weight.shape))
        if bias:
            layer.bias.copy_(module.bias)
    return layer


def support(config: QuantConfig, module: nn.Module | None = None) -> str | None:
    """``None`` when ORT runs ``config`` as planned, else why not (one line)."""
    if config.is_float:
        return None if config.float_dtype == "fp32" else "bf16 layers: only fp32 float layers"
    bits = config.weight_bits
    if bits not in (4, 8):
        return f"{bits}-bit weights: ONNX Runtime has int4 and int8 weight kernels only"
    if config.act_bits is not None and config.act_bits != 8:
        return f"{config.act_bits}-bit activations: ONNX Runtime quantizes activations to 8 bits"
    if config.algorithm in ("awq", "smoothquant"):
        return f"{config.algorithm}: the per-input-channel input scale is not exported"
    if config.act_bits is not None and config.act_mode == "dynamic":
        if config.act_granularity == "token":
            return (
                "per-token dynamic activations: ONNX Runtime's DynamicQuantizeLinear is per tensor"
            )
        if config.act_symmetric:
            return (
                "symmetric dynamic activations: ONNX Runtime's DynamicQuantizeLinear is "
                "asymmetric uint8"
            )
    conv = isinstance(module, QuantConv2d)
    if config.granularity == "group":
        if config.act_bits is not None or conv:
            return "per-group weights: ONNX Runtime runs them only as weight-only linear layers"
        g = config.group_size or 0
        if g < 16 or g > 256 or g & (g - 1):
            return f"group size {g}: MatMulNBits needs a power of two from 16 to 256"
        return None
    if bits == 4:
        return "4-bit weights: ONNX Runtime runs them only per group (MatMulNBits)"
    return None


def _layer_of(node_name: str, layers: Iterable[str]) -> str | None:
    """Our layer name for an ORT node name: the exporter's scope path, whose parts are module
    names (``/features/features.1/Conv``, ``/blocks.0/attn/qkv/MatMul``,
    ``/inner/model/layers.0/mlp/up_proj/MatMul``), or one of our own nodes
    (``features.1.dq_weight``). Read with dots for slashes, the name holds ``.<layer>.``."""
    dotted = "." + node_name.strip("/").replace("/", ".") + "."
    for layer in sorted(layers, key=len, reverse=True):
        if f".{layer}." in dotted:
            return layer
    return None


class OnnxRuntimeTarget(Target):
    name = "onnxruntime"

    def __init__(self, threads: int | None = None, provider: str = "CPUExecutionProvider") -> None:
        self.threads = threads or torch.get_num_threads()
        self.provider = provider

    def version(self) -> str:
        return ort.__version__

    def settings(self) -> dict[str, Any]:
        return {"threads": self.threads, "provider": self.provider, "optimization": "all"}

    def support(self, config: QuantConfig, module: nn.Module | None = None) -> str | None:
        return support(config, module)

    def to_onnx(
        self,
        qmodel: nn.Module,
        example_input: torch.Tensor,
        calibration: torch.Tensor | Iterable[torch.Tensor] | None = None,
    ) -> onnx.ModelProto:
        """The ONNX graph of ``qmodel`` with its plan written in (see `explorer.targets.onnx_qdq`);
        ``calibration`` gives the output ranges of convolutions that QLinearConv needs."""
        mods = quant_modules(qmodel)
        refused = {n: why for n, m in mods.items() if (why := support(m.config, m))}
        for n, m in qmodel.named_modules():
            if isinstance(m, (Bf16Linear, Bf16Conv2d)):
                refused[n] = "bf16 layers: ONNX Runtime's CPU kernels have no bf16 Conv/Gemm"
        if refused:
            name, why = next(iter(refused.items()))
            raise TargetError(f"onnxruntime cannot run layer {name} as planned: {why}")
        twin, prefix = float_clone(qmodel, mods), ""
        self.encoder = encoder_graph(twin)
        if self.encoder is not None:  # ids and attention mask in, outputs by name
            enc = self.encoder
            wrapped, prefix = EncoderOutput(twin, enc).eval(), "inner."
            args = enc.example(example_input)
            g = Graph(export_graph(wrapped, args, enc.inputs, enc.outputs, enc.dynamic_axes()))
            # a layer none of the outputs needs (BertModel's pooler under last_hidden_state)
            # is pruned by the exporter: nothing to quantize, and ORT never runs it
            unused = {n: UNUSED for n in mods if f"{prefix}{n}.weight" not in g.inits}
            mods = {n: m for n, m in mods.items() if n not in unused}
            check_single_use(g, mods, prefix)
        else:
            if is_transformers_model(twin):
                twin, prefix = TaskOutput(twin), "inner."
            g = Graph(export_float(twin, example_input))
        calibrate = None
        if calibration is not None:
            batches = batches_of(calibration)
            calibrate = lambda m, tensors: self.ranges(m, tensors, batches)  # noqa: E731
        self.notes = write_plan(g, mods, calibrate, prefix)
        if self.encoder is not None:
            self.notes.update(unused)
        return g.model

    def ranges(
        self, model: onnx.ModelProto, tensors: list[str], batches: list[torch.Tensor]
    ) -> dict[str, tuple[float, float]]:
        """(min, max) of each of ``tensors`` over ``batches``, run in ORT itself (unoptimised,
        so every tensor survives) on the graph as written so far."""
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        if not any(o.domain == MSDOMAIN for o in probe.opset_import):
            probe.opset_import.append(helper.make_opsetid(MSDOMAIN, 1))
        for t in tensors:
            probe.graph.output.append(
                helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
            )
        so = self._options()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(probe.SerializeToString(), so, providers=[self.provider])
        lo = dict.fromkeys(tensors, np.inf)
        hi = dict.fromkeys(tensors, -np.inf)
        for b in batches:
            encoder = getattr(self, "encoder", None)
            feeds = encoder.feeds(b) if encoder else {"input": _feed(b)}
            outs = sess.run(tensors, feeds)
            for t, v in zip(tensors, outs, strict=True):
                lo[t], hi[t] = min(lo[t], float(v.min())), max(hi[t], float(v.max()))
        return {t: (lo[t], hi[t]) for t in tensors}

    def _options(self, optimized: str | None = None, profile: str | None = None) -> Any:
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if optimized:
            so.optimized_model_filepath = optimized
        if profile:
            so.enable_profiling = True
            so.profile_file_prefix = profile
        return so

    def session(self, model_bytes: bytes, **kw: Any) -> ort.InferenceSession:
        return ort.InferenceSession(model_bytes, self._options(**kw), providers=[self.provider])

    def build(
        self,
        qmodel: nn.Module,
        example_input: torch.Tensor,
        calibration: torch.Tensor | Iterable[torch.Tensor] | None = None,
    ) -> Artifact:
        model = self.to_onnx(qmodel, example_input, calibration)
        notes, encoder = self.notes, self.encoder
        data = model.SerializeToString()
        layers = list(quant_modules(qmodel))
        with tempfile.TemporaryDirectory() as tmp:
            opt = os.path.join(tmp, "optimized.onnx")
            try:
                sess = self.session(data, optimized=opt)
            except Exception as e:  # ORT's own errors carry no common base class
                msg = str(e).splitlines()[0]
                raise TargetError(f"onnxruntime could not load the exported graph: {msg}") from None
            kinds = fused_kinds(onnx.load(opt), layers)
        art = Artifact(self.name, _runner(sess), payload=data)
        art.layers = {n: {"kernels": kinds.get(n, [])} for n in layers}
        for n, note in notes.items():
            art.layers[n]["note"] = note
        art.session = sess  # type: ignore[attr-defined]
        art.input_shape = tuple(example_input.shape)  # type: ignore[attr-defined]
        art.input_dtype = str(_feed(example_input[:1]).dtype)  # type: ignore[attr-defined]
        art.encoder = encoder  # type: ignore[attr-defined]
        if not example_input.is_floating_point() and encoder is None:
            # token ids: this graph keeps no KV cache, so it times the prefill of the first
            # PROMPT_TOKENS tokens; a causal LM's decode step runs in a second graph that carries
            # the cache (explorer.targets.onnx_decode), or stays untimed with the reason
            from explorer.targets.onnx_decode import decode_step, is_causal_lm

            prompt = example_input.reshape(-1)[:PROMPT_TOKENS].long().unsqueeze(0)  # (1, P)
            workloads: dict[str, Callable[[], Any]] = {"prefill": lambda: art.runner(prompt)}
            untimed: dict[str, str] = {}
            if is_causal_lm(qmodel):
                try:
                    workloads["decode"] = decode_step(self, qmodel, example_input)
                except TargetError as e:
                    untimed["decode"] = str(e)
            art.workloads, art.untimed = workloads, untimed  # type: ignore[attr-defined]
        return art

    def profile(
        self, artifact: Artifact, run: Callable[[], Any], repeats: int = 5
    ) -> tuple[dict[str, float], float]:
        """(per-layer milliseconds, whole-call milliseconds), medians over ``repeats`` calls of
        ``run`` (after one warm-up call) with ORT's profiler on: each node's kernel time is
        summed into the layer its name belongs to, per call."""
        # a decode step runs its own graph in its own session (explorer.targets.onnx_decode)
        graph = getattr(run, "graph", None)
        holder, attr = (graph, "session") if graph is not None else (artifact, "runner")
        saved = getattr(holder, attr)
        with tempfile.TemporaryDirectory() as tmp:
            payload = artifact.payload if graph is None else graph.payload
            sess = self.session(payload, profile=os.path.join(tmp, "prof"))
            setattr(holder, attr, _runner(sess) if graph is None else sess)
            try:
                for _ in range(repeats + 1):
                    run()
            finally:
                setattr(holder, attr, saved)
            with open(sess.end_profiling()) as fh:
                events = json.load(fh)
        calls = sorted(
            (e["ts"], e["ts"] + e["dur"])
            for e in events
            if e.get("cat") == "Session" and e.get("name") == "model_run"
        )[1:]
        per_call: list[dict[str, float]] = [{} for _ in calls]
        layers = list(artifact.layers)
        for e in events:
            if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
                continue
            layer = _layer_of(e["name"][: -len("_kernel_time")], layers)
            i = next((i for i, (a, b) in enumerate(calls) if a <= e["ts"] <= b), None)
            if layer is not None and i is not None:
                per_call[i][layer] = per_call[i].get(layer, 0.0) + e["dur"] / 1e3
        times = {n: float(np.median([c.get(n, 0.0) for c in per_call])) for n in layers}
        total = float(np.median([(b - a) / 1e3 for a, b in calls])) if calls else 0.0
        return {n: t for n, t in times.items() if t > 0}, total

    def layer_times(
        self, artifact: Artifact, x: torch.Tensor, repeats: int = 5
    ) -> dict[str, float]:
        """Per-layer milliseconds on input ``x`` (see `profile`)."""
        return self.profile(artifact, lambda: artifact.runner(x), repeats)[0]

    def layer_report(
        self, artifact: Artifact, run: Callable[[], Any], repeats: int = 5
    ) -> dict[str, dict[str, Any]]:
        """What a row's ``layers[*]`` gets from the runtime, per layer: the kernels ORT runs it
        with (``fused``, and ``kernel`` as one string), its profiled ``latency_ms`` and its
        ``latency_share`` of the whole call."""
        times, total = self.profile(artifact, run, repeats)
        out = {}
        for name, info in artifact.layers.items():
            ms = times.get(name)
            out[name] = {
                "fused": list(info.get("kernels", [])),
                "kernel": " / ".join(info.get("kernels", [])) or None,
                "simulated": False,  # every layer runs on ORT's own kernels
                "latency_ms": ms,
                "latency_share": ms / total if ms is not None and total > 0 else None,
            }
            if info.get("note"):
                out[name]["note"] = info["note"]
        return out

    def export(self, artifact: Artifact, path: str) -> None:
        with open(path, "wb") as fh:
            fh.write(artifact.payload)

    def export_recipe(self, artifact: Artifact, folder: str | Path) -> dict[str, Path]:
        """The measured ``model.onnx`` and ``run_onnx.py``, a script that runs it in ONNX
        Runtime with the measured settings (and scores it when given labels), in ``folder``;
        for a causal LM also ``model_decode.onnx``, the KV-cache graph its decode was timed on."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        files = {"onnx": folder / ONNX_FILE, "script": folder / SCRIPT_FILE}
        self.export(artifact, str(files["onnx"]))
        decode = getattr(artifact, "workloads", {}).get("decode")
        if decode is not None:  # the KV-cache graph the decode step was timed on (onnx_decode)
            files["decode_onnx"] = folder / DECODE_FILE
            files["decode_onnx"].write_bytes(decode.graph.payload)
        shape = list(getattr(artifact, "input_shape", []))
        dtype = getattr(artifact, "input_dtype", "float32")
        encoder = getattr(artifact, "encoder", None)
        if encoder is not None:  # ids and mask in; embeddings pooled as the task pools them
            task = getattr(artifact, "task", None)
            pooling, length = getattr(task, "pooling", None), shape[-1] if shape else 8
            name = getattr(task, "name", None)
            script = recipe_script(encoder, self.threads, ort.__version__, pooling, length, name)
            files["script"].write_text(script)
            return files
        files["script"].write_text(
            RUN_SCRIPT.replace("{threads}", str(self.threads))
            .replace("{shape}", repr(shape))
            .replace("{dtype}", dtype)
            .replace("{version}", ort.__version__)
        )
        return files


class TaskOutput(nn.Module):
    """A Hugging Face model as one tensor in, the compared tensor out: token ids (with an
    all-ones attention mask, so no packed-sequence detection runs) or pixel values in, logits
    out. Its weights are named ``inner.<our layer name>``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point():
            return self.inner(pixel_values=x)["logits"]
        return self.inner(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False)["logits"]


def export_float(model: nn.Module, example_input: torch.Tensor) -> onnx.ModelProto:
    """``model`` exported by the TorchScript exporter, batch axis dynamic (and the sequence axis
    of token ids). An operator the exporter cannot write is a `TargetError` naming it."""
    axes = {0: "batch"} if example_input.is_floating_point() else {0: "batch", 1: "sequence"}
    dynamic = {"input": axes, "output": axes}
    return export_graph(model, (example_input,), ("input",), ("output",), dynamic)


def export_graph(
    model: nn.Module,
    args: tuple[torch.Tensor, ...],
    input_names: tuple[str, ...],
    output_names: tuple[str, ...],
    dynamic_axes: dict[str, dict[int, str]],
) -> onnx.ModelProto:
    """`export_float` with the graph's inputs and outputs named (an encoder's ids and mask)."""
    f = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                args,
                f,
                dynamo=False,
                do_constant_folding=False,
                opset_version=OPSET,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes=dynamic_axes,
            )
    except Exception as e:  # the exporter raises many unrelated types
        text = str(e)
        op = re.search(r"operator '([^']+)'", text)
        why = f"operator {op.group(1)} has no ONNX opset {OPSET} export" if op else text
        raise TargetError(
            f"torch.onnx cannot export {type(model).__name__}: {why.splitlines()[0]}; "
            "the native target still runs this model"
        ) from None
    return onnx.load_from_string(f.getvalue())


def float_clone(qmodel: nn.Module, mods: dict[str, QuantModule]) -> nn.Module:
    import copy

    twin = copy.deepcopy(qmodel)
    for name, module in mods.items():
        set_submodule(twin, name, _float_twin(module))
    return twin.eval()


def _feed(x: torch.Tensor) -> np.ndarray:
    """A batch as the graph's input: token ids stay int64, everything else is float32."""
    x = x.detach()
    return (x.long() if not x.is_floating_point() else x.float()).contiguous().numpy()


def _runner(sess: ort.InferenceSession):  # noqa: ANN202
    names = tuple(i.name for i in sess.get_inputs())
    if names[:2] == ("input_ids", "attention_mask"):  # an encoder's graph: outputs by name
        outputs = tuple(o.name for o in sess.get_outputs())
        return EncoderGraph(names, outputs, vocab_size=0).runner(sess)

    def run(x: torch.Tensor) -> torch.Tensor:
        (out,) = sess.run(["output"], {"input": _feed(x)})
        return torch.from_numpy(out)

    return run


def fused_kinds(model: onnx.ModelProto, layers: Iterable[str]) -> dict[str, list[str]]:
    """Per layer, the compute node kinds ORT kept after optimisation: an integer kernel
    (QLinearConv, MatMulInteger, DynamicQuantizeMatMul, MatMulNBits, ...) or, when it did not
    fuse, "DequantizeLinear + float <op>"."""
    layers = list(layers)
    ops: dict[str, list[str]] = {}
    for node in model.graph.node:
        layer = _layer_of(node.name, layers)
        if layer is None:
            for name in list(node.input) + list(node.output):
                layer = _layer_of(name, layers) if name.startswith(tuple(layers)) else None
                if layer:
                    break
        if layer is not None:
            ops.setdefault(layer, []).append(node.op_type)
    out = {}
    compute = {"Conv", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul"}
    for layer, kinds in ops.items():
        if "DequantizeLinear" in kinds and compute & set(kinds):
            float_op = next(k for k in kinds if k in compute)
            out[layer] = [f"DequantizeLinear + float {float_op}"]
        else:
            out[layer] = [k for k in kinds if k not in PLUMBING] or kinds
    return out
