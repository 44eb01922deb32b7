"""Write ``assets/digits-cnn/data.safetensors`` from the digits CSV inside a scikit-learn wheel.

scikit-learn ships the 1,797 8x8 images of UCI's "Optical Recognition of Handwritten Digits"
(Alpaydin & Kaynak, CC BY 4.0) as ``sklearn/datasets/data/digits.csv.gz``: one image per line,
64 pixel counts (0..16) and the label. We read that file out of the wheel with `zipfile` and never
import scikit-learn, which stays out of our dependencies. Get the wheel with::

    pip download scikit-learn --no-deps -d /tmp/skl
    python scripts/extract_digits.py /tmp/skl/scikit_learn-*.whl

The output holds ``images`` (uint8 [1797, 8, 8]), ``labels`` (int64 [1797]) and ``split`` (uint8
[1797]; 0 train, 1 calibration, 2 eval) from `explorer.models.digits.assign_splits`.
"""

from __future__ import annotations

import argparse
import gzip
import zipfile
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from explorer.models.digits import DATA_FILE, N_IMAGES, NAME, assign_splits
from explorer.models.registry import ASSETS

MEMBER = "sklearn/datasets/data/digits.csv.gz"


def read_digits(wheel: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8 (1797, 8, 8), labels int64 (1797,))`` from the wheel's CSV."""
    with zipfile.ZipFile(wheel) as archive:
        text = gzip.decompress(archive.read(MEMBER)).decode("ascii")
    table = np.loadtxt(text.splitlines(), delimiter=",", dtype=np.int64)  # (1797, 65)
    if table.shape != (N_IMAGES, 65):
        raise SystemExit(f"{wheel}: expected a ({N_IMAGES}, 65) table, got {table.shape}")
    pixels, labels = table[:, :64], table[:, 64]
    if pixels.min() < 0 or pixels.max() > 16 or set(labels.tolist()) != set(range(10)):
        raise SystemExit(f"{wheel}: pixels outside 0..16 or labels outside 0..9")
    images = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.uint8).reshape(N_IMAGES, 8, 8))
    return images, torch.from_numpy(np.ascontiguousarray(labels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path, help="a scikit-learn wheel (pip download ...)")
    parser.add_argument("--out", type=Path, default=ASSETS / NAME / DATA_FILE)
    args = parser.parse_args()
    images, labels = read_digits(args.wheel)
    split = assign_splits(labels)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(
        {"images": images, "labels": labels, "split": split},
        str(args.out),
        metadata={
            "source": "UCI Optical Recognition of Handwritten Digits",
            "licence": "CC BY 4.0",
        },
    )
    sizes = [int((split == code).sum()) for code in range(3)]
    print(f"wrote {args.out}: {N_IMAGES} images; train/calibration/eval = {sizes}")


if __name__ == "__main__":
    main()
