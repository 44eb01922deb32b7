"""A sweep in a worker process, so the caller (the web app) stays responsive.

`SweepProcess` starts a *spawned* process (a clean interpreter: no inherited threads, locks or
OpenMP state) that opens the model, runs `run_sweep` and writes every finished row to the store
itself, one transaction per row; the parent only reads events from a queue. Cancelling sets an
event the runner checks between rows, so the row in flight finishes (or is abandoned if the
process is killed) and nothing half-written reaches the store. A killed or cancelled sweep
started again resumes: finished rows are found in the store by their keys.

Imports: `explorer.sweep.runner`, `.space`, `.store`, `.context`.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import queue as queue_module
import sys
import threading
import time
import traceback
import types
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from explorer.errors import ExplorerError
from explorer.sweep.context import ModelSource
from explorer.sweep.runner import RunSettings, SweepEvent
from explorer.sweep.space import PlanEntry, SweepSpec

_CONTEXT = mp.get_context("spawn")
_START_LOCK = threading.Lock()
BATCH_EVENT_SECONDS = 0.5
"""Least seconds between two ``batch`` events (evaluation progress within a row)."""


@contextlib.contextmanager
def _plain_main() -> Iterator[None]:
    """Hide the caller's ``__main__`` from `multiprocessing`'s spawn while a worker starts.

    A spawned child re-imports ``__main__`` from its file before running its target. Under
    Streamlit ``__main__`` is the running page, which would then run again inside the worker. A
    bare module in its place for the moment of the start leaves the child nothing to re-import.
    """
    with _START_LOCK:
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            if main is not None:
                sys.modules["__main__"] = main


def _child(
    source: dict[str, Any],
    spec: dict[str, Any] | None,
    entries: list[dict[str, Any]] | None,
    store_path: str,
    settings: dict[str, Any],
    owner: str,
    sweep_id: str,
    threads: int | None,
    targets: list[str],
    events: Any,
    cancel: Any,
) -> None:
    try:
        import torch

        from explorer.sweep.context import open_context
        from explorer.sweep.runner import LocalExecutor, run_sweep
        from explorer.sweep.space import expand
        from explorer.sweep.store import ResultStore

        if threads:
            torch.set_num_threads(threads)
        ctx = open_context(ModelSource.from_dict(source))
        if entries is not None:
            plan_entries = [PlanEntry.from_dict(e) for e in entries]
        else:
            plan_entries, skipped = expand(SweepSpec.from_dict(spec or {}), ctx.model)
            for s in skipped:
                events.put(SweepEvent("skipped", s.label, reason=s.reason).to_dict())
        # the target dimension: every entry on each target (settings.target first); llama.cpp
        # quantizes the float model in its own formats, so its rows start from fp32 only
        runs = [
            (
                target,
                [e for e in plan_entries if e.label == "fp32"]
                if target.startswith("llamacpp")
                else plan_entries,
            )
            for target in (settings["target"], *(t for t in targets if t != settings["target"]))
        ]
        events.put(SweepEvent("started", total=sum(len(run) for _, run in runs)).to_dict())
        sent = [0.0]

        def batch(done: int, total: int, stage: str = "evaluate") -> None:
            # the row in flight's evaluation batches (a 0.5 B model's window takes seconds) or
            # QAT steps (``stage="qat"``), at most a few events a second
            now = time.monotonic()
            if done == total or now - sent[0] >= BATCH_EVENT_SECONDS:
                sent[0] = now
                extra = {"done": done, "total": total, "stage": stage}
                events.put(SweepEvent("batch", extra=extra).to_dict())

        total = sum(len(run) for _, run in runs)
        offset, finished = 0, 0
        counts = {"evaluated": 0, "cached": 0, "failed": 0}
        with ResultStore(store_path) as store:
            for target, run in runs:
                for event in run_sweep(
                    ctx,
                    run,
                    store,
                    settings=RunSettings(**{**settings, "target": target}),
                    executor=LocalExecutor(ctx, progress=batch),
                    owner=owner,
                    sweep_id=sweep_id,
                    cancelled=cancel.is_set,
                ):
                    # progress counts over every target's entries, and one "done" at the end
                    event = replace(event, done=event.done + offset, total=total)
                    if event.kind == "done":
                        finished = event.done
                        for name in counts:
                            counts[name] += int(event.extra.get(name, 0))
                        continue
                    events.put(event.to_dict())
                offset += len(run)
                if cancel.is_set():
                    break
            events.put(SweepEvent("done", done=finished, total=total, extra=counts).to_dict())
    except ExplorerError as exc:
        events.put(SweepEvent("error", reason=str(exc)).to_dict())
    except BaseException as exc:  # reported to the parent, which shows it without a traceback
        detail = traceback.format_exception_only(type(exc), exc)[-1].strip()
        events.put(SweepEvent("error", reason=f"internal error: {detail}").to_dict())


@dataclass
class SweepProcess:
    """A running sweep: `poll` returns new events; `cancel` asks it to stop after the row in
    flight; `terminate` kills it (committed rows stay)."""

    source: ModelSource
    store_path: str
    spec: SweepSpec | None = None
    entries: list[PlanEntry] | None = None
    settings: RunSettings = field(default_factory=RunSettings)
    owner: str = ""
    sweep_id: str = ""
    threads: int | None = None
    targets: tuple[str, ...] = ()
    """More targets to run every entry on after ``settings.target`` (the Sweep page's choice)."""

    def __post_init__(self) -> None:
        if (self.spec is None) == (self.entries is None):
            raise ExplorerError("a sweep process needs exactly one of spec and entries")
        self._events = _CONTEXT.Queue()
        self._cancel = _CONTEXT.Event()
        self._process = _CONTEXT.Process(
            target=_child,
            args=(
                self.source.to_dict(),
                None if self.spec is None else self.spec.to_dict(),
                None if self.entries is None else [e.to_dict() for e in self.entries],
                str(self.store_path),
                self.settings.to_dict(),
                self.owner,
                self.sweep_id,
                self.threads,
                list(self.targets),
                self._events,
                self._cancel,
            ),
            daemon=True,
        )
        self.finished = False
        self.history: list[SweepEvent] = []

    def start(self) -> SweepProcess:
        with _plain_main():
            self._process.start()
        return self

    def poll(self, timeout: float = 0.0) -> list[SweepEvent]:
        """Events that arrived since the last call (waits up to ``timeout`` for the first)."""
        out: list[SweepEvent] = []
        block = timeout > 0
        while True:
            try:
                data = self._events.get(block=block, timeout=timeout if block else None)
            except queue_module.Empty:
                break
            block = False
            event = SweepEvent(**data)
            out.append(event)
            if event.kind in ("done", "error"):
                self.finished = True
        if not out and not self._process.is_alive() and self._process.exitcode is not None:
            if not self.finished:
                self.finished = True
                code = self._process.exitcode
                out.append(SweepEvent("error", reason=f"the sweep process exited with code {code}"))
        self.history.extend(out)
        return out

    def wait(self, timeout: float | None = None) -> list[SweepEvent]:
        """Collect events until the sweep finishes (or ``timeout`` seconds pass)."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        events: list[SweepEvent] = []
        while not self.finished:
            if deadline is not None and time.monotonic() > deadline:
                break
            events += self.poll(timeout=0.2)
        self._process.join(timeout=5)
        return events

    @property
    def alive(self) -> bool:
        return self._process.is_alive()

    def cancel(self) -> None:
        self._cancel.set()

    def terminate(self) -> None:
        self._process.kill()
        self._process.join(timeout=5)
