"""Which codec for the feature store: compression ratio and read/write speed on real activations.

    python -m bench.store_codecs [--store features/fashion_mnist/fmnist-ddpm/trained/bottleneck/t25.zarr]
                                 [--samples 2048]

Reads `fmap` (float16) and `pooled` (float32) samples from an existing store (by default the
embedded pipeline's) and rewrites them into fresh sharded Zarr arrays with each candidate
codec, timing the write and a whole-array read. The baseline is the uncompressed array
(ratio 1.00), measured in the same run.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, ZstdCodec

from pipeline.features.store import open_store

CANDIDATES = {
    "none": None,
    "zstd-1": (ZstdCodec(level=1),),
    "zstd-3": (ZstdCodec(level=3),),
    "blosc-zstd-3+shuffle": (BloscCodec(cname="zstd", clevel=3, shuffle=BloscShuffle.shuffle),),
    "blosc-lz4-5+bitshuffle": (BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.bitshuffle),),
}


def _bench(data: np.ndarray, shard: int, folder: Path) -> list[tuple[str, float, float, float]]:
    rows = []
    for name, codecs in CANDIDATES.items():
        path = folder / f"{name}.zarr"
        arr = zarr.create_array(
            str(path),
            shape=data.shape,
            chunks=(1, *data.shape[1:]),
            shards=(shard, *data.shape[1:]),
            dtype=data.dtype,
            compressors=codecs,
            fill_value=0,
        )
        start = time.perf_counter()
        for a in range(0, len(data), shard):
            arr[a : a + shard] = data[a : a + shard]
        write = time.perf_counter() - start
        start = time.perf_counter()
        back = arr[:]
        read = time.perf_counter() - start
        assert np.array_equal(back, data)
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        rows.append((name, data.nbytes / size, data.nbytes / write / 2**20, data.nbytes / read / 2**20))
        shutil.rmtree(path)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="features/fashion_mnist/fmnist-ddpm/trained/bottleneck/t25.zarr")
    parser.add_argument("--samples", type=int, default=2048)
    args = parser.parse_args(argv)
    store = open_store(Path(args.store))
    n = min(args.samples, store.num_samples("train"))
    folder = Path(tempfile.mkdtemp(prefix="bench-codecs-"))
    try:
        for name in ("fmap", "pooled"):
            if not store.has_array("train", name):
                continue
            data = store.read("train", name, 0, n)
            shard = max(1, min(n, (64 * 2**20) // max(1, data[0].nbytes)))
            print(f"{name}: {n} samples {data.shape[1:]} {data.dtype} from {args.store} ({data.nbytes / 2**20:.1f} MB)")
            print(f"  {'codec':<24} {'ratio':>6} {'write MB/s':>11} {'read MB/s':>10}")
            for codec, ratio, w, r in _bench(data, shard, folder):
                print(f"  {codec:<24} {ratio:6.3f} {w:11.0f} {r:10.0f}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
