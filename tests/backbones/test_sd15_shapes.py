"""Full-size SD-1.5 UNet (random weights, built from its config): tap shapes at 512 px.

Building 860M parameters (meta device, filled in place) and two fp32 forwards at 64×64 latents
take ~15 s on the 2-core CPU (~60 s when other heavy work shares it); 3.4 GB of memory.
"""

from __future__ import annotations

import torch

from pipeline.backbones.base import Conditioning
from pipeline.backbones.noise import batch_noise
from pipeline.backbones.synthetic import SD15_TEXT_SHAPE, sd15_in_memory

EXPECTED = {
    "bottleneck": (1280, 8, 8),
    "up_ft0": (1280, 16, 16),
    "up_ft1": (1280, 32, 32),
    "up_ft2": (640, 64, 64),
    "up_ft3": (320, 64, 64),
}


def test_sd15_tap_shapes_at_512px() -> None:
    bb = sd15_in_memory(torch.float32)
    assert sum(p.numel() for p in bb.denoiser.parameters()) == 859_520_964
    assert bb.layer_names() == list(EXPECTED)
    x0 = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(0))  # a 512 px image's latent
    cond = Conditioning("text", texts=("",), text_embeds=torch.randn(1, *SD15_TEXT_SHAPE))
    noise = batch_noise(x0.shape[1:], seed=0, indices=[0])
    taps = bb.taps(x0, 25, cond, list(EXPECTED), noise, early_exit=False)
    assert {name: tuple(v.shape[1:]) for name, v in taps.items()} == EXPECTED
    assert all(torch.isfinite(v).all() and v.std() > 0 for v in taps.values())
    # Early exit at the paper's DIFT layer gives the same map.
    early = bb.taps(x0, 25, cond, ["up_ft1"], noise)
    assert torch.equal(early["up_ft1"], taps["up_ft1"])
