"""Diff-C speed at the paper's shape: training step rate and per-sample inference latency.

    python -m bench.diffc [--device auto] [--steps N] [--warmup N] [--batch 16] [--degenerate]
                          [--channels 1280] [--size 32] [--width 1024] [--classes 37] [--seeds N]

(a) Training: samples/s of one full step of `pipeline.diffc.train.train_step` (forward,
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
(d) With `--degenerate`: the embedded default's shape instead (128×4×4 maps, width 256, 10
    classes), whose last stride-2 conv sees a 1×1 map: training step time and the steps with
    wrong gradients (non-finite, or nonzero on kernel taps that see only padding) for three
    ways of computing the convs on 1×1 inputs under bf16 autocast — the plain conv (oneDNN's
    bf16 kernel, faulty there), the plain conv in fp32, and the centre-tap matmul Diff-C uses
    — against fp32 throughout.
(e) With `--seeds N` (CPU): the embedded default's Diff-C (width 64, batch 64, bf16) on its
    128×4×4 bottleneck and 1×32×32 input maps, N seeds one after another with all threads
    (the baseline) against side by side, one process each with threads // N threads (what
    `fit_diffc` does on a CPU): seconds per step per seed and the throughput ratio.
(c) With `--loader-samples N` (default on GPU): one epoch of that training step fed by the
    store loader from N paper-shaped maps on disk, and the fraction of it spent waiting for
    batches (device busy = the rest; target >= 90%).

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

from bench.record import record
from pipeline.devices import resolve_device, resolve_dtype
from pipeline.diffc.model import ConvBlock, DiffcConfig, build_diffc, num_parameters
from pipeline.diffc.train import predict_topk, to_input, train_step


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
        row = f"Diff-C {args.channels}x{args.size}x{args.size}, width {args.width}, batch {args.batch}, {name}"
        record(args.json, "diffc", row, "train steps/s", 1 / seconds)
        record(args.json, "diffc", row, "inference ms/sample", infer_s[name] * 1e3)

    base, fast = settings
    print(f"ratio (a) train samples/s, {fast} / {base}: {train_rate[fast] / train_rate[base]:.2f}x")
    print(f"ratio (b) inference latency, {base} / {fast}: {infer_s[base] / infer_s[fast]:.2f}x")


def _conv_in_fp32(block: ConvBlock, x: torch.Tensor) -> torch.Tensor:
    if x.shape[-2:] == (1, 1):
        with torch.autocast(x.device.type, enabled=False):
            y = block.conv(x.float())
    else:
        y = block.conv(x)
    return block.drop(block.act(block.norm(y)))


def bench_degenerate(args: argparse.Namespace) -> None:
    """(d) The 1×1-map convs of the embedded default under bf16: cost and correctness."""
    device = resolve_device(args.device)
    steps = args.steps if args.steps is not None else 40
    cfg = DiffcConfig(in_channels=128, num_classes=10, width=256, dropout=0.5)
    g = torch.Generator().manual_seed(0)
    fmap = torch.randn(steps + 5, args.batch, 128, 4, 4, generator=g).half()
    label = torch.randint(0, 10, (steps + 5, args.batch), generator=g)
    fix = ConvBlock.forward
    variants = {
        "fp32 throughout": (None, fix),
        "bf16, plain conv on 1x1": (torch.bfloat16, lambda b, x: b.drop(b.act(b.norm(b.conv(x))))),
        "bf16, 1x1 convs in fp32": (torch.bfloat16, _conv_in_fp32),
        "bf16, centre-tap matmul (Diff-C)": (torch.bfloat16, fix),
    }
    print(
        f"Diff-C at the embedded shape: maps 128x4x4, width 256, batch {args.batch}, device {device}, "
        f"{steps} timed steps after 5 warm-up, channels_last"
    )
    seconds: dict[str, float] = {}
    try:
        for name, (amp_dtype, forward) in variants.items():
            ConvBlock.forward = forward
            model = build_diffc(cfg, seed=0).to(device, memory_format=torch.channels_last).train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
            scaler = torch.amp.GradScaler(device.type, enabled=False)
            last = model.blocks[-1].conv  # its input is 1x1
            bad, times = 0, []
            for i in range(steps + 5):
                _sync(device)
                start = time.perf_counter()
                train_step(model, optimizer, scaler, to_input(fmap[i], device), label[i].to(device), amp_dtype=amp_dtype)
                _sync(device)
                if i >= 5:
                    times.append(time.perf_counter() - start)
                    grad = last.weight.grad
                    off_centre = grad.clone()
                    off_centre[:, :, 1, 1] = 0
                    bad += bool(not torch.isfinite(grad).all() or off_centre.abs().max() > 0)
            seconds[name] = statistics.median(times)
            print(f"(d) {name:34s} {seconds[name] * 1e3:8.2f} ms/step   wrong gradients in {bad}/{steps} steps")
    finally:
        ConvBlock.forward = fix
    base = seconds["fp32 throughout"]
    for name in list(variants)[1:]:
        print(f"ratio (d) step time, fp32 throughout / {name}: {base / seconds[name]:.2f}x")


def bench_loader(args: argparse.Namespace, device: torch.device, amp: torch.dtype) -> None:
    """(c) Does the store loader keep the device busy? One epoch of the fast training step fed
    by `FmapLoader` from a store of `--loader-samples` paper-shaped maps (streaming shards, not
    held in memory): the fraction of the epoch spent waiting for the next batch. The device is
    busy for the rest (steps are synchronised), so busy = 1 - wait."""
    import shutil
    import tempfile

    import numpy as np

    from pipeline.features.loaders import FmapLoader
    from pipeline.features.store import ArraySpec, create_store

    n, shape = args.loader_samples, (args.channels, args.size, args.size)
    tmp = Path(tempfile.mkdtemp(prefix="bench-diffc-loader-"))
    try:
        store = create_store(
            tmp / "s.zarr", {"bench": True}, {"train": n},
            [ArraySpec("fmap", shape, "float16"), ArraySpec("label", (), "int64", True)], 64,
        )
        rng = np.random.default_rng(0)
        for j, (a, b) in enumerate(store.shards("train")):
            store.write_shard("train", j, {
                "fmap": rng.standard_normal((b - a, *shape), dtype=np.float32).astype(np.float16),
                "label": rng.integers(0, args.classes, b - a),
            })
        cfg = DiffcConfig(in_channels=args.channels, num_classes=args.classes, width=args.width)
        model = build_diffc(cfg, seed=0).to(device, memory_format=torch.channels_last).train()
        gpu = device.type == "cuda"
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True if gpu else None)
        scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
        loader = FmapLoader(store, "train", args.batch, seed=0, in_memory=False, drop_last=True)
        for epoch in range(2):  # the first epoch warms kernels and the page cache
            wait = 0.0
            _sync(device)
            start = time.perf_counter()
            batches = iter(loader)
            while True:
                t0 = time.perf_counter()
                try:
                    fmap, label = next(batches)
                except StopIteration:
                    break
                wait += time.perf_counter() - t0
                train_step(model, optimizer, scaler, to_input(fmap, device), label.to(device), amp_dtype=amp)
                _sync(device)
            total = time.perf_counter() - start
        print(
            f"(c) loader feed, {n} maps streamed from shards: {n / total:.1f} samples/s, waiting for batches "
            f"{100 * wait / total:.1f}% of the epoch → device busy {100 * (1 - wait / total):.1f}% (target >= 90%)"
        )
        row = f"Diff-C {args.channels}x{args.size}x{args.size}, fed by the store loader ({n} maps)"
        record(args.json, "diffc", row, "train steps/s", n / args.batch / total)
        record(args.json, "diffc", row, "% waiting for the loader", 100 * wait / total)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_START = None  # a worker's start barrier (side-by-side runs): set by the pool's initializer


def _set_start(barrier) -> None:
    global _START
    _START = barrier


def _seed_worker(shape: tuple[int, int, int], threads: int, warmup: int, steps: int) -> float:
    """Seconds per training step of one embedded-default Diff-C with `threads` threads."""
    torch.set_num_threads(threads)
    if _START is not None:  # all seeds start stepping together, after their imports
        _START.wait()
    device = torch.device("cpu")
    cfg = DiffcConfig(in_channels=shape[0], num_classes=10, width=64, dropout=0.0)
    g = torch.Generator().manual_seed(0)
    fmap = torch.randn(64, *shape, generator=g).half()
    label = torch.randint(0, 10, (64,), generator=g)
    return _bench_setting(cfg, fmap, label, device, torch.bfloat16, torch.channels_last,
                          warmup=warmup, steps=steps)[0]


def bench_seeds(args: argparse.Namespace) -> None:
    import multiprocessing

    n, threads = args.seeds, torch.get_num_threads()
    steps, warmup = args.steps or 40, args.warmup or 10
    print(f"Diff-C seeds on CPU: {n} seeds, {threads} threads; median of {steps} steps after {warmup}")
    for shape in ((128, 4, 4), (1, 32, 32)):
        alone = _seed_worker(shape, threads, warmup, steps)
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(n, initializer=_set_start, initargs=(ctx.Barrier(n),)) as pool:
            side = pool.starmap(_seed_worker, [(shape, max(1, threads // n), warmup, steps)] * n)
        worst = max(side)
        print(f"  {'x'.join(map(str, shape)):>8}: one after another {alone * 1e3:6.1f} ms/step; side by side "
              f"{', '.join(f'{v * 1e3:.1f}' for v in side)} ms/step; {n * alone / worst:.2f}x the throughput")


def main(argv: list[str] | None = None) -> None:
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
    parser.add_argument(
        "--loader-samples", type=int, default=None,
        help="(c) maps in the loader-feed test (default 2048 on GPU, 0 = skip on CPU)",
    )
    parser.add_argument(
        "--degenerate", action="store_true",
        help="(d) only: the embedded shape's 1x1-map convs under bf16 (cost and wrong-gradient count)",
    )
    parser.add_argument(
        "--seeds", type=int, default=0,
        help="(e) only: N embedded-default Diff-C seeds one after another vs side by side (CPU)",
    )
    parser.add_argument("--json", type=Path, default=None, help="append (a)-(c) results as JSON lines here")
    args = parser.parse_args(argv)
    if args.seeds:
        bench_seeds(args)
        return
    if args.degenerate:
        bench_degenerate(args)
        return
    bench(args)
    device = resolve_device(args.device)
    samples = args.loader_samples if args.loader_samples is not None else (2048 if device.type == "cuda" else 0)
    if samples:
        args.loader_samples = samples
        bench_loader(args, device, _fast_amp(device))


if __name__ == "__main__":
    main()
