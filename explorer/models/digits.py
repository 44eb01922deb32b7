"""``digits-cnn``: a small convolutional network on the 8x8 handwritten digits of UCI's "Optical
Recognition of Handwritten Digits" (Alpaydin & Kaynak, 1998), the smallest built-in model.

The data are the 1,797 images scikit-learn ships as ``load_digits`` (the UCI test set: 32x32
bitmaps from 13 writers, each 4x4 block reduced to its count of set pixels, 0..16). They ship in
``assets/digits-cnn/data.safetensors`` (``images`` uint8 [1797, 8, 8], ``labels`` int64 [1797],
``split`` uint8 [1797]: 0 train, 1 calibration, 2 eval), written once by
``scripts/extract_digits.py`` from the scikit-learn wheel, so nothing is downloaded at run time
and scikit-learn is no dependency. The split is stratified by class and seeded (`assign_splits`):
60 % train, 10 % calibration, 30 % held-out evaluation (1,078 / 179 / 540 images).

The network is shaped for the integer kernels, whose reduction width K (``in_channels * kh *
kw`` for a convolution) must be a multiple of 16 (int8) or 32 (int4), and a multiple of the group
size for grouped scales::

    input (B, 1, 8, 8), pixels / 16
    pad    ZeroPad2d(1, 2, 1, 2)                   -> (B, 1, 11, 11)
    conv1  Conv2d(1, 32, 4) + ReLU                 -> (B, 32, 8, 8)    K = 16
    conv2  Conv2d(32, 64, 2, stride 2) + ReLU      -> (B, 64, 4, 4)    K = 128
    conv3  Conv2d(64, 128, 2, stride 2) + ReLU     -> (B, 128, 2, 2)   K = 256
    fc     Dropout(0.2) + Linear(512, 10)                              K = 512

A 4x4 first kernel gives K = 16 where the usual 3x3 gives 9, so the first layer runs a real int8
kernel (an even kernel needs the asymmetric padding in front to keep the 8x8 grid); at 4 bits its
16 columns hold no group of 32 and it falls back to per-channel, which has no real kernel
(simulated). Downsampling by 2x2 stride-2 convolutions (patchify, as in ConvNeXt's stem) keeps
every other K a multiple of 128, so W4 g32 and g128 apply as asked. 46,826 parameters.

Training (`train`): Adam (lr 3e-3, cosine decay to 0, weight decay 1e-4), batches of 64 for 100
epochs, each batch shifted by up to one pixel (zero fill) as augmentation; seeded, a few seconds.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from explorer.errors import ModelLoadError
from explorer.models import images
from explorer.models.registry import ASSETS, SPLITS, BuiltinModel, Workload, register

NAME = "digits-cnn"
DATA_FILE = "data.safetensors"
SPLIT_FRACTIONS = (0.6, 0.1, 0.3)  # train, calibration, eval
SPLIT_SEED = 20240601
DEFAULT_SEED = 0
N_IMAGES = 1797
PIXEL_MAX = 16.0  # each pixel counts the set pixels of a 4x4 block

EPOCHS = 100
BATCH = 64
LR = 3e-3
WEIGHT_DECAY = 1e-4


class DigitsCNN(nn.Module):
    """Three convolutions and a linear classifier; see the module docstring for shapes."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.ZeroPad2d((1, 2, 1, 2)),  # (B, 1, 11, 11): "same" padding for an even kernel
            nn.Conv2d(1, 32, kernel_size=4),  # (B, 32, 8, 8)
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=2, stride=2),  # (B, 64, 4, 4)
            nn.ReLU(),
            nn.Conv2d(64, 128, kernel_size=2, stride=2),  # (B, 128, 2, 2)
            nn.ReLU(),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),  # (B, 512)
            nn.Dropout(0.2),
            nn.Linear(512, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build() -> nn.Module:
    return DigitsCNN()


def assign_splits(labels: torch.Tensor, seed: int = SPLIT_SEED) -> torch.Tensor:
    """Split codes (0 train, 1 calibration, 2 eval), stratified: each class is shuffled with a
    generator seeded by ``seed`` and cut by `SPLIT_FRACTIONS`, rounding to the nearest image."""
    generator = torch.Generator().manual_seed(seed)
    codes = torch.empty(len(labels), dtype=torch.uint8)
    for label in range(int(labels.max()) + 1):
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_train = round(SPLIT_FRACTIONS[0] * len(members))
        n_calib = round(SPLIT_FRACTIONS[1] * len(members))
        codes[members[:n_train]] = 0
        codes[members[n_train : n_train + n_calib]] = 1
        codes[members[n_train + n_calib :]] = 2
    return codes


def load_split(split: str, data_path: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images (n, 1, 8, 8) float in [0, 1], labels (n,) int64)`` of one split."""
    images.check_split(split)
    data = images.read_data_file(data_path or ASSETS / NAME / DATA_FILE)
    missing = {"images", "labels", "split"} - set(data)
    if missing:
        raise ModelLoadError(f"{NAME} data file lacks {sorted(missing)}")
    mask = data["split"] == SPLITS.index(split)
    x = data["images"][mask].float().div(PIXEL_MAX).unsqueeze(1)  # (n, 1, 8, 8)
    return x, data["labels"][mask].clone()


def shift_augment(x: torch.Tensor) -> torch.Tensor:
    """Each image shifted by -1, 0 or +1 pixels in each direction, uncovered pixels zero."""
    b, _, h, w = x.shape
    padded = F.pad(x, (1, 1, 1, 1))[:, 0]  # (B, h + 2, w + 2)
    dy, dx = torch.randint(0, 3, (2, b))
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (B, h, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (B, 1, w)
    return padded[torch.arange(b)[:, None, None], rows, cols].unsqueeze(1)  # (B, 1, h, w)


def train(out_dir: Path, seed: int = DEFAULT_SEED) -> dict[str, float]:
    """Train from scratch with ``seed``; write ``model.safetensors``, ``card.json`` and
    ``CARD.md`` into ``out_dir`` (the data file is not generated: it is read from the assets)."""
    out_dir = Path(out_dir)
    clock = images.Stopwatch()
    torch.manual_seed(seed)
    x, y = load_split("train")
    model = build()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
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
        augment=shift_augment,
        log=lambda line: print(f"{NAME}: {line}", file=sys.stderr),
    )
    images.save_weights(model, out_dir / "model.safetensors")
    timing = clock.record()
    metrics = evaluate(model)
    card: dict[str, Any] = {
        **metrics,
        "metric": "accuracy",
        "eval_samples": len(load_split("eval")[1]),
        "seed": seed,
        "params": images.params(model),
        "ptq_fallbacks": images.ptq_fallbacks(model),
        **timing,
    }
    images.write_card(out_dir, card, card_markdown(card))
    return metrics


def evaluate(model: nn.Module) -> dict[str, float]:
    """Float and weight-only PTQ accuracy on the eval split."""
    x, y = load_split("eval")
    return {"float": images.accuracy(model, x, y), **images.ptq_metrics(model, x, y)}


def workloads() -> dict[str, Workload]:
    return images.image_workloads(lambda: load_split("eval")[0])


def card_markdown(card: dict[str, Any]) -> str:
    p = images.percent
    seconds = card["train_seconds_2_cores"]
    timing = (
        f"{seconds} s on 2 cores"
        if seconds is not None
        else f"{card['train_seconds']} s on {card['train_threads']} thread(s)"
    )
    return f"""# digits-cnn

The smallest built-in model: a {card["params"]:,}-parameter convolutional network classifying the
8x8 handwritten digits of the UCI "Optical Recognition of Handwritten Digits" data set.

## Data
- Source: E. Alpaydin and C. Kaynak, "Optical Recognition of Handwritten Digits", UCI Machine
  Learning Repository, 1998, https://doi.org/10.24432/C50P49 (the 1,797-image copy that
  scikit-learn ships as `load_digits`, extracted from its wheel by `scripts/extract_digits.py`).
