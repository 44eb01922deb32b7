"""Writing a quantization plan into an exported ONNX graph in the form ONNX Runtime fuses.

ORT's graph optimiser turns a QDQ group into an integer kernel only when the group has the shape
its selectors look for (onnxruntime ``qdq_selector_action_transformer.cc``; "QDQ format" in the
ORT quantization docs):

- ``Conv``: DequantizeLinear on the input, on the weight (int8, per channel on axis 0) and,
  optionally, on an int32 bias whose scale is exactly ``s_x * s_w``; the output must feed a
  QuantizeLinear. Then the group becomes ``QLinearConv``. A ``Relu`` between the Conv and that
  QuantizeLinear is dropped when the quantized zero point is the bottom of the range (uint8
  zero 0), since clamping at zero is then what the quantization already does.
- ``Gemm``: the same with an optional output QuantizeLinear → ``QGemm`` (float output without).
- ``MatMul``: with an output QuantizeLinear → ``QLinearMatMul``; without → ``MatMulIntegerToFloat``.
- dynamic activations: the single contrib node ``DynamicQuantizeMatMul`` (per-tensor uint8
  activations quantized at run time, int8 weights) is written directly.

So, for each layer the plan quantizes with static 8-bit activations, this module writes:
the layer's input quantization (our calibrated scale and zero point; a symmetric int8 input that
comes out of a ``Relu`` is written as uint8 with the same scale and zero point 0, which is the
same grid with room up to 255 instead of 127 steps, so the Relu folds), the weight codes, the
bias as int32 at ``s_x * s_w``, and for a Conv whose output is not already quantized for the
next layer an output quantization calibrated on the calibration batches (min-max, uint8).

The integer weight codes, scales and zero points are our stored ones, never re-quantized.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from explorer.nn.modules import QuantConv2d, QuantLinear, QuantModule
from explorer.targets.base import TargetError

MSDOMAIN = "com.microsoft"
# ops that only move or reshape values: a tensor's quantization can be written before them
SHAPE_OPS = ("Flatten", "Reshape", "Identity", "Dropout")


class Graph:
    """The exported graph and the edits that write the plan into it."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.g = model.graph
        self.inits = {t.name: t for t in self.g.initializer}

    def consumers(self, name: str) -> list[onnx.NodeProto]:
        return [n for n in self.g.node if name in n.input]

    def producer(self, name: str) -> onnx.NodeProto | None:
        return next((n for n in self.g.node if name in n.output), None)

    def add_init(self, name: str, array: np.ndarray) -> str:
        t = numpy_helper.from_array(array, name)
        self.g.initializer.append(t)
        self.inits[name] = t
        return name

    def insert_before(self, node: onnx.NodeProto, new: list[onnx.NodeProto]) -> None:
        idx = list(self.g.node).index(node)
        for i, n in enumerate(new):
            self.g.node.insert(idx + i, n)

    def insert_after(self, tensor: str, new: list[onnx.NodeProto], out: str) -> None:
        """Insert ``new`` (reading ``tensor``, producing ``out``) so that every reader of
        ``tensor`` reads ``out`` instead; a graph output keeps its name (the float value is
        renamed ``<tensor>.float``)."""
        producer = self.producer(tensor)
        idx = 0 if producer is None else list(self.g.node).index(producer) + 1
        if any(o.name == tensor for o in self.g.output) and producer is not None:
            src = f"{tensor}.float"
            producer.output[list(producer.output).index(tensor)] = src
            new[0].input[0] = src
            new[-1].output[0] = tensor
        else:
            for n in self.consumers(tensor):
                for i, name in enumerate(n.input):
                    if name == tensor:
                        n.input[i] = out
        for i, n in enumerate(new):
            self.g.node.insert(idx + i, n)

    def remove_init(self, name: str) -> None:
        self.g.initializer.remove(self.inits.pop(name))

    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.inits[name])


def quant_point(g: Graph, node: onnx.NodeProto) -> tuple[str, onnx.NodeProto]:
    """Where ``node``'s input should be quantized, as (tensor, the reader on the way to
    ``node``): back over shape-only ops with a single reader, so the quantization sits right
    after the op that computed the values."""
    tensor, reader = node.input[0], node
    while True:
        p = g.producer(tensor)
        if p is None or p.op_type not in SHAPE_OPS or len(g.consumers(p.output[0])) != 1:
            return tensor, reader
        if len(g.consumers(p.input[0])) != 1:
            return tensor, reader
        tensor, reader = p.input[0], p


def _is_relu_output(g: Graph, tensor: str) -> bool:
    p = g.producer(tensor)
    return p is not None and p.op_type == "Relu"


