"""dvc.yaml templates the same output paths as pipeline.paths (the stages write there)."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline import paths

REPO = Path(__file__).resolve().parents[1]


def _render(text: str, params: dict) -> str:
    for key in ("dataset", "model", "layer", "t"):
        text = text.replace("${" + key + "}", str(params[key]))
    return text


def test_stage_outputs_match_paths(default_params_raw):
    p = default_params_raw
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    key = paths.Key(p["dataset"], p["model"], p["layer"], p["t"])

    def outs(stage: str) -> list[str]:
        return [_render(next(iter(o)) if isinstance(o, dict) else o, p) for o in stages[stage].get("outs", [])]

    def plots(stage: str) -> list[str]:
        return [_render(next(iter(o)), p) for o in stages[stage].get("plots", [])]

    assert outs("data") == [str(paths.data_dir(p["dataset"]))]
    assert outs("model") == [str(paths.backbone_dir(p["model"]))]
    assert outs("encode") == [str(paths.latents_store(p["dataset"], p["model"]))]
    assert outs("extract") == [str(key.features_store())]
    assert outs("fit_sae") == [str(key.sae_dir())] and plots("fit_sae") == [str(key.sae_curve())]
    assert outs("fit_diffc") == [str(key.diffc_dir())] and plots("fit_diffc") == [str(key.diffc_curve())]
    assert [next(iter(m)) for m in stages["evaluate"]["metrics"]] == [str(paths.metrics_path())]
    render = [o.replace("${render.select}", p["render"]["select"]) for o in outs("render")]
    assert render == [
        str(paths.figures_dir() / f"latents_{p['render']['select']}.png"),
        str(paths.figures_dir() / f"pca_{p['layer']}_t{p['t']}.png"),
        str(paths.latents_dir()),
    ]
