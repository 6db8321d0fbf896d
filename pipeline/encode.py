"""The `encode` stage: images → the model's input space, once per dataset × model × size × views.

Latent models run their VAE (`latent_dist.mode() * scaling_factor`); pixel models take the
pixels. This is the most expensive step per image for latent models (the SD VAE encoder costs
more than the UNet), and it does not depend on layer, t or prompt — so it is cached in
`features/<dataset>/<model>/latents.zarr` and every (layer, t) key starts from there.

Sample order (shared by every store built from these latents): manifest rows in order, each
train row followed by its views 0..V-1; test rows have view 0 only.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pipeline import __version__
from pipeline.backbones.base import Backbone
from pipeline.backbones.weights import read_lock
from pipeline.config import Params
from pipeline.datasets import ManifestRow, read_manifest
from pipeline.images import load_image
from pipeline.paths import data_dir, latents_store, manifest_path
from pipeline.store import ArraySpec, FeatureStore, open_or_create_staging, open_store, publish, staging_path
from pipeline.views import make_view

STAGING = Path("features") / ".staging"
# Samples per shard are chosen so a shard is about this large (few big files for DVC) but
# small enough that an interrupted run loses little and several processes share the work.
TARGET_SHARD_BYTES = 64 * 2**20
MAX_SHARD_SAMPLES = 1024


@dataclass(frozen=True)
class Sample:
    index: int  # row in manifest.csv
    view: int
    label: int
    path: Path


def shard_size_for(sample_bytes: int, override: int | None = None) -> int:
    if override:
        return override
    return int(max(1, min(MAX_SHARD_SAMPLES, TARGET_SHARD_BYTES // max(1, sample_bytes))))


def samples_by_split(params: Params, root: Path) -> dict[str, list[Sample]]:
    rows: list[ManifestRow] = read_manifest(params.dataset, root)
    folder = data_dir(params.dataset, root)
    out: dict[str, list[Sample]] = {}
    for i, row in enumerate(rows):
        views = params.extract.views if row.split == "train" else 1
        out.setdefault(row.split, []).extend(Sample(i, v, row.label, folder / row.path) for v in range(views))
    return out


def file_sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def weights_fingerprint(params: Params, root: Path) -> str:
    lock = read_lock(params.model, root)
    if lock is None:
        raise FileNotFoundError(
            f"models/backbones/{params.model}/lock.json not found: run the model stage first (dvc repro model)"
        )
    return str(lock["weights_sha256"])


def latents_provenance(params: Params, root: Path, dtype: torch.dtype) -> dict[str, Any]:
    return {
        "kind": "latents",
        "dataset": params.dataset,
        "manifest_sha256": file_sha256(manifest_path(params.dataset, root)),
        "model": params.model,
        "weights_sha256": weights_fingerprint(params, root),
        "image_size": params.data.image_size,
        "views": params.extract.views,
        "seed": params.extract.seed,
        "input_space": params.backbone.input_space,
        "dtype": str(dtype).removeprefix("torch."),
        "batch_invariant": params.extract.batch_invariant,
        "package_version": __version__,
    }


def load_view(sample: Sample, image_size: int, seed: int) -> torch.Tensor:
    return make_view(load_image(sample.path), image_size, seed=seed, index=sample.index, view=sample.view)


class _ViewDataset(torch.utils.data.Dataset):
    def __init__(self, samples: Sequence[Sample], image_size: int, seed: int) -> None:
        self.samples, self.image_size, self.seed = samples, image_size, seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> torch.Tensor:
        return load_view(self.samples[i], self.image_size, self.seed)


def view_batches(
    samples: Sequence[Sample], image_size: int, seed: int, batch_size: int, num_workers: int
) -> torch.utils.data.DataLoader:
    """Batches (B, 3, S, S) in [-1, 1] of `samples` in order, decoded by `num_workers` workers."""
    return torch.utils.data.DataLoader(
        _ViewDataset(samples, image_size, seed), batch_size=batch_size, num_workers=num_workers
    )


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
        store = open_or_create_staging(final, provenance, split_sizes, arrays, shard_size, root / STAGING)
    barrier()
    if rank != 0:
        store = open_store(staging_path(final, provenance, root / STAGING), provenance, require_complete=False, mode="r+")
    return store


def run_encode(
    params: Params,
    backbone: Backbone,
    root: Path = Path("."),
    *,
    rank: int = 0,
    world: int = 1,
    barrier: Callable[[], None] = no_barrier,
) -> FeatureStore | None:
    """Build (or resume) the latents store; returns it once published (rank 0), else None."""
    samples = samples_by_split(params, root)
    provenance = latents_provenance(params, root, backbone.dtype)
    size, seed = params.data.image_size, params.extract.seed
    first = next(s for split in samples.values() for s in split)
    probe = backbone.encode(load_view(first, size, seed)[None])
    sample_shape = tuple(probe.shape[1:])
    arrays = [
        ArraySpec("latents", sample_shape, "float32"),
        ArraySpec("label", (), "int64", compress=True),
        ArraySpec("index", (), "int64", compress=True),
        ArraySpec("view", (), "int16", compress=True),
    ]
    shard = shard_size_for(4 * int(np.prod(sample_shape)), params.extract.shard_size)
    final = latents_store(params.dataset, params.model, root)
    sizes = {k: len(v) for k, v in samples.items()}
    store = staged_store(final, provenance, sizes, arrays, shard, root, rank, barrier)

    def compute(split: str, chunk: list[Sample], start: int, stop: int) -> dict[str, np.ndarray]:
        batches = view_batches(chunk, size, seed, params.extract.batch_size, params.extract.num_workers)
        latents = [
            backbone.encode(images, batch_invariant=params.extract.batch_invariant).float().cpu() for images in batches
        ]
        return {
            "latents": torch.cat(latents).numpy(),
            "label": np.array([s.label for s in chunk], np.int64),
            "index": np.array([s.index for s in chunk], np.int64),
            "view": np.array([s.view for s in chunk], np.int16),
        }

    desc = f"encode {params.dataset}/{params.model}"
    return fill_and_publish(store, final, samples, compute, rank=rank, world=world, barrier=barrier, desc=desc)
