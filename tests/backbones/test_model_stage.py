"""`python -m stages.model`: build / train / resolve, then lock; offline failure is one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

from pipeline.backbones.synthetic import build_tiny_ddpm
from pipeline.config import parse_params
from stages import model as model_stage

REPO = Path(__file__).resolve().parents[2]


def _params(raw: dict, **changes: object) -> dict:
    raw = {**raw, **changes}
    raw["extract"] = {**raw["extract"], "device": "cpu"}
    return raw


def _run_stage(cwd: Path, params: dict, env: dict[str, str]) -> subprocess.CompletedProcess:
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))
    return subprocess.run(
        [sys.executable, "-m", "stages.model"],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_stage_builds_tiny_dit_and_locks_it(tmp_path: Path, default_params_raw: dict) -> None:
    proc = _run_stage(
        tmp_path, _params(default_params_raw, model="tiny-dit", layer="block2"), {"HF_HUB_OFFLINE": "1"}
    )
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "models" / "backbones" / "tiny-dit"
    lock = json.loads((out / "lock.json").read_text())
    assert lock["source"] == "local" and lock["snapshot"] == "models/backbones/tiny-dit"
    assert "transformer/diffusion_pytorch_model.safetensors" in lock["files"]
    # Rebuilding (in-process this time) gives the same bytes — fixed seed — hence the same
    # lock: DVC sees no change.
    params = parse_params(_params(default_params_raw, model="tiny-dit", layer="block2"))
    assert model_stage.run_model(params, root=tmp_path) == out / "lock.json"
    assert json.loads((out / "lock.json").read_text()) == lock


def test_stage_offline_without_weights_fails_with_one_message(
    tmp_path: Path, default_params_raw: dict
) -> None:
    params = _params(default_params_raw, model="ddpm-cifar10", layer="up_ft1", dataset="fashion_mnist")
    proc = _run_stage(
        tmp_path, params, {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-cache")}
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: weights for model ddpm-cifar10 not found")
    assert "'google/ddpm-cifar10-32'" in proc.stderr and "model_path" in proc.stderr
    assert str(tmp_path / "empty-cache") in proc.stderr


def test_stage_locks_a_model_path(
    tmp_path: Path, default_params_raw: dict, tiny_dirs: dict[str, Path]
) -> None:
    params = parse_params(
        _params(default_params_raw, model="tiny-sd", layer="up_ft1", model_path=str(tiny_dirs["tiny-sd"]))
    )
    lock_path = model_stage.run_model(params, root=tmp_path)
    lock = json.loads(lock_path.read_text())
    assert lock_path == tmp_path / "models" / "backbones" / "tiny-sd" / "lock.json"
    assert lock["source"] == "model_path" and lock["snapshot"] == str(tiny_dirs["tiny-sd"].resolve())
    # model_path wins: nothing was built next to the lock.
    assert sorted(p.name for p in lock_path.parent.iterdir()) == ["lock.json"]


def test_stage_trains_the_embedded_model(
    tmp_path: Path, default_params_raw: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedded branch calls pipeline.embedded.train.train_and_save(params, out_dir, reports_dir)
    (stood in for here by a builder of the same layout), then locks what it wrote."""
    calls: list[tuple] = []

    def train_and_save(params: object, out_dir: Path, reports_dir: Path) -> types.SimpleNamespace:
        calls.append((out_dir, reports_dir))
        build_tiny_ddpm(out_dir, in_channels=1, image_size=32)
        return types.SimpleNamespace(train_seconds=3.0, steps=2, wall_seconds=4.0, resumed_from=0)

    monkeypatch.setitem(
        sys.modules, "pipeline.embedded.train", types.SimpleNamespace(train_and_save=train_and_save)
    )
    params = parse_params(_params(default_params_raw))
    lock_path = model_stage.run_model(params, root=tmp_path)
    out = tmp_path / "models" / "backbones" / "fmnist-ddpm"
    assert calls == [(out, out)]  # reports beside the weights: the stage's only DVC output
    lock = json.loads(lock_path.read_text())
    assert lock["model"] == "fmnist-ddpm" and "unet/diffusion_pytorch_model.safetensors" in lock["files"]
    # The times go to the uncached report, not into the stage's output.
    timing = json.loads((tmp_path / "reports" / "timings.json").read_text())["model"]["fmnist-ddpm"]
    assert timing["seconds_per_step"] == 1.5 and timing["resumed_from"] == 0 and "cpu" in timing["machine"]
