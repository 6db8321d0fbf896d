"""The k-SAE model (pipeline.sae.model): Eq. 3-5, the sparse paths against dense references, the
decoder constraint, and recovery of a planted sparse dictionary."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.config import SaeParams
from pipeline.sae.model import KSae, SaeConfig, init_b_pre, load_sae, save_sae, sparse_encode
from pipeline.sae.train import train_sae


def planted_dictionary(
    d: int = 32, atoms: int = 64, active: int = 3, n: int = 16384, noise: float = 0.01, seed: int = 0
) -> tuple[np.ndarray, torch.Tensor]:
    """x = sum of `active` random unit atoms with weights in [0.5, 1.5), plus Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(atoms, d, generator=g)
    dictionary /= dictionary.norm(dim=1, keepdim=True)
    chosen = torch.stack([torch.randperm(atoms, generator=g)[:active] for _ in range(n)])
    weights = torch.rand(n, active, generator=g) + 0.5
    x = torch.einsum("na,nad->nd", weights, dictionary[chosen]) + noise * torch.randn(n, d, generator=g)
    return x.numpy(), dictionary


def _model(d: int = 16, expansion: int = 4, k: int = 5, seed: int = 0, **kw) -> KSae:
    model = KSae(SaeConfig(d_in=d, expansion=expansion, k=k, **kw), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        model.b_pre.normal_(generator=torch.Generator().manual_seed(seed + 1))
        model.b_enc.normal_(std=0.1, generator=torch.Generator().manual_seed(seed + 2))
    return model


def test_forward_matches_the_papers_equations():
    model = _model().double()
    x = torch.randn(9, 16, dtype=torch.float64)
    out = model(x)
    # Eq. 3: z = TopK(W_enc (x - b_pre) + b_enc); Eq. 4: x_hat = W_dec z + b_pre (W_dec is (n, d) here).
    pre = (x - model.b_pre) @ model.W_enc.T + model.b_enc
    vals, idx = pre.topk(5, dim=1)
    z = torch.zeros_like(pre).scatter(1, idx, vals)
    x_hat = z @ model.W_dec + model.b_pre
    torch.testing.assert_close(out.x_hat, x_hat)
    assert torch.equal(out.top_indices.sort(1).values, idx.sort(1).values)
    fvu = (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    torch.testing.assert_close(out.fvu, fvu)


def test_sparse_decode_equals_dense_decode():
    model = _model()
    x = torch.randn(33, 16)
    acts, idx = model.encode(x)
    torch.testing.assert_close(model.decode(acts, idx), model.dense_decode(acts, idx))


def test_gradients_equal_dense_autograd():
    """The sparse encoder backward and embedding_bag decoder give the dense reference's gradients."""
    model = _model().double()
    x = torch.randn(7, 16, dtype=torch.float64)
    out = model(x)
    out.fvu.backward()
    sparse = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    pre = F.linear(x - model.b_pre, model.W_enc, model.b_enc)
    z = torch.zeros_like(pre).scatter(1, out.top_indices, pre.gather(1, out.top_indices))
    x_hat = z @ model.W_dec + model.b_pre
    ((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(sparse[name], p.grad, msg=name)


def test_sparse_encode_in_chunks(monkeypatch):
    """Values and gradients do not depend on the chunking that bounds memory."""
    import pipeline.sae.model as sae_module

    x = torch.randn(50, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(40, 8, dtype=torch.float64, requires_grad=True)
    b = torch.randn(40, dtype=torch.float64, requires_grad=True)
    idx = torch.randint(0, 40, (50, 6))
    ref = (x[:, None, :] * w[idx]).sum(-1) + b[idx]
    monkeypatch.setattr(sae_module, "_GATHER_BYTES", 8 * 6 * 4 * 3)  # 3 samples per chunk
    got = sparse_encode(x, w, b, idx)
    torch.testing.assert_close(got, ref)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(got, (x, w, b), g)
    refs = torch.autograd.grad(ref, (x, w, b), g)
    for a, r in zip(grads, refs):
        torch.testing.assert_close(a, r)


def test_low_precision_selection_keeps_exact_values():
    """bf16 only picks the latents; the values of the picked latents are fp32-exact."""
    model = _model(d=64, expansion=8, k=8)
    x = torch.randn(20, 64)
    acts, idx = model.encode(x, torch.bfloat16)
    assert acts.dtype == torch.float32
    exact = F.linear(x - model.b_pre, model.W_enc, model.b_enc).gather(1, idx)
    torch.testing.assert_close(acts, exact)


def test_decoder_columns_unit_norm_and_parallel_gradient_removed():
    model = _model(decoder_init="independent")
    torch.testing.assert_close(model.W_dec.norm(dim=1), torch.ones(model.num_latents))
    model.W_dec.grad = torch.randn_like(model.W_dec)
    model.remove_parallel_grad()
    dots = (model.W_dec.grad * model.W_dec).sum(1)
    torch.testing.assert_close(dots, torch.zeros_like(dots), atol=1e-6, rtol=0)


def test_transpose_init_ties_decoder_to_encoder():
    model = KSae(SaeConfig(d_in=8, expansion=2, k=2))
    unit = model.W_enc / model.W_enc.norm(dim=1, keepdim=True)
    torch.testing.assert_close(model.W_dec, unit)


def test_auxk_loss_reaches_dead_latents_only():
    model = _model(d=16, expansion=4, k=3)
    x = torch.randn(32, 16)
    dead = torch.zeros(model.num_latents, dtype=torch.bool)
    dead[:10] = True
    out = model(x, dead_mask=dead, auxk_k=4)
    assert out.auxk_loss > 0
    out.auxk_loss.backward()
    touched = model.W_dec.grad.abs().sum(1) > 0
    assert touched[:10].any() and not touched[10:].any()
    assert model(x).auxk_loss == 0


def test_geometric_median_resists_outliers():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, generator=g) * 0.1
    x[:20] += 100.0  # 10% outliers
    median = init_b_pre(x, "geometric_median")
    assert median.norm() < 1.0 < init_b_pre(x, "mean").norm()


def test_save_load_round_trip(tmp_path):
    model = _model()
    save_sae(model, tmp_path, extra={"layer": "bottleneck"})
    loaded, config = load_sae(tmp_path)
    assert config["layer"] == "bottleneck" and loaded.cfg == model.cfg
    x = torch.randn(5, 16)
    assert torch.equal(loaded(x).x_hat, model(x).x_hat)


@pytest.fixture(scope="module")
def planted_fit():
    x, dictionary = planted_dictionary()
    hp = SaeParams(
        expansion=4, k=3, lr=1e-2, warmup_steps=10, batch_size=1024, num_samples=300_000, device="cpu", dtype="fp32"
    )
    fit = train_sae(x, SaeConfig(32, 4, 3), hp, device=torch.device("cpu"), select_dtype=torch.float32, progress=False)
    return x, dictionary, fit


def test_planted_dictionary_is_recovered(planted_fit):
    x, dictionary, fit = planted_fit
    cos = (dictionary @ fit.model.W_dec.detach().T).max(dim=1).values
    assert float((cos > 0.9).float().mean()) >= 0.9, cos
    with torch.no_grad():
        out = fit.model(torch.from_numpy(x))
    assert float(out.fvu) < 0.1


def test_trained_model_invariants(planted_fit):
    x, _, fit = planted_fit
    model = fit.model
    torch.testing.assert_close(model.W_dec.detach().norm(dim=1), torch.ones(model.num_latents))
    with torch.no_grad():
        acts, idx = model.encode(torch.from_numpy(x[:512]))
        code = torch.zeros(512, model.num_latents).scatter(1, idx, acts)
        assert torch.equal((code != 0).sum(1), torch.full((512,), 3))  # L0 = k
        torch.testing.assert_close(model.decode(acts, idx), model.dense_decode(acts, idx))
