"""The latent browser: `reports/latents/index.html`, one static page that opens from the file
system (no server; the data is embedded as JSON in the page, the thumbnails are plain <img>
files beside it, `thumbs/<manifest row>.png`).

It lists the k-SAE latents that fire (TopK code chosen on at least one train sample), each
with its top train images, the class histogram of those images and its statistics; sorted by
purity (majority-class share of its top images, then lower entropy, then activation), by mean
activation (σ_label's ranking) or by how often it fires; filtered by majority class, from the
page's class selector or the URL hash (`index.html#class=Shirt&sort=activation&page=2`), 50
latents a page so it stays responsive with 81,920 latents.

The data is column-wise (one array per statistic, the top images as one flat array of
indices into a list of images) with 3 significant digits, so a page for 81,920 latents stays a
few MB. The sort orders are computed here, not in JavaScript: `listed` is the one reference
for what the page shows, and the tests check the page against it.

For headless checks the page records in the DOM: `body[data-count]` the latents listed after
filtering, `body[data-images]` the <img> elements on the current page, `body[data-loaded]` /
`body[data-failed]` the thumbnails that finished loading / failed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.files import atomic_write
from pipeline.report.figures import square_image
from pipeline.report.metrics import latent_class_counts, latent_purity
from pipeline.sae.scan import LatentStats

PAGE_SIZE = 50
SORTS = ("purity", "activation", "fires")


class _Raw(str):
    """A pre-formatted JSON fragment."""


def _numbers(values: np.ndarray, fmt: str) -> _Raw:
    values = np.asarray(values, np.float64)
    out = [fmt % v if np.isfinite(v) else "null" for v in values.tolist()]
    return _Raw("[" + ",".join(out) + "]")


def _ints(values: np.ndarray) -> _Raw:
    return _Raw("[" + ",".join(map(str, np.asarray(values, np.int64).tolist())) + "]")


def _dumps(data: dict[str, Any]) -> str:
    parts = []
    for key, value in data.items():
        if isinstance(value, _Raw):
            text = str(value)
        elif isinstance(value, dict):
            text = _dumps(value)
        else:
            text = json.dumps(value, ensure_ascii=False)
        parts.append(f"{json.dumps(key)}:{text}")
    return "{" + ",".join(parts) + "}"


def browser_data(
    stats: LatentStats,
    fire_count: np.ndarray,
    labels: np.ndarray,
    rows: np.ndarray,
    class_names: Sequence[str],
    *,
    top_images: int,
    variant: str = "dense",
    title: str = "k-SAE latents",
) -> dict[str, Any]:
    """The page's data (plain Python/numpy values; `page_html` serialises it).

    fire_count: per latent, train samples whose TopK code chose it (only those > 0 are listed);
    labels / rows: class id / manifest row of each train sample position the top lists use.
    """
    if variant == "dense":
        act_sum, act_count, top_rows, top_value = (
            stats.dense_sum,
            stats.dense_count,
            stats.dense_top_row,
            stats.dense_top_value,
        )
    elif variant == "code":
        act_sum, act_count, top_rows, top_value = (
            stats.code_sum,
            stats.code_count,
            stats.code_top_row,
            stats.code_top_value,
        )
    else:
        raise ValueError(f"variant = {variant!r}; valid: dense, code")
    ids = np.flatnonzero(np.asarray(fire_count) > 0)
    top = np.asarray(top_rows)[ids, :top_images]
    value = np.asarray(top_value, np.float64)[ids, :top_images]
    value = np.where(top >= 0, value, np.nan)
    majority, entropy, sigma = latent_purity(top, labels, top_images)
    labels = np.asarray(labels)
    valid = top >= 0
    # Majority class: the most frequent label among the top images, ties to the lower class id.
    classes, counts = latent_class_counts(top, labels, top_images)
    maj = np.where(valid.any(1), classes[counts.argmax(1)] if counts.shape[1] else -1, -1).astype(np.int64)
    count = np.asarray(act_count, np.int64)[ids]
    mean = np.divide(np.asarray(act_sum, np.float64)[ids], count, out=np.zeros(len(ids)), where=count > 0)
    # Images: the distinct manifest rows shown; the top lists index into them.
    positions = top[valid]
    image_rows, inverse = np.unique(np.asarray(rows)[positions], return_inverse=True)
    image_label = np.zeros(len(image_rows), np.int64)
    image_label[inverse] = labels[positions]
    top_index = np.full(top.shape, -1, np.int64)
    top_index[valid] = inverse
    fires = np.asarray(stats.code_count, np.int64)[ids]
    shown = valid.sum(1)  # top lists are best first, -1 after the last firing image

    # Sort orders over the listed latents (positions in these arrays), ties by latent id.
    act_order = np.lexsort((ids, -mean))
    nan_last = lambda x, fill: np.where(np.isnan(x), fill, x)
    # Purity: majority share (2 decimals as shown), then entropy, then activation order.
    act_rank = np.empty(len(ids), np.int64)
    act_rank[act_order] = np.arange(len(ids))
    purity_order = np.lexsort(
        (act_rank, nan_last(np.round(entropy, 6), np.inf), -nan_last(np.round(majority, 6), -1.0))
    )
    fires_order = np.lexsort((act_rank, -fires))
    return {
        "title": title,
        "classes": list(class_names),
        "k": int(top_images),
        "variant": variant,
        "pageSize": PAGE_SIZE,
        "id": ids,
        "fires": fires,
        "dense": count,
        "mean": mean,
        "maj": maj,
        "majf": majority,
        "ent": entropy,
        "sig": sigma,
        "top": top_index.reshape(-1),
        # Activation of the first and the last shown top image (per-image values would double
        # the page at 81,920 latents; the grid figures show them).
        "hi": np.where(shown > 0, value[:, 0], np.nan),
        "lo": np.where(shown > 0, value[np.arange(len(ids)), np.maximum(shown - 1, 0)], np.nan),
        "img": image_rows,
        "imgLabel": image_label,
        "order": {"purity": purity_order, "activation": act_order, "fires": fires_order},
    }


def listed(data: dict[str, Any], class_name: str | None = None, sort: str = "purity") -> list[int]:
    """Latent ids the page lists, in order, for a class filter (majority class) and sort key —
    what the page's script computes from the same data."""
    if sort not in SORTS:
        raise ValueError(f"sort = {sort!r}; valid: {', '.join(SORTS)}")
    order = np.asarray(data["order"][sort])
    if class_name:
        classes = list(data["classes"])
        if class_name not in classes:
            lower = [c.lower() for c in classes]
            if class_name.lower() not in lower:
                return []
            class_name = classes[lower.index(class_name.lower())]
        order = order[np.asarray(data["maj"])[order] == classes.index(class_name)]
    return [int(i) for i in np.asarray(data["id"])[order]]


