"""Image → tensor views the backbone encodes: view 0 plain, views 1.. seeded augmentations.

View 0 is what the authors feed for features: resize the shorter side to `image_size`, center
crop, scale to [-1, 1]. Views >= 1 (train images only, `extract.views` > 1) are the Diff-C
augmentation the authors recomputed online every step — random resized crop (scale 0.8–1.0)
and horizontal flip — drawn once per (seed, image index, view) and cached instead.

torchvision's random transforms draw from torch's global generator; each view runs inside
`torch.random.fork_rng` seeded from its own (seed, index, view), so a view never depends on
the order or the process it is computed in, and the caller's global RNG state is untouched.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

_STREAM_TAG = int.from_bytes(hashlib.sha256(b"revelio.views.v1").digest()[:8], "little")


def view_seed(seed: int, index: int, view: int) -> int:
    state = np.random.SeedSequence([_STREAM_TAG, int(seed), int(index), int(view)])
    return int(state.generate_state(1, dtype=np.uint64)[0] >> 1)  # manual_seed takes < 2**63


def _plain(image_size: int) -> v2.Compose:
    return v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize(image_size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(image_size),
        ]
    )


def _augmented(image_size: int) -> v2.Compose:
    return v2.Compose(
        [
            v2.PILToTensor(),
            v2.RandomResizedCrop(
                image_size, scale=(0.8, 1.0), interpolation=v2.InterpolationMode.BICUBIC, antialias=True
            ),
            v2.RandomHorizontalFlip(p=0.5),
        ]
    )


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 (C, H, W) → float32 in [-1, 1]."""
    return x.to(torch.float32).div(127.5).sub(1.0)


def make_view(image: Image.Image, image_size: int, *, seed: int, index: int, view: int) -> torch.Tensor:
    """(3, image_size, image_size) float32 in [-1, 1] for one (image, view)."""
    image = image.convert("RGB")
    if view == 0:
        return to_unit_range(_plain(image_size)(image))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(view_seed(seed, index, view))
        return to_unit_range(_augmented(image_size)(image))
