"""The DeepFloyd IF (stage I) adapter on a tiny IF-architecture pipeline (the real IF-I-L is
gated and needs T5-XXL): T5 prompt encoding and taps against IFPipeline's own parts."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from pipeline.backbones.load import load_backbone
from pipeline.backbones.noise import batch_noise
from pipeline.backbones.registry import get_backbone
from pipeline.backbones.synthetic import build_tiny_if

T_STEP = 25


@pytest.fixture(scope="module")
def tiny_if(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_if(tmp_path_factory.mktemp("tiny-if") / "tiny-if")


def test_if_taps_equal_ifpipeline_parts(tiny_if: Path) -> None:
    from diffusers import IFPipeline

    spec = replace(get_backbone("if-i-l"), num_blocks=2)  # the tiny UNet has two up blocks
    bb = load_backbone(spec, model_path=tiny_if)
    assert bb.layer_names() == ["bottleneck", "up_ft0", "up_ft1"]
    pipe = IFPipeline.from_pretrained(
        tiny_if, safety_checker=None, watermarker=None, requires_safety_checker=False
    )

    text = "A Photo of a bag"
    cond = bb.text_conditioning([text])
    ref_embeds, _ = pipe.encode_prompt(
        text, do_classifier_free_guidance=False, device="cpu", clean_caption=False
    )
    assert torch.equal(cond.text_embeds, ref_embeds)

    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    x0 = bb.encode(images)
    assert torch.equal(x0, images)  # pixel space: the image itself
    noise = batch_noise(x0.shape[1:], seed=0, indices=[0, 1])
    got = bb.taps(x0, T_STEP, cond, bb.layer_names(), noise, early_exit=False, batch_invariant=False)

    unet = pipe.unet
    modules = {"bottleneck": unet.mid_block, **{f"up_ft{i}": b for i, b in enumerate(unet.up_blocks)}}
    captured: dict[str, torch.Tensor] = {}
    handles = [
        m.register_forward_hook(lambda m, a, o, n=n: captured.__setitem__(n, o.clone()))
        for n, m in modules.items()
    ]
    x_t = pipe.scheduler.add_noise(x0, noise, torch.full((2,), T_STEP))
    with torch.inference_mode():
        unet(x_t, T_STEP, encoder_hidden_states=ref_embeds.expand(2, -1, -1))
    for h in handles:
        h.remove()
    for layer in bb.layer_names():
        assert torch.equal(got[layer], captured[layer]), layer
    early = bb.taps(x0, T_STEP, cond, ["up_ft0"], noise, batch_invariant=False)
    assert torch.equal(early["up_ft0"], got["up_ft0"])