def _serialise(data: dict[str, Any]) -> str:
    out = dict(data)
    for key in ("id", "fires", "dense", "maj", "top", "img", "imgLabel"):
        out[key] = _ints(data[key])
    out["mean"] = _numbers(data["mean"], "%.3g")
    out["hi"] = _numbers(data["hi"], "%.3g")
    out["lo"] = _numbers(data["lo"], "%.3g")
    for key in ("majf", "ent", "sig"):
        out[key] = _numbers(data[key], "%.2f")
    out["order"] = {k: _ints(v) for k, v in data["order"].items()}
    # Inside <script>: "</script>" or "<!--" in a class name must not end the element.
    return _dumps(out).replace("<", "\\u003c")


_STYLE = """
body{font:14px/1.35 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{position:sticky;top:0;background:#fff;border-bottom:1px solid #ddd;padding:8px 16px;z-index:1}
h1{font-size:18px;margin:0 0 4px}
.legend{color:#555;font-size:12px;margin:0 0 6px}
.controls{display:flex;gap:14px;align-items:center;flex-wrap:wrap}
main{padding:8px 16px}
.latent{background:#fff;border:1px solid #ddd;border-radius:6px;margin:8px 0;padding:8px 10px;display:flex;gap:16px;align-items:flex-start}
.latent h2{font-size:15px;margin:0 0 4px}
.stats{font-size:12px;color:#444;margin-bottom:6px}
.thumbs{display:flex;flex-wrap:wrap;gap:4px}
figure{margin:0;text-align:center;font-size:11px;width:var(--thumb)}
figure img{width:var(--thumb);height:var(--thumb);image-rendering:pixelated;display:block;background:#eee}
figcaption{white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.hist{min-width:220px;font-size:11px}
.bar{display:flex;align-items:center;gap:4px;margin:1px 0}
.bar .name{width:90px;text-align:right;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.bar .track{width:100px;background:#eee;height:10px}
.bar .fill{background:#3b7dd8;height:10px}
.empty{color:#a00;padding:16px}
"""

