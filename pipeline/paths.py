"""Where each stage's outputs live, relative to the repository root (see DESIGN.md, Folders).

`dvc.yaml` templates the same paths from params; tests check the two agree.
"""

from __future__ import annotations

from pathlib import Path


def data_dir(dataset: str, root: Path = Path(".")) -> Path:
    return root / "data" / dataset


def manifest_path(dataset: str, root: Path = Path(".")) -> Path:
    return data_dir(dataset, root) / "manifest.csv"


def classes_path(dataset: str, root: Path = Path(".")) -> Path:
    return data_dir(dataset, root) / "classes.txt"


def backbone_dir(model: str, root: Path = Path(".")) -> Path:
    return root / "models" / "backbones" / model


def latents_store(dataset: str, model: str, root: Path = Path(".")) -> Path:
    return root / "features" / dataset / model / "latents.zarr"


def features_store(dataset: str, model: str, layer: str, t: int, root: Path = Path(".")) -> Path:
    return root / "features" / dataset / model / layer / f"t{t}.zarr"


def sae_dir(dataset: str, model: str, layer: str, t: int, root: Path = Path(".")) -> Path:
    return root / "models" / "sae" / dataset / model / layer / f"t{t}"


def sae_curve(dataset: str, model: str, layer: str, t: int, root: Path = Path(".")) -> Path:
    return root / "reports" / "sae" / dataset / model / layer / f"t{t}.csv"


def diffc_dir(dataset: str, model: str, layer: str, t: int, root: Path = Path(".")) -> Path:
    return root / "models" / "diffc" / dataset / model / layer / f"t{t}"


def diffc_curve(dataset: str, model: str, layer: str, t: int, root: Path = Path(".")) -> Path:
    return root / "reports" / "diffc" / dataset / model / layer / f"t{t}.csv"


def metrics_path(root: Path = Path(".")) -> Path:
    """The evaluate stage's DVC metrics file for the current key."""
    return root / "reports" / "metrics.json"


def figures_dir(root: Path = Path(".")) -> Path:
    """The render stage's figures (one PNG per figure)."""
    return reports_dir(root) / "figures"


def latents_dir(root: Path = Path(".")) -> Path:
    """The render stage's static latent browser (index.html + thumbs/)."""
    return reports_dir(root) / "latents"


def checkpoint_dir(out_dir: Path) -> Path:
    """Where a stage keeps its resumable checkpoint: beside its output `out_dir`, not in it
    (DVC removes a stage's outputs before it runs the stage)."""
    out_dir = Path(out_dir)
    return out_dir.parent / f".{out_dir.name}.ckpt"


def reports_dir(root: Path = Path(".")) -> Path:
    return root / "reports"
