"""The `extract` stage: cached latents → noise at t → taps at `layer` → pooled + fmap store.

Reads `features/<dataset>/<model>/latents.zarr` (never the images or the VAE again), runs the
denoiser only as far as `layer` (early exit), and writes
`features/<dataset>/<model>/<control>/<layer>/t<t>.zarr`: `pooled` (N, C) float32 spatial means and,
unless `extract.fmap: false`, `fmap` (N, C, h, w) float16. Sample i of this store is sample i
of the latents store, so labels, manifest rows and views line up.

One store per row of the study (`params.control`): the trained model's taps, the same taps of
the denoiser at initialisation, or the model's input x_t itself (pseudo-layer `input`: the
denoiser is not run; same noise as every other row at this t).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.backbones.base import Backbone, Conditioning, extract_taps
from pipeline.backbones.prompts import (
    class_prompt,
    clip_zero_shot,
    load_clip,
    prompt_text,
    run_conditioning,
)
from pipeline.config import Params
from pipeline.data.datasets import read_classes
from pipeline.features.encode import latents_provenance
from pipeline.features.staging import (
    STAGING,
    fill_and_publish,
    forward_batch,
    no_barrier,
    shard_size_for,
    staged_store,
)
from pipeline.features.store import ArraySpec, FeatureStore, open_store, provenance_hash
from pipeline.features.views import Sample, load_view, samples_by_split
from pipeline.files import atomic_write
from pipeline.paths import latents_store

CLIP_IMAGE_SIZE = 224


def features_provenance(params: Params, latents: dict[str, Any], backbone: Backbone) -> dict[str, Any]:
    prompt = params.prompt
    if prompt == "from_clip":
        text = params.clip_template.format("{class}") + f" (class by CLIP {params.extract.clip_model})"
    else:
        text = prompt_text(prompt, params.extract.generic_prompt)
    return {
        **{k: v for k, v in latents.items() if k != "kind"},
        "kind": "features",
        "latents_provenance_hash": provenance_hash(latents),
        "control": params.control,
        "layer": params.key.layer,
        "t": params.t,
        "prompt": prompt,
        "prompt_text": text,
        "ensemble": params.extract.ensemble,
        "noise": backbone.noise_mode,
        "scheduler": type(backbone.scheduler).__name__,
        "extract_dtype": str(backbone.dtype).removeprefix("torch."),
        "fmap": params.extract.fmap,
        "forward_batch": forward_batch(params.extract),
        **({"init_seed": params.init_seed} if params.control == "init" else {}),
    }


def clip_choices(params: Params, backbone: Backbone, samples: dict[str, list[Sample]], root: Path) -> dict[str, Any]:
    """CLIP's class per sample (per split) and its top-1; cached beside the staging stores.

    It depends on the images, the CLIP model and the dataset's prompt template only, not on
    layer or t, so one cache file serves every extract key of a dataset.
    """
    classes = read_classes(params.dataset, root)
    key = provenance_hash({
        "latents": latents_provenance(params, root, backbone.dtype),
        "clip": params.extract.clip_model,
        "template": params.clip_template,
    })
    cache = root / STAGING / f"clip-{key}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    clip = load_clip(params.extract.clip_model, device=backbone.device)
    out: dict[str, Any] = {"clip_model": params.extract.clip_model, "predicted": {}, "top1": {}}
    for split, items in samples.items():
        images = torch.stack([load_view(s, CLIP_IMAGE_SIZE, params.extract.seed) for s in items])
        labels = [s.label for s in items]
        zs = clip_zero_shot(clip, images, classes, params.clip_template, labels=labels if min(labels) >= 0 else None)
        out["predicted"][split] = zs.predicted.tolist()
        out["top1"][split] = zs.accuracy
    atomic_write(cache, json.dumps(out))
    return out


def run_extract(
    params: Params,
    backbone: Backbone,
    root: Path = Path("."),
    *,
    rank: int = 0,
    world: int = 1,
    barrier: Callable[[], None] = no_barrier,
) -> FeatureStore | None:
    """Build (or resume) the features store for the params' key; rank 0 returns it published."""
    samples = samples_by_split(params, root)
    latents_prov = latents_provenance(params, root, backbone.dtype)
    latents = open_store(latents_store(params.dataset, params.model, root), latents_prov)
    provenance = features_provenance(params, latents_prov, backbone)

    if params.prompt == "from_clip":
        choices = clip_choices(params, backbone, samples, root)
        # One row per class prompt (text encoder runs once per class); images pick their row.
        classes = read_classes(params.dataset, root)
        cond = backbone.text_conditioning([class_prompt(c, params.clip_template) for c in classes])
        provenance["clip_top1"] = choices["top1"]
    else:
        choices = None
        cond = run_conditioning(backbone, params.prompt, params.extract.generic_prompt)

    layer = params.key.layer  # the pseudo-layer `input` for the input control

    def taps_for(split: str, start: int, stop: int, index: list[int], view: list[int]) -> torch.Tensor:
        x0 = torch.from_numpy(latents.read(split, "latents", start, stop))
        outs = []
        bs = params.extract.batch_size
        for b in range(0, stop - start, bs):
            rows: Conditioning = cond
            if choices is not None:
                rows = cond.rows(choices["predicted"][split][start + b : min(start + b + bs, stop)])
            out = extract_taps(
                backbone,
                x0[b : b + bs],
                params.t,
                rows,
                [layer],
                seed=params.extract.seed,
                indices=index[b : b + bs],
                views=view[b : b + bs],
                ensemble=params.extract.ensemble,
                batch_invariant=params.extract.batch_invariant,
            )
            outs.append(out[layer].cpu())
        return torch.cat(outs)

    # Probe one sample for the tap's shape (cheap: early exit at the layer).
    first_split = latents.splits()[0]
    probe = taps_for(first_split, 0, 1, latents.read(first_split, "index", 0, 1).tolist(), [0])
    channels, height, width = probe.shape[1:]
    arrays = [ArraySpec("pooled", (channels,), "float32", compress=True)]
    if params.extract.fmap:
        arrays.append(ArraySpec("fmap", (channels, height, width), "float16"))
    arrays += [
        ArraySpec("label", (), "int64", compress=True),
        ArraySpec("index", (), "int64", compress=True),
        ArraySpec("view", (), "int16", compress=True),
    ]
    if choices is not None:
        arrays.append(ArraySpec("clip_class", (), "int64", compress=True))
    sample_bytes = 4 * channels + (2 * channels * height * width if params.extract.fmap else 0)
    shard = shard_size_for(sample_bytes, params.extract.shard_size)
    final = params.key.features_store(root)
    sizes = {split: latents.num_samples(split) for split in latents.splits()}
    store = staged_store(final, provenance, sizes, arrays, shard, root, rank, barrier)

    def compute(split: str, chunk: list[Sample], start: int, stop: int) -> dict[str, np.ndarray]:
        # The sample metadata is read once and serves both the noise seeds and the store.
        meta = {name: latents.read(split, name, start, stop) for name in ("label", "index", "view")}
        taps = taps_for(split, start, stop, meta["index"].tolist(), meta["view"].tolist()).float()
        # Mean in fp32 over the fp32 taps (not the fp16 copy), as the authors pooled.
        out = {"pooled": taps.mean(dim=(2, 3)).numpy(), **meta}
        if params.extract.fmap:
            out["fmap"] = taps.to(torch.float16).numpy()
        if choices is not None:
            out["clip_class"] = np.asarray(choices["predicted"][split][start:stop], np.int64)
        return out

    desc = f"extract {params.control} {layer} t={params.t}"
    return fill_and_publish(store, final, samples, compute, rank=rank, world=world, barrier=barrier, desc=desc)
