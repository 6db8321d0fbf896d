"""The shared body of the stages that run a backbone over the store (encode, extract):
parse --params, join torchrun's process group if there is one, load the backbone, do the
work, report user errors as one line."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.backbones.base import Backbone
from pipeline.backbones.load import load_for_params
from pipeline.config import Params, load_params_or_exit
from pipeline.distributed import close_world, init_world
from pipeline.stage_errors import USER_ERRORS
from pipeline.store import FeatureStore
from pipeline.timings import record_timing

Work = Callable[..., FeatureStore | None]


def run_backbone_stage(
    prog: str, doc: str, work: Work, report: Callable[[Params, FeatureStore, float], str], argv: list[str] | None
) -> None:
    parser = argparse.ArgumentParser(prog=prog, description=doc)
    parser.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    args = parser.parse_args(argv)
    params = load_params_or_exit(args.params)
    world = init_world()
    start = time.perf_counter()
    try:
        backbone: Backbone = load_for_params(params, Path("."), device=world.local_device)
        store = work(params, backbone, rank=world.rank, world=world.size, barrier=world.barrier)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        close_world()
    if store is not None:  # rank 0 publishes and reports
        seconds = time.perf_counter() - start
        record_timing(prog.rsplit(".", 1)[-1], params, {"seconds": round(seconds, 2), "processes": world.size})
        print(report(params, store, seconds))
