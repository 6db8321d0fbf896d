"""pipeline.report.browser: the data (only firing latents), sort and filter, page size at 81,920
latents, and the page itself in headless Chromium (skipped without a `chromium` binary)."""

from __future__ import annotations

import itertools
import json
import re
from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image

from pipeline.report.browser import PAGE_SIZE, browser_data, listed, page_html, write_browser
from pipeline.report.metrics import latent_purity
from pipeline.sae.scan import LatentStats
from tests.chromium import chromium, headless

CLASSES = ["T-shirt/top", "Trouser", "Ankle boot", "Bag"]


def _image(row: int) -> Image.Image:
    arr = np.zeros((20, 24, 3), np.uint8)
    arr[:] = ((37 * row + 11) % 256, (91 * row + 53) % 256, (17 * row + 201) % 256)
    arr[5:15, 6:18] = 255 - arr[5:15, 6:18]
    return Image.fromarray(arr)


def _synthetic(n: int, num_images: int, k: int, num_classes: int, seed: int = 0):
    """Stats of n latents over num_images train positions, ~1 in 5 never firing."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=num_images)
    # Each latent draws its top images mostly from one class (planted purity).
    by_class = [np.flatnonzero(labels == c) for c in range(num_classes)]
    top = np.full((n, k), -1, np.int64)
    for j in range(n):
        pure = rng.random() < 0.5
        pool = by_class[j % num_classes] if pure else np.arange(num_images)
        m = k if j % 7 else rng.integers(1, k + 1)  # some latents have fewer top images
        top[j, :m] = rng.choice(pool, size=m, replace=False)
    value = np.sort(rng.random((n, k)).astype(np.float32) * 3, axis=1)[:, ::-1].copy()
    value[top < 0] = 0
    count = rng.integers(1, 500, size=n)
    fire = np.where(rng.random(n) < 0.2, 0, rng.integers(1, 300, size=n))
    sums = count * rng.random(n)
    stats = LatentStats(sums, count, value, top, sums, fire, value.copy(), top.copy())
    rows = np.arange(num_images) * 2 + 3  # manifest rows differ from positions
    return stats, fire, labels, rows


@pytest.fixture(scope="module")
def small():
    return _synthetic(130, 60, 5, len(CLASSES))


def test_data_lists_only_firing_latents(small):
    stats, fire, labels, rows = small
    data = browser_data(stats, fire, labels, rows, CLASSES, top_images=4)
    ids = np.asarray(data["id"])
    assert list(ids) == list(np.flatnonzero(fire > 0)) and 0 < len(ids) < 130
    majority, _, _ = latent_purity(stats.dense_top_row[ids], labels, 4)
    np.testing.assert_array_equal(data["majf"], majority)
    np.testing.assert_array_equal(data["fires"], stats.code_count[ids])
    # The top images point into the list of distinct images, by manifest row, with their labels.
    top = np.asarray(data["top"]).reshape(len(ids), 4)
    expect = stats.dense_top_row[ids, :4]
    assert ((top >= 0) == (expect >= 0)).all()
    np.testing.assert_array_equal(np.asarray(data["img"])[top[top >= 0]], rows[expect[expect >= 0]])
    np.testing.assert_array_equal(np.asarray(data["imgLabel"])[top[top >= 0]], labels[expect[expect >= 0]])
    # Majority class: the most frequent label of each latent's top images.
    for i in (0, 5, len(ids) - 1):
        lab = labels[expect[i][expect[i] >= 0]]
        assert data["maj"][i] == np.bincount(lab).argmax()


def test_sort_and_filter(small):
    stats, fire, labels, rows = small
    data = browser_data(stats, fire, labels, rows, CLASSES, top_images=4)
    ids = np.asarray(data["id"])
    pos = {int(j): i for i, j in enumerate(ids)}
    for sort in ("purity", "activation", "fires"):
        assert sorted(listed(data, sort=sort)) == sorted(ids.tolist())  # a permutation
    by_act = listed(data, sort="activation")
    mean = np.asarray(data["mean"])
    assert all(mean[pos[a]] >= mean[pos[b]] for a, b in itertools.pairwise(by_act))
    by_pur = listed(data, sort="purity")
    key = [(-round(data["majf"][pos[j]], 6), round(data["ent"][pos[j]], 6)) for j in by_pur]
    assert key == sorted(key)  # majority share descending, then entropy ascending
    ties = [j for j in by_pur if data["majf"][pos[j]] == 1.0]
    assert ties == [j for j in by_act if j in set(ties)]  # equal purity: activation order
    fires = [data["fires"][pos[j]] for j in listed(data, sort="fires")]
    assert fires == sorted(fires, reverse=True)
    # Filter: latents whose majority class is the named one (case-insensitive), order kept.
    trouser = listed(data, "Trouser", sort="activation")
    assert trouser == [j for j in by_act if data["maj"][pos[j]] == 1] and 0 < len(trouser) < len(by_act)
    assert listed(data, "trouser", sort="activation") == trouser
    assert listed(data, "No such class") == []
    with pytest.raises(ValueError, match="valid: purity, activation, fires"):
        listed(data, sort="id")


def test_page_size_81920_latents():
    """A paper-sized k-SAE (64 x 1280 latents), all firing, 9 top images from 20,000 images."""
    stats, _, labels, rows = _synthetic(81_920, 20_000, 9, 37, seed=1)
    fire = np.ones(81_920, np.int64)
    data = browser_data(stats, fire, labels, rows, [f"class {c}" for c in range(37)], top_images=9)
    html = page_html(data)
    size = len(html.encode("utf-8"))
    print(f"page size for 81,920 latents: {size / 2**20:.1f} MiB")
    assert size < 10 * 2**20
    embedded = re.search(r'<script id="data" type="application/json">(.*?)</script>', html, re.DOTALL).group(
        1
    )
    parsed = json.loads(embedded)
    assert len(parsed["id"]) == 81_920 and len(parsed["top"]) == 81_920 * 9


def test_page_escapes_script_end(tmp_path, small):
    stats, fire, labels, rows = small
    names = ["</script><b>x", "Trouser", "Ankle boot", "Bag"]
    page = write_browser(
        tmp_path / "latents", stats, fire, labels, rows, names, _image, top_images=4, thumb_size=16
    )
    html = page.read_text()
    assert html.count("</script>") == 2  # the data and the code element, nothing from a class name
    embedded = re.search(r'<script id="data" type="application/json">(.*?)</script>', html, re.DOTALL).group(
        1
    )
    assert json.loads(embedded)["classes"][0] == names[0]


# ----------------------------------------------------------------------------- headless Chromium


def _body(dom: str) -> dict[str, int]:
    tag = re.search(r"<body[^>]*>", dom).group(0)
    return {k: int(v) for k, v in re.findall(r'data-(\w+)="(\d+)"', tag)}


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    stats, fire, labels, rows = _synthetic(220, 60, 5, len(CLASSES))
    out = tmp_path_factory.mktemp("reports") / "latents"
    path = write_browser(
        out, stats, fire, labels, rows, CLASSES, _image, top_images=5, thumb_size=32, title="test latents"
    )
    data = browser_data(stats, fire, labels, rows, CLASSES, top_images=5)
    return path, data


def test_thumbnails_written_once_per_image(page):
    path, data = page
    thumbs = sorted(p.name for p in (path.parent / "thumbs").iterdir())
    assert thumbs == sorted(f"{r}.png" for r in data["img"])
    with Image.open(path.parent / "thumbs" / thumbs[0]) as im:
        assert im.size == (32, 32)


def test_page_in_headless_chromium(page):
    binary = chromium()
    path, data = page
    url = path.resolve().as_uri()
    n = len(data["id"])

    body = _body(headless(binary, "--dump-dom", url, offline=True))
    assert body["count"] == n > PAGE_SIZE  # all firing latents, more than one page
    assert body["images"] > 0 and body["loaded"] == body["images"] and body["failed"] == 0

    query = f"#class={quote('T-shirt/top', safe='')}&sort=activation"
    dom = headless(binary, "--dump-dom", url + query, offline=True)
    body = _body(dom)
    expect = listed(data, "T-shirt/top", sort="activation")
    assert body["count"] == len(expect) and 0 < body["count"] < n  # the filter narrows the list
    shown = [int(i) for i in re.findall(r'<section class="latent" data-id="(\d+)"', dom)]
    assert shown == expect[:PAGE_SIZE]  # the page's order and filter are `listed`'s
    assert body["loaded"] == body["images"] == dom.count("<img")

    dom = headless(binary, "--dump-dom", f"{url}#page=3", offline=True)
    assert _body(dom)["page"] == 3
    shown = [int(i) for i in re.findall(r'data-id="(\d+)"', dom)]
    assert shown == listed(data)[2 * PAGE_SIZE : 3 * PAGE_SIZE]

    shot = path.parent / "screenshot.png"
    headless(binary, f"--screenshot={shot}", "--window-size=1280,1600", url, offline=True)
    assert shot.stat().st_size > 20_000
    with Image.open(shot) as im:
        assert im.size == (1280, 1600)
        assert len(np.unique(np.asarray(im.convert("L")))) > 20  # not a blank page


def test_activation_range(small):
    stats, fire, labels, rows = small
    data = browser_data(stats, fire, labels, rows, CLASSES, top_images=4)
    ids = np.asarray(data["id"])
    for i, j in enumerate(ids[:20]):
        vals = stats.dense_top_value[j, :4][stats.dense_top_row[j, :4] >= 0]
        assert data["hi"][i] == vals[0] and data["lo"][i] == vals[-1]
