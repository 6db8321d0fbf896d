"""`python -m stages.extract`: cached latents → taps at (layer, t) → pooled + fmap store.

Resumable: shards already written (in features/.staging/) are kept on a rerun.
Several processes: `torchrun --nproc_per_node N -m stages.extract` (one writer per shard).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pipeline.backbones.load import load_for_params
from pipeline.config import load_params_or_exit
from pipeline.distributed import close_world, init_world
from pipeline.extract import run_extract
from pipeline.stage_errors import USER_ERRORS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.extract", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    args = parser.parse_args(argv)
    params = load_params_or_exit(args.params)
    world = init_world()
    start = time.perf_counter()
    try:
        backbone = load_for_params(params, Path("."), device=world.local_device)
        store = run_extract(params, backbone, rank=world.rank, world=world.size, barrier=world.barrier)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        close_world()
    if store is not None:
        n = {s: store.num_samples(s) for s in store.splits()}
        pooled = store.array(store.splits()[0], "pooled").shape[1:]
        print(
            f"extracted {params.layer} at t={params.t}: {n} samples, pooled {pooled} "
            f"in {time.perf_counter() - start:.1f} s → {store.path}"
        )


if __name__ == "__main__":
    main()
