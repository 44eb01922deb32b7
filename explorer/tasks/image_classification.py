"""Image classification: top-1 accuracy of a Hugging Face image classifier (ViT, ResNet,
ConvNeXt, MobileNet ``…ForImageClassification``) on labelled images.

Data:
- an image folder, one subfolder per class (``data/cat/1.png``, ``data/dog/7.jpg``). Class names
  map to the config's ``label2id`` when every folder name is one of its labels; otherwise the
  folders' sorted order gives the class indices (the description says which was used). Images
  go through the directory's own image processor (``AutoImageProcessor``, resizing and
  normalising exactly as the model was trained), never through a guess of ours;
- a ``.npz`` or ``.safetensors`` file with ``inputs`` (n, C, H, W) pixel tensors, already
  preprocessed, and ``labels`` (n,), read by `explorer.models.userdata`;
- nothing: seeded random pixels of the processor's size, fidelity only.

Limits come before decoding: at most `MAX_IMAGES` files and `MAX_FILE_BYTES` each, and each
image's width × height (read from its header) at most `MAX_PIXELS`, so a decompression bomb is
refused by name before Pillow expands it. An unreadable image names its file.

What is measured: top-1 accuracy against the labels (paired bootstrap, as every metric), and
fidelity of the logits to float (SQNR, cosine, top-1 agreement, KL). Workloads: ``single`` (one
image) and ``batch32``.

Imports: `explorer.tasks.task`, `explorer.measure.evaluation`, `explorer.models.userdata` (tensor
files) and, lazily, Pillow and ``transformers``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from explorer.measure.evaluation import SampleStats, classification_stats, fidelity_per_sample
from explorer.tasks.task import Task, TaskData, TaskError, Workload, named_output

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
MAX_IMAGES = 2048
MAX_FILE_BYTES = 32 << 20
MAX_PIXELS = 40_000_000
"""Width × height above which an image is refused as a likely decompression bomb (about a
6300 × 6300 photo; Pillow's own warning starts near 89 M)."""
CALIBRATION_SAMPLES = 128
MIN_SAMPLES = 8
BATCH_WORKLOAD = 32
PROCESS_CHUNK = 64


class ImageClassificationTask(Task):
    """Evaluation inputs are pixel tensors (n, C, H, W), as the image processor gives them."""

    name = "classification"
    output = "logits"
    eval_batch = 32

    def describe(self) -> str:
        return (
            "top-1 accuracy against the images' classes, and fidelity of the logits to float, "
            "on pixels from the directory's image processor"
        )

    # --- data ------------------------------------------------------------------------------
    def load_data(self, model: nn.Module, model_dir: Path | None, data: Path | None) -> TaskData:
        if data is None:
            x, y, description = self._random_pixels(model, model_dir), None, ""
            description = (
                f"no data: fidelity to float on {len(x)} seeded random images "
                f"{tuple(x.shape[1:])} (pass --data with an image folder)"
            )
        elif data.is_dir():
            x, y, description = self._folder(model, model_dir, data)
        elif data.suffix.lower() in (".npz", ".safetensors"):
            x, y, description = _tensor_file(model, data)
        else:
            raise TaskError(
                f"{data.name}: an image classifier reads an image folder (one subfolder per "
                "class) or .npz/.safetensors with inputs (n, C, H, W) and labels"
            )
        if len(x) < MIN_SAMPLES:
            raise TaskError(f"{data} has {len(x)} images; give at least {MIN_SAMPLES}")
        n_cal = min(CALIBRATION_SAMPLES, len(x) // 4)
        x_eval = x[n_cal:]
        batch = x_eval[torch.arange(BATCH_WORKLOAD) % len(x_eval)].contiguous()
        return TaskData(
            eval_split=(x_eval, None if y is None else y[n_cal:]),
            calibration_split=(x[:n_cal], None),
            metric=None if y is None else "accuracy",
            description=f"{description} ({len(x_eval)} evaluated after {n_cal} for calibration)",
            workload_inputs={"single": x_eval[:1].contiguous(), "batch": batch},
        )

    def _folder(
        self, model: nn.Module, model_dir: Path | None, folder: Path
    ) -> tuple[torch.Tensor, torch.Tensor, str]:
        classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
        if not classes:
            raise TaskError(
                f"image folder {folder} has no class subfolders (expected {folder.name}/<class>/"
                "<image>.png)"
            )
        files: list[tuple[Path, str]] = []
        for name in classes:
            for f in sorted((folder / name).iterdir()):
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                    files.append((f, name))
                    if len(files) > MAX_IMAGES:  # counted before any image is decoded
                        raise TaskError(
                            f"image folder {folder} holds more than {MAX_IMAGES} images; "
                            "give a smaller sample"
                        )
        if not files:
            raise TaskError(
                f"image folder {folder} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        index, how = _class_indices(model, classes)
        processor = load_image_processor(model_dir)
        images = [_read_image(f) for f, _ in files]  # every header is checked before decoding
        pixels = [
            processor(images=images[i : i + PROCESS_CHUNK], return_tensors="pt")["pixel_values"]
            for i in range(0, len(images), PROCESS_CHUNK)
        ]
        x = torch.cat(pixels).float()
        y = torch.tensor([index[name] for _, name in files], dtype=torch.long)
        description = (
            f"{len(files)} images in {len(classes)} class folders of {folder.name}, classes {how}, "
            f"through {type(processor).__name__}"
        )
        return x, y, description

    def _random_pixels(self, model: nn.Module, model_dir: Path | None) -> torch.Tensor:
        config = getattr(model, "config", None)
        size = getattr(config, "image_size", None)
        if not isinstance(size, int):
            size = 224
        channels = getattr(config, "num_channels", 3)
        gen = torch.Generator().manual_seed(0)
        return torch.randn(48, channels, size, size, generator=gen)

    # --- evaluation ------------------------------------------------------------------------
    def logits(self, model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        return named_output(model(pixel_values=pixels), self.output)

    def outputs(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        return self.logits(model, inputs)

    def stats(self, outputs: torch.Tensor, targets: torch.Tensor | None) -> SampleStats:
        return classification_stats(outputs, targets)

    def fidelity(
        self, ref: torch.Tensor, quant: torch.Tensor, targets: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        return fidelity_per_sample(ref, quant)

    def workloads(self, data: TaskData) -> dict[str, Workload]:
        def bind(key: str) -> Workload:
            pixels = data.workload_inputs[key]

            def make(model: nn.Module) -> Callable[[], Any]:
                def run() -> torch.Tensor:
                    with torch.no_grad():
                        return self.logits(model, pixels)

                return run

            return make

        return {"single": bind("single"), f"batch{BATCH_WORKLOAD}": bind("batch")}


def load_image_processor(model_dir: Path | None) -> Any:
    """The directory's image processor (``preprocessor_config.json``), local files only."""
    if model_dir is None or not (model_dir / "preprocessor_config.json").is_file():
        raise TaskError(
            f"{model_dir or 'the model'} has no image processor (preprocessor_config.json); "
            "images cannot be prepared as the model expects (give pixel tensors in .npz instead)"
        )
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(
            model_dir, local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TaskError(f"{model_dir}: cannot load its image processor: {first}") from None


def _class_indices(model: nn.Module, classes: list[str]) -> tuple[dict[str, int], str]:
    """Folder name -> class index: the config's ``label2id`` when it names every folder, else
    the sorted order; and a phrase saying which."""
    config = getattr(model, "config", None)
    label2id = {str(k): int(v) for k, v in (getattr(config, "label2id", None) or {}).items()}
    num_labels = getattr(config, "num_labels", None)
    if label2id and all(c in label2id for c in classes):
        return {c: label2id[c] for c in classes}, "mapped by the config's label2id"
    if isinstance(num_labels, int) and len(classes) > num_labels:
        raise TaskError(
            f"the image folder has {len(classes)} class folders but the model has {num_labels} "
            "classes, and the folder names are not its labels"
        )
    return {c: i for i, c in enumerate(classes)}, "in sorted folder order (names not in label2id)"


def _read_image(path: Path) -> Any:
    """``path`` decoded as RGB, after checking its size on disk and its pixel count in the
    header (Pillow decodes lazily, so the check costs no decoding)."""
    from PIL import Image, UnidentifiedImageError

    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise TaskError(f"image {path} is {size:,} bytes, over the limit of {MAX_FILE_BYTES:,}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise TaskError(
                        f"image {path} is {width} x {height} pixels, over the limit of "
                        f"{MAX_PIXELS:,} (a decompression bomb?); resize it"
                    )
                return image.convert("RGB")
    except TaskError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise TaskError(
            f"image {path} declares more pixels than Pillow's limit (a decompression bomb?); "
            "resize it"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise TaskError(f"image {path} is not a readable image ({exc})") from None


def _tensor_file(model: nn.Module, data: Path) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    from explorer.models.userdata import load_dataset

    dataset = load_dataset(data)
    x = dataset.inputs
    if x.dim() != 4 or not x.dtype.is_floating_point:
        raise TaskError(
            f"{data.name}: inputs must be float pixels (n, C, H, W), preprocessed as the model "
            f"expects; got {x.dtype} {tuple(x.shape)}"
        )
    y = dataset.targets
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    if y is not None and isinstance(num_labels, int) and (y.min() < 0 or y.max() >= num_labels):
        raise TaskError(f"{data.name}: labels must lie in 0..{num_labels - 1}")
    return x.float(), y, f"{len(x)} pixel tensors of {data.name}, used as given"
