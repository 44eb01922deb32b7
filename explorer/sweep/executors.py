"""Executors that evaluate sweep entries somewhere other than the sweep's own process.

`run_sweep` keys entries, skips the stored ones and hands the rest to an executor (the
`Executor` protocol of `explorer.sweep.runner`). `LocalExecutor` evaluates them one at a time in
the calling process. `RayExecutor` sends them to `Ray <https://docs.ray.io>`_ actors: each actor
loads the model once from the plain-data `ModelSource`, then evaluates one entry at a time with
`evaluate_entry`; only plain dicts cross the process boundary (`PlanEntry.to_dict`,
`RunSettings.to_dict`, the result row), and rows come back in the order they finish. Storing them
stays with `run_sweep` in the calling process, so a killed sweep resumes the same way.

When to use it. A sweep over a big model or with QAT takes hours on one machine; with a Ray
cluster of ``N`` alike nodes, ``RayExecutor(address=..., actors=N, num_cpus_per_actor=cores)``
evaluates ``N`` entries at a time. Without an address it starts a private Ray instance on this
machine, which is useful for testing the path but brings no speed-up with the default one actor.
The nodes need this package installed (or shipped with ``init_kwargs={"runtime_env": ...}``) and
must be able to load the model: a built-in, or paths that exist on every node.

Timing caveat (house rule 10, measure honestly). Latency is measured under a machine-wide file
lock (`explorer.measure.latency.timing_lock`), so two actors on one machine never time at once.
But the lock only serializes timings: while one actor times, another actor on the same node may be
quantizing or evaluating, which competes for the same cores, caches and memory bandwidth and
inflates the timing. Hence the default of *one* actor per node. For a cluster, raise ``actors`` to
the node count; actors are placed with Ray's ``SPREAD`` strategy, which is best effort, so a
warning says when two actors turned out to share a node. An actor times with as many threads as
CPUs it reserves (``num_cpus_per_actor``, at least one); give one actor per node all the node's
cores to measure what `LocalExecutor` measures there. Each row records the environment (CPU,
threads, ...) of the actor that measured it.

Imports: `explorer.sweep.context`, `.runner`, `.space`; Ray, lazily and optionally.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from explorer.errors import ExplorerError
from explorer.sweep.context import ModelSource, environment, open_context
from explorer.sweep.runner import Executor, LocalExecutor, RunSettings, evaluate_entry
from explorer.sweep.space import PlanEntry

RAY_MISSING = "the Ray executor needs the optional extra: pip install 'quant-explorer[ray]'"
CANCEL_POLL_S = 0.5
"""How often a sweep waiting on Ray looks at its ``cancelled`` callback."""
ACTOR_RESTARTS = 2
"""How often Ray restarts an actor whose process died (the entry it ran is reported failed)."""


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ExplorerError(RAY_MISSING) from None
    return ray


def _threads(num_cpus: float) -> int:
    return max(1, int(num_cpus))


class SweepWorker:
    """The body of one Ray actor: a model context opened once, then one entry per call.

    Every method takes and returns plain dicts. A context that cannot be opened is remembered and
    reported by each call as ``load_error``, so the driver raises it instead of Ray's wrapping.
    """

    def __init__(self, source: dict[str, Any], settings: dict[str, Any], threads: int) -> None:
        torch.set_num_threads(threads)
        self.settings = RunSettings(**settings)
        self.load_error: str | None = None
        try:
            self.ctx = open_context(ModelSource.from_dict(source))
        except ExplorerError as exc:
            self.load_error = str(exc)
        except Exception as exc:
            self.load_error = f"internal error while loading the model: {_describe(exc)}"
        self.env = environment()
        self.node = _node_id()

    def evaluate(self, entry: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"node": self.node}
        if self.load_error is not None:
            return {**out, "load_error": self.load_error}
        try:
            row = evaluate_entry(self.ctx, PlanEntry.from_dict(entry), self.settings, self.env)
        except ExplorerError as exc:
            return {**out, "error": str(exc)}
        except Exception as exc:
            return {**out, "error": f"internal error: {_describe(exc)}"}
        return {**out, "row": row}


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def _probe_environment(threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    return environment()


class RayExecutor:
    """Evaluates entries on ``actors`` Ray actors, each busy with one entry at a time.

    ``address``: a Ray cluster (``"auto"``, ``"ray://host:10001"``, ...); None starts a local Ray
    instance, unless this process has already initialised Ray, which is then used as it is.
    ``init_kwargs`` go to ``ray.init`` (``num_cpus``, ``runtime_env``, ...). Use it as a context
    manager, or call `close`, to shut down a Ray instance this executor started.
    """

    def __init__(
        self,
        address: str | None = None,
        actors: int = 1,
        num_cpus_per_actor: float = 1,
        init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if isinstance(actors, bool) or not isinstance(actors, int) or actors < 1:
            raise ExplorerError(f"the Ray executor needs at least one actor, got {actors!r}")
        if (
            isinstance(num_cpus_per_actor, bool)
            or not isinstance(num_cpus_per_actor, int | float)
            or not num_cpus_per_actor > 0
        ):
            raise ExplorerError(
                f"num_cpus_per_actor must be a positive number, got {num_cpus_per_actor!r}"
            )
        self.address = address
        self.actors = actors
        self.num_cpus_per_actor = num_cpus_per_actor
        self.init_kwargs = dict(init_kwargs or {})
        self._started_ray = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Shut Ray down if this executor started it; a caller's Ray stays up."""
        if self._started_ray:
            ray = _import_ray()
            ray.shutdown()
            self._started_ray = False

    def _ray(self) -> Any:
        ray = _import_ray()
        if not ray.is_initialized():
            try:
                ray.init(
                    address=self.address,
                    include_dashboard=False,
                    ignore_reinit_error=True,
                    log_to_driver=False,
                    **self.init_kwargs,
                )
            except (ConnectionError, ValueError, RuntimeError) as exc:
                where = self.address or "a local instance"
                raise ExplorerError(f"cannot start or reach Ray ({where}): {exc}") from exc
            self._started_ray = True
        return ray

    def environment(self) -> dict[str, Any]:
        """The environment an actor measures in (CPU, threads, ...), probed on one Ray worker.

        This is what a row's key should hold for rows this executor produces; it differs from
        the calling process's `environment` at least in ``threads`` when ``num_cpus_per_actor``
        differs from this process's thread count."""
        ray = self._ray()
        probe = ray.remote(_probe_environment).options(num_cpus=self.num_cpus_per_actor)
        return ray.get(probe.remote(_threads(self.num_cpus_per_actor)))

    def run(
        self,
        source: ModelSource,
        settings: RunSettings,
        entries: Sequence[PlanEntry],
        cancelled: Callable[[], bool],
    ) -> Iterator[tuple[PlanEntry, dict[str, Any] | BaseException]]:
        """Yield ``(entry, row or ExplorerError)`` as each entry finishes on some actor.

        ``cancelled`` is looked at before each submission and while waiting; once it is true,
        entries in flight are abandoned (their actors are killed, so none of their work lands
        anywhere) and the generator returns. A model that an actor cannot load raises."""
        if not entries or cancelled():
            return
        ray = self._ray()
        actor_class = ray.remote(SweepWorker).options(
            num_cpus=self.num_cpus_per_actor,
            scheduling_strategy="SPREAD",
            max_restarts=ACTOR_RESTARTS,
        )
        threads = _threads(self.num_cpus_per_actor)
        actors = [
            actor_class.remote(source.to_dict(), settings.to_dict(), threads)
            for _ in range(min(self.actors, len(entries)))
        ]
        todo = iter(entries)
        pending: dict[Any, tuple[Any, PlanEntry]] = {}
        nodes: dict[int, str] = {}
        warned = False

        def submit(actor: Any) -> None:
            entry = next(todo, None)
            if entry is not None:
                pending[actor.evaluate.remote(entry.to_dict())] = (actor, entry)

        try:
            for actor in actors:
                if cancelled():
                    return
                submit(actor)
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=CANCEL_POLL_S)
                if not done:
                    if cancelled():
                        return
                    continue
                actor, entry = pending.pop(done[0])
                try:
                    reply = ray.get(done[0])
                except ray.exceptions.RayError as exc:
                    reply = {"error": f"the Ray actor failed: {_describe(exc)}"}
                if "load_error" in reply:
                    raise ExplorerError(reply["load_error"])
                if "node" in reply:
                    nodes[id(actor)] = reply["node"]
                    if not warned and len(set(nodes.values())) < len(nodes):
                        warned = True
                        warnings.warn(
                            "two Ray actors share a node, so one's work can disturb the "
                            "other's timings; use at most one actor per node",
                            RuntimeWarning,
                            stacklevel=2,
                        )
                if "row" in reply:
                    yield entry, reply["row"]
                else:
                    yield entry, ExplorerError(reply["error"])
                if cancelled():
                    return
                submit(actor)
        finally:
            # Cleanup must reach every actor even if Ray refuses one step (a dead actor, say).
            for ref in pending:
                with contextlib.suppress(Exception):
                    ray.cancel(ref)
            for actor in actors:
                with contextlib.suppress(Exception):
                    ray.kill(actor)


EXECUTORS = ("local", "ray")


def make_executor(name: str, **options: Any) -> Executor:
    """The executor named on the command line (``--executor local|ray``); options left as None
    mean "the default". ``local`` takes ``ctx``; ``ray`` takes `RayExecutor`'s arguments."""
    options = {k: v for k, v in options.items() if v is not None}
    if name == "local":
        unknown = sorted(set(options) - {"ctx"})
        if unknown:
            raise ExplorerError(f"the local executor takes no option {unknown}; use --executor ray")
        return LocalExecutor(**options)
    if name == "ray":
        known = ("address", "actors", "num_cpus_per_actor", "init_kwargs")
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ExplorerError(f"the Ray executor takes {list(known)}, not {unknown}")
        return RayExecutor(**options)
    raise ExplorerError(f"unknown executor {name!r}; choose among {list(EXECUTORS)}")
