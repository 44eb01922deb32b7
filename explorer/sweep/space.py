"""The sweep space: which configurations a sweep tries, expanded into plans.

A `SweepSpec` lists values per dimension (weight bits, granularity and group size, symmetry,
calibration, activation bits, mode and granularity, PTQ or QAT with its step budget, algorithm)
and which layers they apply to; `expand` takes the cross product and turns each combination into
a `PlanEntry`. The fp32 and bf16 baselines are always entries. A combination that cannot exist
(static per-token activations, say) is *skipped with its reason*.

A granularity is checked before anything runs, so that no row is labelled with a group size it
did not use: a malformed one (``group0``, ``group-32``, ``groupx``) is refused when the spec is
built, and one whose group size divides the in_features of none of the layers it applies to
(``group7`` on widths 16 and 128), of an explicitly named layer, or of any layer under the
``error`` fallback policy is refused by `expand` with the layer and its width. Where the policy
falls back for *some* layers (per-channel, or fp32), the entry's label says which.

Imports: `explorer.quant`, `explorer.nn.convert` (to resolve plans against a model).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from explorer.errors import ExplorerError, QuantConfigError
from explorer.quant.config import (
    ACT_GRANULARITIES,
    ACT_MODES,
    ALGORITHMS,
    CALIBRATIONS,
    FALLBACKS,
    METHODS,
    Plan,
    QuantConfig,
    parse_granularity,
)

SPEC_VERSION = 1
DEFAULT_QAT_STEPS = 200
DIMENSIONS: tuple[str, ...] = (
    "weight_bits",
    "granularity",
    "symmetric",
    "calibration",
    "act_bits",
    "act_mode",
    "act_granularity",
    "method",
    "algorithm",
)
"""The `SweepSpec` fields that are a sweep's axes (each a tuple of values; the grid is their
product). The command line names ``weight_bits`` ``--bits``; every other option is the field."""


class SweepSpecError(QuantConfigError):
    """A sweep spec that cannot be built (unknown value, empty dimension)."""


def check_granularity(text: str) -> tuple[str, int | None]:
    """``"group32"`` → ``("group", 32)``, as `parse_granularity`, but every malformed value
    (``group0``, ``group1``, ``group-32``, ``groupx``) gets the same error naming it."""
    try:
        granularity, group = parse_granularity(str(text))
    except QuantConfigError:
        group = 0
    else:
        if group is None or group >= 2:
            return granularity, group
    raise SweepSpecError(
        f"granularity {str(text).strip()!r} is not valid: give tensor, channel or group<N> with "
        "a group size N of at least 2 (e.g. group32)"
    )


def _tuple(name: str, values: Iterable[Any]) -> tuple[Any, ...]:
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise SweepSpecError(f"{name} must be a list of values, got {values!r}")
    out = tuple(dict.fromkeys(values))  # de-duplicate, keep order
    if not out:
        raise SweepSpecError(f"{name} needs at least one value")
    return out


@dataclass(frozen=True)
class SweepSpec:
    """Values to sweep per dimension. Every field is a tuple of choices except the QAT budget,
    the layer selection and the fallback policy. ``act_bits`` uses None for float activations.

    ``layers``: glob patterns of the layers the swept configs apply to (empty: every layer);
    unselected layers stay fp32. ``fallback``: what a layer gets when a swept config does not fit
    it (see `Plan`)."""

    weight_bits: tuple[int, ...] = (8, 4)
    granularity: tuple[str, ...] = ("channel",)
    symmetric: tuple[bool, ...] = (True,)
    calibration: tuple[str, ...] = ("minmax",)
    act_bits: tuple[int | None, ...] = (None,)
    act_mode: tuple[str, ...] = ("dynamic",)
    act_granularity: tuple[str, ...] = ("token",)
    method: tuple[str, ...] = ("ptq",)
    algorithm: tuple[str, ...] = ("rtn",)
    qat_steps: int = DEFAULT_QAT_STEPS
    qat_lr: float | None = None  # None: the model's default (`ModelContext.qat_lr`)
    layers: tuple[str, ...] = ()
    fallback: str = "channel"
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        if self.version != SPEC_VERSION:
            raise SweepSpecError(f"sweep spec version {self.version} is not supported")
        for name in DIMENSIONS:
            object.__setattr__(self, name, _tuple(name, getattr(self, name)))
        object.__setattr__(self, "layers", tuple(dict.fromkeys(self.layers)))
        for bits in self.weight_bits:
            if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
                raise SweepSpecError(f"weight bits must be integers from 2 to 8, got {bits!r}")
        for text in self.granularity:
            check_granularity(text)
        for bits in self.act_bits:
            if bits is not None and bits not in (4, 8):
                raise SweepSpecError(f"activation bits must be 8, 4 or none, got {bits!r}")
        for name, allowed in (
            ("calibration", CALIBRATIONS),
            ("act_mode", ACT_MODES),
            ("act_granularity", ACT_GRANULARITIES),
            ("method", METHODS),
            ("algorithm", ALGORITHMS),
        ):
            for value in getattr(self, name):
                if value not in allowed:
                    raise SweepSpecError(f"{name} must be among {list(allowed)}, got {value!r}")
        if any(not isinstance(s, bool) for s in self.symmetric):
            raise SweepSpecError(f"symmetric takes true/false values, got {self.symmetric!r}")
        if (
            isinstance(self.qat_steps, bool)
            or not isinstance(self.qat_steps, int)
            or self.qat_steps < 1
        ):
            raise SweepSpecError(
                f"the QAT budget must be a positive step count, not {self.qat_steps!r}"
            )
        if self.qat_lr is not None and (
            isinstance(self.qat_lr, bool)
            or not isinstance(self.qat_lr, int | float)
            or not 0 < self.qat_lr < 1
        ):
            raise SweepSpecError(f"the QAT learning rate must lie in (0, 1), got {self.qat_lr!r}")
        if self.fallback not in FALLBACKS:
            raise SweepSpecError(f"fallback must be among {list(FALLBACKS)}, got {self.fallback!r}")

    def to_dict(self) -> dict[str, Any]:
        return {name: list(v) if isinstance(v, tuple) else v for name, v in self.__dict__.items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepSpec:
        if not isinstance(data, dict):
            raise SweepSpecError(f"a sweep spec must be a JSON object, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise SweepSpecError(f"unknown sweep field(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@dataclass(frozen=True)
class PlanEntry:
    """One row to evaluate: a plan, how it is produced, and its flat description."""

    plan: Plan
    kind: str  # "baseline" | "uniform" | "mixed"
    qat_steps: int | None = None  # QAT budget when any layer trains, else None
    qat_lr: float | None = None
    label: str = ""
    flat: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def method(self) -> str:
        return "qat" if self.qat_steps is not None else "ptq"

    def ptq_parent(self) -> PlanEntry | None:
        """The PTQ entry this QAT entry starts from (same plan, method ptq), else None."""
        if self.qat_steps is None:
            return None
        return entry_for_plan(_with_method(self.plan, "ptq"), kind=self.kind)

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan.to_dict(),
            "kind": self.kind,
            "qat_steps": self.qat_steps,
            "qat_lr": self.qat_lr,
            "label": self.label,
            "flat": self.flat,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlanEntry:
        return cls(
            plan=Plan.from_dict(data["plan"]),
            kind=data["kind"],
            qat_steps=data.get("qat_steps"),
            qat_lr=data.get("qat_lr"),
            label=data.get("label", ""),
            flat=dict(data.get("flat", {})),
        )


@dataclass(frozen=True)
class Skipped:
    label: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"config": self.label, "reason": self.reason}


def _configs(plan: Plan) -> list[QuantConfig]:
    return [c for c in (plan.default, *(c for _, c in plan.rules)) if c is not None]


def _with_method(plan: Plan, method: str) -> Plan:
    def swap(c: QuantConfig | None) -> QuantConfig | None:
        return None if c is None or c.is_float else c.with_(method=method)

    return Plan(
        default=swap(plan.default),
        rules=tuple((p, swap(c)) for p, c in plan.rules),
        fallback=plan.fallback,
    )


def flat_fields(config: QuantConfig | None, method: str | None = None) -> dict[str, Any]:
    """The contract's flat fields of a uniform row (``weight_bits``, ``act_bits``,
    ``granularity``, ``method``, ``algorithm``) plus the other swept dimensions."""
    if config is None or config.is_float:
        return {
            "weight_bits": None,
            "act_bits": None,
            "granularity": None,
            "method": None,
            "algorithm": None,
            "float_dtype": "fp32" if config is None else config.float_dtype,
        }
    return {
        "weight_bits": config.weight_bits,
        "act_bits": config.act_bits,
        "granularity": config.granularity_name,
        "method": method or config.method,
        "algorithm": config.algorithm,
        "symmetric": config.symmetric,
        "calibration": config.calibration,
        "act_mode": config.act_mode if config.act_bits is not None else None,
        "act_granularity": config.act_granularity if config.act_bits is not None else None,
    }


MIXED_FLAT = {k: None for k in ("weight_bits", "act_bits", "granularity", "method", "algorithm")}


def entry_for_plan(
    plan: Plan,
    *,
    kind: str | None = None,
    qat_steps: int | None = None,
    qat_lr: float | None = None,
    label: str | None = None,
) -> PlanEntry:
    """A `PlanEntry` for any plan: QAT if some config says so (then a budget is required)."""
    configs = _configs(plan)
    trains = any(c.method == "qat" for c in configs if not c.is_float)
    if trains and qat_steps is None:
        raise SweepSpecError("a plan with QAT layers needs a QAT step budget")
    if not trains:
        qat_steps = qat_lr = None
    if kind is None:
        kind = "uniform" if plan.is_uniform else "mixed"
    if kind == "baseline" or (kind == "uniform" and plan.is_uniform):
        flat = flat_fields(plan.default)
        name = "fp32" if plan.default is None else plan.default.name
    else:
        flat = dict(MIXED_FLAT)
        name = "mixed: " + ", ".join(
            f"{p}={'fp32' if c is None else c.name}" for p, c in plan.rules
        )
        if plan.default is not None or not plan.rules:
            name += f"; rest={'fp32' if plan.default is None else plan.default.name}"
    if qat_steps is not None:
        name += f" ({qat_steps} steps)"
    return PlanEntry(plan, kind, qat_steps, qat_lr, label or name, flat)


def baselines() -> list[PlanEntry]:
    return [
        entry_for_plan(Plan.uniform(None), kind="baseline", label="fp32"),
        entry_for_plan(Plan.uniform(QuantConfig.float("bf16")), kind="baseline", label="bf16"),
    ]


def _combinations(spec: SweepSpec) -> Iterable[tuple[dict[str, Any], str]]:
    seen: set[tuple[Any, ...]] = set()
    for bits, gran, sym, cal, act_bits, act_mode, act_gran, method, algo in itertools.product(
        spec.weight_bits,
        spec.granularity,
        spec.symmetric,
        spec.calibration,
        spec.act_bits,
        spec.act_mode,
        spec.act_granularity,
        spec.method,
        spec.algorithm,
    ):
        if act_bits is None:  # mode and granularity mean nothing for float activations
            act_mode, act_gran = "dynamic", "token"
        key = (bits, gran, sym, cal, act_bits, act_mode, act_gran, method, algo)
        if key in seen:
            continue
        seen.add(key)
        granularity, group = check_granularity(gran)
        fields = {
            "weight_bits": bits,
            "granularity": granularity,
            "group_size": group,
            "symmetric": sym,
            "calibration": cal,
            "act_bits": act_bits,
            "act_mode": act_mode,
            "act_granularity": act_gran,
            "method": method,
            "algorithm": algo,
        }
        label = (
            f"W{bits} {gran} {'sym' if sym else 'asym'} {cal} "
            f"A{act_bits if act_bits is not None else '-float'}"
            + (f" {act_gran} {act_mode}" if act_bits is not None else "")
            + f" {method} {algo}"
        )
        yield fields, label


def _names_shown(names: list[str]) -> str:
    if len(names) <= 2:
        return ", ".join(names)
    return f"{names[0]}, {names[1]} and {len(names) - 2} more"


def _group_fit(layers: dict[str, nn.Module], plan: Plan, config: QuantConfig) -> str:
    """Refuse a group size that cannot apply as planned (see the module docstring); otherwise
    the label suffix naming the layers the plan's fallback policy will change ("" if none)."""
    from explorer.nn.convert import in_features

    if config.granularity != "group":
        return ""
    group = config.group_size
    assert group is not None
    planned = {}
    for name, module in layers.items():
        layer_config, source = plan.match(name)
        if layer_config is not None:
            planned[name] = (in_features(module), source)
    misfits = [(n, k, src) for n, (k, src) in planned.items() if k % group != 0]
    if not misfits:
        return ""
    name, k, source = next(
        (m for m in misfits if m[2] == "explicit" or plan.fallback == "error"), misfits[0]
    )
    refuse = ""
    if len(misfits) == len(planned):
        others = len(planned) - 1
        refuse = f", nor that of the {others} other layer(s) it applies to" if others else ""
    elif source == "explicit":
        refuse = " (named explicitly)"
    elif plan.fallback == "error":
        refuse = " (fallback policy 'error')"
    else:
        instead = "per-channel" if plan.fallback == "channel" else "fp32"
        return f" ({_names_shown([m[0] for m in misfits])} {instead})"
    raise SweepSpecError(
        f"granularity {config.granularity_name!r} cannot apply: group size {group} does not "
        f"divide in_features {k} of layer `{name}`{refuse}; choose a group size that divides it"
    )


