"""pipeline.report.figures: latent selection, the latent grid, PCA maps and curves on tiny inputs;
pipeline.report.metrics.latent_purity against the per-latent reference."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import StoreError
from pipeline.report.compare import Record, tables
from pipeline.report.figures import PcaLayer, fit_pca, latent_grid, pca_maps, plot_curves, select_latents
from pipeline.report.metrics import latent_purity, rank_latents
from pipeline.sae.scan import LatentStats
from tests.store_fixtures import write_feature_store

CLASSES = ["T-shirt/top", "Trouser", "Ankle boot"]

def _per_latent(labels: np.ndarray) -> tuple[float, float, float]:
    """Reference: (unbiased std of class ids, majority fraction, entropy in bits) of one latent's images."""
    if len(labels) == 0:
        return float("nan"), float("nan"), float("nan")
    sigma = float(np.std(labels, ddof=1)) if len(labels) > 1 else 0.0
    counts = np.unique(labels, return_counts=True)[1]
    p = counts / counts.sum()
    return sigma, float(counts.max() / len(labels)), float(-(p * np.log2(p)).sum() + 0.0)



def _image(i: int) -> Image.Image:
    """A distinct, non-square image per index."""
    arr = np.zeros((12, 16, 3), np.uint8)
    arr[:] = ((37 * i + 11) % 256, (91 * i + 53) % 256, (17 * i + 201) % 256)
    arr[:, :, 0] = (arr[:, :, 0].astype(int) + np.arange(16)[None, :] * 9) % 256
    return Image.fromarray(arr)


def _stats(tops: list[list[int]], means: list[float], counts: list[int]) -> LatentStats:
    """Stats with given top rows (padded with -1), mean activations and fire counts."""
    m = max(len(t) for t in tops)
    n = len(tops)
    rows = np.full((n, m), -1, np.int64)
    vals = np.zeros((n, m), np.float32)
    for j, t in enumerate(tops):
        rows[j, : len(t)] = t
        vals[j, : len(t)] = means[j] * 2 - 0.01 * np.arange(len(t))
    counts = np.asarray(counts, np.int64)
    sums = np.asarray(means) * counts
    return LatentStats(sums, counts, vals, rows, sums, counts, vals.copy(), rows.copy())


# labels of 12 sample positions: 0..3 class 0, 4..7 class 1, 8..11 class 2
LABELS = np.repeat([0, 1, 2], 4)


@pytest.fixture
def stats() -> LatentStats:
    tops = [
        [0, 4, 8, 1],  # mixed, highest mean
        [4, 5, 6, 7],  # pure class 1
        [0, 1, 2, 4],  # 3/4 class 0
        [8, 9, 10, 11],  # pure class 2, lower mean than latent 1
        [0, 1],  # pure but too few top images, fires rarely
        [],  # never fires
    ]
    return _stats(tops, [5.0, 4.0, 3.0, 2.0, 9.0, 0.0], [20, 20, 20, 20, 2, 0])


def test_latent_purity_matches_reference():
    rng = np.random.default_rng(0)
    top = rng.integers(0, 40, size=(300, 8))
    for i in range(300):
        top[i, rng.integers(0, 9) :] = -1
    labels = rng.integers(-1, 6, size=40)  # -1: unlabelled images count as their own class
    majority, entropy, sigma = latent_purity(top, labels, 6)
    for i in range(300):
        rows = top[i, :6]
        sig, maj, ent = _per_latent(labels[rows[rows >= 0]])
        np.testing.assert_allclose(
            [sigma[i], majority[i], entropy[i]], [sig, maj, ent], rtol=1e-12, atol=1e-12
        )
    with pytest.raises(ValueError, match="top_images = 9"):
        latent_purity(top, labels, 9)


def test_select_by_rank_purity_ids(stats):
    kw = {"top_images": 4, "min_fires": 10}
    ranked = rank_latents(stats.dense_sum, stats.dense_count, 10)
    assert list(ranked) == [0, 1, 2, 3]  # latent 4 fires on too few images, latent 5 never
    assert list(select_latents(stats, LABELS, "rank", 3, **kw)) == [0, 1, 2]
    # purity: the pure latents 1 and 3 (in rank order), then 3/4, then the mixed one
    assert list(select_latents(stats, LABELS, "purity", 10, **kw)) == [1, 3, 2, 0]
    assert list(select_latents(stats, LABELS, "purity", 1, **kw)) == [1]
    # with 2 top images latent 2 is pure too and ranks before latent 3
    assert list(select_latents(stats, LABELS, "purity", 3, top_images=2, min_fires=10)) == [1, 2, 3]
    assert list(select_latents(stats, LABELS, "ids", 99, [5, 2, 5], **kw)) == [5, 2]
    with pytest.raises(ValueError, match=r"render.latent_ids \[6, -1\] out of range.*6 latents"):
        select_latents(stats, LABELS, "ids", 3, [1, 6, -1], **kw)
    with pytest.raises(ValueError, match="latent_ids is empty"):
        select_latents(stats, LABELS, "ids", 3, [], **kw)
    with pytest.raises(ValueError, match="valid: rank, purity, ids"):
        select_latents(stats, LABELS, "best", 3, **kw)


