"""A stand-in `dvc` for the tests of commands that run DVC (revelio paper run, revelio sweep)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest


def fake_dvc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int = 0) -> Path:
    """A `dvc` first on PATH that logs its arguments (and, for `dvc queue ...`, the PATH it was
    given) and exits with `code`; returns the log."""
    log = tmp_path / "calls.txt"
    script = tmp_path / "bin" / "dvc"
    script.parent.mkdir()
    script.write_text(
        f'#!/bin/sh\necho "$@" >> {log}\n[ "$1" = queue ] && echo "PATH=$PATH" >> {log}\nexit {code}\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")
    return log
