"""DVC stage `data`: write `data/<dataset>/` (images, manifest.csv, classes.txt, skipped.csv).

    python -m stages.data [--params params.yaml]

Run from the repository root. Bad data (unusable images under `data.on_bad_image: error`,
duplicate ids, empty class folders, a missing dataset) ends the process with one message on
stderr and exit status 1; a parameter problem exits with status 2.
"""

from __future__ import annotations

from pipeline.config import Params
from pipeline.data.datasets import BuildResult, build_dataset
from stages._entry import run_stage


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


def _report(params: Params, result: BuildResult, seconds: float) -> str:
    return summary(result)


def main(argv: list[str] | None = None) -> int:
    return run_stage("data", __doc__, build_dataset, _report, argv)


if __name__ == "__main__":
    raise SystemExit(main())