def _png(path) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 5_000
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_latent_grid(tmp_path, stats):
    loaded = []

    def load(pos):
        loaded.append(pos)
        return _image(pos)

    out = latent_grid(
        tmp_path / "fig" / "grid.png",
        [1, 0, 5],
        stats,
        LABELS,
        load,
        CLASSES,
        top_images=4,
        title="Top-4 images of 3 latents",
    )
    w, h = _png(out)
    assert w > 400 and h > 400
    assert sorted(set(loaded)) == [0, 1, 4, 5, 6, 7, 8]  # the firing top images of latents 1 and 0
    again = latent_grid(
        tmp_path / "again.png",
        [1, 0, 5],
        stats,
        LABELS,
        _image,
        CLASSES,
        top_images=4,
        title="Top-4 images of 3 latents",
    )
    assert again.read_bytes() == out.read_bytes()  # deterministic
    with pytest.raises(ValueError, match="no latents"):
        latent_grid(tmp_path / "none.png", [], stats, LABELS, _image, CLASSES, top_images=4, title="x")


def test_fit_pca_matches_svd():
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(7, 5, 3, 2)) * np.array([5, 3, 2, 1, 0.5])[None, :, None, None]
    pca = fit_pca(lambda: iter(maps))
    x = maps.transpose(0, 2, 3, 1).reshape(-1, 5)
    _, s, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    for k in range(3):  # same axes up to sign, and the sign rule holds
        assert abs(abs(pca.components[k] @ vt[k]) - 1) < 1e-9
        assert pca.components[k][np.argmax(np.abs(pca.components[k]))] > 0
    np.testing.assert_allclose(pca.explained, (s**2 / (s**2).sum())[:3], rtol=1e-9)
    rgb = np.stack([pca.rgb(m) for m in maps])
    assert rgb.shape == (7, 3, 2, 3)
    np.testing.assert_allclose(rgb.reshape(-1, 3).min(0), 0, atol=1e-12)  # min-max over the fitted set
    np.testing.assert_allclose(rgb.reshape(-1, 3).max(0), 1, atol=1e-12)


def test_pca_maps_two_layers(tmp_path):
    rng = np.random.default_rng(2)
    stores = []
    for name, shape in (("bottleneck", (6, 2, 2)), ("up_ft0", (4, 4, 4))):
        fmap = rng.normal(size=(30, *shape))
        split = {
            "pooled": fmap.mean(axis=(2, 3)),
            "fmap": fmap,
            "label": np.arange(30) % 3,
            "index": np.arange(100, 130),
        }
        stores.append(
            PcaLayer(name, write_feature_store(tmp_path / f"{name}.zarr", {"train": split, "test": split}))
        )
    rows = []
    out = pca_maps(
        tmp_path / "pca.png",
        stores,
        lambda r: rows.append(r) or _image(r),
        CLASSES,
        title="Feature maps",
        fit_images=20,
        show_images=4,
    )
    w, h = _png(out)
    assert w >= 500 and h > 600
    assert len(rows) == 4 and set(rows) <= set(range(100, 130))
    nofmap = write_feature_store(
        tmp_path / "pooled.zarr", {"test": {"pooled": rng.normal(size=(5, 3)), "label": np.zeros(5)}}
    )
    with pytest.raises(StoreError, match="no test/fmap array"):
        pca_maps(tmp_path / "x.png", [PcaLayer("bottleneck", nofmap)], _image, CLASSES, title="x")


def test_plot_curves(tmp_path):
    def rec(layer, t, acc, sigma):
        key = {"dataset": "fashion_mnist", "model": "fmnist-ddpm", "control": "trained", "layer": layer, "t": t,
               "prompt": "empty"}
        metrics = {
            "diffc_top1": acc,
            "diffc_top1_std": 0.5,
            "probe_top1": acc - 1,
            "diffc_top5": None,
            "clip_top1": None,
            "sigma_label": sigma,
            "majority": 0.7,
            "entropy": 1.0,
            "sigma_label_code": None,
            "sae_fvu": 0.05,
        }
        return Record(key, metrics)

    records = [
        rec("bottleneck", 25, 80.0, 1.6),
        rec("up_ft0", 25, 84.0, 1.4),
        rec("up_ft1", 25, 83.0, None),
        rec("bottleneck", 100, 78.0, 1.7),
    ]
    written = plot_curves(tables(records), tmp_path / "curves")
    names = sorted(p.name for p in written)
    assert len(names) == 2 and names[0].startswith("by_layer-") and names[1].startswith("by_t-")
    for path in written:
        w, h = _png(path)
        assert (w, h) == (700, 440)
