"""Image → tensor views the backbone encodes: view 0 plain, views 1.. seeded augmentations.

View 0 is what the authors feed for features: resize the shorter side to `image_size`, center
crop, scale to [-1, 1]. Views >= 1 (train images only, `extract.views` > 1) are the Diff-C
augmentation the authors recomputed online every step — random resized crop (scale 0.8–1.0)
and horizontal flip — drawn once per (seed, image index, view) and cached instead.

torchvision's random transforms draw from torch's global generator; each view runs inside
`torch.random.fork_rng` seeded from its own (seed, index, view), so a view never depends on
the order or the process it is computed in, and the caller's global RNG state is untouched.

Sample order (shared by every store built from one dataset's latents): manifest rows in
order, each train row followed by its views 0..V-1; test rows have view 0 only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import v2

from pipeline.config import Params
from pipeline.data.datasets import ManifestRow, read_manifest
from pipeline.data.images import load_image
from pipeline.paths import data_dir
from pipeline.seeds import mix_seed


def view_seed(seed: int, index: int, view: int) -> int:
    return mix_seed("revelio.views.v1", seed, index, view)


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


@dataclass(frozen=True)
class Sample:
    index: int  # row in manifest.csv
    view: int
    label: int
    path: Path


def samples_by_split(params: Params, root: Path) -> dict[str, list[Sample]]:
    rows: list[ManifestRow] = read_manifest(params.dataset, root)
    folder = data_dir(params.dataset, root)
    out: dict[str, list[Sample]] = {}
    for i, row in enumerate(rows):
        views = params.extract.views if row.split == "train" else 1
        out.setdefault(row.split, []).extend(Sample(i, v, row.label, folder / row.path) for v in range(views))
    return out


def load_view(sample: Sample, image_size: int, seed: int) -> torch.Tensor:
    return make_view(load_image(sample.path), image_size, seed=seed, index=sample.index, view=sample.view)


class _ViewDataset(torch.utils.data.Dataset):
    def __init__(self, samples: Sequence[Sample], image_size: int, seed: int) -> None:
        self.samples, self.image_size, self.seed = samples, image_size, seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> torch.Tensor:
        return load_view(self.samples[i], self.image_size, self.seed)


def view_batches(
    samples: Sequence[Sample], image_size: int, seed: int, batch_size: int, num_workers: int
) -> torch.utils.data.DataLoader:
    """Batches (B, 3, S, S) in [-1, 1] of `samples` in order, decoded by `num_workers` workers."""
    return torch.utils.data.DataLoader(
        _ViewDataset(samples, image_size, seed), batch_size=batch_size, num_workers=num_workers
    )
