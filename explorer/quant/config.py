"""Quantization configs and per-layer plans: frozen, hashable, validated, JSON round-trippable.

A `QuantConfig` says how one layer is stored and run: weight bits (2-8, or float); granularity
(per-tensor, per-channel or per-group, expressed as a block size over the 2-D weight
``[out_features, in_features]``; convolutions are flattened to
``[out_channels, in/groups * kh * kw]`` in PyTorch's memory order, so a group runs along input
channels times kernel window); symmetric or asymmetric codes; the calibration that picks the
clipping range; activation quantization; the method (PTQ or QAT); and the PTQ algorithm that
turns float weights into codes: round-to-nearest (``rtn``, the default), GPTQ (``gptq``), AWQ's
activation-aware scaling (``awq``) or SmoothQuant (``smoothquant``, W8A8), each with its
hyper-parameters as fields. Float baselines are configs too (``QuantConfig.float("fp32")``).

A `Plan` maps layer names to configs. Rules are ``fnmatch`` glob patterns (``blocks.*.mlp.*``)
tried in order; a rule whose pattern has no wildcard names one layer *explicitly*. A config that
cannot apply to a layer is an error if it was given explicitly; if it came from a pattern or the
default, the plan's ``fallback`` policy decides (``channel``: per-channel at the same bits,
``float``: keep the layer in fp32, ``error``) and the fallback is recorded on the assignment.

Modelled on torchao's granularity objects and config validation (torchao/quantization/).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import re
from dataclasses import dataclass, field
from typing import Any

from explorer.errors import QuantConfigError

CONFIG_VERSION = 1

GRANULARITIES = ("tensor", "channel", "group")
CALIBRATIONS = ("minmax", "percentile", "mse")
ACT_MODES = ("dynamic", "static")
ACT_GRANULARITIES = ("tensor", "token")
METHODS = ("ptq", "qat")
ALGORITHMS = ("rtn", "gptq", "awq", "smoothquant")
INPUT_SCALING_ALGORITHMS = ("awq", "smoothquant")
"""Algorithms that rescale a layer's input channels: the layer stores a per-input-channel
``input_scale`` that multiplies its input before the kernel."""
ALGORITHM_FIELDS: dict[str, dict[str, Any]] = {
    "gptq": {"act_order": False, "gptq_damp": 0.01, "gptq_block": 128},
    "awq": {"awq_grid": 20},
    "smoothquant": {"smooth_alpha": 0.5},
}
"""Each algorithm's hyper-parameters and their defaults. A config keeps the others at their
defaults (validated) and leaves them out of its JSON, so a round-to-nearest config's JSON, and
the key of every result row made with it, is what it was before the algorithms existed."""
_FIELD_LABELS = {
    "act_order": "act-order",
    "gptq_damp": "damp{:g}",
    "gptq_block": "block{}",
    "awq_grid": "grid{}",
    "smooth_alpha": "alpha{:g}",
}
FLOAT_DTYPES = ("fp32", "bf16")
FALLBACKS = ("channel", "float", "error")


@dataclass(frozen=True)
class QuantConfig:
    """How one layer is quantized. ``weight_bits=None`` means a float layer of ``float_dtype``."""

    weight_bits: int | None = 8
    granularity: str = "channel"
    group_size: int | None = None
    symmetric: bool = True
    calibration: str = "minmax"
    percentile: float = 99.99
    act_bits: int | None = None
    act_mode: str = "dynamic"
    act_granularity: str = "token"
    act_symmetric: bool = True
    method: str = "ptq"
    algorithm: str = "rtn"
    learn_scales: bool = False
    float_dtype: str = "fp32"
    gptq_damp: float = 0.01
    gptq_block: int = 128
    act_order: bool = False
    awq_grid: int = 20
    smooth_alpha: float = 0.5
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        if self.version != CONFIG_VERSION:
            raise QuantConfigError(
                f"config version {self.version} is not supported "
                f"(this build reads {CONFIG_VERSION})"
            )
        _check_choice("float_dtype", self.float_dtype, FLOAT_DTYPES)
        self._check_unused_hyperparameters()
        for flag in ("symmetric", "act_symmetric", "learn_scales", "act_order"):
            if not isinstance(getattr(self, flag), bool):
                raise QuantConfigError(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        if self.weight_bits is None:
            if self.act_bits is not None:
                raise QuantConfigError(
                    f"a float layer ({self.float_dtype}) cannot quantize activations "
                    f"(act_bits={self.act_bits}); set weight_bits too"
                )
            return
        if not _is_int(self.weight_bits) or not 2 <= self.weight_bits <= 8:
            raise QuantConfigError(
                f"weight_bits must be an integer from 2 to 8, got {self.weight_bits!r}"
            )
        _check_choice("granularity", self.granularity, GRANULARITIES)
        if self.granularity == "group":
            if not isinstance(self.group_size, int) or self.group_size < 2:
                raise QuantConfigError(
                    f"granularity 'group' needs an integer group_size >= 2, got {self.group_size!r}"
                )
        elif self.group_size is not None:
            raise QuantConfigError(
                f"group_size={self.group_size} only applies to granularity 'group', "
                f"not {self.granularity!r}"
            )
        _check_choice("calibration", self.calibration, CALIBRATIONS)
        if not _is_number(self.percentile) or not 50.0 < self.percentile <= 100.0:
            raise QuantConfigError(f"percentile must be in (50, 100], got {self.percentile}")
        if self.act_bits is not None and (
            not _is_int(self.act_bits) or self.act_bits not in (4, 8)
        ):
            raise QuantConfigError(f"act_bits must be 8, 4 or None (float), got {self.act_bits!r}")
        _check_choice("act_mode", self.act_mode, ACT_MODES)
        _check_choice("act_granularity", self.act_granularity, ACT_GRANULARITIES)
        if self.act_mode == "static" and self.act_granularity == "token":
            raise QuantConfigError(
                "static activation quantization is per-tensor: per-token scales depend on each "
                "input, so they can only be dynamic "
                "(use act_granularity='tensor' or act_mode='dynamic')"
            )
        _check_choice("method", self.method, METHODS)
        _check_choice("algorithm", self.algorithm, ALGORITHMS)
        if self.learn_scales and self.method != "qat":
            raise QuantConfigError(
                f"learn_scales (LSQ) only applies to method 'qat', not {self.method!r}"
            )
        self._check_algorithm()

    def _check_unused_hyperparameters(self) -> None:
        for algorithm, defaults in ALGORITHM_FIELDS.items():
            if algorithm == self.algorithm:
                continue
            for name, default in defaults.items():
                value = getattr(self, name)
                if value != default or type(value) is not type(default):
                    raise QuantConfigError(
                        f"{name}={value!r} only applies to algorithm {algorithm!r}, "
                        f"not {self.algorithm!r}"
                    )

    def _check_algorithm(self) -> None:
        if self.algorithm != "rtn" and self.method != "ptq":
            raise QuantConfigError(
                f"algorithm {self.algorithm!r} is a PTQ algorithm; QAT starts from "
                f"round-to-nearest (use method 'ptq', or algorithm 'rtn' with method "
                f"{self.method!r})"
            )
        if self.algorithm == "smoothquant" and self.act_bits != 8:
            raise QuantConfigError(
                "smoothquant moves activation outliers into the weights so that int8 activations "
                f"hold: it needs act_bits=8, got act_bits={self.act_bits}"
            )
        if not _is_number(self.gptq_damp) or not 0.0 < self.gptq_damp <= 1.0:
            raise QuantConfigError(
                f"gptq_damp (dampening, a fraction of the mean Hessian diagonal) must be in "
                f"(0, 1], got {self.gptq_damp!r}"
            )
        if not _is_int(self.gptq_block) or self.gptq_block < 1:
            raise QuantConfigError(
                f"gptq_block must be a positive number of columns, got {self.gptq_block!r}"
            )
        if not _is_int(self.awq_grid) or not 2 <= self.awq_grid <= 1000:
            raise QuantConfigError(
                f"awq_grid must be an integer from 2 to 1000 (points of the alpha search), "
                f"got {self.awq_grid!r}"
            )
        if not _is_number(self.smooth_alpha) or not 0.0 <= self.smooth_alpha <= 1.0:
            raise QuantConfigError(
                f"smooth_alpha (migration strength) must be in [0, 1], got {self.smooth_alpha!r}"
            )

    # --- constructors and names -------------------------------------------------------------
    @classmethod
    def float(cls, dtype: str = "fp32") -> QuantConfig:
        return cls(weight_bits=None, granularity="channel", float_dtype=dtype)

    @property
    def is_float(self) -> bool:
        return self.weight_bits is None

    @property
    def scales_inputs(self) -> bool:
        """Whether layers under this config store a per-input-channel ``input_scale``."""
        return not self.is_float and self.algorithm in INPUT_SCALING_ALGORITHMS

    def as_rtn(self) -> QuantConfig:
        """The same grid and activations with round-to-nearest (every hyper-parameter reset)."""
        defaults = {k: v for fields in ALGORITHM_FIELDS.values() for k, v in fields.items()}
        return dataclasses.replace(self, algorithm="rtn", **defaults)

    @property
    def algorithm_name(self) -> str:
        """``gptq``, ``gptq act-order damp0.1``, ``awq grid10``, ``smoothquant alpha0.8``: the
        algorithm and every hyper-parameter that differs from its default."""
        parts = [self.algorithm]
        for name, default in ALGORITHM_FIELDS.get(self.algorithm, {}).items():
            value = getattr(self, name)
            if value != default:
                parts.append(_FIELD_LABELS[name].format(value))
        return " ".join(parts)

    @property
    def granularity_name(self) -> str:
        """``tensor``, ``channel`` or ``group32`` (the names the CLI and result rows use)."""
        return f"group{self.group_size}" if self.granularity == "group" else self.granularity

    @property
    def name(self) -> str:
        """A short human-readable label such as ``W4 group32 sym A8 token dynamic ptq``, with the
        algorithm before the method when it is not round-to-nearest (``W4 group128 sym gptq
        ptq``)."""
        if self.is_float:
            return self.float_dtype
        parts = [f"W{self.weight_bits}", self.granularity_name, "sym" if self.symmetric else "asym"]
        if self.calibration != "minmax":
            parts.append(
                f"p{self.percentile:g}" if self.calibration == "percentile" else self.calibration
            )
        if self.act_bits is not None:
            parts.append(f"A{self.act_bits} {self.act_granularity} {self.act_mode}")
        if self.algorithm != "rtn":
            parts.append(self.algorithm_name)
        parts.append(self.method + ("+lsq" if self.learn_scales else ""))
        return " ".join(parts)

    def with_(self, **changes: Any) -> QuantConfig:
        return dataclasses.replace(self, **changes)

    # --- JSON --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every field, except the hyper-parameters of algorithms other than this config's
        (always at their defaults; see `ALGORITHM_FIELDS`)."""
        data = dataclasses.asdict(self)
        for algorithm, defaults in ALGORITHM_FIELDS.items():
            if algorithm != self.algorithm:
                for name in defaults:
                    del data[name]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantConfig:
        if not isinstance(data, dict):
            raise QuantConfigError(f"a config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise QuantConfigError(f"unknown config field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)


