"""The validation split carved from train, and a loader over a subset of a split's rows."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.features.loaders import FmapLoader, carve_validation
from tests.store_fixtures import write_feature_store


def test_validation_split_is_stratified_seeded_and_disjoint() -> None:
    labels = np.repeat(np.arange(4), [50, 30, 20, 100])
    fit, val = carve_validation(labels, 0.1, seed=0)
    assert np.intersect1d(fit, val).size == 0 and np.union1d(fit, val).tolist() == list(range(200))
    assert np.bincount(labels[val]).tolist() == [5, 3, 2, 10]  # 10% of each class
    again, other = carve_validation(labels, 0.1, seed=0)[1], carve_validation(labels, 0.1, seed=1)[1]
    assert np.array_equal(val, again) and not np.array_equal(val, other)
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        carve_validation(labels, 0.0, seed=0)


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
    with pytest.raises(ValueError, match="outside"):
        FmapLoader(store, "train", 2, rows=np.array([40]), in_memory=True)
    with pytest.raises(ValueError, match="only supported in memory"):
        FmapLoader(store, "train", 2, rows=rows, in_memory=False)