def _qdq(layer: str, tag: str, tensor: str, s: str, z: str) -> tuple[list[onnx.NodeProto], str]:
    q, y = f"{layer}.{tag}_q", f"{layer}.{tag}_dq"
    nodes = [
        helper.make_node("QuantizeLinear", [tensor, s, z], [q], name=f"{layer}.q_{tag}"),
        helper.make_node("DequantizeLinear", [q, s, z], [y], name=f"{layer}.dq_{tag}"),
    ]
    return nodes, y


def weight_codes(module: QuantModule) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Our stored codes (int8, the layer's weight shape), scales and zero points, flat per output
    channel (or scalars for a per-tensor layer)."""
    qw = module.qweight_view()
    codes = qw.stored_codes().numpy().astype(np.int8)
    scale = qw.scale.float().numpy().reshape(-1).astype(np.float32)
    zero = qw.stored_zero().numpy().reshape(-1).astype(np.int8)
    per_tensor = qw.block[0] == qw.shape[0]
    if per_tensor:
        scale, zero = scale.reshape(()), zero.reshape(())
    return codes, scale, zero, per_tensor


def write_weight(g: Graph, layer: str, module: QuantModule, wname: str) -> onnx.NodeProto:
    """Replace the float weight initializer by int8 codes → DequantizeLinear; returns the node
    that computes with it. A MatMul's weight, exported as ``Transpose(W)``, is stored as the
    transposed codes with per-column scales (axis 1), so the DequantizeLinear feeds the MatMul
    directly, as ORT's selectors require."""
    codes, scale, zero, per_tensor = weight_codes(module)
    user = g.consumers(wname)[0]
    shape = tuple(g.inits[wname].dims)
    g.remove_init(wname)
    axis = 0
    out = wname
    if user.op_type == "Transpose":
        (compute,) = g.consumers(user.output[0])
        codes, axis, out = codes.reshape(shape).T, 1, user.output[0]
        g.g.node.remove(user)
    else:
        compute, codes = user, codes.reshape(shape)
    q = g.add_init(f"{layer}.qweight", np.ascontiguousarray(codes))
    s = g.add_init(f"{layer}.scale", scale)
    z = g.add_init(f"{layer}.zero", zero)
    attrs = {} if per_tensor else {"axis": axis}
    dq = helper.make_node("DequantizeLinear", [q, s, z], [out], name=f"{layer}.dq_weight", **attrs)
    g.insert_before(compute, [dq])
    return compute


def write_static_input(g: Graph, layer: str, module: QuantModule, node: onnx.NodeProto) -> float:
    """Our calibrated input quantization right in front of ``node`` (ORT's selectors need the
    DequantizeLinear to feed the op directly); returns its scale."""
    act = module.act_qparams()
    assert act is not None
    tensor, reader = quant_point(g, node)
    unsigned = not module.config.act_symmetric or (act.zero == 0 and _is_relu_output(g, tensor))
    s = g.add_init(f"{layer}.act_scale", np.array(act.scale, dtype=np.float32))
    z = g.add_init(f"{layer}.act_zero", np.array(act.zero, dtype=np.uint8 if unsigned else np.int8))
    nodes, y = _qdq(layer, "act", node.input[0], s, z)
    g.insert_before(node, nodes)
    # only this layer reads the quantized values; other readers keep the float tensor
    node.input[0] = y
    if tensor != nodes[0].input[0]:
        # the same quantization where the values were computed too: ORT drops the pair around
        # the shape ops and fuses the producer (QLinearGlobalAveragePool, QLinearConv + Relu)
        early, y = _qdq(layer, "act_src", tensor, s, z)
        g.insert_before(reader, early)
        reader.input[list(reader.input).index(tensor)] = y
    return act.scale


def write_bias(g: Graph, layer: str, node: onnx.NodeProto, x_scale: float) -> None:
    """A Conv/Gemm float bias as int32 codes at scale ``s_x * s_w`` (what QLinearConv and QGemm
    add to their int32 accumulators); rounding moves each bias by at most half a step of the
    accumulator, far below the activation's own step."""
    if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or not node.input[2]:
        return
    bname = node.input[2]
    if bname not in g.inits:
        return
    bias = g.array(bname).astype(np.float64)
    w_scale = g.array(f"{layer}.scale")
    scale = (np.float32(x_scale) * w_scale.astype(np.float32)).astype(np.float32)
    scale = np.broadcast_to(scale, bias.shape).astype(np.float32)
    codes = np.clip(np.round(bias / scale.astype(np.float64)), -(2**31), 2**31 - 1)
    q = g.add_init(f"{layer}.qbias", codes.astype(np.int32))
    s = g.add_init(f"{layer}.bias_scale", scale)
    z = g.add_init(f"{layer}.bias_zero", np.zeros(bias.shape, np.int32))
    out = f"{layer}.bias_dq"
    dq = helper.make_node("DequantizeLinear", [q, s, z], [out], name=f"{layer}.dq_bias", axis=0)
    g.insert_before(node, [dq])
    node.input[2] = out
    if not g.consumers(bname):
        g.remove_init(bname)


def output_point(g: Graph, node: onnx.NodeProto) -> tuple[str, tuple[str, str] | None] | None:
    """Where a Conv's output should be quantized (after its Relu, if one follows) and, when the
    values reach the next layer's QuantizeLinear only through shape ops, that quantization's
    (scale, zero) to repeat there (ORT then drops the pair around the shape ops); ``None`` when
    the output already feeds a QuantizeLinear."""
    tensor = node.output[0]
    readers = g.consumers(tensor)
    if len(readers) == 1 and readers[0].op_type == "Relu":
        tensor = readers[0].output[0]
        readers = g.consumers(tensor)
    if readers and all(r.op_type == "QuantizeLinear" for r in readers):
        return None
    walk = tensor
    while len(readers) == 1 and readers[0].op_type in SHAPE_OPS:
        walk = readers[0].output[0]
        readers = g.consumers(walk)
    if len(readers) == 1 and readers[0].op_type == "QuantizeLinear":
        return tensor, (readers[0].input[1], readers[0].input[2])
    return tensor, None


def write_output(
    g: Graph, layer: str, tensor: str, lo: float, hi: float, qparams: tuple[str, str] | None
) -> None:
    """Quantize ``tensor``: with ``qparams`` (the next layer's) when given, else uint8 min-max
    over (lo, hi) (zero point 0 after a Relu, so the Relu folds)."""
    if qparams is not None:
        s, z = qparams
    else:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        scale = max(hi - lo, 1e-12) / 255.0
        zero = int(np.clip(np.round(-lo / scale), 0, 255))
        s = g.add_init(f"{layer}.out_scale", np.array(scale, dtype=np.float32))
        z = g.add_init(f"{layer}.out_zero", np.array(zero, dtype=np.uint8))
    nodes, y = _qdq(layer, "out", tensor, s, z)
    g.insert_after(tensor, nodes, y)


def write_dynamic(g: Graph, layer: str, module: QuantModule, node: onnx.NodeProto) -> None:
    """A linear layer with dynamic per-tensor asymmetric activations as ORT's
    ``DynamicQuantizeMatMul``: float A in, uint8 quantized at run time, int8 ``B`` [K, N]."""
    codes, scale, zero, _ = weight_codes(module)
    n, k = module.weight_shape
    if node.op_type == "Gemm":
        x, bias, out = node.input[0], (node.input[2] if len(node.input) > 2 else ""), node.output[0]
        remove = [node]
        wname = node.input[1]
    elif node.op_type == "Transpose":
        (mm,) = g.consumers(node.output[0])
        x = mm.input[0] if mm.input[1] == node.output[0] else mm.input[1]
        bias, out, remove, wname = "", mm.output[0], [node, mm], node.input[0]
    else:
        raise TargetError(f"{layer}: dynamic activations run only on linear layers in ONNX Runtime")
    b = g.add_init(f"{layer}.qweight", np.ascontiguousarray(codes.reshape(n, k).T))
    s = g.add_init(f"{layer}.scale", scale)
    z = g.add_init(f"{layer}.zero", zero)
    new = helper.make_node(
        "DynamicQuantizeMatMul",
        [x, b, s, z, bias],
        [out],
        name=f"{layer}.DynamicQuantizeMatMul",
        domain=MSDOMAIN,
    )
    g.insert_before(remove[-1], [new])
    for r in remove:
        g.g.node.remove(r)
    g.remove_init(wname)


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


def write_nbits(g: Graph, layer: str, module: QuantLinear, wname: str) -> None:
    user = g.consumers(wname)[0]
    packed = pack_nbits(module)
    n, k = module.weight_shape
    names = [g.add_init(f"{layer}.{key}", arr) for key, arr in packed.items()]
    inputs = [names[0], names[1]] + ([names[2]] if len(names) > 2 else [])
    attrs = {"K": k, "N": n, "bits": module.spec.weight_bits, "block_size": module.spec.block[1]}

    def nbits(x: str, out: str) -> onnx.NodeProto:
        return helper.make_node(
            "MatMulNBits",
            [x, *inputs],
            [out],
            name=f"{layer}.MatMulNBits",
            domain=MSDOMAIN,
            **attrs,
        )

    if user.op_type == "Gemm":
        x, out = user.input[0], user.output[0]
        bias = user.input[2] if len(user.input) > 2 else None
        mm_out = f"{layer}.nbits_out" if bias else out
        nodes = [nbits(x, mm_out)]
        if bias:
            nodes.append(helper.make_node("Add", [mm_out, bias], [out], name=f"{layer}.add_bias"))
        g.insert_before(user, nodes)
        g.g.node.remove(user)
    elif user.op_type == "Transpose":
        (mm,) = g.consumers(user.output[0])
        x = mm.input[0] if mm.input[1] == user.output[0] else mm.input[1]
        g.insert_before(mm, [nbits(x, mm.output[0])])
        g.g.node.remove(mm)
        g.g.node.remove(user)
    else:
        raise TargetError(f"{layer}: cannot write MatMulNBits into a {user.op_type} node")
    g.remove_init(wname)


Calibrate = Callable[[onnx.ModelProto, list[str]], dict[str, tuple[float, float]]]


def write_plan(
    g: Graph,
    mods: dict[str, QuantModule],
    calibrate: Calibrate | None,
    prefix: str = "",
) -> dict[str, str]:
    """Write every quantized layer of ``mods`` into ``g``. ``calibrate(model, tensors)`` returns
    each tensor's (min, max) over the calibration batches; without it, Conv outputs stay float
    (and ORT then runs those layers as DequantizeLinear + float Conv). Returns, per layer, a
    note on what was written when it departs from the fused form. ``prefix``: what the export
    put in front of our layer names (a wrapper's attribute)."""
    notes: dict[str, str] = {}
    outputs: dict[str, str] = {}
    for layer, module in mods.items():
        wname = f"{prefix}{layer}.weight"
        if wname not in g.inits:
            raise TargetError(f"{layer}: its weight is not an initializer of the export")
        config = module.config
        if config.granularity == "group":
            write_nbits(g, layer, module, wname)  # type: ignore[arg-type]
            continue
        if config.act_bits is not None and config.act_mode == "dynamic":
            if isinstance(module, QuantConv2d):
                notes[layer] = "dynamic activations on a convolution: no ORT integer kernel"
            else:
                write_dynamic(g, layer, module, g.consumers(wname)[0])
                continue
        compute = write_weight(g, layer, module, wname)
        if config.act_bits is None:
            notes[layer] = "weight-only int8: ORT dequantizes and runs the float op"
            continue
        if config.act_mode == "dynamic":
            _write_dynamic_qdq(g, layer, compute)
            continue
        x_scale = write_static_input(g, layer, module, compute)
        write_bias(g, layer, compute, x_scale)
        if compute.op_type == "Conv":
            outputs[layer] = compute.name
    points = {}
    for layer, node_name in outputs.items():
        node = next(n for n in g.g.node if n.name == node_name)
        point = output_point(g, node)
        if point is not None:
            points[layer] = point
    pending = [t for t, qparams in points.values() if qparams is None]
    ranges: dict[str, tuple[float, float]] = {}
    if pending and calibrate is not None:
        ranges = calibrate(g.model, pending)
    for layer, (tensor, qparams) in points.items():
        if qparams is None and tensor not in ranges:
            notes[layer] = "output not quantized (no calibration data): no QLinearConv"
            continue
        write_output(g, layer, tensor, *ranges.get(tensor, (0.0, 0.0)), qparams)
    if not any(o.domain == MSDOMAIN for o in g.model.opset_import):
        g.model.opset_import.append(helper.make_opsetid(MSDOMAIN, 1))
    return notes


def _write_dynamic_qdq(g: Graph, layer: str, node: onnx.NodeProto) -> None:
    outs = [f"{layer}.act_q", f"{layer}.act_s", f"{layer}.act_z"]
    y = f"{layer}.act_dq"
    nodes = [
        helper.make_node("DynamicQuantizeLinear", [node.input[0]], outs, name=f"{layer}.q_act"),
        helper.make_node("DequantizeLinear", outs, [y], name=f"{layer}.dq_act"),
    ]
    g.insert_before(node, nodes)
    node.input[0] = y


def batches_of(data: torch.Tensor | Iterable[torch.Tensor], size: int = 64) -> list[torch.Tensor]:
    """Calibration data as a list of batches (a tensor is split along its first axis)."""
    if isinstance(data, torch.Tensor):
        return list(data.split(size))
    return list(data)
