"""Suite-wide hygiene, and fixtures several modules share.

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
import torch


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


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a module of small models (``pytestmark = pytest.mark.usefixtures(
    "one_thread")``): on a loaded 2-core machine a second thread only waits for a busy core, and
    tiny matrices ran up to 30x slower with two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
