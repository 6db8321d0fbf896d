"""Train Diff-C on cached feature maps: the loop behind the `fit_diffc` stage.

The paper's recipe (NOTES-reference.md, "Diff-C"): AdamW (lr 1e-4, all parameters), batch 16,
cross-entropy, 30 epochs, cosine annealing down to 5e-5, random horizontal flips. Here:

- Inputs come from `FmapLoader` as fp16 maps; they are cast to fp32 on the device (half the
  host→device bytes) and laid out channels_last, the layout oneDNN's and cuDNN's reduced-
  precision convs prefer (`bench/diffc.py` measures fp32 NCHW against bf16 + channels_last). The flip is done in feature space (`pipeline.diffc.model.flip_batch`).
- The cosine schedule is stepped per batch, not per epoch: the paper does not say which; a
  per-step cosine is smooth where a per-epoch one is a 30-step staircase, and both follow
  (nearly) the same curve at the epoch boundaries. T_max = all steps - 1, so the first step runs at lr and
  the last one at lr_min exactly.
- Mixed precision: `torch.autocast` with the given dtype (bf16 on CPUs with bf16 units and on
  recent GPUs, fp16 with a GradScaler on older GPUs); weights and AdamW state stay fp32.
- Determinism: the weights are initialised from `seed`; the loader's shuffle is reseeded per
  epoch (`set_epoch`); dropout draws from the global RNG, reseeded from (seed, epoch) at the
  start of every epoch inside a forked RNG (the caller's RNG is untouched); the flips come
  from a generator seeded by (seed, epoch, step). No RNG state needs saving, and a run
  resumed from a checkpoint is bit-identical to an uninterrupted one (CPU, fp32, same thread
  count: oneDNN's reductions depend on it).
- A checkpoint after every epoch (`state.pt`: model, AdamW, schedule, grad scaler, curve),
  written to a temporary file and renamed, so a kill never leaves a torn one. A rerun whose
  `fingerprint` matches resumes after the last finished epoch; any other is ignored.
- A non-finite loss (checked whenever the loss is read anyway, every `_POSTFIX_EVERY` steps
  and at the epoch's end) or non-finite weights after an epoch stop the run with one line
  (`pipeline.training.NonFiniteLoss`) before the next checkpoint: the one on disk is the
  last good epoch.
- Which epoch counts: the last (the paper does not say; the authors logged test accuracy
  after every epoch). Given a validation loader (rows carved from train, never test), each
  epoch is also scored on it and `DiffcFit.best` holds the epoch of highest validation top-1
  (the earliest on a tie) with its test accuracy: reported beside the last epoch, labelled,
  never instead of it. Test accuracy never chooses anything.
- A training batch of one sample is skipped: BatchNorm cannot train on one value per channel,
  which is what a one-sample batch leaves once the map has shrunk to 1×1 (see diffc.py), and
  its statistics over one sample would be noise anyway. It can only be the ragged last batch
  of an epoch (shuffled: a different sample each epoch).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pipeline.config import DiffcParams
from pipeline.diffc.model import DiffC, DiffcConfig, build_diffc, flip_batch
from pipeline.errors import DataError, StoreError
from pipeline.features.loaders import FmapLoader
from pipeline.seeds import generator, mix_seed
from pipeline.training import (
    CHECKPOINT_NAME,
    Stateful,
    check_finite,
    fingerprint,
    restore_state,
    save_state,
)

# Bumped whenever the checkpoint contents or the training recipe change, so that an old
# checkpoint is never resumed into a different loop.
_CKPT_VERSION = 2
# Progress-bar postfix refresh interval in steps: reading the loss syncs a GPU, so not every step.
_POSTFIX_EVERY = 10


@dataclass(frozen=True)
class BestEpoch:
    """The epoch of highest validation top-1 (earliest on a tie) and its scores."""

    epoch: int
    val_top1: float
    test_top1: float
    test_top5: float


def best_epoch(curve: list[dict[str, float]]) -> BestEpoch | None:
    """The curve's best epoch by `val_top1`; None when the curve has no validation scores."""
    scored = [row for row in curve if "val_top1" in row]
    if not scored:
        return None
    # max() keeps the first of equal values: the earliest epoch wins a tie.
    row = max(scored, key=lambda r: r["val_top1"])
    return BestEpoch(
        int(row["epoch"]), float(row["val_top1"]), float(row["test_top1"]), float(row["test_top5"])
    )


