"""``mobile-cnn``: a MobileNet-style network on procedurally drawn shapes, the built-in model on
which per-tensor weight quantization collapses and per-channel does not (trend 2 in docs/trends.md);
the default built-in model, whose default sweep shows that and the bit-width cliff.

Why per-tensor scales break MobileNets. Deployment folds each batch norm into the convolution
before it, ``w' = w * gamma / sqrt(running_var + eps)`` (Krishnamoorthi 2018, arXiv 1806.08342,
section 3.2; `explorer.nn.fold`). The factor differs per output channel, and in a depthwise layer
each output channel sees one input channel, so a channel whose input barely varies gets a tiny
``running_var`` and a folded weight up to ``gamma / sqrt(eps)`` (316 gamma for PyTorch's ``eps =
1e-5``) times its raw weight. One such channel sets the per-tensor scale ``max|w'| / 127``, and
every ordinary channel of the layer rounds to zero or one step: MobileNet-v1 drops from 70.9 % to
0.1 % top-1 with per-tensor 8-bit weights and keeps 70.3 % per channel (Krishnamoorthi 2018, table
2). Sheng et al. (arXiv 1803.08607) traced the near-zero variances to depthwise channels whose
inputs are all zero after ReLU; Nagel et al. (data-free quantization, arXiv 1906.04721, figure 2)
show folded depthwise ranges of MobileNet-v2 spanning two orders of magnitude.

Nothing here sets a weight by hand: the collapse comes from ordinary training choices, written
down in `train` and the card. Adam at a high learning rate (0.03, cosine decay, no warm-up)
kills a few pointwise channels, the dying-ReLU effect of large steps: their batch-norm scale
ends small (|gamma| up to about 0.3) against a shift near -1, so after ReLU they output exactly
zero on every image, and the depthwise channels reading them record a running variance near 1e-25.
There is no weight decay on the depthwise filters (the MobileNet paper's advice, Howard et al.
2017, arXiv 1704.04861, section 4) nor on batch-norm parameters (timm's and many recipes'
default), so those channels' depthwise weights and scales keep their size, and folding makes
them 100 to 700 times larger than the layer's median channel. In float they multiply zeros and
change nothing. `folded_range_ratios` measures it; the card records it next to the accuracies.

The data: 32x32 RGB images of ten shapes (`SHAPES`), each drawn with a random size, position,
rotation, foreground and background colour (one light, one dark) and Gaussian noise, rendered
with 2x2 supersampling for anti-aliased edges by `generate`, which is deterministic given its
seed. Each split is its own draw (seeds `DATA_SEED` + split index): 8,000 training images are
generated when asked for (a couple of seconds), and the 500 calibration and 2,000 evaluation images
ship in ``assets/mobile-cnn/data.safetensors`` as uint8 (7.7 MB; the training images would
add 25 MB, and they regenerate bit for bit). `train` rewrites that file from the generator.

The network (inputs ``(pixel / 255 - 0.5) / 0.25``)::

    stem    Conv2d(3, 32, 4, stride 2, pad 1) + BN + ReLU          -> (B, 32, 16, 16)   K = 48
    block   depthwise 3x3 (stride s) + BN + ReLU, pointwise 1x1 + BN + ReLU, for
            (32 -> 64, s 1), (64 -> 128, s 2), (128 -> 128, s 1),   -> (B, 256, 4, 4)
            (128 -> 256, s 2), (256 -> 256, s 1)
    head    global average pool, Linear(256, 10)                        137,450 parameters

Pointwise reductions (K = 32..256) run real int8 and int4 kernels; depthwise convolutions with
float activations have none here and are simulated; the 4x4 stem gives K = 48, a multiple of 16
for int8 (3x3 would give 27), falling back to per-channel at 4 bits.
"""

from __future__ import annotations

import copy
import math
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from explorer.errors import ModelLoadError
from explorer.models import images
from explorer.models.registry import ASSETS, SPLITS, BuiltinModel, Workload, register
from explorer.nn.fold import fold_batch_norm

NAME = "mobile-cnn"
DATA_FILE = "data.safetensors"
SHAPES = (
    "circle",
    "square",
    "triangle",
    "plus",
    "line",
    "ring",
    "frame",
    "hexagon",
    "star",
    "half-disc",
)
SIZE = 32
SUPERSAMPLE = 2
MEAN, STD = 0.5, 0.25
DATA_SEED = 1000
SPLIT_SIZES = {"train": 8000, "calibration": 500, "eval": 2000}
SHIPPED_SPLITS = ("calibration", "eval")
DEFAULT_SEED = 0

STEM_CHANNELS = 32
BLOCKS = ((32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1))
EPOCHS = 10
BATCH = 128
LR = 0.03

