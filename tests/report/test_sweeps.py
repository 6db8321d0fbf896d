"""pipeline.report.sweeps and `revelio sweep`: a layer × t grid queued as DVC experiments, waited on."""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

import pipeline.report.sweeps as sweeps
from pipeline.cli import app
from pipeline.report.sweeps import sweep_commands, wait_for, worker_env
from tests.fake_dvc import fake_dvc

REPO = Path(__file__).resolve().parents[2]


def test_one_queued_experiment_per_key_layers_outermost() -> None:
    cmds = sweep_commands(["bottleneck", "up_ft0"], [25, 100], ["diffc.epochs=2"], prefix="s")
    assert [c[c.index("-n") + 1] for c in cmds] == ["s-bottleneck-t25", "s-bottleneck-t100", "s-up_ft0-t25",
                                                    "s-up_ft0-t100"]
    assert cmds[1] == ["dvc", "exp", "run", "--queue", "-n", "s-bottleneck-t100", "-S", "layer=bottleneck",
                       "-S", "t=100", "-S", "diffc.epochs=2"]


def test_workers_get_this_interpreter_first_on_path() -> None:
    env = worker_env({"PATH": "/usr/bin", "HOME": "/h"})
    assert env["PATH"].split(os.pathsep) == [str(Path(sys.executable).parent), "/usr/bin"] and env["HOME"] == "/h"


def test_wait_until_nothing_is_queued_or_running() -> None:
    states = iter([
        {"a": "Queued", "b": "Queued"},
        {"a": "Running", "b": "Queued"},
        {"a": "Running", "b": "Queued"},  # no change: not reported again
        {"a": "Success", "b": "Running", "other": "Running"},  # another sweep's task is not waited on
        {"a": "Success", "b": "Failed", "other": "Running"},
    ])
    reports, naps = [], []
    final = wait_for(["a", "b"], lambda: next(states), poll_s=5, report=reports.append, sleep=naps.append)
    assert final == {"a": "Success", "b": "Failed"}
    assert reports == [Counter(Queued=2), Counter(Running=1, Queued=1), Counter(Success=1, Running=1),
                       Counter(Success=1, Failed=1)]
    assert naps == [5, 5, 5, 5]
    assert wait_for(["gone"], lambda: {}, sleep=naps.append) == {"gone": "missing"}


def test_cli_queues_starts_and_waits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # reads params.yaml to check each key
    log = fake_dvc(tmp_path, monkeypatch)
    done = {f"sweep-{layer}-t{t}": "Success" for layer in ("bottleneck", "up_ft0") for t in (25, 100)}
    monkeypatch.setattr(sweeps, "queue_status", lambda root=Path("."): done)
    result = CliRunner().invoke(app, ["sweep", "--layers", "bottleneck,up_ft0", "--t", "25,100", "-S",
                                      "diffc.epochs=2", "-j", "2", "--poll", "0.1"])
    assert result.exit_code == 0, result.output
    calls = log.read_text().splitlines()
    assert [c.split(" -S")[0] for c in calls[:4]] == [f"exp run --queue -n {n}" for n in done]
    assert calls[4] == "queue start -j 2"
    assert calls[5].removeprefix("PATH=").split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert "queue: 4 success" in result.output and "done: 4 experiments" in result.output


def test_cli_names_failed_experiments_and_bad_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    log = fake_dvc(tmp_path, monkeypatch)
    monkeypatch.setattr(sweeps, "queue_status", lambda root=Path("."): {"sweep-up_ft0-t25": "Failed"})
    result = CliRunner().invoke(app, ["sweep", "--layers", "up_ft0", "-j", "1"])
    assert result.exit_code == 1 and "did not succeed: sweep-up_ft0-t25" in result.output
    bad = CliRunner().invoke(app, ["sweep", "--layers", "up_ft0,up_ft9", "--t", "25"])
    assert bad.exit_code == 1 and "layer=up_ft9 t=25" in bad.output and "did you mean 'up_ft3'" in bad.output
    assert len(log.read_text().splitlines()) == 3  # the failed sweep's queue + start (+ PATH); nothing for the bad one
    queued = CliRunner().invoke(app, ["sweep", "--layers", "up_ft0", "--queue-only"])
    assert queued.exit_code == 0 and "then: dvc queue start -j 1" in queued.output
