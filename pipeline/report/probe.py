"""The linear probe: how much class information a row's vectors carry for a standard linear
classifier, the yardstick Diff-C must beat to earn its place.

A multinomial logistic regression (scikit-learn, lbfgs, L2 with a fixed C = `eval.probe_c`,
inputs standardised on train) fitted on the train split and scored on test. Its input is the
row's pooled vector (spatial mean, what the k-SAE sees), except for the `input` control, whose
pooled vector is one number per image channel: there it is the flattened input x_t. lbfgs is
deterministic, so the probe is as reproducible as the store.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pipeline.features.store import FeatureStore
from pipeline.paths import INPUT_LAYER


@dataclass(frozen=True)
class ProbeResult:
    top1: float
    inputs: str  # "pooled" or "flattened fmap"
    dim: int


def probe_inputs(store: FeatureStore, split: str, layer: str) -> tuple[np.ndarray, str]:
    """(N, D) float32 vectors the probe sees for `split`, and what they are."""
    if layer == INPUT_LAYER:
        fmap = store.read(split, "fmap")
        return fmap.reshape(len(fmap), -1).astype(np.float32), "flattened fmap"
    return store.read(split, "pooled").astype(np.float32, copy=False), "pooled"


def probe_top1(x_fit: np.ndarray, y_fit: np.ndarray, x_eval: np.ndarray, y_eval: np.ndarray, c: float, max_iter: int) -> float:
    """The probe fitted on (x_fit, y_fit), its top-1 on (x_eval, y_eval)."""
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
    model.fit(x_fit, y_fit)
    return float((model.predict(x_eval) == y_eval).mean())


def linear_probe(store: FeatureStore, layer: str, c: float, max_iter: int) -> ProbeResult:
    """Fit on `train`, top-1 on `test`."""
    x_train, inputs = probe_inputs(store, "train", layer)
    x_test, _ = probe_inputs(store, "test", layer)
    top1 = probe_top1(x_train, store.read("train", "label"), x_test, store.read("test", "label"), c, max_iter)
    return ProbeResult(top1=top1, inputs=inputs, dim=int(x_train.shape[1]))
