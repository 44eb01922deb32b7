"""ONNX Runtime as a target: the float model is exported with ``torch.onnx.export`` (the
TorchScript exporter, ``dynamo=False``: it works offline and names each node after its module,
``/features/0/Conv`` for ``features.0``), then the plan is written into the graph layer by layer
from the SAME quantized model the native target measures:

- int8 weights (per channel or per tensor): an int8 initializer holding our stored codes, our
  scales and zero points, through a DequantizeLinear into the layer's Conv/Gemm/MatMul (QDQ);
- static activations: QuantizeLinear→DequantizeLinear with the layer's calibrated scale and zero
  point; dynamic per-tensor asymmetric activations: DynamicQuantizeLinear→DequantizeLinear;
- 4- and 8-bit weight-only linear layers in groups of 16–256: ``com.microsoft.MatMulNBits``, whose
  unsigned codes are our stored codes (signed symmetric codes are stored offset by 2^(b-1), which
  is MatMulNBits' default zero point), so the dequantized weights are bit-identical.

ORT then fuses what it can (QLinearConv, MatMulInteger, DynamicQuantizeMatMul); what it leaves as
"DequantizeLinear + float MatMul/Conv" is reported per layer as such.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper, numpy_helper
from torch import nn

from explorer.measure.latency import LatencyResult, measure_callable
from explorer.nn.convert import quant_modules, set_submodule
from explorer.nn.modules import Bf16Conv2d, Bf16Linear, QuantConv2d, QuantLinear, QuantModule
from explorer.quant.config import QuantConfig
from explorer.targets.base import Artifact, Target, TargetError

OPSET = 17
MSDOMAIN = "com.microsoft"


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


class _Graph:
    """The exported graph and the edits that write the plan into it."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.g = model.graph
        self.inits = {t.name: t for t in self.g.initializer}

    def consumers(self, name: str) -> list[onnx.NodeProto]:
        return [n for n in self.g.node if name in n.input]

    def add_init(self, name: str, array: np.ndarray) -> str:
        self.g.initializer.append(numpy_helper.from_array(array, name))
        return name

    def insert_before(self, node: onnx.NodeProto, new: list[onnx.NodeProto]) -> None:
        idx = list(self.g.node).index(node)
        for i, n in enumerate(new):
            self.g.node.insert(idx + i, n)

    def remove_init(self, name: str) -> None:
        t = self.inits.pop(name)
        self.g.initializer.remove(t)


def _qdq_weight(g: _Graph, layer: str, module: QuantModule, wname: str) -> None:
    """Replace the float weight initializer by int8 codes → DequantizeLinear."""
    qw = module.qweight_view()
    shape = tuple(g.inits[wname].dims)
    codes = qw.stored_codes().numpy().astype(np.int8).reshape(shape)
    scale = qw.scale.float().numpy().reshape(-1).astype(np.float32)
    zero = qw.stored_zero().numpy().reshape(-1).astype(np.int8)
    per_tensor = qw.block[0] == qw.shape[0]
    if per_tensor:
        scale, zero = scale.reshape(()), zero.reshape(())
    g.remove_init(wname)
    q = g.add_init(f"{layer}.qweight", codes)
    s = g.add_init(f"{layer}.scale", scale)
    z = g.add_init(f"{layer}.zero", zero)
    attrs = {} if per_tensor else {"axis": 0}
    dq = helper.make_node(
        "DequantizeLinear", [q, s, z], [wname], name=f"{layer}.dq_weight", **attrs
    )
    g.insert_before(g.consumers(wname)[0], [dq])


