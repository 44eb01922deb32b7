"""The ``explorer`` command: a thin shell over the library.

Every subcommand takes ``--json`` and then prints exactly one JSON document as the last line of
stdout; progress goes to stderr. Errors exit non-zero with a one-line message on stderr, never a
traceback: 2 for anything the user can fix (a bad value, an unknown model, a foreign store file,
a sweep or search in which not one configuration could be evaluated), 1 for an internal error, 130
when interrupted. A configuration that fails while others succeed is reported on stderr and in the
JSON document's ``failed`` list.

``sweep``, ``sensitivity``, ``search`` and ``export`` share the model options of
`explorer.sweep.context.ModelSource` (``--model``, ``--weights``, ``--model-factory``, ``--data``);
``sweep`` and ``search`` write their rows to the results store (``--store``, default
``$EXPLORER_STORE`` or `DEFAULT_STORE`), so running the same command again reuses them.

The modules, each importing only from those before it: `options` (the parser, option types and
option groups), `runs` (the model context, store, settings and executor a command opens from its
options, and its progress bar), `builtin` (``bench``, ``models``, ``train``), `sweep`, `search`
(``sensitivity`` and ``search``), `export`, `store` (``store check|repair|delete-row``), and
`main` (`build_parser` and `main`). Outside this package they may import the whole library, never
streamlit.
"""

from explorer.cli.builtin import cmd_bench, cmd_models, cmd_train
from explorer.cli.export import cmd_export, read_plan_file
from explorer.cli.main import build_parser, main
from explorer.cli.options import (
    DEFAULT_STORE,
    LATENCY_UNITS,
    SIZE_UNITS,
    STORE_ENV,
    parse_latency,
    parse_size,
)
from explorer.cli.runs import INTERRUPTED_EXIT
from explorer.cli.search import cmd_search, cmd_sensitivity
from explorer.cli.store import cmd_store
from explorer.cli.sweep import build_spec, cmd_sweep
from explorer.errors import ExplorerError

__all__ = [
    "DEFAULT_STORE",
    "INTERRUPTED_EXIT",
    "LATENCY_UNITS",
    "SIZE_UNITS",
    "STORE_ENV",
    "ExplorerError",
    "build_parser",
    "build_spec",
    "cmd_bench",
    "cmd_export",
    "cmd_models",
    "cmd_search",
    "cmd_sensitivity",
    "cmd_store",
    "cmd_sweep",
    "cmd_train",
    "main",
    "parse_latency",
    "parse_size",
    "read_plan_file",
]
