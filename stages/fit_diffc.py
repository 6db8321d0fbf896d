"""`python -m stages.fit_diffc`: train Diff-C on the current key's cached feature maps.

    python -m stages.fit_diffc [--params params.yaml]

Writes `models/diffc/<dataset>/<model>/<layer>/t<t>/` (weights, config, metrics) and the
per-epoch curve `reports/diffc/<dataset>/<model>/<layer>/t<t>.csv`. An interrupted run
resumes after its last finished epoch when rerun with the same params.
"""

from __future__ import annotations

from typing import Any

from pipeline.config import Params
from pipeline.diffc.fit import run_fit_diffc
from stages._entry import run_stage


def _report(params: Params, m: dict[str, Any], seconds: float) -> str:
    return (
        f"Diff-C {params.layer} t={params.t}: test top-1 {100 * m['test_top1']:.1f}%, top-5 "
        f"{100 * m['test_top5']:.1f}% after {m['epochs']} epochs ({m['num_parameters']:,} parameters) "
        f"in {seconds:.1f} s "
        f"→ {params.key.diffc_dir()}"
    )


def main(argv: list[str] | None = None) -> int:
    return run_stage("fit_diffc", __doc__, run_fit_diffc, _report, argv)


if __name__ == "__main__":
    raise SystemExit(main())
