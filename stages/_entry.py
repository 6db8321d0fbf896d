"""The one body of every stage's `main`: parse `--params`, validate them, do the work, report.

One error policy for all eight stages:
- a parameter problem (params.yaml) ends the process with one line on stderr, exit status 2;
- a problem the user fixes (pipeline.errors.USER_ERRORS: data, a store, weights, a diverged
  training run, a missing input file) ends it with one line, exit status 1;
- anything else is a bug and keeps its traceback.

On success the wall-clock time goes to reports/timings.json (not a cached output) and one
summary line to stdout. Under torchrun only rank 0 reports: the other ranks' work returns None.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pipeline.allocator import keep_freed_memory
from pipeline.config import Params, load_params_or_exit
from pipeline.errors import USER_ERRORS
from pipeline.paths import CONTROLS
from pipeline.timings import record_timing

Result = TypeVar("Result")


def run_stage(
    stage: str,
    doc: str,
    work: Callable[[Params, Path], Result | None],
    report: Callable[[Params, Result, float], str],
    argv: list[str] | None = None,
    *,
    timing: Callable[[Result], dict[str, Any]] | None = None,
    per_control: bool = False,
) -> int:
    """Run stage `stage` (its module docstring `doc` is the `--help`); returns the exit status.

    `timing` adds fields to the stage's entry in reports/timings.json (e.g. processes).
    `per_control`: the stage runs once per row of the study (`--control`, see
    pipeline.paths.CONTROLS) and `work` gets the params of that row.
    """
    summary, _, details = doc.strip().partition("\n")
    parser = argparse.ArgumentParser(
        prog=f"python -m stages.{stage}", description=summary, epilog=details.strip() or None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    if per_control:
        parser.add_argument(
            "--control", choices=CONTROLS, default="trained",
            help="the study's row: the trained model (default), the same architecture at "
            "initialisation, or the model's input at t",
        )
    args = parser.parse_args(argv)
    params = load_params_or_exit(args.params)
    if per_control:
        params = params.for_control(args.control)
    keep_freed_memory()  # the same values, fewer page faults per training step
    start = time.perf_counter()
    try:
        result = work(params, Path("."))
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if result is None:
        return 0
    seconds = time.perf_counter() - start
    fields = {"seconds": round(seconds, 2), **(timing(result) if timing else {})}
    record_timing(stage, params.key, fields)
    print(report(params, result, seconds))
    return 0
