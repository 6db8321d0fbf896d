"""`python -m stages.fit_diffc`: train Diff-C on the current key's cached feature maps.

    python -m stages.fit_diffc [--params params.yaml]

Writes `models/diffc/<dataset>/<model>/<layer>/t<t>/` (weights, config, metrics) and the
per-epoch curve `reports/diffc/<dataset>/<model>/<layer>/t<t>.csv`. An interrupted run
resumes after its last finished epoch when rerun with the same params.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pipeline.config import load_params_or_exit
from pipeline.fit_diffc import run_fit_diffc
from pipeline.paths import diffc_dir
from pipeline.stage_errors import USER_ERRORS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.fit_diffc", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    args = parser.parse_args(argv)
    params = load_params_or_exit(args.params)
    start = time.perf_counter()
    try:
        m = run_fit_diffc(params, Path("."))
    except (*USER_ERRORS, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"Diff-C {params.layer} t={params.t}: test top-1 {100 * m['test_top1']:.1f}%, top-5 "
        f"{100 * m['test_top5']:.1f}% after {m['epochs']} epochs ({m['num_parameters']:,} parameters, "
        f"{m['train_samples_per_s']:.0f} samples/s) in {time.perf_counter() - start:.1f} s "
        f"→ {diffc_dir(params.dataset, params.model, params.layer, params.t)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
