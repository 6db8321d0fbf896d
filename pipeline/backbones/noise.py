"""Deterministic per-image noise and timestep checks.

The noise added to image `i`, view `v`, ensemble draw `e` comes from its own torch.Generator,
seeded by a hash of `(extract.seed, i, v, e)`, drawn on the CPU in fp32 and only then moved to
the device and dtype. So the noise a sample gets never depends on the batch it is in, its
position in that batch, the process or shard computing it, or the device: a tap is a function
of the image and these four integers alone. (The authors drew noise with no seed at all, so
their features were not reproducible.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pipeline.seeds import mix_seed


def noise_seed(seed: int, index: int, view: int, draw: int = 0) -> int:
    """The generator seed for one (run seed, image index, view, ensemble draw).

    `mix_seed` hashes the tuple so that neighbouring tuples give unrelated streams (seeding
    with `seed + i` would make image i of seed 1 equal image i+1 of seed 0); the tag keeps
    this stream apart from any other seeded by the same small integers (e.g. the views').
    """
    for name, value in (("seed", seed), ("index", index), ("view", view), ("draw", draw)):
        if int(value) < 0:
            raise ValueError(f"noise {name} must be >= 0, got {value}")
    return mix_seed("revelio.noise.v1", seed, index, view, draw)


def sample_noise(shape: Sequence[int], *, seed: int, index: int, view: int, draw: int = 0) -> torch.Tensor:
    """Standard normal noise of `shape` for one sample, on the CPU in fp32."""
    generator = torch.Generator(device="cpu").manual_seed(noise_seed(seed, index, view, draw))
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32, device="cpu")


def batch_noise(
    shape: Sequence[int],
    *,
    seed: int,
    indices: Sequence[int],
    views: Sequence[int] | int = 0,
    draw: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Noise (B, *shape) for samples `indices` (manifest rows) and their `views`.

    Each row is drawn independently (see `sample_noise`), so row k equals what the same
    (index, view) gets in any other batch.
    """
    views = [int(views)] * len(indices) if isinstance(views, int) else list(views)
    if len(views) != len(indices):
        raise ValueError(f"got {len(indices)} indices but {len(views)} views")
    rows = [
        sample_noise(shape, seed=seed, index=int(i), view=v, draw=draw)
        for i, v in zip(indices, views, strict=True)
    ]
    return torch.stack(rows).to(device=device, dtype=dtype)


def check_timestep(t: int, num_train_timesteps: int, model: str = "the model") -> int:
    """`t` is a raw training-timestep index: an integer in [0, T)."""
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
        raise TypeError(f"t must be an integer timestep index, got {t!r} ({type(t).__name__})")
    if not 0 <= int(t) < num_train_timesteps:
        raise ValueError(f"t = {t} is out of range for {model}: expected 0 <= t < {num_train_timesteps}")
    return int(t)
