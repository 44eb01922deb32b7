"""Where the explorer keeps its files: the one default for the cache folder and the results store.

The cache folder (``$EXPLORER_CACHE``, else ``$XDG_CACHE_HOME/quant-explorer``, else
``~/.cache/quant-explorer``) holds the compiled native kernels (``kernels/``) and the app's runs
(``runs/``); the results store is ``$EXPLORER_STORE``, else ``results.sqlite`` in the cache folder.
``EXPLORER_CACHE_DIR``, which the native build once read, still works as a deprecated alias of
``EXPLORER_CACHE`` (``EXPLORER_CACHE`` wins when both are set).

The command line, the app and the native build all read these functions, so one variable moves
everything (the Docker image sets ``EXPLORER_CACHE=/data/cache``).

Imports: the standard library only, so every layer may import it.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "EXPLORER_CACHE"
LEGACY_CACHE_ENV = "EXPLORER_CACHE_DIR"  # deprecated alias, read when EXPLORER_CACHE is unset
STORE_ENV = "EXPLORER_STORE"
APP_DIR_NAME = "quant-explorer"
STORE_NAME = "results.sqlite"
DEFAULT_CACHE = Path("~/.cache") / APP_DIR_NAME
DEFAULT_STORE = DEFAULT_CACHE / STORE_NAME  # as shown in help texts (unexpanded)


def cache_dir() -> Path:
    """The cache folder, read from the environment at each call (not created here)."""
    for name in (CACHE_ENV, LEGACY_CACHE_ENV):
        value = os.environ.get(name)
        if value:
            return Path(value).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / APP_DIR_NAME
    return DEFAULT_CACHE.expanduser()


def kernels_dir(cache: Path | None = None) -> Path:
    """Where the compiled native kernel library and its checksum live."""
    return (cache if cache is not None else cache_dir()) / "kernels"


def store_path(cache: Path | None = None) -> Path:
    """The results store: ``$EXPLORER_STORE``, else ``results.sqlite`` in ``cache`` (default:
    `cache_dir`)."""
    value = os.environ.get(STORE_ENV)
    if value:
        return Path(value).expanduser()
    return (cache if cache is not None else cache_dir()) / STORE_NAME
