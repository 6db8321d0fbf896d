"""`load_backbone`: registry name → resolved weights → the family adapter → a `Backbone`.

Attention runs through diffusers' default processors, which use PyTorch's
scaled_dot_product_attention (flash / memory-efficient kernels where available); nothing to set.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pipeline.backbones import ddpm, dit, sd
from pipeline.backbones.base import Backbone, NoiseMode
from pipeline.backbones.common import WeightsMismatch
from pipeline.backbones.registry import BackboneSpec, Family, get_backbone
from pipeline.backbones.weights import ResolvedWeights, resolve_weights
from pipeline.devices import resolve_device, resolve_dtype

if TYPE_CHECKING:
    from pipeline.config import Params

Loader = Callable[[BackboneSpec, ResolvedWeights, torch.device, torch.dtype, NoiseMode], Backbone]

FAMILIES: dict[Family, Loader] = {"sd": sd.load, "if": sd.load, "dit": dit.load, "ddpm": ddpm.load}


def load_backbone(
    model: str | BackboneSpec,
    *,
    model_path: str | Path | None = None,
    root: Path = Path("."),
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    noise_mode: NoiseMode = "add",
    cache_dir: str | Path | None = None,
) -> Backbone:
    """Load a registry backbone on `device` in `dtype` (weights: see weights.resolve_weights)."""
    spec = get_backbone(model) if isinstance(model, str) else model
    if noise_mode != "add" and spec.family != "dit":
        raise ValueError(f"extract.dit_noise = {noise_mode!r} applies to DiT models only, not {spec.name}")
    weights = resolve_weights(spec, model_path, root=root, cache_dir=cache_dir)
    return FAMILIES[spec.family](spec, weights, torch.device(device), dtype, noise_mode)


def load_for_params(
    params: Params,
    root: Path = Path("."),
    *,
    device: str | torch.device | None = None,
    dtype: str | None = None,
    cache_dir: str | Path | None = None,
) -> Backbone:
    """The backbone `params` describe, on `extract.device` / `extract.dtype` unless overridden.

    Checks that the loaded weights have exactly the layers and timesteps the config was
    validated against (an embedded model trained with other `model_train.channels` would not).
    """
    spec = params.backbone
    if params.extract.dit_noise != "add" and spec.family != "dit":
        raise ValueError(
            f"extract.dit_noise = {params.extract.dit_noise!r} applies to DiT models only, not {spec.name}: "
            f"use extract.dit_noise: add"
        )
    torch_device = resolve_device(device or params.extract.device)
    torch_dtype = resolve_dtype(dtype or params.extract.dtype, torch_device)
    backbone = load_backbone(
        spec,
        model_path=params.model_path,
        root=root,
        device=torch_device,
        dtype=torch_dtype,
        noise_mode=params.extract.dit_noise,
        cache_dir=cache_dir,
    )
    expected = params.layer_names()
    if backbone.layer_names() != expected:
        raise WeightsMismatch(
            f"weights in {backbone.weights.path} have layers {', '.join(backbone.layer_names())} but params "
            f"expect {', '.join(expected)}: rerun the model stage (`python -m stages.model`)"
        )
    T = params.model_train.num_train_timesteps if spec.embedded else spec.num_train_timesteps
    if backbone.num_train_timesteps != T:
        raise WeightsMismatch(
            f"the scheduler in {backbone.weights.path} has {backbone.num_train_timesteps} training "
            f"timesteps, params expect {T}"
        )
    return backbone
