"""`python -m stages.render`: the current key's figures and latent browser.

    python -m stages.render [--params params.yaml]

Writes `reports/figures/latents_<render.select>.png` (top-activating images of chosen
latents), `reports/figures/pca_<layer>_t<t>.png` (PCA feature maps of the current layer and
`render.pca_layers`) and `reports/latents/index.html` with its thumbnails (the latent browser;
open it in a browser straight from the file system).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Params
from pipeline.report.render import run_render
from stages._entry import run_stage


def _report(params: Params, written: list[Path], seconds: float) -> str:
    return f"render {params.layer} t={params.t} in {seconds:.1f} s:" + "".join(f"\n  {p}" for p in written)


def main(argv: list[str] | None = None) -> int:
    return run_stage("render", __doc__, run_render, _report, argv)


if __name__ == "__main__":
    raise SystemExit(main())
