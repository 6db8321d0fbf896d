"""`python -m stages.extract`: cached latents → taps at (layer, t) → pooled + fmap store.

    python -m stages.extract [--params params.yaml] [--control trained|init|input]

`--control init` taps the same architecture at initialisation (denoiser re-drawn from
`model_train.seed`); `--control input` stores the model's input x_t (pseudo-layer `input`).
Resumable: shards already written (in features/.staging/) are kept on a rerun.
Several processes: `torchrun --nproc_per_node N -m stages.extract` (one writer per shard).
"""

from __future__ import annotations

from pipeline.config import Params
from pipeline.features.extract import run_extract
from pipeline.features.store import FeatureStore
from stages._backbone import on_backbone, processes
from stages._entry import run_stage


def _report(params: Params, store: FeatureStore, seconds: float) -> str:
    n = {s: store.num_samples(s) for s in store.splits()}
    pooled = store.array(store.splits()[0], "pooled").shape[1:]
    return f"extracted {params.key}: {n} samples, pooled {pooled} in {seconds:.1f} s → {store.path}"


def main(argv: list[str] | None = None) -> int:
    return run_stage("extract", __doc__, on_backbone(run_extract), _report, argv, timing=processes, per_control=True)


if __name__ == "__main__":
    raise SystemExit(main())