_CHUNK = 1024  # images rendered at once: (chunk, 64, 64) float32 coordinates stay near 16 MB


# --- data ------------------------------------------------------------------------------------


def _polygon(u: torch.Tensor, v: torch.Tensor, sides: int, apothem: float) -> torch.Tensor:
    """Inside a regular polygon with one vertex up: every edge's normal distance <= apothem."""
    angles = torch.arange(sides) * (2 * math.pi / sides) - math.pi / 2
    dist = u[..., None] * torch.cos(angles) + v[..., None] * torch.sin(angles)  # (..., sides)
    return dist.amax(dim=-1) <= apothem


def shape_mask(kind: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Whether points ``(u, v)``, in the shape's own frame scaled by its radius, are inside
    shape ``SHAPES[kind]`` (each fits the unit disc, the line and triangle reach 1.1)."""
    rho = torch.sqrt(u * u + v * v)
    box = torch.maximum(u.abs(), v.abs())
    name = SHAPES[kind]
    if name == "circle":
        return rho <= 1.0
    if name == "square":
        return box <= 0.8
    if name == "triangle":
        return _polygon(u, v, 3, 0.55)
    if name == "plus":
        return ((u.abs() <= 0.28) & (v.abs() <= 1.0)) | ((v.abs() <= 0.28) & (u.abs() <= 1.0))
    if name == "line":
        return (v.abs() <= 0.18) & (u.abs() <= 1.1)
    if name == "ring":
        return (rho >= 0.55) & (rho <= 1.0)
    if name == "frame":
        return (box >= 0.5) & (box <= 0.85)
    if name == "hexagon":
        return _polygon(u, v, 6, 0.866)
    if name == "star":
        return rho <= 0.55 + 0.45 * torch.cos(5 * torch.atan2(v, u))
    if name == "half-disc":
        return (rho <= 1.0) & (v >= 0.0)
    raise ValueError(f"shape index {kind} is outside 0..{len(SHAPES) - 1}")


def generate(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images (uint8 (n, 3, 32, 32)) and labels (int64 (n,)), balanced over `SHAPES` and
    fully determined by ``seed``.

    Radius 4 to 11 pixels, centre kept inside the frame, any rotation; one of foreground and
    background is light (each channel 0.55..1), the other dark (0..0.45); noise N(0, s²) with s
    uniform in 0..0.1. Coverage is the fraction of a pixel's 2x2 sub-samples inside the shape.
    """
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % len(SHAPES))[torch.randperm(n, generator=g)]
    radius = 4.0 + 7.0 * torch.rand(n, generator=g)
    margin = 1.1 * radius
    cx = margin + (SIZE - 2 * margin) * torch.rand(n, generator=g)
    cy = margin + (SIZE - 2 * margin) * torch.rand(n, generator=g)
    theta = 2 * math.pi * torch.rand(n, generator=g)
    light = 0.55 + 0.45 * torch.rand(n, 3, generator=g)
    dark = 0.45 * torch.rand(n, 3, generator=g)
    light_shape = torch.rand(n, 1, generator=g) < 0.5
    fg = torch.where(light_shape, light, dark)
    bg = torch.where(light_shape, dark, light)
    sigma = 0.1 * torch.rand(n, generator=g)
    noise = torch.randn(n, 3, SIZE, SIZE, generator=g)

    sub = (torch.arange(SIZE * SUPERSAMPLE) + 0.5) / SUPERSAMPLE  # sub-pixel centres
    ys, xs = torch.meshgrid(sub, sub, indexing="ij")  # (64, 64)
    out = torch.empty(n, 3, SIZE, SIZE, dtype=torch.uint8)
    for start in range(0, n, _CHUNK):
        rows = slice(start, start + _CHUNK)
        dx = xs - cx[rows, None, None]  # (b, 64, 64)
        dy = ys - cy[rows, None, None]
        cos = torch.cos(theta[rows])[:, None, None]
        sin = torch.sin(theta[rows])[:, None, None]
        r = radius[rows, None, None]
        u, v = (cos * dx + sin * dy) / r, (cos * dy - sin * dx) / r
        inside = torch.zeros_like(u, dtype=torch.bool)
        chunk_labels = labels[rows]
        for kind in range(len(SHAPES)):
            pick = chunk_labels == kind
            inside[pick] = shape_mask(kind, u[pick], v[pick])
        cover = F.avg_pool2d(inside[:, None].float(), SUPERSAMPLE)  # (b, 1, 32, 32)
        image = bg[rows, :, None, None] * (1 - cover) + fg[rows, :, None, None] * cover
        image = image + sigma[rows, None, None, None] * noise[rows]
        out[rows] = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    return out, labels


def split_seed(split: str) -> int:
    return DATA_SEED + SPLITS.index(split)


