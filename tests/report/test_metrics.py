"""σ_label and the purity scores (pipeline.report.metrics) against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.report.metrics import purity_of_activations, purity_of_stats, rank_latents
from pipeline.sae.model import KSae, SaeConfig
from pipeline.sae.scan import scan_split

LABELS = np.array([0, 1, 2, 3, 2, 2, 0, 3])
# images x latents; the hand computation is in the comments below.
ACTS = np.array(
    [
        # l0  l1  l2  l3  l4
        [0, 1, 2, 0, -1],
        [0, 2, 0, 0, -1],
        [5, 3, 0, 0, -1],
        [0, 0, 2, 0, -1],
        [4, 0, 0, 0, -1],
        [3, 0, 0, 0, -1],
        [0, 0, 2, 9, -1],
        [0, 0, 2, 9, -1],
    ],
    dtype=float,
)
# l0: fires on images 2, 4, 5 (mean 12/3 = 4), top-3 labels 2, 2, 2 → σ 0, majority 1, entropy 0
# l1: fires on 0, 1, 2 (mean 2), top-3 by activation 2, 1, 0 → labels 2, 1, 0: σ 1, 1/3, log2(3)
# l2: fires on 0, 3, 6, 7 all at 2 (mean 2, tied with l1 → after it, lower id first);
#     tied images → lower rows 0, 3, 6 → labels 0, 3, 0: σ = sqrt(((1 + 4 + 1) / 2)) = √3,
#     majority 2/3, entropy H(2/3, 1/3) = 0.9183 bits
# l3: fires on 2 images only (≤ min_fires = 2): not ranked; l4: never positive: not ranked
H3 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))


def test_ranking_by_mean_positive_activation_with_ties_to_lower_id():
    acts = np.maximum(ACTS, 0)
    order = rank_latents(acts.sum(0), (acts > 0).sum(0), min_fires=2)
    assert order.tolist() == [0, 1, 2]


def test_two_best_latents():
    p = purity_of_activations(ACTS, LABELS, top_latents=2, top_images=3, min_fires=2)
    assert p.sigma_label == pytest.approx((0 + 1) / 2)
    assert p.majority == pytest.approx((1 + 1 / 3) / 2)
    assert p.entropy == pytest.approx((0 + math.log2(3)) / 2)
    assert (p.num_latents, p.requested, p.ranked) == (2, 2, 3)


def test_n_is_clipped_to_ranked_latents_and_ties_in_images_go_to_lower_rows():
    p = purity_of_activations(ACTS, LABELS, top_latents=1000, top_images=3, min_fires=2)
    assert p.sigma_label == pytest.approx((0 + 1 + math.sqrt(3)) / 3)
    assert p.majority == pytest.approx((1 + 1 / 3 + 2 / 3) / 3)
    assert p.entropy == pytest.approx((0 + math.log2(3) + H3) / 3)
    assert (p.num_latents, p.requested, p.ranked) == (3, 1000, 3)


def test_min_fires_is_strict():
    # With min_fires = 3 only l2 (4 images) is ranked.
    p = purity_of_activations(ACTS, LABELS, top_latents=10, top_images=3, min_fires=3)
    assert p.ranked == 1 and p.sigma_label == pytest.approx(math.sqrt(3))


def test_std_depends_on_class_order_purity_does_not():
    relabel = np.array([9, 1, 2, 3, 4, 5, 6, 7, 8, 0])  # swap classes 0 and 9
    a = purity_of_activations(ACTS, LABELS, top_latents=3, top_images=3, min_fires=2)
    b = purity_of_activations(ACTS, relabel[LABELS], top_latents=3, top_images=3, min_fires=2)
    assert a.sigma_label != pytest.approx(b.sigma_label)
    assert (a.majority, a.entropy) == pytest.approx((b.majority, b.entropy))


def test_no_ranked_latent_gives_nan():
    p = purity_of_activations(-np.ones((5, 3)), np.arange(5), top_latents=10, top_images=3, min_fires=1)
    assert p.ranked == 0 and math.isnan(p.sigma_label)


def test_stored_codes_give_the_direct_computation():
    """The fit_sae codes (streamed) and the whole-matrix definition agree, both variants."""
    torch.manual_seed(0)
    model = KSae(SaeConfig(d_in=6, expansion=4, k=3), generator=torch.Generator().manual_seed(0))
    x = np.random.default_rng(1).normal(size=(60, 6)).astype(np.float32)
    labels = np.arange(60) % 5
    scan = scan_split(model, x, stats_rows=np.ones(60, bool), top_m=4, progress=False)
    with torch.no_grad():
        pre = model.pre_acts(torch.from_numpy(x)).numpy()
        acts, idx = model.encode(torch.from_numpy(x))
    kw = dict(top_latents=12, top_images=4, min_fires=3)
    assert purity_of_stats(scan.stats, labels, **kw) == purity_of_activations(pre, labels, **kw)
    # Code variant: activations are the TopK code values where chosen (absent elsewhere).
    code = np.full_like(pre, -np.inf)
    np.put_along_axis(code, idx.numpy(), acts.numpy(), axis=1)
    chosen = np.isfinite(code)
    top = np.full((pre.shape[1], 4), -1)
    for j in range(pre.shape[1]):
        rows = np.flatnonzero(chosen[:, j])
        best = rows[np.argsort(-code[rows, j], kind="stable")][:4]
        top[j, : len(best)] = best
    from pipeline.report.metrics import purity

    expect = purity(np.where(chosen, code, 0).sum(0), chosen.sum(0), top, labels, **kw)
    got = purity_of_stats(scan.stats, labels, variant="code", **kw)
    assert got.ranked == expect.ranked and got.num_latents == expect.num_latents
    assert (got.sigma_label, got.majority, got.entropy) == pytest.approx((expect.sigma_label, expect.majority, expect.entropy))
