"""Extraction throughput with the store writer on: images/s of a (layer, t) key from cached latents.

    python -m bench.extract_rate --model sd15 [--layer up_ft1] [--size 512] [--batch 16]
        [--images 256] [--device auto] [--dtype auto] [--json FILE]
    python -m bench.extract_rate --model dit-xl-2-256 --layer block14 --size 256
    python -m bench.extract_rate --model tiny-sd --layer up_ft1 --size 64 --images 16   # seconds on a CPU

The architecture is built from its config with random weights (no download; the speed does not
depend on the weights): SD-1.5's UNet in memory (`sd15_in_memory`), DiT-XL/2 and the tiny models
saved to a temporary folder and loaded back through `load_backbone`, the pipeline's own loader.
What is timed is what `extract` does per store shard once the latents are cached: seeded noise,
the forward up to `--layer` (early exit) in batches of `--batch` (`extract.batch_invariant:
false`, the default), the pooled vector and the fp16 map copied to the host, one shard written
per batch. SD-1.5 is fed a zero prompt embedding (no text encoder in memory), DiT its null class.
Printed: images/s over `--images` after one untimed batch, and the share of that time spent
writing the store.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.record import record  # noqa: E402
from pipeline.backbones.base import Backbone, Conditioning, extract_taps  # noqa: E402
from pipeline.devices import resolve_device, resolve_dtype  # noqa: E402
from pipeline.features.store import ArraySpec, create_store  # noqa: E402

# facebook/DiT-XL-2-256's transformer/config.json, the entries that shape the network.
DIT_XL2_256_CONFIG = dict(
    num_attention_heads=16,
    attention_head_dim=72,
    in_channels=4,
    out_channels=8,
    num_layers=28,
    sample_size=32,
    patch_size=2,
    num_embeds_ada_norm=1000,
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _saved_dit(out: Path) -> Path:
    """DiT-XL/2 (256 px) with random weights as a DiTPipeline folder (a tiny VAE beside it:
    the latents are fed directly, so it is never run)."""
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    from pipeline.backbones.synthetic import _tiny_vae

    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(**DIT_XL2_256_CONFIG).eval()
    scheduler = DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear", clip_sample=False
    )
    DiTPipeline(transformer=transformer, vae=_tiny_vae(1), scheduler=scheduler).save_pretrained(out)
    return out


def build(model: str, device: torch.device, dtype: torch.dtype, tmp: Path) -> tuple[Backbone, Conditioning]:
    from pipeline.backbones.load import load_backbone
    from pipeline.backbones.synthetic import SD15_TEXT_SHAPE, build_synthetic, sd15_in_memory

    if model == "sd15":
        backbone = sd15_in_memory(dtype, device=device)
        text = torch.zeros(1, *SD15_TEXT_SHAPE, device=device, dtype=dtype)
        return backbone, Conditioning("text", texts=("",), text_embeds=text)
    if model == "dit-xl-2-256":
        path = _saved_dit(tmp / model)
    elif model in ("tiny-sd", "tiny-dit"):
        path = build_synthetic(model, tmp / model)
    else:
        raise SystemExit(f"--model {model!r}: one of sd15, dit-xl-2-256, tiny-sd, tiny-dit")
    backbone = load_backbone(model, model_path=path, device=device, dtype=dtype)
    return backbone, backbone.null_conditioning()  # tiny-sd has its text encoder


def bench(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    tmp = Path(tempfile.mkdtemp(prefix="bench-extract-rate-"))
    try:
        backbone, cond = build(args.model, device, dtype, tmp)
        side = args.size // 8  # both families work on the SD VAE's latents (/ 8)
        g = torch.Generator().manual_seed(0)
        latents = torch.randn(args.images + args.batch, 4, side, side, generator=g)
        probe = extract_taps(backbone, latents[:1], args.t, cond, [args.layer], seed=0, indices=[0])[args.layer]
        c, h, w = probe.shape[1:]
        store = create_store(
            tmp / "store.zarr", {"bench": True}, {"train": args.images},
            [ArraySpec("pooled", (c,), "float32", compress=True), ArraySpec("fmap", (c, h, w), "float16")],
            args.batch,
        )

        def batch_taps(start: int) -> tuple[torch.Tensor, torch.Tensor]:
            x0 = latents[start : start + args.batch]
            taps = extract_taps(
                backbone, x0, args.t, cond, [args.layer], seed=0,
                indices=list(range(start, start + len(x0))), batch_invariant=False,
            )[args.layer]
            return taps.mean(dim=(2, 3)).cpu(), taps.half().cpu()

        batch_taps(args.images)  # warm-up: allocations, kernel choice (the extra latents)
        _sync(device)
        writing = 0.0
        start = time.perf_counter()
        for shard, (a, b) in enumerate(store.shards("train")):
            pooled, fmap = batch_taps(a)
            t0 = time.perf_counter()
            store.write_shard("train", shard, {"pooled": pooled[: b - a].numpy(), "fmap": fmap[: b - a].numpy()})
            writing += time.perf_counter() - t0
        total = time.perf_counter() - start
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rate = args.images / total
    name = str(dtype).removeprefix("torch.")
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else f" ({torch.get_num_threads()} threads)"
    print(
        f"{args.model} {args.layer} ({c}x{h}x{w}) at {args.size} px, t = {args.t}, {name}, batch {args.batch}, "
        f"on {device}{gpu}: {rate:.1f} images/s over {args.images}, store writes {100 * writing / total:.1f}% of the time",
        flush=True,
    )
    row = f"extract {args.model} {args.layer} {args.size}px {name} batch {args.batch}"
    record(args.json, "extract_rate", row, "images/s", rate)
    record(args.json, "extract_rate", row, "store write %", 100 * writing / total)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sd15", help="sd15, dit-xl-2-256, tiny-sd or tiny-dit")
    parser.add_argument("--layer", default="up_ft1")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (latents: size / 8)")
    parser.add_argument("--t", type=int, default=25)
    parser.add_argument("--batch", type=int, default=16, help="samples per forward and per store shard")
    parser.add_argument("--images", type=int, default=256, help="timed images (a multiple of --batch)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 where supported), bf16, fp16, fp32")
    parser.add_argument("--json", type=Path, default=None, help="append each result as a JSON line here")
    bench(parser.parse_args(argv))


if __name__ == "__main__":
    main()
