"""`python -m stages.fit_sae`: train the k-SAE on the current key's `train/pooled` features.

    python -m stages.fit_sae [--params params.yaml] [--control trained|init|input]

Writes `models/sae/<dataset>/<model>/<control>/<layer>/t<t>/` (weights, config, per-latent codes,
metrics) and the curve `reports/sae/<dataset>/<model>/<control>/<layer>/t<t>.csv`. An interrupted run
resumes from its last checkpoint (about one a minute) when rerun with the same params.
"""

from __future__ import annotations

from typing import Any

from pipeline.config import Params
from pipeline.sae.fit import run_fit_sae
from stages._entry import run_stage


def _report(params: Params, m: dict[str, Any], seconds: float) -> str:
    test = m.get("test", {})
    return (
        f"k-SAE {params.key}: {m['num_latents']} latents, k = {m['k']}, {m['steps']} steps; "
        f"FVU train {m['train']['fvu']:.4f} test {test.get('fvu', float('nan')):.4f}, "
        f"L0 {m['train']['l0']:.1f}, dead {m['train']['dead_pct']:.1f}%, "
        f"never fired {m['train']['never_fired_pct']:.1f}% in {seconds:.1f} s "
        f"→ {params.key.sae_dir()}"
    )


def main(argv: list[str] | None = None) -> int:
    return run_stage("fit_sae", __doc__, run_fit_sae, _report, argv, per_control=True)


if __name__ == "__main__":
    raise SystemExit(main())
