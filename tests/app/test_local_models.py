"""The operator's setting for local model paths (off by default) and the uploads it adds:
``.jsonl`` data and zipped image folders."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from explorer import uploads
from explorer.sweep.context import ModelSource

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "model.py")


def _hf_dir(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    return model


def test_local_paths_are_off_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(uploads.LOCAL_MODELS_ENV, raising=False)
    with pytest.raises(uploads.UploadError, match=r"local paths are off on this server"):
        uploads.local_source(str(_hf_dir(tmp_path)))


def test_local_source_when_enabled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(uploads.LOCAL_MODELS_ENV, "1")
    model = _hf_dir(tmp_path)
    data = tmp_path / "text.jsonl"
    data.write_text('{"text": "a"}\n')
    assert uploads.local_source(f" {model} ", str(data)) == ModelSource(
        model=str(model), data=str(data)
    )
    with pytest.raises(uploads.UploadError, match=r"absolute path of a directory"):
        uploads.local_source("relative/model")
    with pytest.raises(uploads.UploadError, match=r"no config.json"):
        uploads.local_source(str(tmp_path))
    with pytest.raises(uploads.UploadError, match=r"absolute path of a data file or folder"):
        uploads.local_source(str(model), str(tmp_path / "missing.csv"))


def test_zipped_image_folder_is_extracted_as_data(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name in ("images/cat/0.png", "images/dog/0.png"):
            zf.writestr(name, b"\x89PNG")
    base = ModelSource(model=str(tmp_path / "m"))
    source, created = uploads.data_source(buffer.getvalue(), "images.zip", tmp_path, base)
    root = Path(source.data)
    assert root.name == "images" and sorted(p.name for p in root.iterdir()) == ["cat", "dog"]
    assert created and not list((tmp_path / uploads.UPLOADS).glob("*.zip"))
    assert uploads.safe_name("rows.jsonl", "data") == "rows.jsonl"


def test_model_page_offers_a_local_path_only_when_enabled(
    app_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(uploads.LOCAL_MODELS_ENV, raising=False)
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    assert not at.exception
    assert not [t for t in at.text_input if t.key == "local.model"]
    monkeypatch.setenv(uploads.LOCAL_MODELS_ENV, "1")
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    assert not at.exception
    assert [t for t in at.text_input if t.key == "local.model"]
