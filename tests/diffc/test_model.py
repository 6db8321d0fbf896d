"""Diff-C model: parameter count at the paper's shape, shapes down to 1×1 maps, files, flips."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pipeline.devices import resolve_dtype
from pipeline.diffc.model import (
    ConvBlock,
    DiffcConfig,
    build_diffc,
    flip_batch,
    load_diffc,
    num_parameters,
    save_diffc,
)

PAPER = DiffcConfig(in_channels=1280, num_classes=37, width=1024)


def test_parameter_count_at_paper_shape() -> None:
    c, w, n = 1280, 1024, 37
    # Table 1 by hand: conv1 (C→w) and three w→w 3×3 convs with biases, four BatchNorm2d(w)
    # affine pairs (the input norm has none), the FC layer.
    expected = (c * w * 9 + w) + 3 * (w * w * 9 + w) + 4 * 2 * w + (w * n + n)
    assert expected == 40_158_245 == num_parameters(PAPER)
    model = build_diffc(PAPER)
    assert sum(p.numel() for p in model.parameters()) == expected
    assert abs(expected - 40.2e6) / 40.2e6 < 0.01  # the paper's "40M" (NOTES: 40.2M)
    # The input norm is parameter-free and the spatial shapes do not change the count.
    assert not list(model.input_norm.parameters())


def _spatial_trace(h: int) -> list[int]:
    """Side of the map after each conv, from a forward hook (checks the docstring's claims)."""
    model = build_diffc(DiffcConfig(in_channels=3, num_classes=2, width=4), seed=0).eval()
    sides: list[int] = []
    for block in model.blocks:
        block.register_forward_hook(lambda _m, _i, out: sides.append(out.shape[-1]))
    with torch.no_grad():
        model(torch.randn(1, 3, h, h))
    return sides


@pytest.mark.parametrize(
    "side, expected",
    [(32, [32, 16, 8, 4]), (8, [8, 4, 2, 1]), (4, [4, 2, 1, 1]), (2, [2, 1, 1, 1]), (1, [1, 1, 1, 1])],
)
def test_small_maps_shrink_to_one_not_zero(side: int, expected: list[int]) -> None:
    assert _spatial_trace(side) == expected


def test_output_shape_paper_maps() -> None:
    model = build_diffc(PAPER, seed=0).eval()
    with torch.inference_mode():
        for shape in [(1280, 32, 32), (1280, 8, 8)]:
            out = model(torch.randn(1, *shape))
            assert out.shape == (1, 37)
            assert torch.isfinite(out).all()


@pytest.mark.parametrize("shape", [(64, 4, 4), (64, 2, 2), (64, 1, 1), (64, 5, 3)])
def test_output_shape_small_maps_train_and_eval(shape: tuple[int, int, int]) -> None:
    model = build_diffc(DiffcConfig(in_channels=shape[0], num_classes=10, width=32), seed=0)
    x = torch.randn(3, *shape)
    model.train()
    out = model(x)
    assert out.shape == (3, 10)
    out.sum().backward()  # trainable down to 1×1 with a batch of several samples
    model.eval()
    with torch.no_grad():
        assert model(x[:1]).shape == (1, 10)  # eval (running stats) takes a single sample too


def test_rejects_wrong_channels() -> None:
    model = build_diffc(DiffcConfig(in_channels=8, num_classes=3, width=8))
    with pytest.raises(ValueError, match=r"\(B, 8, H, W\)"):
        model(torch.randn(2, 9, 4, 4))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="dropout"):
        DiffcConfig(in_channels=8, num_classes=3, dropout=1.0)
    with pytest.raises(ValueError, match="num_classes"):
        DiffcConfig(in_channels=8, num_classes=0)


def test_seeded_build_is_reproducible_and_leaves_rng_alone() -> None:
    cfg = DiffcConfig(in_channels=8, num_classes=3, width=16)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b = build_diffc(cfg, seed=5), build_diffc(cfg, seed=5)
    assert torch.equal(torch.random.get_rng_state(), before)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    c = build_diffc(cfg, seed=6)
    assert not torch.equal(a.fc.weight, c.fc.weight)


def test_save_load_round_trip(tmp_path: Path) -> None:
    cfg = DiffcConfig(in_channels=8, num_classes=5, width=16, dropout=0.3)
    model = build_diffc(cfg, seed=0).to(memory_format=torch.channels_last)
    # A few training-mode passes so BatchNorm running statistics differ from their init.
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 8, 4, 4) * 3 + 1)
    model.eval()
    extra = {"classes": ["a", "b", "c", "d", "e"], "provenance": {"layer": "up_ft1", "t": 25}}
    save_diffc(model, cfg, tmp_path / "m", extra)
    assert json.loads((tmp_path / "m" / "config.json").read_text())["width"] == 16
    loaded, cfg2, extra2 = load_diffc(tmp_path / "m")
    assert cfg2 == cfg and extra2 == extra and not loaded.training
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    # Compared in the saved model's memory format: oneDNN's NHWC and NCHW convs round
    # differently on some CPUs (AVX2 here; equal on AMX), and the format is not a weight.
    loaded = loaded.to(memory_format=torch.channels_last)
    x = torch.randn(6, 8, 4, 4)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_load_names_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_diffc(tmp_path)


