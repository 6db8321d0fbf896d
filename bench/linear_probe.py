"""A quick read of how much class information pooled taps carry: linear-probe top-1.

    python -m bench.linear_probe features/fashion_mnist/fmnist-ddpm/bottleneck/t25.zarr [...]

For each store: a multinomial logistic regression (scikit-learn, standardized inputs) fitted
on `train/pooled`, top-1 on `test/pooled`. The baseline, measured in the same run, is the same
probe on the raw model input (`latents.zarr` beside the store: pixels for pixel models).
This is a measurement aid, not the paper's Diff-C (which trains on full feature maps).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pipeline.features.store import open_store


def probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> float:
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(x_train, y_train)
    return float((model.predict(x_test) == y_test).mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stores", nargs="+", type=Path)
    args = parser.parse_args(argv)
    latents = open_store(args.stores[0].parents[1] / "latents.zarr")
    flat = {s: latents.read(s, "latents").reshape(latents.num_samples(s), -1) for s in ("train", "test")}
    base = probe(flat["train"], latents.read("train", "label"), flat["test"], latents.read("test", "label"))
    print(f"raw model input ({flat['train'].shape[1]} values): top-1 {base:.4f}")
    for path in args.stores:
        store = open_store(path)
        acc = probe(
            store.read("train", "pooled"), store.read("train", "label"),
            store.read("test", "pooled"), store.read("test", "label"),
        )
        prov = store.provenance
        print(
            f"{path}: top-1 {acc:.4f} ({acc / base:.3f}x raw)  "
            f"[weights {prov['weights_sha256'][:12]}, layer {prov['layer']}, t {prov['t']}]"
        )


if __name__ == "__main__":
    main()
