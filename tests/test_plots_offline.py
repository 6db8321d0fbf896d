"""`dvc plots show` pages render offline: the repo's DVC config points at a page template that
carries Vega, Vega-Lite and Vega-Embed (vendor/vega/), and Chromium with the network cut off
draws every plot of such a page, where DVC's own template draws none."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tests.chromium import chromium, headless
from tests.import_graph import REPO

VENDOR = REPO / "vendor" / "vega"
TEMPLATE = VENDOR / "dvc_plots.html"
SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)


def test_template_inlines_the_recorded_libraries():
    page = TEMPLATE.read_text(encoding="utf-8")
    sums = [line.split()[0] for line in (VENDOR / "SHA256SUMS").read_text().splitlines()]
    assert [hashlib.sha256(code.encode()).hexdigest() for code in SCRIPT.findall(page)] == sums
    # DVC fills {plot_divs}; {scripts} would bring back its CDN <script src=...> tags.
    assert "{plot_divs}" in page and "{scripts}" not in page
    assert not re.search(r"<script[^>]*\ssrc=", page)
    licences = (VENDOR / "LICENSES").read_text()
    assert [name for name in ("vega 5", "vega-lite 5", "vega-embed 6") if f"== {name}" in licences] == [
        "vega 5", "vega-lite 5", "vega-embed 6"
    ]


def test_dvc_config_points_at_the_template():
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        path = repo.config["plots"]["html_template"]
        # Relative to .dvc/, as `dvc plots show` resolves it.
        assert (Path(repo.dvc_dir) / path).resolve() == TEMPLATE


def _plots_page(root: Path, config: bool) -> Path:
    """A DVC repo holding one curve; `dvc plots show` with the repo's config or DVC's own."""
    root.mkdir()
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=root, check=True)
    if config:
        (root / "vendor").mkdir()
        shutil.copytree(VENDOR, root / "vendor" / "vega")
        shutil.copy(REPO / ".dvc" / "config", root / ".dvc" / "config")
    steps = np.arange(50)
    rows = "\n".join(f"{s},{np.exp(-s / 10):.5f}" for s in steps)
    (root / "curve.csv").write_text("step,loss\n" + rows + "\n")
    subprocess.run([*dvc, "plots", "show", "curve.csv", "-x", "step", "-y", "loss", "-o", "plots"],
                   cwd=root, check=True, capture_output=True)
    return root / "plots" / "index.html"


def _drawn(binary: str, page: Path) -> tuple[int, float]:
    """(Vega canvases in the page's DOM, share of non-white pixels) with the network cut off."""
    url = page.resolve().as_uri()
    dom = headless(binary, "--dump-dom", url, offline=True)
    canvases = len(re.findall(r'<canvas[^>]*class="marks"', dom))
    shot = page.parent / "shot.png"
    headless(binary, f"--screenshot={shot}", "--window-size=900,600", url, offline=True)
    with Image.open(shot) as im:
        ink = float((np.asarray(im.convert("L")) < 200).mean())
    return canvases, ink


def test_plots_show_draws_offline(tmp_path):
    binary = chromium()
    canvases, ink = _drawn(binary, _plots_page(tmp_path / "vendored", config=True))
    assert canvases == 1 and ink > 0.005  # the curve, its axes and labels
    # The control: DVC's own template loads Vega from a CDN, so offline nothing is drawn.
    canvases, ink = _drawn(binary, _plots_page(tmp_path / "cdn", config=False))
    assert canvases == 0 and ink < 0.001
