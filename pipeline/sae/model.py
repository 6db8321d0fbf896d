"""The k-sparse autoencoder (k-SAE) of the paper, Sec. 3.2, Eq. 3-5:

    z = TopK(W_enc (x - b_pre) + b_enc)        (B, n): k non-zeros per row
    x_hat = W_dec z + b_pre                    (B, d)

with n = expansion * d latents. Decoder columns are kept unit-norm (`normalize_decoder` after
every optimiser step, `remove_parallel_grad` before it) and the loss is the MSE normalised
by the batch's variance (the fraction of variance unexplained, FVU).

Why it is fast without a GPU kernel: only the k chosen latents per sample take part in
anything but the selection. The selection is one dense matmul (B, d) x (d, n), run in
`select_dtype` (bf16 where the hardware multiplies it natively); the chosen latents' values
are then recomputed exactly in fp32 by `sparse_encode`, whose backward touches only those k
rows of W_enc; decoding is an `embedding_bag` over the k chosen decoder columns. The dense
(B, n) matrix never needs a gradient.

Storage note: `W_dec` is stored as (n, d), i.e. its rows are the paper's decoder *columns*
W_dec[:, i]; a row per latent makes the sparse gather contiguous.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

# Bound on the (chunk, m, d) fp32 gather `sparse_encode` materialises at once.
_GATHER_BYTES = 256 * 2**20


@dataclass(frozen=True)
class SaeConfig:
    d_in: int
    expansion: int = 64
    k: int = 32
    # "transpose": decoder = unit-normalised copy of the encoder (OpenAI, sparsify; recovers
    # planted atoms faster); "independent": both Kaiming-uniform (the authors' released code).
    decoder_init: Literal["transpose", "independent"] = "transpose"

    @property
    def num_latents(self) -> int:
        return self.d_in * self.expansion


class EncoderOutput(NamedTuple):
    top_acts: Tensor  # (B, k) fp32 pre-activations of the chosen latents (may be negative)
    top_indices: Tensor  # (B, k) int64


class ForwardOutput(NamedTuple):
    x_hat: Tensor  # (B, d)
    top_acts: Tensor  # (B, k)
    top_indices: Tensor  # (B, k)
    fvu: Tensor  # () ||x - x_hat||^2 / ||x - mean(x)||^2 over the batch: the training loss
    auxk_loss: Tensor  # () 0 unless dead latents were given


class _SparseEncode(torch.autograd.Function):
    """values[b, j] = W[idx[b, j]] . x[b] + bias[idx[b, j]] with a sparse backward.

    Autograd through `W[idx]` would keep a (B, m, d) gather and its gradient alive at once;
    this computes both in bounded chunks and accumulates the weight gradient with index_add_.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, idx: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight, idx)
        return _chunked_rows_dot(x, weight, idx) + bias[idx]

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, weight, idx = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.embedding_bag(idx, weight, mode="sum", per_sample_weights=grad.to(weight.dtype))
        if ctx.needs_input_grad[1]:
            # grad_W = G^T x with G the (B, n) gradient holding m non-zeros per row: a sparse
            # matmul, ~2x faster on CPU than index_add_ of the (B*m, d) outer products
            # (sparsify's way), which it never materialises.
            b, m = idx.shape
            rows = torch.arange(b, device=idx.device).repeat_interleave(m)
            g_t = torch.sparse_coo_tensor(
                torch.stack([idx.reshape(-1), rows]), grad.reshape(-1), (weight.shape[0], b), check_invariants=False
            )
            grad_w = torch.sparse.mm(g_t, x)
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(weight.shape[0], dtype=grad.dtype, device=grad.device)
            grad_b.index_add_(0, idx.reshape(-1), grad.reshape(-1))
        return grad_x, grad_w, grad_b, None


