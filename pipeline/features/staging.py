"""The shard writer shared by `encode` and `extract`: a store is filled in a staging folder,
shard by shard, then published in one rename.

Each shard has exactly one writer (shard j belongs to rank j % world), so an interrupted run
resumes where it stopped (shards already written in `features/.staging/` are kept) and
several `torchrun` processes fill one store together. Writes run in a background thread so
the model never waits on disk.
"""

from __future__ import annotations

import queue
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline.config import ExtractParams
from pipeline.errors import StoreError
from pipeline.features.store import (
    ArraySpec,
    FeatureStore,
    open_or_create_staging,
    open_store,
    publish,
    staging_path,
)
from pipeline.features.views import Sample
from pipeline.files import bytes_on_disk, human_bytes

STAGING = Path("features") / ".staging"


# Samples per shard are chosen so a shard is about this large (few big files for DVC) but
# small enough that an interrupted run loses little and several processes share the work.
TARGET_SHARD_BYTES = 64 * 2**20


MAX_SHARD_SAMPLES = 1024


def forward_batch(extract: ExtractParams) -> int:
    """Samples per encoder / denoiser forward, recorded in a store's provenance.

    Each shard is cut into runs of this many samples from its start, so the same samples
    always share a forward whatever the number of processes or where a run resumed: a
    batched store is as reproducible as a one-sample-per-forward one, but another batch size
    is another store (kernels pick algorithms by batch size: the last bits change). 1 with
    `extract.batch_invariant` (a tap then depends on its own sample only).
    """
    return 1 if extract.batch_invariant else extract.batch_size


def shard_size_for(sample_bytes: int, override: int | None = None) -> int:
    if override:
        return override
    return int(max(1, min(MAX_SHARD_SAMPLES, TARGET_SHARD_BYTES // max(1, sample_bytes))))


class BackgroundWriter:
    """Writes shards in a thread so the model never waits on disk; errors surface on close."""

    def __init__(self, store: FeatureStore, depth: int = 2) -> None:
        self.store = store
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.q.get()) is not None:
            if self.error is None:
                try:
                    self.store.write_shard(*item)
                except BaseException as exc:
                    self.error = exc

    def put(self, split: str, shard: int, arrays: dict[str, np.ndarray]) -> None:
        if self.error is not None:
            raise self.error
        self.q.put((split, shard, arrays))

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def fill_store(
    store: FeatureStore,
    samples: dict[str, list[Sample]],
    compute: Callable[[str, list[Sample], int, int], dict[str, np.ndarray]],
    *,
    rank: int = 0,
    world: int = 1,
    desc: str = "",
) -> None:
    """Compute and write every missing shard this rank owns (shard j belongs to rank j % world)."""
    todo = [(s, j) for s in store.splits() for j in store.missing_shards(s) if j % world == rank]
    total = sum(b - a for s, j in todo for a, b in [store.shards(s)[j]])
    writer = BackgroundWriter(store)
    try:
        with tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, disable=None) as bar:
            for split, j in todo:
                start, stop = store.shards(split)[j]
                writer.put(split, j, compute(split, samples[split][start:stop], start, stop))
                bar.update(stop - start)
    finally:
        writer.close()


def fill_and_publish(
    store: FeatureStore,
    final: Path,
    samples: dict[str, list[Sample]],
    compute: Callable[[str, list[Sample], int, int], dict[str, np.ndarray]],
    *,
    rank: int,
    world: int,
    barrier: Callable[[], None],
    desc: str,
) -> FeatureStore | None:
    """Fill this rank's shards, wait for every rank, then rank 0 publishes (others get None)."""
    fill_store(store, samples, compute, rank=rank, world=world, desc=desc)
    barrier()
    if rank != 0:
        return None
    return publish(store, final)


def no_barrier() -> None:
    pass


def check_disk_space(
    final: Path, staged: Path, split_sizes: dict[str, int], arrays: list[ArraySpec]
) -> None:
    """Refuse to start a store that cannot fit on its disk, before hours of forwards.

    The estimate is the raw array bytes (the maps are stored uncompressed; the small arrays'
    compression only helps) less what a resumed staging folder already holds. Staging and the
    final path share one filesystem (publishing is a rename), and DVC's cache links rather
    than copies (.dvc/config), so the store is needed once.
    """
    samples = sum(split_sizes.values())
    per_sample = {
        spec.name: int(np.prod(spec.sample_shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize for spec in arrays
    }
    total = samples * sum(per_sample.values())
    needed = total - bytes_on_disk(staged)
    probe = staged.parent
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed <= free:
        return
    pooled_only = samples * sum(b for name, b in per_sample.items() if name != "fmap")
    hint = (
        f"; pooled vectors only (extract.fmap: false, no Diff-C) would take {human_bytes(pooled_only)}"
        if "fmap" in per_sample
        else ""
    )
    raise StoreError(
        f"{final}: needs {human_bytes(needed)} more "
        f"({samples} samples x {human_bytes(sum(per_sample.values()))}) but "
        f"{probe.resolve()} has {human_bytes(free)} free{hint}; `dvc gc --workspace` drops the cached stores "
        f"of keys the workspace no longer uses (README, \"Disk\")"
    )


def staged_store(
    final: Path,
    provenance: dict[str, Any],
    split_sizes: dict[str, int],
    arrays: list[ArraySpec],
    shard_size: int,
    root: Path,
    rank: int,
    barrier: Callable[[], None],
) -> FeatureStore:
    """Open or create the staged store; with several processes rank 0 creates it first."""
    if rank == 0:
        check_disk_space(final, staging_path(final, provenance, root / STAGING), split_sizes, arrays)
        store = open_or_create_staging(final, provenance, split_sizes, arrays, shard_size, root / STAGING)
    barrier()
    if rank != 0:
        store = open_store(staging_path(final, provenance, root / STAGING), provenance, require_complete=False, mode="r+")
    return store

