"""Headless Chromium for the tests that open a page the project writes (Debian's `chromium`,
which `make test` installs where it can)."""

from __future__ import annotations

import shutil
import subprocess

import pytest


def chromium() -> str:
    """The binary, or skip the test (naming the package to install)."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("no chromium or chromium-browser on PATH (Debian: apt-get install -y chromium)")
    return binary


def headless(binary: str, *args: str, offline: bool = False) -> str:
    """Run Chromium headless (scripts get 10 s of virtual time); its stdout. offline: every
    network request goes to a closed local port, so only what the page carries can load."""
    net = ["--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>"] if offline else []
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000", *net, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout
