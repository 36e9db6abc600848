"""Helpers for the browser tests: real servers in their own process groups, and Debian's Chromium."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium keeps calling Google's hosts, which this
# machine's closed network refuses.
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# Screenshots go to $JRR_SCREENSHOT_DIR when set (`JRR_SCREENSHOT_DIR=docs make test` refreshes the
# README's pictures); otherwise to a temp dir, so a test run never edits tracked files.
DOCS = Path(os.environ.get("JRR_SCREENSHOT_DIR") or tempfile.mkdtemp(prefix="jrr-screens-"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> Iterator[subprocess.Popen]:
    """Start ``cmd`` in a new session (output to ``log``); SIGTERM its group on exit, SIGKILL if stuck."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            yield proc
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)
    with suppress(ProcessLookupError):  # children (code servers, run workers) may outlive the leader
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout_s: float) -> None:
    """Poll ``url`` until it answers; fail with the server's log if it exits or takes too long."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{url} did not come up (rc={proc.poll()}):\n{tail(log)}")
            time.sleep(1)


def wait_tcp(port: int, proc: subprocess.Popen, log: Path, deadline: float) -> None:
    """Wait until something listens on 127.0.0.1:``port`` (a gRPC code server once it has loaded)."""
    while True:
        with socket.socket() as s:
            s.settimeout(2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"nothing listens on port {port} (rc={proc.poll()}):\n{tail(log)}")
        time.sleep(1)


def tail(log: Path, chars: int = 4000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else ""


@contextmanager
def chromium_page(user_data_dir: Path, width: int = 1600, height: int = 1000):
    """A Playwright page in headless Debian Chromium with a fresh profile."""
    from playwright.sync_api import expect, sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} missing: install Debian's chromium (apt-get install chromium)")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(user_data_dir), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": width, "height": height},
        )
        try:
            page = context.new_page()
            page.set_default_timeout(60_000)
            expect.set_options(timeout=60_000)
            yield page
        finally:
            context.close()


def save_screenshot(page, name: str, full_page: bool = False) -> Path:
    """Screenshot into DOCS, written to a temp file then renamed."""
    DOCS.mkdir(exist_ok=True)
    final = DOCS / name
    tmp = DOCS / f".{name}.tmp.png"
    page.screenshot(path=str(tmp), full_page=full_page)
    os.replace(tmp, final)
    return final
