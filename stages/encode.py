"""`python -m stages.encode`: images → model input space, cached in latents.zarr.

Resumable: shards already written (in features/.staging/) are kept on a rerun.
Several processes: `torchrun --nproc_per_node N -m stages.encode`.
"""

from __future__ import annotations

from pipeline.config import Params
from pipeline.encode import run_encode
from pipeline.store import FeatureStore
from stages._backbone_stage import run_backbone_stage


def _report(params: Params, store: FeatureStore, seconds: float) -> str:
    shapes = {s: store.array(s, "latents").shape for s in store.splits()}
    return f"encoded {params.dataset} with {params.model}: {shapes} in {seconds:.1f} s → {store.path}"


def main(argv: list[str] | None = None) -> None:
    run_backbone_stage("python -m stages.encode", __doc__.splitlines()[0], run_encode, _report, argv)


if __name__ == "__main__":
    main()
