"""Resumable training: one checkpoint file per run, written atomically, resumed only when its
fingerprint (params + data) matches; and the one stop on a non-finite loss. Used by the
embedded DDPM, k-SAE and Diff-C loops."""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import NonFiniteLoss

CHECKPOINT_NAME = "state.pt"


def save_checkpoint(state: dict[str, Any], ckpt_dir: Path) -> None:
    """Write then rename: a kill during the write leaves the previous checkpoint intact."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tmp = ckpt_dir / f"{CHECKPOINT_NAME}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, ckpt_dir / CHECKPOINT_NAME)


def load_checkpoint(
    ckpt_dir: Path, fingerprint: str, device: torch.device | str, *, what: str, version: int | None = None
) -> dict[str, Any] | None:
    """The checkpoint's contents if one exists for this fingerprint (and version), else None,
    with the reason printed: an unreadable file or another run's checkpoint is ignored."""
    path = Path(ckpt_dir) / CHECKPOINT_NAME
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as exc:
        print(f"ignoring unreadable {what} checkpoint {path}: {exc}")
        return None
    if (
        not isinstance(state, dict)
        or state.get("fingerprint") != fingerprint
        or (version is not None and state.get("version") != version)
    ):
        print(f"ignoring {what} checkpoint {path}: it was made with other params, data or code")
        return None
    return state


def check_finite(value: float, *, what: str, where: str, hint: str, ckpt_dir: Path | None) -> None:
    """Raise `NonFiniteLoss` when `value` is inf or NaN, naming the loop, the step or epoch,
    the checkpoint that is kept (if any) and what to change."""
    if math.isfinite(value):
        return
    path = None if ckpt_dir is None else Path(ckpt_dir) / CHECKPOINT_NAME
    if path is None:
        kept = "this run writes no checkpoints"
    elif path.exists():
        kept = f"the last good checkpoint {path} is kept"
    else:
        kept = "no checkpoint was written yet"
    raise NonFiniteLoss(f"{what} is {value} at {where}; stopped, {kept}: {hint}")
