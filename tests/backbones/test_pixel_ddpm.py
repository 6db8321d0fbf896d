"""The pixel-DDPM adapter on a tiny 1-channel UNet2DModel saved and reloaded (like fmnist-ddpm)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from pipeline.backbones.base import Conditioning, extract_taps
from pipeline.backbones.common import to_channels
from pipeline.backbones.load import load_backbone
from pipeline.backbones.noise import batch_noise
from pipeline.backbones.prompts import run_conditioning
from pipeline.backbones.registry import get_backbone

T_STEP = 25


@pytest.fixture(scope="module")
def ddpm(tiny_dirs: dict[str, Path]):
    # ddpm-cifar10's adapter, pointed at the tiny folder through model_path as a user would.
    return load_backbone("ddpm-cifar10", model_path=tiny_dirs["tiny-ddpm"])


@pytest.fixture
def gray_images() -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.rand(3, 3, 16, 16, generator=g) * 2 - 1


def _hooked_full_forward(unet, x_t: torch.Tensor, t: int) -> dict[str, torch.Tensor]:
    modules = {"bottleneck": unet.mid_block, **{f"up_ft{i}": b for i, b in enumerate(unet.up_blocks)}}
    captured: dict[str, torch.Tensor] = {}
    handles = [
        m.register_forward_hook(lambda m, a, o, n=n: captured.__setitem__(n, o.clone()))
        for n, m in modules.items()
    ]
    with torch.inference_mode():
        unet(x_t, t)
    for h in handles:
        h.remove()
    return captured


def test_rgb_is_converted_to_the_models_channels(ddpm, gray_images: torch.Tensor) -> None:
    x0 = ddpm.encode(gray_images)
    assert x0.shape == (3, 1, 16, 16)
    luma = 0.299 * gray_images[:, 0] + 0.587 * gray_images[:, 1] + 0.114 * gray_images[:, 2]
    assert torch.allclose(x0[:, 0], luma, atol=1e-6)
    assert to_channels(x0, 3).shape == (3, 3, 16, 16)
    with pytest.raises(ValueError, match="cannot feed 2-channel images"):
        to_channels(torch.zeros(1, 2, 4, 4), 3)


def test_taps_equal_forward_hooks(ddpm, tiny_dirs: dict[str, Path], gray_images: torch.Tensor) -> None:
    from diffusers import DDPMScheduler, UNet2DModel

    unet = UNet2DModel.from_pretrained(tiny_dirs["tiny-ddpm"], subfolder="unet").eval()
    scheduler = DDPMScheduler.from_pretrained(tiny_dirs["tiny-ddpm"], subfolder="scheduler")
    x0 = ddpm.encode(gray_images)
    noise = batch_noise(x0.shape[1:], seed=0, indices=[0, 1, 2])
    cond = ddpm.null_conditioning()
    assert cond.kind == "none"
    layers = ddpm.layer_names()
    assert layers == ["bottleneck", "up_ft0", "up_ft1", "up_ft2", "up_ft3"]
    got = ddpm.taps(x0, T_STEP, cond, layers, noise, early_exit=False, batch_invariant=False)
    ref = _hooked_full_forward(unet, scheduler.add_noise(x0, noise, torch.full((3,), T_STEP)), T_STEP)
    for layer in layers:
        assert torch.equal(got[layer], ref[layer]), layer
        assert got[layer].std() > 0
    # Early exit at each layer equals the full pass and never reaches the output conv.
    calls: list[int] = []
    handle = ddpm.denoiser.conv_out.register_forward_hook(lambda *a: calls.append(1))
    try:
        for layer in layers:
            alone = ddpm.taps(x0, T_STEP, cond, [layer], noise, early_exit=True, batch_invariant=False)
            assert torch.equal(alone[layer], got[layer]), layer
    finally:
        handle.remove()
    assert calls == []


def test_batch_invariance_and_channels(ddpm, gray_images: torch.Tensor) -> None:
    x0 = ddpm.encode(gray_images)
    batch = extract_taps(
        ddpm, x0[[2, 0, 1]], T_STEP, ddpm.null_conditioning(), "up_ft2", seed=0, indices=[12, 10, 11]
    )
    alone = extract_taps(ddpm, x0[:1], T_STEP, ddpm.null_conditioning(), "up_ft2", seed=0, indices=[10])
    assert torch.equal(batch["up_ft2"][1:2], alone["up_ft2"])


def test_unconditional_model_rejects_prompts(ddpm) -> None:
    with pytest.raises(ValueError, match="prompt = 'generic' is invalid for model ddpm-cifar10"):
        run_conditioning(ddpm, "generic")
    with pytest.raises(ValueError, match="takes no text conditioning"):
        ddpm.text_conditioning(["a photo"])
    assert run_conditioning(ddpm, "empty").kind == "none"
    x0 = torch.zeros(1, 1, 16, 16)
    text = Conditioning("text", texts=("x",), text_embeds=torch.zeros(1, 77, 32))
    with pytest.raises(ValueError, match="is unconditional"):
        ddpm.taps(x0, T_STEP, text, ["bottleneck"], torch.zeros_like(x0))


def test_embedded_layer_count_follows_the_weights(tiny_dirs: dict[str, Path]) -> None:
    """fmnist-ddpm's layers come from its trained UNet (model_train.channels), not a fixed count."""
    spec = replace(get_backbone("fmnist-ddpm"), num_blocks=99)
    bb = load_backbone(spec, model_path=tiny_dirs["tiny-ddpm"])
    assert bb.layer_names() == ["bottleneck", "up_ft0", "up_ft1", "up_ft2", "up_ft3"]
    # A hub model whose weights disagree with the registry is refused.
    from pipeline.errors import WeightsMismatch

    with pytest.raises(WeightsMismatch, match="registry expects"):
        load_backbone(replace(get_backbone("ddpm-cifar10"), num_blocks=3), model_path=tiny_dirs["tiny-ddpm"])


def test_load_for_params_checks_layers_and_dit_noise(
    tiny_dirs: dict[str, Path], default_params_raw: dict
) -> None:
    from pipeline.config import parse_params
    from pipeline.errors import ConfigError, WeightsMismatch
    from pipeline.features.backbone import load_for_params

    raw = {**default_params_raw, "model_path": str(tiny_dirs["tiny-ddpm"])}
    raw["extract"] = {**raw["extract"], "device": "cpu", "dtype": "fp32"}
    # The embedded model's params say 4 blocks (model_train.channels), as the tiny UNet has.
    bb = load_for_params(parse_params(raw))
    assert bb.layer_names() == parse_params(raw).layer_names() and bb.dtype == torch.float32
    # Weights trained with other channels than params say: refused, with the remedy.
    three = {**raw, "model_train": {**raw["model_train"], "channels": [32, 64, 64]}}
    with pytest.raises(WeightsMismatch, match="rerun the model stage"):
        load_for_params(parse_params(three))
    embed_only = {**raw, "extract": {**raw["extract"], "dit_noise": "embed_only"}}
    # The noise mode is a params problem: refused when params load, naming the key.
    with pytest.raises(ConfigError, match="extract.dit_noise = 'embed_only' applies to DiT models only"):
        parse_params(embed_only)
