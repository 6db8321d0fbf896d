"""The `fit_diffc` stage: train Diff-C (pipeline.diffc.model) on `train/fmap` of the current key's
feature store (every cached view), once per seed of `diffc.seeds`, evaluate on `test/fmap`
after each epoch.

Writes `models/diffc/<dataset>/<model>/<control>/<layer>/t<t>/`:
- `seed<s>/model.safetensors`, `seed<s>/config.json` per seed (pipeline.diffc.model.load_diffc
  reads them; the config's `extra` holds the class names, the key and the features'
  provenance hash, so that `revelio classify` can rebuild the whole image → class path from
  this folder alone);
- `metrics.json` — per-seed last-epoch test top-1 / top-5, their mean and std (ddof 1),
  epochs, parameters; with `diffc.val_fraction` > 0, also `best`: per seed the epoch of highest
  top-1 on a validation split carved from train (`carve_validation`, whole images, the same
  rows for every seed) and that epoch's test top-1, labelled apart from the last epoch's;
and the per-epoch curves `reports/diffc/<dataset>/<model>/<control>/<layer>/t<t>/seed<s>.csv`
(a DVC plot per seed). An interrupted run resumes: finished seeds are kept, the current one
resumes after its last finished epoch (checkpoints beside the output).
How long it took goes to `reports/timings.json` (pipeline.timings), not into the outputs.

On a CPU the seeds train at once, each in its own process with `seed_threads` threads
(`torch.get_num_threads() // len(seeds)`, at least 1). A seed's result depends on that thread
count only (oneDNN splits reductions per thread), never on which seeds share the machine or
in which order they finish, so it is the same as training that seed alone with as many
threads. Small Diff-Cs barely use a second thread: `python -m bench.diffc --seeds 3` on 2
cores measured 2.5× the steps per second side by side on 128×4×4 maps and 1.5× on 1×32×32
ones, though the whole stage gained less (46 → 36 s and 203 → 194 s: each worker imports
torch and reads its split itself). On a GPU the seeds train one after another in this process.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.allocator import keep_freed_memory
from pipeline.config import DiffcParams, Params
from pipeline.curves import write_curve
from pipeline.data.datasets import read_classes
from pipeline.devices import resolve_device, resolve_dtype
from pipeline.diffc.model import save_diffc
from pipeline.diffc.train import DiffcFit, train_diffc, training_fingerprint
from pipeline.errors import DataError, StoreError
from pipeline.features.loaders import FmapLoader, carve_validation
from pipeline.features.store import FeatureStore, open_store, provenance_hash
from pipeline.files import publish_dir
from pipeline.paths import checkpoint_dir
from pipeline.timings import record_timing

CURVE_FIELDS = ("epoch", "train_loss", "test_loss", "test_top1", "test_top5", "lr")
# With a validation split the curve gains its columns (after train_loss).
VAL_CURVE_FIELDS = (
    "epoch", "train_loss", "val_loss", "val_top1", "test_loss", "test_top1", "test_top5", "lr"
)
# The validation split's seed: one split for every Diff-C seed (so their best epochs are read
# on the same rows), and the split `bench.diffc_recipe` chose the embedded recipe on.
VALIDATION_SEED = 0


def seed_dir(out_dir: Path, seed: int) -> Path:
    """The Diff-C folder of one seed inside a `fit_diffc` output."""
    return Path(out_dir) / f"seed{seed}"


def seed_curve(curve_dir: Path, seed: int) -> Path:
    return Path(curve_dir) / f"seed{seed}.csv"


def validation_rows(store: FeatureStore, fraction: float) -> tuple[np.ndarray, np.ndarray] | None:
    """(fit rows, validation rows) of the store's train split, or None for `fraction` 0."""
    if fraction == 0:
        return None
    labels, index = store.read("train", "label"), store.read("train", "index")
    fit, val = carve_validation(labels, fraction, VALIDATION_SEED, groups=index)
    if len(val) == 0 or len(fit) < 2:
        raise DataError(
            f"{store.path}: diffc.val_fraction = {fraction} of {len(np.unique(index))} train images leaves "
            f"{len(fit)} to train on and {len(val)} to validate on; choose a fraction that leaves both"
        )
    return fit, val


