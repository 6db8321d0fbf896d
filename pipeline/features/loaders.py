"""Loaders the fitting stages read features through.

- `load_pooled`: the (N, C) pooled split, whole, in memory (the k-SAE's input is small).
- `FmapLoader`: batches of (N, C, H, W) maps for Diff-C, shuffled over the whole split every
  epoch. `in_memory=True` (default: when the split takes under a quarter of the free RAM)
  reads the split once; otherwise each batch is gathered from the shards (memory-mapped where
  the store allows, see `FeatureStore.shard_view`) by a thread reading ahead. Both modes
  yield the same batches. `rows` restricts a loader to some samples of the split, e.g. the
  two sides of `carve_validation`.
- `carve_validation`: a seeded, stratified validation split carved from train (never test).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.features.store import FeatureStore
from pipeline.seeds import mix_seed
from pipeline.training import BatchOrder


@dataclass
class PooledSplit:
    x: np.ndarray  # (N, C) float32
    label: np.ndarray  # (N,) int64
    index: np.ndarray  # (N,) manifest row
    view: np.ndarray  # (N,)


def load_pooled(store: FeatureStore, split: str) -> PooledSplit:
    return PooledSplit(
        x=store.read(split, "pooled").astype(np.float32, copy=False),
        label=store.read(split, "label"),
        index=store.read(split, "index"),
        view=store.read(split, "view"),
    )


def _mem_available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _read_ahead(items: list, read, depth: int) -> Iterator:
    """Yield read(item) for each item, reading up to `depth` items ahead in a thread."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def worker() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put(("ok", read(item)))
        except BaseException as exc:  # surfaced in the consumer, not lost in the thread
            q.put(("error", exc))
            return
        q.put(("end", None))

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        while thread.is_alive():  # unblock a worker waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.01)


class FmapLoader:
    """Iterate (fmap, label) batches of one split; one pass per `iter()`, reseeded per epoch.

    Both modes draw the same whole-split permutation (the training toolkit's (seed, epoch)
    `BatchOrder`), so a batch mixes classes however the store is ordered (the Pets and Caltech
    manifests are class-sorted) and the two modes yield identical batches, bit for bit.
    Streaming gathers each batch's samples straight from the shards — memory-mapped where the
    store allows, else zarr's orthogonal selection — `read_ahead` batches ahead in a thread.
    """

    def __init__(
        self,
        store: FeatureStore,
        split: str,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        read_ahead: int = 4,
        in_memory: bool | None = None,
        drop_last: bool = False,
        rows: np.ndarray | None = None,
    ) -> None:
        self.store = store
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.read_ahead = max(1, read_ahead)
        self.drop_last = drop_last
        self.epoch = 0
        n = store.num_samples(split)
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        if self.rows is not None and len(self.rows) and (self.rows.min() < 0 or self.rows.max() >= n):
            raise ValueError(f"FmapLoader: rows outside [0, {n}) of {store.path} {split}")
        self._fmap = store.array(split, "fmap")
        nbytes = n * int(np.prod(self._fmap.shape[1:])) * self._fmap.dtype.itemsize
        # Hold the split in memory when it takes under a quarter of the free RAM.
        self.in_memory = in_memory if in_memory is not None else nbytes < _mem_available_bytes() // 4
        self._cache: np.ndarray | None = None
        self._starts = np.array([start for start, _ in store.shards(split)], dtype=np.int64)
        self._views: dict[int, np.ndarray | None] = {}
        # Labels are tiny: read once, not once per batch and epoch.
        self._labels = store.read(split, "label")

    @property
    def num_samples(self) -> int:
        return self.store.num_samples(self.split) if self.rows is None else len(self.rows)

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _view(self, shard: int) -> np.ndarray | None:
        # Maps are kept across epochs: they cost address space, not memory (the pages belong to
        # the page cache), and re-mapping would fault every page in again each epoch. Without
        # populate: a batch touches a few samples of each shard, not the whole file.
        if shard not in self._views:
            self._views[shard] = self.store.shard_view(self.split, "fmap", shard, populate=False)
        return self._views[shard]

    def _gather(self, positions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The samples at `positions` of the split, in that order, each copied once."""
        x = np.empty((len(positions), *self._fmap.shape[1:]), self._fmap.dtype)
        shard_of = np.searchsorted(self._starts, positions, side="right") - 1
        zarr_rows = []
        for j, (pos, shard) in enumerate(zip(positions.tolist(), shard_of.tolist())):
            view = self._view(shard)
            if view is None:
                zarr_rows.append(j)
            else:
                x[j] = view[pos - self._starts[shard]]
        if zarr_rows:
            # zarr decodes each chunk it touches once; it wants the rows sorted.
            at = np.array(zarr_rows)
            order = np.argsort(positions[at], kind="stable")
            x[at[order]] = self._fmap.get_orthogonal_selection((positions[at][order],))
        return torch.from_numpy(x), torch.from_numpy(self._labels[positions])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        self.epoch += 1
        n = self.num_samples
        order = BatchOrder(n, self.batch_size, self.seed).permutation(epoch).numpy() if self.shuffle else np.arange(n)
        stop = n - n % self.batch_size if self.drop_last else n
        batches = [order[start : start + self.batch_size] for start in range(0, stop, self.batch_size)]
        if self.in_memory:
            if self._cache is None:
                x = self.store.read(self.split, "fmap")
                self._cache = x if self.rows is None else x[self.rows]
            labels = self._labels if self.rows is None else self._labels[self.rows]
            for idx in batches:
                yield torch.from_numpy(self._cache[idx]), torch.from_numpy(labels[idx])
            return
        positions = [idx if self.rows is None else self.rows[idx] for idx in batches]
        yield from _read_ahead(positions, self._gather, depth=self.read_ahead)


def carve_validation(
    labels: np.ndarray, fraction: float, seed: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, validation rows) of a train split: `fraction` of each class, seeded.

    Stratified so that the validation split has train's class balance (at least one of each
    class that has two or more); both sides sorted. `groups` (e.g. each row's manifest index): rows of one group land on the same side, so two
    views of one image never straddle the split; `fraction` then counts groups. Without
    groups every row is its own (the same split as before groups existed).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    labels = np.asarray(labels)
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    names, first = np.unique(groups, return_index=True)
    group_labels = labels[first]
    rng = np.random.default_rng(mix_seed(seed, "validation-split"))
    held = []
    for cls in np.unique(group_labels):
        members = np.flatnonzero(group_labels == cls)
        # At least one of a class with two or more (a tiny split still gets scored on every class).
        size = max(int(round(fraction * len(members))), 1 if len(members) >= 2 else 0)
        held.append(rng.choice(members, size=size, replace=False))
    val = np.flatnonzero(np.isin(groups, names[np.concatenate(held)]))
    fit = np.setdiff1d(np.arange(len(labels)), val)
    return fit, val
