"""`load_backbone`: registry name → resolved weights → the family adapter → a `Backbone`.

Attention runs through diffusers' default processors, which use PyTorch's
scaled_dot_product_attention (flash / memory-efficient kernels where available); nothing to set.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from pipeline.backbones import ddpm, dit, sd
from pipeline.backbones.base import Backbone, NoiseMode
from pipeline.backbones.registry import BackboneSpec, Family, get_backbone
from pipeline.backbones.weights import ResolvedWeights, resolve_weights

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
    # The one check of the noise mode for library callers (params are checked in config).
    if noise_mode != "add" and spec.family != "dit":
        raise ValueError(f"noise mode {noise_mode!r} applies to DiT models only, not {spec.name}")
    weights = resolve_weights(spec, model_path, root=root, cache_dir=cache_dir)
    return FAMILIES[spec.family](spec, weights, torch.device(device), dtype, noise_mode)
