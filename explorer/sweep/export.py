"""Stable path of the export API: ``explorer.sweep.export`` re-exports `explorer.export`.

The code lives in `explorer.export` (below the sweep: it imports nothing from it); this path is
the one the README documents and users' scripts import (``from explorer.sweep.export import
load_export``), so it stays. New code may import either.
"""

from __future__ import annotations

from explorer.export import *  # noqa: F403  (the same names, one list: explorer.export)
from explorer.export import __all__  # noqa: F401