def _chunks(idx: Tensor, d: int) -> list[slice]:
    b, m = idx.shape
    step = max(1, _GATHER_BYTES // max(1, m * d * 4))
    return [slice(s, min(s + step, b)) for s in range(0, b, step)]


def _chunked_rows_dot(x: Tensor, weight: Tensor, idx: Tensor) -> Tensor:
    out = torch.empty(idx.shape, dtype=x.dtype, device=x.device)
    for rows in _chunks(idx, weight.shape[1]):
        out[rows] = torch.bmm(F.embedding(idx[rows], weight), x[rows, :, None]).squeeze(-1)
    return out


def sparse_encode(x: Tensor, weight: Tensor, bias: Tensor, idx: Tensor) -> Tensor:
    """Exact pre-activations (B, m) of the latents `idx` (B, m) for centred inputs x (B, d)."""
    return _SparseEncode.apply(x, weight, bias, idx)


class KSae(nn.Module):
    def __init__(self, cfg: SaeConfig, *, generator: torch.Generator | None = None, device=None) -> None:
        super().__init__()
        self.cfg = cfg
        n, d = cfg.num_latents, cfg.d_in
        bound = 1.0 / math.sqrt(d)  # nn.Linear's default (Kaiming-uniform, a = sqrt(5))
        w_enc = torch.empty(n, d, device=device).uniform_(-bound, bound, generator=generator)
        if cfg.decoder_init == "transpose":
            w_dec = w_enc.clone()
        else:
            w_dec = torch.empty(n, d, device=device).uniform_(-bound, bound, generator=generator)
        self.W_enc = nn.Parameter(w_enc)  # (n, d)
        self.b_enc = nn.Parameter(torch.zeros(n, device=device))  # (n,)
        self.W_dec = nn.Parameter(w_dec)  # (n, d): row i = decoder column i
        self.b_pre = nn.Parameter(torch.zeros(d, device=device))  # (d,)
        self.normalize_decoder()

    @property
    def num_latents(self) -> int:
        return self.cfg.num_latents

    def pre_acts(self, x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """Dense pre-TopK activations (B, n) = W_enc (x - b_pre) + b_enc, computed in `dtype`."""
        dtype = dtype or self.W_enc.dtype
        xc = (x - self.b_pre).to(dtype)
        return F.linear(xc, self.W_enc.to(dtype), self.b_enc.to(dtype))

    def encode(self, x: Tensor, select_dtype: torch.dtype | None = None) -> EncoderOutput:
        with torch.no_grad():
            top_indices = self.pre_acts(x, select_dtype).topk(self.cfg.k, dim=-1, sorted=False).indices
        return EncoderOutput(sparse_encode(x - self.b_pre, self.W_enc, self.b_enc, top_indices), top_indices)

    def decode(self, top_acts: Tensor, top_indices: Tensor) -> Tensor:
        """W_dec z + b_pre, gathering only the k chosen decoder columns per sample."""
        return F.embedding_bag(top_indices, self.W_dec, mode="sum", per_sample_weights=top_acts) + self.b_pre

    def dense_decode(self, top_acts: Tensor, top_indices: Tensor) -> Tensor:
        """The same as `decode` through the dense (B, n) code: for tests and readers."""
        z = torch.zeros(top_acts.shape[0], self.num_latents, dtype=top_acts.dtype, device=top_acts.device)
        z.scatter_(1, top_indices, top_acts)
        return z @ self.W_dec + self.b_pre

    def forward(
        self,
        x: Tensor,
        *,
        select_dtype: torch.dtype | None = None,
        dead_mask: Tensor | None = None,
        auxk_k: int = 256,
    ) -> ForwardOutput:
        top_acts, top_indices = self.encode(x, select_dtype)
        x_hat = self.decode(top_acts, top_indices)
        total_variance = (x - x.mean(0)).pow(2).sum().clamp_min(torch.finfo(x.dtype).tiny)
        residual = x - x_hat
        fvu = residual.pow(2).sum() / total_variance
        auxk_loss = x.new_zeros(())
        if dead_mask is not None and (num_dead := int(dead_mask.sum())) > 0:
            auxk_loss = self._auxk_loss(x, residual.detach(), dead_mask, min(auxk_k, num_dead), select_dtype)
        return ForwardOutput(x_hat, top_acts, top_indices, fvu, auxk_loss)

    def _auxk_loss(
        self, x: Tensor, residual: Tensor, dead_mask: Tensor, k_aux: int, select_dtype: torch.dtype | None
    ) -> Tensor:
        """OpenAI's AuxK: the top-k_aux *dead* latents reconstruct what the live ones missed,
        normalised like the main loss. Gradients reach the dead latents' encoder rows too
        (sparsify's fused encoder drops them), which is what can revive them."""
        with torch.no_grad():
            pre = self.pre_acts(x, select_dtype).masked_fill_(~dead_mask, float("-inf"))
            aux_indices = pre.topk(k_aux, dim=-1, sorted=False).indices
        aux_acts = sparse_encode(x - self.b_pre, self.W_enc, self.b_enc, aux_indices)
        residual_hat = F.embedding_bag(aux_indices, self.W_dec, mode="sum", per_sample_weights=aux_acts)
        variance = (residual - residual.mean(0)).pow(2).sum().clamp_min(torch.finfo(x.dtype).tiny)
        return (residual_hat - residual).pow(2).sum() / variance

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(torch.finfo(self.W_dec.dtype).eps))

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Drop each decoder column's gradient component along the column (columns unit-norm),
        so that the step moves it on the sphere, not off it and back by renormalising."""
        if self.W_dec.grad is None:
            return
        grad, w = self.W_dec.grad, self.W_dec
        # Row-wise dot products as a batched matmul and an in-place update: no (n, d) temporary.
        parallel = torch.bmm(grad.unsqueeze(1), w.unsqueeze(2)).squeeze(-1)  # (n, 1)
        grad.addcmul_(parallel, w, value=-1.0)


@torch.no_grad()
def init_b_pre(x: Tensor, how: Literal["mean", "geometric_median"], *, max_iter: int = 100) -> Tensor:
    """The pre-encoder bias from data: the mean, or the geometric median (OpenAI's choice,
    robust to outliers) by Weiszfeld's iteration."""
    x = x.float()
    point = x.mean(0)
    if how == "mean":
        return point
    for _ in range(max_iter):
        dist = (x - point).norm(dim=1).clamp_min(1e-8)
        weights = 1.0 / dist
        new = (weights[:, None] * x).sum(0) / weights.sum()
        if (new - point).norm() <= 1e-6 * point.norm().clamp_min(1.0):
            return new
        point = new
    return point


def save_sae(model: KSae, out_dir: Path, extra: dict[str, Any] | None = None) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, out_dir / "sae.safetensors")
    config = {"sae": asdict(model.cfg), "num_latents": model.num_latents, **(extra or {})}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def load_sae(sae_dir: Path, device: str | torch.device = "cpu") -> tuple[KSae, dict[str, Any]]:
    """The fitted k-SAE of a `models/sae/...` folder and its config.json."""
    sae_dir = Path(sae_dir)
    config = json.loads((sae_dir / "config.json").read_text())
    model = KSae(SaeConfig(**config["sae"]), device="meta")
    state = load_file(sae_dir / "sae.safetensors", device=str(device))
    model.load_state_dict(state, assign=True)
    return model, config
