"""The paper's figures as PNGs (matplotlib, Agg, no pyplot state):

- `latent_grid`: the top-activating train images of chosen k-SAE latents (paper Figs. 1-3, 5,
  7, 9), one row per latent, each image with its class name and activation, each row titled
  with the latent id, its majority class and purity; `select_latents` picks the latents.
- `pca_maps`: the first three principal components of a layer's feature maps as RGB beside
  each image (Figs. 10-12), several layers side by side.
- `plot_curves`: Diff-C accuracy and σ_label vs layer and vs timestep from `revelio compare`'s
  tables (Figs. 4, 6, 8).

Every figure has a title, axis labels and class names, and is a deterministic function of
its inputs (fixed sizes and dpi, no randomness: PCA by an exact eigendecomposition).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from pipeline.errors import ConfigError, DataError, StoreError
from pipeline.features.store import FeatureStore
from pipeline.files import atomic_path
from pipeline.paths import Key
from pipeline.report.compare import Table, table_name
from pipeline.report.metrics import latent_purity, rank_latents
from pipeline.sae.scan import LatentStats

DPI = 100
SELECT = ("rank", "purity", "ids")
# Images drawn in a grid cell are resampled to at most this side (keeps PNGs small for 512-px data).
_CELL_PX = 128


def _new_figure(width: float, height: float, layout: str | None = "constrained") -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, facecolor="white")
    return Path(path)


def _short(name: str, width: int = 18) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def square_image(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to `size` and center crop: the framing the backbone sees
    (pipeline.features.views, view 0)."""
    image = image.convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return image.crop((left, top, left + size, top + size))


def _cell(image: Image.Image) -> np.ndarray:
    side = min(min(image.size), _CELL_PX)
    return np.asarray(square_image(image, side))


# ----------------------------------------------------------------------------- latent grids


