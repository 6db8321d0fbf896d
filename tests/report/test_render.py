"""The render stage's work (pipeline.report.render) on a tiny fitted k-SAE, feature stores and data
folder: the files it writes, their sizes, and its errors."""

from __future__ import annotations

import copy
import csv
import re

import numpy as np
import pytest
import yaml
from PIL import Image
from safetensors.numpy import load_file

from pipeline.config import parse_params
from pipeline.errors import ConfigError, StoreError
from pipeline.paths import classes_path, data_dir, manifest_path, reports_dir
from pipeline.report.render import run_render
from pipeline.sae.fit import run_fit_sae
from stages.render import main as stage_main
from tests.store_fixtures import write_feature_store

CLASSES = ["T-shirt/top", "Trouser", "Ankle boot"]
N_TRAIN, N_TEST = 60, 21


def _params(raw: dict, **render) -> dict:
    """A copy of raw with a tiny k-SAE and the given render parameters."""
    raw = copy.deepcopy(raw)
    raw["render"] = {**raw["render"], "select": "purity", "latent_ids": [], "pca_layers": []}
    raw["sae"].update(
        {
            "expansion": 4,
            "k": 3,
            "batch_size": 64,
            "num_samples": 640,
            "warmup_steps": 2,
            "top_images": 5,
            "device": "cpu",
            "dtype": "fp32",
        }
    )
    raw["eval"].update({"top_images": 5, "min_fires": 4})
    raw["render"].update({"top_images": 5, "num_latents": 4, "thumb_size": 16, **render})
    return raw


def _data(root, dataset):
    """data/<dataset>/: classes, manifest (train rows then test rows) and distinct images."""
    folder = data_dir(dataset, root)
    classes_path(dataset, root).parent.mkdir(parents=True, exist_ok=True)
    classes_path(dataset, root).write_text("\n".join(CLASSES) + "\n")
    with open(manifest_path(dataset, root), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "path", "label", "class_name", "split"])
        for row in range(N_TRAIN + N_TEST):
            split = "train" if row < N_TRAIN else "test"
            label = row % 3
            rel = f"images/{split}/c{label}/{row}.png"
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            arr = np.zeros((14, 12, 3), np.uint8)
            arr[:] = ((37 * row) % 256, (91 * row) % 256, 80 * label)
            arr[3:11, 3:9] = 255 - arr[3:11, 3:9]
            Image.fromarray(arr).save(folder / rel)
            writer.writerow([f"{split}_{row}", rel, label, CLASSES[label], split])


def _store(root, params, layer, shape, seed):
    rng = np.random.default_rng(seed)

    def split(rows):
        labels = rows % 3
        fmap = rng.normal(size=(len(rows), *shape)) + labels[:, None, None, None] * 0.8
        return {"pooled": fmap.mean(axis=(2, 3)), "fmap": fmap, "label": labels, "index": rows}

    write_feature_store(
        params.key.with_layer(layer).features_store(root),
        {"train": split(np.arange(N_TRAIN)), "test": split(np.arange(N_TRAIN, N_TRAIN + N_TEST))},
        shard_size=32,
    )


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A root with data, stores of two layers and the current key's fitted k-SAE."""
    from tests.conftest import REPO

    raw = _params(yaml.safe_load((REPO / "params.yaml").read_text()))
    root = tmp_path_factory.mktemp("root")
    params = parse_params(raw)
    _data(root, params.dataset)
    _store(root, params, params.layer, (6, 2, 2), 0)
    _store(root, params, "up_ft0", (4, 4, 4), 1)
    run_fit_sae(params, root, progress=False)
    return root, raw


def _png(path, min_side=200):
    assert path.is_file() and path.stat().st_size > 5_000
    with Image.open(path) as im:
        assert im.format == "PNG" and min(im.size) >= min_side
        return im.size


def test_render_writes_figures_and_browser(tree):
    root, raw = tree
    params = parse_params(_params(raw, select="purity", pca_layers=["up_ft0"]))
    written = run_render(params, root)
    figures = reports_dir(root) / "figures"
    assert written == [
        figures / "latents_purity.png",
        figures / f"pca_{params.layer}_t{params.t}.png",
        reports_dir(root) / "latents" / "index.html",
    ]
    _png(written[0], 400)
    w, _ = _png(written[1], 500)
    assert w >= 550  # image + two layer columns
    page = written[2].read_text()
    codes_rows = set()
    codes = load_file(
        str(params.key.sae_dir(root) / "codes.safetensors")
    )
    firing = np.flatnonzero(codes["train_fire_count"] > 0)
    ids = [int(i) for i in re.search(r'"id":\[([\d,]*)\]', page).group(1).split(",")]
    assert ids == firing.tolist()
    for j in firing:
        rows = codes["dense_top_row"][j, :5]
        codes_rows |= set(codes["train_index"][rows[rows >= 0]].tolist())
    thumbs = sorted(int(p.stem) for p in (written[2].parent / "thumbs").iterdir())
    assert thumbs == sorted(codes_rows)  # one thumbnail per distinct image shown, named by manifest row
    with Image.open(written[2].parent / "thumbs" / f"{thumbs[0]}.png") as im:
        assert im.size == (16, 16)


@pytest.mark.parametrize("select, ids", [("rank", []), ("ids", [3, 0])])
def test_render_other_selections(tree, select, ids):
    root, raw = tree
    params = parse_params(_params(raw, select=select, latent_ids=ids))
    written = run_render(params, root)
    assert written[0].name == f"latents_{select}.png"
    _png(written[0], 200)


def test_render_errors(tree, tmp_path):
    root, raw = tree
    params = parse_params(_params(raw, select="ids", latent_ids=[1, 99]))
    with pytest.raises(ValueError, match=r"\[99\] out of range"):
        run_render(params, root)
    params = parse_params(_params(raw, pca_layers=["up_ft1"]))
    store = params.key.with_layer("up_ft1").features_store(root)
    with pytest.raises(StoreError, match=re.escape(str(store)) + r".*dvc exp run -S layer=up_ft1"):
        run_render(params, root)
    params = parse_params(_params(raw, pca_layers=["mid"]))
    with pytest.raises(ConfigError, match="render.pca_layers \\['mid'\\].*valid: bottleneck, up_ft0"):
        run_render(params, root)
    params = parse_params(_params(raw))
    with pytest.raises(FileNotFoundError, match="codes.safetensors not found: run the fit_sae stage"):
        run_render(params, tmp_path)


def test_stage_entry(tree, monkeypatch, capsys):
    root, raw = tree
    (root / "params.yaml").write_text(yaml.safe_dump(_params(raw, select="rank")))
    monkeypatch.chdir(root)
    assert stage_main([]) == 0
    out = capsys.readouterr().out
    assert "latents_rank.png" in out and "index.html" in out
    (root / "bad.yaml").write_text(yaml.safe_dump(_params(raw, pca_layers=["up_ft2"])))
    assert stage_main(["--params", "bad.yaml"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "dvc exp run -S layer=up_ft2" in err and "\n" not in err
