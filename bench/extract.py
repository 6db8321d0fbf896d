"""What caching buys: a new (layer, t) key with latents cached vs the naive per-image way.

    python -m bench.extract [--size 256] [--images 4] [--layer up_ft1] [--loader-samples 512]

(a) Full-size SD-1.5 architecture (UNet + VAE from their configs, random weights, no
    download) at `--size` px on this machine's default device (CPU here):
    - naive, as the authors' and DIFT's code do: for each image, VAE encode + the full UNet
      forward, batch 1, fp32;
    - this pipeline for a new key: the latents are already in latents.zarr, so only the
      UNet up to `--layer` runs (early exit), in `extract.dtype: auto` (bf16 on CPUs with bf16
      units), one sample per forward (batch-invariant), and the pooled + fp16 map are written
      to a sharded store.
    Printed as seconds per image and the ratio naive / pipeline (target >= 4x).
(b) The fmap training loader against batches taken from an in-memory numpy array of the same
    maps, samples/s and ratio (target >= 0.8x): streaming (each batch of the whole-split
    shuffle gathered from the memory-mapped shards, a thread reading ahead) and the split
    held in memory.
Both measured in this one run; medians over repeats.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.timing import median_seconds
from pipeline.backbones.base import Conditioning, extract_taps
from pipeline.backbones.synthetic import SD15_TEXT_SHAPE, sd15_in_memory
from pipeline.devices import resolve_device, resolve_dtype
from pipeline.features.loaders import FmapLoader
from pipeline.features.store import ArraySpec, create_store

# stable-diffusion-v1-5's vae/config.json, spelt out (no download here).
SD15_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)


def bench_key(size: int, images: int, layer: str, repeats: int) -> None:
    from diffusers import AutoencoderKL

    device = resolve_device("auto")
    fast_dtype = resolve_dtype("auto", device)
    torch.manual_seed(0)
    vae = AutoencoderKL(**SD15_VAE_CONFIG).to(device).eval()
    naive_bb = sd15_in_memory(torch.float32, device=device)
    fast_bb = sd15_in_memory(fast_dtype, device=device)
    pixels = torch.rand(images, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    # No text encoder in memory: a zero prompt embedding stands in (same cost for both ways).
    text = torch.zeros(1, *SD15_TEXT_SHAPE, device=device)
    cond_naive = Conditioning("text", texts=("",), text_embeds=text)
    cond_fast = Conditioning("text", texts=("",), text_embeds=text.to(fast_dtype))
    t = 25

    def naive() -> None:
        # Per image: VAE encode, then the full UNet forward, batch 1, fp32.
        with torch.inference_mode():
            for i in range(images):
                x0 = vae.encode(pixels[i : i + 1].to(device)).latent_dist.mode() * vae.config.scaling_factor
                noise = torch.randn_like(x0)
                x_t = naive_bb.scheduler.add_noise(x0, noise, torch.tensor([t], device=device))
                naive_bb.forward(x_t, torch.tensor([t], device=device), cond_naive)

    with torch.inference_mode():
        latents = torch.cat(
            [vae.encode(pixels[i : i + 1].to(device)).latent_dist.mode() * vae.config.scaling_factor for i in range(images)]
        ).float().cpu()
    tmp = Path(tempfile.mkdtemp(prefix="bench-extract-"))

    def pipeline() -> None:
        taps = extract_taps(fast_bb, latents, t, cond_fast, [layer], seed=0, indices=list(range(images)))[layer].float().cpu()
        store_path = tmp / f"s{time.perf_counter_ns()}.zarr"
        c, h, w = taps.shape[1:]
        store = create_store(
            store_path,
            {"bench": True},
            {"train": images},
            [ArraySpec("pooled", (c,), "float32", True), ArraySpec("fmap", (c, h, w), "float16")],
            images,
        )
        store.write_shard("train", 0, {"pooled": taps.mean(dim=(2, 3)).numpy(), "fmap": taps.half().numpy()})
        shutil.rmtree(store_path)

    pipeline()  # warm-up: first-call allocations and kernel selection
    naive()
    results = {"naive": [], "pipeline": []}
    for _ in range(repeats):  # interleaved so background load hits both alike
        results["naive"].append(median_seconds(naive, 1) / images)
        results["pipeline"].append(median_seconds(pipeline, 1) / images)
    shutil.rmtree(tmp, ignore_errors=True)
    n, p = statistics.median(results["naive"]), statistics.median(results["pipeline"])
    print(f"(a) new (layer, t) key, SD-1.5 architecture at {size} px on {device}, {images} images, median of {repeats}")
    print(f"    naive   (VAE + full UNet, batch 1, fp32):            {n:7.3f} s/img")
    print(f"    pipeline (cached latents, early exit at {layer}, {str(fast_dtype).removeprefix('torch.')}): {p:7.3f} s/img")
    print(f"    speed-up naive / pipeline: {n / p:.2f}x  (target >= 4x)")


def bench_loader(samples: int, channels: int, side: int, batch: int, repeats: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-loader-"))
    try:
        rng = np.random.default_rng(0)
        fmap = rng.standard_normal((samples, channels, side, side)).astype(np.float16)
        labels = rng.integers(0, 37, samples)
        shard = 64
        store = create_store(
            tmp / "s.zarr",
            {"bench": True},
            {"train": samples},
            [ArraySpec("fmap", (channels, side, side), "float16"), ArraySpec("label", (), "int64", True)],
            shard,
        )
        for j, (a, b) in enumerate(store.shards("train")):
            store.write_shard("train", j, {"fmap": fmap[a:b], "label": labels[a:b]})

        # One loader object for all epochs, as a training loop uses it.
        stream_loader = FmapLoader(store, "train", batch, shuffle=True, seed=0, in_memory=False)

        def from_store() -> None:
            for x, y in stream_loader:
                x.float()  # what a training step does first

        def from_store_in_memory() -> None:
            for x, y in memory_loader:
                x.float()

        memory_loader = FmapLoader(store, "train", batch, shuffle=True, seed=0, in_memory=True)

        def from_numpy() -> None:
            order = np.random.default_rng(0).permutation(samples)
            for start in range(0, samples, batch):
                idx = order[start : start + batch]
                torch.from_numpy(fmap[idx]).float()
                torch.from_numpy(labels[idx])

        from_store(), from_numpy(), from_store_in_memory()  # warm the page cache, fill the cache
        ts, tn, tm = [], [], []
        for _ in range(repeats):  # interleaved so background load hits all alike
            ts.append(median_seconds(from_store, 1))
            tn.append(median_seconds(from_numpy, 1))
            tm.append(median_seconds(from_store_in_memory, 1))
        s, n, m = (samples / statistics.median(t) for t in (ts, tn, tm))
        # Ratios per repeat (each pair ran back to back), then their median: steadier than a
        # ratio of medians on a machine whose load changes between repeats.
        rs = statistics.median(b / a for a, b in zip(ts, tn))
        rm = statistics.median(b / a for a, b in zip(tm, tn))
        mb = channels * side * side * 2 / 2**20
        print(f"(b) fmap loader, {samples} samples of {channels}x{side}x{side} fp16 ({mb:.2f} MB each), batch {batch}")
        print(f"    in-memory numpy (baseline):     {n:8.0f} samples/s")
        print(f"    store loader, streaming:        {s:8.0f} samples/s   ratio {rs:.2f}x  (target >= 0.8x)")
        print(f"    store loader, split in memory:  {m:8.0f} samples/s   ratio {rm:.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--layer", default="up_ft1")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--loader-samples", type=int, default=4096)
    parser.add_argument("--loader-channels", type=int, default=1280)
    parser.add_argument("--loader-side", type=int, default=16)
    parser.add_argument("--skip-key", action="store_true", help="only the loader benchmark")
    args = parser.parse_args(argv)
    if not args.skip_key:
        bench_key(args.size, args.images, args.layer, args.repeats)
    bench_loader(args.loader_samples, args.loader_channels, args.loader_side, 16, args.repeats)


if __name__ == "__main__":
    main()
