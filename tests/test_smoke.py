"""End to end: `dvc repro` of the whole pipeline in a temporary copy of the repository.

Tiny on purpose (digits, a few images per class, a few training steps of a tiny embedded
model) so it runs in every CI run; each stage added to dvc.yaml extends the checks here.
"""

from __future__ import annotations

import csv
import difflib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.features.store import open_store

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")

SMOKE_PARAMS = {
    "dataset": "digits",
    "model": "fmnist-ddpm",
    "layer": "up_ft0",
    "t": 25,
    "data": {"max_per_class": {"train": 5, "test": 2}, "image_size": 16},
    "model_train": {
        "channels": [8, 16],
        "norm_groups": 4,
        "image_size": 16,
        "steps": 6,
        "batch_size": 16,
        "warmup_steps": 2,
        "eval_images": 32,
        "num_samples": 4,
        "sample_steps": 2,
        "log_every": 2,
    },
    # Every dtype stays `auto`, as users run it (bf16 on CPUs with bf16 units, CI's included).
    "extract": {"batch_size": 8, "shard_size": 16},
    "sae": {"expansion": 4, "k": 4, "batch_size": 32, "num_samples": 320, "warmup_steps": 2, "top_images": 5},
    "diffc": {"width": 8, "epochs": 2, "batch_size": 16, "seeds": [0, 1]},
    "eval": {"top_images": 5},
    "render": {"top_images": 5},
}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def _copy_repo(src: Path, dst: Path) -> None:
    """The files git would check out (tracked, plus new ones not ignored): a clean clone."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=src, capture_output=True, check=True
    ).stdout.decode().split("\0")
    for rel in filter(None, files):
        if (src / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, dst / rel)
    subprocess.run(["git", "init", "-q"], cwd=dst, check=True)


def _dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # Stage commands run `python`: make it this interpreter (the venv's).
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(repo)
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True)
    if check and proc.returncode:
        raise AssertionError(f"dvc {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def smoke_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not FASHION.exists():
        pytest.skip(f"{FASHION} missing: `make test` installs Debian's dataset-fashion-mnist")
    repo = tmp_path_factory.mktemp("smoke") / "repo"
    _copy_repo(Path(__file__).resolve().parents[1], repo)
    params = _merge(yaml.safe_load((repo / "params.yaml").read_text()), SMOKE_PARAMS)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _dvc(repo, "repro")
    return repo


def test_data_stage_outputs(smoke_repo: Path) -> None:
    rows = list(csv.DictReader((smoke_repo / "data/digits/manifest.csv").open()))
    assert len(rows) == 10 * 5 + 10 * 2
    assert {r["split"] for r in rows} == {"train", "test"}
    assert all((smoke_repo / "data/digits" / r["path"]).is_file() for r in rows)
    assert (smoke_repo / "data/digits/classes.txt").read_text().split() == [str(i) for i in range(10)]


def test_model_stage_outputs(smoke_repo: Path) -> None:
    out = smoke_repo / "models/backbones/fmnist-ddpm"
    assert (out / "unet/config.json").is_file() and (out / "scheduler/scheduler_config.json").is_file()
    lock = json.loads((out / "lock.json").read_text())
    assert len(lock["weights_sha256"]) == 64
    curve = list(csv.DictReader((out / "model_train.csv").open()))
    assert curve and float(curve[-1]["loss"]) > 0
    assert (out / "figures/model_samples.png").stat().st_size > 100


ROWS = {"trained": "trained/up_ft0", "init": "init/up_ft0", "input": "input/input"}


def test_encode_and_extract_outputs(smoke_repo: Path) -> None:
    latents = open_store(smoke_repo / "features/digits/fmnist-ddpm/latents.zarr")
    assert latents.array("train", "latents").shape == (50, 1, 16, 16)
    pooled = {}
    for control, row in ROWS.items():
        feats = open_store(smoke_repo / f"features/digits/fmnist-ddpm/{row}/t25.zarr")
        prov = feats.provenance
        assert prov["control"] == control and prov["layer"] == row.split("/")[1] and prov["t"] == 25
        assert ("init_seed" in prov) == (control == "init")
        pooled[control] = feats.read("train", "pooled")
        fmap = feats.read("test", "fmap")
        assert pooled[control].shape[0] == 50 and np.isfinite(pooled[control]).all() and pooled[control].std() > 0
        assert fmap.dtype == np.float16 and fmap.shape[0] == 20
        np.testing.assert_array_equal(feats.read("train", "label"), latents.read("train", "label"))
    # The same layer of the same architecture, other weights; the input row is x_t itself.
    assert pooled["init"].shape == pooled["trained"].shape and not np.array_equal(pooled["init"], pooled["trained"])
    x_t = open_store(smoke_repo / "features/digits/fmnist-ddpm/input/input/t25.zarr").read("train", "fmap")
    assert x_t.shape == (50, 1, 16, 16) and pooled["input"].shape == (50, 1)
    # The stages' stores open in xarray with named axes (tests/features/test_store.py compares values).
    import xarray as xr

    features = smoke_repo / "features/digits/fmnist-ddpm"
    ds = xr.open_zarr(features / "trained/up_ft0/t25.zarr", group="test", consolidated=False)
    assert ds["fmap"].dims == ("sample", "channel", "y", "x") and ds.sizes["sample"] == 20
    ds = xr.open_zarr(features / "latents.zarr", group="train", consolidated=False)
    assert ds["latents"].dims == ("sample", "channel", "y", "x")


@pytest.mark.parametrize("row", ROWS.values())
def test_fit_sae_outputs(smoke_repo: Path, row: str) -> None:
    out = smoke_repo / f"models/sae/digits/fmnist-ddpm/{row}/t25"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["k"] == 4 and metrics["steps"] == 10
    assert metrics["train"]["l0"] == 4 and metrics["test"]["l0"] == 4
    # The input row's vector is one number per image (d = 1 < k): a degenerate dictionary
    # (README, "What does diffusion training add?"); its FVU is only required to be finite.
    assert 0 <= metrics["train"]["fvu"] < (float("inf") if row.startswith("input") else 1.5)
    assert (out / "sae.safetensors").is_file() and (out / "codes.safetensors").is_file()
    curve = list(csv.DictReader((smoke_repo / f"reports/sae/digits/fmnist-ddpm/{row}/t25.csv").open()))
    assert len(curve) == 10 and curve[-1]["samples"] == "320"


@pytest.mark.parametrize("row", ROWS.values())
def test_fit_diffc_outputs(smoke_repo: Path, row: str) -> None:
    out = smoke_repo / f"models/diffc/digits/fmnist-ddpm/{row}/t25"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["seeds"] == [0, 1] and metrics["epochs"] == 2
    assert 0 <= metrics["top1_mean"] <= metrics["top5_mean"] <= 1 and metrics["top1_std"] >= 0
    # params.yaml's diffc.val_fraction holds out part of train: the best epoch on it, per seed.
    best = metrics["best"]
    assert set(best["epoch"]) <= {1, 2} and len(best["test_top1"]) == 2 and "never test" in best["chosen_on"]
    for seed in (0, 1):
        config = json.loads((out / f"seed{seed}/config.json").read_text())
        assert config["num_classes"] == 10 and config["extra"]["classes"] == [str(i) for i in range(10)]
        assert config["extra"]["seed"] == seed and config["extra"]["control"] == row.split("/")[0]
        curve = smoke_repo / f"reports/diffc/digits/fmnist-ddpm/{row}/t25/seed{seed}.csv"
        rows = list(csv.DictReader(curve.open()))
        assert [r["epoch"] for r in rows] == ["1", "2"]
        chosen = rows[best["epoch"][seed] - 1]
        assert float(chosen["val_top1"]) == max(float(r["val_top1"]) for r in rows)
        assert float(chosen["test_top1"]) == best["test_top1"][seed]


def test_classify_cli(smoke_repo: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(smoke_repo))
    image = sorted((smoke_repo / "data/digits").rglob("*.png"))[0]
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "classify", str(image), "--json", "-k", "3"],
        cwd=smoke_repo, env=env, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    (pred,) = json.loads(proc.stdout)
    assert len(pred["classes"]) == 3 and set(pred["classes"]) <= {str(i) for i in range(10)}
    assert abs(sum(pred["probs"])) <= 1 + 1e-6 and pred["probs"] == sorted(pred["probs"], reverse=True)


def test_evaluate_metrics(smoke_repo: Path) -> None:
    metrics = json.loads((smoke_repo / "reports/metrics.json").read_text())
    for control in ROWS:  # the three rows, the four measures each
        row = metrics[control]
        assert 0 <= row["diffc"]["top1_pct"] <= 100 and row["diffc"]["seeds"] == 2
        assert 0 <= row["diffc"]["best"]["top1_pct"] <= 100 and len(row["diffc"]["best"]["epoch"]) == 2
        assert 0 <= row["probe"]["top1_pct"] <= 100
        assert row["sae"]["sigma_label"] >= 0 and 0 < row["sae"]["majority"] <= 1
    assert metrics["input"]["probe"]["dim"] == 16 * 16  # the flattened grayscale x_t
    sae = metrics["trained"]["sae"]
    assert sae["l0"] == 4 and sae["latents"] <= 1000 and set(sae["code"]) >= {"sigma_label", "majority"}
    heldout = metrics["model"]["heldout_eps_mse"]["t25"]
    assert 0 < heldout["trained"] and 0 < heldout["init"]
    shown = json.loads(_dvc(smoke_repo, "metrics", "show", "--json").stdout)
    assert "reports/metrics.json" in json.dumps(shown)


def test_render_outputs(smoke_repo: Path) -> None:
    figures = smoke_repo / "reports/figures"
    assert (figures / "latents_purity.png").stat().st_size > 5_000
    assert (figures / "pca_up_ft0_t25.png").stat().st_size > 5_000
    page = smoke_repo / "reports/latents/index.html"
    assert page.stat().st_size > 1_000 and any((smoke_repo / "reports/latents/thumbs").iterdir())


def _ran(proc: subprocess.CompletedProcess) -> set[str]:
    return {line.split("'")[1] for line in proc.stdout.splitlines() if line.startswith("Running stage")}


def test_sae_param_reruns_fit_sae_and_evaluate(smoke_repo: Path) -> None:
    params = yaml.safe_load((smoke_repo / "params.yaml").read_text())
    params["sae"]["k"] = 2
    (smoke_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        proc = _dvc(smoke_repo, "repro")
        assert _ran(proc) == {"fit_sae@trained", "fit_sae@init", "fit_sae@input", "evaluate", "render"}, proc.stdout
        metrics = json.loads((smoke_repo / "models/sae/digits/fmnist-ddpm/trained/up_ft0/t25/metrics.json").read_text())
        assert metrics["k"] == 2
    finally:
        params["sae"]["k"] = 4
        (smoke_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        _dvc(smoke_repo, "repro")


def test_second_repro_runs_nothing(smoke_repo: Path) -> None:
    proc = _dvc(smoke_repo, "repro")
    assert "Running stage" not in proc.stdout, proc.stdout
    assert "up to date" in proc.stdout.lower()


@pytest.mark.slow
def test_forced_rerun_reproduces_every_output_byte_for_byte(smoke_repo: Path) -> None:
    """Same params and seed, `dtype: auto` everywhere: rerunning all fourteen stages (eight
    kinds, three rows) gives the same dvc.lock (every output's hash) and metrics; only the
    uncached timings change."""
    lock, metrics = (smoke_repo / "dvc.lock").read_text(), (smoke_repo / "reports/metrics.json").read_bytes()
    timings = json.loads((smoke_repo / "reports/timings.json").read_text())
    assert set(timings) == {"data", "model", "encode", "extract", "fit_sae", "fit_diffc", "evaluate", "render"}
    assert timings["fit_diffc"]["digits/fmnist-ddpm/init/up_ft0/t25"]["train_samples_per_s"] > 0
    assert set(timings["extract"]) == {f"digits/fmnist-ddpm/{row}/t25" for row in ROWS.values()}
    proc = _dvc(smoke_repo, "repro", "--force")
    assert len(_ran(proc)) == 14, proc.stdout
    assert (smoke_repo / "reports/metrics.json").read_bytes() == metrics
    again = (smoke_repo / "dvc.lock").read_text()
    assert again == lock, "".join(difflib.unified_diff(lock.splitlines(True), again.splitlines(True), n=1))
    rerun = json.loads((smoke_repo / "reports/timings.json").read_text())
    assert rerun["model"]["fmnist-ddpm"]["finished"] >= timings["model"]["fmnist-ddpm"]["finished"]


def test_new_layer_reruns_extract_and_downstream(smoke_repo: Path) -> None:
    params = yaml.safe_load((smoke_repo / "params.yaml").read_text())
    params["layer"] = "bottleneck"
    (smoke_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        proc = _dvc(smoke_repo, "repro")
        # The trained and init taps follow the layer; the input row (x_t) does not.
        rows = {f"{stage}@{c}" for stage in ("extract", "fit_sae", "fit_diffc") for c in ("trained", "init")}
        assert _ran(proc) == rows | {"evaluate", "render"}, proc.stdout
        for control in ("trained", "init"):
            assert (smoke_repo / f"features/digits/fmnist-ddpm/{control}/bottleneck/t25.zarr/zarr.json").is_file()
        # Back to the first key: DVC's run cache restores it, the init control's outputs too,
        # without running anything.
        params["layer"] = "up_ft0"
        (smoke_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        proc = _dvc(smoke_repo, "repro")
        assert "Running stage" not in proc.stdout, proc.stdout
        for control in ("trained", "init"):
            assert open_store(smoke_repo / f"features/digits/fmnist-ddpm/{control}/up_ft0/t25.zarr").complete
            assert (smoke_repo / f"models/diffc/digits/fmnist-ddpm/{control}/up_ft0/t25/seed1/model.safetensors").is_file()
    finally:
        params["layer"] = "up_ft0"
        (smoke_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_misspelt_key_fails_with_one_line(smoke_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "typo"
    # The outputs at the top only: pipeline/data and pipeline/features are code.
    top = {"data", "models", "features", ".dvc"}
    shutil.copytree(smoke_repo, repo, ignore=lambda d, names: top & set(names) if Path(d) == smoke_repo else set())
    shutil.copytree(smoke_repo / ".dvc", repo / ".dvc", ignore=shutil.ignore_patterns("cache", "tmp"))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["max_per_clas"] = params["data"].pop("max_per_class")
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = _dvc(repo, "repro", "data", check=False)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if "max_per_clas" in ln]
    assert lines and "did you mean 'data.max_per_class'" in lines[0], proc.stderr