@dataclass
class DiffcFit:
    """What `train_diffc` returns. `curve` rows: epoch, train_loss, [val_loss, val_top1,]
    test_loss, test_top1, test_top5, lr. `test_top1`/`test_top5`: the last epoch's."""

    model: DiffC = field(repr=False)
    cfg: DiffcConfig
    curve: list[dict[str, float]]
    test_top1: float
    test_top5: float
    # Training-loop seconds (steps and data waits, not evaluation) over all (resumed) runs.
    train_seconds: float
    # Training samples per second over those seconds.
    samples_per_s: float
    # Epoch this call resumed after (0 = trained from scratch).
    resumed_from: int = 0
    # Chosen on the validation split (None without one): see the module docstring.
    best: BestEpoch | None = None


@dataclass
class _State:
    model: DiffC
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.CosineAnnealingLR
    scaler: torch.amp.GradScaler
    epoch: int = 0  # finished epochs
    curve: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    samples: int = 0  # training samples seen over all runs


# --------------------------------------------------------------------------------------------
# Seeds
# --------------------------------------------------------------------------------------------


# Tags keep the streams of different purposes apart even for equal (seed, epoch, step).
_INIT, _DROPOUT, _FLIP = "diffc.init", "diffc.dropout", "diffc.flip"


def flip_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    return generator(seed, _FLIP, epoch, step)


# --------------------------------------------------------------------------------------------
# One step, evaluation, inference
# --------------------------------------------------------------------------------------------


def _autocast(device: torch.device, amp_dtype: torch.dtype | None) -> torch.autocast:
    enabled = amp_dtype is not None and amp_dtype != torch.float32
    return torch.autocast(device.type, dtype=amp_dtype if enabled else torch.float32, enabled=enabled)


def to_input(fmap: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A store batch (fp16, contiguous) → fp32 channels_last on `device` (moved before the cast)."""
    return fmap.to(device, non_blocking=True).to(dtype=torch.float32, memory_format=torch.channels_last)


def train_step(
    model: DiffC,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    amp_dtype: torch.dtype | None,
) -> torch.Tensor:
    """One AdamW step on a prepared batch; returns the (detached) mean loss, not synced."""
    with _autocast(x.device, amp_dtype):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


@torch.inference_mode()
def split_accuracy(
    model: DiffC, loader: FmapLoader, device: torch.device, amp_dtype: torch.dtype | None
) -> dict[str, float]:
    """{loss, top1, top5}: mean loss and accuracies over a split, in eval mode (no dropout,
    running BN)."""
    was_training = model.training
    model.eval()
    k = min(5, model.cfg.num_classes)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    top1 = torch.zeros((), dtype=torch.int64, device=device)
    top5 = torch.zeros((), dtype=torch.int64, device=device)
    n = 0
    for fmap, label in loader:
        x, y = to_input(fmap, device), label.to(device, non_blocking=True)
        with _autocast(device, amp_dtype):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        hits = logits.topk(k, dim=1).indices == y[:, None]
        top1 += hits[:, 0].sum()
        top5 += hits.any(dim=1).sum()
        n += len(y)
    model.train(was_training)
    if n == 0:
        raise DataError(
            f"{loader.store.path}: split {loader.split!r} is empty; nothing to evaluate Diff-C on"
        )
    return {"loss": loss_sum.item() / n, "top1": top1.item() / n, "top5": top5.item() / n}


@torch.inference_mode()
def predict_topk(
    model: DiffC, fmap_batch: torch.Tensor, k: int = 5, *, amp_dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities, class indices) of the k most likely classes per sample, best first.

    `fmap_batch`: (B, C, H, W) or one (C, H, W) map, any float dtype, any device. Puts the
    model in eval mode. k is capped at the number of classes.
    """
    model.eval()
    device = next(model.parameters()).device
    x = fmap_batch if fmap_batch.ndim == 4 else fmap_batch.unsqueeze(0)
    with _autocast(device, amp_dtype):
        logits = model(to_input(x, device))
    probs = logits.float().softmax(dim=1)
    top = probs.topk(min(k, probs.shape[1]), dim=1)
    return top.values, top.indices


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def _objects(st: _State) -> dict[str, Stateful]:
    return {"model": st.model, "optimizer": st.optimizer, "schedule": st.schedule, "scaler": st.scaler}


def _save(st: _State, ckpt_dir: Path, fingerprint: str) -> None:
    values = {"epoch": st.epoch, "train_seconds": st.train_seconds, "samples": st.samples, "curve": st.curve}
    save_state(ckpt_dir, fingerprint, _objects(st), values)


def _restore(st: _State, state: dict[str, Any]) -> None:
    st.epoch = int(state["epoch"])
    st.train_seconds = float(state["train_seconds"])
    st.samples = int(state["samples"])
    st.curve = [dict(row) for row in state["curve"]]


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def training_fingerprint(hp: DiffcParams, **parts: Any) -> str:
    """A checkpoint fingerprint from every diffc param, the loop's version and `parts`.

    `parts`: whatever else the run depends on, JSON-able (the store's provenance hash, the
    number of classes, ...). All of `hp` is included, device and dtype too: a run resumed on
    another device or precision would not continue the same trajectory.
    """
    return fingerprint({"v": _CKPT_VERSION, "diffc": hp.model_dump(), **parts})


def steps_per_epoch(loader: FmapLoader) -> int:
    """Training steps per epoch: the loader's batches less a one-sample last batch (skipped)."""
    n = loader.num_samples
    full, rest = divmod(n, loader.batch_size)
    return full + (1 if rest >= 2 and not loader.drop_last else 0)


def _new_state(
    cfg: DiffcConfig, hp: DiffcParams, seed: int, total_steps: int, device: torch.device, amp_dtype
) -> _State:
    model = build_diffc(cfg, seed=mix_seed(seed, _INIT)).to(device, memory_format=torch.channels_last)
    model.train()
    # fused AdamW: one kernel for all 40M parameters on CUDA; on CPU the default (foreach) path.
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=hp.lr,
        weight_decay=hp.weight_decay,
        fused=True if device.type == "cuda" else None,
    )
    # T_max = steps - 1: the first step runs at lr and the last one exactly at lr_min (with
    # T_max = steps, lr_min would only be reached after the last step, i.e. never used).
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(total_steps - 1, 1), eta_min=hp.lr_min
    )
    # Loss scaling only matters for fp16; for bf16/fp32 the scaler is a disabled no-op.
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    return _State(model=model, optimizer=optimizer, schedule=schedule, scaler=scaler)


