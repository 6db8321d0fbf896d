"""The `fit_diffc` stage: train Diff-C (pipeline.diffc.model) on `train/fmap` of the current key's
feature store (every cached view), evaluate on `test/fmap` after each epoch.

Writes `models/diffc/<dataset>/<model>/<layer>/t<t>/`:
- `model.safetensors`, `config.json` (pipeline.diffc.model.load_diffc reads them; the config's
  `extra` holds the class names, the key and the features' provenance hash, so that
  `revelio classify` can rebuild the whole image → class path from this folder alone);
- `metrics.json` — final test top-1 / top-5, epochs, parameters;
and the per-epoch curve `reports/diffc/<dataset>/<model>/<layer>/t<t>.csv` (a DVC plot).
An interrupted run resumes after its last finished epoch (checkpoint beside the output).
How long it took goes to `reports/timings.json` (pipeline.timings), not into the outputs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from pipeline.config import Params
from pipeline.curves import write_curve
from pipeline.data.datasets import read_classes
from pipeline.devices import resolve_device, resolve_dtype
from pipeline.diffc.model import save_diffc
from pipeline.diffc.train import DiffcFit, train_diffc, training_fingerprint
from pipeline.errors import StoreError
from pipeline.features.loaders import FmapLoader
from pipeline.features.store import open_store, provenance_hash
from pipeline.files import publish_dir
from pipeline.paths import checkpoint_dir
from pipeline.timings import record_fit_timing

CURVE_FIELDS = ("epoch", "train_loss", "test_loss", "test_top1", "test_top5", "lr")


def run_fit_diffc(params: Params, root: Path = Path("."), *, progress: bool = True) -> dict[str, Any]:
    """Train (or resume), save, return the metrics."""
    hp = params.diffc
    store_path = params.key.features_store(root)
    store = open_store(store_path)
    for split in ("train", "test"):
        if split not in store.splits() or not store.has_array(split, "fmap"):
            raise StoreError(
                f"{store_path}: no {split}/fmap array to train Diff-C on (extract.fmap must be true)"
            )
    classes = read_classes(params.dataset, root)
    device = resolve_device(hp.device)
    amp_dtype = resolve_dtype(hp.dtype, device)
    train = FmapLoader(store, "train", hp.batch_size, shuffle=True, seed=hp.seed)
    test = FmapLoader(store, "test", max(hp.batch_size, 256), shuffle=False)
    out_dir = params.key.diffc_dir(root)
    ckpt = checkpoint_dir(out_dir)
    store_hash = provenance_hash(store.provenance)
    fingerprint = training_fingerprint(hp, store=store_hash, classes=classes)
    shape = tuple(store.array("train", "fmap").shape[1:])
    print(
        f"Diff-C on {store_path}: {store.num_samples('train')} train / {store.num_samples('test')} test maps "
        f"of {'x'.join(map(str, shape))}, {len(classes)} classes, width {hp.width}, {hp.epochs} epochs at batch "
        f"{hp.batch_size}; {device}, {str(amp_dtype).removeprefix('torch.')}"
    )
    fit: DiffcFit = train_diffc(
        train, test, len(classes), hp, device=device, amp_dtype=amp_dtype, ckpt_dir=ckpt,
        fingerprint=fingerprint, progress=progress,
    )
    metrics = {
        "test_top1": fit.test_top1,
        "test_top5": fit.test_top5,
        "epochs": len(fit.curve),
        "num_parameters": sum(p.numel() for p in fit.model.parameters()),
    }
    extra = {
        "classes": classes,
        "dataset": params.dataset,
        "model": params.model,
        "layer": params.layer,
        "t": params.t,
        "prompt": params.prompt,
        "features_provenance_hash": store_hash,
        "fmap_shape": list(shape),
        "training": hp.model_dump(),
        "amp_dtype": str(amp_dtype).removeprefix("torch."),
        "device": str(device),
        "metrics": metrics,
    }
    with publish_dir(out_dir) as tmp:
        save_diffc(fit.model, fit.cfg, tmp, extra=extra)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_curve(params.key.diffc_curve(root), fit.curve, CURVE_FIELDS)
    shutil.rmtree(ckpt, ignore_errors=True)
    record_fit_timing("fit_diffc", "Diff-C", params.key, fit, root)
    return metrics
