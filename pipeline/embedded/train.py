"""Train the embedded `fmnist-ddpm` model: a small pixel-space DDPM on Fashion-MNIST, on CPU, in minutes.

No pretrained diffusion weights can be had offline, and features of a random network say
nothing, so the `model` stage trains this one itself. Everything here is plain diffusers
(`UNet2DModel`, `DDPMScheduler`, `EMAModel`, `DDIMPipeline`) around a ~30-line loop:

- ε-prediction MSE at uniformly drawn timesteps, AdamW with linear warm-up, EMA of weights;
- every random draw (batch order, noise, timesteps) comes from a generator seeded by
  `(seed, step)` alone, so a run is bit-identical on CPU and a resumed run continues exactly
  where it stopped without having to restore any RNG state (bit-identical for the same torch
  thread count: oneDNN splits reductions per thread, so 1 vs 2 threads differ by ~1e-7 in
  fp32, ~2e-4 under bf16 autocast, after 20 steps);
- a checkpoint every `CHECKPOINT_EVERY` steps lives *next to* the output folder (DVC deletes
  a stage's outputs before running it), and a rerun with the same params and data resumes;
- results: the EMA weights in diffusers' layout (`model_index.json`, `unet/`, `scheduler/`,
  loadable with `DDPMPipeline.from_pretrained`), `train_summary.json`, the training curve
  `model_train.csv` and a DDIM sample grid, plus the held-out ε-MSE of the trained model and
  of the same architecture at initialisation (the check that training did something).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel
from diffusers.optimization import get_constant_schedule_with_warmup
from diffusers.training_utils import EMAModel
from PIL import Image
from torchvision.transforms.v2 import functional as TF
from tqdm.auto import tqdm

from pipeline.backbones.base import INIT_STREAM
from pipeline.config import ModelTrainParams, Params
from pipeline.curves import write_curve
from pipeline.devices import resolve_device, resolve_dtype
from pipeline.errors import ConfigError
from pipeline.paths import checkpoint_dir
from pipeline.seeds import generator, mix_seed
from pipeline.training import (
    BatchOrder,
    Stateful,
    check_finite,
    fingerprint,
    restore_state,
    save_state,
)

# Steps between checkpoints: at ~0.8 s/step on 2 CPU cores an interruption loses < 1.5 min,
# while writing the ~50 MB state (model, EMA, two Adam moments) stays well under 1% of the time.
CHECKPOINT_EVERY = 100
# Bumped whenever the checkpoint contents or the training recipe change, so that an old
# checkpoint is never resumed into a different loop.
_CKPT_VERSION = 2
# The held-out subset and its noise are fixed independently of `model_train.seed`, so that
# held-out losses of runs with different seeds are measured on the same images and noise.
_HELDOUT_SEED = 0
CURVE_FIELDS = ("step", "loss", "lr")
# model_train fields that only affect evaluation and sampling, not the training trajectory.
_NOT_TRAINING = {"eval_images", "eval_timesteps", "num_samples", "sample_steps"}
# Measured on the 2-core CPU: a forward of 250 32-px images costs ~10× one of 128 (activations
# leave the cache), so evaluation goes in chunks of 128.
_EVAL_BATCH = 128


@dataclass
class TrainResult:
    """What `train_and_save` produced; `unet` is the in-memory EMA model that was saved."""

    out_dir: Path
    steps: int
    # Training-loop seconds summed over all (possibly resumed) runs; excludes eval and sampling.
    train_seconds: float
    # Wall-clock seconds of this call, including data loading, evaluation and sampling.
    wall_seconds: float
    # Mean training loss over the last logging interval.
    final_loss: float
    # Held-out ε-MSE per timestep t, for the trained EMA model and the same model at init.
    heldout_trained: dict[int, float]
    heldout_init: dict[int, float]
    # Step the training resumed from (0 = trained from scratch in this call).
    resumed_from: int
    device: str
    dtype: str
    unet: UNet2DModel = field(repr=False)


@dataclass
class _FitState:
    """The training state: everything a checkpoint holds, plus the live objects."""

    unet: UNet2DModel
    ema: EMAModel
    optimizer: torch.optim.Optimizer
    lr_schedule: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    step: int = 0
    train_seconds: float = 0.0
    # (step, mean loss over the interval, lr) rows of the training curve.
    log: list[tuple[int, float, float]] = field(default_factory=list)
    # Losses since the last logged row (kept in the checkpoint so an interval that spans an
    # interruption still averages the same steps).
    pending: list[float] = field(default_factory=list)
    resumed_from: int = 0


# --------------------------------------------------------------------------------------------
# Device and precision
# --------------------------------------------------------------------------------------------


def _resolve_amp_dtype(dtype: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (pipeline.devices' choice), or None for plain fp32.

    Weights and optimizer state stay fp32. fp16 autocast needs CUDA's grad scaler, so it is
    refused elsewhere, and `auto` on MPS (fp16 there) trains in fp32.
    """
    if dtype == "fp16" and device.type != "cuda":
        raise ValueError(
            f"model_train.dtype = 'fp16' is only supported on CUDA (device is {device.type}); use bf16 or fp32"
        )
    resolved = resolve_dtype(dtype, device)
    if resolved == torch.float32 or (resolved == torch.float16 and device.type != "cuda"):
        return None
    return resolved


