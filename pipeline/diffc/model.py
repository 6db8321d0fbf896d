"""Diff-C: the paper's light-weight classifier on a diffusion layer's feature maps (Table 1).

Layout, with the authors' released details (NOTES-reference.md, "Diff-C")::

    x (B, C, H, W)
    BatchNorm2d(C, affine=False)                     input standardisation, no learned scale
    conv3x3 C → width,     stride 1  ─┐
    conv3x3 width → width, stride 2   │ each: Conv2d(pad 1) → BatchNorm2d(width) → ReLU
    conv3x3 width → width, stride 2   │       → Dropout2d(dropout)
    conv3x3 width → width, stride 2  ─┘
    AdaptiveAvgPool2d(1) → flatten → Dropout(dropout) → Linear(width, num_classes)

At the paper's shape (C = 1280, width = 1024, 37 classes) that is 40,158,245 parameters
(`num_parameters`): 11.8M in conv1, 9.4M in each stride-2 conv, 38k in the head.

Small maps. Every conv has a 3×3 kernel and padding 1, so a stride-2 conv maps a side of n
to floor((n - 1) / 2) + 1 = ceil(n / 2), which is 1 for n = 1 and n = 2: a map never shrinks
below 1×1 and no layer fails on small inputs (32 → 16 → 8 → 4, 8 → 4 → 2 → 1, 4 → 2 → 1 → 1,
2 → 1 → 1 → 1, 1 → 1 → 1 → 1). On a 1×1 map a padded 3×3 conv only uses its centre tap, so
the deeper layers of a small-map Diff-C act as 1×1 convs; nothing is padded or resized
beforehand, the classifier is the paper's on every shape.

On a 1×1 input the block computes its conv as exactly that: a matmul with the kernel's centre
tap (`ConvBlock.forward`). It is the same function with the same parameters, and it avoids a
oneDNN fault: under CPU bf16 autocast, the weight gradient of a stride-2 conv on a 1×1 input
fills the taps that only ever see padding with garbage (measured: relative error up to 1e37
against an fp64 reference, non-finite in ~1 of 4 backward passes; every other shape from 1×1
to 4×4, either stride, within 0.4%). That garbage reached the weights, then the loss, and made
the embedded default's `fit_diffc` stop on a NaN loss. `bench/diffc.py --degenerate` measures
this choice against computing those convs in fp32. The one limit is BatchNorm's: in
training mode it needs more than one value per channel, so a batch of one sample whose map
has shrunk to 1×1 cannot be trained on (`pipeline.diffc.train` skips one-sample batches).

Files: `save_diffc` writes `model.safetensors` (every parameter and BatchNorm buffer) and
`config.json` (the `DiffcConfig` fields plus an `extra` mapping: class names, provenance);
`load_diffc` reads them back.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
# Number of stride-2 convs after the stride-1 one (Table 1: conv2..conv4).
NUM_DOWNSAMPLES = 3


@dataclass(frozen=True)
class DiffcConfig:
    """The shape of a Diff-C model: everything needed to rebuild it before loading weights."""

    in_channels: int
    num_classes: int
    # Channels of every conv (the paper's "final feature dimension is 1024").
    width: int = 1024
    # Used twice, as in the released code: Dropout2d after every conv block, Dropout before the FC.
    # The paper states no rate; the authors' run.sh passes 0.0 (NOTES-reference, "Diff-C dropout").
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("in_channels", "num_classes", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"DiffcConfig.{name} must be a positive int, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"DiffcConfig.dropout must be in [0, 1), got {self.dropout!r}")


def num_parameters(cfg: DiffcConfig) -> int:
    """Trainable parameters by formula (conv weights + biases, BatchNorm affine, FC)."""
    c, w, k = cfg.in_channels, cfg.width, 3 * 3
    convs = (c * w * k + w) + NUM_DOWNSAMPLES * (w * w * k + w)
    norms = (1 + NUM_DOWNSAMPLES) * 2 * w  # weight and bias of each BatchNorm2d(width)
    head = w * cfg.num_classes + cfg.num_classes
    return convs + norms + head


class ConvBlock(nn.Module):
    """conv3×3 (padding 1) → BatchNorm2d → ReLU → Dropout2d."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float) -> None:
        super().__init__()
        # The conv keeps its bias (nn.Conv2d's default, as a plain implementation of Table 1
        # has): it is redundant before BatchNorm but costs only `width` parameters per layer.
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1)
        self.norm = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)
        # Dropout2d zeroes whole channels: neighbouring positions of a feature map are strongly
        # correlated, so element-wise dropout would barely regularise.
        self.drop = nn.Dropout2d(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] == (1, 1):
            # A padded 3×3 conv on a 1×1 map sees only its centre tap, whatever the stride: the
            # same output as the conv, exact zero gradients for the other taps (see the module
            # docstring for the kernel fault this avoids).
            y = F.linear(x.flatten(1), self.conv.weight[:, :, 1, 1], self.conv.bias)[:, :, None, None]
        else:
            y = self.conv(x)
        return self.drop(self.act(self.norm(y)))


