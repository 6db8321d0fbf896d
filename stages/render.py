"""`python -m stages.render`: the current key's figures and latent browser.

    python -m stages.render [--params params.yaml]

Writes `reports/figures/latents_<render.select>.png` (top-activating images of chosen
latents), `reports/figures/pca_<layer>_t<t>.png` (PCA feature maps of the current layer and
`render.pca_layers`) and `reports/latents/index.html` with its thumbnails (the latent browser;
open it in a browser straight from the file system).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pipeline.config import load_params_or_exit
from pipeline.render import run_render
from pipeline.stage_errors import USER_ERRORS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.render", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    args = parser.parse_args(argv)
    params = load_params_or_exit(args.params)
    start = time.perf_counter()
    try:
        written = run_render(params, Path("."))
    except (*USER_ERRORS, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"render {params.layer} t={params.t} in {time.perf_counter() - start:.1f} s:")
    for path in written:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
