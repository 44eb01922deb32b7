"""The app as a user meets it: `streamlit run streamlit_app.py` on a free localhost port, driven
by Playwright through Debian's Chromium (``/usr/bin/chromium``, headless, no sandbox).

The server runs with ``EXPLORER_CACHE`` and ``EXPLORER_STORE`` in a temporary folder, so the
user's cache and results are never touched, and in a process group of its own, so the sweep
workers it spawns stop with it. Chromium starts *before* the server, so the time from launching
the server to an interactive first page is not inflated by the browser's own start. The session
shares one server (``app_server``); a module whose work must stay apart from it (its own store,
no effect on the session server's rows) overrides ``app_server`` with ``own_app_server``. Each
test gets a ``page`` of its own, in a new browser context: a new visitor with a run id of its
own, so no test depends on the page another one left; what tests share is the server and its
results store, which module fixtures fill. The first open is timed on a server of the test's
own (``fresh_app_server``).

Timings the tests measure go into `TIMINGS`: they are printed in pytest's terminal summary (with
or without ``-s``), recorded as junit properties and written to ``browser-timings.json`` in the
test's temporary folder.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
HEALTH_TIMEOUT_S = 60.0
VIEWPORT = {"width": 1400, "height": 900}

TIMINGS: dict[str, Any] = {}
"""Measured numbers by name (seconds), filled by the tests, reported at the end of the run."""


@dataclass
class AppServer:
    url: str
    port: int
    cache: Path
    store: Path
    log: Path
    process: subprocess.Popen[bytes]
    launched_at: float  # time.monotonic() when the server process was started
    healthy_at: float  # ... when /_stcore/health first answered "ok"

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float) -> float:
    """Poll ``url`` until it answers ``ok``; returns the monotonic time it first did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.read().strip() == b"ok":
                    return time.monotonic()
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer 'ok' within {timeout:.0f} s")


def stop_process_group(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Terminate the server and everything it spawned (its own process group), then kill."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # sweep workers left behind, if any
    except ProcessLookupError:
        pass
    if process.poll() is None:
        process.wait(timeout=grace)


def server_env(cache: Path, store: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    env["EXPLORER_CACHE"] = str(cache)
    env["EXPLORER_STORE"] = str(store)
    # A timing lock of the server's own: the machine-wide one is held by whoever times on this
    # machine (a 15-minute benchmark stalled every sweep of the app here); the tests assert no
    # latency, so overlapping timings cost them nothing.
    env["EXPLORER_TIMING_LOCK"] = str(cache.parent / "timing.lock")
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="session")
def browser_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("browser")


@pytest.fixture(scope="session")
def browser(browser_dir: Path) -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (scripts/setup_browser.sh installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        try:
            yield chromium
        finally:
            chromium.close()


@contextmanager
def serve_app(base: Path) -> Iterator[AppServer]:
    """`streamlit run streamlit_app.py` on a free port with its cache and store in ``base``,
    which this process's environment also points at (the tests read the same rows), until the
    block ends."""
    cache, store = base / "cache", base / "results.sqlite"
    log = base / "streamlit.log"
    port = free_port()
    command = [
        *(str(Path(sys.executable).parent / "streamlit"), "run", "streamlit_app.py"),
        *("--server.port", str(port), "--server.headless", "true"),
        *("--server.address", "127.0.0.1"),
    ]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EXPLORER_CACHE", str(cache))
        mp.setenv("EXPLORER_STORE", str(store))
        with log.open("wb") as out:
            launched_at = time.monotonic()
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=server_env(cache, store),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            try:
                healthy_at = wait_healthy(f"{url}/_stcore/health", process, HEALTH_TIMEOUT_S)
            except (RuntimeError, TimeoutError) as exc:
                pytest.fail(f"streamlit did not start: {exc}\n{log.read_text(errors='replace')}")
            yield AppServer(url, port, cache, store, log, process, launched_at, healthy_at)
        finally:
            stop_process_group(process)


@pytest.fixture(scope="session")
def app_server(browser: Any, browser_dir: Path) -> Iterator[AppServer]:
    """The session's server, until the end of the session."""
    with serve_app(browser_dir) as server:
        TIMINGS["health_after_launch_s"] = round(server.healthy_at - server.launched_at, 3)
        yield server


@pytest.fixture(scope="module")
def own_app_server(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    """A server of the module's own, with an empty cache and store: for a module whose sweeps
    must not reach the session server's rows or its first-open timings (a module overrides
    ``app_server`` with it)."""
    with serve_app(tmp_path_factory.mktemp("own-app")) as server:
        yield server


@pytest.fixture
def fresh_app_server(browser: Any, tmp_path: Path) -> Iterator[AppServer]:
    """A server of the test's own, just launched, with an empty cache and store: for what is
    timed from ``streamlit run`` (the first open), whatever ran before."""
    with serve_app(tmp_path) as server:
        yield server


@pytest.fixture(scope="session")
def new_user(browser: Any) -> Any:
    """``with new_user() as page``: a page in a browser context of its own (its own cookies and
    Streamlit session, so the app gives it a run id of its own), as a new visitor."""

    @contextmanager
    def user() -> Iterator[Any]:
        context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
        context.set_default_timeout(30_000)
        try:
            yield context.new_page()
        finally:
            context.close()

    return user


@pytest.fixture
def page(new_user: Any) -> Iterator[Any]:
    """Each test's own visitor: no test goes on from where another left the app."""
    with new_user() as user_page:
        yield user_page


@pytest.fixture
def report(record_property: Any, browser_dir: Path) -> Any:
    """``report(name, value)``: keep a measured number for the summary, junit and the JSON."""

    def keep(name: str, value: Any) -> None:
        TIMINGS[name] = value
        record_property(name, value)
        (browser_dir / "browser-timings.json").write_text(json.dumps(TIMINGS, indent=2) + "\n")

    return keep


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not TIMINGS:
        return
    terminalreporter.section("app timings (browser tests)")
    for name, value in TIMINGS.items():
        terminalreporter.write_line(f"{name}: {value}")
