"""`revelio check-metrics` (pipeline.report.reproduce): a fresh run against the committed metrics."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.report.reproduce import check_metrics

REFERENCE = {
    "trained": {"diffc": {"top1_pct": 83.0}, "probe": {"top1_pct": 82.0}, "sae": {"sigma_label": 1.60}},
    "init": {"diffc": {"top1_pct": 77.0}},
    "input": {"diffc": {"top1_pct": 80.0}},
    "model": {"heldout_eps_mse": {"t25": {"trained": 0.23, "init": 1.16}}},
}


def _with(path: str, value: float) -> dict:
    out = copy.deepcopy(REFERENCE)
    node = out
    *parents, last = path.split(".")
    for p in parents:
        node = node[p]
    node[last] = value
    return out


def test_within_tolerance_passes() -> None:
    lines, failures = check_metrics(_with("trained.diffc.top1_pct", 84.4), REFERENCE)
    assert failures == [] and len(lines) == 6 and all(line.startswith("ok") for line in lines)
    assert check_metrics(_with("trained.sae.sigma_label", 1.46), REFERENCE)[1] == []


def test_each_metric_out_of_tolerance_is_named() -> None:
    (failure,) = check_metrics(_with("trained.diffc.top1_pct", 81.4), REFERENCE)[1]
    assert failure.startswith("trained.diffc.top1_pct = 81.4000") and "1.5 points" in failure
    (failure,) = check_metrics(_with("init.diffc.top1_pct", 79.0), REFERENCE)[1]
    assert failure.startswith("init.diffc.top1_pct = 79.0000")
    (failure,) = check_metrics(_with("trained.sae.sigma_label", 1.76), REFERENCE)[1]
    assert failure.startswith("trained.sae.sigma_label")
    # The backbone must have learnt: held-out ε-MSE below half the initialisation's.
    (failure,) = check_metrics(_with("model.heldout_eps_mse.t25.trained", 0.6), REFERENCE)[1]
    assert failure.startswith("model.heldout_eps_mse.t25.trained = 0.6000")


def test_missing_metrics_fail() -> None:
    current = copy.deepcopy(REFERENCE)
    del current["trained"]["diffc"]
    del current["model"]
    failures = check_metrics(current, REFERENCE)[1]
    assert "trained.diffc.top1_pct: missing from this run's metrics" in failures
    assert "model.heldout_eps_mse.t25: missing from this run's metrics" in failures
    # A hub backbone has no model section on either side: nothing to check there.
    hub = {k: v for k, v in REFERENCE.items() if k != "model"}
    assert check_metrics(hub, hub) == (check_metrics(hub, hub)[0], [])


def test_cli_exit_code_and_message(tmp_path: Path) -> None:
    ref, now = tmp_path / "ref.json", tmp_path / "now.json"
    ref.write_text(json.dumps(REFERENCE))
    now.write_text(json.dumps(_with("trained.diffc.top1_pct", 80.0)))
    runner = CliRunner()
    bad = runner.invoke(app, ["check-metrics", "--metrics", str(now), "--against", str(ref)])
    assert bad.exit_code == 1 and "error: trained.diffc.top1_pct = 80.0000" in bad.output
    now.write_text(json.dumps(REFERENCE))
    good = runner.invoke(app, ["check-metrics", "--metrics", str(now), "--against", str(ref)])
    assert good.exit_code == 0 and "within tolerance" in good.output


def test_committed_metrics_pass_against_themselves(repo_root: Path) -> None:
    committed = json.loads((repo_root / "reports/metrics.json").read_text())
    lines, failures = check_metrics(committed, committed)
    assert failures == [] and len(lines) == 6
