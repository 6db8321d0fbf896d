"""Where each stage's outputs live, relative to the repository root (see DESIGN.md, Folders).

`dvc.yaml` templates the same paths from params; tests check the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass
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


# The rows of a study, reported side by side at every key (DESIGN.md, "Controls"):
# - trained: the model's own weights;
# - init: the same architecture at initialisation (its denoiser re-drawn from a recorded seed;
#   the encoder, VAE or pixels, is kept: it defines the input space, not what training added);
# - input: the model's own input at t (x_t), a pseudo-layer `input` that no layer choice changes.
CONTROLS = ("trained", "init", "input")
INPUT_LAYER = "input"


@dataclass(frozen=True)
class Key:
    """One cell of a study: which features of which model, `dataset/model/control/layer/t<t>`.

    The feature store, the k-SAE, Diff-C and their curves of a key live under the same
    relative path in their folders (dvc.yaml's `${dataset}/${model}/<control>/<layer>/t${t}`),
    so a key visited before is restored from DVC's run cache. `control` is one of `CONTROLS`;
    the `input` control has the pseudo-layer `input` whatever layer it is asked for, so one
    input row serves every layer of a (model, t). `Params.key` is the current one.
    """

    dataset: str
    model: str
    layer: str
    t: int
    control: str = "trained"

    def __post_init__(self) -> None:
        if self.control not in CONTROLS:
            raise ValueError(f"unknown control {self.control!r}; valid: {', '.join(CONTROLS)}")
        if self.control == INPUT_LAYER and self.layer != INPUT_LAYER:
            object.__setattr__(self, "layer", INPUT_LAYER)

    def __str__(self) -> str:
        return f"{self.dataset}/{self.model}/{self.control}/{self.layer}/t{self.t}"

    def with_layer(self, layer: str) -> Key:
        return Key(self.dataset, self.model, layer, self.t, self.control)

    def with_control(self, control: str, layer: str | None = None) -> Key:
        """The same cell's `control` row (at `layer`, default this key's)."""
        return Key(self.dataset, self.model, layer or self.layer, self.t, control)

    def features_store(self, root: Path = Path(".")) -> Path:
        return root / "features" / f"{self}.zarr"

    def sae_dir(self, root: Path = Path(".")) -> Path:
        return root / "models" / "sae" / str(self)

    def sae_curve(self, root: Path = Path(".")) -> Path:
        return root / "reports" / "sae" / f"{self}.csv"

    def diffc_dir(self, root: Path = Path(".")) -> Path:
        return root / "models" / "diffc" / str(self)

    def diffc_curves(self, root: Path = Path(".")) -> Path:
        """A folder of per-epoch curves, one CSV per Diff-C seed."""
        return root / "reports" / "diffc" / str(self)


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
