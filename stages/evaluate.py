"""`python -m stages.evaluate`: the current key's Diff-C accuracy, σ_label and purity scores,
and k-SAE test metrics → `reports/metrics.json` (DVC metrics).

    python -m stages.evaluate [--params params.yaml]
"""

from __future__ import annotations

from typing import Any

from pipeline.config import Params
from pipeline.paths import metrics_path
from pipeline.report.evaluate import run_evaluate
from stages._entry import run_stage


def _report(params: Params, m: dict[str, Any], seconds: float) -> str:
    sae = m["sae"]
    return (
        f"evaluate {params.layer} t={params.t}: Diff-C top-1 {m['diffc']['top1_pct']:.2f}%, "
        f"σ_label@{sae['latents']} {sae['sigma_label']:.3f} (majority {sae['majority']:.3f}, "
        f"entropy {sae['entropy']:.3f} bits), k-SAE test FVU {sae['fvu']:.4f} → {metrics_path()}"
    )


def main(argv: list[str] | None = None) -> int:
    return run_stage("evaluate", __doc__, run_evaluate, _report, argv)


if __name__ == "__main__":
    raise SystemExit(main())
