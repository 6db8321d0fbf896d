"""Unconditional pixel-space DDPM UNets (diffusers `UNet2DModel`).

ddpm-cifar10 (google/ddpm-cifar10-32, UNet at the repository root) and the embedded
fmnist-ddpm (trained by the model stage, `unet/` + `scheduler/` subfolders, possibly 1-channel).
Layers: bottleneck = unet.mid_block, up_ft{i} = unet.up_blocks[i]. No conditioning.
"""

from __future__ import annotations

import torch

from pipeline.backbones.base import Backbone, Conditioning, NoiseMode
from pipeline.backbones.common import check_layer_names, load_scheduler, pixel_encoder, unet_layer_modules
from pipeline.backbones.registry import BackboneSpec
from pipeline.backbones.weights import ResolvedWeights
from pipeline.errors import WeightsMismatch


def load(
    spec: BackboneSpec,
    weights: ResolvedWeights,
    device: torch.device,
    dtype: torch.dtype,
    noise_mode: NoiseMode = "add",
) -> Backbone:
    from diffusers import UNet2DModel

    unet = (
        UNet2DModel.from_pretrained(weights.path, subfolder=weights.subfolder("unet"), torch_dtype=dtype)
        .to(device)
        .eval()
    )
    if unet.config.class_embed_type is not None or unet.config.num_class_embeds is not None:
        raise WeightsMismatch(f"{weights.path}: a class-conditional UNet2DModel is not an unconditional DDPM")
    layers = unet_layer_modules(unet)
    check_layer_names(spec, list(layers), str(weights.path))

    def forward(x: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning) -> object:
        if cond.kind != "none":
            raise ValueError(
                f"model {spec.name} is unconditional: use prompt: empty (got {cond.kind} conditioning)"
            )
        return unet(x, timesteps, return_dict=False)

    return Backbone(
        spec=spec,
        weights=weights,
        denoiser=unet,
        scheduler=load_scheduler(weights),
        layer_modules=layers,
        device=device,
        dtype=dtype,
        forward=forward,
        encode_images=pixel_encoder(unet.config.in_channels),
        conditioning_kind="none",
        noise_mode=noise_mode,
    )
