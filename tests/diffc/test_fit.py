"""The fit_diffc stage's work (pipeline.diffc.fit) on a small store where the classes are
separable in the feature maps: outputs, accuracy, seeds side by side, resume after SIGKILL,
and classify."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.config import parse_params
from pipeline.diffc.fit import _fit_seed, run_fit_diffc, seed_curve, seed_dir, seed_threads, validation_rows
from pipeline.diffc.model import load_diffc
from pipeline.errors import DataError, NonFiniteLoss, StoreError
from pipeline.features.store import open_store
from pipeline.paths import checkpoint_dir, classes_path
from tests.store_fixtures import write_feature_store

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["shirt", "trouser", "bag", "boot"]


def _raw(raw: dict, **diffc) -> dict:
    raw["diffc"].update({"width": 32, "dropout": 0.1, "batch_size": 16, "epochs": 3, "lr": 3e-3, "lr_min": 3e-4,
                         "device": "cpu", "dtype": "fp32", "seeds": [0], **diffc})
    return raw


def _separable_store(root: Path, params, n_train: int = 160, n_test: int = 40, c: int = 8) -> None:
    """Class j raises channel j's map by 2 (plus unit noise): linearly separable."""
    rng = np.random.default_rng(0)

    def split(n: int) -> dict[str, np.ndarray]:
        label = np.arange(n) % len(CLASSES)
        fmap = rng.normal(size=(n, c, 4, 4)).astype(np.float32)
        fmap[np.arange(n), label] += 2.0
        return {"pooled": fmap.mean(axis=(2, 3)), "fmap": fmap, "label": label}

    write_feature_store(
        params.key.features_store(root),
        {"train": split(n_train), "test": split(n_test)},
        shard_size=32,
    )
    path = classes_path(params.dataset, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(CLASSES) + "\n")


@pytest.fixture
def fitted(tmp_path, default_params_raw):
    params = parse_params(_raw(default_params_raw, seeds=[0, 1]))
    _separable_store(tmp_path, params)
    return tmp_path, params, run_fit_diffc(params, tmp_path, progress=False)


def test_outputs_and_accuracy(fitted):
    root, params, metrics = fitted
    out = params.key.diffc_dir(root)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "seed0", "seed1"]
    assert metrics["seeds"] == [0, 1] and len(metrics["test_top1"]) == 2
    assert metrics["top1_mean"] == pytest.approx(np.mean(metrics["test_top1"])) and metrics["top1_mean"] >= 0.9
    assert metrics["top1_std"] == pytest.approx(np.std(metrics["test_top1"], ddof=1))
    assert metrics["top5_mean"] == 1.0
    assert json.loads((out / "metrics.json").read_text()) == metrics
    models = []
    for seed in (0, 1):
        model, cfg, extra = load_diffc(seed_dir(out, seed))
        assert cfg.in_channels == 8 and cfg.num_classes == 4 and extra["classes"] == CLASSES
        assert extra["layer"] == params.key.layer and extra["t"] == params.t and extra["control"] == "trained"
        assert extra["seed"] == seed and extra["metrics"]["test_top1"] == metrics["test_top1"][seed]
        rows = list(csv.DictReader(seed_curve(params.key.diffc_curves(root), seed).open()))
        assert [r["epoch"] for r in rows] == ["1", "2", "3"]
        models.append(model.fc.weight)
    assert not torch.equal(*models)  # the seeds are different runs
    assert not checkpoint_dir(out).exists()


def test_best_epoch_on_a_validation_split_beside_the_last(fitted, tmp_path, default_params_raw):
    root, params, metrics = fitted
    assert params.diffc.val_fraction == 0.1  # params.yaml's embedded default
    best = metrics["best"]
    assert "never test" in best["chosen_on"] and len(best["epoch"]) == 2
    assert best["top1_mean"] == pytest.approx(np.mean(best["test_top1"]))
    for seed in (0, 1):
        rows = list(csv.DictReader(seed_curve(params.key.diffc_curves(root), seed).open()))
        chosen = rows[best["epoch"][seed] - 1]
        assert float(chosen["val_top1"]) == best["val_top1"][seed] == max(float(r["val_top1"]) for r in rows)
        assert float(chosen["test_top1"]) == best["test_top1"][seed]
        assert float(rows[-1]["test_top1"]) == metrics["test_top1"][seed]
    # 16 of 160 train maps held out: what the validation split is, 10% of each class.
    fit, val = validation_rows(open_store(params.key.features_store(root)), 0.1)
    assert (len(fit), len(val)) == (144, 16)

    # No validation split: the paper's recipe, no best block, the curve without val columns.
    plain = parse_params(_raw(default_params_raw, val_fraction=0.0))
    _separable_store(tmp_path / "plain", plain)
    assert "best" not in run_fit_diffc(plain, tmp_path / "plain", progress=False)
    rows = list(csv.DictReader(seed_curve(plain.key.diffc_curves(tmp_path / "plain"), 0).open()))
    assert "val_top1" not in rows[0]


