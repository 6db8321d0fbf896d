"""The backbones the pipeline knows, as data: names, weights, layer names, timesteps.

This table is what `pipeline.config` validates `model`, `layer`, `t` and `prompt` against,
so it must stay importable without torch or diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Family = Literal["sd", "dit", "if", "ddpm"]
InputSpace = Literal["latent", "pixel"]
ConditioningKind = Literal["text", "class", "none"]

# The image side must be a multiple of this for the model's forward to line up: SD's VAE
# halves 3 times and its UNet 3 more (64); DiT's VAE 8 x patch 2 (16); IF's and the DDPMs'
# UNets halve 3 times (8).
SIZE_MULTIPLE: dict[Family, int] = {"sd": 64, "dit": 16, "if": 8, "ddpm": 8}


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    family: Family
    # Hub repository id; None for models the pipeline builds or trains itself.
    hub_id: str | None
    input_space: InputSpace
    conditioning: ConditioningKind
    # Raw training timesteps T: valid `t` are 0..T-1.
    num_train_timesteps: int
    # Number of UNet up blocks (layers up_ft0..up_ft{n-1}) or DiT transformer blocks.
    num_blocks: int
    # Native image size of the released weights (pixels).
    image_size: int
    # Built from a config with random weights (tests only).
    synthetic: bool = False
    # Trained by the `model` stage (the embedded default).
    embedded: bool = False

    def layer_names(self, num_blocks: int | None = None) -> list[str]:
        """Tap names in forward order; `num_blocks` overrides for configurable models."""
        n = self.num_blocks if num_blocks is None else num_blocks
        if self.family == "dit":
            return [f"block{i}" for i in range(n)]
        return ["bottleneck", *(f"up_ft{i}" for i in range(n))]

    def image_size_problem(self, size: int, native: int | None = None, multiple: int | None = None) -> str | None:
        """Why `size` px does not suit this model, or None. A size the forward cannot take, or
        beyond half / twice the native size (features there say little about the released
        model), is refused; `native` and `multiple` stand in for models built from params."""
        if self.synthetic:
            return None
        native = self.image_size if native is None else native
        multiple = SIZE_MULTIPLE[self.family] if multiple is None else multiple
        if size % multiple:
            return (
                f"data.image_size = {size} does not fit model {self.name} (native {native} px): "
                f"it needs a multiple of {multiple}"
            )
        if not native // 2 <= size <= 2 * native:
            return (
                f"data.image_size = {size} is far from model {self.name}'s native {native} px: "
                f"expected {native // 2} to {2 * native}"
            )
        return None

    @property
    def conditional_text(self) -> bool:
        return self.conditioning == "text"


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in [
        BackboneSpec("sd15", "sd", "stable-diffusion-v1-5/stable-diffusion-v1-5", "latent", "text", 1000, 4, 512),
        BackboneSpec("sd21", "sd", "stabilityai/stable-diffusion-2-1-base", "latent", "text", 1000, 4, 512),
        BackboneSpec("dit-xl-2-256", "dit", "facebook/DiT-XL-2-256", "latent", "class", 1000, 28, 256),
        BackboneSpec("dit-xl-2-512", "dit", "facebook/DiT-XL-2-512", "latent", "class", 1000, 28, 512),
        BackboneSpec("if-i-l", "if", "DeepFloyd/IF-I-L-v1.0", "pixel", "text", 1000, 4, 64),
        BackboneSpec("ddpm-cifar10", "ddpm", "google/ddpm-cifar10-32", "pixel", "none", 1000, 4, 32),
        # Layer count follows `model_train.channels` (one up block per entry).
        BackboneSpec("fmnist-ddpm", "ddpm", None, "pixel", "none", 1000, 4, 32, embedded=True),
        BackboneSpec("tiny-sd", "sd", None, "latent", "text", 1000, 4, 64, synthetic=True),
        BackboneSpec("tiny-dit", "dit", None, "latent", "class", 1000, 4, 64, synthetic=True),
    ]
}


def get_backbone(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; valid: {', '.join(BACKBONES)}") from None
