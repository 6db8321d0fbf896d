"""The one way a seed is derived: from the run's seed and what a draw is for, so that every
random stream of the pipeline (data subsets, noise, views, batch order, initialisation,
dropout, flips, samples) depends on its own tuple only, on any machine.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def _word(part: int | str) -> int:
    if isinstance(part, str):  # a tag: stable across runs and machines (not Python's hash)
        return int.from_bytes(hashlib.sha256(part.encode()).digest()[:8], "little")
    return int(part)


def mix_seed(*parts: int | str) -> int:
    """A 63-bit seed (what `torch.Generator.manual_seed` takes) from integers and string tags.

    numpy's SeedSequence hashes the whole tuple, so neighbouring tuples — (seed, epoch) and
    (seed, epoch + 1), or (seed, "flip", 3) and (seed, "dropout", 3) — give unrelated streams,
    which linear formulas such as `seed * 7919 + epoch` do not guarantee.
    """
    words = [_word(p) for p in parts]
    if any(w < 0 for w in words):
        raise ValueError(f"seed parts must be >= 0, got {parts}")
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0] >> 1)


def generator(*parts: int | str, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator seeded with `mix_seed(*parts)`."""
    return torch.Generator(device=device).manual_seed(mix_seed(*parts))
