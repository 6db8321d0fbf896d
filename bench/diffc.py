"""Diff-C speed at the paper's shape: training step rate and per-sample inference latency.

    python -m bench.diffc [--device auto] [--steps N] [--warmup N] [--batch 16]
                          [--channels 1280] [--size 32] [--width 1024] [--classes 37]

(a) Training: samples/s of one full step of `pipeline.diffc_train.train_step` (forward,
    cross-entropy, backward, AdamW) on random maps shaped like SD-1.5 up_ft1 at 512 px
    (1280×32×32), batch 16, width 1024, 37 classes (Oxford-IIIT Pet), in
    - fp32 with contiguous (NCHW) tensors: the baseline, and
    - the fast setting `fit_diffc` uses: autocast (bf16, or fp16 on GPUs without bf16) with
      channels_last model and inputs;
    printed with their ratio. Inputs start as fp16 on the host, as the store yields them, and
    go through the same `to_input` as training (so the host→device copy is counted).
(b) Inference: seconds per sample of the Diff-C head alone (`predict_topk`, batch 1, eval), in
    both settings. The paper's image → class figure (≈0.13 s/sample on an RTX A6000) also
    includes the backbone's forward, which is not measured here.

Each number is the median over `--steps` timed repeats after `--warmup` untimed ones, in this
one run; CUDA is synchronised before every clock read. Defaults are small on CPU (a run takes
~1-2 min on 2 cores) and larger on GPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

if not __package__:  # run as `python bench/diffc.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.devices import resolve_device, resolve_dtype
from pipeline.diffc import DiffcConfig, build_diffc, num_parameters
from pipeline.diffc_train import predict_topk, to_input, train_step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn: Callable[[], object], device: torch.device, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _fast_amp(device: torch.device) -> torch.dtype:
    """The autocast dtype of the fast setting: bf16 wherever the device has it, else fp16 on CUDA."""
    dtype = resolve_dtype("auto", device)
    if dtype == torch.float32:  # a CPU without bf16 units: bf16 still runs, emulated
        return torch.bfloat16
    return dtype


def _bench_setting(
    cfg: DiffcConfig,
    fmap: torch.Tensor,
    label: torch.Tensor,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    memory_format: torch.memory_format,
    *,
    warmup: int,
    steps: int,
) -> tuple[float, float]:
    """(seconds per training step, seconds per batch-1 inference) of one precision/layout."""
    gpu = device.type == "cuda"
    model = build_diffc(cfg, seed=0).to(device, memory_format=memory_format).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=True if gpu else None)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    def step() -> None:
        x = to_input(fmap, device).contiguous(memory_format=memory_format)
        train_step(model, optimizer, scaler, x, label.to(device), amp_dtype=amp_dtype)

    train_s = _median_seconds(step, device, warmup, steps)
    one = fmap[:1]
    infer = _median_seconds(lambda: predict_topk(model, one, 5, amp_dtype=amp_dtype), device, warmup, steps)
    return train_s, infer


def bench(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    steps = args.steps if args.steps is not None else (20 if gpu else 3)
    warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
    cfg = DiffcConfig(in_channels=args.channels, num_classes=args.classes, width=args.width)
    amp = _fast_amp(device)
    amp_name = {torch.bfloat16: "bf16", torch.float16: "fp16"}[amp]
    print(
        f"Diff-C {num_parameters(cfg) / 1e6:.1f}M params, maps {args.channels}x{args.size}x{args.size}, "
        f"batch {args.batch}, {args.classes} classes, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if gpu else f" ({torch.get_num_threads()} threads)")
        + f"; median of {steps} after {warmup} warm-up"
    )
    if gpu:
        print(f"  (fp32 convs use TF32: torch.backends.cudnn.allow_tf32 = {torch.backends.cudnn.allow_tf32})")
    g = torch.Generator().manual_seed(0)
    # fp16 on the host, as the store yields maps.
    fmap = torch.randn(args.batch, args.channels, args.size, args.size, generator=g).half()
    label = torch.randint(0, args.classes, (args.batch,), generator=g)

    settings = {
        "fp32 NCHW": (None, torch.contiguous_format),
        f"{amp_name} autocast + channels_last": (amp, torch.channels_last),
    }
    train_rate: dict[str, float] = {}
    infer_s: dict[str, float] = {}
    for name, (amp_dtype, memory_format) in settings.items():
        seconds, infer_s[name] = _bench_setting(
            cfg, fmap, label, device, amp_dtype, memory_format, warmup=warmup, steps=steps
        )
        if gpu:
            torch.cuda.empty_cache()  # the last setting's model and AdamW state are gone
        train_rate[name] = args.batch / seconds
        print(f"(a) train step  {name:32s} {seconds:8.3f} s/step  {train_rate[name]:9.1f} samples/s")
        print(f"(b) inference   {name:32s} {infer_s[name] * 1e3:8.2f} ms/sample (batch 1, head only)")

    base, fast = settings
    print(f"ratio (a) train samples/s, {fast} / {base}: {train_rate[fast] / train_rate[base]:.2f}x")
    print(f"ratio (b) inference latency, {base} / {fast}: {infer_s[base] / infer_s[fast]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    parser.add_argument("--steps", type=int, default=None, help="timed repeats (default 3 on CPU, 20 on GPU)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed repeats first (default 1 CPU, 5 GPU)"
    )
    parser.add_argument("--batch", type=int, default=16, help="training batch size (paper: 16)")
    parser.add_argument("--channels", type=int, default=1280, help="map channels C (SD-1.5 up_ft1: 1280)")
    parser.add_argument("--size", type=int, default=32, help="map side H = W (up_ft1 at 512 px: 32)")
    parser.add_argument("--width", type=int, default=1024, help="Diff-C width (paper: 1024)")
    parser.add_argument("--classes", type=int, default=37, help="classes (Oxford-IIIT Pet: 37)")
    bench(parser.parse_args())


if __name__ == "__main__":
    main()
