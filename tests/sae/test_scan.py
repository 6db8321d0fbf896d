"""The streamed scan (pipeline.sae.scan) against a brute-force computation on the whole
activation matrix, duplicated samples (ties) included, however it is chunked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pipeline.sae.scan as codes_module
from pipeline.sae.model import KSae, SaeConfig
from pipeline.sae.scan import scan_split


def _brute_top(values: np.ndarray, rows: np.ndarray, m: int, fires: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per latent (column): top-m values, ties to the lower row; rows -1 where it does not fire."""
    n = values.shape[1]
    top_v = np.zeros((n, m), np.float32)
    top_r = np.full((n, m), -1, np.int64)
    for j in range(n):
        cand = [(-values[i, j], rows[i]) for i in range(len(rows)) if fires[i, j]]
        cand.sort()
        for p, (v, r) in enumerate(cand[:m]):
            top_v[j, p], top_r[j, p] = -v, r
    return top_v, top_r


@pytest.fixture
def case():
    torch.manual_seed(0)
    model = KSae(SaeConfig(d_in=6, expansion=3, k=4), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model.b_enc.normal_(std=0.3)
    x = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    x[25] = x[3]  # exact ties
    x[31] = x[3]
    mask = np.ones(40, bool)
    mask[[5, 17]] = False  # e.g. second views
    return model, x, mask


@pytest.mark.parametrize("block", [None, 18 * 7])  # one block, or 7 samples per block
def test_scan_equals_brute_force(case, block, monkeypatch):
    model, x, mask = case
    if block is not None:
        monkeypatch.setattr(codes_module, "_BLOCK_ELEMENTS", block)
    scan = scan_split(model, x, stats_rows=mask, top_m=5, progress=False)

    with torch.no_grad():
        pre = model.pre_acts(torch.from_numpy(x)).numpy().astype(np.float64)
        acts, idx = model.encode(torch.from_numpy(x))
        x_hat = model.decode(acts, idx).numpy()
    n = model.num_latents
    chosen = np.zeros_like(pre, bool)
    np.put_along_axis(chosen, idx.numpy(), True, axis=1)

    assert scan.fvu == pytest.approx(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum(), rel=1e-5)
    assert scan.l0 == 4
    np.testing.assert_array_equal(scan.fire_count, chosen.sum(0))

    rows = np.flatnonzero(mask)
    dense = np.maximum(pre[rows], 0)
    s = scan.stats
    np.testing.assert_allclose(s.dense_sum, dense.sum(0), rtol=1e-5)
    np.testing.assert_array_equal(s.dense_count, (dense > 0).sum(0))
    v, r = _brute_top(dense.astype(np.float32), rows, 5, dense > 0)
    np.testing.assert_array_equal(s.dense_top_row, r)
    np.testing.assert_allclose(s.dense_top_value, v, rtol=1e-6)

    code = np.where(chosen[rows], pre[rows], 0.0)
    np.testing.assert_allclose(s.code_sum, code.sum(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(s.code_count, chosen[rows].sum(0))
    v, r = _brute_top(pre[rows].astype(np.float32), rows, 5, chosen[rows])
    np.testing.assert_array_equal(s.code_top_row, r)
    filled = r >= 0
    np.testing.assert_allclose(s.code_top_value[filled], v[filled], rtol=1e-6)
    assert np.isnan(s.code_top_value[~filled]).all()
    assert s.dense_top_value.shape == (n, 5)


def test_ties_go_to_the_lower_row(case):
    model, x, mask = case
    scan = scan_split(model, x, stats_rows=mask, top_m=40, progress=False)
    rows = scan.stats.dense_top_row
    for j in range(model.num_latents):
        listed = rows[j][rows[j] >= 0].tolist()
        if 3 in listed:  # rows 3, 25, 31 are the same sample: listed together, in that order
            at = listed.index(3)
            assert listed[at : at + 3] == [3, 25, 31]


def test_metrics_only_scan(case):
    model, x, _ = case
    scan = scan_split(model, x, progress=False)
    assert scan.stats is None and scan.num_samples == 40