@lru_cache(maxsize=1)
def _generated_train() -> tuple[torch.Tensor, torch.Tensor]:
    return generate(SPLIT_SIZES["train"], split_seed("train"))


def write_data(path: Path) -> None:
    """Generate the shipped splits and write them as ``<split>_images`` / ``<split>_labels``."""
    tensors = {}
    for split in SHIPPED_SPLITS:
        x, y = generate(SPLIT_SIZES[split], split_seed(split))
        tensors |= {f"{split}_images": x, f"{split}_labels": y}
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"generator": f"explorer.models.mobile.generate, seed {DATA_SEED} + split index"}
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)


def raw_split(split: str, data_path: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(uint8 images (n, 3, 32, 32), labels (n,))``: training images generated, the others
    read from the data file."""
    images.check_split(split)
    if split not in SHIPPED_SPLITS:
        return _generated_train()
    data = images.read_data_file(data_path or ASSETS / NAME / DATA_FILE)
    keys = (f"{split}_images", f"{split}_labels")
    if any(key not in data for key in keys):
        raise ModelLoadError(f"{NAME} data file lacks {keys}; rerun its training to rewrite it")
    return data[keys[0]], data[keys[1]]


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels.float() / 255 - MEAN) / STD


def load_split(split: str, data_path: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images (n, 3, 32, 32) float, normalized; labels (n,) int64)`` of one split."""
    x, y = raw_split(split, data_path)
    return normalize(x), y.clone()


# --- model -----------------------------------------------------------------------------------


def separable(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    """MobileNet's block (Howard et al. 2017, figure 3): depthwise 3x3 + BN + ReLU, then
    pointwise 1x1 + BN + ReLU. Convolutions have no bias: the batch norm that follows has one."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False),
        nn.BatchNorm2d(c_in),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_in, c_out, 1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class MobileCNN(nn.Module):
    """A stem convolution, five depthwise-separable blocks and a linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        stem = nn.Sequential(
            nn.Conv2d(3, STEM_CHANNELS, 4, stride=2, padding=1, bias=False),  # (B, 32, 16, 16)
            nn.BatchNorm2d(STEM_CHANNELS),
            nn.ReLU(inplace=True),
        )
        self.features = nn.Sequential(stem, *(separable(*block) for block in BLOCKS))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(BLOCKS[-1][1], len(SHAPES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, 256, 4, 4)
        return self.classifier(self.pool(x).flatten(1))  # (B, 10)


def build() -> nn.Module:
    return MobileCNN()


def folded_range_ratios(model: nn.Module) -> dict[str, float]:
    """Per convolution after batch-norm folding: the largest output channel's ``max|w'|`` over
    the median channel's. Per-tensor scales lose most of a channel's 8-bit steps once this
    passes a few tens."""
    folded, _ = fold_batch_norm(copy.deepcopy(model).eval())
    out = {}
    for name, module in folded.named_modules():
        if isinstance(module, nn.Conv2d):
            ranges = module.weight.detach().flatten(1).abs().amax(dim=1)  # (C_out,)
            out[name] = round(float(ranges.max() / ranges.median()), 1)
    return out


# --- training and the card -------------------------------------------------------------------


def train(out_dir: Path, seed: int = DEFAULT_SEED) -> dict[str, float]:
    """Regenerate the data, train from scratch with ``seed`` and write ``data.safetensors``,
    ``model.safetensors``, ``card.json`` and ``CARD.md`` into ``out_dir``.

    Adam (lr `LR`, cosine decay to 0 per batch, no warm-up, no weight decay), batches of `BATCH`
    for `EPOCHS` epochs over the 8,000 generated training images.
    """
    out_dir = Path(out_dir)
    clock = images.Stopwatch()
    write_data(out_dir / DATA_FILE)
    x, y = load_split("train")
    torch.manual_seed(seed)
    model = build()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    steps = EPOCHS * -(-len(x) // BATCH)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    images.fit(
        model,
        x,
        y,
        epochs=EPOCHS,
        batch_size=BATCH,
        optimizer=optimizer,
        schedule=schedule,
        log=lambda line: print(f"{NAME}: {line}", file=sys.stderr),
    )
    images.save_weights(model, out_dir / "model.safetensors")
    timing = clock.record()
    metrics = evaluate(model, out_dir / DATA_FILE)
    card: dict[str, Any] = {
        **metrics,
        "metric": "accuracy",
        "eval_samples": SPLIT_SIZES["eval"],
        "seed": seed,
        "params": images.params(model),
        "folded_range_ratio": folded_range_ratios(model),
        "ptq_fallbacks": images.ptq_fallbacks(model),
        **timing,
    }
    images.write_card(out_dir, card, card_markdown(card))
    return metrics


def evaluate(model: nn.Module, data_path: Path | None = None) -> dict[str, float]:
    """Float and weight-only PTQ accuracy on the eval split."""
    x, y = load_split("eval", data_path)
    return {"float": images.accuracy(model, x, y), **images.ptq_metrics(model, x, y)}


def workloads() -> dict[str, Workload]:
    return images.image_workloads(lambda: load_split("eval")[0])


def _layer_kind(name: str) -> str:
    if name == "features.0.0":
        return "stem"
    return "depthwise" if name.endswith(".0") else "pointwise"


def card_markdown(card: dict[str, Any]) -> str:
    p = images.percent
    seconds = card["train_seconds_2_cores"]
    timing = (
        f"{seconds} s on 2 cores"
        if seconds is not None
        else f"{card['train_seconds']} s on {card['train_threads']} thread(s)"
    )
    ratios = "\n".join(
        f"| `{name}` | {_layer_kind(name)} | {ratio:g} |"
        for name, ratio in card["folded_range_ratio"].items()
    )
    drop = 100 * (card["float"] - card["w8_tensor"])
    fallbacks = images.fallback_note(card["ptq_fallbacks"])
    return f"""# mobile-cnn

A {card["params"]:,}-parameter MobileNet-style network (depthwise-separable blocks with batch
norm) classifying procedurally drawn shapes; the built-in model that shows why per-channel weight
scales exist (trend 2: per-tensor 8-bit weights lose {drop:.1f} points here).

## Data
- Generated by `explorer.models.mobile.generate` (code in this repository, under the
  repository's licence; no outside data): 32x32 RGB images of ten shapes with random size,
  position, rotation, colours and noise; balanced classes. Shapes: {", ".join(SHAPES)}.
- Splits are separate draws (seed {DATA_SEED} + split index): train {SPLIT_SIZES["train"]:,}
  (regenerated on demand), calibration {SPLIT_SIZES["calibration"]}, held-out evaluation
  {card["eval_samples"]:,} (both shipped in `data.safetensors`). Every number below is on the
  eval split.

## Model
Stem Conv2d(3, 32, 4, stride 2) + BN + ReLU; five MobileNet blocks (depthwise 3x3 + BN + ReLU,
pointwise 1x1 + BN + ReLU): 32→64, 64→128 (stride 2), 128→128, 128→256 (stride 2), 256→256;
global average pool; Linear(256, 10).

## Training
`explorer.models.mobile.train(out_dir, seed={card["seed"]})`: Adam, lr {LR} with cosine decay
per batch and no warm-up, no weight decay on any parameter (none on depthwise filters, as the
MobileNet paper advises, and none on batch norm), batch {BATCH}, {EPOCHS} epochs. Took {timing}
(torch {card["torch"]}).

## Accuracy (eval split, weight-only round-to-nearest PTQ after batch-norm folding)
| setting | accuracy |
| --- | --- |
| float | {p(card["float"])} |
| W8 per-channel | {p(card["w8_channel"])} |
| W8 per-tensor | {p(card["w8_tensor"])} |
| W4 group 32 | {p(card["w4_g32"])} |
| W4 group 128 | {p(card["w4_g128"])} |

Layers whose input width a group size does not divide run per-channel at the same width (the
depthwise filters have 9 weights per channel, the stem 48): {fallbacks}.

## Why per-tensor collapses
Folding batch norm multiplies each output channel by gamma / sqrt(running_var + eps). The high
learning rate kills a few pointwise channels (small batch-norm scale, shift near -1: exactly
zero after ReLU on every image), so the depthwise channels that read them record a running
variance near zero, and their folded weights, untouched by weight decay, come out hundreds of
times larger than the others. In float they multiply zeros; with one scale per tensor they set
the scale, and every ordinary channel of the layer rounds to zero or one step, while per-channel
scales are untouched. Compare MobileNet-v1: 70.9 % float, 0.1 % per-tensor, 70.3 % per-channel
(Krishnamoorthi 2018, arXiv 1806.08342, table 2).

Largest over median output-channel range `max|w'|` after folding:

| convolution | kind | ratio |
| --- | --- | --- |
{ratios}

## Latency
Workloads: `single` (one image) and `batch64` (64 images), held-out images. With float
activations the depthwise layers have no real kernel here: their latency is simulated.
"""


MODEL = register(
    BuiltinModel(
        name=NAME,
        task="classification",
        description="MobileNet-style depthwise-separable CNN with batch norm on generated shapes "
        "(32x32 RGB, 10 classes); per-tensor W8 collapses after BN folding",
        build=build,
        load_split=load_split,
        train=train,
        workloads=workloads,
        metric="accuracy",
        default=True,
        extra={"input_shape": (3, 32, 32), "classes": len(SHAPES), "shapes": SHAPES},
    )
)
