"""The paper's experiments as named configurations: `revelio paper list | show | run`.

Each configuration is the paper's whole recipe for one table or figure — data, backbone,
layer, t, prompt, image size, k-SAE and Diff-C hyperparameters — as DVC `--set-param`
overrides of `params.yaml`, one DVC experiment per cell: `revelio paper run table3` runs
(or, with `--queue`, queues) `dvc exp run -S ...` for each. Why overrides and not DVC's
Hydra composition: with `hydra.enabled`, `dvc exp run` regenerates params.yaml from a
`conf/` tree, a second copy of every default that would have to track pipeline/config.py,
and only `exp run` reads it; with `-S`, params.yaml stays the one source of defaults, each
cell is an ordinary experiment (`dvc exp show`, `revelio compare`), and the recipes live here
with their citations. This module is imported by the CLI only: no stage depends on it.

Every value cites where it comes from: the paper's section / table, or the authors' released
code (NOTES-reference.md, which read it). Where neither says, the value is ours and says so.
"""

from __future__ import annotations

import itertools
import shlex
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pipeline.report.paper_values import DIFFC_IMAGE_SIZE, IF_IMAGE_SIZE, SAE_IMAGE_SIZE, paper_value

# (value, source) per dotted parameter.
Recipe = dict[str, tuple[Any, str]]

DATA: Recipe = {
    # Whole datasets: the paper subsamples nothing.
    "data.max_per_class.train": (None, "paper Sec. 4 (full train splits)"),
    "data.max_per_class.test": (None, "paper Sec. 4 (full test splits)"),
}
SAE: Recipe = {
    "sae.expansion": (64, "paper Sec. 3.1 / authors' code (81,920 latents for d = 1280)"),
    "sae.k": (32, "paper Sec. 3.1"),
    "sae.lr": (4e-4, "authors' code (Adam)"),
    "sae.warmup_steps": (500, "authors' code (constant schedule, 500 warm-up steps)"),
    "sae.batch_size": (8192, "authors' code"),
    "sae.num_samples": (83_886_080, "authors' code (10,240 steps of 8192)"),
    "sae.b_pre_init": ("mean", "authors' code (b_dec = mean of the first batch)"),
    "sae.decoder_init": ("independent", "authors' code (W_enc, W_dec Kaiming-uniform, independent)"),
    "sae.auxk_alpha": (0.0, "authors' code (no auxiliary loss)"),
    "eval.top_latents": (1000, "paper Table 2 (σ_label@1000)"),
    "eval.top_images": (10, "authors' save_feature.py (10 most activating images per latent)"),
    "eval.min_fires": (10, "authors' save_feature.py (fires on more than 10 images)"),
}
DIFFC: Recipe = {
    "diffc.width": (1024, "paper Sec. 4 ('final feature dimension is 1024', Table 1)"),
    "diffc.dropout": (0.0, "authors' run.sh (--dropout 0.0; the paper states no rate)"),
    "diffc.lr": (1e-4, "paper Sec. 4 (AdamW, 1e-4)"),
    "diffc.lr_min": (5e-5, "paper Sec. 4 (cosine annealing to 5e-5; the authors' code ends near 7.6e-5)"),
    "diffc.weight_decay": (0.01, "ours: AdamW's default (neither the paper nor run.sh sets it)"),
    "diffc.batch_size": (16, "paper Sec. 4"),
    "diffc.epochs": (30, "paper Sec. 4"),
    "diffc.flip": (True, "paper Sec. 4 (random horizontal flips)"),
    "diffc.val_fraction": (0.0, "paper Sec. 4 (trains on the whole train split; one number per cell)"),
    "diffc.seeds": ([0], "paper (one run per cell)"),
}
DIT: Recipe = {
    "extract.dit_noise": ("embed_only", "authors' code (no noise added for DiT; t goes to the embedding only)"),
}
SIZE_SOURCE = {
    SAE_IMAGE_SIZE: "authors' code (256 px for the k-SAE's features)",
    DIFFC_IMAGE_SIZE: "paper Sec. 4 ('randomly cropped and resized to 512 × 512')",
    IF_IMAGE_SIZE: "ours: DeepFloyd IF stage I's native 64 px (the paper does not say)",
}

SD_LAYERS = ("bottleneck", "up_ft0", "up_ft1", "up_ft2")  # paper Sec. 4 ("Notation")
TABLES_678_T = (0, 25, 100, 200)  # paper Tables 6-8


