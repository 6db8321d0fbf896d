"""DVC stage `data`: write `data/<dataset>/` (images, manifest.csv, classes.txt, skipped.csv).

    python -m stages.data [--params params.yaml]

Run from the repository root. Bad data (unusable images under `data.on_bad_image: error`,
duplicate ids, empty class folders, a missing dataset) ends the process with one message on
stderr and exit status 1; a parameter problem exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.config import load_params_or_exit
from pipeline.datasets import BuildResult, DataError, build_dataset
from pipeline.timings import record_timing


def summary(result: BuildResult) -> str:
    counts = ", ".join(f"{split} {n}" for split, n in result.counts.items() if n or split == "train")
    classes = f"{len(result.classes)} classes" if result.classes else "unlabelled"
    lines = [
        f"data: {result.dataset} → {result.out_dir}: {counts} images, {classes}, "
        + f"{len(result.skipped)} skipped, {result.seconds:.1f} s"
    ]
    if result.skipped:
        lines.append(f"  skipped files are listed in {result.out_dir / 'skipped.csv'}")
    if result.empty_classes:
        names = ", ".join(result.empty_classes[:10]) + (" ..." if len(result.empty_classes) > 10 else "")
        lines.append(f"  warning: {len(result.empty_classes)} class(es) have no images: {names}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.data", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    args = parser.parse_args(argv)
    params = load_params_or_exit(args.params)
    try:
        result = build_dataset(params, Path("."))
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    record_timing("data", params, {"seconds": round(result.seconds, 2)})
    print(summary(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
