"""How class-pure the k-SAE's most active latents are: σ_label (the paper's Sec. 4.2) and two
order-free purity scores.

σ_label exactly as the authors compute it (their `save_feature.py`):
- activation of latent j on train image i: ReLU of the dense pre-TopK encoder output;
- rank latents by (mean activation over the images it fires on) × (fires on more than
  `min_fires` images); latents that fire on `min_fires` images or fewer are not ranked;
- per latent, the `top_images` most activating images; σ_j = unbiased std of their integer
  class ids;
- σ_label@N = mean σ_j over the N best-ranked latents. N is clipped to the number of ranked
  latents (the authors' code averaged dead latents' arbitrary images in) and reported.
The std of class ids depends on the arbitrary order of the classes (confusing classes 0 and 1
costs less than 0 and 9), so next to it, per latent over the same top images:
- majority: the fraction of images in the most frequent class (1 = pure);
- entropy: the Shannon entropy of their class distribution, in bits (0 = pure).
Ties are broken by the lower index: latents of equal score by latent id, images of equal
activation by sample position (as pipeline.sae.scan stores them).

The same scores on the TopK codes (a latent fires where it is among the k chosen) are the
`code` variant: the dense pre-TopK ranking is the authors' choice, not the only one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from pipeline.sae.scan import LatentStats


@dataclass(frozen=True)
class Purity:
    sigma_label: float
    majority: float
    entropy: float
    num_latents: int  # N used: min(requested, ranked)
    requested: int
    ranked: int  # latents firing on more than min_fires images

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def rank_latents(act_sum: np.ndarray, fire_count: np.ndarray, min_fires: int) -> np.ndarray:
    """Latent ids that fire on more than `min_fires` images, best first (ties: lower id)."""
    act_sum = np.asarray(act_sum, np.float64)
    fire_count = np.asarray(fire_count, np.int64)
    mean_act = np.divide(act_sum, fire_count, out=np.zeros_like(act_sum), where=fire_count > 0)
    ranked = np.flatnonzero(fire_count > min_fires)
    order = np.argsort(-mean_act[ranked], kind="stable")
    return ranked[order]


def purity(
    act_sum: np.ndarray,
    fire_count: np.ndarray,
    top_rows: np.ndarray,
    row_labels: np.ndarray,
    *,
    top_latents: int = 1000,
    top_images: int = 10,
    min_fires: int = 10,
) -> Purity:
    """σ_label, majority and entropy over the `top_latents` best latents.

    top_rows (n, M): per latent its most activating sample positions, best first, -1 where it
    fires on fewer; row_labels: the class id of each sample position. Only firing images count
    (with min_fires >= top_images - 1, as by default, every ranked latent has top_images).
    """
    order = rank_latents(act_sum, fire_count, min_fires)
    chosen = order[:top_latents]
    if top_images > top_rows.shape[1]:
        raise ValueError(f"top_images = {top_images} but only {top_rows.shape[1]} top images are stored per latent")
    if len(chosen):
        majority, entropy, sigma = (
            float(np.nanmean(v)) for v in latent_purity(np.asarray(top_rows)[chosen], row_labels, top_images)
        )
    else:
        sigma = majority = entropy = float("nan")
    return Purity(sigma, majority, entropy, len(chosen), top_latents, len(order))


def purity_of_stats(
    stats: LatentStats, row_labels: np.ndarray, *, variant: str = "dense", top_latents: int = 1000,
    top_images: int = 10, min_fires: int = 10,
) -> Purity:
    """`purity` from a fit_sae codes file: variant "dense" (the paper's) or "code" (TopK codes)."""
    if variant == "dense":
        args = (stats.dense_sum, stats.dense_count, stats.dense_top_row)
    elif variant == "code":
        args = (stats.code_sum, stats.code_count, stats.code_top_row)
    else:
        raise ValueError(f"variant = {variant!r}; valid: dense, code")
    return purity(*args, row_labels, top_latents=top_latents, top_images=top_images, min_fires=min_fires)


def purity_of_activations(
    acts: np.ndarray, labels: np.ndarray, *, top_latents: int = 1000, top_images: int = 10, min_fires: int = 10
) -> Purity:
    """The same from a whole (images, latents) activation matrix (ReLU applied here): the
    direct definition, for small cases and tests."""
    acts = np.maximum(np.asarray(acts, np.float64), 0.0)
    fires = acts > 0
    top = np.full((acts.shape[1], top_images), -1, np.int64)
    for j in range(acts.shape[1]):
        firing = np.flatnonzero(fires[:, j])
        best = firing[np.argsort(-acts[firing, j], kind="stable")][:top_images]
        top[j, : len(best)] = best
    return purity(
        acts.sum(0), fires.sum(0), top, labels, top_latents=top_latents, top_images=top_images, min_fires=min_fires
    )


def latent_class_counts(
    top_rows: np.ndarray, row_labels: np.ndarray, top_images: int
) -> tuple[np.ndarray, np.ndarray]:
    """(classes, counts): the distinct class ids among all latents' first `top_images` firing
    top images (sorted), and per latent (n, len(classes)) how many of its images are of each.

    top_rows (n, M) sample positions, -1 = none; row_labels: class id of each sample position.
    """
    top_rows = np.asarray(top_rows)
    if top_images > top_rows.shape[1]:
        raise ValueError(f"top_images = {top_images} but only {top_rows.shape[1]} top images are stored per latent")
    rows = top_rows[:, :top_images]
    valid = rows >= 0
    n = len(rows)
    row_labels = np.asarray(row_labels)
    labels = row_labels[np.where(valid, rows, 0)] if len(row_labels) else np.zeros(rows.shape, np.int64)
    # Compact class ids (labels may be -1 for unlabelled data, or sparse).
    classes, compact = np.unique(labels[valid], return_inverse=True)
    width = max(len(classes), 1)
    flat = np.repeat(np.arange(n), valid.sum(1)) * width + compact.reshape(-1)
    counts = np.bincount(flat, minlength=n * width).reshape(n, width)
    return classes, counts[:, : len(classes)]


def latent_purity(
    top_rows: np.ndarray, row_labels: np.ndarray, top_images: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per latent (majority fraction, entropy in bits, unbiased std of class ids) of its first
    `top_images` firing top images, for all latents at once (vectorised: a paper-sized k-SAE
    has 81,920). NaN for a latent with no firing image; σ is 0
    with one image.

    top_rows (n, M) sample positions, -1 = none; row_labels: class id of each sample position.
    """
    classes, counts = latent_class_counts(top_rows, row_labels, top_images)
    counts = counts.astype(np.float64)
    num = counts.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        majority = counts.max(1, initial=0.0) / num
        p = counts / num[:, None]
        entropy = -(p * np.log2(np.where(p > 0, p, 1.0))).sum(1) + 0.0
        ids = classes.astype(np.float64)
        mean = (counts * ids).sum(1) / num
        sq = (counts * (ids[None, :] - mean[:, None]) ** 2).sum(1)
        sigma = np.sqrt(sq / np.maximum(num - 1, 1))
    sigma = np.where(num == 1, 0.0, sigma)
    none = num == 0
    majority[none] = entropy[none] = sigma[none] = np.nan
    return majority, entropy, sigma
