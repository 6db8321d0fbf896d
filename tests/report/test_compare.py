"""`revelio compare`: records → the paper's tables, with paper values where configs match."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.report.compare import records_from_exp_show, tables, to_csv, to_markdown
from pipeline.report.paper_values import paper_value


def _row(layer: str, t: int, top1: float, sigma: float, dataset="oxford_pets", model="sd15", prompt="empty",
         control="trained", image_size=512) -> dict:
    c = control + "."
    return {"Experiment": f"{layer}-{t}", "dataset": dataset, "model": model, "layer": layer, "t": t,
            "prompt": prompt, "data.image_size": image_size, c + "diffc.top1_pct": top1, c + "diffc.top1_std": 0.5, c + "diffc.top5_pct": 99.0,
            c + "probe.top1_pct": top1 - 1, c + "sae.sigma_label": sigma, c + "sae.majority": 0.5,
            c + "sae.entropy": 1.0, c + "sae.code.sigma_label": sigma + 0.1, c + "sae.fvu": 0.05, "sae.k": 32}


def test_tables_by_layer_and_by_t_with_paper_values():
    rows = [_row("up_ft1", 25, 80.0, 8.0), _row("bottleneck", 25, 70.0, 9.0), _row("up_ft1", 200, 75.0, 8.5),
            _row("up_ft1", 25, 1.0, 1.0),  # a duplicate key (e.g. the baseline row): the first wins
            {"Experiment": "queued", "dataset": "oxford_pets", "model": "sd15", "layer": "up_ft0", "t": 25}]
    found = tables(records_from_exp_show(rows))
    assert [(t.varying, t.fixed) for t in found] == [
        ("layer", {"dataset": "oxford_pets", "model": "sd15", "control": "trained", "t": 25, "prompt": "empty"}),
        ("t", {"dataset": "oxford_pets", "model": "sd15", "control": "trained", "layer": "up_ft1", "prompt": "empty"}),
    ]
    by_layer = found[0]
    assert [r[0] for r in by_layer.rows] == ["bottleneck", "up_ft1"]  # bottleneck first, then up_ft*
    # ours ± std, the probe, paper top-1, ours σ, paper σ (Table 7 at 512 px; Table 2a's σ was
    # measured at 256 px, so not beside a 512 px run)
    assert by_layer.rows[1][1:7] == [80.0, 0.5, 79.0, 88.61, 8.0, None]
    md = to_markdown(by_layer)
    assert "| up_ft1 | 80.00 | 0.500 | 79.00 | 88.61 | 8.000 | – |" in md
    assert to_csv(by_layer).splitlines()[1].startswith(
        "oxford_pets,sd15,trained,25,empty,bottleneck,70.0,0.5,69.0,69.97,9.0,")
    # The same cells at 256 px: the paper's σ_label (Table 2a), not its Diff-C top-1.
    small = tables(records_from_exp_show([_row(layer, 25, 70.0, 8.0, image_size=256) for layer in ("up_ft1", "bottleneck")]))
    assert [r[4] for r in small[0].rows] == [None, None] and [r[6] for r in small[0].rows] == [9.48, 8.59]


def test_controls_share_a_table_with_the_trained_model():
    """One run's three rows make one table; the input row (pseudo-layer `input`) joins every
    layer's table at its t; the paper's values only beside the trained row."""
    rows = []
    for layer, top1 in (("up_ft1", 80.0), ("bottleneck", 70.0)):
        run = {**_row(layer, 25, top1, 8.0), **_row(layer, 25, top1 - 20, 9.5, control="init")}
        run.update(_row(layer, 25, 40.0, 10.0, control="input"))
        rows.append(run)
    found = [t for t in tables(records_from_exp_show(rows)) if t.varying == "control"]
    assert [t.fixed["layer"] for t in found] == ["up_ft1", "bottleneck"]
    for table, top1 in zip(found, (80.0, 70.0), strict=True):
        assert [r[0] for r in table.rows] == ["trained", "init", "input"]
        assert [r[1] for r in table.rows] == [top1, top1 - 20, 40.0]
        assert table.rows[0][4] is not None and table.rows[1][4] is None and table.rows[2][4] is None
    # The init rows of the two layers make a layer table of their own, never mixed with trained.
    by_layer = [t for t in tables(records_from_exp_show(rows)) if t.varying == "layer"]
    assert sorted(t.fixed["control"] for t in by_layer) == ["init", "trained"]


def test_runs_with_other_params_are_not_mixed():
    base = [dict(_row(layer, 25, 70.0 + i, 9.0), **{"diffc.epochs": 10}) for i, layer in enumerate(("up_ft1", "bottleneck", "up_ft3"))]
    other = [dict(_row("up_ft0", 25, 60.0, 7.0), **{"diffc.epochs": 3}),
             dict(_row("bottleneck", 25, 50.0, 6.0), **{"diffc.epochs": 3})]
    found = tables(records_from_exp_show([*base, *other]))
    assert len(found) == 2
    assert [r[0] for r in found[0].rows] == ["bottleneck", "up_ft1", "up_ft3"] and found[0].differs == []
    assert [r[0] for r in found[1].rows] == ["bottleneck", "up_ft0"] and found[1].rows[0][1] == 50.0
    assert found[1].differs == ["diffc.epochs=3"] and "unlike most runs: diffc.epochs=3" in to_markdown(found[1])
    # render.* and devices cannot change the numbers: such runs still share a table
    same = tables(records_from_exp_show([base[0], dict(base[1], **{"render.select": "rank", "sae.device": "cuda"})]))
    assert len(same) == 1 and len(same[0].rows) == 2


def test_unmatched_configs_have_no_paper_value():
    found = tables(records_from_exp_show([_row("up_ft0", 25, 80, 2, dataset="fashion_mnist", model="fmnist-ddpm"),
                                          _row("up_ft1", 25, 81, 2, dataset="fashion_mnist", model="fmnist-ddpm")]))
    assert all(r[4] is None and r[6] is None for r in found[0].rows)
    assert "| – |" in to_markdown(found[0])


def test_paper_values_transcribed():
    # σ_label at the k-SAE's 256 px, Diff-C at 512 px (NOTES-reference; paper Sec. 4).
    assert paper_value("caltech101", "sd15", "bottleneck", 200, "empty", 256, "sigma_label") == 8.17  # Table 2b
    assert paper_value("caltech101", "sd15", "bottleneck", 200, "empty", 512, "sigma_label") is None
    assert paper_value("fgvc_aircraft", "sd15", "up_ft1", 25, "from_clip", 512, "diffc_top1") == 63.69  # Table 6
    assert paper_value("oxford_pets", "sd15", "up_ft1", 25, "generic", 512, "diffc_top1") == 85.47  # Table 9
    assert paper_value("oxford_pets", "sd15", "up_ft1", 25, "empty", 512, "diffc_top1") == 88.61  # Tables 3, 7
    assert paper_value("oxford_pets", "dit-xl-2-256", "block14", 25, "empty", 256, "sigma_label") == 9.05  # Table 2d
    # Table 3's DiT: a 32 x 32 token grid in the authors' Diff-C, i.e. DiT-XL/2-512.
    assert paper_value("oxford_pets", "dit-xl-2-512", "block14", 25, "empty", 512, "diffc_top1") == 88.61
    assert paper_value("oxford_pets", "dit-xl-2-512", "block14", 200, "empty", 512, "diffc_top1") == 83.02
    assert paper_value("oxford_pets", "sd21", "bottleneck", 25, "empty", 512, "diffc_top1") == 56.80  # Table 3
    assert paper_value("oxford_pets", "if-i-l", "up_ft1", 25, "empty", 64, "diffc_top1") == 84.08  # Table 3, IF's 64 px
    assert paper_value("oxford_pets", "sd15", "up_ft1", 25, "empty", None, "diffc_top1") is None
    assert paper_value("fashion_mnist", "fmnist-ddpm", "bottleneck", 25, "empty", 32, "diffc_top1") is None


def test_cli_on_result_folders(tmp_path):
    folders = []
    for layer, top1 in (("bottleneck", 70.0), ("up_ft1", 80.0)):
        f = tmp_path / layer
        (f / "reports").mkdir(parents=True)
        (f / "params.yaml").write_text(yaml.safe_dump({"dataset": "oxford_pets", "model": "sd15", "layer": layer, "t": 25,
                                                                 "data": {"image_size": 512}}))
        metrics = {"trained": {"diffc": {"top1_pct": top1}, "sae": {"sigma_label": 9.0, "code": {"sigma_label": 9.5}}}}
        (f / "reports" / "metrics.json").write_text(json.dumps(metrics))
        folders.append(str(f))
    out = tmp_path / "tables"
    result = CliRunner().invoke(app, ["compare", *folders, "--out", str(out), "--plot"])
    assert result.exit_code == 0, result.output
    assert "by layer" in result.output and "| up_ft1 | 80.00 | – | – | 88.61 |" in result.output
    assert sorted(p.suffix for p in out.iterdir()) == [".csv", ".md", ".png"]
    assert next(out.glob("*.png")).stat().st_size > 5_000


def test_cli_missing_metrics_is_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text("dataset: digits\n")
    result = CliRunner().invoke(app, ["compare", str(tmp_path)])
    assert result.exit_code == 1 and "reports/metrics.json not found" in result.output
