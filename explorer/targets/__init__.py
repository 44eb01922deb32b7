"""Targets: where a quantized configuration runs (see `explorer.targets.base`)."""

from explorer.targets.base import (
    Artifact,
    NativeTarget,
    Target,
    TargetError,
    TargetModule,
    describe,
    get_target,
    target_choices,
    target_names,
)

__all__ = [
    "Artifact",
    "NativeTarget",
    "Target",
    "TargetError",
    "TargetModule",
    "describe",
    "get_target",
    "target_choices",
    "target_names",
]
