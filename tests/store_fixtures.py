"""Small feature stores with chosen contents, laid out like `extract` writes them."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.features.store import ArraySpec, FeatureStore, create_store


def write_feature_store(
    path: Path,
    splits: Mapping[str, Mapping[str, np.ndarray]],
    provenance: Mapping[str, Any] | None = None,
    shard_size: int = 64,
    compress_fmap: bool = False,
) -> FeatureStore:
    """splits: name → {"pooled": (N, C), optional "fmap": (N, C, H, W), "label": (N,),
    optional "index"/"view"}; index defaults to a running row number, view to 0.
    compress_fmap: zstd maps, which zarr must decode (no memory map)."""
    first = next(iter(splits.values()))
    channels = first["pooled"].shape[1]
    arrays = [ArraySpec("pooled", (channels,), "float32", compress=True)]
    if "fmap" in first:
        arrays.append(ArraySpec("fmap", tuple(first["fmap"].shape[1:]), "float16", compress=compress_fmap))
    arrays += [
        ArraySpec("label", (), "int64", compress=True),
        ArraySpec("index", (), "int64", compress=True),
        ArraySpec("view", (), "int16", compress=True),
    ]
    sizes = {name: len(a["label"]) for name, a in splits.items()}
    prov = dict(provenance or {"kind": "features", "test": True})
    store = create_store(Path(path), prov, sizes, arrays, shard_size)
    offset = 0
    for name, a in splits.items():
        n = sizes[name]
        full = {
            "pooled": np.asarray(a["pooled"], np.float32),
            "label": np.asarray(a["label"], np.int64),
            "index": np.asarray(a.get("index", np.arange(offset, offset + n)), np.int64),
            "view": np.asarray(a.get("view", np.zeros(n)), np.int16),
        }
        if "fmap" in a:
            full["fmap"] = np.asarray(a["fmap"], np.float16)
        offset += n
        for shard, (start, stop) in enumerate(store.shards(name)):
            store.write_shard(name, shard, {k: v[start:stop] for k, v in full.items()})
    store.mark_complete()
    return store
