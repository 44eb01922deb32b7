"""One default for the cache folder and the results store (`explorer.paths`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from explorer import paths


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("EXPLORER_CACHE", "EXPLORER_CACHE_DIR", "EXPLORER_STORE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_defaults(clean_env: pytest.MonkeyPatch) -> None:
    home = Path("~").expanduser()
    assert paths.cache_dir() == home / ".cache" / "quant-explorer"
    assert paths.store_path() == home / ".cache" / "quant-explorer" / "results.sqlite"
    assert paths.kernels_dir() == home / ".cache" / "quant-explorer" / "kernels"


def test_explorer_cache_moves_everything(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.cache_dir() == tmp_path / "xdg" / "quant-explorer"
    clean_env.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "old"))  # deprecated alias
    assert paths.kernels_dir() == tmp_path / "old" / "kernels"
    clean_env.setenv("EXPLORER_CACHE", str(tmp_path / "new"))  # wins over the alias
    assert paths.kernels_dir() == tmp_path / "new" / "kernels"
    assert paths.store_path() == tmp_path / "new" / "results.sqlite"
    clean_env.setenv("EXPLORER_STORE", str(tmp_path / "s.sqlite"))
    assert paths.store_path() == tmp_path / "s.sqlite"


def test_cli_and_app_share_the_default(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import argparse

    from explorer.cli import options, runs

    clean_env.setenv("EXPLORER_CACHE", str(tmp_path))
    assert runs.store_path_from_args(argparse.Namespace(store=None)) == tmp_path / "results.sqlite"
    assert options.DEFAULT_STORE == paths.DEFAULT_STORE