def summarise(seeds: list[int], fits: list[DiffcFit], val_fraction: float = 0.0) -> dict[str, Any]:
    """The metrics of a multi-seed fit: per seed, mean and sample std (0 for one seed); the
    last epoch's, and the best epoch's on the validation split when there is one."""
    top1 = np.array([f.test_top1 for f in fits])
    top5 = np.array([f.test_top5 for f in fits])
    spread = (lambda v: float(v.std(ddof=1))) if len(fits) > 1 else (lambda v: 0.0)
    best = [f.best for f in fits]
    best_block: dict[str, Any] = {}
    if all(b is not None for b in best):
        best_top1 = np.array([b.test_top1 for b in best])
        best_block = {"best": {
            "chosen_on": f"validation split: {val_fraction:g} of train, carved per class (never test)",
            "epoch": [b.epoch for b in best],
            "val_top1": [b.val_top1 for b in best],
            "test_top1": best_top1.tolist(),
            "top1_mean": float(best_top1.mean()),
            "top1_std": spread(best_top1),
        }}
    return {
        "seeds": list(seeds),
        "test_top1": top1.tolist(),
        "test_top5": top5.tolist(),
        "top1_mean": float(top1.mean()),
        "top1_std": spread(top1),
        "top5_mean": float(top5.mean()),
        "top5_std": spread(top5),
        "epochs": len(fits[0].curve),
        "num_parameters": sum(p.numel() for p in fits[0].model.parameters()),
        **best_block,
    }