_SCRIPT = r"""
(function(){
const D = JSON.parse(document.getElementById('data').textContent);
const K = D.k, body = document.body;
const $ = id => document.getElementById(id);
const sel = $('cls'), sortSel = $('sort');
D.classes.forEach((c, i) => { const o = document.createElement('option'); o.value = c; o.textContent = c; sel.appendChild(o); });
let generation = 0;
function state(){
  const h = new URLSearchParams(location.hash.replace(/^#/, ''));
  return {cls: h.get('class') || '', sort: D.order[h.get('sort')] ? h.get('sort') : 'purity',
          page: Math.max(1, parseInt(h.get('page') || '1', 10) || 1)};
}
function setHash(s){
  const h = new URLSearchParams();
  if (s.cls) h.set('class', s.cls);
  if (s.sort !== 'purity') h.set('sort', s.sort);
  if (s.page > 1) h.set('page', String(s.page));
  const text = h.toString();
  if (('#' + text) === location.hash || (!text && !location.hash)) render(); else location.hash = text;
}
function classIndex(name){
  if (!name) return -1;
  let i = D.classes.indexOf(name);
  if (i < 0) i = D.classes.map(c => c.toLowerCase()).indexOf(name.toLowerCase());
  return i < 0 ? -2 : i;
}
function el(tag, cls, text){ const e = document.createElement(tag); if (cls) e.className = cls; if (text !== undefined) e.textContent = text; return e; }
function cname(i){ return i >= 0 && i < D.classes.length ? D.classes[i] : 'unlabelled'; }
function fmt(x, d){ return x === null ? '–' : Number(x).toFixed(d); }
function card(p){
  const box = el('section', 'latent'); box.dataset.id = D.id[p];
  const left = el('div');
  const n = [];
  for (let j = 0; j < K; j++) { const t = D.top[p * K + j]; if (t >= 0) n.push(j); }
  const counts = new Map();
  n.forEach(j => { const l = D.imgLabel[D.top[p * K + j]]; counts.set(l, (counts.get(l) || 0) + 1); });
  const majName = D.maj[p] >= 0 ? cname(D.maj[p]) : '–';
  left.appendChild(el('h2', '', 'latent ' + D.id[p] + ' · ' + majName + ' ' + (D.majf[p] === null ? '' : Math.round(100 * D.majf[p]) + '%')));
  left.appendChild(el('div', 'stats',
    'fires on ' + D.fires[p] + ' train images (TopK) · mean activation ' + D.mean[p] + ' (over ' + D.dense[p] +
    ' images where > 0) · majority ' + majName + ' ' + (counts.get(D.maj[p]) || 0) + '/' + n.length +
    ' · entropy ' + fmt(D.ent[p], 2) + ' bits · σ ' + fmt(D.sig[p], 2) +
    (n.length ? ' · top images\' activation ' + D.hi[p] + ' … ' + D.lo[p] : '')));
  const thumbs = el('div', 'thumbs');
  n.forEach(j => {
    const t = D.top[p * K + j], f = el('figure'), img = document.createElement('img');
    const g = generation;
    img.onload = () => { if (g === generation) { body.dataset.loaded = +body.dataset.loaded + 1; status(); } };
    img.onerror = () => { if (g === generation) { body.dataset.failed = +body.dataset.failed + 1; status(); } };
    img.alt = cname(D.imgLabel[t]);
    img.title = cname(D.imgLabel[t]) + ', top image ' + (j + 1) + ', manifest row ' + D.img[t];
    img.src = 'thumbs/' + D.img[t] + '.png';
    f.appendChild(img);
    f.appendChild(el('figcaption', '', cname(D.imgLabel[t])));
    thumbs.appendChild(f);
  });
  left.appendChild(thumbs);
  box.appendChild(left);
  const hist = el('div', 'hist');
  hist.appendChild(el('div', 'stats', 'classes of its top ' + n.length + ' images'));
  [...counts.entries()].sort((a, b) => b[1] - a[1] || a[0] - b[0]).forEach(([l, c]) => {
    const bar = el('div', 'bar'), track = el('span', 'track'), fill = el('span', 'fill');
    fill.style.display = 'block'; fill.style.width = Math.round(100 * c / K) + '%';
    track.appendChild(fill);
    bar.appendChild(el('span', 'name', cname(l))); bar.appendChild(track); bar.appendChild(el('span', 'n', String(c)));
    hist.appendChild(bar);
  });
  box.appendChild(hist);
  return box;
}
function status(){
  $('loaded').textContent = 'thumbnails loaded ' + body.dataset.loaded + '/' + body.dataset.images +
    (+body.dataset.failed ? ' (' + body.dataset.failed + ' failed)' : '');
}
function render(){
  const s = state();
  generation++;
  const ci = classIndex(s.cls);
  let order = D.order[s.sort];
  if (ci !== -1) order = order.filter(p => D.maj[p] === ci);
  const pages = Math.max(1, Math.ceil(order.length / D.pageSize));
  const page = Math.min(s.page, pages);
  sel.value = ci >= 0 ? D.classes[ci] : ''; sortSel.value = s.sort;
  body.dataset.count = order.length; body.dataset.page = page;
  body.dataset.loaded = 0; body.dataset.failed = 0;
  $('count').textContent = order.length + ' of ' + D.id.length + ' firing latents' +
    (ci >= 0 ? ' with majority class ' + D.classes[ci] : '') + ' · page ' + page + ' of ' + pages;
  const list = $('list'); list.replaceChildren();
  if (ci === -2) list.appendChild(el('p', 'empty', 'no class named "' + s.cls + '"; classes: ' + D.classes.join(', ')));
  const frag = document.createDocumentFragment();
  order.slice((page - 1) * D.pageSize, page * D.pageSize).forEach(p => frag.appendChild(card(p)));
  list.appendChild(frag);
  body.dataset.images = list.querySelectorAll('img').length;
  $('prev').disabled = page <= 1; $('next').disabled = page >= pages;
  status();
}
sel.onchange = () => setHash({...state(), cls: sel.value, page: 1});
sortSel.onchange = () => setHash({...state(), sort: sortSel.value, page: 1});
$('prev').onclick = () => { const s = state(); setHash({...s, page: s.page - 1}); };
$('next').onclick = () => { const s = state(); setHash({...s, page: Math.min(s.page, +body.dataset.page) + 1}); };
window.addEventListener('hashchange', render);
render();
})();
"""


