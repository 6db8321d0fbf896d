"""Image → class latency with Diff-C, against the Diffusion Classifier's cost, in one run.

    python -m bench.classify [--size 512] [--layer up_ft1] [--classes 37] [--repeats 3]

SD-1.5 architecture (VAE + UNet built from their configs, random weights, no download) at
`--size` px, batch 1, on this machine's default device in `extract.dtype: auto`:
- Diff-C path (what `revelio classify` runs): VAE encode, noise at t = 25, the UNet up to
  `--layer` (early exit), then a paper-shaped Diff-C (width 1024, `--classes` classes) on
  the map: seconds per image.
- Diffusion Classifier (Li et al.) lower bound: it scores every class with full UNet passes
  (one per class and noise draw; the paper's ≈24 s/image used many more draws): the time of
  `--classes` full UNet passes plus one VAE encode, measured here.
Printed as seconds per image and the ratio. The paper: ≈0.13 s vs ≈24 s on an RTX A6000.
Medians over `--repeats` interleaved repeats after one warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.extract import SD15_VAE_CONFIG  # noqa: E402
from bench.record import record  # noqa: E402
from pipeline.backbones.base import Conditioning, extract_taps  # noqa: E402
from pipeline.backbones.load import load_backbone  # noqa: E402
from pipeline.backbones.synthetic import SD15_TEXT_SHAPE, build_synthetic, sd15_in_memory  # noqa: E402
from pipeline.devices import resolve_device, resolve_dtype  # noqa: E402
from pipeline.diffc.model import DiffcConfig, build_diffc  # noqa: E402
from pipeline.diffc.train import predict_topk  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--layer", default="up_ft1")
    parser.add_argument("--classes", type=int, default=37)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--model", default="sd15", choices=["sd15", "tiny-sd"],
        help="sd15 (the full architecture) or tiny-sd (toy widths, for a dry run in seconds)",
    )
    parser.add_argument("--json", type=Path, default=None, help="append each result as a JSON line here")
    args = parser.parse_args(argv)

    from diffusers import AutoencoderKL

    device = resolve_device(args.device)
    dtype = resolve_dtype("auto", device)
    torch.manual_seed(0)
    if args.model == "sd15":
        vae = AutoencoderKL(**SD15_VAE_CONFIG).to(device, dtype).eval()
        backbone = sd15_in_memory(dtype, device=device)
        text = torch.zeros(1, *SD15_TEXT_SHAPE, device=device, dtype=dtype)
        cond = Conditioning("text", texts=("",), text_embeds=text)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench-classify-")
        path = build_synthetic("tiny-sd", Path(tmp.name))
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae").to(device, dtype).eval()
        backbone = load_backbone("tiny-sd", model_path=path, device=device, dtype=dtype)
        cond = backbone.null_conditioning()
    image = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    t = 25

    def encode() -> torch.Tensor:
        with torch.inference_mode():
            return (vae.encode(image.to(device, dtype)).latent_dist.mode() * vae.config.scaling_factor).float()

    x0 = encode()
    channels, h, w = extract_taps(backbone, x0.cpu(), t, cond, [args.layer], seed=0, indices=[0])[args.layer].shape[1:]
    diffc = build_diffc(DiffcConfig(channels, args.classes, width=1024), seed=0).to(device).eval()
    amp = dtype if dtype != torch.float32 else None

    def diffc_path() -> None:
        latents = encode().cpu()
        fmap = extract_taps(backbone, latents, t, cond, [args.layer], seed=0, indices=[0])[args.layer]
        predict_topk(diffc, fmap.to(torch.float16), k=5, amp_dtype=amp)
        _sync(device)

    def full_unet_pass() -> None:
        with torch.inference_mode():
            noise = torch.randn_like(x0)
            x_t = backbone.scheduler.add_noise(x0, noise, torch.tensor([t], device=device)).to(dtype)
            backbone.forward(x_t, torch.tensor([t], device=device), cond)
        _sync(device)

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    diffc_path(), full_unet_pass(), timed(encode)  # warm-up
    ours, unet, vae_s = [], [], []
    for _ in range(args.repeats):
        ours.append(timed(diffc_path))
        unet.append(timed(full_unet_pass))
        vae_s.append(timed(encode))
    o, u, v = statistics.median(ours), statistics.median(unet), statistics.median(vae_s)
    dc = v + args.classes * u
    name = str(dtype).removeprefix("torch.")
    arch = "SD-1.5 architecture" if args.model == "sd15" else "tiny-sd"
    print(f"{arch} at {args.size} px on {device} ({name}), Diff-C on {args.layer} ({channels}x{h}x{w}), batch 1")
    print(f"  Diff-C path (VAE + UNet to {args.layer} + Diff-C): {o:8.3f} s/image")
    print(f"  one full UNet pass: {u:.3f} s; VAE encode: {v:.3f} s")
    print(f"  Diffusion Classifier lower bound ({args.classes} classes x 1 pass + VAE): {dc:8.3f} s/image")
    print(f"  ratio: {dc / o:.1f}x faster with Diff-C (paper: 24 / 0.13 = 185x on an RTX A6000, many noise draws)")
    row = f"classify {arch} at {args.size} px, {name}, batch 1, {args.classes} classes"
    record(args.json, "classify", row, "Diff-C path s/image", o)
    record(args.json, "classify", row, "Diffusion Classifier lower bound s/image", dc)
    record(args.json, "classify", row, "ratio", dc / o)


if __name__ == "__main__":
    main()
