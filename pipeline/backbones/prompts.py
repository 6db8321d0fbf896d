"""What the denoiser is conditioned on: `prompt: empty | generic | from_clip`.

- empty: the empty prompt ("" padded to the tokenizer's length, as the authors did); for DiT
  the null class 1000, for unconditional models nothing.
- generic: one prompt for all images, `extract.generic_prompt`, by default the authors'
  "A photo of a pet" — for every dataset, as their released code has it.
- from_clip: CLIP zero-shot picks each image's class among the dataset's classes, and the
  image is conditioned on the dataset's template filled with that class — the same text CLIP
  scores with (the authors': "A photo of a {}, a type of pet." for Pets, "…, an aircraft." and
  "…, an object."; `pipeline.config.CLIP_TEMPLATES`). CLIP's top-1 against the true labels is
  the baseline Diff-C should beat; the chosen class per image is returned for saving.

Empty and generic prompts are encoded once per run; from_clip encodes each class's prompt once.
Models without text conditioning accept only `empty` (the config checks it too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from pipeline.backbones.base import Backbone, Conditioning
from pipeline.backbones.weights import CLIP_COMPONENTS, resolve_hub

PromptKind = Literal["empty", "generic", "from_clip"]

# The authors' generic prompt, used for every dataset (NOTES-reference, "from_CLIP"). It lives
# here, not in pipeline.config, because backbones may not import config (tests/test_layering).
AUTHORS_GENERIC_PROMPT = "A photo of a pet"


def readable(class_name: str) -> str:
    """Folder-style class names ("american_bulldog") as words for a prompt."""
    return class_name.replace("_", " ").strip()


def prompt_text(prompt: Literal["empty", "generic"], generic_prompt: str | None = None) -> str:
    if prompt == "empty":
        return ""
    if prompt == "generic":
        return AUTHORS_GENERIC_PROMPT if generic_prompt is None else generic_prompt
    raise ValueError(f"prompt = {prompt!r} has no single text; valid here: empty, generic")


def class_prompt(class_name: str, template: str) -> str:
    """`template` with one `{}` for the class, e.g. "A photo of a {}, a type of pet."."""
    return template.format(readable(class_name))


def run_conditioning(backbone: Backbone, prompt: PromptKind, generic_prompt: str | None = None) -> Conditioning:
    """The one conditioning row used for every image (prompt empty or generic)."""
    if prompt == "from_clip":
        raise ValueError("prompt = 'from_clip' differs per image: use clip_zero_shot + clip_conditioning")
    if prompt != "empty" and backbone.conditioning_kind != "text":
        raise ValueError(
            f"prompt = {prompt!r} is invalid for model {backbone.name}, which takes no text conditioning: "
            f"use prompt: empty"
        )
    if backbone.conditioning_kind == "text":
        return backbone.text_conditioning([prompt_text(prompt, generic_prompt)])
    return backbone.null_conditioning()


# ---------------------------------------------------------------------------------------------
# CLIP zero-shot


@dataclass(frozen=True)
class ClipModel:
    model: Any  # transformers CLIPModel
    processor: Any  # transformers CLIPProcessor
    # Where the weights came from (a directory) and the hub id / path asked for.
    path: Path
    name: str


def load_clip(
    name_or_path: str, *, device: torch.device | str = "cpu", cache_dir: str | Path | None = None
) -> ClipModel:
    """`extract.clip_model`: a local directory, else a hub id resolved like the backbones."""
    from transformers import CLIPModel, CLIPProcessor

    local = Path(name_or_path).expanduser()
    path = (
        local
        if local.is_dir()
        else resolve_hub(
            name_or_path, CLIP_COMPONENTS, cache_dir=cache_dir, what=f"extract.clip_model = {name_or_path!r}"
        ).path
    )
    model = CLIPModel.from_pretrained(path).to(device).eval()
    return ClipModel(model, CLIPProcessor.from_pretrained(path), path, name_or_path)


@dataclass(frozen=True)
class ClipZeroShot:
    # (N,) the class index CLIP picked per image.
    predicted: torch.Tensor
    # One prompt per class, in class order (what CLIP scored and what the denoiser will see).
    prompts: tuple[str, ...]
    # Top-1 accuracy against the given labels; None when no labels were given.
    accuracy: float | None


def _features(output: object) -> torch.Tensor:
    # transformers 5 returns a model output whose pooler_output is the projected embedding;
    # 4.x returned the tensor itself.
    return output if isinstance(output, torch.Tensor) else output.pooler_output  # type: ignore[attr-defined]


def clip_zero_shot(
    clip: ClipModel,
    images: torch.Tensor,
    class_names: Sequence[str],
    template: str,
    *,
    labels: Sequence[int] | torch.Tensor | None = None,
    batch_size: int = 64,
) -> ClipZeroShot:
    """Pick each image's class: argmax cosine similarity of CLIP image and prompt embeddings.

    images: (N, 3, H, W) in [-1, 1]; CLIP's own processor resizes, crops and normalizes them.
    template: the dataset's prompt with one `{}` for the class (`Params.clip_template`).
    """
    if not class_names:
        raise ValueError("from_clip needs the dataset's class names (classes.txt is empty)")
    prompts = tuple(class_prompt(c, template) for c in class_names)
    device = next(clip.model.parameters()).device
    with torch.inference_mode():
        tokens = clip.processor.tokenizer(list(prompts), padding=True, truncation=True, return_tensors="pt")
        text = _features(clip.model.get_text_features(**{k: v.to(device) for k, v in tokens.items()}))
        text = text / text.norm(dim=-1, keepdim=True)
        picks = []
        for start in range(0, images.shape[0], batch_size):
            chunk = ((images[start : start + batch_size].float() + 1) / 2).clamp(0, 1)
            pixels = clip.processor.image_processor(
                images=chunk, do_rescale=False, return_tensors="pt"
            ).pixel_values
            feats = _features(clip.model.get_image_features(pixel_values=pixels.to(device)))
            feats = feats / feats.norm(dim=-1, keepdim=True)
            picks.append((feats @ text.T).argmax(dim=-1).cpu())
    predicted = torch.cat(picks) if picks else torch.zeros(0, dtype=torch.long)
    accuracy = None
    if labels is not None:
        labels = torch.as_tensor(labels, dtype=torch.long)
        if labels.shape != predicted.shape:
            raise ValueError(f"got {labels.shape[0]} labels for {predicted.shape[0]} images")
        accuracy = float((predicted == labels).float().mean()) if len(labels) else float("nan")
    return ClipZeroShot(predicted, prompts, accuracy)


def clip_conditioning(backbone: Backbone, zero_shot: ClipZeroShot) -> Conditioning:
    """One conditioning row per class prompt; take image rows with `.rows(predicted[batch])`.

    Rows are per class, not per image, so the text encoder runs once per class and memory does
    not grow with the dataset (an SD prompt embedding is 77×768 floats).
    """
    if backbone.conditioning_kind != "text":
        raise ValueError(
            f"prompt = 'from_clip' is invalid for model {backbone.name}, which takes no text conditioning: "
            f"use prompt: empty"
        )
    return backbone.text_conditioning(zero_shot.prompts)
