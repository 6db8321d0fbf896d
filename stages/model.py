"""`python -m stages.model`: make the backbone's weights available and lock them.

- hub models (sd15, dit-…, ddpm-cifar10, …): resolve the weights (`model_path`, else the hub
  cache, else a download unless HF_HUB_OFFLINE) and write `models/backbones/<model>/lock.json`
  (snapshot, revision, sha256 of every file the adapter loads); the weights stay where they are.
- tiny-sd / tiny-dit: build the random-weight models into `models/backbones/<model>/`.
- fmnist-ddpm (embedded): train it into `models/backbones/<model>/` (pipeline.embedded.train), with
  its training curve and sample grid.
Every case ends with the lock, so downstream stages depend on one small file whose content
changes exactly when the weights do. A `model_path` always wins: those weights are locked
as they are, nothing is built or trained.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.backbones.weights import lock_record, resolve_weights, write_lock
from pipeline.config import Params
from pipeline.paths import backbone_dir
from pipeline.timings import record_timing
from stages._entry import run_stage


def run_model(params: Params, root: Path = Path("."), *, cache_dir: str | Path | None = None) -> Path:
    """Do the stage's work; returns the lock file written."""
    spec = params.backbone
    out = backbone_dir(params.model, root)
    if params.model_path is None and spec.synthetic:
        from pipeline.backbones.synthetic import build_synthetic

        # The folder is entirely this stage's output: start clean so no stale file survives.
        if out.exists():
            shutil.rmtree(out)
        build_synthetic(spec.name, out)
    elif params.model_path is None and spec.embedded:
        # Imported here: training pulls in the dataset code, which hub models never need.
        from pipeline.embedded.train import train_and_save

        # Its training curve and sample grid go next to the weights: this folder is the stage's
        # only DVC output, so anything written elsewhere would be untracked.
        result = train_and_save(params, out, out)
        record_timing(
            "model",
            params.key,
            {
                "train_seconds": round(result.train_seconds, 2),
                "seconds_per_step": round(result.train_seconds / max(1, result.steps), 4),
                "wall_seconds": round(result.wall_seconds, 2),
                "resumed_from": result.resumed_from,
            },
            root,
        )
    weights = resolve_weights(spec, params.model_path, root=root, cache_dir=cache_dir)
    return write_lock(lock_record(params.model, weights, root=root, cache_dir=cache_dir), out)


def _report(params: Params, lock: Path, seconds: float) -> str:
    return f"model {params.model}: weights locked in {lock}"


def main(argv: list[str] | None = None) -> int:
    return run_stage("model", __doc__, run_model, _report, argv)


if __name__ == "__main__":
    raise SystemExit(main())
