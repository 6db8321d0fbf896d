"""One streamed pass of a fitted k-SAE over a split: reconstruction metrics and, per latent,
what evaluation (σ_label, purity) and the figures need — without ever holding the (N, n)
activation matrix.

Two activations per (image, latent), as issue #8 compares both:
- dense: ReLU of the pre-TopK encoder output W_enc (x - b_pre) + b_enc, in fp32 (the
  authors' σ_label input); "fires" when > 0;
- code: the TopK code z (the k chosen pre-activations, exact fp32; others absent); "fires"
  when chosen.
For each: the per-latent sum and firing count, and the `top_m` most activating samples with
their values. Ties are broken by the lower sample position (a stable sort), so the lists are
a deterministic function of the activations; positions past the firing count hold row -1.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.sae.model import KSae

# Bound on one (n, chunk) fp32 block of activations.
_BLOCK_ELEMENTS = 64 * 2**20


@dataclass
class LatentStats:
    dense_sum: np.ndarray  # (n,) float64: sum over images of ReLU(pre)
    dense_count: np.ndarray  # (n,) int64: images with pre > 0
    dense_top_value: np.ndarray  # (n, M) float32, descending
    dense_top_row: np.ndarray  # (n, M) int64 sample positions; -1 = none
    code_sum: np.ndarray  # (n,) float64: sum over images of the TopK code
    code_count: np.ndarray  # (n,) int64: images on which the latent is among the top k
    code_top_value: np.ndarray  # (n, M) float32, descending; NaN = none
    code_top_row: np.ndarray  # (n, M) int64; -1 = none

    def as_arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        return {prefix + f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str = "") -> "LatentStats":
        return cls(**{f.name: np.asarray(arrays[prefix + f.name]) for f in fields(cls)})


@dataclass
class SplitScan:
    fvu: float  # sum ||x - x_hat||^2 / sum ||x - mean||^2 over the split
    l0: float  # mean number of non-zero code entries per sample (k unless values are exactly 0)
    fire_count: np.ndarray  # (n,) int64: samples on which each latent is in the TopK code
    num_samples: int
    stats: LatentStats | None  # over the rows selected by `stats_rows`, if any


class _TopM:
    """Running per-latent top-M (value, row) with ties to the lower row."""

    def __init__(self, n: int, m: int, device: torch.device) -> None:
        self.value = torch.full((n, m), float("-inf"), device=device)
        self.row = torch.full((n, m), -1, dtype=torch.int64, device=device)
        self.m = m

    def add(self, values: torch.Tensor, rows: torch.Tensor) -> None:
        """values (b, n) for sample positions rows (b,), ascending and above all seen so far."""
        cand_v = torch.cat([self.value, values.T], dim=1)
        cand_r = torch.cat([self.row, rows.expand(values.shape[1], -1)], dim=1)
        # Stable descending sort: among equal values the earlier candidate, i.e. lower row, wins.
        order = torch.sort(cand_v, dim=1, descending=True, stable=True).indices[:, : self.m]
        self.value = cand_v.gather(1, order)
        self.row = cand_r.gather(1, order)

    def result(self, nan_missing: bool) -> tuple[np.ndarray, np.ndarray]:
        missing = torch.isneginf(self.value)
        value = self.value.masked_fill(missing, float("nan") if nan_missing else 0.0)
        row = self.row.masked_fill(missing, -1)
        return value.cpu().numpy().astype(np.float32), row.cpu().numpy()


@torch.no_grad()
def scan_split(
    model: KSae,
    x: np.ndarray,
    *,
    stats_rows: np.ndarray | None = None,
    top_m: int = 0,
    device: torch.device | str = "cpu",
    desc: str = "k-SAE codes",
    progress: bool = True,
) -> SplitScan:
    """Metrics over all of x (N, d); latent statistics over x[stats_rows] (a bool mask)."""
    device = torch.device(device)
    n = model.num_latents
    k = model.cfg.k
    num = len(x)
    chunk = max(1, min(num, _BLOCK_ELEMENTS // n)) if num else 1
    data = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    mean = data.double().mean(0).float().to(device) if num else None
    mask = torch.from_numpy(np.asarray(stats_rows, dtype=bool)) if stats_rows is not None else None

    sq_err = 0.0
    sq_dev = 0.0
    nonzero = 0
    fire_count = torch.zeros(n, dtype=torch.int64, device=device)
    want_stats = mask is not None and top_m > 0
    if want_stats:
        dense_sum = torch.zeros(n, dtype=torch.float64, device=device)
        dense_count = torch.zeros(n, dtype=torch.int64, device=device)
        code_sum = torch.zeros(n, dtype=torch.float64, device=device)
        code_count = torch.zeros(n, dtype=torch.int64, device=device)
        dense_top = _TopM(n, top_m, device)
        code_top = _TopM(n, top_m, device)

    for start in tqdm(range(0, num, chunk), desc=desc, unit="batch", disable=not progress, leave=False):
        xb = data[start : start + chunk].to(device)
        pre = model.pre_acts(xb, torch.float32)  # (b, n) exact fp32
        top_acts, top_idx = pre.topk(k, dim=1, sorted=False)
        x_hat = model.decode(top_acts, top_idx)
        sq_err += float((xb - x_hat).double().pow(2).sum())
        sq_dev += float((xb - mean).double().pow(2).sum())
        nonzero += int((top_acts != 0).sum())
        fire_count.index_add_(0, top_idx.reshape(-1), torch.ones_like(top_idx.reshape(-1)))
        if not want_stats:
            continue
        sel = mask[start : start + chunk].to(device)
        if not bool(sel.any()):
            continue
        rows = torch.arange(start, start + len(xb), device=device)[sel]
        pre, top_acts, top_idx = pre[sel], top_acts[sel], top_idx[sel]
        dense = pre.clamp_min_(0.0)  # ReLU in place: `pre` is not used again
        dense_sum += dense.sum(0, dtype=torch.float64)
        dense_count += (dense > 0).sum(0)
        dense_top.add(dense, rows)
        code = torch.full_like(dense, float("-inf")).scatter_(1, top_idx, top_acts)
        code_sum.index_add_(0, top_idx.reshape(-1), top_acts.reshape(-1).double())
        code_count.index_add_(0, top_idx.reshape(-1), torch.ones_like(top_idx.reshape(-1)))
        code_top.add(code, rows)

    stats = None
    if want_stats:
        dv, dr = dense_top.result(nan_missing=False)
        cv, cr = code_top.result(nan_missing=True)
        # A dense top entry with activation 0 is a sample on which the latent does not fire.
        dr = np.where(dv > 0, dr, -1)
        stats = LatentStats(
            dense_sum=dense_sum.cpu().numpy(),
            dense_count=dense_count.cpu().numpy(),
            dense_top_value=dv,
            dense_top_row=dr,
            code_sum=code_sum.cpu().numpy(),
            code_count=code_count.cpu().numpy(),
            code_top_value=cv,
            code_top_row=cr,
        )
    return SplitScan(
        fvu=sq_err / sq_dev if sq_dev > 0 else float("nan"),
        l0=nonzero / num if num else float("nan"),
        fire_count=fire_count.cpu().numpy(),
        num_samples=num,
        stats=stats,
    )
