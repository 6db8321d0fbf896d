"""The shared body of the stages that need no backbone (fit_sae, fit_diffc, evaluate, render):
parse --params, do the work, report user errors as one line (exit 1), record the time in
reports/timings.json, print a summary."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pipeline.config import Params, load_params_or_exit
from pipeline.stage_errors import USER_ERRORS
from pipeline.timings import record_timing

Result = TypeVar("Result")


def run_stage(
    prog: str,
    doc: str,
    work: Callable[[Params, Path], Result],
    report: Callable[[Params, Result, float], str],
    argv: list[str] | None,
) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=doc)
    parser.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    args = parser.parse_args(argv)
    params = load_params_or_exit(args.params)
    start = time.perf_counter()
    try:
        result = work(params, Path("."))
    except (*USER_ERRORS, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    record_timing(prog.rsplit(".", 1)[-1], params, {"seconds": round(seconds, 2)})
    print(report(params, result, seconds))
    return 0
