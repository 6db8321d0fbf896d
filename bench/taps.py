"""Early exit on the full-size SD-1.5 UNet: seconds per image, full forward vs stopping at each layer.

    python -m bench.taps [--size 256] [--dtype fp32] [--batch 2] [--repeats 3] [--device cpu]

Random weights built from SD-1.5's config (no download). Baseline, measured in the same run:
diffusers' plain `unet(...)` forward. Rows: the adapter's `taps` stopping after each layer
(early exit) and with early exit off, in two groups — the whole batch in one forward
(batch_invariant=False) and one sample per forward (batch_invariant=True, the default) —
each as a ratio to the full forward run the same way. Configurations are timed round-robin
(one pass over all of them per repeat) so a change in background load hits them alike; the
median over repeats is reported.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from pipeline.backbones.base import Conditioning
from pipeline.backbones.noise import batch_noise
from pipeline.backbones.synthetic import SD15_TEXT_SHAPE, sd15_in_memory
from pipeline.devices import resolve_device, resolve_dtype

T_STEP = 25


def _time(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()  # kernels run asynchronously: wait before reading the clock
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (latent = size / 8)")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16", "auto"])
    parser.add_argument("--device", default="cpu", help="cpu (the issue's setting), cuda, or auto")
    parser.add_argument("--batch", type=int, default=2, help="images per call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--channels-last", action="store_true", help="run the UNet in channels_last memory format"
    )
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    built = time.perf_counter()
    bb = sd15_in_memory(dtype, device=device)
    if args.channels_last:
        bb.denoiser.to(memory_format=torch.channels_last)
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu, {torch.get_num_threads()} threads"
    )
    print(
        f"SD-1.5 UNet (random weights), {args.size} px, {dtype}, batch {args.batch}, {where}; "
        f"built in {time.perf_counter() - built:.1f} s"
    )

    side = args.size // 8
    x0 = torch.randn(args.batch, 4, side, side, generator=torch.Generator().manual_seed(0)).to(device)
    noise = batch_noise(x0.shape[1:], seed=0, indices=range(args.batch), device=device)
    embeds = torch.randn(1, *SD15_TEXT_SHAPE, generator=torch.Generator().manual_seed(1)).to(device)
    cond = Conditioning("text", texts=("",), text_embeds=embeds)
    x_t = bb.add_noise(x0, T_STEP, noise).to(dtype)
    if args.channels_last:
        x_t = x_t.contiguous(memory_format=torch.channels_last)

    def full_forward(per_sample: bool) -> None:
        """diffusers' plain forward on the same inputs, the batch at once or one sample at a time."""
        step = 1 if per_sample else args.batch
        with torch.inference_mode():
            for start in range(0, args.batch, step):
                chunk = x_t[start : start + step]
                bb.denoiser(
                    chunk, T_STEP, encoder_hidden_states=embeds.expand(chunk.shape[0], -1, -1).to(dtype)
                )

    # Two groups, each against its own full forward: the batch in one forward
    # (batch_invariant=False), and one sample per forward (batch_invariant=True, the default).
    groups = {"batch": False, "per-sample": True}
    configs: dict[str, Callable[[], object]] = {}
    for group, per_sample in groups.items():
        configs[f"{group}: full forward (diffusers)"] = lambda per_sample=per_sample: full_forward(per_sample)
        for layer in bb.layer_names():
            configs[f"{group}: early exit at {layer}"] = lambda layer=layer, per_sample=per_sample: bb.taps(
                x0, T_STEP, cond, [layer], noise, batch_invariant=per_sample
            )
        configs[f"{group}: taps, all layers, no exit"] = lambda per_sample=per_sample: bb.taps(
            x0, T_STEP, cond, bb.layer_names(), noise, early_exit=False, batch_invariant=per_sample
        )

    for per_sample in groups.values():  # warm-up: first calls allocate and pick kernels
        full_forward(per_sample)
        bb.taps(x0, T_STEP, cond, ["up_ft1"], noise, batch_invariant=per_sample)
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.repeats):
        for name, fn in configs.items():
            times[name].append(_time(fn, device) / args.batch)

    print(f"{'':40s} {'s/img':>8s} {'× full':>8s}   (median of {args.repeats}; all runs, s/img)")
    for group in groups:
        base = statistics.median(times[f"{group}: full forward (diffusers)"])
        for name, values in times.items():
            if name.startswith(f"{group}:"):
                med = statistics.median(values)
                runs = " ".join(f"{v:.4f}" for v in values)
                print(f"{name:40s} {med:8.4f} {med / base:8.3f}   [{runs}]")
    one_at_a_time = statistics.median(times["per-sample: full forward (diffusers)"])
    batched = statistics.median(times["batch: full forward (diffusers)"])
    print(
        f"one sample per forward vs batch of {args.batch}: {one_at_a_time / batched:.3f}× the time per image"
    )


if __name__ == "__main__":
    main()