def expand(
    spec: SweepSpec, model: nn.Module | None = None
) -> tuple[list[PlanEntry], list[Skipped]]:
    """The baselines, then one entry per valid combination, in the spec's order; with a model,
    each plan is resolved against it so that one which cannot apply is skipped with its reason,
    except a group size that cannot apply, which raises `SweepSpecError` (module docstring)."""
    from explorer.nn.convert import quantizable_layers, resolve_plan
    from explorer.nn.fold import fold_batch_norm

    folded = None
    if model is not None:
        import copy

        folded, _ = fold_batch_norm(copy.deepcopy(model).eval())
    entries = baselines()
    skipped: list[Skipped] = []
    for fields, label in _combinations(spec):
        try:
            config = QuantConfig(**fields)
        except QuantConfigError as exc:
            skipped.append(Skipped(label, str(exc)))
            continue
        if spec.layers:
            plan = Plan(
                default=None, rules=tuple((p, config) for p in spec.layers), fallback=spec.fallback
            )
        else:
            plan = Plan.uniform(config, fallback=spec.fallback)
        suffix = ""
        if folded is not None:
            suffix = _group_fit(quantizable_layers(folded), plan, config)
            try:
                assignments = resolve_plan(folded, plan)
            except ExplorerError as exc:
                skipped.append(Skipped(label, str(exc)))
                continue
            if spec.layers and not any(a.config is not None for a in assignments.values()):
                skipped.append(Skipped(label, f"no layer matches {list(spec.layers)}"))
                continue
        qat = config.method == "qat"
        entry = entry_for_plan(
            plan,
            kind="uniform" if not spec.layers else "mixed",
            qat_steps=spec.qat_steps if qat else None,
            qat_lr=spec.qat_lr if qat else None,
        )
        if spec.layers:  # a selection is uniform over the chosen layers: keep its flat fields
            name = entry_for_plan(Plan.uniform(config), qat_steps=entry.qat_steps).label
            entry = PlanEntry(
                entry.plan,
                "uniform",
                entry.qat_steps,
                entry.qat_lr,
                f"{name} on {', '.join(spec.layers)}",
                flat_fields(config),
            )
        if suffix:
            entry = replace(entry, label=entry.label + suffix)
        entries.append(entry)
    return entries, skipped


def parse_list(text: str, convert: Any = str) -> list[Any]:
    """``"8,4,none"`` → ``[8, 4, None]`` with ``convert`` applied to every other item."""
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        out.append(None if item.lower() in ("none", "float", "fp32") else convert(item))
    if not out:
        raise SweepSpecError(f"empty list {text!r}")
    return out