def train_diffc(
    train: FmapLoader,
    test: FmapLoader,
    num_classes: int,
    hp: DiffcParams,
    *,
    seed: int,
    device: torch.device | str,
    amp_dtype: torch.dtype | None,
    ckpt_dir: Path,
    fingerprint: str,
    log: Callable[[dict[str, float]], Any] | None = None,
    progress: bool = True,
    progress_position: int = 0,
    val: FmapLoader | None = None,
) -> DiffcFit:
    """Train (or resume) Diff-C for `hp.epochs` epochs on `train`, evaluating on `test` after each
    (and on `val`, when given, for the best epoch: `DiffcFit.best`).

    `seed` (one of `hp.seeds`) draws the weights, the dropout masks and the flips; the batch
    order is `train`'s own (its loader seed).

    `fingerprint` names what the training depends on (`training_fingerprint`: params, store
    provenance, classes): a checkpoint in `ckpt_dir` is resumed only if it matches. `log(row)` is called with each new
    curve row after the epoch's checkpoint is written (an exception from it stops the run
    there, resumable). `progress_position`: the progress bar's line, for seeds trained side by
    side. Returns the trained model (eval mode) and its curve.
    """
    device = torch.device(device)
    ckpt_dir = Path(ckpt_dir)
    fmap_shape = tuple(train.store.array(train.split, "fmap").shape[1:])
    for name, other in (("test", test), ("validation", val)):
        if other is None:
            continue
        channels = other.store.array(other.split, "fmap").shape[1]
        if channels != fmap_shape[0]:
            raise StoreError(
                f"train maps have {fmap_shape[0]} channels but {name} maps {channels}: different layers?"
            )
    cfg = DiffcConfig(in_channels=fmap_shape[0], num_classes=num_classes, width=hp.width, dropout=hp.dropout)
    per_epoch = steps_per_epoch(train)
    if per_epoch == 0:
        raise DataError(f"{train.store.path}: Diff-C needs at least 2 training samples per batch to train")
    st = _new_state(cfg, hp, seed, hp.epochs * per_epoch, device, amp_dtype)
    resumed_from = 0
    saved = restore_state(ckpt_dir, fingerprint, _objects(st), device=device, what="Diff-C")
    if saved is not None:
        _restore(st, saved)
        resumed_from = st.epoch
        print(f"resuming Diff-C training after epoch {st.epoch}/{hp.epochs} ({ckpt_dir / CHECKPOINT_NAME})")

    # Dropout draws from the global RNG: reseeded per epoch inside a fork, so the caller's RNG
    # state is restored afterwards.
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):
        while st.epoch < hp.epochs:
            train_loss, lr = _train_epoch(
                st, train, hp, seed, device, amp_dtype, per_epoch, progress, progress_position, ckpt_dir
            )
            _check_weights(st.model, st.epoch + 1, hp, ckpt_dir)
            row: dict[str, float] = {"epoch": st.epoch + 1, "train_loss": train_loss}
            if val is not None:
                scores = split_accuracy(st.model, val, device, amp_dtype)
                row |= {"val_loss": scores["loss"], "val_top1": scores["top1"]}
            scores = split_accuracy(st.model, test, device, amp_dtype)
            row |= {f"test_{name}": value for name, value in scores.items()}
            row["lr"] = lr
            st.epoch += 1
            st.curve.append(row)
            _save(st, ckpt_dir, fingerprint)
            if log is not None:
                log(row)

    st.model.eval()
    last = st.curve[-1]
    return DiffcFit(
        model=st.model,
        cfg=cfg,
        curve=st.curve,
        test_top1=float(last["test_top1"]),
        test_top5=float(last["test_top5"]),
        train_seconds=st.train_seconds,
        samples_per_s=st.samples / st.train_seconds if st.train_seconds > 0 else 0.0,
        resumed_from=resumed_from,
        best=best_epoch(st.curve),
    )


