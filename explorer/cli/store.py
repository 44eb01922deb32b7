"""``store``: look after the results store. ``check`` lists the rows that cannot be read back
(their JSON does not parse or is not an object), ``repair`` moves them into the store's
``quarantine`` table so the next sweep re-evaluates those configurations, and ``delete-row KEY``
removes one row. Every other row is left byte for byte as it was."""

from __future__ import annotations

import argparse
from typing import Any

from explorer.cli.options import DEFAULT_STORE, STORE_ENV, add_json_option
from explorer.cli.runs import store_path_from_args


def _open_existing(args: argparse.Namespace) -> Any:
    """The store at ``--store``; unlike a sweep, maintenance never creates one."""
    from explorer.sweep.store import ResultStore, StoreError

    path = store_path_from_args(args)
    if not path.is_file():
        raise StoreError(
            f"there is no results store at {path}; give the store's path with --store "
            "(a sweep prints it on its last line)"
        )
    return ResultStore(path)


def _damaged(pairs: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"key": key, "reason": reason} for key, reason in pairs]


def cmd_store(args: argparse.Namespace) -> dict[str, Any]:
    from explorer.sweep.store import StoreError

    with _open_existing(args) as store:
        if args.action == "check":
            damaged = _damaged(store.damaged())
            result: dict[str, Any] = {
                "store": str(store.path),
                "rows": len(store.keys()),
                "damaged": damaged,
                "quarantined": store.quarantined(),
            }
            if not args.json:
                for d in damaged:
                    print(f"damaged {d['key']}: {d['reason']}")
                hint = "; `explorer store repair` moves them aside" if damaged else ""
                print(f"{result['rows']} rows, {len(damaged)} damaged in {store.path}{hint}")
            return result
        if args.action == "repair":
            store.check_writable()
            moved = _damaged(store.quarantine())
            result = {
                "store": str(store.path),
                "quarantined": moved,
                "rows": len(store.keys()),
            }
            if not args.json:
                for d in moved:
                    print(f"quarantined {d['key']}: {d['reason']}")
                print(
                    f"moved {len(moved)} damaged row(s) to the quarantine table; "
                    f"{result['rows']} rows remain in {store.path}"
                )
            return result
        key = args.key.strip()
        if not store.delete(key):
            raise StoreError(
                f"there is no row {key!r} in {store.path}; `explorer store check` lists the "
                "damaged rows' keys"
            )
        if not args.json:
            print(f"deleted row {key} from {store.path}")
        return {"store": str(store.path), "deleted": key}


def add_store_parser(sub: Any) -> None:
    """The ``store`` subcommand and its three actions, each with ``--store`` and ``--json``."""
    store = sub.add_parser(
        "store",
        help="check the results store for damaged rows, repair it, or delete one row",
        description="Look after the results store. check: list rows that cannot be read back; "
        "repair: move them into a quarantine table (every other row stays as it was) so the "
        "next sweep re-evaluates them; delete-row KEY: remove one row.",
    )
    actions = store.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, help_text in (
        ("check", "list the rows whose stored JSON cannot be read back"),
        ("repair", "move the damaged rows into the store's quarantine table"),
        ("delete-row", "remove the row with the given key"),
    ):
        action = actions.add_parser(name, help=help_text, description=help_text)
        if name == "delete-row":
            action.add_argument("key", metavar="KEY", help="the row's key (64 hex digits)")
        action.add_argument(
            "--store",
            metavar="PATH",
            default=None,
            help=f"results store (default ${STORE_ENV} or {DEFAULT_STORE})",
        )
        add_json_option(action)
        action.set_defaults(func=cmd_store)
