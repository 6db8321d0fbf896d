"""k-SAE training speed and quality against EleutherAI sparsify's SparseCoder, in one run.

    python -m bench.sae [--d 1280] [--expansion 64] [--k 32] [--batch 4096] [--steps 12]
        [--device auto] [--features STORE]

Both train the paper's shape (d = 1280, 81,920 latents, k = 32 by default) on the same
synthetic activations (each sample a positive sum of 32 of 16,384 random unit atoms plus
noise, standardised), with the same batches, Adam(lr 4e-4, fused), decoder unit-norm with the
parallel gradient removed, b_pre / b_dec from the first batch's mean. Steps are interleaved
(ours, sparsify, ours, ...) so machine noise hits both alike; the first `--warmup` steps of
each are not timed. Printed: samples/s of
- ours, selection matmul in fp32 (numerically the dense TopK);
- ours, selection in `sae.dtype: auto` (bf16 where the CPU/GPU multiplies it natively;
  values and training stay fp32);
- sparsify's SparseCoder (its autocast is CUDA-only, so fp32 on CPU),
the ratios ours / sparsify, and each one's FVU on 8,192 held-out samples after the same
number of samples (target: at least as fast; FVU within 2% of sparsify's).

Also printed: the step time's lower bound on this machine and the fraction of it each of ours
reaches. The bound is what no implementation of this recipe avoids: the dense selection matmul
(2·B·d·n FLOP) at the matmul rate measured here on that very shape and dtype, plus the fused
Adam step's memory traffic (read parameter, gradient and both moments, write three: 28 bytes
per fp32 parameter) at the copy bandwidth measured here. Everything else (TopK over the (B, n)
pre-activations, the sparse encoder and decoder, the decoder's renormalisation) is what an
implementation can shrink.

`--features features/fashion_mnist/fmnist-ddpm/trained/bottleneck/t25.zarr --steps 245` instead
trains on real pooled activations (the embedded default's shape, d = 128) for as long as the
fit_sae stage does, and measures FVU on the store's test split.

`eai-sparsify` is an optional bench dependency: `pip install -e '.[bench]'`. Its decoder picks
a Triton kernel whenever Triton is importable and then fails without a GPU; the script sets
SPARSIFY_DISABLE_TRITON=1 itself on CPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.record import record  # noqa: E402
from bench.timing import median_seconds  # noqa: E402
from pipeline.devices import resolve_device, resolve_dtype  # noqa: E402
from pipeline.sae.model import KSae, SaeConfig  # noqa: E402


def synthetic_activations(n: int, d: int, atoms: int, active: int, seed: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(atoms, d, generator=g)
    dictionary /= dictionary.norm(dim=1, keepdim=True)
    chosen = torch.randint(0, atoms, (n, active), generator=g)
    weights = torch.empty(n, active).exponential_(generator=g)
    x = torch.zeros(n, d)
    for start in range(0, n, 1024):  # bounded (chunk, active, d) gather
        sl = slice(start, start + 1024)
        x[sl] = torch.einsum("na,nad->nd", weights[sl], dictionary[chosen[sl]])
    x += 0.05 * torch.randn(n, d, generator=g)
    x = (x - x.mean(0)) / x.std(0)
    return x.to(device)


def import_sparse_coder():
    """sparsify's SparseCoder and its config class.

    `import sparsify` also imports its trainer, which needs `datasets` (and pyarrow >= 24, a
    55 MB wheel: more than a GPU machine's 64 MiB transfer holds beside the rest). Where that
    fails, the two modules the coder needs are imported under an empty `sparsify` package
    (its config needs simple-parsing only): the same code, without the trainer.
    """
    try:
        from sparsify import SparseCoder, SparseCoderConfig
    except ImportError as exc:
        spec = importlib.util.find_spec("sparsify")
        if spec is None or not spec.submodule_search_locations:
            sys.exit("eai-sparsify is not installed: pip install -e '.[bench]' (or pass --no-sparsify)")
        package = types.ModuleType("sparsify")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["sparsify"] = package
        try:
            from sparsify.config import SparseCoderConfig
            from sparsify.sparse_coder import SparseCoder
        except ImportError as inner:
            sys.exit(f"eai-sparsify does not import ({exc}; its coder alone: {inner}); or pass --no-sparsify")
        print(f"(sparsify's trainer does not import here: {exc}; its SparseCoder imported alone)")
    return SparseCoder, SparseCoderConfig


def _warm_median(fn, repeats: int = 3) -> float:
    fn()  # warm-up: first-touch allocation, oneDNN primitive creation
    return median_seconds(fn, repeats)


def step_lower_bound(cfg: SaeConfig, batch: int, select_dtype: torch.dtype, device: torch.device) -> dict[str, float]:
    """Seconds per training step that no implementation of the recipe beats on this machine:
    the selection matmul at the measured matmul rate plus Adam's traffic at the measured
    bandwidth (module docstring). Returns the parts and the rates they were measured at."""
    n, d = cfg.num_latents, cfg.d_in
    x = torch.randn(batch, d, device=device).to(select_dtype)
    w = torch.randn(n, d, device=device).to(select_dtype)

    def matmul() -> None:
        torch.nn.functional.linear(x, w)
        _sync(device)

    flops = 2.0 * batch * d * n
    matmul_s = _warm_median(matmul)
    src = torch.empty(128 * 2**20, device=device)  # 512 MB: far beyond any cache
    dst = torch.empty_like(src)

    def copy() -> None:
        dst.copy_(src)
        _sync(device)

    bandwidth = 2 * src.numel() * 4 / _warm_median(copy)
    params = 2 * n * d + n + d
    adam_s = 28 * params / bandwidth
    return {"seconds": matmul_s + adam_s, "matmul_s": matmul_s, "adam_s": adam_s,
            "flops_per_s": flops / matmul_s, "bytes_per_s": bandwidth}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Runner:
    """One model, its optimiser and step function, with per-step timings."""

    def __init__(self, name: str, model: torch.nn.Module, step_fn, device: torch.device) -> None:
        self.name, self.model, self.step_fn, self.device = name, model, step_fn, device
        fused = device.type in ("cpu", "cuda")
        self.opt = torch.optim.Adam(model.parameters(), lr=4e-4, fused=fused)
        self.times: list[float] = []

    def step(self, x: torch.Tensor, timed: bool) -> None:
        _sync(self.device)
        start = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        self.step_fn(self.model, x)
        self.opt.step()
        _sync(self.device)
        if hasattr(self.model, "normalize_decoder"):
            self.model.normalize_decoder()
        else:
            self.model.set_decoder_norm_to_unit_norm()
        _sync(self.device)
        if timed:
            self.times.append(time.perf_counter() - start)


def _ours_step(select_dtype: torch.dtype):
    def step(model: KSae, x: torch.Tensor) -> None:
        out = model(x, select_dtype=select_dtype)
        out.fvu.backward()
        model.remove_parallel_grad()

    return step


def _sparsify_step(model, x: torch.Tensor) -> None:
    out = model(x)
    out.fvu.backward()
    model.remove_gradient_parallel_to_decoder_directions()


@torch.no_grad()
def heldout_fvu(runner: Runner, x: torch.Tensor, select_dtype: torch.dtype | None) -> float:
    err = dev = 0.0
    mean = x.mean(0)
    for start in range(0, len(x), 1024):
        xb = x[start : start + 1024]
        if isinstance(runner.model, KSae):
            x_hat = runner.model(xb, select_dtype=select_dtype).x_hat
        else:
            x_hat = runner.model(xb).sae_out
        err += float((xb - x_hat.float()).double().pow(2).sum())
        dev += float((xb - mean).double().pow(2).sum())
    return err / dev


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=1280)
    parser.add_argument("--expansion", type=int, default=64)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=12, help="training steps per model (default 12)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps (default 2)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="selection dtype of the fast variant (default auto)")
    parser.add_argument("--no-sparsify", action="store_true", help="skip the sparsify baseline")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--features", type=Path, default=None,
        help="a feature store: train on its train/pooled (d from the store; batches cycle through it) "
        "and measure FVU on its test/pooled, instead of synthetic data",
    )
    parser.add_argument("--json", type=Path, default=None, help="append each result as a JSON line here")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    fast_dtype = resolve_dtype(args.dtype, device)
    if device.type != "cuda":
        os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")
    n_train = args.batch * args.steps
    if args.features is not None:
        from pipeline.features.loaders import load_pooled
        from pipeline.features.store import open_store

        store = open_store(args.features)
        pooled = torch.from_numpy(load_pooled(store, "train").x)
        g = torch.Generator().manual_seed(args.seed)
        # Epoch-wise shuffles, concatenated up to the samples the run needs.
        order = torch.cat([torch.randperm(len(pooled), generator=g) for _ in range(-(-n_train // len(pooled)))])
        train = pooled[order[:n_train]].to(device)
        heldout = torch.from_numpy(load_pooled(store, "test").x).to(device)
        args.d = train.shape[1]
    else:
        data = synthetic_activations(n_train + 8192, args.d, 16_384, 32, args.seed, device)
        train, heldout = data[:n_train], data[n_train:]
    cfg = SaeConfig(d_in=args.d, expansion=args.expansion, k=args.k)
    print(
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; d = {args.d}, "
        f"{cfg.num_latents} latents, k = {args.k}, batch {args.batch}, {args.steps} steps each"
    )

    runners: list[tuple[Runner, torch.dtype | None]] = []
    b_pre = train[: args.batch].mean(0)
    for label, dtype in (("ours fp32 selection", torch.float32), (f"ours {_name(fast_dtype)} selection", fast_dtype)):
        if dtype == torch.float32 and runners:
            continue
        model = KSae(cfg, generator=torch.Generator().manual_seed(args.seed)).to(device)
        model.b_pre.data.copy_(b_pre)
        runners.append((Runner(label, model, _ours_step(dtype), device), dtype))
    if not args.no_sparsify:
        SparseCoder, SparseCoderConfig = import_sparse_coder()
        torch.manual_seed(args.seed)
        coder = SparseCoder(args.d, SparseCoderConfig(expansion_factor=args.expansion, k=args.k), device=device)
        coder.b_dec.data.copy_(b_pre)
        runners.append((Runner("sparsify SparseCoder", coder, _sparsify_step, device), None))

    for step in range(args.steps):
        x = train[step * args.batch : (step + 1) * args.batch]
        for runner, _ in runners:
            runner.step(x, timed=step >= args.warmup)
        if step < 5 or (step + 1) % 50 == 0:
            print(
                f"  step {step + 1}/{args.steps}: " + ", ".join(f"{r.name} {r.times[-1]:.2f} s" for r, _ in runners if r.times),
                flush=True,
            )

    rates, bounds = {}, {}
    print(f"\n{'':28s} {'samples/s':>10s} {'s/step':>8s} {'held-out FVU':>13s}")
    for runner, dtype in runners:
        per_step = statistics.median(runner.times)
        rates[runner.name] = args.batch / per_step
        fvu = heldout_fvu(runner, heldout, dtype)
        runner.fvu = fvu
        print(f"{runner.name:28s} {rates[runner.name]:10.0f} {per_step:8.2f} {fvu:13.4f}")
        row = f"k-SAE d {args.d}, {cfg.num_latents} latents, k {args.k}, batch {args.batch}: {runner.name}"
        record(args.json, "sae", row, "samples/s", rates[runner.name])
        record(args.json, "sae", row, "held-out FVU", fvu)
        if dtype is None:  # sparsify: the bound is ours to reach
            continue
        if dtype not in bounds:  # measured once per selection dtype
            bounds[dtype] = step_lower_bound(cfg, args.batch, dtype, device)
        bound = bounds[dtype]
        print(
            f"{'':28s} lower bound {bound['seconds']:.2f} s/step (selection matmul {bound['matmul_s']:.2f} s "
            f"at {bound['flops_per_s'] / 1e9:.0f} GFLOP/s, Adam {bound['adam_s']:.2f} s at "
            f"{bound['bytes_per_s'] / 1e9:.1f} GB/s); reached {100 * bound['seconds'] / per_step:.0f}%"
        )
        record(args.json, "sae", row, "lower bound s/step", bound["seconds"])
        record(args.json, "sae", row, "fraction of the bound", bound["seconds"] / per_step)
    if not args.no_sparsify:
        base = runners[-1][0]
        for runner, _ in runners[:-1]:
            print(
                f"{runner.name} / sparsify: speed {rates[runner.name] / rates[base.name]:.2f}x, "
                f"FVU {100 * (runner.fvu / base.fvu - 1):+.1f}%"
            )
            row = f"k-SAE d {args.d}: {runner.name} / sparsify"
            record(args.json, "sae", row, "speed ratio", rates[runner.name] / rates[base.name])


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


if __name__ == "__main__":
    main()
