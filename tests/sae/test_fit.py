"""The fit_sae stage's work (pipeline.sae.fit) on a small store: files, metrics, codes."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from pipeline.config import parse_params
from pipeline.errors import StoreError
from pipeline.paths import checkpoint_dir
from pipeline.sae.fit import run_fit_sae
from pipeline.sae.model import load_sae
from pipeline.sae.scan import LatentStats
from tests.store_fixtures import write_feature_store


def _params(raw: dict, **sae):
    raw["sae"].update(
        {"expansion": 4, "k": 3, "batch_size": 64, "num_samples": 64 * 15, "warmup_steps": 2, "top_images": 5,
         "device": "cpu", "dtype": "fp32", **sae}
    )
    raw["eval"]["top_images"] = 5
    raw["render"]["top_images"] = 5
    return parse_params(raw)


def _store(root, params, n_train=90, n_test=30, d=8):
    rng = np.random.default_rng(0)
    views = np.tile([0, 1, 2], n_train // 3)  # 30 images x 3 views
    path = params.key.features_store(root)
    write_feature_store(
        path,
        {
            "train": {"pooled": rng.normal(size=(n_train, d)), "label": np.arange(n_train) % 4,
                      "index": np.repeat(np.arange(n_train // 3), 3), "view": views},
            "test": {"pooled": rng.normal(size=(n_test, d)), "label": np.arange(n_test) % 4},
        },
        shard_size=32,
    )


@pytest.fixture
def fitted(tmp_path, default_params_raw):
    params = _params(default_params_raw)
    _store(tmp_path, params)
    metrics = run_fit_sae(params, tmp_path, progress=False)
    return tmp_path, params, metrics


def test_outputs(fitted):
    root, params, metrics = fitted
    out = params.key.sae_dir(root)
    assert sorted(p.name for p in out.iterdir()) == ["codes.safetensors", "config.json", "metrics.json", "sae.safetensors"]
    model, config = load_sae(out)
    assert model.num_latents == 32 and config["layer"] == params.layer and config["training"]["k"] == 3
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert not checkpoint_dir(out).exists()  # removed once the outputs are in place
    with open(params.key.sae_curve(root)) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 15 and rows[-1]["samples"] == str(64 * 15)
    assert set(rows[0]) == {"step", "samples", "loss", "fvu", "auxk_loss", "dead_pct", "lr"}


def test_metrics(fitted):
    _, _, m = fitted
    assert m["k"] == 3 and m["steps"] == 15 and m["samples_seen"] == 960
    for split in ("train", "test"):
        assert m[split]["l0"] == 3  # L0 of the TopK codes is k
        assert 0 < m[split]["fvu"] < 1.5
        assert 0 <= m[split]["dead_pct"] <= 100
    assert m["train"]["num_samples"] == 90 and m["test"]["num_samples"] == 30
    assert 0 <= m["train"]["never_fired_pct"] <= m["train"]["dead_pct"]


def test_codes_cover_each_image_once(fitted):
    root, params, _ = fitted
    codes = load_file(str(params.key.sae_dir(root) / "codes.safetensors"))
    stats = LatentStats.from_arrays(codes)
    assert stats.dense_top_row.shape == (32, 5)
    listed = stats.dense_top_row[stats.dense_top_row >= 0]
    assert (codes["train_view"][listed] == 0).all()  # view 0 only: each image once
    assert stats.code_count.sum() == 30 * 3  # 30 images x k
    assert codes["train_fire_count"].sum() == 90 * 3 and codes["test_fire_count"].sum() == 30 * 3


def test_same_params_same_outputs(fitted, tmp_path_factory, default_params_raw):
    root, params, _ = fitted
    other = tmp_path_factory.mktemp("again")
    _store(other, params)
    run_fit_sae(params, other, progress=False)
    name = "sae.safetensors"
    a = (params.key.sae_dir(root) / name).read_bytes()
    b = (params.key.sae_dir(other) / name).read_bytes()
    assert a == b


def test_missing_store_is_a_clear_error(tmp_path, default_params_raw):
    params = _params(default_params_raw)
    with pytest.raises(StoreError, match="no feature store here"):
        run_fit_sae(params, tmp_path, progress=False)


def test_top_images_must_fit_what_fit_sae_keeps(default_params_raw):
    default_params_raw["sae"]["top_images"] = 4
    default_params_raw["eval"]["top_images"] = 10
    with pytest.raises(ValueError, match="eval.top_images = 10 exceeds sae.top_images = 4"):
        parse_params(default_params_raw)