def _qdq_activation(g: _Graph, layer: str, module: QuantModule, node: onnx.NodeProto) -> None:
    config = module.config
    x = node.input[0]
    y = f"{layer}.act_dq"
    if config.act_mode == "static":
        act = module.act_qparams()
        assert act is not None
        sym = config.act_symmetric
        s = g.add_init(f"{layer}.act_scale", np.array(act.scale, dtype=np.float32))
        zero = np.array(act.zero, dtype=np.int8 if sym else np.uint8)
        z = g.add_init(f"{layer}.act_zero", zero)
        nodes = [
            helper.make_node(
                "QuantizeLinear", [x, s, z], [f"{layer}.act_q"], name=f"{layer}.q_act"
            ),
            helper.make_node(
                "DequantizeLinear", [f"{layer}.act_q", s, z], [y], name=f"{layer}.dq_act"
            ),
        ]
    else:
        outs = [f"{layer}.act_q", f"{layer}.act_s", f"{layer}.act_z"]
        nodes = [
            helper.make_node("DynamicQuantizeLinear", [x], outs, name=f"{layer}.q_act"),
            helper.make_node("DequantizeLinear", outs, [y], name=f"{layer}.dq_act"),
        ]
    g.insert_before(node, nodes)
    node.input[0] = y


def pack_nbits(module: QuantLinear) -> dict[str, np.ndarray]:
    """MatMulNBits' B ``uint8 [N, n_blocks, blob]``, scales ``[N * n_blocks]`` and, when
    asymmetric, packed zero points, from the layer's stored (unsigned) codes."""
    qw = module.qweight_view()
    bits = qw.bits
    n, k = qw.shape
    bk = qw.block[1]
    nb = k // bk
    u = qw.stored_codes().numpy().astype(np.uint8)
    if bits == 8:
        u = (qw.stored_codes().numpy().astype(np.int16) + 128).astype(np.uint8)
        b = u.reshape(n, nb, bk)
    else:
        pairs = u.reshape(n, nb, bk // 2, 2)
        b = (pairs[..., 0] | (pairs[..., 1] << 4)).astype(np.uint8)
    out = {"B": np.ascontiguousarray(b), "scales": qw.scale.float().numpy().reshape(-1)}
    if not qw.symmetric or bits == 8:
        z = qw.stored_zero().numpy().reshape(n, nb).astype(np.int16)
        if bits == 8:
            out["zero_points"] = (z + 128).astype(np.uint8).reshape(-1)
        else:
            z = z.astype(np.uint8)
            if nb % 2:
                z = np.concatenate([z, np.zeros((n, 1), np.uint8)], axis=1)
            zp = z.reshape(n, -1, 2)
            out["zero_points"] = (zp[..., 0] | (zp[..., 1] << 4)).astype(np.uint8).reshape(-1)
    return out


def _matmul_nbits(g: _Graph, layer: str, module: QuantLinear, wname: str) -> None:
    user = g.consumers(wname)[0]
    packed = pack_nbits(module)
    n, k = module.weight_shape
    names = [g.add_init(f"{layer}.{key}", arr) for key, arr in packed.items()]
    inputs = [names[0], names[1]] + ([names[2]] if len(names) > 2 else [])
    attrs = {"K": k, "N": n, "bits": module.spec.weight_bits, "block_size": module.spec.block[1]}
    if user.op_type == "Gemm":
        x, bias, out = (
            user.input[0],
            (user.input[2] if len(user.input) > 2 else None),
            user.output[0],
        )
        mm_out = f"{layer}.nbits_out" if bias else out
        nodes = [
            helper.make_node(
                "MatMulNBits",
                [x, *inputs],
                [mm_out],
                name=f"{layer}.MatMulNBits",
                domain=MSDOMAIN,
                **attrs,
            )
        ]
        if bias:
            nodes.append(helper.make_node("Add", [mm_out, bias], [out], name=f"{layer}.add_bias"))
        g.insert_before(user, nodes)
        g.g.node.remove(user)
    elif user.op_type == "Transpose":
        (mm,) = g.consumers(user.output[0])
        x = mm.input[0] if mm.input[1] == user.output[0] else mm.input[1]
        node = helper.make_node(
            "MatMulNBits",
            [x, *inputs],
            [mm.output[0]],
            name=f"{layer}.MatMulNBits",
            domain=MSDOMAIN,
            **attrs,
        )
        g.insert_before(mm, [node])
        g.g.node.remove(mm)
        g.g.node.remove(user)
    else:
        raise TargetError(f"{layer}: cannot write MatMulNBits into a {user.op_type} node")
    g.remove_init(wname)


def _layer_of(node_name: str, layers: Iterable[str]) -> str | None:
    """Our layer name for an ORT node name (``/features/0/Conv`` or ``features.0.dq_weight``)."""
    for layer in sorted(layers, key=len, reverse=True):
        path = "/" + layer.replace(".", "/") + "/"
        if node_name.startswith(path) or node_name.startswith(layer + "."):
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

    def to_onnx(self, qmodel: nn.Module, example_input: torch.Tensor) -> onnx.ModelProto:
        """The ONNX graph of ``qmodel`` with its plan written in (see the module docstring)."""
        mods = quant_modules(qmodel)
        refused = {n: why for n, m in mods.items() if (why := support(m.config, m))}
        for n, m in qmodel.named_modules():
            if isinstance(m, (Bf16Linear, Bf16Conv2d)):
                refused[n] = "bf16 layers: ONNX Runtime's CPU kernels have no bf16 Conv/Gemm"
        if refused:
            name, why = next(iter(refused.items()))
            raise TargetError(f"onnxruntime cannot run layer {name} as planned: {why}")
        twin = _float_clone(qmodel, mods)
        f = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                twin,
                (example_input,),
                f,
                dynamo=False,
                do_constant_folding=False,
                opset_version=OPSET,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            )
        g = _Graph(onnx.load_from_string(f.getvalue()))
        for layer, module in mods.items():
            wname = f"{layer}.weight"
            if wname not in g.inits:
                raise TargetError(f"{layer}: its weight is not an initializer of the export")
            user = g.consumers(wname)[0]
            compute = user if user.op_type != "Transpose" else g.consumers(user.output[0])[0]
            if module.config.granularity == "group":
                _matmul_nbits(g, layer, module, wname)  # type: ignore[arg-type]
                continue
            if module.spec.act_bits is not None:
                _qdq_activation(g, layer, module, compute)
            _qdq_weight(g, layer, module, wname)
        if not any(o.domain == MSDOMAIN for o in g.model.opset_import):
            g.model.opset_import.append(helper.make_opsetid(MSDOMAIN, 1))
        return g.model

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
        calibration: Iterable[torch.Tensor] | None = None,
    ) -> Artifact:
        model = self.to_onnx(qmodel, example_input)
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
        art.session = sess  # type: ignore[attr-defined]
        return art

    def time(
        self,
        artifact: Artifact,
        workloads: Sequence[torch.Tensor],
        warmup: int = 3,
        repeats: int = 20,
    ) -> list[LatencyResult]:
        return [
            measure_callable(lambda x=x: artifact.runner(x), warmup, repeats) for x in workloads
        ]

    def layer_times(
        self, artifact: Artifact, x: torch.Tensor, repeats: int = 5
    ) -> dict[str, float]:
        """Per-layer milliseconds (median over ``repeats`` runs) from ORT's profiler."""
        with tempfile.TemporaryDirectory() as tmp:
            sess = self.session(artifact.payload, profile=os.path.join(tmp, "prof"))
            feed = {"input": x.detach().float().numpy()}
            for _ in range(repeats + 1):
                sess.run(None, feed)
            with open(sess.end_profiling()) as fh:
                events = json.load(fh)
        per: dict[str, list[float]] = {}
        layers = list(artifact.layers)
        for e in events:
            if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
                continue
            layer = _layer_of(e["name"][: -len("_kernel_time")], layers)
            if layer is not None:
                per.setdefault(layer, []).append(e["dur"] / 1e3)
        return {n: float(np.median(v)) * len(v) / (repeats + 1) for n, v in per.items()}

    def export(self, artifact: Artifact, path: str) -> None:
        with open(path, "wb") as fh:
            fh.write(artifact.payload)


def _float_clone(qmodel: nn.Module, mods: dict[str, QuantModule]) -> nn.Module:
    import copy

    twin = copy.deepcopy(qmodel)
    for name, module in mods.items():
        set_submodule(twin, name, _float_twin(module))
    return twin.eval()


def _runner(sess: ort.InferenceSession):  # noqa: ANN202
    def run(x: torch.Tensor) -> torch.Tensor:
        (out,) = sess.run(["output"], {"input": x.detach().float().contiguous().numpy()})
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
            out[layer] = [
                k for k in kinds if k not in ("QuantizeLinear", "DequantizeLinear")
            ] or kinds
    return out
