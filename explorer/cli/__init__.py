"""The ``explorer`` command; the code lives in `explorer.cli.common` for now (a pure rename, so
history follows the split that comes next)."""

from explorer.cli.common import (
    DEFAULT_STORE,
    INTERRUPTED_EXIT,
    STORE_ENV,
    ExplorerError,
    _read_plan_file,
    build_parser,
    build_spec,
    main,
    parse_latency,
    parse_size,
)

__all__ = [
    "DEFAULT_STORE",
    "INTERRUPTED_EXIT",
    "STORE_ENV",
    "ExplorerError",
    "_read_plan_file",
    "build_parser",
    "build_spec",
    "main",
    "parse_latency",
    "parse_size",
]
