from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import StoreError
from pipeline.features.loaders import FmapLoader, load_pooled
from pipeline.features.store import (
    ArraySpec,
    ProvenanceMismatch,
    open_or_create_staging,
    open_store,
    publish,
    staging_path,
)

SPLIT_SEED = {"train": 1, "test": 2}
PROV = {"dataset": "digits", "model": "tiny-sd", "layer": "up_ft1", "t": 25, "seed": 0}
ARRAYS = [
    ArraySpec("pooled", (6,), "float32", compress=True),
    ArraySpec("fmap", (6, 3, 3), "float16"),
    ArraySpec("label", (), "int64", compress=True),
    ArraySpec("index", (), "int64", compress=True),
    ArraySpec("view", (), "int16", compress=True),
]


def _shard_arrays(split: str, start: int, stop: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([SPLIT_SEED[split], start])
    n = stop - start
    fmap = rng.standard_normal((n, 6, 3, 3)).astype(np.float16)
    return {
        "pooled": fmap.astype(np.float32).mean(axis=(2, 3)),
        "fmap": fmap,
        "label": np.arange(start, stop) % 3,
        "index": np.arange(start, stop),
        "view": np.zeros(n, np.int16),
    }


def _fill(store, only: set[int] | None = None) -> None:
    for split in store.splits():
        for i, (a, b) in enumerate(store.shards(split)):
            if only is None or i in only:
                store.write_shard(split, i, _shard_arrays(split, a, b))


def _build(root: Path, sizes=None, shard=4):
    final = root / "up_ft1" / "t25.zarr"
    store = open_or_create_staging(final, PROV, sizes or {"train": 10, "test": 5}, ARRAYS, shard, root / ".staging")
    return final, store


def test_round_trip(tmp_path: Path) -> None:
    final, store = _build(tmp_path)
    _fill(store)
    published = publish(store, final)
    assert published.complete and not store.path.exists()
    reopened = open_store(final, PROV)
    for split, n in (("train", 10), ("test", 5)):
        got = {k: reopened.read(split, k) for k in ("pooled", "fmap", "label", "index", "view")}
        assert got["fmap"].dtype == np.float16 and got["pooled"].dtype == np.float32
        assert got["fmap"].shape == (n, 6, 3, 3)
        np.testing.assert_array_equal(got["index"], np.arange(n))
        for i, (a, b) in enumerate(reopened.shards(split)):
            ref = _shard_arrays(split, a, b)
            for k in ref:
                np.testing.assert_array_equal(got[k][a:b], ref[k])
    pooled = load_pooled(reopened, "train")
    assert pooled.x.shape == (10, 6) and pooled.label.tolist() == [i % 3 for i in range(10)]


def test_provenance_mismatch_lists_fields(tmp_path: Path) -> None:
    final, store = _build(tmp_path)
    _fill(store)
    publish(store, final)
    with pytest.raises(ProvenanceMismatch) as exc:
        open_store(final, {**PROV, "t": 100, "layer": "bottleneck"})
    msg = str(exc.value)
    assert "t: store has 25, params ask for 100" in msg and "layer:" in msg and str(final) in msg


def test_incomplete_store_refused_and_resumed(tmp_path: Path) -> None:
    final, store = _build(tmp_path)
    _fill(store, only={0, 2})
    assert store.missing_shards("train") == [1]
    with pytest.raises(StoreError, match="incomplete"):
        open_store(store.path, PROV)
    with pytest.raises(StoreError, match="shards missing"):
        store.mark_complete()
    # A new process finds the staged store by its provenance and only fills the gaps.
    _, again = _build(tmp_path)
    assert again.path == store.path == staging_path(final, PROV, tmp_path / ".staging")
    assert again.missing_shards("train") == [1] and again.missing_shards("test") == [1]
    _fill(again, only={1})
    published = publish(again, final)
    ref_final, ref = _build(tmp_path / "ref")
    _fill(ref)
    ref = publish(ref, ref_final)
    for split in ("train", "test"):
        for k in ("pooled", "fmap", "label"):
            np.testing.assert_array_equal(published.read(split, k), ref.read(split, k))


def test_changed_layout_restarts_staging(tmp_path: Path) -> None:
    final, store = _build(tmp_path)
    _fill(store, only={0})
    _, bigger = _build(tmp_path, sizes={"train": 12, "test": 5})
    assert bigger.missing_shards("train") == [0, 1, 2]


def test_shard_shape_checked(tmp_path: Path) -> None:
    _, store = _build(tmp_path)
    bad = _shard_arrays("train", 0, 3)
    with pytest.raises(StoreError, match="expected"):
        store.write_shard("train", 0, bad)


@pytest.mark.parametrize("in_memory", [True, False])
@pytest.mark.parametrize("shuffle", [True, False])
def test_fmap_loader_covers_every_sample_once(tmp_path: Path, in_memory: bool, shuffle: bool) -> None:
    final, store = _build(tmp_path, sizes={"train": 23, "test": 5}, shard=4)
    _fill(store)
    store = publish(store, final)
    loader = FmapLoader(store, "train", batch_size=5, shuffle=shuffle, seed=3, read_ahead=2, in_memory=in_memory)
    fmap = store.read("train", "fmap")
    seen = []
    sizes = []
    for x, y in loader:
        sizes.append(len(y))
        # every yielded map matches the stored sample with that label/index
        for row in x.numpy():
            (match,) = np.nonzero((fmap == row).all(axis=(1, 2, 3)))
            seen.extend(match.tolist())
    assert sorted(seen) == list(range(23))
    assert sizes[:-1] == [5] * (len(sizes) - 1) and len(sizes) == len(loader)
    if not shuffle:
        assert seen == list(range(23))
    # epochs differ when shuffling, and two loaders with one seed agree
    first = [y.tolist() for _, y in FmapLoader(store, "train", 5, seed=3, in_memory=in_memory)]
    again = [y.tolist() for _, y in FmapLoader(store, "train", 5, seed=3, in_memory=in_memory)]
    assert first == again


def test_xarray_and_tensorstore_read_what_zarr_reads(tmp_path: Path) -> None:
    # Issue 18 D3: a store is plain Zarr v3 with named axes, so the field's readers open it.
    import tensorstore as ts
    import xarray as xr

    final, store = _build(tmp_path, shard=3)  # 10 train samples: a ragged last shard
    _fill(store)
    store = publish(store, final)
    for split in ("train", "test"):
        ds = xr.open_zarr(final, group=split, consolidated=False)
        assert dict(ds.sizes) == {"sample": store.num_samples(split), "channel": 6, "y": 3, "x": 3}
        assert ds["fmap"].dims == ("sample", "channel", "y", "x") and ds["label"].dims == ("sample",)
        for name in ("pooled", "fmap", "label", "index", "view"):
            ours = store.read(split, name)
            via_xarray = ds[name].values
            spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(final / split / name)}}
            via_ts = ts.open(spec).result()
            assert via_xarray.dtype == ours.dtype, name
            np.testing.assert_array_equal(via_xarray, ours)
            np.testing.assert_array_equal(via_ts.read().result(), ours)


def test_axis_names_must_match_the_rank() -> None:
    assert ArraySpec("x", (2, 3), "float32").dimension_names == ("sample", "y", "x")
    assert ArraySpec("x", (2,), "float32", dims=("image", "latent")).dimension_names == ("image", "latent")
    with pytest.raises(StoreError, match="do not match its rank 2"):
        ArraySpec("x", (2,), "float32", dims=("a", "b", "c")).dimension_names
    with pytest.raises(StoreError, match="rank-4 sample"):
        ArraySpec("x", (1, 2, 3, 4), "float32").dimension_names
