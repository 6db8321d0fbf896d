"""Step time of the embedded model's training loop: bf16 autocast vs fp32, measured in one run.

    python -m bench.ddpm_train [--batch-size 128] [--steps 8] [--threads N]

Builds the `fmnist-ddpm` UNet from params.yaml's `model_train` and times full training steps
(forward, ε-MSE, backward, AdamW, EMA) on random data, first in fp32 (the baseline), then
under bf16 autocast; prints s/step for both and their ratio. The first steps of each mode
are warm-up (oneDNN picks kernels per shape) and are not timed.

On a busy machine the numbers swing widely: two-thread OpenMP work competing with other
processes for 2 cores can be 5-10× slower than with one thread, so compare `--threads 1`
too when other jobs are running.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel

from pipeline.config import load_params
from pipeline.embedded.train import build_scheduler, build_unet


def time_steps(amp: torch.dtype | None, batch_size: int, steps: int, warmup: int) -> float:
    """Mean seconds per training step (after `warmup` untimed steps)."""
    mt = load_params().model_train
    unet = build_unet(mt, seed=0).train()
    ema = EMAModel(unet.parameters(), decay=mt.ema_decay, foreach=True)
    opt = torch.optim.AdamW(unet.parameters(), lr=mt.lr, weight_decay=mt.weight_decay)
    alphas = build_scheduler(mt).alphas_cumprod
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(batch_size, 1, mt.image_size, mt.image_size, generator=g) * 2 - 1
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, mt.num_train_timesteps, (batch_size,), generator=g)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
            pred = unet(xt, t).sample
        loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.step(unet.parameters())
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return sum(times) / len(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=None, help="default: model_train.batch_size")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per mode")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per mode")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = args.batch_size or load_params().model_train.batch_size
    print(f"fmnist-ddpm train step, batch {batch}, {torch.get_num_threads()} threads")
    fp32 = time_steps(None, batch, args.steps, args.warmup)
    print(f"fp32 (baseline)  {fp32:.3f} s/step")
    bf16 = time_steps(torch.bfloat16, batch, args.steps, args.warmup)
    print(f"bf16 autocast    {bf16:.3f} s/step   speed-up ×{fp32 / bf16:.2f}")


if __name__ == "__main__":
    main()
