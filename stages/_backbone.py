"""The work of the stages that run a backbone over the store (encode, extract): join
torchrun's process group if there is one, load the backbone the params describe, fill this
process's shards. Kept apart from stages/_entry.py so that the other stages' closures do not
hold the backbones."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pipeline.backbones.base import Backbone
from pipeline.config import Params
from pipeline.distributed import close_world, init_world, world_size
from pipeline.features.backbone import load_for_params
from pipeline.features.store import FeatureStore

BackboneWork = Callable[..., FeatureStore | None]


def on_backbone(work: BackboneWork) -> Callable[[Params, Path], FeatureStore | None]:
    """`work(params, backbone, root, rank=, world=, barrier=)` as a stage's work: returns the
    published store on rank 0, None on the others."""

    def run(params: Params, root: Path) -> FeatureStore | None:
        world = init_world()
        try:
            backbone: Backbone = load_for_params(params, root, device=world.local_device)
            return work(params, backbone, root, rank=world.rank, world=world.size, barrier=world.barrier)
        finally:
            close_world()

    return run


def processes(_: FeatureStore) -> dict[str, int]:
    """The timing field of a backbone stage: how many processes shared the work."""
    return {"processes": world_size()}
