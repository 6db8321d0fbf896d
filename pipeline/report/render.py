"""The `render` stage: the current key's figures and latent browser.

Reads the fitted k-SAE's codes (models/sae/<dataset>/<model>/<layer>/t<t>/codes.safetensors),
the manifest and class names, and the feature stores; writes
- `reports/figures/latents_<render.select>.png`: the top `render.top_images` train images of
  `render.num_latents` latents (by rank, purity or `render.latent_ids`);
- `reports/figures/pca_<layer>_t<t>.png`: PCA feature maps of the current layer and, side by
  side, of each `render.pca_layers` entry at the same t (their stores must exist);
- `reports/latents/index.html` with `thumbs/`: the latent browser.
Latents, purity and activations are the dense pre-TopK ones of σ_label (pipeline.report.metrics).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from safetensors.numpy import load_file

from pipeline.config import Params
from pipeline.data.datasets import read_classes, read_manifest
from pipeline.data.images import load_image
from pipeline.errors import ConfigError, StoreError
from pipeline.features.store import open_store
from pipeline.paths import data_dir, figures_dir, latents_dir
from pipeline.report.browser import write_browser
from pipeline.report.figures import PcaLayer, grid_title, latent_grid, pca_maps, select_latents
from pipeline.sae.scan import LatentStats

PCA_FIT_IMAGES = 256
PCA_SHOW_IMAGES = 10


def _pca_stores(params: Params, root: Path) -> list[PcaLayer]:
    """The current layer's store and each render.pca_layers entry's, checked up front."""
    valid = params.layer_names()
    names = list(dict.fromkeys([params.layer, *params.render.pca_layers]))
    bad = [n for n in names if n not in valid]
    if bad:
        raise ConfigError(
            f"render.pca_layers {bad} are not layers of {params.model}; valid: {', '.join(valid)}"
        )
    out = []
    for name in names:
        path = params.key.with_layer(name).features_store(root)
        if not (path / "zarr.json").exists():
            raise StoreError(
                f"{path}: no feature store for render.pca_layers entry {name!r} at t = {params.t}; build it "
                f"with `dvc exp run -S layer={name}` (or drop {name!r} from render.pca_layers)"
            )
        out.append(PcaLayer(name, open_store(path)))
    return out


def run_render(params: Params, root: Path = Path(".")) -> list[Path]:
    """Write the figures and the browser; returns the paths written (the page last)."""
    key = params.key
    rp = params.render
    folder = key.sae_dir(root)
    codes_file = folder / "codes.safetensors"
    if not codes_file.is_file():
        raise FileNotFoundError(f"{codes_file} not found: run the fit_sae stage first (dvc repro)")
    layers = _pca_stores(params, root)  # fail before any slow work
    codes = load_file(str(codes_file))
    stats = LatentStats.from_arrays(codes)
    labels = codes["train_label"]
    index = codes["train_index"]
    manifest = read_manifest(params.dataset, root)
    classes = read_classes(params.dataset, root)
    images = data_dir(params.dataset, root)
    if len(index) and int(index.max()) >= len(manifest):
        raise StoreError(
            f"{codes_file}: refers to manifest row {int(index.max())} but {images / 'manifest.csv'} has "
            f"{len(manifest)} rows; rerun fit_sae (dvc repro)"
        )

    @lru_cache(maxsize=4096)
    def load_row(row: int):
        return load_image(images / manifest[row].path)

    written: list[Path] = []
    chosen = select_latents(
        stats,
        labels,
        rp.select,
        rp.num_latents,
        rp.latent_ids,
        top_images=rp.top_images,
        min_fires=params.eval.min_fires,
    )
    written.append(
        latent_grid(
            figures_dir(root) / f"latents_{rp.select}.png",
            chosen,
            stats,
            labels,
            lambda pos: load_row(int(index[pos])),
            classes,
            top_images=rp.top_images,
            title=grid_title(key, rp.select, len(chosen), rp.top_images),
        )
    )
    written.append(
        pca_maps(
            figures_dir(root) / f"pca_{key.layer}_t{key.t}.png",
            layers,
            load_row,
            classes,
            title=f"Feature maps of {key.dataset} · {key.model} · t = {key.t}",
            fit_images=PCA_FIT_IMAGES,
            show_images=PCA_SHOW_IMAGES,
        )
    )
    written.append(
        write_browser(
            latents_dir(root),
            stats,
            codes["train_fire_count"],
            labels,
            index,
            classes,
            load_row,
            top_images=rp.top_images,
            thumb_size=rp.thumb_size,
            title=f"k-SAE latents · {key.dataset} · {key.model} · {key.layer} · t = {key.t}",
        )
    )
    return written
