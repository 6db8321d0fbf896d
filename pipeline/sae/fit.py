"""The `fit_sae` stage: train a k-SAE on `train/pooled` of the current key's feature store,
then scan train and test once with it.

Writes `models/sae/<dataset>/<model>/<control>/<layer>/t<t>/`:
- `sae.safetensors`, `config.json` — the model (pipeline.sae.model.load_sae reads both);
- `codes.safetensors` — per latent, the top `sae.top_images` train images with their values
  and the sums/counts of its activations, dense pre-TopK (σ_label's input) and TopK codes
  (pipeline.sae.scan), over each train image once (view 0); plus the train split's manifest
  rows and labels the positions refer to, and the fire counts;
- `metrics.json` — FVU, L0, dead and never-fired latents on train and test;
and the training curve `reports/sae/<dataset>/<model>/<control>/<layer>/t<t>.csv` (a DVC plot).
How long it took goes to `reports/timings.json` (pipeline.timings), not into the outputs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from pipeline.config import Params, SaeParams
from pipeline.curves import write_curve
from pipeline.devices import resolve_device, resolve_dtype
from pipeline.errors import ConfigError, StoreError
from pipeline.features.loaders import load_pooled
from pipeline.features.store import open_store, provenance_hash
from pipeline.files import publish_dir
from pipeline.paths import checkpoint_dir
from pipeline.sae.model import SaeConfig, save_sae
from pipeline.sae.scan import SplitScan, scan_split
from pipeline.sae.train import CURVE_FIELDS, SaeFit, dead_window, train_sae
from pipeline.timings import record_fit_timing


def _split_metrics(scan: SplitScan) -> dict[str, Any]:
    n = len(scan.fire_count)
    return {
        "fvu": scan.fvu,
        "l0": scan.l0,
        "num_samples": scan.num_samples,
        # Latents chosen for no sample of this split by the final model.
        "unused_pct": 100.0 * float((scan.fire_count == 0).sum()) / n,
    }


def sae_metrics(fit: SaeFit, train: SplitScan, test: SplitScan | None, hp: SaeParams) -> dict[str, Any]:
    n = fit.model.num_latents
    window = dead_window(hp, fit.steps)
    out: dict[str, Any] = {
        "num_latents": n,
        "k": fit.model.cfg.k,
        "steps": fit.steps,
        "samples_seen": fit.samples_seen,
        "train": {
            **_split_metrics(train),
            # Training-time bookkeeping: no firing in the last `window` samples / ever.
            "dead_window": window,
            "dead_pct": 100.0 * float((fit.since_fired >= window).sum()) / n,
            "never_fired_pct": 100.0 * float((~fit.ever_fired).sum()) / n,
        },
    }
    if test is not None:
        out["test"] = _split_metrics(test)
        # On test "dead" can only mean: fires on none of its samples.
        out["test"]["dead_pct"] = out["test"]["unused_pct"]
    return out


def run_fit_sae(params: Params, root: Path = Path("."), *, progress: bool = True) -> dict[str, Any]:
    """Train, scan and save; returns the metrics."""
    hp = params.sae
    store_path = params.key.features_store(root)
    store = open_store(store_path)
    if "train" not in store.splits() or not store.has_array("train", "pooled"):
        raise StoreError(f"{store_path}: no train/pooled array to fit the k-SAE on")
    train = load_pooled(store, "train")
    test = load_pooled(store, "test") if "test" in store.splits() else None
    device = resolve_device(hp.device)
    select_dtype = resolve_dtype(hp.dtype, device)
    cfg = SaeConfig(d_in=train.x.shape[1], expansion=hp.expansion, k=hp.k, decoder_init=hp.decoder_init)
    if cfg.k > cfg.num_latents:
        raise ConfigError(f"sae.k = {hp.k} exceeds the {cfg.num_latents} latents (expansion x d)")
    out_dir = params.key.sae_dir(root)
    ckpt = checkpoint_dir(out_dir)
    print(
        f"k-SAE on {store_path}: {len(train.x)} train samples, d = {cfg.d_in}, {cfg.num_latents} latents, "
        f"k = {cfg.k}, {hp.num_samples} samples at batch {hp.batch_size}; {device}, selection in "
        f"{str(select_dtype).removeprefix('torch.')}"
    )
    fit = train_sae(train.x, cfg, hp, device=device, select_dtype=select_dtype, ckpt=ckpt, progress=progress)

    # σ_label and the figures are about images: each train image once (its view 0).
    image_rows = train.view == 0
    train_scan = scan_split(
        fit.model, train.x, stats_rows=image_rows, top_m=hp.top_images, device=device,
        desc="k-SAE train codes", progress=progress,
    )
    test_scan = (
        scan_split(fit.model, test.x, device=device, desc="k-SAE test codes", progress=progress)
        if test is not None and len(test.x)
        else None
    )
    metrics = sae_metrics(fit, train_scan, test_scan, hp)

    with publish_dir(out_dir) as tmp:
        save_sae(
            fit.model,
            tmp,
            extra={
                "dataset": params.dataset,
                "model": params.model,
                "control": params.key.control,
                "layer": params.key.layer,
                "t": params.t,
                "features": str(store_path.relative_to(root)) if store_path.is_relative_to(root) else str(store_path),
                "features_provenance_hash": provenance_hash(store.provenance),
                "training": hp.model_dump(),
                "select_dtype": str(select_dtype).removeprefix("torch."),
                "device": str(device),
            },
        )
        assert train_scan.stats is not None
        codes = {
            **train_scan.stats.as_arrays(),
            "train_index": train.index.astype(np.int64),
            "train_label": train.label.astype(np.int64),
            "train_view": train.view.astype(np.int64),
            "train_fire_count": train_scan.fire_count,
            "since_fired": fit.since_fired.numpy(),
            "ever_fired": fit.ever_fired.numpy().astype(np.uint8),
        }
        if test_scan is not None:
            codes["test_fire_count"] = test_scan.fire_count
        save_file({k: np.ascontiguousarray(v) for k, v in codes.items()}, str(tmp / "codes.safetensors"))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_curve(params.key.sae_curve(root), fit.curve, CURVE_FIELDS)
    shutil.rmtree(ckpt, ignore_errors=True)
    record_fit_timing("fit_sae", "k-SAE", params.key, fit, root)
    return metrics
