"""dvc.yaml templates the same output paths as pipeline.paths (the stages write there), for
every row of the study, as DVC itself resolves them (matrix / foreach stages included)."""

from __future__ import annotations

from pathlib import Path

import pytest
from dvc.repo import Repo

from pipeline import paths
from pipeline.config import load_params

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stages() -> dict[str, dict[str, list[str]]]:
    with Repo(str(REPO)) as repo:
        return {
            s.addressing: {"outs": [o.def_path for o in s.outs], "deps": [d.def_path for d in s.deps]}
            for s in repo.index.stages
        }


def test_stage_outputs_match_paths(stages):
    params = load_params(REPO / "params.yaml")
    key = params.key
    assert stages["data"]["outs"] == [str(paths.data_dir(params.dataset))]
    assert stages["model"]["outs"] == [str(paths.backbone_dir(params.model))]
    assert stages["encode"]["outs"] == [str(paths.latents_store(params.dataset, params.model))]
    extract = {"trained": "extract@trained", "init": "extract@init", "input": "extract_input"}
    for control in paths.CONTROLS:
        row = params.for_control(control).key
        assert row.control == control and (row.layer == "input") == (control == "input")
        assert stages[extract[control]]["outs"] == [str(row.features_store())]
        assert stages[f"fit_sae@{control}"]["outs"] == [str(row.sae_dir()), str(row.sae_curve())]
        assert stages[f"fit_diffc@{control}"]["outs"] == [str(row.diffc_dir()), str(row.diffc_curves())]
        # evaluate reads every row; each fit reads its row's store
        for out in (row.sae_dir(), row.diffc_dir(), row.features_store()):
            assert str(out) in stages["evaluate"]["deps"], (control, out)
        assert str(row.features_store()) in stages[f"fit_diffc@{control}"]["deps"]
    assert stages["evaluate"]["outs"] == [str(paths.metrics_path())]
    assert stages["render"]["outs"] == [
        str(paths.figures_dir() / f"latents_{params.render.select}.png"),
        str(paths.figures_dir() / f"pca_{params.layer}_t{params.t}.png"),
        str(paths.latents_dir()),
    ]
    assert str(key.sae_dir()) in stages["render"]["deps"]


def test_input_row_does_not_follow_the_layer():
    a = paths.Key("d", "m", "bottleneck", 25, "input")
    b = paths.Key("d", "m", "up_ft1", 25, "input")
    assert a == b and a.layer == "input" and str(a) == "d/m/input/input/t25"
    assert paths.Key("d", "m", "up_ft1", 25, "init").features_store() == Path("features/d/m/init/up_ft1/t25.zarr")
    with pytest.raises(ValueError, match="unknown control 'random'"):
        paths.Key("d", "m", "up_ft1", 25, "random")