def parse_granularity(text: str) -> tuple[str, int | None]:
    """``"tensor"`` → ``("tensor", None)``; ``"group32"`` or ``"g32"`` → ``("group", 32)``."""
    text = text.strip().lower()
    if text in ("tensor", "channel"):
        return text, None
    match = re.fullmatch(r"(?:group|g)(\d+)", text)
    if match is None:
        raise QuantConfigError(
            f"granularity {text!r} is not one of 'tensor', 'channel' or 'group<N>' (e.g. group32)"
        )
    return "group", int(match.group(1))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise QuantConfigError(f"{name} must be one of {list(choices)}, got {value!r}")


# --- plans -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Layer name (or glob pattern) → config. ``None`` as a config keeps the layer in fp32.

    ``rules`` are tried in order and the first match wins; unmatched layers get ``default``.
    """

    default: QuantConfig | None = field(default_factory=QuantConfig)
    rules: tuple[tuple[str, QuantConfig | None], ...] = ()
    fallback: str = "channel"
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        if self.version != CONFIG_VERSION:
            raise QuantConfigError(f"plan version {self.version} is not supported")
        _check_choice("fallback", self.fallback, FALLBACKS)
        rules = tuple((str(p), c) for p, c in self.rules)
        for pattern, config in rules:
            if not pattern:
                raise QuantConfigError("a plan rule has an empty layer pattern")
            if config is not None and not isinstance(config, QuantConfig):
                raise QuantConfigError(f"rule {pattern!r}: expected a QuantConfig, got {config!r}")
        object.__setattr__(self, "rules", rules)

    @classmethod
    def uniform(cls, config: QuantConfig | None, fallback: str = "channel") -> Plan:
        return cls(default=config, fallback=fallback)

    def match(self, layer: str) -> tuple[QuantConfig | None, str]:
        """The config for ``layer`` and its source: ``explicit``, ``pattern:P`` or ``default``."""
        for pattern, config in self.rules:
            if not _is_glob(pattern):
                if pattern == layer:
                    return config, "explicit"
            elif fnmatch.fnmatchcase(layer, pattern):
                return config, f"pattern:{pattern}"
        return self.default, "default"

    def explicit_layers(self) -> list[str]:
        return [p for p, _ in self.rules if not _is_glob(p)]

    @property
    def is_uniform(self) -> bool:
        return not self.rules

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "default": None if self.default is None else self.default.to_dict(),
            "rules": [[p, None if c is None else c.to_dict()] for p, c in self.rules],
            "fallback": self.fallback,
        }

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no whitespace, so equal plans give equal strings."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        if not isinstance(data, dict):
            raise QuantConfigError(f"a plan must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - {"version", "default", "rules", "fallback"})
        if unknown:
            raise QuantConfigError(f"unknown plan field(s) {unknown}")
        default = data.get("default")
        rules = []
        for item in data.get("rules", []):
            if not (isinstance(item, list | tuple) and len(item) == 2):
                raise QuantConfigError(f"a plan rule must be [pattern, config], got {item!r}")
            pattern, config = item
            rules.append((pattern, None if config is None else QuantConfig.from_dict(config)))
        return cls(
            default=None if default is None else QuantConfig.from_dict(default),
            rules=tuple(rules),
            fallback=data.get("fallback", "channel"),
            version=data.get("version", CONFIG_VERSION),
        )

    @classmethod
    def from_json(cls, text: str) -> Plan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise QuantConfigError(f"plan is not valid JSON: {exc}") from None
        return cls.from_dict(data)


def _is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def why_not_applicable(config: QuantConfig, in_features: int, conv: bool = False) -> str | None:
    """Why ``config`` cannot quantize a weight with ``in_features`` columns (of a convolution when
    ``conv``), or None if it can. GPTQ, AWQ and SmoothQuant are implemented for linear layers
    only: a convolution's input statistics would be those of its im2col patches."""
    if config.is_float:
        return None
    if conv and config.algorithm != "rtn":
        return f"algorithm {config.algorithm} applies to linear layers only, not convolutions"
    if config.granularity == "group":
        assert config.group_size is not None
        if in_features % config.group_size != 0:
            return f"group size {config.group_size} does not divide in_features {in_features}"
    return None