def _dtype_name(amp: torch.dtype | None) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp]


# --------------------------------------------------------------------------------------------
# Model, scheduler, data
# --------------------------------------------------------------------------------------------


def build_unet(mt: ModelTrainParams, seed: int | None = None) -> UNet2DModel:
    """The `fmnist-ddpm` architecture: a grayscale UNet2DModel without attention.

    With `seed`, the initial weights are drawn from a forked global RNG seeded with
    `mix_seed(seed, INIT_STREAM)`, so building never disturbs the caller's RNG and the same
    seed gives the same weights: those the `init` control re-draws
    (pipeline.backbones.base.draw_initial_weights).
    """
    n = len(mt.channels)
    kwargs = {
        "sample_size": mt.image_size,
        "in_channels": 1,
        "out_channels": 1,
        "block_out_channels": tuple(mt.channels),
        "layers_per_block": mt.layers_per_block,
        # Plain ResNet blocks: attention at 32 px buys little for its CPU cost.
        "down_block_types": ("DownBlock2D",) * n,
        "up_block_types": ("UpBlock2D",) * n,
        "add_attention": False,
        "norm_num_groups": mt.norm_groups,
    }
    if seed is None:
        return UNet2DModel(**kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(mix_seed(seed, INIT_STREAM))
        return UNet2DModel(**kwargs)


def build_scheduler(mt: ModelTrainParams) -> DDPMScheduler:
    # The DDPM paper's linear β schedule with ε-prediction (diffusers' defaults, spelt out).
    return DDPMScheduler(
        num_train_timesteps=mt.num_train_timesteps,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        prediction_type="epsilon",
        clip_sample=True,
    )


def prepare_images(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 grayscale (N, H, W) or (N, 1, H, W) → float32 (N, 1, size, size) in [-1, 1].

    28 → 32 is a resize, not a zero pad, and exactly the one `pipeline.features.views` applies to view 0
    (torchvision bicubic, antialiased, on uint8): the model is trained on the very pixels it is
    later probed with, not on a padded variant of them.
    """
    arr = np.asarray(images)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3 or arr.dtype != np.uint8:
        raise ValueError(
            f"expected uint8 grayscale images of shape (N, H, W), got dtype {arr.dtype} shape {arr.shape}"
        )
    # np.array copies: the caller's array may be read-only (np.frombuffer), torch wants writable.
    x = torch.from_numpy(np.array(arr, copy=True)).unsqueeze(1)
    if x.shape[-2:] != (size, size):
        x = TF.resize(x, [size, size], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    return x.float().div_(127.5).sub_(1.0)


def _load_splits(params: Params, images: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(train images, held-out images), both uint8.

    Without `images`: the Fashion-MNIST train split, and a fixed subset of the test split as
    held-out. With `images` (tests, other datasets): a fixed subset of them is held out and
    not trained on (at most 10% of them, at most `eval_images`).
    """
    n_eval = params.model_train.eval_images
    rng = np.random.default_rng(mix_seed(_HELDOUT_SEED, "ddpm.heldout-images"))
    if images is None:
        from pipeline.data.datasets import fashion_mnist_arrays  # lazy: the dataset module pulls torchvision

        raw_root, download = Path(params.data.raw_root), params.data.download
        train, _ = fashion_mnist_arrays("train", raw_root, download=download)
        test, _ = fashion_mnist_arrays("test", raw_root, download=download)
        held = test[np.sort(rng.permutation(len(test))[: min(n_eval, len(test))])]
        return np.asarray(train), np.asarray(held)
    images = np.asarray(images)
    if len(images) < 10:
        raise ValueError(f"train_and_save needs at least 10 images (got {len(images)}): 10% are held out")
    n_held = min(n_eval, len(images) // 10)
    order = rng.permutation(len(images))
    return images[np.sort(order[n_held:])], images[np.sort(order[:n_held])]


def _fingerprint(params: Params, train_images: np.ndarray) -> str:
    """What must match for a checkpoint to be resumed: training params, data and recipe.

    Evaluation and sampling settings are left out: they do not change the training state.
    """
    training = params.model_train.model_dump(exclude=_NOT_TRAINING)
    return fingerprint({"v": _CKPT_VERSION, **training}, train_images)


# --------------------------------------------------------------------------------------------
# Training loop
# --------------------------------------------------------------------------------------------


def _step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    # One generator per step, seeded by (seed, step) only: resuming needs no saved RNG state,
    # and the draws do not depend on how many steps ran in this process.
    return generator(seed, "ddpm.step", step, device=device)


def _new_state(params: Params, device: torch.device, amp: torch.dtype | None) -> _FitState:
    mt = params.model_train
    unet = build_unet(mt, seed=mt.seed).to(device)
    unet.train()
    # diffusers' EMAModel: decay ramps as (1+n)/(10+n) up to `ema_decay`, so a run of a few
    # hundred steps averages its recent weights instead of staying near the random init
    # (a fixed 0.999 would keep ~50% weight on the init after 700 steps).
    ema = EMAModel(
        unet.parameters(), decay=mt.ema_decay, foreach=True, model_cls=UNet2DModel, model_config=unet.config
    )
    opt = torch.optim.AdamW(unet.parameters(), lr=mt.lr, weight_decay=mt.weight_decay)
    sched = get_constant_schedule_with_warmup(opt, num_warmup_steps=mt.warmup_steps)
    # Loss scaling only matters for fp16; for bf16/fp32 the scaler is a disabled no-op.
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)
    return _FitState(unet=unet, ema=ema, optimizer=opt, lr_schedule=sched, scaler=scaler)


def _objects(st: _FitState) -> dict[str, Stateful]:
    return {"unet": st.unet, "ema": st.ema, "optimizer": st.optimizer, "lr_schedule": st.lr_schedule,
            "scaler": st.scaler}


def _save_checkpoint(st: _FitState, ckpt: Path, fp: str) -> None:
    values = {"step": st.step, "train_seconds": st.train_seconds, "log": [list(r) for r in st.log],
              "pending": list(st.pending)}
    save_state(ckpt, fp, _objects(st), values)


def _try_resume(st: _FitState, ckpt: Path, fp: str, device: torch.device) -> bool:
    # The recipe's version is part of the fingerprint (_fingerprint).
    state = restore_state(ckpt, fp, _objects(st), device=device, what="fmnist-ddpm")
    if state is None:
        return False
    st.step = int(state["step"])
    st.train_seconds = float(state["train_seconds"])
    st.log = [(int(s), float(l), float(r)) for s, l, r in state["log"]]
    st.pending = [float(v) for v in state["pending"]]
    st.resumed_from = st.step
    return True


def _fit(
    params: Params,
    train_x: torch.Tensor,
    fingerprint: str,
    ckpt: Path,
    device: torch.device,
    amp: torch.dtype | None,
    *,
    stop_after: int | None = None,
    checkpoint_every: int = CHECKPOINT_EVERY,
    progress: bool = True,
) -> _FitState:
    mt = params.model_train
    scheduler = build_scheduler(mt)
    st = _new_state(params, device, amp)
    if _try_resume(st, ckpt, fingerprint, device):
        print(f"resuming fmnist-ddpm training from step {st.step} ({ckpt})")
    end = mt.steps if stop_after is None else min(mt.steps, stop_after)
    # The whole train set stays in memory (60k × 32² fp32 = 245 MB); batches are index gathers.
    train_x = train_x.to(device)
    if len(train_x) < mt.batch_size:
        raise ConfigError(f"model_train.batch_size = {mt.batch_size} exceeds the {len(train_x)} training images")
    order = BatchOrder(len(train_x), mt.batch_size, mt.seed)
    alphas = scheduler.alphas_cumprod.to(device)
    bar = tqdm(
        total=mt.steps,
        initial=st.step,
        desc="train fmnist-ddpm",
        unit="step",
        disable=not progress,
        dynamic_ncols=True,
    )
    t_start = time.perf_counter()
    seconds_before = st.train_seconds
    while st.step < end:
        g = _step_generator(mt.seed, st.step, device)
        x0 = train_x[order.indices(st.step).to(device)]
        noise = torch.randn(x0.shape, generator=g, device=device)
        t = torch.randint(0, mt.num_train_timesteps, (len(x0),), generator=g, device=device)
        # add_noise, written out on the cached ᾱ so it is not re-moved to the device per step.
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        lr = st.optimizer.param_groups[0]["lr"]
        with torch.autocast(device_type=device.type, dtype=amp or torch.float32, enabled=amp is not None):
            pred = st.unet(xt, t).sample
        loss = F.mse_loss(pred.float(), noise)
        st.optimizer.zero_grad(set_to_none=True)
        st.scaler.scale(loss).backward()
        st.scaler.step(st.optimizer)
        st.scaler.update()
        st.lr_schedule.step()
        st.ema.step(st.unet.parameters())
        st.step += 1
        value = loss.item()
        check_finite(
            value, what="fmnist-ddpm training loss", where=f"step {st.step}",
            hint=f"lower model_train.lr (now {mt.lr}) or set model_train.dtype: fp32 (now {mt.dtype})",
            ckpt_dir=ckpt,
        )
        st.pending.append(value)
        if st.step % mt.log_every == 0 or st.step == mt.steps:
            st.log.append((st.step, float(np.mean(st.pending)), lr))
            st.pending = []
        st.train_seconds = seconds_before + time.perf_counter() - t_start
        bar.update(1)
        bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}", refresh=False)
        if st.step % checkpoint_every == 0 or st.step == end:
            _save_checkpoint(st, ckpt, fingerprint)
    bar.close()
    return st


def _ema_unet(st: _FitState) -> UNet2DModel:
    """A separate UNet holding the EMA weights, in eval mode (the training model is untouched)."""
    unet = UNet2DModel.from_config(st.unet.config).to(next(st.unet.parameters()).device)
    st.ema.copy_to(unet.parameters())
    return unet.eval()


def train(
    params: Params,
    out_dir: Path,
    images: np.ndarray | None = None,
    *,
    stop_after: int | None = None,
    checkpoint_every: int = CHECKPOINT_EVERY,
    progress: bool = True,
) -> UNet2DModel:
    """Train (or resume) up to `stop_after` steps and checkpoint; returns the EMA model so far.

    This is the resumable half of `train_and_save` (which calls the same loop); `stop_after`
    lets a caller or a test interrupt a run at an exact step.
    """
    mt = params.model_train
    device = resolve_device(mt.device)
    amp = _resolve_amp_dtype(mt.dtype, device)
    train_u8, _ = _load_splits(params, images)
    st = _fit(
        params,
        prepare_images(train_u8, mt.image_size),
        _fingerprint(params, train_u8),
        checkpoint_dir(out_dir),
        device,
        amp,
        stop_after=stop_after,
        checkpoint_every=checkpoint_every,
        progress=progress,
    )
    return _ema_unet(st)


# --------------------------------------------------------------------------------------------
# Evaluation and outputs
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def heldout_eps_mse(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    x: torch.Tensor,
    timesteps: list[int],
    amp: torch.dtype | None = None,
    seed: int = _HELDOUT_SEED,
) -> dict[int, float]:
    """Mean ε-prediction MSE over images `x` (in [-1, 1]) noised to each timestep t.

    The noise for timestep t is one draw from a generator seeded with (seed, t), so two models
    evaluated on the same `x` see exactly the same noisy inputs (a paired comparison). `amp`:
    autocast dtype (the training one: ~3× faster on CPU; the MSE itself is taken in fp32).
    """
    device = next(unet.parameters()).device
    was_training = unet.training
    unet.eval()
    out: dict[int, float] = {}
    for t in timesteps:
        g = generator(seed, "ddpm.heldout", int(t))
        noise = torch.randn(x.shape, generator=g)
        total = 0.0
        for i in range(0, len(x), _EVAL_BATCH):
            x0, eps = x[i : i + _EVAL_BATCH].to(device), noise[i : i + _EVAL_BATCH].to(device)
            tt = torch.full((len(x0),), int(t), dtype=torch.long, device=device)
            xt = scheduler.add_noise(x0, eps, tt)
            with torch.autocast(device_type=device.type, dtype=amp or torch.float32, enabled=amp is not None):
                pred = unet(xt, tt).sample.float()
            total += F.mse_loss(pred, eps, reduction="sum").item()
        out[int(t)] = total / x.numel()
    unet.train(was_training)
    return out


@torch.no_grad()
def sample_grid(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    n: int,
    steps: int,
    seed: int,
    amp: torch.dtype | None = None,
    progress: bool = True,
) -> np.ndarray:
    """`n` DDIM samples (η = 0, `steps` steps, seeded) tiled into a uint8 grid image (H, W)."""
    ddim = DDIMScheduler.from_config(scheduler.config)
    pipe = DDIMPipeline(unet=unet, scheduler=ddim)
    pipe.set_progress_bar_config(disable=not progress, desc="sample fmnist-ddpm")
    device = next(unet.parameters()).device
    g = generator(seed, "ddpm.samples", device=device)
    with torch.autocast(device_type=device.type, dtype=amp or torch.float32, enabled=amp is not None):
        imgs = pipe(batch_size=n, generator=g, num_inference_steps=steps, eta=0.0, output_type="np").images
    imgs = (imgs[..., 0] * 255).round().astype(np.uint8)  # (n, S, S)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    s, pad = imgs.shape[1], 2
    grid = np.full((rows * (s + pad) + pad, cols * (s + pad) + pad), 128, dtype=np.uint8)
    for k, im in enumerate(imgs):
        r, c = divmod(k, cols)
        grid[pad + r * (s + pad) : pad + r * (s + pad) + s, pad + c * (s + pad) : pad + c * (s + pad) + s] = (
            im
        )
    return grid


def train_and_save(
    params: Params, out_dir: Path, reports_dir: Path, images: np.ndarray | None = None
) -> TrainResult:
    """Train `fmnist-ddpm` (resuming a matching checkpoint) and write all its outputs.

    `images`: uint8 grayscale (N, H, W) train images; None loads the Fashion-MNIST train split
    (and a fixed 1000-image subset of its test split for the held-out loss).
    Writes `out_dir/{model_index.json, unet/, scheduler/, train_summary.json}`,
    `reports_dir/model_train.csv` and `reports_dir/figures/model_samples.png`.
    """
    wall0 = time.perf_counter()
    out_dir, reports_dir = Path(out_dir), Path(reports_dir)
    mt = params.model_train
    device = resolve_device(mt.device)
    amp = _resolve_amp_dtype(mt.dtype, device)
    train_u8, held_u8 = _load_splits(params, images)
    train_x = prepare_images(train_u8, mt.image_size)
    held_x = prepare_images(held_u8, mt.image_size)
    ckpt = checkpoint_dir(out_dir)
    print(
        f"fmnist-ddpm: {len(train_x)} train / {len(held_x)} held-out images at {mt.image_size} px, "
        f"{mt.steps} steps of {mt.batch_size} on {device.type} ({_dtype_name(amp)})"
    )

    st = _fit(params, train_x, _fingerprint(params, train_u8), ckpt, device, amp)
    scheduler = build_scheduler(mt)
    ema_unet = _ema_unet(st)

    heldout_trained = heldout_eps_mse(ema_unet, scheduler, held_x, mt.eval_timesteps, amp)
    init_unet = build_unet(mt, seed=mt.seed).to(device)  # the exact weights training started from
    heldout_init = heldout_eps_mse(init_unet, scheduler, held_x, mt.eval_timesteps, amp)
    del init_unet
    for t in mt.eval_timesteps:
        print(f"held-out ε-MSE at t={t}: trained {heldout_trained[t]:.4f} vs init {heldout_init[t]:.4f}")

    out_dir.mkdir(parents=True, exist_ok=True)
    # DDPMPipeline layout (model_index.json + unet/ + scheduler/): loadable as a pipeline or per
    # subfolder; save_pretrained writes safetensors.
    DDPMPipeline(unet=ema_unet, scheduler=scheduler).save_pretrained(out_dir)

    grid = sample_grid(ema_unet, scheduler, mt.num_samples, mt.sample_steps, seed=mt.seed, amp=amp)
    fig_path = reports_dir / "figures" / "model_samples.png"
    fig_path.parent.mkdir(parents=True, exist_ok=True)
    # Nearest-neighbour ×2: 32 px samples are too small to judge at 1:1.
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(fig_path)
    write_curve(reports_dir / "model_train.csv", [dict(zip(CURVE_FIELDS, r)) for r in st.log], CURVE_FIELDS)

    final_loss = st.log[-1][1] if st.log else float("nan")
    wall = time.perf_counter() - wall0
    # Only what params, data and code determine: the timings go to reports/timings.json
    # (written by the model stage), so this file's hash changes only with the weights.
    summary = {
        "model": "fmnist-ddpm",
        "steps": st.step,
        "final_loss": final_loss,
        "heldout_eps_mse": {
            "timesteps": list(mt.eval_timesteps),
            "num_images": len(held_x),
            "trained": {str(k): v for k, v in heldout_trained.items()},
            "init": {str(k): v for k, v in heldout_init.items()},
        },
        "num_params": sum(p.numel() for p in ema_unet.parameters()),
        "device": device.type,
        "dtype": _dtype_name(amp),
        "torch": torch.__version__,
        "model_train": mt.model_dump(),
    }
    (out_dir / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    # The outputs are complete: the checkpoint has served its purpose. Removing it means a
    # forced rerun trains again rather than silently re-emitting a finished state.
    shutil.rmtree(ckpt, ignore_errors=True)
    return TrainResult(
        out_dir=out_dir,
        steps=st.step,
        train_seconds=st.train_seconds,
        wall_seconds=wall,
        final_loss=final_loss,
        heldout_trained=heldout_trained,
        heldout_init=heldout_init,
        resumed_from=st.resumed_from,
        device=device.type,
        dtype=_dtype_name(amp),
        unet=ema_unet,
    )
