"""Choose Diff-C's recipe on a validation split carved from train, never on test.

    python -m bench.diffc_recipe features/fashion_mnist/fmnist-ddpm/trained/bottleneck/t25.zarr \
        [--fraction 0.1] [--seeds 0 1 2] [--grid width=32,64,128 dropout=0,0.2 lr=0.001,0.003 epochs=10,20]

A stratified, seeded `--fraction` of each class of the store's train split is held out
(pipeline.features.loaders.carve_validation); every combination of the grid trains on the
rest with the pipeline's own loop (pipeline.diffc.train.train_diffc, the fit_diffc stage's
settings for everything not in the grid: params.yaml's diffc block), once per seed, and is
scored on the held-out split after its last epoch (the split plays `test` in the loop's curve). Prints one line per combination, mean ±
std over seeds, best first; the linear probe (pipeline.report.probe's recipe) on the same split is the
baseline measured in the same run. The test split is never read.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.config import load_params
from pipeline.devices import resolve_device, resolve_dtype
from pipeline.diffc.train import train_diffc
from pipeline.features.loaders import FmapLoader, carve_validation
from pipeline.features.store import open_store
from pipeline.report.probe import probe_inputs, probe_top1

DEFAULT_GRID = ("width=32,64,128", "dropout=0,0.2", "lr=0.001,0.003", "epochs=10,20")


def parse_grid(items: list[str]) -> dict[str, list]:
    grid = {}
    for item in items:
        name, _, values = item.partition("=")
        grid[name] = [float(v) if "." in v or "e" in v else int(v) for v in values.split(",")]
    return grid


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", type=Path)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--grid", nargs="+", default=list(DEFAULT_GRID))
    args = parser.parse_args(argv)

    params = load_params(args.params)
    store = open_store(args.store)
    labels = store.read("train", "label")
    fit_rows, val_rows = carve_validation(labels, args.fraction, args.split_seed)
    num_classes = int(labels.max()) + 1
    device = resolve_device(params.diffc.device)
    amp = resolve_dtype(params.diffc.dtype, device)

    x, _ = probe_inputs(store, "train", store.provenance.get("layer", ""))
    ev = params.eval
    base = probe_top1(x[fit_rows], labels[fit_rows], x[val_rows], labels[val_rows], ev.probe_c, ev.probe_max_iter)
    print(f"{args.store}: {len(fit_rows)} fit / {len(val_rows)} validation images; linear probe {100 * base:.2f}%")

    grid = parse_grid(args.grid)
    results = []
    for values in itertools.product(*grid.values()):
        change = dict(zip(grid, values))
        if "lr" in change:
            change.setdefault("lr_min", change["lr"] / 2)  # the paper's ratio (1e-4 → 5e-5)
        hp = params.diffc.model_copy(update=change)
        accs, start = [], time.perf_counter()
        val = FmapLoader(store, "train", 256, shuffle=False, rows=val_rows, in_memory=True)
        for seed in args.seeds:
            train = FmapLoader(store, "train", hp.batch_size, seed=seed, rows=fit_rows, in_memory=True)
            with tempfile.TemporaryDirectory() as ckpt:
                fit = train_diffc(train, val, num_classes, hp, seed=seed, device=device, amp_dtype=amp,
                                  ckpt_dir=Path(ckpt), fingerprint="recipe", progress=False)
            accs.append(100 * fit.test_top1)
        seconds = (time.perf_counter() - start) / len(args.seeds)
        results.append((float(np.mean(accs)), float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0, change, seconds))
        print(f"  {change}: {results[-1][0]:.2f} ± {results[-1][1]:.2f}% ({seconds:.0f} s per seed)", flush=True)
    print("best first (validation top-1, mean ± std over seeds; the probe: %.2f%%):" % (100 * base))
    for mean, std, change, seconds in sorted(results, key=lambda r: -r[0]):
        print(f"  {mean:6.2f} ± {std:.2f}  {change}  ({seconds:.0f} s per seed)")


if __name__ == "__main__":
    main()