def _variant_arrays(
    stats: LatentStats, variant: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if variant == "dense":
        return stats.dense_sum, stats.dense_count, stats.dense_top_row, stats.dense_top_value
    if variant == "code":
        return stats.code_sum, stats.code_count, stats.code_top_row, stats.code_top_value
    raise ValueError(f"variant = {variant!r}; valid: dense, code")


def select_latents(
    stats: LatentStats,
    labels: np.ndarray,
    how: str,
    num: int,
    ids: Sequence[int] = (),
    *,
    top_images: int,
    min_fires: int,
    variant: str = "dense",
) -> np.ndarray:
    """Latent ids to show, in display order.

    - rank: the first `num` of pipeline.report.metrics.rank_latents (σ_label's ranking: mean
      activation over the images a latent fires on, among latents firing on > min_fires);
    - purity: among the ranked latents that have `top_images` firing images, the `num` with
      the largest majority-class share of their top images; ties in rank order;
    - ids: exactly `ids` (duplicates dropped), each checked to be a latent of this k-SAE.
    `labels` are the class ids of the train sample positions the top rows point at.
    """
    act_sum, count, top_rows, _ = _variant_arrays(stats, variant)
    n = len(act_sum)
    if how == "ids":
        ids = list(dict.fromkeys(int(i) for i in ids))
        if not ids:
            raise ConfigError(
                "render.select = ids but render.latent_ids is empty: list the latent ids to show"
            )
        bad = [i for i in ids if not 0 <= i < n]
        if bad:
            raise ConfigError(
                f"render.latent_ids {bad} out of range: this k-SAE has {n} latents (ids 0..{n - 1})"
            )
        return np.asarray(ids, np.int64)
    ranked = rank_latents(act_sum, count, min_fires)
    if how == "rank":
        return ranked[:num]
    if how == "purity":
        full = (top_rows[ranked, :top_images] >= 0).sum(1) == top_images
        cand = ranked[full]
        majority, _, _ = latent_purity(top_rows[cand], labels, top_images)
        order = np.argsort(-majority, kind="stable")  # stable: ties keep rank order
        return cand[order][:num]
    raise ValueError(f"render.select = {how!r} is invalid; valid: {', '.join(SELECT)}")


def latent_grid(
    path: Path,
    latents: Sequence[int],
    stats: LatentStats,
    labels: np.ndarray,
    load: Callable[[int], Image.Image],
    class_names: Sequence[str],
    *,
    top_images: int,
    title: str,
    variant: str = "dense",
) -> Path:
    """One row per latent: its `top_images` most activating train images, each labelled with
    its class name and activation; the row titled with the latent id, majority class and
    purity. `load(position)` gives the image of a train sample position."""
    _, _, top_rows, top_values = _variant_arrays(stats, variant)
    latents = [int(j) for j in latents]
    if not latents:
        raise DataError("no latents to draw (none fires on enough train images)")
    cols = top_images
    width = max(6.0, 0.35 + 1.3 * cols)
    wrapped = "\n".join(textwrap.fill(line, int(width * 10)) for line in title.splitlines())
    fig = _new_figure(width, 0.6 + 0.2 * wrapped.count("\n") + 1.85 * len(latents))
    fig.suptitle(wrapped, fontsize=11)
    subfigs = np.atleast_1d(fig.subfigures(len(latents), 1))
    majority, entropy, sigma = latent_purity(top_rows[latents], labels, top_images)
    for r, (j, sub) in enumerate(zip(latents, subfigs)):
        rows = top_rows[j, :top_images]
        values = top_values[j, :top_images]
        shown = rows[rows >= 0]
        if len(shown):
            cls, cnt = np.unique(np.asarray(labels)[shown], return_counts=True)
            best = cls[np.argmax(cnt)]
            head = (
                f"latent {j}: majority {class_names[best] if 0 <= best < len(class_names) else best} "
                f"{cnt.max()}/{len(shown)} ({100 * majority[r]:.0f}%), entropy {entropy[r]:.2f} bits, "
                f"σ {sigma[r]:.2f}; fires (TopK) on {int(stats.code_count[j])} train images"
            )
        else:
            head = f"latent {j}: fires on no train image"
        sub.suptitle(head, fontsize=9.5, x=0.01, ha="left")
        axes = np.atleast_1d(sub.subplots(1, cols))
        for c, ax in enumerate(axes):
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(rows) and rows[c] >= 0:
                pos = int(rows[c])
                label = int(np.asarray(labels)[pos])
                name = class_names[label] if 0 <= label < len(class_names) else "unlabelled"
                ax.imshow(_cell(load(pos)), interpolation="nearest")
                ax.set_xlabel(f"{_short(name)}\nact {values[c]:.3g}", fontsize=8)
            else:
                for spine in ax.spines.values():
                    spine.set_visible(False)
                ax.set_xlabel("(fires on fewer)", fontsize=7, color="0.5")
            if c == 0:
                ax.set_ylabel(f"#{j}", fontsize=9)
    return _save(fig, path)


# ----------------------------------------------------------------------------- PCA maps


@dataclass
class Pca:
    mean: np.ndarray  # (C,)
    components: np.ndarray  # (3, C), unit rows, largest |loading| positive
    low: np.ndarray  # (3,) min of each component over the fitted positions
    high: np.ndarray  # (3,)
    explained: np.ndarray  # (3,) fraction of variance

    def rgb(self, fmap: np.ndarray) -> np.ndarray:
        """(C, h, w) map → (h, w, 3) in [0, 1]."""
        proj = np.einsum("chw,kc->hwk", fmap.astype(np.float64) - self.mean[:, None, None], self.components)
        span = np.where(self.high > self.low, self.high - self.low, 1.0)
        return np.clip((proj - self.low) / span, 0.0, 1.0)


def _read_maps(store: FeatureStore, split: str, positions: np.ndarray):
    for p in positions:
        yield store.read(split, "fmap", int(p), int(p) + 1)[0]


def fit_pca(maps: Callable[[], object], num_components: int = 3) -> Pca:
    """PCA over every spatial position of the maps yielded by `maps()` (called twice).

    Exact, streamed and deterministic: the C×C covariance is accumulated in float64 one map at
    a time and eigendecomposed (numpy.linalg.eigh), so memory is C² whatever the number of
    positions (SD's up_ft1 at 512 px has 256 × 32 × 32 = 262,144 positions of 1,280 channels,
    1.3 GB as one matrix for an SVD); torch.pca_lowrank is randomised, so its components
    would depend on the generator state. Each component's sign makes its largest loading
    positive, so the colours do not flip between runs."""
    total = None
    outer = None
    count = 0
    for m in maps():
        x = np.asarray(m, np.float64).reshape(m.shape[0], -1).T  # (hw, C)
        if total is None:
            total = np.zeros(x.shape[1])
            outer = np.zeros((x.shape[1], x.shape[1]))
        total += x.sum(0)
        outer += x.T @ x
        count += len(x)
    if total is None or count < 2:
        raise DataError("PCA needs feature maps with at least two spatial positions in all")
    mean = total / count
    cov = (outer - count * np.outer(mean, mean)) / (count - 1)
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(-evals, kind="stable")[:num_components]
    comps = evecs[:, order].T
    explained = np.clip(evals[order], 0, None) / max(float(np.clip(evals, 0, None).sum()), 1e-30)
    if len(comps) < num_components:  # fewer channels than components: pad with zeros
        pad = num_components - len(comps)
        comps = np.vstack([comps, np.zeros((pad, comps.shape[1]))])
        explained = np.concatenate([explained, np.zeros(pad)])
    signs = np.sign(comps[np.arange(num_components), np.argmax(np.abs(comps), axis=1)])
    comps = comps * np.where(signs == 0, 1.0, signs)[:, None]
    low = np.full(num_components, np.inf)
    high = np.full(num_components, -np.inf)
    for m in maps():
        x = np.asarray(m, np.float64).reshape(m.shape[0], -1).T
        proj = (x - mean) @ comps.T
        low = np.minimum(low, proj.min(0))
        high = np.maximum(high, proj.max(0))
    return Pca(mean, comps, low, high, explained)


@dataclass
class PcaLayer:
    name: str
    store: FeatureStore


def pca_maps(
    path: Path,
    layers: Sequence[PcaLayer],
    load: Callable[[int], Image.Image],
    class_names: Sequence[str],
    *,
    title: str,
    fit_images: int = 256,
    show_images: int = 8,
) -> Path:
    """Rows: images (the first of each class among the fitted ones, then the next ones);
    columns: the image, then for each layer its feature map's first three principal
    components as RGB. Each layer's PCA is fitted over all spatial positions of the same
    `fit_images` test images (evenly spaced over the split; train if a store has no test).
    `load(manifest_row)` gives an image."""
    if not layers:
        raise ValueError("pca_maps needs at least one layer")
    first = layers[0].store
    split = "test" if "test" in first.splits() and first.num_samples("test") else "train"
    for layer in layers:
        if not layer.store.has_array(split, "fmap"):
            raise StoreError(
                f"{layer.store.path}: no {split}/fmap array (extracted with extract.fmap: false); "
                f"PCA maps need the full feature maps"
            )
    n = first.num_samples(split)
    pos = np.unique(np.linspace(0, n - 1, min(fit_images, n)).round().astype(np.int64))
    rows = first.read(split, "index")[pos]
    labels = first.read(split, "label")[pos]
    # Shown: the first fitted image of each class in class order, then fill in fitted order.
    chosen: list[int] = []
    for c in np.unique(labels):
        chosen.append(int(np.flatnonzero(labels == c)[0]))
    chosen = chosen[:show_images]
    chosen += [i for i in range(len(pos)) if i not in chosen][: show_images - len(chosen)]
    chosen.sort(key=lambda i: (labels[i], i))

    columns = []
    for layer in layers:
        index = layer.store.read(split, "index")
        where = {int(r): i for i, r in enumerate(index)}
        missing = [int(r) for r in rows if int(r) not in where]
        if missing:
            raise ValueError(
                f"{layer.store.path}: {split} lacks manifest rows {missing[:5]} the PCA is fitted on"
            )
        lpos = np.array([where[int(r)] for r in rows])
        pca = fit_pca(lambda s=layer.store, p=lpos: _read_maps(s, split, p))
        shape = layer.store.array(split, "fmap").shape[1:]
        maps = [pca.rgb(m) for m in _read_maps(layer.store, split, lpos[chosen])]
        columns.append((layer.name, shape, pca, maps))

    ncol = 1 + len(layers)
    width = max(5.5, 0.6 + 1.75 * ncol)
    text = (
        f"{title}: first 3 principal components as RGB (min-max per component), fitted over all "
        f"spatial positions of {len(pos)} {split} images"
    )
    fig = _new_figure(width, 1.8 + 1.6 * len(chosen))
    fig.suptitle(textwrap.fill(text, int(width * 11)), fontsize=10)
    axes = np.atleast_2d(fig.subplots(len(chosen), ncol, squeeze=False))
    for r, i in enumerate(chosen):
        label = int(labels[i])
        name = class_names[label] if 0 <= label < len(class_names) else "unlabelled"
        ax = axes[r, 0]
        ax.imshow(_cell(load(int(rows[i]))), interpolation="nearest")
        ax.set_ylabel(_short(name), fontsize=9)
        for c, (lname, shape, pca, maps) in enumerate(columns, start=1):
            axes[r, c].imshow(maps[r], interpolation="nearest")
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_title("input image", fontsize=9)
    axes[-1, 0].set_xlabel("image (class at left)", fontsize=8)
    for c, (lname, shape, pca, _) in enumerate(columns, start=1):
        dims = "×".join(str(s) for s in shape)
        axes[0, c].set_title(f"{lname}\n{dims}", fontsize=9)
        axes[-1, c].set_xlabel(
            "PC1-3 → RGB\n(" + ", ".join(f"{100 * e:.0f}%" for e in pca.explained) + " of var.)", fontsize=8
        )
    return _save(fig, path)


# ----------------------------------------------------------------------------- curves


_CURVE_AXES = {"layer": "layer", "t": "timestep t"}


def _column(table: Table, name: str) -> list[float]:
    if name not in table.columns:
        return []
    i = table.columns.index(name)
    return [float("nan") if row[i] is None else float(row[i]) for row in table.rows]


def plot_curves(tables: Sequence[Table], out_dir: Path) -> list[Path]:
    """Diff-C top-1 (left axis) and σ_label (right axis) vs layer and vs timestep, one PNG per
    `revelio compare` table that varies the layer or t (`<table_name>.png`); the paper's
    values, where it ran the same configuration, as hollow markers on dashed lines."""
    written = []
    for table in tables:
        if table.varying not in _CURVE_AXES or not table.rows:
            continue
        xs_raw = [row[0] for row in table.rows]
        numeric = table.varying == "t"
        xs = np.asarray(xs_raw, np.float64) if numeric else np.arange(len(xs_raw), dtype=np.float64)
        fig = _new_figure(7.0, 4.4)
        ax = fig.add_subplot()
        ax2 = ax.twinx()
        series = [
            (ax, "Diff-C top-1 %", "Diff-C test top-1 (%)", "tab:blue", "o", "-"),
            (ax, "paper top-1 %", "paper Diff-C top-1 (%)", "tab:blue", "o", "--"),
            (ax2, "σ_label", "σ_label (lower = purer)", "tab:red", "s", "-"),
            (ax2, "paper σ_label", "paper σ_label", "tab:red", "s", "--"),
        ]
        handles = []
        for axis, col, label, color, marker, style in series:
            ys = np.asarray(_column(table, col))
            if not len(ys) or np.all(np.isnan(ys)):
                continue
            ok = ~np.isnan(ys)
            hollow = style == "--"
            (h,) = axis.plot(
                xs[ok],
                ys[ok],
                linestyle=style,
                marker=marker,
                color=color,
                label=label,
                markerfacecolor="none" if hollow else color,
            )
            handles.append(h)
        fixed = ", ".join(f"{k} = {v}" for k, v in table.fixed.items())
        ax.set_title(f"{table.title}\n{fixed}", fontsize=10)
        ax.set_xlabel(_CURVE_AXES[table.varying])
        ax.set_ylabel("Diff-C test top-1 accuracy (%)", color="tab:blue")
        ax2.set_ylabel("σ_label@N (std of class ids of top images)", color="tab:red")
        if not numeric:
            ax.set_xticks(xs, [str(x) for x in xs_raw])
        else:
            ax.set_xticks(xs)
        ax.grid(alpha=0.3)
        if handles:
            fig.legend(handles=handles, fontsize=8, loc="outside lower center", ncol=len(handles))
        written.append(_save(fig, Path(out_dir) / f"{table_name(table)}.png"))
    return written


def grid_title(key: Key, how: str, num: int, top_images: int, variant: str = "dense") -> str:
    what = {
        "rank": "ranked by mean activation (σ_label's ranking)",
        "purity": "chosen by purity (majority class share)",
        "ids": "chosen by id",
    }[how]
    act = "pre-TopK activation" if variant == "dense" else "TopK code value"
    return (
        f"Top-{top_images} train images of {num} k-SAE latents, {what}\n"
        f"{key.dataset} · {key.model} · layer {key.layer} · t = {key.t}; under each image: class and {act}"
    )