def seed_threads(device: torch.device, num_seeds: int) -> int | None:
    """Threads each seed trains with: None = the process's own (GPU, or a single seed), else
    an even share of the CPU threads, at least one, whatever the seeds' schedule."""
    if device.type != "cpu" or num_seeds == 1:
        return None
    return max(1, torch.get_num_threads() // num_seeds)


Loaders = tuple[FmapLoader, FmapLoader, FmapLoader | None]
Split = tuple[np.ndarray, np.ndarray] | None  # (fit rows, validation rows) of train, or None


def _loaders(store: FeatureStore, hp: DiffcParams, seed: int, split: Split) -> Loaders:
    """(train, test, validation or None) loaders of one store."""
    eval_batch = max(hp.batch_size, 256)
    fit_rows, val_rows = split if split is not None else (None, None)
    train = FmapLoader(store, "train", hp.batch_size, shuffle=True, seed=seed, rows=fit_rows)
    test = FmapLoader(store, "test", eval_batch, shuffle=False)
    val = None if val_rows is None else FmapLoader(store, "train", eval_batch, shuffle=False, rows=val_rows)
    return train, test, val


def _fit_seed(params: Params, root: Path, seed: int, threads: int | None, progress: bool, split: Split,
              position: int = 0, loaders: Loaders | None = None) -> DiffcFit:
    """Train (or resume) the Diff-C of one seed; a worker process's whole job."""
    if threads is not None:
        torch.set_num_threads(threads)
    hp, key = params.diffc, params.key
    store = open_store(key.features_store(root))
    classes = read_classes(params.dataset, root)
    device = resolve_device(hp.device)
    train, test, val = loaders if loaders is not None else _loaders(store, hp, seed, split)
    train.seed = seed
    return train_diffc(
        train, test, len(classes), hp, seed=seed, device=device, amp_dtype=resolve_dtype(hp.dtype, device),
        val=val,
        # Each seed has its own checkpoint, kept until all seeds are done: a rerun after an
        # interruption restores the finished seeds at once and resumes the others.
        ckpt_dir=checkpoint_dir(key.diffc_dir(root)) / f"seed{seed}",
        fingerprint=training_fingerprint(hp, seed=seed, store=provenance_hash(store.provenance), classes=classes),
        progress=progress, progress_position=position,
    )


def _die_with_parent() -> None:
    """Pool initializer (Linux): the kernel kills this worker when the stage process dies, even
    by SIGKILL, so no orphan goes on training and writing checkpoints beside a rerun. It also
    keeps freed memory as the stage process does (a spawned worker starts with glibc's
    defaults)."""
    keep_freed_memory()
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _fit_seeds(params: Params, root: Path, threads: int | None, progress: bool, split: Split) -> list[DiffcFit]:
    seeds = params.diffc.seeds
    if threads is None:
        # One set of loaders for all seeds, reseeded per seed: an in-memory split is read once.
        loaders = _loaders(open_store(params.key.features_store(root)), params.diffc, seeds[0], split)
        return [_fit_seed(params, root, s, None, progress, split, loaders=loaders) for s in seeds]
    # spawn, not fork: the parent has already started torch's thread pools. At most two
    # processes per thread: more seeds than that queue (each keeps its own thread count).
    workers = min(len(seeds), 2 * torch.get_num_threads())
    with multiprocessing.get_context("spawn").Pool(workers, initializer=_die_with_parent) as pool:
        jobs = [pool.apply_async(_fit_seed, (params, root, s, threads, progress, split, i))
                for i, s in enumerate(seeds)]
        try:
            return [job.get() for job in jobs]
        except BaseException:
            # One seed failed (or Ctrl-C): stop the others now; every seed's checkpoint of
            # its last finished epoch stays for the rerun.
            pool.terminate()
            raise


def run_fit_diffc(params: Params, root: Path = Path("."), *, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) one Diff-C per seed, save them, return the metrics."""
    hp = params.diffc
    key = params.key
    store_path = key.features_store(root)
    store = open_store(store_path)
    for split in ("train", "test"):
        if split not in store.splits() or not store.has_array(split, "fmap"):
            raise StoreError(
                f"{store_path}: no {split}/fmap array to train Diff-C on (extract.fmap must be true)"
            )
    classes = read_classes(params.dataset, root)
    device = resolve_device(hp.device)
    amp_dtype = resolve_dtype(hp.dtype, device)
    out_dir = key.diffc_dir(root)
    ckpt = checkpoint_dir(out_dir)
    store_hash = provenance_hash(store.provenance)
    shape = tuple(store.array("train", "fmap").shape[1:])
    threads = seed_threads(device, len(hp.seeds))
    schedule = "one after another" if threads is None else f"side by side, {threads} thread(s) each"
    split = validation_rows(store, hp.val_fraction)  # once, checked before any worker starts
    train_maps = f"{store.num_samples('train')} train"
    if split is not None:
        train_maps = f"{len(split[0])} train + {len(split[1])} validation ({hp.val_fraction:g} of train)"
    print(
        f"Diff-C on {store_path}: {train_maps} / {store.num_samples('test')} test maps "
        f"of {'x'.join(map(str, shape))}, {len(classes)} classes, width {hp.width}, {hp.epochs} epochs at batch "
        f"{hp.batch_size}, seeds {hp.seeds} ({schedule}); {device}, {str(amp_dtype).removeprefix('torch.')}"
    )
    fits = _fit_seeds(params, root, threads, progress, split)
    metrics = summarise(hp.seeds, fits, hp.val_fraction)
    extra = {
        "classes": classes,
        "dataset": params.dataset,
        "model": params.model,
        "control": key.control,
        "layer": key.layer,
        "t": params.t,
        "prompt": params.prompt,
        "features_provenance_hash": store_hash,
        "fmap_shape": list(shape),
        "training": hp.model_dump(),
        "amp_dtype": str(amp_dtype).removeprefix("torch."),
        "device": str(device),
    }
    with publish_dir(out_dir) as tmp:
        for seed, fit in zip(hp.seeds, fits, strict=True):
            own: dict[str, Any] = {"test_top1": fit.test_top1, "test_top5": fit.test_top5}
            if fit.best is not None:
                b = fit.best
                own["best"] = {"epoch": b.epoch, "val_top1": b.val_top1, "test_top1": b.test_top1}
            save_diffc(fit.model, fit.cfg, seed_dir(tmp, seed), extra={**extra, "seed": seed, "metrics": own})
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    curves = key.diffc_curves(root)
    with publish_dir(curves) as tmp:
        for seed, fit in zip(hp.seeds, fits, strict=True):
            fields = CURVE_FIELDS if fit.best is None else VAL_CURVE_FIELDS
            write_curve(seed_curve(tmp, seed), fit.curve, fields)
    shutil.rmtree(ckpt, ignore_errors=True)
    train_seconds = sum(f.train_seconds for f in fits)
    samples = sum(f.samples_per_s * f.train_seconds for f in fits)
    print(f"Diff-C trained {len(fits)} seeds: {train_seconds:.1f} s of training in all, "
          f"{samples / max(train_seconds, 1e-9):.0f} samples/s per seed")
    record_timing("fit_diffc", key, {
        "train_seconds": train_seconds,
        "train_samples_per_s": samples / train_seconds if train_seconds > 0 else 0.0,
        "resumed_from": [f.resumed_from for f in fits],
    }, root)
    return metrics