@dataclass(frozen=True)
class Cell:
    """One experiment: the study cell plus the image size its paper number was measured at."""

    dataset: str
    model: str
    layer: str
    t: int
    prompt: str = "empty"
    image_size: int = DIFFC_IMAGE_SIZE
    # Which paper number this cell is read against ("sigma_label" or "diffc_top1").
    metric: str = "diffc_top1"

    def recipe(self) -> Recipe:
        """Every override of this cell, with its source."""
        out: Recipe = {
            "dataset": (self.dataset, "paper"),
            "model": (self.model, "paper"),
            "layer": (self.layer, "paper"),
            "t": (self.t, "paper"),
            "prompt": (self.prompt, "paper"),
            "data.image_size": (self.image_size, SIZE_SOURCE[self.image_size]),
            **DATA,
            **SAE,
            **DIFFC,
        }
        if self.model.startswith("dit"):
            out.update(DIT)
        return out

    def overrides(self) -> list[str]:
        """`-S name=value` strings, values in the YAML DVC parses them with."""
        return [f"{name}={_yaml(value)}" for name, (value, _) in self.recipe().items()]

    @property
    def note(self) -> str | None:
        """What keeps this cell's number from being the paper's one for one, if anything."""
        if self.model.startswith("dit"):
            return (
                "DiT: the authors' Diff-C views the (B, 1024, 1152) tokens with .view(B, 1152, 32, 32), "
                "mixing channels and positions; this pipeline transposes, so the maps differ"
                + ("; how their k-SAE's DiT features were reshaped is not recorded" if self.metric == "sigma_label" else "")
            )
        return None

    @property
    def paper(self) -> float | None:
        return paper_value(self.dataset, self.model, self.layer, self.t, self.prompt, self.image_size, self.metric)

    @property
    def name(self) -> str:
        return f"{self.dataset}-{self.model}-{self.layer}-t{self.t}-{self.prompt}-{self.image_size}px"


