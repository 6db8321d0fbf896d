"""The one stage body (stages/_entry.py): one line for a diverged run, timings recorded apart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.errors import NonFiniteLoss
from stages._entry import run_stage

REPO = Path(__file__).resolve().parents[1]


def _run(work, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.chdir(tmp_path)
    return run_stage("fit_diffc", "doc", work, lambda p, r, s: f"done {r}",
                     ["--params", str(REPO / "params.yaml")])


def test_non_finite_loss_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    def diverge(params, root):
        raise NonFiniteLoss("Diff-C train loss is nan at epoch 2; stopped, ...: lower diffc.lr")

    assert _run(diverge, tmp_path, monkeypatch) == 1
    err = capsys.readouterr().err
    assert err == "error: Diff-C train loss is nan at epoch 2; stopped, ...: lower diffc.lr\n"
    assert not (tmp_path / "reports" / "timings.json").exists()


def test_success_records_the_time_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    assert _run(lambda params, root: 42, tmp_path, monkeypatch) == 0
    assert capsys.readouterr().out == "done 42\n"
    timings = json.loads((tmp_path / "reports" / "timings.json").read_text())
    entry = timings["fit_diffc"]["fashion_mnist/fmnist-ddpm/trained/bottleneck/t25"]
    assert entry["seconds"] >= 0 and entry["machine"]["cores"] >= 1 and entry["finished"]


def test_control_selects_the_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """A per-row stage hands `work` the params of its `--control` row; others refuse it."""
    monkeypatch.chdir(tmp_path)
    seen = []
    argv = ["--params", str(REPO / "params.yaml"), "--control", "input"]
    work = lambda params, root: seen.append(params.key) or 1  # noqa: E731
    assert run_stage("fit_diffc", "doc", work, lambda p, r, s: "ok", argv, per_control=True) == 0
    (key,) = seen
    assert key.control == "input" and key.layer == "input"
    assert str(key) == "fashion_mnist/fmnist-ddpm/input/input/t25"
    with pytest.raises(SystemExit) as bad:
        run_stage("fit_diffc", "doc", work, lambda p, r, s: "ok", [*argv[:2], "--control", "random"], per_control=True)
    assert bad.value.code == 2 and "invalid choice: 'random'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a stage with one output for all rows takes no --control
        run_stage("evaluate", "doc", work, lambda p, r, s: "ok", argv)
