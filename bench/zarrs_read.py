"""Reading fmap batches: the store's memory-mapped shard reader vs zarr-python, with and without
the zarrs codec pipeline, in one run.

    pip install zarrs==0.2.3        # or: pip install -e '.[bench]'
    python -m bench.zarrs_read [--samples 1024] [--shape 1280,16,16] [--batch 64] [--repeats 3]

Writes a synthetic fp16 `fmap` array through the pipeline's own store writer (sharded, one
sample per inner chunk, uncompressed: the layout `extract` writes) into a temporary folder, then
reads it back in the two orders a loader uses:
- shard order: every shard whole, in turn (`FmapLoader`'s streaming mode);
- random batches: `--batch` samples drawn without replacement, sorted, per batch (what a
  loader without whole-shard reads would do);
each by
- `mmap`: `FeatureStore.shard_view` (the baseline): the shard file mapped, samples gathered
  from the mapping (a copy into a new array, as a batch needs);
- `zarr`: zarr-python 3's default codec pipeline, `array[a:b]` / `array.oindex[idx]`;
- `zarrs`: the same calls with `codec_pipeline.path = zarrs.ZarrsCodecPipeline` (Rust,
  parallel over chunks), if installed.
Printed: MB/s per reader and order (median over `--repeats` interleaved rounds) and each
reader's ratio to `mmap`. The file is in the page cache after writing, so this measures decoding
and copying, not the disk. Issue 18 adopts zarrs if it is within 10% of `mmap`; measured on
2026-12-02 (README) it was 0.2-0.4x in shard order and 0.01x in random batches.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zarr

from pipeline.features.staging import shard_size_for
from pipeline.features.store import ArraySpec, create_store, open_store

ZARRS_PIPELINE = "zarrs.ZarrsCodecPipeline"


def write_store(root: Path, n: int, shape: tuple[int, ...]) -> Path:
    spec = ArraySpec("fmap", shape, "float16")
    shard = shard_size_for(2 * int(np.prod(shape)))
    store = create_store(root / "bench.zarr", {"kind": "bench"}, {"train": n}, [spec], shard)
    rng = np.random.default_rng(0)
    for j, (a, b) in enumerate(store.shards("train")):
        maps = rng.standard_normal((b - a, *shape), dtype=np.float32).astype(np.float16)
        store.write_shard("train", j, {"fmap": maps})
    store.mark_complete()
    return store.path


def readers(path: Path, batch: int, seed: int) -> dict[str, dict[str, Callable[[], int]]]:
    """{reader: {order: read everything once, returning the bytes read}}."""
    store = open_store(path)
    shards = store.shards("train")
    n = store.num_samples("train")
    order = np.random.default_rng(seed).permutation(n)
    batches = [np.sort(order[i : i + batch]) for i in range(0, n, batch)]

    views = [store.shard_view("train", "fmap", j) for j in range(len(shards))]
    if any(v is None for v in views):
        raise SystemExit(f"{path}: the shards are not plain (mmap reader unavailable)")
    starts = np.array([a for a, _ in shards])

    def mmap_shards() -> int:
        return sum(np.array(store.shard_view("train", "fmap", j)).nbytes for j in range(len(shards)))

    def mmap_random() -> int:
        total = 0
        for idx in batches:
            owner = np.searchsorted(starts, idx, side="right") - 1
            out = np.stack([views[o][i - starts[o]] for o, i in zip(owner, idx, strict=True)])
            total += out.nbytes
        return total

    def zarr_reader(array: zarr.Array) -> dict[str, Callable[[], int]]:
        # Every reader must return the very same samples: checked on one batch here.
        first = np.stack([views[0][i] for i in batches[0][batches[0] < shards[0][1]]])
        if not np.array_equal(np.asarray(array.oindex[batches[0][batches[0] < shards[0][1]]]), first):
            raise SystemExit(f"{path}: zarr and the memory map disagree")
        return {
            "shard order": lambda: sum(np.asarray(array[a:b]).nbytes for a, b in shards),
            "random batches": lambda: sum(np.asarray(array.oindex[idx]).nbytes for idx in batches),
        }

    out = {"mmap": {"shard order": mmap_shards, "random batches": mmap_random}}
    out["zarr"] = zarr_reader(zarr.open_array(str(path / "train" / "fmap"), mode="r"))
    try:
        import zarrs  # noqa: F401
    except ImportError:
        print("zarrs not installed: pip install zarrs==0.2.3 (skipping its rows)")
    else:
        # zarr binds an array's codec pipeline when the array is opened.
        with zarr.config.set({"codec_pipeline.path": ZARRS_PIPELINE}):
            array = zarr.open_array(str(path / "train" / "fmap"), mode="r")
        out["zarrs"] = zarr_reader(array)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--shape", default="1280,16,16", help="C,H,W of one map (SD-1.5 up_ft1 at 256 px)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))

    with tempfile.TemporaryDirectory() as tmp:
        path = write_store(Path(tmp), args.samples, shape)
        funcs = readers(path, args.batch, seed=0)
        mb_s: dict[tuple[str, str], list[float]] = {}
        expect: dict[str, int] = {}
        for _ in range(args.repeats + 1):  # the first round warms up (page cache, kernels)
            for name, orders in funcs.items():
                for order, read in orders.items():
                    t0 = time.perf_counter()
                    nbytes = read()
                    dt = time.perf_counter() - t0
                    if expect.setdefault(order, nbytes) != nbytes:
                        raise SystemExit(f"{name} read {nbytes} bytes in {order}, the others {expect[order]}")
                    mb_s.setdefault((name, order), []).append(nbytes / dt / 1e6)
        print(f"{args.samples} maps of {'x'.join(map(str, shape))} fp16, batches of {args.batch}, "
              f"median of {args.repeats} rounds after one warm-up:")
        for order in ("shard order", "random batches"):
            base = statistics.median(mb_s[("mmap", order)][1:])
            for name in funcs:
                speed = statistics.median(mb_s[(name, order)][1:])
                print(f"  {order:15s} {name:6s} {speed:9.0f} MB/s  {speed / base:5.2f}x mmap")


if __name__ == "__main__":
    main()
