"""The backbone a key's params describe, loaded and checked against them."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.backbones.base import Backbone, draw_initial_weights
from pipeline.backbones.load import load_backbone
from pipeline.config import Params
from pipeline.devices import resolve_device, resolve_dtype
from pipeline.errors import WeightsMismatch


def load_for_params(
    params: Params,
    root: Path = Path("."),
    *,
    device: str | torch.device | None = None,
    dtype: str | None = None,
    cache_dir: str | Path | None = None,
) -> Backbone:
    """The backbone `params` describe, on `extract.device` / `extract.dtype` unless overridden.

    For the `init` control its denoiser is re-drawn at initialisation from `params.init_seed`
    (`draw_initial_weights`); the `input` control needs the model only for its scheduler and encoder.

    Checks that the loaded weights have exactly the layers and timesteps the config was
    validated against (an embedded model trained with other `model_train.channels` would not).
    """
    torch_device = resolve_device(device or params.extract.device)
    backbone = load_backbone(
        params.backbone,
        model_path=params.model_path,
        root=root,
        device=torch_device,
        dtype=resolve_dtype(dtype or params.extract.dtype, torch_device),
        noise_mode=params.extract.dit_noise,
        cache_dir=cache_dir,
    )
    expected = params.layer_names()
    if backbone.layer_names() != expected:
        raise WeightsMismatch(
            f"weights in {backbone.weights.path} have layers {', '.join(backbone.layer_names())} but params "
            f"expect {', '.join(expected)}: rerun the model stage (`python -m stages.model`)"
        )
    if backbone.num_train_timesteps != params.num_train_timesteps:
        raise WeightsMismatch(
            f"the scheduler in {backbone.weights.path} has {backbone.num_train_timesteps} training "
            f"timesteps, params expect {params.num_train_timesteps}"
        )
    if params.control == "init":
        draw_initial_weights(backbone.denoiser, params.init_seed)
    return backbone
