"""Pieces several families share: scheduler loading, VAE encoding, pixel input, UNet layers."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

from pipeline.backbones.registry import BackboneSpec
from pipeline.backbones.weights import ResolvedWeights
from pipeline.errors import WeightsMismatch

T = TypeVar("T")

# ITU-R BT.601 luma: how an RGB image becomes the grayscale a 1-channel model was trained on
# (torchvision's Grayscale uses the same weights). Linear, so it commutes with the [-1, 1] scaling.
_LUMA = (0.299, 0.587, 0.114)


def lazy(load: Callable[[], T]) -> Callable[[], T]:
    """Load on first use, once: the VAE and text encoder are big and many stages never need them."""
    return functools.cache(load)


def load_scheduler(weights: ResolvedWeights) -> Any:
    """The scheduler class the weights were released with (its `add_noise` defines q(x_t|x0))."""
    import diffusers

    folder = weights.folders["scheduler"]
    config_path = weights.path / folder / "scheduler_config.json"
    name = json.loads(config_path.read_text()).get("_class_name", "DDPMScheduler")
    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "add_noise"):
        raise WeightsMismatch(
            f"{config_path}: scheduler class {name!r} is not a diffusers scheduler with add_noise"
        )
    return cls.from_pretrained(weights.path, subfolder=weights.subfolder("scheduler"))


def vae_encoder(vae: Callable[[], Any]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Images in [-1, 1] → `latent_dist.mode() * scaling_factor` (the authors' latents), fp32.

    The mode (the posterior mean), not a sample: latents are cached once per image, and a
    sample would add a second, unseeded noise source.
    """

    def encode(images: torch.Tensor) -> torch.Tensor:
        model = vae()
        latents = model.encode(images).latent_dist.mode()
        shift = getattr(model.config, "shift_factor", None)
        if shift is not None:
            latents = latents - shift
        return (latents * model.config.scaling_factor).float()

    return encode


def to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Adapt RGB (or grayscale) images to a pixel model's input channels."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 3 and channels == 1:
        weights = torch.tensor(_LUMA, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return (images * weights).sum(dim=1, keepdim=True)
    if have == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1)
    raise ValueError(f"cannot feed {have}-channel images to a model with {channels} input channels")


def pixel_encoder(in_channels: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Pixel models see the image itself (in [-1, 1]), in their channel count, as fp32."""

    def encode(images: torch.Tensor) -> torch.Tensor:
        return to_channels(images, in_channels).float()

    return encode


def unet_layer_modules(unet: Any) -> dict[str, nn.Module]:
    """bottleneck = mid_block output, up_ft{i} = up_blocks[i] output (the authors' hooks)."""
    if getattr(unet, "mid_block", None) is None:
        raise WeightsMismatch(f"{type(unet).__name__} has no mid_block, so no bottleneck layer")
    return {"bottleneck": unet.mid_block, **{f"up_ft{i}": block for i, block in enumerate(unet.up_blocks)}}


def check_layer_names(spec: BackboneSpec, names: list[str], where: str) -> None:
    """The weights' layers must be the registry's (the config validated `layer` against it)."""
    if spec.embedded:
        return  # its layer count follows model_train.channels; checked in load.load_for_params
    expected = spec.layer_names()
    if names != expected:
        raise WeightsMismatch(
            f"weights in {where} have layers {', '.join(names)} but the registry expects "
            f"{', '.join(expected)} for model {spec.name}"
        )