class DiffC(nn.Module):
    """The Diff-C classifier: (B, C, H, W) feature maps → (B, num_classes) logits."""

    def __init__(self, cfg: DiffcConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # Without learned affine: diffusion activations have very different scales per channel
        # and per layer / timestep; this only standardises them with running statistics.
        self.input_norm = nn.BatchNorm2d(cfg.in_channels, affine=False)
        blocks = [ConvBlock(cfg.in_channels, cfg.width, stride=1, dropout=cfg.dropout)]
        blocks += [
            ConvBlock(cfg.width, cfg.width, stride=2, dropout=cfg.dropout) for _ in range(NUM_DOWNSAMPLES)
        ]
        self.blocks = nn.Sequential(*blocks)
        # Adaptive pooling: the head works on any H×W the store holds.
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(cfg.width, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.cfg.in_channels:
            raise ValueError(
                f"Diff-C expects feature maps of shape (B, {self.cfg.in_channels}, H, W), got {tuple(x.shape)}"
            )
        h = self.blocks(self.input_norm(x))
        return self.fc(self.drop(torch.flatten(self.pool(h), 1)))


def build_diffc(cfg: DiffcConfig, *, seed: int | None = None) -> DiffC:
    """A freshly initialised Diff-C (PyTorch's default init).

    With `seed`, the weights are drawn from a forked global RNG seeded with it: the same seed
    gives the same weights and the caller's RNG state is left untouched.
    """
    if seed is None:
        return DiffC(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DiffC(cfg)


def save_diffc(model: DiffC, cfg: DiffcConfig, out_dir: Path, extra: dict[str, Any] | None = None) -> Path:
    """Write `model.safetensors` and `config.json` (cfg fields + `extra`) into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # safetensors wants contiguous CPU tensors; a channels_last model's conv weights are not.
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / WEIGHTS_NAME), metadata={"format": "pt"})
    config = {**asdict(cfg), "extra": dict(extra or {})}
    (out_dir / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
    return out_dir


def load_diffc(path: Path, device: str | torch.device = "cpu") -> tuple[DiffC, DiffcConfig, dict[str, Any]]:
    """Read a `save_diffc` folder: (model in eval mode on `device`, its config, its `extra`)."""
    path = Path(path)
    config_file, weights_file = path / CONFIG_NAME, path / WEIGHTS_NAME
    for f in (config_file, weights_file):
        if not f.exists():
            raise FileNotFoundError(f"{f}: missing; is {path} a Diff-C folder written by save_diffc?")
    raw = json.loads(config_file.read_text())
    names = {f.name for f in fields(DiffcConfig)}
    missing = names - set(raw)
    if missing:
        raise ValueError(f"{config_file}: lacks Diff-C config fields {sorted(missing)}")
    cfg = DiffcConfig(**{k: raw[k] for k in names})
    model = DiffC(cfg)
    model.load_state_dict(load_file(str(weights_file), device="cpu"))
    return model.to(device).eval(), cfg, dict(raw.get("extra", {}))


def flip_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Horizontal flip (last axis) of each sample with probability 1/2, drawn from `generator`.

    The feature-space counterpart of the paper's image-space RandomHorizontalFlip: for a
    convolutional backbone, the map of a flipped image is close to the flipped map. The coin
    flips are drawn on the generator's device (CPU for a CPU generator) and then moved, so
    the same generator state gives the same flips on any device. Returns a new tensor.
    """
    flip = torch.rand(x.shape[0], generator=generator, device=generator.device) < 0.5
    flip = flip.to(x.device).view(-1, *([1] * (x.ndim - 1)))
    return torch.where(flip, x.flip(-1), x)
