from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from pipeline.cli import app

runner = CliRunner()


def test_check_ok(repo_root: Path) -> None:
    result = runner.invoke(app, ["check", "--params", str(repo_root / "params.yaml")])
    assert result.exit_code == 0, result.output
    assert "model=fmnist-ddpm" in result.output


def test_check_reports_typo(tmp_path: Path, default_params_raw: dict) -> None:
    default_params_raw["lyer"] = "bottleneck"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(default_params_raw))
    result = runner.invoke(app, ["check", "-p", str(path)])
    assert result.exit_code == 2
    assert "did you mean 'layer'" in result.output


def test_params_fills_defaults(tmp_path: Path, default_params_raw: dict) -> None:
    del default_params_raw["sae"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(default_params_raw))
    result = runner.invoke(app, ["params", "-p", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["sae"]["k"] == 32


def test_models_lists_layers() -> None:
    result = runner.invoke(app, ["models", "--json"])
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert rows["sd15"]["layers"] == ["bottleneck", "up_ft0", "up_ft1", "up_ft2", "up_ft3"]
    assert rows["dit-xl-2-256"]["layers"][-1] == "block27"
