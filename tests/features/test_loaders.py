"""The validation split carved from train, and a loader over a subset of a split's rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.features.loaders import FmapLoader, carve_validation
from tests.store_fixtures import write_feature_store


def test_validation_split_is_stratified_seeded_and_disjoint() -> None:
    labels = np.repeat(np.arange(4), [50, 30, 20, 100])
    fit, val = carve_validation(labels, 0.1, seed=0)
    assert np.intersect1d(fit, val).size == 0 and np.union1d(fit, val).tolist() == list(range(200))
    assert np.bincount(labels[val]).tolist() == [5, 3, 2, 10]  # 10% of each class
    again, other = carve_validation(labels, 0.1, seed=0)[1], carve_validation(labels, 0.1, seed=1)[1]
    assert np.array_equal(val, again) and not np.array_equal(val, other)
    # A class too small for its share still gives one row, if it has two.
    small = carve_validation(np.repeat(np.arange(3), [5, 2, 1]), 0.1, seed=0)[1]
    assert np.bincount(np.repeat(np.arange(3), [5, 2, 1])[small], minlength=3).tolist() == [1, 1, 0]
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        carve_validation(labels, 0.0, seed=0)


def test_validation_split_keeps_an_images_views_together() -> None:
    labels = np.repeat(np.arange(4), [50, 30, 20, 100])
    # Three views per image: rows 3i, 3i+1, 3i+2 are one image.
    fit, val = carve_validation(np.repeat(labels, 3), 0.1, seed=0, groups=np.repeat(np.arange(200), 3))
    images = val.reshape(-1, 3) // 3
    assert (images == images[:, :1]).all() and np.intersect1d(fit // 3, val // 3).size == 0
    assert np.bincount(labels[images[:, 0]]).tolist() == [5, 3, 2, 10]  # 10% of each class's images
    # One row per group is the split without groups, row for row.
    plain = carve_validation(labels, 0.1, seed=0)
    grouped = carve_validation(labels, 0.1, seed=0, groups=np.arange(200) + 1000)
    assert all(np.array_equal(a, b) for a, b in zip(plain, grouped))


def test_loader_over_rows_yields_exactly_those_samples(tmp_path) -> None:
    n = 40
    fmap = np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((1, 2, 2, 2), np.float32)
    store = write_feature_store(
        tmp_path / "s.zarr", {"train": {"pooled": fmap.mean(axis=(2, 3)), "fmap": fmap, "label": np.arange(n) % 4}},
        shard_size=16,
    )
    rows = np.array([3, 7, 8, 21, 39])
    loader = FmapLoader(store, "train", 2, shuffle=True, seed=0, rows=rows, in_memory=True)
    assert loader.num_samples == 5 and len(loader) == 3
    seen = np.concatenate([x[:, 0, 0, 0].numpy() for x, _ in loader])
    assert sorted(seen.astype(int).tolist()) == rows.tolist()
    labels = np.concatenate([y.numpy() for _, y in loader])
    assert sorted(labels.tolist()) == sorted((rows % 4).tolist())
    # Streamed from the shards: the same batches.
    streamed = [x for x, _ in FmapLoader(store, "train", 2, shuffle=True, seed=0, rows=rows, in_memory=False)]
    held = [x for x, _ in FmapLoader(store, "train", 2, shuffle=True, seed=0, rows=rows, in_memory=True)]
    assert all(torch.equal(a, b) for a, b in zip(streamed, held, strict=True))
    with pytest.raises(ValueError, match="outside"):
        FmapLoader(store, "train", 2, rows=np.array([40]), in_memory=True)


@pytest.mark.parametrize("compress_fmap", [False, True], ids=["memory-mapped", "zarr-decoded"])
def test_streaming_mixes_classes_like_in_memory(tmp_path, compress_fmap: bool) -> None:
    """A class-sorted split (as the Pets and Caltech manifests are) streamed from its shards:
    the batches are the in-memory loader's, bit for bit, and mix classes over the whole split."""
    classes, per_class, batch = 10, 24, 16
    labels = np.repeat(np.arange(classes), per_class)
    n = len(labels)
    fmap = np.random.default_rng(0).standard_normal((n, 3, 2, 2)).astype(np.float32)
    store = write_feature_store(
        tmp_path / "sorted.zarr",
        {"train": {"pooled": fmap.mean(axis=(2, 3)), "fmap": fmap, "label": labels}},
        shard_size=per_class,  # one class per shard: a shard buffer would see few classes
        compress_fmap=compress_fmap,
    )
    assert (store.shard_view("train", "fmap", 0) is None) == compress_fmap
    streamed = FmapLoader(store, "train", batch, seed=5, in_memory=False, read_ahead=2)
    held = FmapLoader(store, "train", batch, seed=5, in_memory=True)
    for epoch in range(2):
        pairs = list(zip(streamed, held, strict=True))
        assert len(pairs) == n // batch
        for (xs, ys), (xm, ym) in pairs:
            assert torch.equal(xs, xm) and torch.equal(ys, ym)
            # The bound: no class holds more than half a batch (10% of the split each; a
            # within-4-shards shuffle would give 4 classes ~25% each and often more).
            assert np.bincount(ys.numpy(), minlength=classes).max() <= batch // 2, (epoch, ys.tolist())
