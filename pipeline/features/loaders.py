"""Loaders the fitting stages read features through.

- `load_pooled`: the (N, C) pooled split, whole, in memory (the k-SAE's input is small).
- `FmapLoader`: batches of (N, C, H, W) maps for Diff-C. Random single-sample reads from a
  sharded store are ~10x slower than whole shards, so it takes shards whole (memory-mapped
  where the store allows, see `FeatureStore.shard_view`), in a seeded per-epoch shuffled
  order with a background thread reading ahead, and shuffles samples inside a buffer of
  several shards. `in_memory=True` (default: when the split takes under a quarter of the free
  RAM) reads the split once and shuffles exactly instead. `rows` restricts a loader to some
  samples of the split (in memory), e.g. the two sides of `carve_validation`.
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
    """Iterate (fmap, label) batches of one split; one pass per `iter()`, reseeded per epoch."""

    def __init__(
        self,
        store: FeatureStore,
        split: str,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        buffer_shards: int = 4,
        in_memory: bool | None = None,
        drop_last: bool = False,
        rows: np.ndarray | None = None,
    ) -> None:
        self.store = store
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.buffer_shards = max(1, buffer_shards)
        self.drop_last = drop_last
        self.epoch = 0
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        n = store.num_samples(split)
        fmap = store.array(split, "fmap")
        nbytes = n * int(np.prod(fmap.shape[1:])) * fmap.dtype.itemsize
        # Hold the split in memory when it takes under a quarter of the free RAM; a subset of
        # rows always (it is gathered once, not per shard).
        self.in_memory = in_memory if in_memory is not None else nbytes < _mem_available_bytes() // 4
        if self.rows is not None:
            if not self.in_memory:
                raise ValueError("FmapLoader: a subset of rows is only supported in memory")
            if len(self.rows) and (self.rows.min() < 0 or self.rows.max() >= n):
                raise ValueError(f"FmapLoader: rows outside [0, {n}) of {store.path} {split}")
        self._cache: tuple[np.ndarray, np.ndarray] | None = None
        self._views: dict[int, np.ndarray] = {}
        # Labels are tiny: read once, not once per shard and epoch.
        self._labels = store.read(split, "label")

    @property
    def num_samples(self) -> int:
        return self.store.num_samples(self.split) if self.rows is None else len(self.rows)

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng(mix_seed(self.seed, "fmap-loader", self.epoch))

    def _read_shard(self, shard: int) -> tuple[np.ndarray, np.ndarray]:
        start, stop = self.store.shards(self.split)[shard]
        # Maps are kept across epochs: they cost address space, not memory (the pages belong to
        # the page cache), and re-mapping would fault every page in again each epoch.
        view = self._views.get(shard)
        if view is None:
            view = self.store.shard_view(self.split, "fmap", shard)
            if view is not None:
                self._views[shard] = view
        fmap = view if view is not None else self.store.read_shard(self.split, "fmap", shard)
        return fmap, self._labels[start:stop]

    def _batches(self, x: np.ndarray, y: np.ndarray, order: np.ndarray) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            if self.drop_last and len(idx) < self.batch_size:
                return
            yield torch.from_numpy(x[idx]), torch.from_numpy(y[idx])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rng, epoch = self._rng(), self.epoch
        self.epoch += 1
        if self.in_memory:
            if self._cache is None:
                x, y = self.store.read(self.split, "fmap"), self._labels
                self._cache = (x, y) if self.rows is None else (x[self.rows], y[self.rows])
            x, y = self._cache
            # In memory, an epoch's order is the training toolkit's (seed, epoch) permutation.
            n = len(y)
            order = BatchOrder(n, self.batch_size, self.seed).permutation(epoch).numpy() if self.shuffle else np.arange(n)
            yield from self._batches(x, y, order)
            return
        shards = list(range(len(self.store.shards(self.split))))
        if self.shuffle:
            shards = list(rng.permutation(shards))
        # A buffer is a list of shard arrays (never concatenated: that would copy every sample
        # once more); a batch gathers its samples straight from them. Samples left over after
        # a buffer's full batches join the next buffer, so every batch but the last is full.
        buf_x: list[np.ndarray] = []
        buf_y: list[np.ndarray] = []
        for x, y in _read_ahead(shards, self._read_shard, depth=self.buffer_shards):
            buf_x.append(x)
            buf_y.append(y)
            if len(buf_x) < self.buffer_shards:
                continue
            yield from self._drain(buf_x, buf_y, rng, keep_rest=True)
        yield from self._drain(buf_x, buf_y, rng, keep_rest=False)

    def _drain(
        self, buf_x: list[np.ndarray], buf_y: list[np.ndarray], rng: np.random.Generator, *, keep_rest: bool
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield the buffer's batches; with keep_rest, leave the leftover samples in the buffer."""
        sizes = np.array([len(y) for y in buf_y])
        total = int(sizes.sum())
        if total == 0:
            return
        source = np.repeat(np.arange(len(buf_y)), sizes)  # which array each sample is in
        local = np.arange(total) - np.repeat(np.cumsum(sizes) - sizes, sizes)  # its row there
        order = rng.permutation(total) if self.shuffle else np.arange(total)
        full = total - total % self.batch_size if keep_rest else total
        for start in range(0, full, self.batch_size):
            idx = order[start : start + self.batch_size]
            if self.drop_last and len(idx) < self.batch_size:
                break
            # Group the batch's samples by the shard they sit in, so each group is one np.take
            # straight into the batch (one copy per sample); order inside a batch is irrelevant.
            idx = idx[np.argsort(source[idx], kind="stable")]
            arrays, counts = np.unique(source[idx], return_counts=True)
            x = np.empty((len(idx), *buf_x[0].shape[1:]), buf_x[0].dtype)
            y = np.empty(len(idx), buf_y[0].dtype)
            pos = 0
            for a, count in zip(arrays, counts):
                rows = local[idx[pos : pos + count]]
                # mode="clip": with the default "raise", numpy buffers `out` (an extra copy).
                np.take(buf_x[a], rows, axis=0, out=x[pos : pos + count], mode="clip")
                y[pos : pos + count] = buf_y[a][rows]
                pos += count
            yield torch.from_numpy(x), torch.from_numpy(y)
        rest = order[full:] if keep_rest else order[:0]
        dtype = buf_y[0].dtype
        buf_x[:] = [np.stack([buf_x[source[i]][local[i]] for i in rest])] if len(rest) else []
        buf_y[:] = [np.array([buf_y[source[i]][local[i]] for i in rest], dtype)] if len(rest) else []


def carve_validation(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, validation rows) of a train split: `fraction` of each class, seeded.

    Stratified so that the validation split has train's class balance; both sides sorted.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(mix_seed(seed, "validation-split"))
    held = []
    for cls in np.unique(labels):
        rows = np.flatnonzero(labels == cls)
        held.append(rng.choice(rows, size=int(round(fraction * len(rows))), replace=False))
    val = np.sort(np.concatenate(held))
    fit = np.setdiff1d(np.arange(len(labels)), val)
    return fit, val
