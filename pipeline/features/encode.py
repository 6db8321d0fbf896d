"""The `encode` stage: images → the model's input space, once per dataset × model × size × views.

Latent models run their VAE (`latent_dist.mode() * scaling_factor`); pixel models take the
pixels. This is the most expensive step per image for latent models (the SD VAE encoder costs
more than the UNet), and it does not depend on layer, t or prompt — so it is cached in
`features/<dataset>/<model>/latents.zarr` and every (layer, t) key starts from there.

The sample order is views.samples_by_split's; the shard writer is staging's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import __version__
from pipeline.backbones.base import Backbone
from pipeline.backbones.weights import read_lock
from pipeline.config import Params
from pipeline.features.staging import (
    fill_and_publish,
    forward_batch,
    no_barrier,
    shard_size_for,
    staged_store,
)
from pipeline.features.store import ArraySpec, FeatureStore
from pipeline.features.views import Sample, load_view, samples_by_split, view_batches
from pipeline.paths import latents_store, manifest_path


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
    # Only when overridden, so stores built at a size the model suits keep their hash.
    size_problem = params.image_size_problem() if params.data.any_image_size else None
    override = {"image_size_override": size_problem} if size_problem else {}
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
        "forward_batch": forward_batch(params.extract),
        "package_version": __version__,
        **override,
    }


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
