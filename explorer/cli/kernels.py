"""``build-kernels``: compile (or verify) the native kernel libraries into the cache folder now,
so that no user request waits for a compiler (the Docker image runs it at build time)."""

from __future__ import annotations

import argparse
from typing import Any

from explorer.errors import KernelError


def cmd_build_kernels(args: argparse.Namespace) -> dict[str, Any]:
    from explorer.kernels import native_build

    compiler = native_build.find_compiler()
    results = native_build.build_all()
    failed = {stem: why for stem, why in results.items() if isinstance(why, str)}
    if failed:
        stem, why = next(iter(failed.items()))
        raise KernelError(f"could not build {stem}: {why}")
    libraries = {
        stem: {
            "path": str(built.path),
            "sha256": built.sha256,
            "compiled_seconds": built.compile_seconds,  # None: verified, already built
        }
        for stem, built in results.items()
        if isinstance(built, native_build.Built)
    }
    result = {
        "cache": str(native_build.cache_dir()),
        "compiler": native_build.compiler_id(compiler),
        "libraries": libraries,
    }
    if not args.json:
        for stem, lib in libraries.items():
            how = "verified" if lib["compiled_seconds"] is None else "compiled"
            print(f"{stem}: {how} {lib['path']}")
    return result
