"""Stages run from a shell without the venv (stages/__init__.py): re-run under .venv, or one line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The interpreter the venv was made from, without its site-packages (-S): a python that
# lacks the project's packages, like the system python of a shell without the venv.
BARE = [str(Path(sys.base_prefix) / "bin" / "python3"), "-S"]


@pytest.fixture
def fake_repo(tmp_path: Path) -> Path:
    (tmp_path / "stages").mkdir()
    shutil.copy(REPO / "stages" / "__init__.py", tmp_path / "stages" / "__init__.py")
    (tmp_path / "stages" / "hello.py").write_text("print('hello from the stage')\n")
    return tmp_path


def _run(repo: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k != "REVELIO_NO_VENV"}
    return subprocess.run(
        [*BARE, "-m", "stages.hello", "--flag"], cwd=repo, env={**clean, **env}, capture_output=True, text=True
    )


def test_without_packages_and_venv_one_line_error(fake_repo: Path) -> None:
    proc = _run(fake_repo)
    assert proc.returncode == 1 and "hello" not in proc.stdout
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: ") and "has no module named" in line and "make repro" in line


def test_with_a_venv_the_stage_reruns_under_it(fake_repo: Path) -> None:
    python = fake_repo / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text('#!/bin/sh\necho "venv python: $*"\n')
    python.chmod(0o755)
    proc = _run(fake_repo)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "venv python: -S -m stages.hello --flag"
    assert f"running under {python}" in proc.stderr
    # Turned off: the one-line error instead.
    off = _run(fake_repo, REVELIO_NO_VENV="1")
    assert off.returncode == 1 and off.stderr.startswith("error: ")


def test_with_the_packages_nothing_happens(fake_repo: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "stages.hello"], cwd=fake_repo, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout == "hello from the stage\n" and proc.stderr == ""
