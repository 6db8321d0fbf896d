"""`python -m stages.evaluate`: the current key's Diff-C accuracy, σ_label and purity scores,
and k-SAE test metrics → `reports/metrics.json` (DVC metrics).

    python -m stages.evaluate [--params params.yaml]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.config import load_params_or_exit
from pipeline.evaluate import run_evaluate
from pipeline.paths import metrics_path
from pipeline.stage_errors import USER_ERRORS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    args = parser.parse_args(argv)
    params = load_params_or_exit(args.params)
    try:
        m = run_evaluate(params, Path("."))
    except (*USER_ERRORS, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sae = m["sae"]
    print(
        f"evaluate {params.layer} t={params.t}: Diff-C top-1 {m['diffc']['top1_pct']:.2f}%, "
        f"σ_label@{sae['latents']} {sae['sigma_label']:.3f} (majority {sae['majority']:.3f}, "
        f"entropy {sae['entropy']:.3f} bits), k-SAE test FVU {sae['fvu']:.4f} → {metrics_path()}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
