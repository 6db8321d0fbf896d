"""Training a k-SAE (pipeline.sae.model) on an in-memory (N, d) activation matrix.

The paper's recipe: Adam at `sae.lr`, constant after `sae.warmup_steps` of linear warm-up,
batches of `sae.batch_size` from pipeline.training.BatchOrder (seeded per-epoch permutations) until
`sae.num_samples` samples have been seen; decoder columns unit-norm around every step.

Bookkeeping the metrics need: per latent, the number of samples since it last fired (dead =
no firing in the last `sae.dead_window` samples, sparsify's definition) and whether it ever
fired. Interrupted runs resume from a checkpoint beside the output (every ~minute and at the
end), bit-identically: batch order and initialisation depend on (seed, step) only. A
non-finite loss stops the run with one line (checked every 10 steps, when the losses are read
anyway, and always before a checkpoint), so the checkpoint on disk is the last good one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.config import SaeParams
from pipeline.sae.model import KSae, SaeConfig, init_b_pre
from pipeline.seeds import generator
from pipeline.training import (
    BatchOrder,
    Stateful,
    check_finite,
    fingerprint,
    restore_state,
    save_state,
)

_CKPT_VERSION = 1
# Samples the data-derived b_pre is computed from (OpenAI: the first 32k).
B_PRE_SAMPLES = 32_768
CURVE_FIELDS = ("step", "samples", "loss", "fvu", "auxk_loss", "dead_pct", "lr")


@dataclass
class SaeFit:
    model: KSae
    curve: list[dict[str, float]]
    since_fired: torch.Tensor  # (n,) samples since each latent last fired
    ever_fired: torch.Tensor  # (n,) bool
    steps: int
    samples_seen: int
    train_seconds: float
    resumed_from: int = 0

    @property
    def samples_per_s(self) -> float:
        return self.samples_seen / self.train_seconds if self.train_seconds > 0 else float("nan")


@dataclass
class _State:
    model: KSae
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    since_fired: torch.Tensor
    ever_fired: torch.Tensor
    step: int = 0
    train_seconds: float = 0.0
    curve: list[dict[str, float]] = field(default_factory=list)


def num_steps(hp: SaeParams) -> int:
    """Steps to see `num_samples` samples (the paper: 83,886,080 / 8192 = 10,240)."""
    return max(1, -(-hp.num_samples // hp.batch_size))


def dead_window(hp: SaeParams, steps_done: int) -> int:
    """Samples without firing that make a latent dead: `sae.dead_window`, clipped to the
    samples seen so far, so that a latent that never fired counts as dead in a short run.
    (AuxK uses the unclipped window: it should revive latents long dead, not merely unlucky.)"""
    return max(1, min(hp.dead_window, steps_done * hp.batch_size))


def _new_state(cfg: SaeConfig, hp: SaeParams, x: torch.Tensor) -> _State:
    g = generator(hp.seed, "sae.init")
    model = KSae(cfg, generator=g).to(x.device)
    # b_pre from a seeded sample of the data (all of it when small).
    pick = torch.randperm(len(x), generator=g)[:B_PRE_SAMPLES].to(x.device)
    with torch.no_grad():
        model.b_pre.copy_(init_b_pre(x[pick], hp.b_pre_init))
    fused = x.device.type in ("cpu", "cuda")
    optimizer = torch.optim.Adam(model.parameters(), lr=hp.lr, fused=fused)
    warmup = hp.warmup_steps
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup > 0 else 1.0
    )
    n = cfg.num_latents
    return _State(
        model=model,
        optimizer=optimizer,
        schedule=schedule,
        since_fired=torch.zeros(n, dtype=torch.int64, device=x.device),
        ever_fired=torch.zeros(n, dtype=torch.bool, device=x.device),
    )


def _objects(st: _State) -> dict[str, Stateful]:
    return {"model": st.model, "optimizer": st.optimizer, "schedule": st.schedule}


def _save(st: _State, ckpt: Path, fp: str) -> None:
    values = {"step": st.step, "train_seconds": st.train_seconds, "since_fired": st.since_fired,
              "ever_fired": st.ever_fired, "curve": json.dumps(st.curve)}
    save_state(ckpt, fp, _objects(st), values)


def _restore(st: _State, values: dict) -> None:
    st.since_fired.copy_(values["since_fired"])
    st.ever_fired.copy_(values["ever_fired"])
    st.step = int(values["step"])
    st.train_seconds = float(values["train_seconds"])
    st.curve = json.loads(values["curve"])


def train_sae(
    x: np.ndarray,
    cfg: SaeConfig,
    hp: SaeParams,
    *,
    device: torch.device,
    select_dtype: torch.dtype,
    ckpt: Path | None = None,
    checkpoint_every_s: float = 60.0,
    stop_after: int | None = None,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> SaeFit:
    """Train a k-SAE on x (N, d) float32. `stop_after` ends the run early after that many
    steps in total (a test's stand-in for an interrupted run); `on_step(step)` is called after
    each step and checkpoint."""
    if x.ndim != 2 or x.shape[1] != cfg.d_in:
        raise ValueError(f"training data has shape {x.shape}, expected (N, {cfg.d_in})")
    if len(x) == 0:
        raise ValueError("no training samples")
    # What a checkpoint must match: the recipe's version, every training param, the data.
    payload = {"v": _CKPT_VERSION, "sae": hp.model_dump(exclude={"device"}), "cfg": cfg.__dict__,
               "select": str(select_dtype)}
    fp = fingerprint(payload, x)
    data = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
    st = _new_state(cfg, hp, data)
    resumed_from = 0
    values = restore_state(ckpt, fp, _objects(st), device=device, what="k-SAE")
    if values is not None:
        _restore(st, values)
        resumed_from = st.step
        print(f"resuming k-SAE training from step {st.step} ({ckpt})")
    total = num_steps(hp)
    last = total if stop_after is None else min(total, stop_after)
    order = BatchOrder(len(data), hp.batch_size, hp.seed)
    model = st.model
    bar = tqdm(
        total=total * hp.batch_size,
        initial=st.step * hp.batch_size,
        unit="sample",
        unit_scale=True,
        desc="k-SAE",
        disable=not progress,
        dynamic_ncols=True,
    )
    pending: list[torch.Tensor] = []  # per-step scalars, synced in bulk (no per-step GPU sync)
    last_ckpt = time.perf_counter()

    def flush() -> None:
        if not pending:
            return
        rows = torch.stack(pending).cpu().tolist()
        first = st.step - len(rows)
        for i, (loss, fvu, aux, dead, lr) in enumerate(rows):
            step = first + i
            # Checked before the curve grows or a checkpoint is written (flush comes first).
            check_finite(
                loss, what="k-SAE training loss", where=f"step {step + 1}",
                hint=f"lower sae.lr (now {hp.lr}) or set sae.dtype: fp32 (now {hp.dtype})", ckpt_dir=ckpt,
            )
            st.curve.append(
                {
                    "step": step,
                    "samples": (step + 1) * hp.batch_size,
                    "loss": loss,
                    "fvu": fvu,
                    "auxk_loss": aux,
                    "dead_pct": 100.0 * dead,
                    "lr": lr,
                }
            )
        pending.clear()
        bar.set_postfix(fvu=f"{st.curve[-1]['fvu']:.4f}", dead=f"{st.curve[-1]['dead_pct']:.1f}%", refresh=False)

    model.train()
    try:
        while st.step < last:
            t0 = time.perf_counter()
            batch = data[order.indices(st.step).to(device)]
            dead_mask = st.since_fired >= hp.dead_window if hp.auxk_alpha > 0 else None
            st.optimizer.zero_grad(set_to_none=True)
            out = model(batch, select_dtype=select_dtype, dead_mask=dead_mask, auxk_k=hp.auxk_k)
            loss = out.fvu + hp.auxk_alpha * out.auxk_loss
            loss.backward()
            model.remove_parallel_grad()
            lr = st.optimizer.param_groups[0]["lr"]
            st.optimizer.step()
            st.schedule.step()
            model.normalize_decoder()
            with torch.no_grad():
                st.since_fired += len(batch)
                st.since_fired[out.top_indices.reshape(-1)] = 0
                st.ever_fired[out.top_indices.reshape(-1)] = True
                dead = (st.since_fired >= dead_window(hp, st.step + 1)).float().mean()
                pending.append(
                    torch.stack([loss.detach(), out.fvu.detach(), out.auxk_loss.detach(), dead, dead.new_tensor(lr)])
                )
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            st.step += 1
            st.train_seconds += time.perf_counter() - t0
            bar.update(len(batch))
            if len(pending) >= 10 or st.step == last:
                flush()
            if ckpt is not None and (time.perf_counter() - last_ckpt >= checkpoint_every_s or st.step == last):
                flush()
                _save(st, ckpt, fp)
                last_ckpt = time.perf_counter()
            if on_step is not None:
                on_step(st.step)
    finally:
        bar.close()
    model.eval()
    return SaeFit(
        model=model,
        curve=st.curve,
        since_fired=st.since_fired.cpu(),
        ever_fired=st.ever_fired.cpu(),
        steps=st.step,
        samples_seen=st.step * hp.batch_size,
        train_seconds=st.train_seconds,
        resumed_from=resumed_from,
    )
