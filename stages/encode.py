"""`python -m stages.encode`: images → model input space, cached in latents.zarr.

Resumable: shards already written (in features/.staging/) are kept on a rerun.
Several processes: `torchrun --nproc_per_node N -m stages.encode`.
"""

from __future__ import annotations

from pipeline.config import Params
from pipeline.features.encode import run_encode
from pipeline.features.store import FeatureStore
from stages._backbone import on_backbone, processes
from stages._entry import run_stage


def _report(params: Params, store: FeatureStore, seconds: float) -> str:
    shapes = {s: store.array(s, "latents").shape for s in store.splits()}
    return f"encoded {params.dataset} with {params.model}: {shapes} in {seconds:.1f} s → {store.path}"


def main(argv: list[str] | None = None) -> int:
    return run_stage("encode", __doc__, on_backbone(run_encode), _report, argv, timing=processes)


if __name__ == "__main__":
    raise SystemExit(main())
