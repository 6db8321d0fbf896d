"""`python -m stages.evaluate`: the current key's Diff-C accuracy (mean ± std over seeds), linear
probe, σ_label and purity scores and k-SAE test metrics, for the trained model and its two
controls side by side → `reports/metrics.json` (DVC metrics).

    python -m stages.evaluate [--params params.yaml]
"""

from __future__ import annotations

from typing import Any

from pipeline.config import Params
from pipeline.paths import CONTROLS, metrics_path
from pipeline.report.evaluate import run_evaluate
from stages._entry import run_stage


def _report(params: Params, m: dict[str, Any], seconds: float) -> str:
    lines = [f"evaluate {params.layer} t={params.t} in {seconds:.1f} s → {metrics_path()}"]
    for control in CONTROLS:
        row = m[control]
        d, sae = row["diffc"], row["sae"]
        lines.append(
            f"  {control:8s} Diff-C top-1 {d['top1_pct']:.2f} ± {d['top1_std']:.2f}% ({d['seeds']} seeds), "
            f"probe {row['probe']['top1_pct']:.2f}%, σ_label@{sae['latents']} {sae['sigma_label']:.3f}, "
            f"majority {sae['majority']:.3f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return run_stage("evaluate", __doc__, run_evaluate, _report, argv)


if __name__ == "__main__":
    raise SystemExit(main())
