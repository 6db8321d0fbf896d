"""The feature store: one Zarr v3 group per key, sharded, resumable, provenance-checked.

Layout (DESIGN.md, "The feature store")::

    <key>.zarr/
      zarr.json                 group attributes: {"provenance": {...}, "complete": bool, "layout": {...}}
      train/pooled  (N, C)        float32   chunk (1, C)        shard (S, C)     dims (sample, channel)
      train/fmap    (N, C, H, W)  float16   chunk (1, C, H, W)  shard (S, C, H, W)  dims (sample, channel, y, x)
      train/label   (N,)          int64     chunk = shard = (S,)
      train/index   (N,)          int64     row of the sample's image in manifest.csv
      train/view    (N,)          int16     0 = plain resize + center crop
      test/...
      _done/<split>/<shard>       one empty marker per finished shard

Why shards: one sample per chunk lets a reader take any sample alone, and S samples per shard
file keeps the store at few, large files (DVC slows down on directories of many small files).
Why markers: a shard is written in one call covering exactly its region, so zarr writes the
shard file whole (no read-modify-write); the marker is created only after every array of the
shard is on disk. An interrupted run therefore resumes by skipping marked shards and
rewriting the rest, and several processes can fill one store if each owns distinct shards.

Every store records its provenance; `open_store` refuses one whose provenance differs from
what the caller expects and lists the differing fields.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle

from pipeline.errors import StoreError
from pipeline.files import bytes_on_disk, swap_in

SPLITS = ("train", "test")
FORMAT_VERSION = 1

# Codecs, chosen by measurement (bench/store_codecs.py, on the embedded model's bottleneck
# taps): fp16 maps compress 1.28x with zstd here (the notes measured 1.085x on SD-1.5 maps)
# but decode at a third of the raw speed through zarr, and only raw shards can be memory-mapped
# by `FeatureStore.shard_view` (the training loader's fast path), so maps are stored raw. The
# small float32/int arrays: blosc-lz4 with bit shuffle compressed pooled 1.31x vs 1.17x for
# blosc-zstd with byte shuffle, at the same speed.
_SMALL_CODECS = (BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.bitshuffle),)


class ProvenanceMismatch(StoreError):
    pass


@dataclass(frozen=True)
class ArraySpec:
    """One per-sample array of a split: `sample_shape` excludes the leading sample axis.

    `dims`: the axes' names, the sample axis included; by default `sample`, then `channel`,
    `y`, `x` as the rank asks (a (C,) vector, a (C, H, W) map). Stored as the arrays' Zarr v3
    `dimension_names`, which is what lets `xarray.open_zarr` name the axes.
    """

    name: str
    sample_shape: tuple[int, ...]
    dtype: str
    compress: bool = False
    dims: tuple[str, ...] | None = None

    @property
    def dimension_names(self) -> tuple[str, ...]:
        if self.dims is not None:
            if len(self.dims) != 1 + len(self.sample_shape):
                raise StoreError(
                    f"array {self.name!r}: dims {self.dims} do not match its rank {1 + len(self.sample_shape)}"
                )
            return self.dims
        defaults = {0: (), 1: ("channel",), 2: ("y", "x"), 3: ("channel", "y", "x")}
        rank = len(self.sample_shape)
        if rank not in defaults:
            raise StoreError(f"array {self.name!r}: name the axes of a rank-{rank} sample (ArraySpec.dims)")
        return ("sample", *defaults[rank])


def provenance_hash(provenance: Mapping[str, Any]) -> str:
    """Stable short hash of a provenance mapping (key order does not matter)."""
    canonical = json.dumps(provenance, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def shard_ranges(n: int, shard_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + shard_size, n)) for start in range(0, n, shard_size)]


@dataclass
class FeatureStore:
    """An open store: a thin view over the zarr group with the pipeline's conventions."""

    path: Path
    group: zarr.Group

    @property
    def provenance(self) -> dict[str, Any]:
        return dict(self.group.attrs.get("provenance", {}))

    @property
    def layout(self) -> dict[str, Any]:
        return dict(self.group.attrs["layout"])

    @property
    def complete(self) -> bool:
        return bool(self.group.attrs.get("complete", False))

    @property
    def shard_size(self) -> int:
        return int(self.layout["shard_size"])

    def splits(self) -> list[str]:
        return list(self.layout["splits"])

    def num_samples(self, split: str) -> int:
        return int(self.layout["splits"][split])

    def array(self, split: str, name: str) -> zarr.Array:
        try:
            return self.group[f"{split}/{name}"]  # type: ignore[return-value]
        except KeyError:
            have = ", ".join(sorted(self.group[split].array_keys())) if split in self.group else "none"
            raise StoreError(f"{self.path}: no array {split}/{name} (this split has: {have})") from None

    def has_array(self, split: str, name: str) -> bool:
        return split in self.group and name in self.group[split]

    # -- shard bookkeeping -------------------------------------------------------------
    def shards(self, split: str) -> list[tuple[int, int]]:
        return shard_ranges(self.num_samples(split), self.shard_size)

    def _marker(self, split: str, shard: int) -> Path:
        return self.path / "_done" / split / f"{shard:06d}"

    def done_shards(self, split: str) -> set[int]:
        folder = self.path / "_done" / split
        if not folder.exists():
            return set()
        return {int(p.name) for p in folder.iterdir() if p.name.isdigit()}

    def missing_shards(self, split: str) -> list[int]:
        done = self.done_shards(split)
        return [i for i in range(len(self.shards(split))) if i not in done]

    def write_shard(self, split: str, shard: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Write every array of one shard, then mark it done (the marker is the commit)."""
        start, stop = self.shards(split)[shard]
        expected = set(self.layout["arrays"])
        if set(arrays) != expected:
            raise StoreError(f"{self.path}: shard arrays {sorted(arrays)} != store arrays {sorted(expected)}")
        for name, values in arrays.items():
            target = self.array(split, name)
            if values.shape != (stop - start, *target.shape[1:]):
                raise StoreError(
                    f"{self.path}: {split}/{name} shard {shard} has shape {values.shape}, "
                    f"expected {(stop - start, *target.shape[1:])}"
                )
            target[start:stop] = values
        marker = self._marker(split, shard)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()

    def mark_complete(self) -> None:
        missing = {s: self.missing_shards(s) for s in self.splits()}
        missing = {s: m for s, m in missing.items() if m}
        if missing:
            raise StoreError(f"{self.path}: cannot mark complete, shards missing: {missing}")
        self.group.attrs["complete"] = True

    # -- reading -----------------------------------------------------------------------
    def read(self, split: str, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        return np.asarray(self.array(split, name)[start:stop])

    def read_shard(self, split: str, name: str, shard: int) -> np.ndarray:
        """One whole shard of one array, as a new in-memory array."""
        view = self.shard_view(split, name, shard)
        if view is not None:
            return np.array(view)
        start, stop = self.shards(split)[shard]
        return np.asarray(self.array(split, name)[start:stop])

    def shard_view(self, split: str, name: str, shard: int, *, populate: bool = True) -> np.ndarray | None:
        """A read-only memory map of one shard's samples, or None where zarr must decode it.

        zarr assembles a shard chunk by chunk through its codec pipeline (~0.7 GB/s here for
        one-sample chunks). An uncompressed shard whose chunks were written in order is one
        contiguous block of the shard file, so it can be mapped as is: no decode, no copy until
        a batch gathers from it. The layout read is the Zarr v3 sharding spec's: chunk bytes,
        then (offset, nbytes) uint64 pairs and a crc32c at the end of the file. Anything else
        (compressed, chunks missing or out of order) → None. zarr-python's own reads, with its
        codec pipeline or zarrs', reach 0.08-0.36x this reader's rate in shard order and 0.01x
        on random batches (`python -m bench.zarrs_read`, README): hence a reader of our own.
        """
        array = self.array(split, name)
        if array.shards is None or not _plain_sharding(array):
            return None
        start, stop = self.shards(split)[shard]
        n = stop - start
        chunks_per_shard = int(np.prod([s // c for s, c in zip(array.shards, array.chunks)]))
        path = self.path / split / name / "/".join(["c", str(shard), *["0"] * (array.ndim - 1)])
        chunk_bytes = int(np.prod(array.chunks)) * array.dtype.itemsize
        index_bytes = chunks_per_shard * 16 + 4  # + crc32c
        try:
            with open(path, "rb") as fh:
                fh.seek(-index_bytes, os.SEEK_END)
                index = np.frombuffer(fh.read(chunks_per_shard * 16), "<u8").reshape(-1, 2)[:n]
                first = int(index[0, 0])
                expected = first + chunk_bytes * np.arange(n, dtype=np.uint64)
                if not (np.array_equal(index[:, 0], expected) and (index[:, 1] == chunk_bytes).all()):
                    return None
                # MAP_POPULATE reads the pages in now (in the caller's thread), so a reader of
                # the whole shard does not stall on page faults later; a reader of a few
                # samples (the Diff-C loader) passes populate=False.
                flags = mmap.MAP_SHARED | (getattr(mmap, "MAP_POPULATE", 0) if populate else 0)
                mapped = mmap.mmap(fh.fileno(), 0, flags=flags, prot=mmap.PROT_READ)
        except (OSError, ValueError):
            return None
        view = np.frombuffer(mapped, array.dtype, n * int(np.prod(array.chunks)), first)
        return view.reshape(n, *array.shape[1:])

    def nbytes_on_disk(self) -> int:
        return bytes_on_disk(self.path)


def _plain_sharding(array: zarr.Array) -> bool:
    """Sharded with raw little-endian inner chunks and the default end-of-file crc32c index."""
    codecs = array.metadata.to_dict().get("codecs", [])
    if len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
        return False
    conf = codecs[0]["configuration"]
    inner = [c["name"] for c in conf["codecs"]]
    endian = conf["codecs"][0].get("configuration", {}).get("endian", "little")
    index = [c["name"] for c in conf["index_codecs"]]
    return (
        inner == ["bytes"]
        and (endian == "little" or array.dtype.itemsize == 1)
        and index == ["bytes", "crc32c"]
        and conf.get("index_location", "end") == "end"
    )


def create_store(
    path: Path,
    provenance: Mapping[str, Any],
    split_sizes: Mapping[str, int],
    arrays: list[ArraySpec],
    shard_size: int,
) -> FeatureStore:
    """Create an empty store (overwriting nothing: fails if `path` exists)."""
    path = Path(path)
    if path.exists():
        raise StoreError(f"{path}: already exists")
    if shard_size < 1:
        raise StoreError(f"shard_size must be >= 1, got {shard_size}")
    path.parent.mkdir(parents=True, exist_ok=True)
    group = zarr.open_group(str(path), mode="w-", zarr_format=3)
    for split, n in split_sizes.items():
        for spec in arrays:
            shard = min(shard_size, max(n, 1))
            group.create_array(
                f"{split}/{spec.name}",
                shape=(n, *spec.sample_shape),
                chunks=(1, *spec.sample_shape) if spec.sample_shape else (shard,),
                shards=(shard, *spec.sample_shape) if spec.sample_shape else None,
                dtype=spec.dtype,
                compressors=_SMALL_CODECS if spec.compress else None,
                fill_value=0,
                dimension_names=spec.dimension_names,
            )
    group.attrs.update(
        {
            "provenance": dict(provenance),
            "provenance_hash": provenance_hash(provenance),
            "complete": False,
            "format_version": FORMAT_VERSION,
            "layout": {
                "shard_size": shard_size,
                "splits": dict(split_sizes),
                "arrays": {s.name: {"sample_shape": list(s.sample_shape), "dtype": s.dtype} for s in arrays},
            },
        }
    )
    return FeatureStore(path, group)


def provenance_diff(found: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(found) | set(expected))
    return [
        f"{k}: store has {found.get(k, '<absent>')!r}, params ask for {expected.get(k, '<absent>')!r}"
        for k in keys
        if found.get(k, "<absent>") != expected.get(k, "<absent>")
    ]


def open_store(
    path: Path,
    expected: Mapping[str, Any] | None = None,
    *,
    require_complete: bool = True,
    mode: str = "r",
) -> FeatureStore:
    """Open a store, refusing one that is incomplete or built for other parameters."""
    path = Path(path)
    if not (path / "zarr.json").exists():
        raise StoreError(f"{path}: no feature store here (run `dvc repro` to build it)")
    group = zarr.open_group(str(path), mode=mode, zarr_format=3)  # type: ignore[arg-type]
    store = FeatureStore(path, group)
    if expected is not None:
        diff = provenance_diff(store.provenance, expected)
        if diff:
            raise ProvenanceMismatch(f"{path}: built for other parameters — " + "; ".join(diff))
    if require_complete and not store.complete:
        missing = {s: len(store.missing_shards(s)) for s in store.splits()}
        raise StoreError(f"{path}: incomplete (missing shards per split: {missing}); rerun its stage")
    return store


def staging_path(final: Path, provenance: Mapping[str, Any], staging_root: Path) -> Path:
    """Where a store for `final` is built: outside DVC's outputs, keyed by provenance.

    DVC deletes a stage's outputs before it runs, so work-in-progress kept there would be lost
    on interruption; kept here, a rerun with the same provenance finds and resumes it.
    """
    return staging_root / f"{final.name.removesuffix('.zarr')}-{provenance_hash(provenance)}.zarr"


def open_or_create_staging(
    final: Path,
    provenance: Mapping[str, Any],
    split_sizes: Mapping[str, int],
    arrays: list[ArraySpec],
    shard_size: int,
    staging_root: Path,
) -> FeatureStore:
    """Resume the staged store for this provenance, or start a new one."""
    staged = staging_path(final, provenance, staging_root)
    if (staged / "zarr.json").exists():
        store = open_store(staged, provenance, require_complete=False, mode="r+")
        if store.layout["splits"] != dict(split_sizes) or store.shard_size != shard_size:
            # Same provenance but another layout (e.g. the manifest changed size): start over.
            shutil.rmtree(staged)
        else:
            return store
    elif staged.exists():
        shutil.rmtree(staged)  # a creation killed before zarr.json was written
    return create_store(staged, provenance, split_sizes, arrays, shard_size)


def publish(store: FeatureStore, final: Path) -> FeatureStore:
    """Mark a filled staged store complete and move it to its final (DVC output) path."""
    store.mark_complete()
    final = Path(final)
    swap_in(store.path, final)
    return open_store(final, store.provenance)
