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


def _tiny_store(features: Path) -> None:
    import numpy as np

    from pipeline.features.store import ArraySpec, open_or_create_staging, publish

    final = features / "digits" / "tiny-sd" / "up_ft1" / "t25.zarr"
    prov = {"kind": "features", "dataset": "digits", "layer": "up_ft1", "t": 25}
    arrays = [
        ArraySpec("pooled", (4,), "float32", compress=True),
        ArraySpec("label", (), "int64", compress=True),
        ArraySpec("index", (), "int64", compress=True),
        ArraySpec("view", (), "int16", compress=True),
    ]
    store = open_or_create_staging(final, prov, {"train": 3}, arrays, 2, features / ".staging")
    for j, (a, b) in enumerate(store.shards("train")):
        store.write_shard(
            "train",
            j,
            {
                "pooled": np.arange(a * 4, b * 4, dtype=np.float32).reshape(-1, 4),
                "label": np.arange(a, b),
                "index": np.arange(a, b),
                "view": np.zeros(b - a, np.int16),
            },
        )
    publish(store, final)


def test_features_ls_info_show(tmp_path: Path) -> None:
    features = tmp_path / "features"
    _tiny_store(features)
    ls = runner.invoke(app, ["features", "ls", "--root", str(features), "--json"])
    assert ls.exit_code == 0, ls.output
    (row,) = json.loads(ls.output)
    assert row["key"] == "digits/tiny-sd/up_ft1/t25" and row["complete"]
    assert row["arrays"]["train"]["pooled"] == [3, 4]
    info = runner.invoke(app, ["features", "info", "digits/tiny-sd/up_ft1/t25", "--root", str(features), "--json"])
    data = json.loads(info.output)
    assert data["arrays"]["train/pooled"]["shards"] == [2, 4] and data["provenance"]["t"] == 25
    show = runner.invoke(app, ["features", "show", "digits/tiny-sd/up_ft1/t25", "-i", "2", "--root", str(features), "--json"])
    sample = json.loads(show.output)
    assert sample["pooled"]["max"] == 11.0 and sample["manifest_row"] == 2
    text = runner.invoke(app, ["features", "ls", "--root", str(features)])
    assert "complete" in text.output


def test_features_unknown_key_lists_known(tmp_path: Path) -> None:
    features = tmp_path / "features"
    _tiny_store(features)
    result = runner.invoke(app, ["features", "info", "digits/nope", "--root", str(features)])
    assert result.exit_code == 1 and "digits/tiny-sd/up_ft1/t25" in result.output
    result = runner.invoke(app, ["features", "show", "digits/tiny-sd/up_ft1/t25", "-i", "9", "--root", str(features)])
    assert result.exit_code == 1 and "out of range" in result.output


def test_compare_skips_a_workspace_whose_metrics_are_another_keys(tmp_path: Path) -> None:
    """While `dvc exp run -S layer=up_ft0` runs, the workspace row pairs up_ft0's params with
    the previous run's metrics: `compare` must not file them under up_ft0 (it did, in a sweep)."""
    from pipeline.cli import _drop_stale_workspace
    from pipeline.paths import Key

    def row(rev: str, layer: str) -> dict:
        return {"rev": rev, "dataset": "fashion_mnist", "model": "fmnist-ddpm", "layer": layer, "t": 25.0,
                "trained.diffc.top1_pct": 85.0}

    def lock(layer: str) -> Path:
        dep = Key("fashion_mnist", "fmnist-ddpm", layer, 25).diffc_dir().as_posix()
        path = tmp_path / f"{layer}.lock"
        path.write_text(yaml.safe_dump({"stages": {"evaluate": {"deps": [{"path": dep, "md5": "x"}]}}}))
        return path

    rows = [row("exp-bottleneck", "bottleneck"), row("workspace", "up_ft0")]
    assert _drop_stale_workspace(rows, lock("bottleneck")) == rows[:1]
    assert _drop_stale_workspace(rows, lock("up_ft0")) == rows
    assert _drop_stale_workspace(rows, tmp_path / "missing.lock") == rows