def page_html(data: dict[str, Any], thumb_size: int = 64) -> str:
    from html import escape

    title = escape(str(data["title"]))
    legend = (
        "Latents that fire (chosen by the TopK code on at least one train image), each with its "
        f"{data['k']} most activating train images (by {'pre-TopK activation' if data['variant'] == 'dense' else 'TopK code value'}"
        "), the classes of those images, and: how many train images it fires on, its mean "
        "activation where positive (the σ_label ranking), the majority class share, the entropy of the "
        "class distribution (0 bits = one class) and σ, the std of their class ids. "
        "Filter by majority class here or in the URL: #class=NAME&amp;sort=purity|activation|fires&amp;page=N."
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width,initial-scale=1">
<style>:root{{--thumb:{int(thumb_size)}px}}{_STYLE}</style></head>
<body data-count="0" data-images="0" data-loaded="0" data-failed="0" data-page="1">
<header><h1>{title}</h1><p class="legend">{legend}</p>
<div class="controls">
<label>sort by <select id="sort"><option value="purity">purity (majority share, then entropy)</option>
<option value="activation">mean activation</option><option value="fires">fires on most images</option></select></label>
<label>majority class <select id="cls"><option value="">all classes</option></select></label>
<button id="prev">◀ previous</button><button id="next">next ▶</button>
<span id="count"></span> · <span id="loaded"></span>
</div></header>
<main id="list"></main>
<script id="data" type="application/json">{_serialise(data)}</script>
<script>{_SCRIPT}</script>
</body></html>
"""


def write_thumbs(folder: Path, rows: Iterable[int], load_row: Callable[[int], Image.Image], size: int) -> int:
    """`folder/<row>.png` of `size` px (resize + center crop, as the backbone frames it), each
    distinct manifest row once; returns how many were written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    for row in dict.fromkeys(int(r) for r in rows):
        thumb = square_image(load_row(row), size)
        pixels = np.asarray(thumb)
        if (pixels == pixels[..., :1]).all():  # gray images as 8-bit gray PNGs: a third of the bytes
            thumb = thumb.convert("L")
        thumb.save(folder / f"{row}.png")
        written += 1
    return written


def write_browser(
    out_dir: Path,
    stats: LatentStats,
    fire_count: np.ndarray,
    labels: np.ndarray,
    rows: np.ndarray,
    class_names: Sequence[str],
    load_row: Callable[[int], Image.Image],
    *,
    top_images: int,
    thumb_size: int = 64,
    variant: str = "dense",
    title: str = "k-SAE latents",
) -> Path:
    """Write `out_dir/index.html` and `out_dir/thumbs/`; returns the page's path."""
    out_dir = Path(out_dir)
    data = browser_data(
        stats, fire_count, labels, rows, class_names, top_images=top_images, variant=variant, title=title
    )
    thumbs = out_dir / "thumbs"
    if thumbs.exists():  # a thumbnail of another size or a latent no longer listed must not linger
        shutil.rmtree(thumbs)
    write_thumbs(thumbs, data["img"], load_row, thumb_size)
    page = out_dir / "index.html"
    return atomic_write(page, page_html(data, thumb_size))
