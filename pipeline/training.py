"""The training toolkit the three loops share (the embedded DDPM, the k-SAE, Diff-C):

- `mix_seed` / `generator`: the one way a seed is derived from the run's seed and what a draw
  is for, so that every random stream depends on its own tuple only;
- `fingerprint`: what a checkpoint must match to be resumed (params, recipe, data);
- `save_state` / `restore_state`: one checkpoint file per run, beside the stage's output
  (DVC deletes outputs before it runs a stage), written atomically, resumed only on a
  matching fingerprint;
- `check_finite`: the one stop on a non-finite loss, before the next checkpoint is written.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from pipeline.errors import NonFiniteLoss
from pipeline.files import atomic_path

CHECKPOINT_NAME = "state.pt"


# --------------------------------------------------------------------------------------------
# Seeds
# --------------------------------------------------------------------------------------------


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
    checkpoint, or content that does not fit is ignored). After None the objects may be partly
    loaded: build them afresh."""
    if ckpt_dir is None:
        return None
    path = Path(ckpt_dir) / CHECKPOINT_NAME
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as exc:
        print(f"ignoring unreadable {what} checkpoint {path}: {exc}")
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != fingerprint:
        print(f"ignoring {what} checkpoint {path}: it was made with other params, data or code")
        return None
    try:
        for name, obj in objects.items():
            obj.load_state_dict(state.pop(name))
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:  # matching fingerprint, bad content
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
