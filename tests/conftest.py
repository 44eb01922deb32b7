"""Suite-wide hygiene.

Streamlit's script runner installs a fake ``__main__`` module for the script it runs (AppTest
does this in-process, and ``from_function`` scripts live in a temporary file); a test that later
starts a process with multiprocessing's ``spawn`` (the results store's two-writer tests) would then
re-run that script in the child, which dies with ``NameError: __args``. Each test gets
``__main__`` back as it found it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _restore_main_module() -> Iterator[None]:
    main = sys.modules["__main__"]
    saved = {name: getattr(main, name) for name in ("__file__", "__spec__") if hasattr(main, name)}
    yield
    sys.modules["__main__"] = main
    for name in ("__file__", "__spec__"):
        if name in saved:
            setattr(main, name, saved[name])
        elif hasattr(main, name):
            delattr(main, name)