def _yaml(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ",".join(_yaml(v) for v in value) + "]"
    return str(value)


@dataclass(frozen=True)
class PaperConfig:
    name: str
    what: str
    cells: tuple[Cell, ...]
    # Expected GPU time per cell: an estimate from FLOP counts (no GPU has run one yet).
    cost: str

    def shared_recipe(self) -> Recipe:
        """The overrides every cell has, with the same value (what `show` prints once)."""
        first, *rest = (cell.recipe() for cell in self.cells)
        return {k: v for k, v in first.items() if all(r.get(k) == v for r in rest)}

    def commands(self, queue: bool = False) -> Iterator[list[str]]:
        for cell in self.cells:
            cmd = ["dvc", "exp", "run", "-n", f"paper-{self.name}-{cell.name}"[:100]]
            if queue:
                cmd.append("--queue")
            for override in cell.overrides():
                cmd += ["-S", override]
            yield cmd


def shell(cmd: list[str]) -> str:
    return " ".join(shlex.quote(part) for part in cmd)


def _grid(metric: str, image_size: int | None = None, **axes: Iterable[Any]) -> tuple[Cell, ...]:
    names = list(axes)
    cells = []
    for values in itertools.product(*(tuple(v) for v in axes.values())):
        fields = dict(zip(names, values, strict=True))
        size = image_size or (IF_IMAGE_SIZE if fields.get("model") == "if-i-l" else DIFFC_IMAGE_SIZE)
        cells.append(Cell(**fields, image_size=size, metric=metric))
    return tuple(cells)


# Per cell on one H100-class GPU in bf16, all three rows of the study (trained, init, input),
# from FLOP counts at ~30% of the bf16 peak: SD-1.5 VAE encode + UNet to up_ft1 at 512 px
# ~1 TFLOP per image (~10 ms) x 7,349 Pets images, twice (trained and init); the k-SAE 10,240
# steps of ~5 TFLOP (~3 min) per row; Diff-C 40.2M params ~0.1 TFLOP per training sample x
# 3,680 x 30 epochs (~1-2 min with loading) per row. An estimate, not a measurement: no GPU
# has run a cell yet. At 256 px the taps cost a quarter.
_COST_SAE = "~15 min per cell on one GPU (estimate from FLOP counts, not measured)"
_COST_DIFFC = "~20 min per cell on one GPU (estimate from FLOP counts, not measured)"

CONFIGS: dict[str, PaperConfig] = {
    c.name: c
    for c in [
        PaperConfig("table2a", "σ_label by layer, SD-1.5, t = 25 (Table 2a)",
                    _grid("sigma_label", SAE_IMAGE_SIZE, dataset=("oxford_pets", "caltech101"), model=("sd15",),
                          layer=SD_LAYERS, t=(25,)), _COST_SAE),
        PaperConfig("table2b", "σ_label by t: Pets up_ft1, Caltech-101 bottleneck (Table 2b)",
                    _grid("sigma_label", SAE_IMAGE_SIZE, dataset=("oxford_pets",), model=("sd15",), layer=("up_ft1",),
                          t=(0, 25, 100, 200, 300, 500))
                    + _grid("sigma_label", SAE_IMAGE_SIZE, dataset=("caltech101",), model=("sd15",),
                            layer=("bottleneck",), t=(0, 25, 100, 200, 300, 500)), _COST_SAE),
        PaperConfig("table2c", "σ_label, SD-1.5 vs SD-2.1, Pets up_ft1, t = 25 (Table 2c)",
                    _grid("sigma_label", SAE_IMAGE_SIZE, dataset=("oxford_pets",), model=("sd15", "sd21"),
                          layer=("up_ft1",), t=(25,)), _COST_SAE),
        PaperConfig("table2d", "σ_label by DiT-XL/2-256 block, Pets, t = 25 (Table 2d)",
                    _grid("sigma_label", SAE_IMAGE_SIZE, dataset=("oxford_pets",), model=("dit-xl-2-256",),
                          layer=tuple(f"block{b}" for b in (6, 10, 14, 18, 22)), t=(25,)), _COST_SAE),
        PaperConfig("table3", "Diff-C by architecture, Pets, empty prompt (Table 3)",
                    _grid("diffc_top1", dataset=("oxford_pets",), model=("sd15", "sd21", "if-i-l"),
                          layer=("bottleneck", "up_ft1"), t=(25, 200))
                    + _grid("diffc_top1", dataset=("oxford_pets",), model=("dit-xl-2-512",),
                            layer=("block10", "block14"), t=(25, 200)), _COST_DIFFC),
        PaperConfig("table5", "Diff-C up_ft1, empty vs from_CLIP, Pets and FGVC-Aircraft (Table 5)",
                    (Cell("oxford_pets", "sd15", "up_ft1", 25), Cell("oxford_pets", "sd15", "up_ft1", 100, "from_clip"),
                     Cell("fgvc_aircraft", "sd15", "up_ft1", 25), Cell("fgvc_aircraft", "sd15", "up_ft1", 100, "from_clip")),
                    _COST_DIFFC),
        *(
            PaperConfig(f"table{n}", f"Diff-C by layer, t and prompt, {label}, SD-1.5 (Table {n})",
                        _grid("diffc_top1", dataset=(dataset,), model=("sd15",), layer=SD_LAYERS, t=TABLES_678_T,
                              prompt=("empty", "from_clip")), _COST_DIFFC)
            for n, dataset, label in ((6, "fgvc_aircraft", "FGVC-Aircraft"), (7, "oxford_pets", "Oxford-IIIT Pet"),
                                      (8, "caltech101", "Caltech-101"))
        ),
        PaperConfig("table9", "Diff-C by prompt, Pets up_ft1 (Table 9)",
                    _grid("diffc_top1", dataset=("oxford_pets",), model=("sd15",), layer=("up_ft1",), t=(25, 200),
                          prompt=("empty", "generic", "from_clip")), _COST_DIFFC),
        PaperConfig("fig4", "Diff-C by SD-1.5 layer, three datasets, t = 25 (Fig. 4)",
                    _grid("diffc_top1", dataset=("oxford_pets", "fgvc_aircraft", "caltech101"), model=("sd15",),
                          layer=SD_LAYERS, t=(25,)), _COST_DIFFC),
        PaperConfig("fig6", "Diff-C of up_ft1 by t, three datasets (Fig. 6; t as in Sec. 4.3)",
                    _grid("diffc_top1", dataset=("oxford_pets", "fgvc_aircraft", "caltech101"), model=("sd15",),
                          layer=("up_ft1",), t=(25, 100, 200, 300, 400, 500)), _COST_DIFFC),
        PaperConfig("fig8", "Diff-C by layer, SD-1.5 vs DeepFloyd IF, Pets and Caltech-101, t = 25 (Fig. 8)",
                    _grid("diffc_top1", dataset=("oxford_pets", "caltech101"), model=("sd15", "if-i-l"),
                          layer=SD_LAYERS, t=(25,)), _COST_DIFFC),
    ]
}
# Fig. 10 (PCA maps on UnRel) is not here: UnRel has no labels, so the pipeline's Diff-C stage
# cannot run on it, and `render.pca_layers` needs the other layers' stores in one workspace.


def get_config(name: str) -> PaperConfig:
    try:
        return CONFIGS[name]
    except KeyError:
        raise LookupError(f"unknown paper configuration {name!r}; valid: {', '.join(CONFIGS)}") from None