def test_flip_batch() -> None:
    x = torch.arange(64 * 2 * 3 * 4, dtype=torch.float32).reshape(64, 2, 3, 4)
    a = flip_batch(x, torch.Generator().manual_seed(7))
    b = flip_batch(x, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)  # same generator state → same flips
    assert not torch.equal(a, flip_batch(x, torch.Generator().manual_seed(8)))
    flipped = [i for i in range(len(x)) if not torch.equal(a[i], x[i])]
    for i in range(len(x)):
        # Each sample is either untouched or mirrored along the last (width) axis only.
        assert torch.equal(a[i], x[i]) or torch.equal(a[i], x[i].flip(-1))
    assert 16 < len(flipped) < 48  # about half of 64
    assert torch.equal(x, torch.arange(x.numel(), dtype=torch.float32).reshape(x.shape))  # input untouched


# The precisions a Diff-C block is checked in: bf16 (what `auto` picks on CPUs with bf16 units,
# CI's included, and on recent GPUs) and whatever `auto` resolves to on this machine.
_CHECKED_DTYPES = sorted({torch.bfloat16, resolve_dtype("auto", "cpu")}, key=str)


def _padding_only_taps(side: int, stride: int) -> torch.Tensor:
    """(3, 3) mask of the kernel taps that see only padding on a side×side map (their
    gradient is exactly zero): all but the centre on 1×1, the first row and column on 2×2 at
    stride 2, none from 2×2 at stride 1 or 4×4 on."""
    w = torch.ones(1, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    F.conv2d(torch.ones(1, 1, side, side, dtype=torch.float64), w, stride=stride, padding=1).sum().backward()
    return w.grad[0, 0] == 0


@pytest.mark.parametrize("amp_dtype", _CHECKED_DTYPES, ids=str)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("side", [1, 2, 4])
def test_block_gradients_under_autocast_match_fp64(side: int, stride: int, amp_dtype: torch.dtype) -> None:
    """A conv block's gradients under CPU autocast, over 8 backward passes on 1×1, 2×2 and 4×4
    maps: the taps that see only padding get exactly zero weight gradient, and the weight and
    input gradients equal an fp64 reference within 10% (relative L2 error). The reference
    sees the inputs and conv weights rounded as autocast rounds them; the rest of the bf16
    error is BatchNorm's backward, which autocast runs in bf16 (measured worst: 4%).

    Before the centre-tap path, oneDNN's bf16 stride-2 conv on 1×1 maps filled the padding-only
    taps with garbage in most passes (up to 1e37, sometimes inf or NaN): the NaN loss of the
    embedded default's `fit_diffc`."""
    torch.manual_seed(0)
    block = ConvBlock(256, 256, stride=stride, dropout=0.0).to(memory_format=torch.channels_last)
    ref = copy.deepcopy(block).double()
    with torch.no_grad():
        ref.conv.weight.copy_(block.conv.weight.to(amp_dtype).double())
        ref.conv.bias.copy_(block.conv.bias.to(amp_dtype).double())
    padding_only = _padding_only_taps(side, stride)
    where = f"{side}x{side} map, stride {stride}, {amp_dtype}"
    for _ in range(8):
        x = torch.randn(16, 256, side, side).contiguous(memory_format=torch.channels_last).requires_grad_()
        with torch.autocast("cpu", dtype=amp_dtype, enabled=amp_dtype != torch.float32):
            y = block(x)
        gy = torch.randn(y.shape)
        y.float().backward(gy)
        xr = x.detach().to(amp_dtype).double().requires_grad_()
        ref(xr).backward(gy.double())
        grad_w = block.conv.weight.grad
        assert torch.isfinite(grad_w).all() and torch.isfinite(x.grad).all(), f"{where}: non-finite gradient"
        assert (grad_w[:, :, padding_only] == 0).all(), f"{where}: padding-only taps have a nonzero gradient"
        for name, got, want in (("weight", grad_w, ref.conv.weight.grad), ("input", x.grad, xr.grad)):
            err = ((got.double() - want).norm() / want.norm()).item()
            assert err < 0.1, f"{where}: {name} gradient off by {err:.3g} (relative L2)"
        block.zero_grad(set_to_none=True)
        ref.zero_grad(set_to_none=True)


def test_one_by_one_path_is_the_conv() -> None:
    """On 1×1 maps the block's matmul path gives the conv's output (fp64, eval mode)."""
    torch.manual_seed(0)
    for stride in (1, 2):
        block = ConvBlock(16, 8, stride=stride, dropout=0.0).double().eval()
        x = torch.randn(5, 16, 1, 1, dtype=torch.float64)
        with torch.no_grad():
            want = block.drop(block.act(block.norm(block.conv(x))))
            torch.testing.assert_close(block(x), want, rtol=1e-12, atol=1e-12)
