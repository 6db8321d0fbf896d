"""The evaluate stage's work: reports/metrics.json from fitted k-SAE and Diff-C outputs."""

from __future__ import annotations

import json

import numpy as np
from safetensors.numpy import load_file

from pipeline.config import parse_params
from pipeline.diffc.fit import run_fit_diffc
from pipeline.paths import classes_path, metrics_path
from pipeline.report.evaluate import run_evaluate
from pipeline.report.metrics import purity_of_stats
from pipeline.sae.fit import run_fit_sae
from pipeline.sae.scan import LatentStats
from tests.store_fixtures import write_feature_store


def test_metrics_file(tmp_path, default_params_raw):
    raw = default_params_raw
    raw["sae"].update({"expansion": 4, "k": 3, "batch_size": 64, "num_samples": 640, "warmup_steps": 2,
                       "top_images": 5, "device": "cpu", "dtype": "fp32"})
    raw["diffc"].update({"width": 8, "epochs": 1, "device": "cpu", "dtype": "fp32"})
    raw["eval"].update({"top_images": 5, "min_fires": 4, "top_latents": 7})
    raw["render"]["top_images"] = 5
    params = parse_params(raw)
    rng = np.random.default_rng(0)

    def split(n):
        fmap = rng.normal(size=(n, 6, 2, 2)).astype(np.float32)
        return {"pooled": fmap.mean(axis=(2, 3)), "fmap": fmap, "label": np.arange(n) % 3}

    key = params.key
    write_feature_store(key.features_store(tmp_path), {"train": split(60), "test": split(20)})
    classes_path(params.dataset, tmp_path).parent.mkdir(parents=True)
    classes_path(params.dataset, tmp_path).write_text("a\nb\nc\n")
    run_fit_sae(params, tmp_path, progress=False)
    run_fit_diffc(params, tmp_path, progress=False)

    metrics = run_evaluate(params, tmp_path)
    assert json.loads(metrics_path(tmp_path).read_text()) == metrics
    assert 0 <= metrics["diffc"]["top1_pct"] <= metrics["diffc"]["top5_pct"] == 100.0  # 3 classes: top-5 = all
    assert "clip" not in metrics
    sae = metrics["sae"]
    codes = load_file(str(key.sae_dir(tmp_path) / "codes.safetensors"))
    expect = purity_of_stats(LatentStats.from_arrays(codes), codes["train_label"], top_latents=7, top_images=5,
                             min_fires=4)
    assert sae["sigma_label"] == expect.sigma_label and sae["latents"] == expect.num_latents <= 7
    assert sae["l0"] == 3 and 0 < sae["fvu"] and set(sae["code"]) == {"sigma_label", "majority", "entropy", "latents", "ranked"}
