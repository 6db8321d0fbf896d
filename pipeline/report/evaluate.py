"""The `evaluate` stage: the study's numbers in one DVC metrics file, `reports/metrics.json`,
so that `dvc metrics show` / `dvc exp show` list them as columns. One block per row of the
study (pipeline.paths.CONTROLS: `trained`, `init`, `input`), each with:

- `diffc.top1_pct`, `diffc.top1_std`, `diffc.top5_pct`, `diffc.top5_std`, `diffc.seeds`:
  Diff-C test accuracy (%) after the last epoch, mean and std (ddof 1) over `diffc.seeds`;
  with `diffc.val_fraction` > 0 also `diffc.best.*`: the test top-1 at each seed's best epoch
  on the validation split carved from train (`epoch`, `val_top1_pct` per seed), labelled by
  `chosen_on`;
- `probe.top1_pct`: the linear probe's test top-1 (%) (pipeline.report.probe), `probe.dim`;
- `clip.top1_pct`: CLIP zero-shot test top-1 (%), when `prompt: from_clip`;
- `sae.sigma_label`, `sae.majority`, `sae.entropy`, `sae.latents` (N used), `sae.ranked`:
  pipeline.report.metrics on the dense pre-TopK activations (the paper's σ_label@`eval.top_latents`);
  `sae.code.*` the same on the TopK codes;
- `sae.fvu`, `sae.l0`, `sae.dead_pct`: the k-SAE on test; `sae.train_fvu`, `sae.train_dead_pct`;

and `model.heldout_eps_mse.t<T>.{trained,init}`: for a backbone the `model` stage trained (the
embedded one), its held-out ε-prediction MSE at each evaluated timestep, and that of the
same architecture at initialisation (the check that training did something).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.numpy import load_file

from pipeline.config import Params
from pipeline.features.store import open_store
from pipeline.files import atomic_write
from pipeline.paths import CONTROLS, backbone_dir, metrics_path
from pipeline.report.metrics import purity_of_stats
from pipeline.report.probe import linear_probe
from pipeline.sae.scan import LatentStats


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the stage that writes it (dvc repro)")
    return json.loads(path.read_text())


def collect_metrics(params: Params, root: Path = Path(".")) -> dict[str, Any]:
    """Every row's measures (and the embedded model's held-out losses), as metrics.json holds them."""
    out: dict[str, Any] = {}
    summary = backbone_dir(params.model, root) / "train_summary.json"
    if summary.is_file():
        heldout = json.loads(summary.read_text())["heldout_eps_mse"]
        out["model"] = {
            "heldout_eps_mse": {
                f"t{t}": {"trained": heldout["trained"][str(t)], "init": heldout["init"][str(t)]}
                for t in heldout["timesteps"]
            }
        }
    for control in CONTROLS:
        out[control] = row_metrics(params.for_control(control), root)
    return out


def row_metrics(params: Params, root: Path = Path(".")) -> dict[str, Any]:
    """One row's measures: Diff-C over seeds, the linear probe, σ_label and purity."""
    key = params.key
    ev = params.eval
    out: dict[str, Any] = {}

    diffc = _read_json(key.diffc_dir(root) / "metrics.json")
    out["diffc"] = {
        "top1_pct": 100 * diffc["top1_mean"],
        "top1_std": 100 * diffc["top1_std"],
        "top5_pct": 100 * diffc["top5_mean"],
        "top5_std": 100 * diffc["top5_std"],
        "seeds": len(diffc["seeds"]),
    }
    if "best" in diffc:
        best = diffc["best"]
        out["diffc"]["best"] = {
            "top1_pct": 100 * best["top1_mean"],
            "top1_std": 100 * best["top1_std"],
            "epoch": best["epoch"],
            "val_top1_pct": [100 * v for v in best["val_top1"]],
            "chosen_on": best["chosen_on"],
        }

    store = open_store(key.features_store(root))
    probe = linear_probe(store, key.layer, ev.probe_c, ev.probe_max_iter)
    out["probe"] = {"top1_pct": 100 * probe.top1, "dim": probe.dim}
    clip = store.provenance.get("clip_top1")
    if clip and clip.get("test") is not None:
        out["clip"] = {"top1_pct": 100 * clip["test"]}

    folder = key.sae_dir(root)
    sae = _read_json(folder / "metrics.json")
    codes = load_file(str(folder / "codes.safetensors"))
    stats = LatentStats.from_arrays(codes)
    labels = codes["train_label"]
    kw = dict(top_latents=ev.top_latents, top_images=ev.top_images, min_fires=ev.min_fires)
    dense = purity_of_stats(stats, labels, variant="dense", **kw)
    code = purity_of_stats(stats, labels, variant="code", **kw)
    test = sae.get("test", {})
    out["sae"] = {
        "sigma_label": dense.sigma_label,
        "majority": dense.majority,
        "entropy": dense.entropy,
        "latents": dense.num_latents,
        "ranked": dense.ranked,
        "code": {
            "sigma_label": code.sigma_label,
            "majority": code.majority,
            "entropy": code.entropy,
            "latents": code.num_latents,
            "ranked": code.ranked,
        },
        "fvu": test.get("fvu"),
        "l0": test.get("l0"),
        "dead_pct": test.get("dead_pct"),
        "train_fvu": sae["train"]["fvu"],
        "train_dead_pct": sae["train"]["dead_pct"],
    }
    return out


def run_evaluate(params: Params, root: Path = Path(".")) -> dict[str, Any]:
    metrics = collect_metrics(params, root)
    atomic_write(metrics_path(root), json.dumps(metrics, indent=2) + "\n")
    return metrics
