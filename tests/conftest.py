"""Suite-wide hygiene.

Streamlit's ``AppTest.from_function`` writes the function to a temporary script and points
``__main__.__file__`` at it; a test that later starts a process with multiprocessing's ``spawn``
(the results store's two-writer tests) would then re-run that script in the child, which dies with
``NameError: __args``. Each test gets ``__main__`` back as it found it.
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
    for name in ("__file__", "__spec__"):
        if name in saved:
            setattr(main, name, saved[name])
        elif hasattr(main, name):
            delattr(main, name)
