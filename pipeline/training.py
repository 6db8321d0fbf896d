"""The training toolkit the three loops share (the embedded DDPM, the k-SAE, Diff-C), with the
seed mixer of `pipeline.seeds`:

- `BatchOrder`: which samples a step or an epoch trains on, from per-epoch permutations that
  depend on (seed, epoch) only: a resumed run needs no saved RNG state;
- `fingerprint`: what a checkpoint must match to be resumed (params, recipe, data);
- `save_state` / `restore_state`: one checkpoint file per run, beside the stage's output
  (DVC deletes outputs before it runs a stage), written atomically, resumed only on a
  matching fingerprint;
- `check_finite`: the one stop on a non-finite loss, before the next checkpoint is written.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from pipeline.errors import NonFiniteLoss
from pipeline.files import atomic_path
from pipeline.seeds import generator

CHECKPOINT_NAME = "state.pt"


# --------------------------------------------------------------------------------------------
# Batch order
# --------------------------------------------------------------------------------------------


class BatchOrder:
    """Sample indices per training step, from per-epoch permutations of `range(n)` that each
    depend on (seed, epoch) only.

    `indices(step)` reads positions [step·B, (step+1)·B) of the endless concatenation of the
    epochs' permutations: every step has a full batch, a batch may straddle two epochs, and
    no sample is skipped (the k-SAE's and the embedded model's step-counted loops).
    `permutation(epoch)` is one epoch's order (Diff-C's epoch-counted loop batches it).
    """

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if n < 1 or batch_size < 1:
            raise ValueError(f"BatchOrder needs n >= 1 and batch_size >= 1, got n = {n}, batch_size = {batch_size}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._perms: dict[int, torch.Tensor] = {}

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 4:  # a batch spans at most a few epochs: keep memory bounded
                self._perms.pop(min(self._perms))
            self._perms[epoch] = torch.randperm(self.n, generator=generator(self.seed, "batch-order", epoch))
        return self._perms[epoch]

    def indices(self, step: int) -> torch.Tensor:
        start, stop = step * self.batch_size, (step + 1) * self.batch_size
        parts = []
        while start < stop:
            epoch, pos = divmod(start, self.n)
            take = min(stop - start, self.n - pos)
            parts.append(self.permutation(epoch)[pos : pos + take])
            start += take
        return parts[0] if len(parts) == 1 else torch.cat(parts)


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any], /) -> Any: ...


def fingerprint(payload: Mapping[str, Any], *arrays: np.ndarray) -> str:
    """What a checkpoint must match to be resumed: a JSON-able `payload` (params, the recipe's
    version, ...) and the bytes of the training data `arrays`."""
    h = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode())
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.data)
    return h.hexdigest()


def save_state(
    ckpt_dir: Path, fingerprint: str, objects: Mapping[str, Stateful], values: Mapping[str, Any]
) -> Path:
    """Write the checkpoint: each object's `state_dict()` and the plain `values` (numbers,
    lists, tensors). Write then rename: a kill during the write leaves the previous one intact."""
    state = {"fingerprint": fingerprint, **{k: v.state_dict() for k, v in objects.items()}, **values}
    with atomic_path(Path(ckpt_dir) / CHECKPOINT_NAME) as tmp:
        torch.save(state, tmp)
    return Path(ckpt_dir) / CHECKPOINT_NAME


def restore_state(
    ckpt_dir: Path | None,
    fingerprint: str,
    objects: Mapping[str, Stateful],
    *,
    device: torch.device | str,
    what: str,
) -> dict[str, Any] | None:
    """Load the checkpoint into `objects` and return its other values, if there is one for this
    fingerprint; else None, with the reason printed (an unreadable file, another run's
    checkpoint, or content that does not fit is ignored) and the objects as they were."""
    if ckpt_dir is None:
        return None
    path = Path(ckpt_dir) / CHECKPOINT_NAME
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # a torn or foreign file: torch raises anything from EOFError to IndexError
        print(f"ignoring unreadable {what} checkpoint {path}: {exc!r}")
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != fingerprint:
        print(f"ignoring {what} checkpoint {path}: it was made with other params, data or code")
        return None
    # load_state_dict copies what fits before it raises on what does not: keep a copy of the
    # objects' state to put back (a resume-time cost of one copy of the fresh state).
    before = {name: copy.deepcopy(obj.state_dict()) for name, obj in objects.items()}
    try:
        for name, obj in objects.items():
            obj.load_state_dict(state.pop(name))
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:  # matching fingerprint, bad content
        for name, obj in objects.items():
            obj.load_state_dict(before[name])
        print(f"ignoring {what} checkpoint {path}: {exc!r}")
        return None
    state.pop("fingerprint")
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
