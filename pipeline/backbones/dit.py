"""DiT (diffusers `DiTTransformer2DModel`): dit-xl-2-256, dit-xl-2-512, tiny-dit.

Layers: block{i} = output of transformer_blocks[i], tokens (B, h·w, C) reshaped to (B, C, h, w)
with h, w the latent size over the patch size (DiT-XL/2 at 256 px: 1152×16×16).
Conditioning: the null class (label 1000 for the ImageNet models), the unconditional branch
of classifier-free guidance. Noise: `extract.dit_noise` = "add" (like the UNets) or
"embed_only" (the authors' code: clean latents, t only enters the timestep embedding).
"""

from __future__ import annotations

import torch

from pipeline.backbones.base import Backbone, Conditioning, NoiseMode
from pipeline.backbones.common import check_layer_names, lazy, load_scheduler, vae_encoder
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
    from diffusers import DiTTransformer2DModel

    # The hub's DiT configs name the legacy `Transformer2DModel`; diffusers itself maps those
    # to DiTTransformer2DModel (DiTPipeline declares it), so load that class directly.
    transformer = (
        DiTTransformer2DModel.from_pretrained(
            weights.path, subfolder=weights.subfolder("transformer"), torch_dtype=dtype
        )
        .to(device)
        .eval()
    )
    layers = {f"block{i}": block for i, block in enumerate(transformer.transformer_blocks)}
    check_layer_names(spec, list(layers), str(weights.path))
    null_class = transformer.config.num_embeds_ada_norm
    # The null-class embedding row exists only when the label embedding was trained with
    # class dropout (LabelEmbedding adds one row then): without it there is no "no class".
    table = transformer.transformer_blocks[0].norm1.emb.class_embedder.embedding_table
    if table.num_embeddings <= null_class:
        raise WeightsMismatch(f"{weights.path}: DiT label embedding has no null class row ({null_class})")
    patch = transformer.config.patch_size

    def forward(x: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning) -> object:
        if cond.kind != "class" or cond.class_labels is None:
            raise ValueError(
                f"model {spec.name} is class-conditional: it needs class labels, got {cond.kind}"
            )
        return transformer(
            x, timestep=timesteps, class_labels=cond.class_labels.to(device), return_dict=False
        )

    def tap_view(tokens: torch.Tensor, model_input: torch.Tensor) -> torch.Tensor:
        batch, count, channels = tokens.shape
        h, w = model_input.shape[-2] // patch, model_input.shape[-1] // patch
        if h * w != count:
            raise RuntimeError(f"DiT block output has {count} tokens, expected {h}×{w}")
        # Tokens are in row-major patch order (PatchEmbed flattens (h, w)), so this is the map.
        return tokens.transpose(1, 2).reshape(batch, channels, h, w)

    return Backbone(
        spec=spec,
        weights=weights,
        denoiser=transformer,
        scheduler=load_scheduler(weights),
        layer_modules=layers,
        device=device,
        dtype=dtype,
        forward=forward,
        encode_images=vae_encoder(lazy(lambda: _load_vae(weights, device, dtype))),
        conditioning_kind="class",
        null_class=int(null_class),
        tap_view=tap_view,
        noise_mode=noise_mode,
    )


def _load_vae(weights: ResolvedWeights, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    return (
        AutoencoderKL.from_pretrained(weights.path, subfolder=weights.subfolder("vae"), torch_dtype=dtype)
        .to(device)
        .eval()
    )
