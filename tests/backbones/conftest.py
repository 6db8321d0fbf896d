"""Tiny random models, built once per test session and saved in diffusers' layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.backbones.base import Backbone
from pipeline.backbones.load import load_backbone
from pipeline.backbones.synthetic import build_tiny_clip, build_tiny_ddpm, build_tiny_dit, build_tiny_sd


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {
        "tiny-sd": build_tiny_sd(root / "tiny-sd"),
        "tiny-dit": build_tiny_dit(root / "tiny-dit"),
        "tiny-ddpm": build_tiny_ddpm(root / "tiny-ddpm", in_channels=1, image_size=16),
        "tiny-clip": build_tiny_clip(root / "tiny-clip"),
    }


@pytest.fixture(scope="session")
def tiny_backbones(tiny_dirs: dict[str, Path]) -> dict[str, Backbone]:
    """tiny-sd / tiny-dit loaded through the adapters (fp32, CPU) from the saved folders."""
    return {
        name: load_backbone(name, model_path=tiny_dirs[name], device="cpu", dtype=torch.float32)
        for name in ("tiny-sd", "tiny-dit")
    }


@pytest.fixture
def images() -> torch.Tensor:
    """Seven distinct 64 px RGB images in [-1, 1] (tiny-sd / tiny-dit latents are 8×8)."""
    g = torch.Generator().manual_seed(1234)
    return torch.rand(7, 3, 64, 64, generator=g) * 2 - 1
