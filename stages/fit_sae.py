"""`python -m stages.fit_sae`: train the k-SAE on the current key's `train/pooled` features.

    python -m stages.fit_sae [--params params.yaml]

Writes `models/sae/<dataset>/<model>/<layer>/t<t>/` (weights, config, per-latent codes,
metrics) and the curve `reports/sae/<dataset>/<model>/<layer>/t<t>.csv`. An interrupted run
resumes from its last checkpoint (about one a minute) when rerun with the same params.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pipeline.config import load_params_or_exit
from pipeline.fit_sae import run_fit_sae
from pipeline.paths import sae_dir
from pipeline.stage_errors import USER_ERRORS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.fit_sae", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    args = parser.parse_args(argv)
    params = load_params_or_exit(args.params)
    start = time.perf_counter()
    try:
        m = run_fit_sae(params, Path("."))
    except (*USER_ERRORS, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    test = m.get("test", {})
    print(
        f"k-SAE {params.layer} t={params.t}: {m['num_latents']} latents, k = {m['k']}, {m['steps']} steps; "
        f"FVU train {m['train']['fvu']:.4f} test {test.get('fvu', float('nan')):.4f}, "
        f"L0 {m['train']['l0']:.1f}, dead {m['train']['dead_pct']:.1f}%, "
        f"never fired {m['train']['never_fired_pct']:.1f}% in {time.perf_counter() - start:.1f} s "
        f"→ {sae_dir(params.dataset, params.model, params.layer, params.t)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
