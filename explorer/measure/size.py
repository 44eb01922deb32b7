"""Size as stored: every byte of the model's state — packed weights, scales, zero points,
activation qparams, and every tensor left in float. It equals the tensor payload of the model's
safetensors export (the header aside), which a test checks."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from explorer.nn.modules import QuantModule


def _unique_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    seen: set[tuple[int, int]] = set()
    out = {}
    for name, t in model.state_dict(keep_vars=False).items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else (id(t), 0)
        if key in seen:
            continue
        seen.add(key)
        out[name] = t
    return out


def size_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in _unique_tensors(model).values())


@dataclass(frozen=True)
class SizeReport:
    total_bytes: int
    quantized_weight_bytes: int  # packed codes + scales + zero points of quantized layers
    quantized_params: int  # weights stored as integers
    total_params: int  # every element of every stored tensor that is a weight or bias

    @property
    def bits_per_quantized_weight(self) -> float | None:
        if not self.quantized_params:
            return None
        return 8.0 * self.quantized_weight_bytes / self.quantized_params

    @property
    def quantized_share(self) -> float:
        return self.quantized_params / self.total_params if self.total_params else 0.0


def size_report(model: nn.Module) -> SizeReport:
    qbytes = qparams = 0
    for module in model.modules():
        if isinstance(module, QuantModule):
            qbytes += module.qweight_view().nbytes
            qparams += module.weight_shape[0] * module.weight_shape[1]
    total_params = qparams + sum(p.numel() for p in model.parameters())
    return SizeReport(size_bytes(model), qbytes, qparams, total_params)


def export_safetensors(model: nn.Module, path: str | Path) -> Path:
    """Write the model's stored tensors (as `size_bytes` counts them) to a safetensors file."""
    path = Path(path)
    tensors = {n: t.detach().contiguous().cpu() for n, t in _unique_tensors(model).items()}
    save_file(tensors, str(path))
    return path


def safetensors_payload_bytes(path: str | Path) -> int:
    """Bytes of tensor data in a safetensors file: file size minus the 8-byte length and header."""
    with open(path, "rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(header_len))
    return sum(
        end - start
        for k, v in header.items()
        if k != "__metadata__"
        for start, end in [v["data_offsets"]]
    )