def _hint(hp: DiffcParams) -> str:
    return f"lower diffc.lr (now {hp.lr}) or set diffc.dtype: fp32 (now {hp.dtype})"


def _check_weights(model: DiffC, epoch: int, hp: DiffcParams, ckpt_dir: Path) -> None:
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            check_finite(
                float("nan"), what=f"Diff-C weight {name}", where=f"the end of epoch {epoch}",
                hint=_hint(hp), ckpt_dir=ckpt_dir,
            )


def _train_epoch(
    st: _State,
    train: FmapLoader,
    hp: DiffcParams,
    seed: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    per_epoch: int,
    progress: bool,
    position: int,
    ckpt_dir: Path,
) -> tuple[float, float]:
    """One pass over `train`: (mean training loss, lr of the epoch's last step)."""
    epoch = st.epoch  # 0-based index of the epoch being trained
    torch.manual_seed(mix_seed(seed, _DROPOUT, epoch))
    train.set_epoch(epoch)
    st.model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    seen = 0
    lr = st.optimizer.param_groups[0]["lr"]
    bar = tqdm(
        total=per_epoch,
        desc=f"Diff-C seed {seed} epoch {epoch + 1}/{hp.epochs}",
        unit="step",
        disable=not progress,
        dynamic_ncols=True,
        leave=False,
        position=position,
    )
    start = time.perf_counter()
    step = 0
    for fmap, label in train:
        if len(label) < 2:
            continue  # see the module docstring: BatchNorm cannot train on one sample
        x, y = to_input(fmap, device), label.to(device, non_blocking=True)
        if hp.flip:
            x = flip_batch(x, flip_generator(seed, epoch, step))
        lr = st.optimizer.param_groups[0]["lr"]
        loss = train_step(st.model, st.optimizer, st.scaler, x, y, amp_dtype=amp_dtype)
        st.schedule.step()
        loss_sum += loss.double() * len(y)
        seen += len(y)
        step += 1
        bar.update(1)
        if step % _POSTFIX_EVERY == 0 or step == per_epoch:
            # One sync for both: the running sum is non-finite once any step's loss was.
            value, running = loss.item(), loss_sum.item()
            check_finite(
                running, what="Diff-C train loss", where=f"epoch {epoch + 1}, step {step}/{per_epoch}",
                hint=_hint(hp), ckpt_dir=ckpt_dir,
            )
            elapsed = time.perf_counter() - start
            bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}", samples_s=f"{seen / elapsed:.1f}", refresh=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    bar.close()
    st.train_seconds += time.perf_counter() - start
    st.samples += seen
    mean_loss = loss_sum.item() / max(seen, 1)
    check_finite(
        mean_loss, what="Diff-C train loss", where=f"epoch {epoch + 1}", hint=_hint(hp), ckpt_dir=ckpt_dir
    )
    return mean_loss, lr
