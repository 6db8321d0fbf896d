"""Prompts: empty / generic once per run, from_clip per image via CLIP zero-shot."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.backbones.prompts import (
    AUTHORS_GENERIC_PROMPT,
    class_prompt,
    clip_conditioning,
    clip_zero_shot,
    load_clip,
    prompt_text,
    run_conditioning,
)

CLASSES = ["t-shirt", "ankle_boot", "bag"]
TEMPLATE = "A photo of a {}, a type of garment."


def test_prompt_texts() -> None:
    assert prompt_text("empty") == ""
    # The authors' generic prompt, the same for every dataset (NOTES-reference, "from_CLIP").
    assert prompt_text("generic") == AUTHORS_GENERIC_PROMPT == "A photo of a pet"
    assert prompt_text("generic", "a picture") == "a picture"
    # The authors' Oxford-Pets template (NOTES-reference, "from_CLIP"), class words from folder names.
    assert class_prompt("american_bulldog", "A photo of a {}, a type of pet.") == (
        "A photo of a american bulldog, a type of pet."
    )


def test_run_conditioning_per_model_kind(tiny_backbones: dict) -> None:
    sd, dit = tiny_backbones["tiny-sd"], tiny_backbones["tiny-dit"]
    generic = run_conditioning(sd, "generic")
    assert generic.texts == ("A photo of a pet",) and generic.text_embeds.shape == (1, 77, 32)
    empty = run_conditioning(sd, "empty")
    assert empty.texts == ("",) and torch.equal(empty.text_embeds, sd.null_conditioning().text_embeds)
    null = run_conditioning(dit, "empty")
    assert null.kind == "class" and null.class_labels.tolist() == [1000]
    with pytest.raises(ValueError, match="prompt = 'generic' is invalid for model tiny-dit"):
        run_conditioning(dit, "generic")
    with pytest.raises(ValueError, match="differs per image"):
        run_conditioning(sd, "from_clip")


def test_clip_zero_shot_picks_the_most_similar_prompt(
    tiny_dirs: dict[str, Path], images: torch.Tensor
) -> None:
    clip = load_clip(str(tiny_dirs["tiny-clip"]))
    labels = [0, 1, 2, 0, 1, 2, 0]
    result = clip_zero_shot(clip, images, CLASSES, TEMPLATE, labels=labels, batch_size=3)
    assert result.prompts == tuple(
        f"A photo of a {c}, a type of garment." for c in ["t-shirt", "ankle boot", "bag"]
    )
    # Independent computation with CLIPModel's own forward (logits_per_image).
    pixels = clip.processor.image_processor(
        images=(images + 1) / 2, do_rescale=False, return_tensors="pt"
    ).pixel_values
    tokens = clip.processor.tokenizer(list(result.prompts), padding=True, return_tensors="pt")
    with torch.inference_mode():
        logits = clip.model(pixel_values=pixels, **tokens).logits_per_image
    assert torch.equal(result.predicted, logits.argmax(-1))
    assert result.accuracy == pytest.approx(float((logits.argmax(-1) == torch.tensor(labels)).float().mean()))
    assert clip_zero_shot(clip, images, CLASSES, TEMPLATE).accuracy is None
    with pytest.raises(ValueError, match="got 2 labels for 7 images"):
        clip_zero_shot(clip, images, CLASSES, TEMPLATE, labels=[0, 1])


def test_clip_conditioning_rows_per_image(
    tiny_dirs: dict[str, Path], tiny_backbones: dict, images: torch.Tensor
) -> None:
    sd = tiny_backbones["tiny-sd"]
    clip = load_clip(str(tiny_dirs["tiny-clip"]))
    result = clip_zero_shot(clip, images, CLASSES, TEMPLATE)
    cond = clip_conditioning(sd, result)
    assert cond.num_rows == len(CLASSES)
    per_image = cond.rows(result.predicted)
    assert per_image.texts == tuple(result.prompts[i] for i in result.predicted.tolist())
    # Each row is exactly that prompt encoded alone.
    for k in range(len(CLASSES)):
        assert torch.equal(cond.text_embeds[k : k + 1], sd.text_conditioning([result.prompts[k]]).text_embeds)
    with pytest.raises(ValueError, match="prompt = 'from_clip' is invalid for model tiny-dit"):
        clip_conditioning(tiny_backbones["tiny-dit"], result)


def test_missing_clip_offline_names_the_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.errors import WeightsNotFound

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFound, match="openai/clip-vit-large-patch14"):
        load_clip("openai/clip-vit-large-patch14", cache_dir=tmp_path)
