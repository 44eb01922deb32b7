"""Hugging Face image classifiers (a tiny ViT and a tiny ResNet, random init, saved with
``save_pretrained`` beside a saved image processor) on an image folder of PNGs written here:
accuracy equals a direct forward pass on the processor's pixels, classes map by label2id or
sorted order, the limits and bad images are named, and the row runs end to end through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from explorer.errors import ModelLoadError
from explorer.models.userdata import load_dataset
from explorer.sweep.context import ModelSource, open_context
from explorer.tasks import TaskError
from explorer.tasks import image_classification as ic

from .builders import cli_w8_row

transformers = pytest.importorskip("transformers")
Image = pytest.importorskip("PIL.Image")
NAMES = ("cat", "dog", "fox")


def write_folder(root: Path, names: tuple[str, ...] = NAMES, per_class: int = 6) -> Path:
    """PNGs of seeded random colours, 20 x 24, one subfolder per class."""
    gen = torch.Generator().manual_seed(3)
    for c, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = torch.randint(0, 256, (24, 20, 3), generator=gen, dtype=torch.uint8)
            pixels[..., c % 3] //= 4  # a class-dependent tint
            Image.fromarray(pixels.numpy()).save(root / name / f"{i}.png")
    return root


def save_vit(path: Path) -> None:
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        image_size=16,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=3,
        id2label=dict(enumerate(NAMES)),
        label2id={n: i for i, n in enumerate(NAMES)},
    )
    transformers.ViTForImageClassification(config).save_pretrained(path)
    transformers.ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(path)


def save_resnet(path: Path) -> None:
    torch.manual_seed(0)
    config = transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3
    )
    transformers.ResNetForImageClassification(config).save_pretrained(path)
    transformers.ConvNextImageProcessor(size={"shortest_edge": 32}).save_pretrained(path)


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vit")
    save_vit(root / "model")
    write_folder(root / "images")
    return root / "model"


@pytest.fixture(scope="module")
def resnet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resnet")
    save_resnet(root / "model")
    write_folder(root / "images", names=("b", "a", "c"))  # not the config's labels
    return root / "model"


def direct_predictions(model_dir: Path, cls: type, folder: Path) -> tuple[list[int], list[str]]:
    """Each image's class by a plain forward pass on the processor's pixels, in folder order."""
    processor = transformers.AutoImageProcessor.from_pretrained(model_dir)
    model = cls.from_pretrained(model_dir).eval()
    files = sorted(p for p in folder.glob("*/*.png"))
    pred = []
    with torch.no_grad():
        for f in files:
            pixels = processor(images=Image.open(f).convert("RGB"), return_tensors="pt")
            pred.append(int(model(**pixels).logits.argmax()))
    return pred, [f.parent.name for f in files]


@pytest.mark.parametrize(
    ("fixture", "cls", "mapping"),
    [
        ("vit_dir", "ViTForImageClassification", "label2id"),
        ("resnet_dir", "ResNetForImageClassification", "sorted"),
    ],
)
def test_accuracy_equals_a_direct_forward_pass(
    fixture: str, cls: str, mapping: str, request: pytest.FixtureRequest
) -> None:
    model_dir: Path = request.getfixturevalue(fixture)
    folder = model_dir.parent / "images"
    ctx = open_context(ModelSource(model=str(model_dir), data=str(folder)))
    assert ctx.task == "classification" and ctx.metric == "accuracy"
    assert list(ctx.workloads) == ["single", "batch32"]
    assert mapping in ctx.data.description
    pred, names = direct_predictions(model_dir, getattr(transformers, cls), folder)
    order = sorted(set(names))  # both fixtures' labels: NAMES order or sorted folder order
    true = [order.index(n) for n in names]
    n_cal = len(pred) // 4  # 18 images: 4 for calibration
    x_eval, y_eval = ctx.eval_split
    assert y_eval.tolist() == true[n_cal:]
    stats = ctx.reference.stats
    expected = sum(p == t for p, t in zip(pred[n_cal:], true[n_cal:], strict=True))
    assert stats.accuracy() == pytest.approx(expected / len(true[n_cal:]), abs=1e-12)
    same = ctx.reference.evaluate(ctx.model, n_boot=100)
    assert same.metrics_ci["accuracy"] == (0.0, 0.0)
    for name, workload in ctx.workloads.items():
        out = workload(ctx.model)()
        assert out.shape == ((1 if name == "single" else 32), 3)


def test_bad_images_and_limits_are_named(
    vit_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_folder(tmp_path / "bad", per_class=3)
    (folder / "dog" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(TaskError, match=r"broken.png is not a readable image"):
        open_context(ModelSource(model=str(vit_dir), data=str(folder)))
    (folder / "dog" / "broken.png").unlink()
    monkeypatch.setattr(ic, "MAX_PIXELS", 100)
    with pytest.raises(TaskError, match=r"0.png is 20 x 24 pixels, over the limit of 100 "):
        open_context(ModelSource(model=str(vit_dir), data=str(folder)))
    monkeypatch.setattr(ic, "MAX_IMAGES", 5)
    with pytest.raises(TaskError, match=r"holds more than 5 images"):
        open_context(ModelSource(model=str(vit_dir), data=str(folder)))
    with pytest.raises(TaskError, match=r"has no class subfolders"):
        open_context(ModelSource(model=str(vit_dir), data=str(folder / "cat")))


def test_decompression_bomb_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bomb = tmp_path / "wide.png"
    Image.new("L", (6000, 1)).save(bomb)  # its header's width x height is what is checked
    monkeypatch.setattr(ic, "MAX_PIXELS", 1000)
    with pytest.raises(TaskError, match=r"wide.png is 6000 x 1 pixels, over the limit of 1,000 "):
        ic._read_image(bomb)


def test_pixel_tensor_file(vit_dir: Path, tmp_path: Path) -> None:
    x = torch.randn(16, 3, 16, 16)
    y = torch.arange(16) % 3
    data = tmp_path / "pixels.npz"
    import numpy as np

    np.savez(data, inputs=x.numpy(), labels=y.numpy())
    ctx = open_context(ModelSource(model=str(vit_dir), data=str(data)))
    assert ctx.metric == "accuracy" and torch.equal(ctx.eval_split[0], x[4:])
    model = transformers.ViTForImageClassification.from_pretrained(vit_dir).eval()
    with torch.no_grad():
        pred = model(pixel_values=x[4:]).logits.argmax(-1)
    assert ctx.reference.stats.accuracy() == pytest.approx(float((pred == y[4:]).double().mean()))


def test_folder_for_a_non_image_model_says_so(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"read only for an image classifier"):
        load_dataset(tmp_path)


def test_image_classifier_row_through_the_cli(vit_dir: Path, tmp_path: Path) -> None:
    row = cli_w8_row(vit_dir, vit_dir.parent / "images", tmp_path / "r.sqlite")
    assert row["task"] == "classification" and row["metric_name"] == "accuracy"
    assert {"accuracy", "sqnr_db", "cosine", "agreement", "kl"} <= set(row["metrics"])
    assert row["latency_workload"] == "single" and "batch32" in row["latency"]
