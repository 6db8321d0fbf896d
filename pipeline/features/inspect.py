"""What is in the feature cache: the data behind `revelio features ls | info | show`.

Functions return plain dicts (JSON-ready); the CLI formats them for a terminal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.datasets import read_manifest
from pipeline.errors import StoreError
from pipeline.features.store import FeatureStore, open_store
from pipeline.paths import data_dir


def find_stores(features_root: Path) -> list[Path]:
    """Every store under `features_root`, staging area excluded, sorted."""
    return sorted(
        p for p in features_root.rglob("*.zarr") if (p / "zarr.json").exists() and ".staging" not in p.parts
    )


def store_key(path: Path, features_root: Path) -> str:
    return path.relative_to(features_root).as_posix().removesuffix(".zarr")


def resolve_key(key: str, features_root: Path) -> Path:
    """`fashion_mnist/fmnist-ddpm/trained/bottleneck/t25` (or a path to the .zarr) → the store path."""
    candidates = [Path(key), features_root / key, features_root / f"{key}.zarr"]
    for c in candidates:
        if (c / "zarr.json").exists():
            return c
    known = [store_key(p, features_root) for p in find_stores(features_root)]
    hint = f"; known keys: {', '.join(known)}" if known else f"; no stores under {features_root}"
    raise StoreError(f"no feature store for key {key!r}{hint}")


def _open_any(path: Path) -> FeatureStore:
    return open_store(path, require_complete=False)


def summary(path: Path, features_root: Path) -> dict[str, Any]:
    store = _open_any(path)
    arrays = {
        split: {name: list(store.array(split, name).shape) for name in store.layout["arrays"]}
        for split in store.splits()
    }
    missing = {s: len(store.missing_shards(s)) for s in store.splits()}
    return {
        "key": store_key(path, features_root),
        "kind": store.provenance.get("kind", "?"),
        "complete": store.complete,
        "missing_shards": missing,
        "arrays": arrays,
        "bytes": store.nbytes_on_disk(),
    }


def info(path: Path) -> dict[str, Any]:
    store = _open_any(path)
    arrays = {}
    for split in store.splits():
        for name in store.layout["arrays"]:
            a = store.array(split, name)
            arrays[f"{split}/{name}"] = {
                "shape": list(a.shape),
                "dtype": str(a.dtype),
                "chunks": list(a.chunks),
                "shards": list(a.shards) if a.shards else None,
                "codecs": [type(c).__name__ for c in (*a.filters, a.serializer, *a.compressors) if c is not None],
            }
    return {
        "path": str(path),
        "complete": store.complete,
        "shard_size": store.shard_size,
        "arrays": arrays,
        "provenance": store.provenance,
    }


def show(path: Path, split: str, index: int, root: Path = Path(".")) -> dict[str, Any]:
    store = _open_any(path)
    if split not in store.splits():
        raise StoreError(f"{path}: no split {split!r}; valid: {', '.join(store.splits())}")
    n = store.num_samples(split)
    if not 0 <= index < n:
        raise StoreError(f"{path}: --index {index} out of range for split {split} (0..{n - 1})")
    row_index = int(store.read(split, "index", index, index + 1)[0])
    view = int(store.read(split, "view", index, index + 1)[0])
    out: dict[str, Any] = {"key": str(path), "split": split, "sample": index, "manifest_row": row_index, "view": view}
    dataset = store.provenance.get("dataset")
    if dataset:
        try:
            row = read_manifest(dataset, root)[row_index]
            out.update(id=row.id, image=str(data_dir(dataset, root) / row.path), label=row.label, class_name=row.class_name)
        except (OSError, IndexError, ValueError):
            out["image"] = None  # the data stage's output is not in this workspace
    for name in ("pooled", "latents"):
        if store.has_array(split, name):
            v = store.read(split, name, index, index + 1)[0].astype(np.float64).ravel()
            top = np.argsort(-v)[:5]
            out[name] = {
                "dim": int(v.size),
                "mean": float(v.mean()),
                "std": float(v.std()),
                "min": float(v.min()),
                "max": float(v.max()),
                "l2": float(np.linalg.norm(v)),
                "top_channels": [[int(i), float(v[i])] for i in top],
            }
    return out
