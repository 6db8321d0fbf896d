"""The evaluate stage's work: reports/metrics.json from fitted k-SAE and Diff-C outputs of every
row of the study (trained, init, input), with the linear probe beside them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pipeline.config import parse_params
from pipeline.diffc.fit import run_fit_diffc
from pipeline.paths import CONTROLS, classes_path, metrics_path
from pipeline.report.evaluate import run_evaluate
from pipeline.report.metrics import purity_of_stats
from pipeline.sae.fit import run_fit_sae
from pipeline.sae.scan import LatentStats
from tests.store_fixtures import write_feature_store


def test_metrics_file(tmp_path, default_params_raw):
    raw = default_params_raw
    raw["sae"].update({"expansion": 4, "k": 3, "batch_size": 64, "num_samples": 640, "warmup_steps": 2,
                       "top_images": 5, "device": "cpu", "dtype": "fp32"})
    raw["diffc"].update({"width": 8, "epochs": 1, "seeds": [0, 1], "device": "cpu", "dtype": "fp32"})
    raw["eval"].update({"top_images": 5, "min_fires": 4, "top_latents": 7, "probe_c": 0.5})
    raw["render"]["top_images"] = 5
    params = parse_params(raw)
    rng = np.random.default_rng(0)
    # The input row has one channel (a grayscale x_t): its probe reads the flattened map.
    channels = {"trained": 6, "init": 6, "input": 1}

    def split(n, c):
        fmap = rng.normal(size=(n, c, 2, 2)).astype(np.float32)
        return {"pooled": fmap.mean(axis=(2, 3)), "fmap": fmap, "label": np.arange(n) % 3}

    classes_path(params.dataset, tmp_path).parent.mkdir(parents=True)
    classes_path(params.dataset, tmp_path).write_text("a\nb\nc\n")
    stores = {}
    for control in CONTROLS:
        row = params.for_control(control)
        stores[control] = {"train": split(60, channels[control]), "test": split(20, channels[control])}
        write_feature_store(row.key.features_store(tmp_path), stores[control])
        run_fit_sae(row, tmp_path, progress=False)
        run_fit_diffc(row, tmp_path, progress=False)

    metrics = run_evaluate(params, tmp_path)
    assert json.loads(metrics_path(tmp_path).read_text()) == metrics
    assert set(metrics) == set(CONTROLS)  # no `model` block: this backbone was not trained here
    for control in CONTROLS:
        row, data = metrics[control], stores[control]
        diffc = json.loads((params.for_control(control).key.diffc_dir(tmp_path) / "metrics.json").read_text())
        assert row["diffc"]["top1_pct"] == pytest.approx(100 * np.mean(diffc["test_top1"]))
        assert row["diffc"]["top1_std"] == pytest.approx(100 * np.std(diffc["test_top1"], ddof=1))
        assert row["diffc"]["seeds"] == 2 and row["diffc"]["top5_pct"] == 100.0  # 3 classes: top-5 = all
        assert "clip" not in row
        # The probe: logistic regression at the stated C on pooled vectors, flattened maps for input.
        x = {s: data[s]["fmap"].reshape(len(data[s]["fmap"]), -1) if control == "input" else data[s]["pooled"]
             for s in ("train", "test")}
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=2000))
        probe.fit(x["train"], data["train"]["label"])
        expect = 100 * float((probe.predict(x["test"]) == data["test"]["label"]).mean())
        assert row["probe"] == {"top1_pct": pytest.approx(expect), "dim": x["train"].shape[1]}

    sae = metrics["trained"]["sae"]
    key = params.key
    codes = load_file(str(key.sae_dir(tmp_path) / "codes.safetensors"))
    expect = purity_of_stats(LatentStats.from_arrays(codes), codes["train_label"], top_latents=7, top_images=5,
                             min_fires=4)
    assert sae["sigma_label"] == expect.sigma_label and sae["latents"] == expect.num_latents <= 7
    assert sae["l0"] == 3 and 0 < sae["fvu"] and set(sae["code"]) == {"sigma_label", "majority", "entropy", "latents", "ranked"}
