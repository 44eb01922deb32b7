"""Uploads become model sources only after they load: good weights, a zipped Hugging Face folder
and data work; truncated files, zip slips, oversize uploads and data the model cannot take are
refused with a message, and a refused upload leaves nothing behind."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
import safetensors.torch
import torch

from explorer.errors import ExplorerError, ModelLoadError
from explorer.inspect import float_metric, layer_table
from explorer.models.registry import get_builtin
from explorer.sweep.context import ModelSource
from explorer.uploads import (
    UPLOADS,
    UploadError,
    check_size,
    error_message,
    load_upload,
    safe_name,
    save_upload,
)


def _files(run_dir: Path) -> list[Path]:
    folder = run_dir / UPLOADS
    return sorted(p for p in folder.rglob("*")) if folder.exists() else []


@pytest.fixture(scope="module")
def digits_weights() -> bytes:
    state = get_builtin("digits-cnn").load().state_dict()
    return safetensors.torch.save({k: v.contiguous() for k, v in state.items()})


def test_good_weights_for_a_builtin_architecture(tmp_path: Path, digits_weights: bytes) -> None:
    source, ctx = load_upload(
        "weights", digits_weights, "my digits.safetensors", tmp_path, architecture="digits-cnn"
    )
    path = Path(source.weights)
    assert source.model == "digits-cnn" and source.data is None
    assert path.parent == tmp_path / UPLOADS and path.name.endswith("-my_digits.safetensors")
    assert path.read_bytes() == digits_weights
    name, value = float_metric(ctx)
    assert value == pytest.approx(get_builtin("digits-cnn").card()["float"], abs=1e-9)
    assert len(layer_table(ctx.model)) == 4
    # the same bytes again reuse the file
    again, _ = load_upload(
        "weights", digits_weights, "my digits.safetensors", tmp_path, architecture="digits-cnn"
    )
    assert again == source and len(_files(tmp_path)) == 1


def test_truncated_weights_are_refused_and_removed(tmp_path: Path, digits_weights: bytes) -> None:
    with pytest.raises(ModelLoadError) as info:
        load_upload(
            "weights",
            digits_weights[:-1000],
            "cut.safetensors",
            tmp_path,
            architecture="digits-cnn",
        )
    assert "cut.safetensors" in str(info.value)
    assert _files(tmp_path) == []
    shown = error_message(info.value, tmp_path)
    assert shown.startswith("cut.safetensors") and str(tmp_path) not in shown


def test_weights_of_another_architecture_name_the_mismatch(
    tmp_path: Path, digits_weights: bytes
) -> None:
    with pytest.raises(ModelLoadError, match="do not match"):
        load_upload("weights", digits_weights, "w.safetensors", tmp_path, architecture="mobile-cnn")
    assert _files(tmp_path) == []


def test_pickle_and_unknown_kinds_are_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(UploadError, match="expected a"):
        load_upload("weights", b"x" * 10, "model.pkl", tmp_path, architecture="digits-cnn")
    with pytest.raises(UploadError, match="unknown architecture"):
        load_upload("weights", b"x" * 10, "w.safetensors", tmp_path, architecture="resnet")
    with pytest.raises(UploadError, match="unknown upload kind"):
        load_upload("script", b"x", "a.py", tmp_path)
    assert _files(tmp_path) == []


def test_oversize_upload_is_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(UploadError, match="over the upload limit"):
        save_upload(b"\0" * 2048, "big.safetensors", tmp_path, "weights", max_bytes=1024)
    with pytest.raises(UploadError, match="over the upload limit"):
        load_upload("hf-zip", b"\0" * 2048, "big.zip", tmp_path, max_bytes=1024)
    with pytest.raises(UploadError, match="empty"):
        check_size(0, "nothing.csv")
    assert _files(tmp_path) == []


def test_names_cannot_escape_the_uploads_folder(tmp_path: Path) -> None:
    assert safe_name("../../etc/evil name.safetensors", "weights") == "evil_name.safetensors"
    assert safe_name("C:\\x\\..\\w.CSV", "data") == "w.csv"
    assert safe_name("..safetensors", "weights") == "upload.safetensors"
    path, created = save_upload(b"abc", "../../x.csv", tmp_path / "run", "data")
    assert created and path.parent == tmp_path / "run" / UPLOADS
    assert not (tmp_path / "x.csv").exists()


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_zip_slip_is_refused(tmp_path: Path) -> None:
    data = _zip({"model/config.json": b"{}", "../evil.txt": b"owned"})
    with pytest.raises(ModelLoadError, match=r"\.\."):
        load_upload("hf-zip", data, "model.zip", tmp_path / "run")
    assert _files(tmp_path / "run") == []
    assert not (tmp_path / "evil.txt").exists()


def test_zip_without_config_is_refused(tmp_path: Path) -> None:
    data = _zip({"weights/model.safetensors": b"not really"})
    with pytest.raises(UploadError, match="config.json"):
        load_upload("hf-zip", data, "model.zip", tmp_path)
    assert _files(tmp_path) == []


def test_zipped_hugging_face_folder_works(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_embd=32,
        n_layer=1,
        n_head=2,
        vocab_size=64,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
    )
    folder = tmp_path / "tiny-gpt2"
    transformers.GPT2LMHeadModel(config).save_pretrained(folder, safe_serialization=True)
    data = _zip({f"tiny-gpt2/{p.name}": p.read_bytes() for p in folder.iterdir()})
    run = tmp_path / "run"
    source, ctx = load_upload("hf-zip", data, "tiny-gpt2.zip", run)
    root = Path(source.model)
    assert root.is_dir() and (root / "config.json").is_file()
    assert run / UPLOADS in root.parents
    assert not list((run / UPLOADS).glob("*.zip"))  # only the extracted folder is kept
    # a causal LM without data: recognised as one (decode workload), fidelity only
    assert ctx.task == "lm" and float_metric(ctx) is None and "decode" in ctx.workloads
    table = {r["name"]: r for r in layer_table(ctx.model)}
    assert table["transformer.h.0.attn.c_attn"]["quantizable"]
    assert table["lm_head"]["tied_to"] == "transformer.wte"
    again, _ = load_upload("hf-zip", data, "tiny-gpt2.zip", run)  # reuses the extraction
    assert again == source


def test_data_for_the_current_model(tmp_path: Path) -> None:
    x, y = get_builtin("digits-cnn").load_split("eval")
    data = safetensors.torch.save({"inputs": x[:64].contiguous(), "labels": y[:64].contiguous()})
    base = ModelSource(model="digits-cnn")
    source, ctx = load_upload("data", data, "digits.safetensors", tmp_path, base=base)
    assert source.model == "digits-cnn" and Path(source.data).is_file()
    assert (
        ctx.task == "classification"
        and len(ctx.eval_split[0]) + len(ctx.calibration_split[0]) == 64
    )
    assert 0.8 < float_metric(ctx)[1] <= 1.0


def test_csv_data_the_model_cannot_take_is_refused(tmp_path: Path) -> None:
    rows = ["f0,f1,f2,label"] + [f"{i},{i + 1},{i + 2},{i % 3}" for i in range(40)]
    data = ("\n".join(rows) + "\n").encode()
    base = ModelSource(model="digits-cnn")
    with pytest.raises(ModelLoadError, match="cannot run on its evaluation data"):
        load_upload("data", data, "table.csv", tmp_path, base=base)
    assert _files(tmp_path) == []
    bad = b"f0,label\n1,x\n"
    with pytest.raises(ExplorerError, match="not a number"):
        load_upload("data", bad, "bad.csv", tmp_path, base=base)
    assert _files(tmp_path) == []