- Licence: Creative Commons Attribution 4.0 International (CC BY 4.0), as the UCI repository
  licenses it; `data.safetensors` is that data re-encoded (uint8 pixels 0..16, int64 labels).
- Splits (stratified by class, seed {SPLIT_SEED}): train 60 %, calibration 10 %, held-out
  evaluation 30 % ({card["eval_samples"]} images). Every number below is on the eval split.

## Model
ZeroPad2d(1, 2, 1, 2) → Conv2d(1, 32, 4) + ReLU → Conv2d(32, 64, 2, stride 2) + ReLU →
Conv2d(64, 128, 2, stride 2) + ReLU → Dropout(0.2) + Linear(512, 10). The 4x4 first kernel makes
that layer's reduction width 16 (an int8 kernel needs a multiple of 16); every other layer's is a
multiple of 128. Input: pixels divided by 16, shape (B, 1, 8, 8).

## Training
`explorer.models.digits.train(out_dir, seed={card["seed"]})`: Adam, lr {LR} with cosine decay,
weight decay {WEIGHT_DECAY}, batch {BATCH}, {EPOCHS} epochs, random ±1 pixel shifts. Took
{timing} (torch {card["torch"]}).

## Accuracy (eval split, weight-only round-to-nearest PTQ, activations float)
| setting | accuracy |
| --- | --- |
| float | {p(card["float"])} |
| W8 per-channel | {p(card["w8_channel"])} |
| W8 per-tensor | {p(card["w8_tensor"])} |
| W4 group 32 | {p(card["w4_g32"])} |
| W4 group 128 | {p(card["w4_g128"])} |

Layers whose input width a group size does not divide run per-channel at the same width
(simulated: no int4 kernel takes 16 columns): {images.fallback_note(card["ptq_fallbacks"])}.

## Latency
Workloads: `single` (one image) and `batch64` (64 images), held-out images.
"""


MODEL = register(
    BuiltinModel(
        name=NAME,
        task="classification",
        description="Small CNN on the 8x8 UCI handwritten digits (1,797 images, 10 classes)",
        build=build,
        load_split=load_split,
        train=train,
        workloads=workloads,
        metric="accuracy",
        extra={"input_shape": (1, 8, 8), "classes": 10},
    )
)
