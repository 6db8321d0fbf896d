"""Text-conditioned UNets (diffusers `UNet2DConditionModel`).

- `sd` family (sd15, sd21, tiny-sd): latent space via the AutoencoderKL, CLIP text encoder.
- `if` family (if-i-l): DeepFloyd IF stage I, pixel space (64 px), T5-XXL text encoder, a
  UNet with a text-projection (`encoder_hid_proj`) and text time-embedding.

Layers: bottleneck = unet.mid_block, up_ft{i} = unet.up_blocks[i] (see common.unet_layer_modules).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from pipeline.backbones.base import Backbone, Conditioning, NoiseMode
from pipeline.backbones.common import (
    check_layer_names,
    lazy,
    load_scheduler,
    pixel_encoder,
    unet_layer_modules,
    vae_encoder,
)
from pipeline.backbones.registry import BackboneSpec
from pipeline.backbones.weights import ResolvedWeights

TextEncoder = Callable[[Sequence[str]], torch.Tensor]

# DeepFloyd IF encodes prompts to 77 T5 tokens (pipeline_if.encode_prompt).
IF_MAX_TOKENS = 77


def load(
    spec: BackboneSpec,
    weights: ResolvedWeights,
    device: torch.device,
    dtype: torch.dtype,
    noise_mode: NoiseMode = "add",
) -> Backbone:
    from diffusers import UNet2DConditionModel

    unet = (
        UNet2DConditionModel.from_pretrained(
            weights.path, subfolder=weights.subfolder("unet"), torch_dtype=dtype
        )
        .to(device)
        .eval()
    )
    if spec.family == "if":
        encode_images = pixel_encoder(unet.config.in_channels)
        encode_texts = _t5_text(weights, device, dtype)
    else:
        encode_images = vae_encoder(lazy(lambda: _load_vae(weights, device, dtype)))
        encode_texts = _clip_text(weights, device, dtype)
    return assemble(spec, weights, unet, load_scheduler(weights), encode_images, encode_texts)


def assemble(
    spec: BackboneSpec,
    weights: ResolvedWeights,
    unet: torch.nn.Module,
    scheduler: object,
    encode_images: Callable[[torch.Tensor], torch.Tensor] | None,
    encode_texts: Callable[[Sequence[str]], torch.Tensor] | None,
) -> Backbone:
    """A Backbone around an already-built UNet2DConditionModel (used by `load`, and by tests
    and the benchmark to wrap a full-size UNet built in memory from its config)."""
    param = next(unet.parameters())
    device, dtype = param.device, param.dtype
    layers = unet_layer_modules(unet)
    check_layer_names(spec, list(layers), str(weights.path))

    def forward(x: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning) -> object:
        if cond.kind != "text" or cond.text_embeds is None:
            raise ValueError(
                f"model {spec.name} needs text conditioning (prompt embeddings), got {cond.kind}"
            )
        return unet(x, timesteps, encoder_hidden_states=cond.text_embeds.to(device, dtype), return_dict=False)

    return Backbone(
        spec=spec,
        weights=weights,
        denoiser=unet,
        scheduler=scheduler,
        layer_modules=layers,
        device=device,
        dtype=dtype,
        forward=forward,
        encode_images=encode_images,
        conditioning_kind="text",
        encode_texts=encode_texts,
    )


def _load_vae(weights: ResolvedWeights, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    return (
        AutoencoderKL.from_pretrained(weights.path, subfolder=weights.subfolder("vae"), torch_dtype=dtype)
        .to(device)
        .eval()
    )


def _text_parts(
    weights: ResolvedWeights, device: torch.device, dtype: torch.dtype, encoder_class: str
) -> Callable[[], tuple[Any, Any]]:
    """Tokenizer + text encoder (a transformers class by name), loaded on first use only:
    runs that never encode a prompt never pay for the encoder."""

    @lazy
    def parts() -> tuple[Any, Any]:
        import transformers

        tokenizer = transformers.AutoTokenizer.from_pretrained(weights.path, subfolder=weights.subfolder("tokenizer"))
        encoder = getattr(transformers, encoder_class).from_pretrained(
            weights.path, subfolder=weights.subfolder("text_encoder"), dtype=dtype
        )
        return tokenizer, encoder.to(device).eval()

    return parts


def _clip_text(weights: ResolvedWeights, device: torch.device, dtype: torch.dtype) -> TextEncoder:
    """Prompt → CLIP text-encoder last hidden state, padded to the tokenizer's max length.

    Exactly what StableDiffusionPipeline.encode_prompt does with clip_skip unset (SD-2.x's
    converted OpenCLIP encoder already drops its last layer in its config).
    """

    parts = _text_parts(weights, device, dtype, "CLIPTextModel")

    def encode(texts: Sequence[str]) -> torch.Tensor:
        tokenizer, encoder = parts()
        tokens = tokenizer(
            list(texts),
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        mask = (
            tokens.attention_mask.to(device) if getattr(encoder.config, "use_attention_mask", False) else None
        )
        return encoder(tokens.input_ids.to(device), attention_mask=mask)[0].to(dtype)

    return encode


def _t5_text(weights: ResolvedWeights, device: torch.device, dtype: torch.dtype) -> TextEncoder:
    """Prompt → T5 encoder hidden states (77 tokens, with attention mask), as IFPipeline does.

    IF lowercases and strips prompts when caption cleaning is off; we do the same and skip the
    optional bs4/ftfy caption cleaning (our prompts are short templates without markup).
    """

    parts = _text_parts(weights, device, dtype, "T5EncoderModel")

    def encode(texts: Sequence[str]) -> torch.Tensor:
        tokenizer, encoder = parts()
        tokens = tokenizer(
            [t.lower().strip() for t in texts],
            padding="max_length",
            max_length=IF_MAX_TOKENS,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )
        out = encoder(tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device))[0]
        return out.to(dtype)

    return encode
