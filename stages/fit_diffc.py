"""`python -m stages.fit_diffc`: train Diff-C on the current key's cached feature maps.

    python -m stages.fit_diffc [--params params.yaml] [--control trained|init|input]

Writes `models/diffc/<dataset>/<model>/<control>/<layer>/t<t>/` (one Diff-C per seed of
`diffc.seeds`, metrics over seeds) and the per-epoch curves
`reports/diffc/<dataset>/<model>/<control>/<layer>/t<t>/seed<s>.csv`. An interrupted run
resumes after its last finished epoch when rerun with the same params.
"""

from __future__ import annotations

from typing import Any

from pipeline.config import Params
from pipeline.diffc.fit import run_fit_diffc
from stages._entry import run_stage


def _report(params: Params, m: dict[str, Any], seconds: float) -> str:
    return (
        f"Diff-C {params.key}: test top-1 {100 * m['top1_mean']:.2f} ± {100 * m['top1_std']:.2f}%, top-5 "
        f"{100 * m['top5_mean']:.1f}% over seeds {m['seeds']}, {m['epochs']} epochs "
        f"({m['num_parameters']:,} parameters) in {seconds:.1f} s → {params.key.diffc_dir()}"
    )


def main(argv: list[str] | None = None) -> int:
    return run_stage("fit_diffc", __doc__, run_fit_diffc, _report, argv, per_control=True)


if __name__ == "__main__":
    raise SystemExit(main())