def test_a_validation_split_that_leaves_nothing_is_refused(tmp_path, default_params_raw):
    params = parse_params(_raw(default_params_raw, val_fraction=0.01))
    _separable_store(tmp_path, params, n_train=4)  # one image per class: none can be held out
    with pytest.raises(DataError, match="val_fraction = 0.01 of 4 train images leaves 4 to train on and 0"):
        run_fit_diffc(params, tmp_path, progress=False)


def test_seeds_side_by_side_equal_each_seed_alone(fitted):
    # The fixture's two seeds trained in two worker processes; seed 1 trained here alone, in
    # this process, with the thread count the workers had, must give the very same weights.
    root, params, _ = fitted
    threads = seed_threads(torch.device("cpu"), 2)
    assert threads == max(1, torch.get_num_threads() // 2)
    before = torch.get_num_threads()
    try:
        split = validation_rows(open_store(params.key.features_store(root)), params.diffc.val_fraction)
        alone = _fit_seed(params, root, 1, threads, progress=False, split=split)
    finally:
        torch.set_num_threads(before)
    saved = load_diffc(seed_dir(params.key.diffc_dir(root), 1))[0].state_dict()
    for name, value in alone.model.state_dict().items():
        assert torch.equal(value, saved[name]), name


def test_a_failing_seed_stops_the_fit_with_its_error(tmp_path, default_params_raw):
    params = parse_params(_raw(default_params_raw, seeds=[0, 1], lr=1e30, lr_min=1e30))
    _separable_store(tmp_path, params)
    with pytest.raises(NonFiniteLoss, match="Diff-C"):
        run_fit_diffc(params, tmp_path, progress=False)
    assert not params.key.diffc_dir(tmp_path).exists()


def test_missing_fmap_is_a_clear_error(tmp_path, default_params_raw):
    params = parse_params(_raw(default_params_raw))
    write_feature_store(
        params.key.features_store(tmp_path),
        {"train": {"pooled": np.zeros((4, 3)), "label": np.arange(4)},
         "test": {"pooled": np.zeros((2, 3)), "label": np.arange(2)}},
    )
    with pytest.raises(StoreError, match="no train/fmap array"):
        run_fit_diffc(params, tmp_path, progress=False)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def test_killed_stage_resumes_to_identical_model(tmp_path, default_params_raw):
    # Two seeds: they train side by side in worker processes, which must die with the stage.
    raw = _raw(default_params_raw, epochs=6, width=32, seeds=[0, 1])
    params = parse_params(raw)
    ref, run = tmp_path / "ref", tmp_path / "run"
    for root in (ref, run):
        _separable_store(root, params, n_train=320)
        (root / "params.yaml").write_text(yaml.safe_dump(raw))
    # Both runs in a subprocess with one thread: oneDNN's reductions depend on the thread count.
    subprocess.run([sys.executable, "-m", "stages.fit_diffc"], cwd=ref, env=_env(), check=True, capture_output=True)

    out = params.key.diffc_dir(run)
    state = checkpoint_dir(out) / "seed0" / "state.pt"
    proc = subprocess.Popen([sys.executable, "-m", "stages.fit_diffc"], cwd=run, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if state.exists():  # one epoch done and checkpointed
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not out.exists()
    # No orphan worker goes on training: the checkpoints stop changing with the stage.
    snapshot = lambda: sorted((str(p), p.stat().st_mtime_ns) for p in checkpoint_dir(out).rglob("*"))
    time.sleep(1.0)
    first = snapshot()
    time.sleep(2.0)
    assert snapshot() == first
    done = torch.load(state, weights_only=True)["epoch"]
    assert 1 <= done < 6

    subprocess.run([sys.executable, "-m", "stages.fit_diffc"], cwd=run, env=_env(), check=True, capture_output=True)
    for seed in (0, 1):
        a = load_diffc(seed_dir(params.key.diffc_dir(ref), seed))[0].state_dict()
        b = load_diffc(seed_dir(out, seed))[0].state_dict()
        for name in a:
            assert torch.equal(a[name], b[name]), (seed, name)
        curve = lambda root: seed_curve(params.key.diffc_curves(root), seed).read_text()
        assert curve(ref) == curve(run)
